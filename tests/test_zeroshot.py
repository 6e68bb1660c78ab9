"""Zero-shot evaluation through lm-eval on the model in memory: offline, configured, recorded."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from unittest import mock

import pytest
from conftest import compose_config, tiny_case_overrides
from zeroshot_examples import HUB_ROWS, builtin_task, write_jsonl, write_task_copies

from sparsebench.config import validate
from sparsebench.errors import ConfigError, DataError
from sparsebench.evaluate.zeroshot import ZeroShotSpec, evaluate_zeroshot, load_tasks, validate_zeroshot, wrap_model
from sparsebench.evaluate.zeroshot_means import PAPER_TASKS
from sparsebench.evaluate.zeroshot_tasks import TASKS
from sparsebench.runner import run_case

# Only the engine itself needs lm-eval; configuration errors are checked without it. CI installs
# ".[dev]", which holds lm-eval, so these run there.
needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval is not installed (pip install 'sparsebench[zeroshot]')")

# Put on PYTHONPATH of a sparsebench subprocess: every connection it tries is refused and listed in a file.
NETWORK_GUARD = """
import os, socket
def _refuse(*args, **kwargs):
    with open(os.environ["NETWORK_ATTEMPTS"], "a") as log:
        log.write(repr(args[:2]) + "\\n")
    raise OSError("this test has no network")
