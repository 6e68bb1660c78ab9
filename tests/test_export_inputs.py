"""Exports are inputs too: ``sparsebench model.path=<export folder>`` loads either format through the project's
loader, evaluates it (perplexity, zero-shot, efficiency), fine-tunes it, and records its measured sparsity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_DATA, compose_config, tiny_case_overrides
from sparsebench.config import validate
from sparsebench.export import WEIGHTS_FILE, needs_load_export
from sparsebench.runner import run_case

PIQA = SHARED_DATA / "zeroshot" / "piqa"
EVALUATE_AND_FINETUNE = [
    "metric=none", "eval=full", "eval.zeroshot.tasks=[piqa]", "eval.zeroshot.limit=2", f"data.piqa={PIQA}",
    "eval.efficiency.enabled=true", "eval.efficiency.prefill_seqlen=16", "eval.efficiency.decode_batches=[1]", "eval.efficiency.warmup=0",
    "eval.efficiency.warmup_seconds=0", "eval.efficiency.decode_prompt=4", "eval.efficiency.decode_tokens=3", "eval.efficiency.repeats=1",
    "finetune=lora", "finetune.steps=2", "finetune.seqlen=32", "finetune.batch_size=2", "finetune.dataset=wikitext2",
]


def _cli(args, cwd):
    run = subprocess.run([sys.executable, "-m", "sparsebench.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (path,) = [p for p in (Path(cwd) / "evaluated").glob("*.json")]
    return json.loads(path.read_text())


def _check_evaluated(pruned: dict, evaluated: dict) -> None:
    """The export, loaded back and evaluated with metric=none: the pruned case's perplexity exactly, its zeros measured."""
    assert evaluated["status"] == "ok", evaluated.get("error")
    assert evaluated["metrics"]["ppl_before_finetune"]["wikitext2"]["ppl"] == pruned["metrics"]["ppl"]["wikitext2"]["ppl"]
    measured = evaluated["sparsity"]
    assert measured["checked_against_target"] is False and measured["target"] == 0.0
    assert measured["zeros"] == pruned["sparsity"]["zeros"] and measured["achieved"] == pruned["sparsity"]["achieved"] >= 0.5
    assert {name: layer["zeros"] for name, layer in measured["per_layer"].items()} == {name: layer["zeros"] for name, layer in pruned["sparsity"]["per_layer"].items()}
    assert evaluated["metrics"]["zeroshot"]["piqa"]["acc"] >= 0 and evaluated["metrics"]["efficiency"]["runs"]["dense_stored"]["modes"]["eager"]["prefill"]["tokens_per_s"] > 0
    assert evaluated["metrics"]["efficiency"]["pattern"] == "2:4"  # the loaded weights' pattern: their 2:4 paths are the ones timed
    assert evaluated["finetune"]["steps"] == 2 and evaluated["metrics"]["ppl"]["wikitext2"]["ppl"] > 1


@pytest.mark.parametrize("fmt", ["hf", "compressed"])
def test_an_export_loads_evaluates_and_fine_tunes_through_the_cli(tiny_model_dirs, tmp_path, cache_dir, fmt):
    overrides = tiny_case_overrides(tiny_model_dirs["llama"], tmp_path / "results", cache_dir, "wanda", ["sparsity=2of4", f"export={fmt}"])
    pruned = run_case(validate(compose_config(overrides)))
    assert pruned["status"] == "ok", pruned.get("error")
    folder = Path(pruned["export"]["path"])
    assert needs_load_export(folder) == (fmt == "compressed") and (folder / WEIGHTS_FILE).exists() == (fmt == "compressed")
    args = tiny_case_overrides(folder, tmp_path / "evaluated", cache_dir, "none", EVALUATE_AND_FINETUNE)
    _check_evaluated(pruned, _cli(args, tmp_path))


def test_a_sparse_plus_low_rank_export_loads_with_its_factors(tiny_model_dirs, tmp_path, cache_dir):
    overrides = tiny_case_overrides(tiny_model_dirs["llama"], tmp_path / "results", cache_dir, "hassle_free", ["sparsity=2of4", "decomposition.rank=2", "metric.iterations=2", "export=compressed"])
    pruned = run_case(validate(compose_config(overrides)))
    assert pruned["status"] == "ok", pruned.get("error")
    evaluated = run_case(validate(compose_config(tiny_case_overrides(pruned["export"]["path"], tmp_path / "evaluated", cache_dir, "none"))))
    assert evaluated["status"] == "ok", evaluated.get("error")
    assert evaluated["metrics"]["ppl"]["wikitext2"]["ppl"] == pruned["metrics"]["ppl"]["wikitext2"]["ppl"]  # the factors are in the model
    assert evaluated["sparsity"]["zeros"] == pruned["sparsity"]["zeros"]


@pytest.mark.slow
def test_a_compressed_smollm2_export_loads_evaluates_and_fine_tunes_through_the_cli(tmp_path):
    """The real SmolLM2-135M: Wanda 2:4 exported compressed, then evaluated and fine-tuned from the folder."""
    common = [
        f"data.wikitext2={SHARED_DATA / 'wikitext2-tok'}", "calibration.dataset=wikitext2", "calibration.split=validation",
        "calibration.nsamples=2", "calibration.seqlen=128", "eval.ppl.seqlen=128", "eval.ppl.max_segments=2", "device=cpu", "progress=false",
    ]
    pruned = run_case(validate(compose_config(["model=smollm2-135m-q4", "metric=wanda", "sparsity=2of4", "export=compressed", f"results_dir={tmp_path / 'results'}", *common])))
    assert pruned["status"] == "ok", pruned.get("error")
    args = [f"model.path={pruned['export']['path']}", *common, f"results_dir={tmp_path / 'evaluated'}", *EVALUATE_AND_FINETUNE, "finetune.split=validation"]
    evaluated = _cli(args, tmp_path)
    _check_evaluated(pruned, evaluated)
    assert evaluated["model"]["parameters"] == pruned["model"]["parameters"]
    assert evaluated["sparsity"]["achieved_of_all_parameters"] == pruned["sparsity"]["achieved_of_all_parameters"]
