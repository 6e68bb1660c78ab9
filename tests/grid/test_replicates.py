"""Replicates in tables: mean ± std over calibration seeds, and Welch's t-test against a baseline."""

from __future__ import annotations

import json
import math

import pytest

from sparsebench.analysis import tables
from sparsebench.analysis.replicates import Spread, student_t_two_sided_p, welch_p_value
from sparsebench.analysis.tables_cli import main as tables_main

from .test_tables import document


def seeded(metric, allocator, ratio, seed, wikitext2, c4=None):
    doc = document(metric, allocator, ratio, {"wikitext2": wikitext2, **({"c4": c4} if c4 is not None else {})})
    doc["case_id"] = f"{doc['case_id']}_seed{seed}"
    doc["config"]["calibration"] = {"dataset": "wikitext2", "nsamples": 16, "seed": seed}
    doc["config"]["eval"]["ppl"]["datasets"] = ["wikitext2"] if c4 is None else ["wikitext2", "c4"]
    return doc


# wanda + uniform over three seeds: 700, 720, 680 (mean 700, std 20); owl: 600, 610, 590 (mean 600, std 10):
# Welch t = -100 / sqrt(400/3 + 100/3) = -7.746, df = 2.94 -> p ~ 0.0048 (beyond noise at 0.05).
# magnitude + owl vs magnitude + uniform: 900, 1100, 1000 vs 950, 1150, 1050 -> t = -0.612, p ~ 0.57 (within noise).
REPLICATED = [
    *[seeded("wanda", "uniform", 0.7, seed, ppl) for seed, ppl in enumerate((700.0, 720.0, 680.0))],
    *[seeded("wanda", "owl", 0.7, seed, ppl) for seed, ppl in enumerate((600.0, 610.0, 590.0))],
    *[seeded("magnitude", "uniform", 0.7, seed, ppl) for seed, ppl in enumerate((950.0, 1150.0, 1050.0))],
    *[seeded("magnitude", "owl", 0.7, seed, ppl) for seed, ppl in enumerate((900.0, 1100.0, 1000.0))],
    seeded("ria", "owl", 0.7, 0, 650.0),  # one seed: no spread, no test
    seeded("ria", "uniform", 0.7, 0, 640.0),
]


def test_student_t_p_values_match_known_quantiles_and_scipy():
    assert student_t_two_sided_p(2.228138851986, 10) == pytest.approx(0.05, abs=1e-9)  # the textbook 97.5 % quantile
    assert student_t_two_sided_p(12.7062047, 1) == pytest.approx(0.05, abs=1e-7)
    assert student_t_two_sided_p(0.0, 5) == pytest.approx(1.0)
    stats = pytest.importorskip("scipy.stats")
    for t, df in [(0.3, 2.5), (1.7, 3.3), (-4.2, 7.9), (9.0, 1.2), (2.0, 120.0)]:
        assert student_t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
        a, b = Spread((1.0, 2.0 + t, 4.0)), Spread((2.0, 3.5, 3.0, df))
        assert welch_p_value(a, b) == pytest.approx(stats.ttest_ind(a.values, b.values, equal_var=False).pvalue, rel=1e-9)


def test_replicates_become_mean_and_sample_std_per_cell():
    table = tables.build_tables(REPLICATED)["tiny"]
    column = ("70%", "wikitext2")
    spread = table.spreads[("wanda + uniform", column)]
    assert spread.n == 3 and spread.mean == 700.0 and spread.std == pytest.approx(20.0)
    assert table.values[("wanda + owl", column)] == 600.0 and table.spreads[("wanda + owl", column)].std == pytest.approx(10.0)
    assert table.spreads[("ria + owl", column)].n == 1 and table.spreads[("ria + owl", column)].std is None
    markdown = tables.to_markdown(table)
    assert "| wanda + owl | **600.00 ± 10.00 (3)** * | **600.00** |" in markdown
    assert "| wanda + uniform | 700.00 ± 20.00 (3) | 700.00 |" in markdown
    assert "| magnitude + owl | 1000.00 ± 100.00 (3) ~ | 1000.00 |" in markdown
    assert "| ria + owl | 650.00 | 650.00 |" in markdown  # a single seed: no spread, no mark


def test_differences_from_the_baseline_are_marked_beyond_or_within_noise():
    table = tables.build_tables(REPLICATED)["tiny"]
    column = ("70%", "wikitext2")
    owl = table.comparisons[("wanda + owl", column)]
    t = -100.0 / math.sqrt(400.0 / 3 + 100.0 / 3)
    df = (400.0 / 3 + 100.0 / 3) ** 2 / ((400.0 / 3) ** 2 / 2 + (100.0 / 3) ** 2 / 2)
    assert owl.baseline == "wanda + uniform" and owl.difference == -100.0
    assert owl.p_value == pytest.approx(student_t_two_sided_p(t, df)) and owl.p_value < 0.01
    assert owl.verdict == "beyond noise"
    assert table.comparisons[("magnitude + owl", column)].verdict == "within noise"
    assert table.comparisons[("ria + owl", column)].verdict == "untested (n < 2)"
    assert ("wanda + uniform", column) not in table.comparisons  # a baseline is not compared with itself
    markdown = tables.to_markdown(table)
    assert "- magnitude + owl vs magnitude + uniform, 70% wikitext2: -50.00 (1000.00 vs 1050.00), p = 0.573: within noise" in markdown
    assert "Welch's t-test, two-sided, p < 0.05" in markdown
    named = tables.build_tables(REPLICATED, baseline="wanda + uniform")["tiny"]
    assert named.comparisons[("magnitude + owl", column)].baseline == "wanda + uniform"
    assert named.comparisons[("magnitude + owl", column)].verdict == "beyond noise"


