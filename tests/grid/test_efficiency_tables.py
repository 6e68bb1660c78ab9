"""``sparsebench-tables --also efficiency`` and the W&B mirror read the same export and efficiency fields."""

from __future__ import annotations

import pytest

from sparsebench.analysis import tables
from sparsebench.analysis.tables_cli import main as tables_main
from tests.grid.test_tables import KNOWN


def _with_efficiency(doc, pattern, export_bytes, prefill, decode, speedup=None, skipped=None):
    config = {**doc["config"], "sparsity": {**doc["config"]["sparsity"], "pattern": pattern}, "export": {"format": "compressed"},
              "eval": {**doc["config"]["eval"], "efficiency": {"enabled": True, "decode_batches": [1, 8]}}}
    if pattern == "2:4":
        config["sparsity"]["ratio"] = 0.5

    def measured(scale):
        return {"prefill": {"tokens_per_s": prefill * scale, "peak_memory_bytes": 3e6},
                "decode": {"1": {"tokens_per_s": decode * scale, "peak_memory_bytes": 4e6}, "8": {"tokens_per_s": 8 * decode * scale, "peak_memory_bytes": 5e6}},
                "weight_bytes_in_memory": 1e6}

    efficiency = {"dense_weights": measured(1.0), "sparse_kernels": measured(speedup) if speedup else None,
                  "speedup": {"prefill": speedup, "decode": {"1": speedup, "8": speedup}} if speedup else None, "skipped": skipped or []}
    export = {"format": "compressed", "path": "/m", "dtype": "float16", "weight_bytes": export_bytes, "bytes_on_disk": export_bytes + 10,
              "dense_weight_bytes": 200e6, "weight_bytes_vs_dense": export_bytes / 200e6}
    return {**doc, "config": config, "export": export, "metrics": {**doc["metrics"], "efficiency": efficiency}}


CPU_SKIP = [{"what": "sparse kernels", "why": "need a CUDA GPU"}]
NOT_2OF4 = [{"what": "sparse kernels", "why": "need 2:4 sparsity"}]
DOCS = [
    _with_efficiency(KNOWN[0], "unstructured", 210e6, 1000.0, 50.0, skipped=NOT_2OF4),
    _with_efficiency(KNOWN[1], "unstructured", 130e6, 1010.0, 51.0, skipped=NOT_2OF4),
    _with_efficiency(KNOWN[5], "2:4", 120e6, 990.0, 49.0, speedup=1.25),
    _with_efficiency({**KNOWN[5], "config": {**KNOWN[5]["config"], "metric": {"name": "sparsegpt"}}}, "2:4", 121e6, 995.0, 48.0, skipped=CPU_SKIP),
]


def test_efficiency_table_has_sizes_throughput_and_speedups_with_per_column_best():
    table = tables.build_tables(DOCS, None, tables.EFFICIENCY)["tiny"]
    assert table.row_mean("wanda + uniform") is None  # columns of different units: no mean
    assert [c for c in table.columns if c[0] == "2:4"][-3:] == [("2:4", "prefill speedup"), ("2:4", "decode b1 speedup"), ("2:4", "decode b8 speedup")]
    assert "tiny / wanda + uniform / 50% / prefill speedup: skipped: sparse kernels: need 2:4 sparsity" in table.missing
    assert table.values[("magnitude + uniform", ("2:4", "export MB"))] == pytest.approx(120.0)
    assert table.values[("magnitude + uniform", ("2:4", "decode b8 speedup"))] == pytest.approx(1.25)
    assert table.values[("wanda + uniform", ("50%", "decode b8 tok/s"))] == pytest.approx(408.0)
    assert table.values[("wanda + uniform", ("50%", "peak MB"))] == pytest.approx(5.0)
    markdown = tables.to_markdown(table)
    header = markdown.splitlines()[2]
    assert header.startswith("| method | 50% export MB | 50% export / dense | 50% prefill tok/s | 50% decode b1 tok/s | 50% decode b8 tok/s | 50% peak MB |")
    assert "mean" not in header
    assert "| **120.00** | **0.60** | 990.00 |" in markdown  # smaller export is better: bold on the 2:4 magnitude row
    assert "| **1010.00** |" in markdown  # higher throughput is better
    assert "tiny / sparsegpt + uniform / 2:4 / prefill speedup: skipped: sparse kernels: need a CUDA GPU" in table.missing


def test_efficiency_fields_go_to_wandb_and_come_back_as_the_same_table(tmp_path):
    from sparsebench.analysis.store import wandb_documents
    from sparsebench.tracking.wandb_mirror import flat_summary

    summaries = [flat_summary(doc) for doc in DOCS]
    assert summaries[2]["efficiency/speedup_decode_b1"] == 1.25 and summaries[2]["efficiency/export_weight_bytes"] == 120e6
    assert summaries[3]["efficiency/skipped"] == "sparse kernels: need a CUDA GPU"

    class Api:
        def runs(self, path, filters):
            return [type("Run", (), {"name": doc["case_id"], "config": doc["config"], "summary": summary})() for doc, summary in zip(DOCS, summaries)]

    from_wandb = tables.build_tables(wandb_documents("proj", api=Api()), None, tables.EFFICIENCY)["tiny"]
    local = tables.build_tables(DOCS, None, tables.EFFICIENCY)["tiny"]
    assert from_wandb.values == local.values and from_wandb.missing == local.missing