socket.socket.connect = _refuse
socket.getaddrinfo = _refuse
socket.create_connection = _refuse
"""


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    return write_task_copies(tmp_path_factory.mktemp("zeroshot-data"))


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection is refused and recorded."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("the tests have no network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


@pytest.fixture(scope="module")
def tiny_lm(wikitext_lines):
    from sparsebench.testing.tiny_models import tiny_model, train_tiny_tokenizer

    return tiny_model("llama"), train_tiny_tokenizer(wikitext_lines)


@needs_lm_eval
def test_yes_no_and_multiple_choice_tasks_offline_give_lm_evals_numbers(copies, tiny_lm, no_network):
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = tiny_lm
    spec = validate_zeroshot({"tasks": ["boolq", "hellaswag"]}, {name: str(copies[name]) for name in ("boolq", "hellaswag")})
    results = evaluate_zeroshot(wrap_model(model, tokenizer, spec, "cpu", progress=False), load_tasks(spec), spec)
    assert no_network == []

    # lm-eval's own tasks (their hub download answered by the same rows), its own wrapper, batch size 1
    reference = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1), tasks=[builtin_task("boolq"), builtin_task("hellaswag")],
        num_fewshot=0, log_samples=False, task_manager=TaskManager(include_defaults=False),
    )
    for name, metrics, choices in (("boolq", ("acc",), 2), ("hellaswag", ("acc", "acc_norm"), 4)):
        result = results[name]
        for metric in metrics:
            assert result[metric] == reference["results"][name][f"{metric},none"]
            assert result[f"{metric}_stderr"] == pytest.approx(reference["results"][name][f"{metric}_stderr,none"])
        rows = len(HUB_ROWS[name])
        assert_task_fields(result, metrics, documents=rows, in_split=rows, requests=choices * rows, source=copies[name], version=reference["versions"][name])

    mean = results["mean"]["wanda"]
    assert mean["value"] == pytest.approx((results["boolq"]["acc"] + results["hellaswag"]["acc"]) / 2)
    assert mean["tasks_evaluated"] == ["boolq", "hellaswag"] and not mean["complete"]
    assert mean["tasks_missing"] == [t for t in PAPER_TASKS if t not in ("boolq", "hellaswag")]
    assert set(mean["metric_per_task"].values()) == {"acc"}
    assert results["lm_eval"]["version"] == "0.4.13" and results["lm_eval"]["batch_size_used"] == 8


@needs_lm_eval
def test_case_with_perplexity_and_zero_shot(tiny_model_dirs, tmp_path, cache_dir, copies, no_network):
    """eval=full through the runner: perplexity and the two kinds of task, recorded in the document."""
    overrides = tiny_case_overrides(
        tiny_model_dirs["llama"], tmp_path / "results", cache_dir,
        extra=["eval=full", "eval.zeroshot.tasks=[boolq,piqa]", "eval.zeroshot.limit=2", f"data.boolq={copies['boolq']}", f"data.piqa={copies['piqa']}"],
    )
    document = run_case(validate(compose_config(overrides)))
    assert document["status"] == "ok", document.get("error")
    assert no_network == []
    assert document["sparsity"]["achieved"] >= 0.5  # the pruned model was evaluated
    zeroshot = document["metrics"]["zeroshot"]
    assert document["metrics"]["ppl"]["wikitext2"]["ppl"] > 1
    assert_task_fields(zeroshot["boolq"], ("acc",), documents=2, in_split=3, requests=4, source=copies["boolq"], version=2.0)
    assert_task_fields(zeroshot["piqa"], ("acc", "acc_norm"), documents=2, in_split=3, requests=4, source=copies["piqa"], version=1.0)
    assert zeroshot["mean"]["wanda"]["tasks_evaluated"] == ["boolq"]  # PIQA is in no paper's mean
    assert zeroshot["mean"]["wanda"]["value"] == zeroshot["boolq"]["acc"]
    counts, seconds, scoring = (zeroshot["lm_eval"].pop(key) for key in ("forward_counts", "seconds", "scoring_seconds"))
    assert seconds >= scoring > 0 and seconds == pytest.approx(zeroshot["boolq"]["seconds"] + zeroshot["piqa"]["seconds"])  # one call, shared
    assert scoring == pytest.approx(zeroshot["boolq"]["scoring_seconds"] + zeroshot["piqa"]["scoring_seconds"])
    assert zeroshot["lm_eval"] == {"version": "0.4.13", "num_fewshot": 0, "limit": 2, "batch_size": "auto", "batch_size_used": 8, "scoring": "token_batches", "batch_tokens": 512}
    assert counts["rows"] <= 8 and counts["padded_tokens"] >= counts["tokens"] > 0  # 2 documents x 2 choices x 2 tasks
    assert {"zeroshot_tasks_s", "eval_zeroshot_boolq_s", "eval_zeroshot_piqa_s"} <= set(document["timings"])
    assert document["timings"]["eval_s"] >= document["timings"]["eval_zeroshot_boolq_s"] + document["timings"]["eval_zeroshot_piqa_s"]
    json.dumps(document)  # the document is plain JSON

    plain = run_case(validate(compose_config(tiny_case_overrides(tiny_model_dirs["llama"], tmp_path / "results", cache_dir))))
    assert "zeroshot" not in plain["metrics"] and plain["case_id"] != document["case_id"]


def assert_task_fields(result: dict, metrics: tuple, documents: int, in_split: int, requests: int, source, version: float) -> None:
    """One task's entry in metrics.zeroshot: lm-eval's metrics with their errors, counts, provenance, times."""
    assert {key for key in result if key.startswith("acc")} == {*metrics, *(f"{m}_stderr" for m in metrics)}
    for metric in metrics:
        assert 0 <= result[metric] <= 1 and result[f"{metric}_stderr"] >= 0
    assert (result["documents"], result["documents_in_split"], result["requests"]) == (documents, in_split, requests)
    assert result["version"] == version
    assert result["num_fewshot"] == 0 and result["source"] == str(source)
    assert 0 < result["scoring_seconds"] <= result["seconds"]


@needs_lm_eval
def test_sparsebench_command_offline(tiny_model_dirs, tmp_path, cache_dir, copies):
    """``sparsebench eval=zeroshot`` as a user runs it, with every connection refused: the document is complete."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NETWORK_GUARD)
    attempts = tmp_path / "attempts.txt"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(guard), *filter(None, [os.environ.get("PYTHONPATH")])]), "NETWORK_ATTEMPTS": str(attempts)}
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        environment.pop(key, None)  # no switch hides an attempt: the guard sees them all
    args = [
        *tiny_case_overrides(tiny_model_dirs["llama"], tmp_path / "results", cache_dir, "magnitude"),
        "eval=zeroshot", "eval.zeroshot.tasks=[arc_easy,boolq]", f"data.arc_easy={copies['arc_easy']}", f"data.boolq={copies['boolq']}",
    ]
    done = subprocess.run([sys.executable, "-m", "sparsebench.cli", *args], capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not attempts.exists(), attempts.read_text()
    (path,) = (tmp_path / "results").glob("*.json")
    document = json.loads(path.read_text())
    assert document["status"] == "ok" and document["metrics"]["ppl"] == {}
    zeroshot = document["metrics"]["zeroshot"]
    assert_task_fields(zeroshot["arc_easy"], ("acc", "acc_norm"), documents=2, in_split=2, requests=7, source=copies["arc_easy"], version=1.0)
    assert_task_fields(zeroshot["boolq"], ("acc",), documents=3, in_split=3, requests=6, source=copies["boolq"], version=2.0)
    mean = zeroshot["mean"]["wanda"]
    assert mean["value"] == pytest.approx((zeroshot["arc_easy"]["acc"] + zeroshot["boolq"]["acc"]) / 2)
    assert mean["tasks_evaluated"] == ["boolq", "arc_easy"] and not mean["complete"]
    assert "zero-shot arc_easy: acc" in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["eval.zeroshot.tasks=[mmlu]"], ConfigError, "eval.zeroshot.tasks: 'mmlu' is not supported; allowed values are boolq, rte,"),
        (["eval.zeroshot.tasks=[piqa,piqa]"], ConfigError, "a task is listed twice"),
        (["eval=zeroshot", "eval.zeroshot.limit=0"], ConfigError, "eval.zeroshot.limit=0: must be an integer >= 1"),
        (["eval=zeroshot", "eval.zeroshot.batch_size=large"], ConfigError, "eval.zeroshot.batch_size='large': must be an integer >= 1"),
        (["eval=zeroshot", "eval.zeroshot.scoring=fast"], ConfigError, "eval.zeroshot.scoring='fast': allowed values are token_batches, hflm"),
        (["eval=zeroshot", "eval.zeroshot.batch_tokens=0"], ConfigError, "eval.zeroshot.batch_tokens=0: must be an integer >= 1"),
        (["eval=zeroshot", "data.boolq=/no/such/boolq.jsonl"], ConfigError, "data.boolq='/no/such/boolq.jsonl': no such file or folder"),
    ],
)
def test_bad_zero_shot_settings_fail_before_any_model_loads(overrides, error, message):
    """Checked at validation (no model loaded), with or without lm-eval installed."""
    with pytest.raises(error, match=message.replace("[", r"\[").replace("(", r"\(")):
        validate(compose_config(overrides))


