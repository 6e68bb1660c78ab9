"""Tables from a known set of hand-written result documents equal the expected tables."""

from __future__ import annotations

import json

import pytest

from sparsebench.analysis import tables
from sparsebench.analysis.tables_cli import main as tables_main


def document(metric, allocator, ratio, ppl=None, error=None, experiment="grid"):
    case = f"tiny_{metric}_{allocator}_s{ratio}"
    doc = {
        "schema_version": 1, "case_id": case, "status": "failed" if error else "ok", "timings": {}, "environment": {},
        "config": {
            "model": {"name": "tiny", "path": "/m/tiny"}, "metric": {"name": metric}, "allocator": {"name": allocator},
            "sparsity": {"ratio": ratio, "pattern": "unstructured"}, "eval": {"ppl": {"datasets": ["wikitext2", "c4"]}},
            "experiment_name": experiment,
        },
        "metrics": {"ppl": {name: {"ppl": value} for name, value in (ppl or {}).items()}},
        "sparsity": {"target": ratio, "per_layer": {f"layer{i}": {"target": ratio + 0.01 * (i - 1)} for i in range(3)}},
    }
    if error:
        doc["error"] = {"type": "RuntimeError", "message": error}
    return doc


KNOWN = [
    document("none", "uniform", 0.5, {"wikitext2": 10.0, "c4": 12.0}),
    document("wanda", "uniform", 0.5, {"wikitext2": 15.0, "c4": 18.0}),
    document("wanda", "uniform", 0.7, {"wikitext2": 40.0, "c4": 50.0}),
    document("wanda", "owl", 0.5, {"wikitext2": 14.0, "c4": 19.0}),
    document("wanda", "owl", 0.7, error="boom"),
    document("magnitude", "uniform", 0.5, {"wikitext2": 30.0, "c4": 35.0}),
]

EXPECTED_MARKDOWN = """\
**tiny** (perplexity, lower is better)

| method | 50% wikitext2 | 50% c4 | 70% wikitext2 | 70% c4 | mean |
|---|---:|---:|---:|---:|---:|
| dense | 10.00 | 12.00 | 10.00 | 12.00 | 11.00 |
| magnitude + uniform | 30.00 | 35.00 |  |  |  |
| wanda + owl | **14.00** | 19.00 |  |  |  |
| wanda + uniform | 15.00 | **18.00** | **40.00** | **50.00** | **30.75** |

Missing cases:
- tiny / magnitude + uniform / 70% / wikitext2: not run
- tiny / magnitude + uniform / 70% / c4: not run
- tiny / wanda + owl / 70% / wikitext2: failed: RuntimeError: boom
- tiny / wanda + owl / 70% / c4: failed: RuntimeError: boom
"""

EXPECTED_CSV = """\
model,method,50% wikitext2,50% c4,70% wikitext2,70% c4,mean
tiny,dense,10.0,12.0,10.0,12.0,11.0
tiny,magnitude + uniform,30.0,35.0,,,
tiny,wanda + owl,14.0,19.0,,,
tiny,wanda + uniform,15.0,18.0,40.0,50.0,30.75
"""


def test_markdown_table_equals_the_expected_table():
    built = tables.build_tables(KNOWN, ["wikitext2", "c4"])
    assert list(built) == ["tiny"]
    assert tables.to_markdown(built["tiny"]) == EXPECTED_MARKDOWN


def test_csv_and_latex_carry_the_same_cells():
    table = tables.build_tables(KNOWN, ["wikitext2", "c4"])["tiny"]
    assert tables.to_csv(table) == EXPECTED_CSV
    latex = tables.to_latex(table)
    assert r"wanda + owl & \textbf{14.00} & 19.00 &  &  &  \\" in latex
    assert r"method & 50\% wikitext2 & 50\% c4 & 70\% wikitext2 & 70\% c4 & mean \\" in latex
    assert latex.count("% missing:") == 4


def test_two_documents_for_one_cell_are_an_error():
    with pytest.raises(tables.AnalysisError, match="two ok documents for tiny / wanda \\+ uniform / 50% / c4"):
        tables.build_tables([*KNOWN, {**KNOWN[1], "case_id": "another"}])