def test_tables_command_writes_the_efficiency_files(tmp_path):
    import json

    results = tmp_path / "results"
    results.mkdir()
    for doc in DOCS:
        (results / f"{doc['case_id']}.json").write_text(json.dumps(doc))
    assert tables_main(["--results", str(results), "--out", str(tmp_path / "out"), "--also", "efficiency"]) == 0
    assert "export MB" in (tmp_path / "out" / "efficiency.md").read_text()
    assert (tmp_path / "out" / "efficiency.csv").read_text().splitlines()[0].startswith("model,method,50% export MB,")


def _timed(rate: float, spread: float = 0.05) -> dict:
    """A measurement of ``rate`` tokens/s (one token a repeat) whose quartile times lie ``spread`` either side of the median."""
    median = 1.0 / rate
    return {"tokens_per_s": rate, "seconds_median": median, "seconds_q1": median * (1 - spread), "seconds_q3": median * (1 + spread), "peak_memory_bytes": 3e6}


def _eager_decode(rate: float) -> dict:
    first, full = _timed(100.0, 0.01), _timed(100.0, 0.01)  # t(1 token) = 10 ms, t(N) = 10 ms + 1 / rate
    full = {**full, "seconds_median": 0.01 + 1 / rate, "seconds_q1": 0.01 + 0.9 / rate, "seconds_q3": 0.01 + 1.1 / rate}
    return {"tokens_per_s": rate, "first_token": first, "generate": full, "peak_memory_bytes": 3e6}


def _paths_document(doc, pattern, runs, speedup, skipped=()):
    config = {**doc["config"], "sparsity": {**doc["config"]["sparsity"], "pattern": pattern},
              "eval": {**doc["config"]["eval"], "efficiency": {"enabled": True, "decode_batches": [1], "modes": ["eager", "cuda_graph"]}}}
    if pattern == "2:4":
        config["sparsity"]["ratio"] = 0.5
    runs = {name: {"path": name, "weight_bytes_in_memory": 1e6, "modes": modes} for name, modes in runs.items()}
    efficiency = {"runs": runs, "speedup": speedup, "weight_memory_vs_dense": {}, "skipped": list(skipped)}
    return {**doc, "config": config, "metrics": {**doc["metrics"], "efficiency": efficiency}}


def test_paths_and_modes_get_speedup_columns_and_noise_marks():
    """Per path and mode speedups; a throughput within the dense model's noise reads `~`, a speedup whose range excludes 1.0 reads `*`."""
    cpu = [{"what": "mode cuda_graph", "why": "CUDA graphs need a CUDA GPU; this case ran on the CPU"}]
    dense_modes = {"eager": {"prefill": _timed(100.0), "decode": {"1": _eager_decode(20.0)}}}
    documents = [
        _paths_document({**KNOWN[0], "config": {**KNOWN[0]["config"], "metric": {"name": "none"}}}, "unstructured", {"dense_stored": dense_modes}, {}, cpu),
        _paths_document(KNOWN[1], "unstructured", {"dense_stored": {"eager": {"prefill": _timed(103.0), "decode": {"1": _eager_decode(30.0)}}}}, {}, cpu),
        _paths_document(
            KNOWN[5], "2:4",
            {
                "dense_stored": {"cuda_graph": {"prefill": _timed(1000.0), "decode": {"1": _timed(50.0)}}, **dense_modes},
                "cusparselt": {"cuda_graph": {"prefill": _timed(1300.0), "decode": {"1": _timed(51.0)}}},
            },
            {"cusparselt": {"cuda_graph": {"prefill": 1.3, "decode": {"1": 1.02}}}},
        ),
    ]
    (table,) = tables.build_tables(documents, measure=tables.EFFICIENCY).values()
    names = [column for _, column in table.columns]
    assert "cusparselt cuda_graph prefill ×" in names and "semi_structured eager decode b1 ×" in names and "bitmask cuda_graph decode b1 ×" in names
    assert "prefill tok/s (cuda_graph)" in names
    wanda = ("wanda + uniform", ("50%", "prefill tok/s"))
    assert table.values[wanda] == pytest.approx(103.0) and table.noise[wanda] == "within noise"  # 3 % apart, 5 % quartiles
    assert table.noise[("wanda + uniform", ("50%", "decode b1 tok/s"))] == "beyond noise"  # 30 against 20 tokens/s
    graph = ("magnitude + uniform", ("2:4", "cusparselt cuda_graph prefill ×"))
    assert table.values[graph] == pytest.approx(1.3) and table.noise[graph] == "beyond noise"
    low, high = table.ranges[graph]
    assert low == pytest.approx(1300 / 1.05 / (1000 / 0.95)) and high == pytest.approx(1300 / 0.95 / (1000 / 1.05))
    assert table.noise[("magnitude + uniform", ("2:4", "cusparselt cuda_graph decode b1 ×"))] == "within noise"
    markdown = tables.to_markdown(table)
    assert "1.30 (1.18-1.44)** *" in markdown and "103.00 (98.10-108.42)** ~" in markdown and "interquartile" in markdown  # bold: the best
    assert any("prefill tok/s (cuda_graph): skipped: mode cuda_graph: CUDA graphs need a CUDA GPU" in entry for entry in table.missing)
    csv_header = tables.to_csv(table).splitlines()[0]
    assert "50% prefill tok/s low" in csv_header and "2:4 cusparselt cuda_graph prefill × noise" in csv_header