def test_csv_and_latex_carry_the_spread():
    table = tables.build_tables(REPLICATED)["tiny"]
    rows = tables.to_csv(table).splitlines()
    assert rows[0] == "model,method,70% wikitext2,70% wikitext2 std,70% wikitext2 n,70% wikitext2 p vs baseline,mean"
    wanda = next(row for row in rows if ",wanda + uniform," in row).split(",")
    assert wanda[2:6] == ["700.0", repr(20.0), "3", ""]
    assert r"600.00 $\pm$ 10.00 (3)" in tables.to_latex(table)


def test_documents_that_differ_in_more_than_the_seed_are_still_an_error():
    other = seeded("wanda", "uniform", 0.7, 3, 710.0)
    other["config"]["calibration"]["nsamples"] = 128
    with pytest.raises(tables.AnalysisError, match=r"differ in more than the replicate keys \(calibration.seed\)"):
        tables.build_tables([*REPLICATED, other])
    twice = {**REPLICATED[0], "case_id": "again"}
    with pytest.raises(tables.AnalysisError, match="with the same replicate keys"):
        tables.build_tables([*REPLICATED, twice])
    # a user-marked replicate key makes the nsamples variants replicates too
    table = tables.build_tables([*REPLICATED, other], replicate_keys=("calibration.seed", "calibration.nsamples"))["tiny"]
    assert table.spreads[("wanda + uniform", ("70%", "wikitext2"))].n == 4


def test_the_same_data_in_another_folder_is_one_cell_and_other_data_at_one_path_is_not():
    def located(seed, ppl, folder, text):
        doc = seeded("wanda", "uniform", 0.7, seed, ppl)
        doc["config"]["data"] = {"wikitext2": folder}
        doc["notes"] = {"data_content": {"wikitext2": {"validation": f"sha256:{text}-valid", "test": f"sha256:{text}-test"}}}
        return doc

    cell = ("wanda + uniform", ("70%", "wikitext2"))
    moved = [located(0, 700.0, "/site-a/wikitext2", "same"), located(1, 720.0, "/site-b/wikitext2", "same")]
    assert tables.build_tables(moved)["tiny"].spreads[cell].n == 2
    edited = [located(0, 700.0, "/site-a/wikitext2", "same"), located(1, 720.0, "/site-a/wikitext2", "edited")]
    with pytest.raises(tables.AnalysisError, match="differ in more than the replicate keys"):
        tables.build_tables(edited)
    unrecorded = located(1, 720.0, "/site-b/wikitext2", "same")
    del unrecorded["notes"]  # a document from before the record: its path decides, as it did
    with pytest.raises(tables.AnalysisError, match="differ in more than the replicate keys"):
        tables.build_tables([moved[0], unrecorded])


def test_the_cli_aggregates_seeds_and_draws_error_bars(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    results = tmp_path / "results"
    results.mkdir()
    for doc in REPLICATED + [seeded("wanda", "uniform", 0.5, seed, ppl) for seed, ppl in enumerate((50.0, 52.0))]:
        (results / f"{doc['case_id']}.json").write_text(json.dumps(doc))
    assert tables_main(["--results", str(results), "--out", str(tmp_path / "out"), "--figures", "--alpha", "0.01"]) == 0
    markdown = (tmp_path / "out" / "tables.md").read_text()
    assert "| wanda + uniform | **51.00 ± 1.41 (2)** | 700.00 ± 20.00 (3) | **375.50** |" in markdown
    assert "p < 0.01" in markdown
    assert (tmp_path / "out" / "ppl_vs_sparsity_tiny_wikitext2.png").stat().st_size > 1000


def test_a_metrics_readings_are_rows_of_their_own():
    """SwiftPrune's two scores over the same seeds are two methods, not one cell with mixed replicates."""
    docs = []
    for score, values in (("contribution", (600.0, 620.0)), ("obs_rank1", (27000.0, 26000.0))):
        for seed, ppl in enumerate(values):
            doc = seeded("swiftprune", "uniform", 0.7, seed, ppl)
            doc["config"]["metric"]["score"] = score
            doc["case_id"] += score
            docs.append(doc)
    table = tables.build_tables(docs)["tiny"]
    assert table.spreads[("swiftprune (contribution) + uniform", ("70%", "wikitext2"))].mean == pytest.approx(610.0)
    assert table.spreads[("swiftprune (obs_rank1) + uniform", ("70%", "wikitext2"))].mean == pytest.approx(26500.0)


def test_the_side_by_side_summary_keeps_each_models_cells_and_marks(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("summary", Path(__file__).resolve().parents[2] / "sweeps" / "methods_seeds_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    header = "model,method,70% wikitext2,70% wikitext2 std,70% wikitext2 n,70% wikitext2 p vs baseline,mean\n"
    (tmp_path / "a.csv").write_text(header + "A,dense,10,,1,,10\nA,owl + x,600,10,3,0.001,600\n")
    (tmp_path / "b.csv").write_text(header + "B,owl + x,900,50,3,0.2,900\n")
    summary.main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| method | A 70% wikitext2 | B 70% wikitext2 |"
    assert lines[2] == "| dense | 10.0 |  |"
    assert lines[3] == "| owl + x | 600.0 ± 10.0 (3) * | 900.0 ± 50.0 (3) ~ |"