def test_cli_writes_tables_and_figures_from_the_local_store(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for doc in [*KNOWN, document("wanda", "uniform", 0.6, {"wikitext2": 1.0, "c4": 1.0}, experiment="other")]:
        (results / f"{doc['case_id']}.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert tables_main(["--results", str(results), "--experiment", "grid", "--datasets", "wikitext2", "c4", "--out", str(out), "--figures"]) == 0
    assert (out / "tables.md").read_text() == EXPECTED_MARKDOWN  # the "other" experiment is filtered out
    assert (out / "tables.csv").read_text() == EXPECTED_CSV
    pngs = sorted(path.name for path in out.glob("*.png"))
    assert pngs == ["per_layer_tiny_0.5.png", "per_layer_tiny_0.7.png", "ppl_vs_sparsity_tiny_c4.png", "ppl_vs_sparsity_tiny_wikitext2.png"]
    assert all((out / name).read_bytes()[:4] == b"\x89PNG" for name in pngs)


def test_wandb_runs_become_documents_filtered_by_group_and_tags():
    from sparsebench.analysis.store import wandb_documents

    class Run:
        name = "tiny_wanda_uniform_s0.5"
        config = KNOWN[1]["config"]
        summary = {"status": "ok", "ppl/wikitext2": 15.0, "ppl/c4": 18.0, "sparsity/target": 0.5}

    class Api:
        def runs(self, path, filters):
            self.seen = (path, filters)
            return [Run()]

    api = Api()
    docs = wandb_documents("proj", "team", "grid", ("metric:wanda",), api=api)
    assert api.seen == ("team/proj", {"group": "grid", "tags": {"$all": ["metric:wanda"]}})
    assert docs[0]["metrics"]["ppl"] == {"wikitext2": {"ppl": 15.0}, "c4": {"ppl": 18.0}}
    assert tables.build_tables(docs, ["wikitext2", "c4"])["tiny"].values[("wanda + uniform", ("50%", "wikitext2"))] == 15.0


def test_prune_time_table_adds_allocation_to_pruning_and_leaves_out_the_dense_model():
    timed = [dict(doc) for doc in KNOWN]
    timed[1] = {**timed[1], "timings": {"prune_s": 2.0}}
    timed[3] = {**timed[3], "timings": {"prune_s": 2.5, "allocate_s": 1.0}}
    table = tables.build_tables(timed, None, tables.PRUNE_TIME)["tiny"]
    assert table.methods == ["magnitude + uniform", "wanda + owl", "wanda + uniform"]
    assert table.values == {("wanda + uniform", ("50%", "prune s")): 2.0, ("wanda + owl", ("50%", "prune s")): 3.5}
    markdown = tables.to_markdown(table)
    assert "(prune time in seconds (allocation + pruning), lower is better)" in markdown
    assert "| wanda + uniform | **2.00** |  |  |" in markdown
    assert "tiny / magnitude + uniform / 50% / prune s: not run" in table.missing


def _with_zeroshot(doc, accuracies):
    tasks = ["rte", "boolq"]
    config = {**doc["config"], "eval": {"ppl": {"datasets": []}, "zeroshot": {"tasks": tasks}}}
    zeroshot = {task: {"acc": acc, "acc_norm": acc + 0.1, "acc_stderr": 0.01} for task, acc in accuracies.items()}
    zeroshot["mean"] = {"wanda": {"value": sum(accuracies.values()) / len(accuracies)}}
    return {**doc, "config": config, "metrics": {"ppl": {}, "zeroshot": zeroshot}}


def test_zeroshot_table_takes_acc_in_percent_keeps_the_task_order_and_bolds_the_highest():
    docs = [
        _with_zeroshot(KNOWN[0], {"rte": 0.6, "boolq": 0.7}),
        _with_zeroshot(KNOWN[1], {"rte": 0.55, "boolq": 0.65}),
        _with_zeroshot(KNOWN[3], {"rte": 0.575, "boolq": 0.6}),
        _with_zeroshot(KNOWN[5], {"rte": 0.5}),
    ]
    table = tables.build_tables(docs, None, tables.ZEROSHOT)["tiny"]
    assert table.columns == [("50%", "rte"), ("50%", "boolq")]  # the config's order, not sorted
    assert table.row_mean("wanda + uniform") == pytest.approx(60.0)
    assert table.row_mean("magnitude + uniform") is None  # a mean needs every task
    markdown = tables.to_markdown(table)
    assert "(zero-shot accuracy (lm-eval acc, %), higher is better)" in markdown
    assert "| dense | 60.00 | 70.00 | 65.00 |" in markdown  # dense is never bold
    assert "| wanda + owl | **57.50** | 60.00 | 58.75 |" in markdown
    assert "| wanda + uniform | 55.00 | **65.00** | **60.00** |" in markdown
    assert "tiny / magnitude + uniform / 50% / boolq: not run" in table.missing


def test_zeroshot_goes_to_wandb_and_comes_back_as_the_same_table():
    from sparsebench.analysis.store import wandb_documents
    from sparsebench.tracking.wandb_mirror import flat_summary

    local = _with_zeroshot(KNOWN[1], {"rte": 0.55, "boolq": 0.65})
    summary = flat_summary(local)
    assert summary["zeroshot/rte/acc"] == 0.55 and summary["zeroshot/boolq/acc_norm"] == 0.75
    assert summary["zeroshot_mean/wanda"] == pytest.approx(0.6)

    class Run:
        name = local["case_id"]
        config = local["config"]

    Run.summary = summary

    class Api:
        def runs(self, path, filters):
            return [Run()]

    from_wandb = wandb_documents("proj", api=Api())
    assert tables.build_tables(from_wandb, None, tables.ZEROSHOT)["tiny"].values == tables.build_tables([local], None, tables.ZEROSHOT)["tiny"].values


def test_a_store_with_only_the_dense_model_still_shows_its_numbers():
    dense = _with_zeroshot(KNOWN[0], {"rte": 0.6, "boolq": 0.7})
    table = tables.build_tables([dense], None, tables.ZEROSHOT)["tiny"]
    assert table.columns == [("dense", "rte"), ("dense", "boolq")]
    assert "| dense | 60.00 | 70.00 | 65.00 |" in tables.to_markdown(table)


def _nm_document(metric, allocator, pattern, ppl):
    doc = document(metric, allocator, 0.5, {"wikitext2": ppl, "c4": ppl})
    doc["case_id"] = f"tiny_{metric}_{allocator}_{pattern.replace(':', 'of')}"
    doc["config"]["sparsity"]["pattern"] = pattern
    return doc


def test_combinations_that_cannot_exist_read_not_applicable_with_the_reason():
    documents = [
        document("wanda", "uniform", 0.5, {"wikitext2": 15.0, "c4": 18.0}),
        document("wanda", "owl", 0.5, {"wikitext2": 14.0, "c4": 19.0}),
        _nm_document("wanda", "uniform", "2:4", 20.0),
    ]
    table = tables.build_tables(documents, ["wikitext2", "c4"])["tiny"]
    assert table.missing == []  # OWL at 2:4 is not missing work
    markdown = tables.to_markdown(table)
    assert "| wanda + owl | **14.00** | 19.00 | n/a | n/a |" in markdown
    assert (
        "- tiny / wanda + owl / 2:4: not applicable (allocator='owl' cannot honour sparsity.pattern=2:4 "
        "(N:M fixes every layer's ratio); allocators that can: uniform)"
    ) in markdown
    assert "% tiny / wanda + owl / 2:4: not applicable" in tables.to_latex(table)


def test_without_out_the_tables_go_to_standard_output_as_markdown(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    for doc in KNOWN:
        (results / f"{doc['case_id']}.json").write_text(json.dumps(doc))
    assert tables_main(["--results", str(results), "--datasets", "wikitext2", "c4"]) == 0
    assert capsys.readouterr().out.strip() == EXPECTED_MARKDOWN.strip()
    assert sorted(path.name for path in results.iterdir()) == sorted(f"{doc['case_id']}.json" for doc in KNOWN)  # nothing written
    with pytest.raises(SystemExit):
        tables_main(["--results", str(results), "--figures"])
    assert "--figures writes PNG files: it needs --out FOLDER" in capsys.readouterr().err
