"""The ``sparsebench`` command end to end on a tiny local model, as a user runs it."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from conftest import PTB_TEST, WIKITEXT_TEST, compose_config, tiny_case_overrides
from sparsebench.config import validate
from sparsebench.results import REQUIRED_KEYS, is_done, read_document, write_document
from sparsebench.runner import run_case


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", "sparsebench.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def _sha256(path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_single_case_writes_a_complete_document_and_skips_when_done(tiny_model_dirs, tmp_path, cache_dir):
    ptb = PTB_TEST
    args = tiny_case_overrides(tiny_model_dirs["opt"], tmp_path / "results", cache_dir, "sparsegpt", ["sparsity=2of4", "eval.ppl.datasets=[wikitext2,ptb]", f"data.ptb={ptb}"])
    done = _run(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (document_path,) = (tmp_path / "results").glob("*.json")
    document = json.loads(document_path.read_text())
    assert all(key in document for key in REQUIRED_KEYS)
    assert document["status"] == "ok"
    assert document["case_id"] == document_path.stem and "sparsegpt" in document["case_id"] and "2of4" in document["case_id"]
    assert document["config"]["metric"] == {"name": "sparsegpt", "blocksize": 128, "damp": 0.01, "kernel": "triton", "factor": "reference"}
    assert set(document["metrics"]["ppl"]) == {"wikitext2", "ptb"}
    # what it read, by content: calibration (the train split) and evaluation (test) of one file, and PTB's test file
    wikitext = _sha256(WIKITEXT_TEST)
    assert document["notes"]["data_content"] == {"wikitext2": {"train": wikitext, "test": wikitext}, "ptb": {"test": _sha256(ptb)}}
    assert document["sparsity"]["pattern"] == "2:4" and document["sparsity"]["achieved"] >= 0.5
    assert {"load_s", "prune_s", "eval_s", "total_s", "calibration_data_s"} <= set(document["timings"])
    assert document["memory"]["peak_cpu_rss_bytes"] > 0
    assert document["environment"]["torch"] and "git" in document["environment"]
    assert document["model"]["family"] == "opt" and document["model"]["parameters"] > 0

    again = _run(args, tmp_path)
    assert again.returncode == 0 and "skipping" in again.stdout + again.stderr
    assert json.loads(document_path.read_text())["finished_at"] == document["finished_at"]


def test_multirun_grid_runs_every_case(tiny_model_dirs, tmp_path, cache_dir):
    args = tiny_case_overrides(tiny_model_dirs["llama"], tmp_path / "results", cache_dir, "wanda")
    done = _run(["--multirun", "metric=magnitude,wanda,sparsegpt", "sparsity.ratio=0.5,0.6", *[a for a in args if not a.startswith("metric=")]], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    documents = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*.json")]
    assert len(documents) == 6 and all(d["status"] == "ok" for d in documents)
    assert {(d["config"]["metric"]["name"], d["config"]["sparsity"]["ratio"]) for d in documents} == {(m, r) for m in ("magnitude", "wanda", "sparsegpt") for r in (0.5, 0.6)}


def test_dense_case_ignores_sparsity(tiny_model_dirs, tmp_path, cache_dir):
    # In-process: the case id is the runner's, the CLI adds nothing to it (the tests above run the CLI).
    args = tiny_case_overrides(tiny_model_dirs["llama"], tmp_path / "results", cache_dir, "none")
    first = run_case(validate(compose_config(args)))
    second = run_case(validate(compose_config(args + ["sparsity.ratio=0.7"])))
    assert first["status"] == "ok" and second["case_id"] == first["case_id"] and second["finished_at"] == first["finished_at"]  # skipped
    (document,) = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*.json")]
    sparsity = document["sparsity"]
    assert (sparsity["target"], sparsity["pattern"], sparsity["checked_against_target"]) == (0.0, "dense", False) and "_dense_" in document["case_id"]
    assert sparsity["zeros"] == sum(layer["zeros"] for layer in sparsity["per_layer"].values()) and sparsity["achieved"] < 0.01  # measured: a dense model


def test_documents_are_written_atomically(tmp_path):
    path = tmp_path / "case.json"
    write_document(path, {"schema_version": 1, "case_id": "case", "status": "ok", "config": {}, "timings": {}, "environment": {}})
    assert is_done(path)

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("interrupted while writing")

    try:
        write_document(path, {"schema_version": 1, "case_id": "case", "status": "failed", "config": {"x": Unserialisable()}, "timings": {}, "environment": {}})
    except RuntimeError:
        pass
    assert read_document(path)["status"] == "ok"  # the old document is intact
    assert [p.name for p in tmp_path.iterdir()] == ["case.json"]  # no partial file is left
    path.write_text('{"status": "ok"')  # a truncated document does not count as done
    assert not is_done(path)