@needs_lm_eval
def test_a_bad_local_copy_fails_at_validation(tmp_path):
    path = write_jsonl(tmp_path / "boolq.jsonl", [{"question": "q", "passage": "p", "answer": True}])
    with pytest.raises(DataError, match="data.boolq: row 1 of .* has no 'label' column"):
        validate(compose_config(["eval.zeroshot.tasks=[boolq]", f"data.boolq={path}"]))
    assert validate(compose_config([])).zeroshot is None


@needs_lm_eval
def test_unreachable_hub_fails_at_once_naming_the_local_keys(monkeypatch, no_network, copies):
    import datasets

    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", False)
    with mock.patch.object(datasets, "load_dataset", side_effect=AssertionError("must not be called")):
        with pytest.raises(DataError, match=r"zero-shot task rte: could not load nyu-mll/glue \(rte\) from the hub: .* does not answer .*offline, give a local copy with data.rte=PATH \(the validation split of nyu-mll/glue \(rte\) as .jsonl or .parquet with columns sentence1 \(str\), sentence2 \(str\), label \(int\)\)"):
            load_tasks(ZeroShotSpec((TASKS["rte"],)))
        assert len(no_network) == 1  # the one reachability check, refused

        # several tasks, one with a local copy: every missing one is named, and what can run instead
        with pytest.raises(DataError) as raised:
            load_tasks(ZeroShotSpec((TASKS["boolq"], TASKS["piqa"], TASKS["arc_easy"]), {"piqa": str(copies["piqa"])}))
    lines = str(raised.value).splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["zero-shot task boolq", "zero-shot task arc_easy"]
    assert "data.arc_easy=PATH (the test split of allenai/ai2_arc (ARC-Easy)" in lines[1]
    assert lines[2] == "or evaluate only the tasks that have local copies: eval.zeroshot.tasks=[piqa]"
    assert len(no_network) == 2


@needs_lm_eval
def test_hub_switched_off_fails_at_once_naming_the_local_files(tmp_path):
    """HF_HUB_OFFLINE=1 and nothing cached: lm-eval's download fails at once, and the error says what to give."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = (
        "import time\n"
        "from sparsebench.errors import DataError\n"
        "from sparsebench.evaluate.zeroshot import ZeroShotSpec, load_tasks\n"
        "from sparsebench.evaluate.zeroshot_tasks import TASKS\n"
        "started = time.perf_counter()\n"
        "try:\n"
        "    load_tasks(ZeroShotSpec((TASKS['piqa'],)))\n"
        "except DataError as error:\n"
        "    print(f'{time.perf_counter() - started:.1f}', error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, timeout=300)
    seconds, _, message = done.stdout.strip().partition(" ")
    assert message.startswith("zero-shot task piqa: could not load baber/piqa from the hub"), done.stderr[-2000:]
    assert "data.piqa=PATH" in message and "a folder with valid.jsonl and valid-labels.lst" in message
    assert float(seconds) < 10


def test_zero_shot_without_lm_eval_says_what_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"eval.zeroshot.tasks needs lm-eval: pip install 'sparsebench\[zeroshot\]' \(lm-eval==0.4.13\)"):
        validate(compose_config(["eval.zeroshot.tasks=[piqa]"]))
    assert validate(compose_config([])).zeroshot is None  # perplexity alone never needs it
