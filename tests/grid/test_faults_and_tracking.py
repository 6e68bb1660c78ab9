"""Fault injection, the local tracker and the W&B mirror, one case at a time (in-process)."""

from __future__ import annotations

import json
import sys

import pytest

from sparsebench.config import validate
from sparsebench.errors import ConfigError
from sparsebench.faults import validate_fault
from sparsebench.runner import run_case
from sparsebench.tracking import validate_tracker

from .conftest import compose, documents


def test_injected_fault_is_recorded_and_rerun_redoes_the_case(tiny_case, tmp_path):
    failed = run_case(validate(compose([*tiny_case, "debug.fail_at=prune"])))
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "InjectedFault"
    assert "prune_s" not in failed["timings"]  # it died before pruning

    redone = run_case(validate(compose(tiny_case)))
    assert redone["case_id"] == failed["case_id"]  # debug keys do not change the case
    assert redone["status"] == "ok"
    skipped = run_case(validate(compose(tiny_case)))
    assert skipped["started_at"] == redone["started_at"]


def test_fail_cases_glob_picks_cases(tiny_case):
    spec = validate(compose([*tiny_case, "debug.fail_at=load", "debug.fail_cases=*s0.7*"]))
    assert run_case(spec)["status"] == "ok"  # s0.5 does not match


@pytest.mark.parametrize(
    ("debug", "message"),
    [({"fail_at": "loading"}, "debug.fail_at='loading': allowed values are null, load, prune, eval, write"),
     ({"fail_at": "eval", "fail_mode": "explode"}, "debug.fail_mode='explode': allowed values are raise, kill")],
)
def test_bad_fault_keys_name_the_key(debug, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate_fault(debug)


def test_bad_tracker_keys_name_the_key():
    with pytest.raises(ConfigError, match="tracker.name='mlflow': allowed values are local, wandb"):
        validate_tracker({"name": "mlflow"}, "grid")
    with pytest.raises(ConfigError, match="tracker.wandb.mode='cloud': allowed values are online, offline, disabled"):
        validate_tracker({"name": "wandb", "wandb": {"mode": "cloud", "project": "p"}}, "grid")


def test_missing_wandb_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "wandb" else object())
    with pytest.raises(ConfigError, match=r"pip install 'sparsebench\[wandb\]'"):
        validate_tracker({"name": "wandb", "wandb": {"mode": "offline", "project": "p"}}, "grid")


def test_wandb_group_defaults_to_the_experiment():
    spec = validate_tracker({"name": "wandb", "wandb": {"mode": "offline", "project": "p", "group": None, "tags": ["a"]}}, "owl_grid")
    assert spec.wandb.group == "owl_grid" and spec.wandb.tags == ("a",)


@pytest.fixture
def offline_no_network(monkeypatch, tmp_path):
    """W&B offline, with no API key and every address it might reach unreachable."""
    pytest.importorskip("wandb")
    for key in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_wandb_offline_writes_run_files_and_the_local_document_first(tiny_case, tmp_path, offline_no_network):
    wandb_dir = tmp_path / "wandb-runs"
    overrides = [*tiny_case, "tracker=wandb", f"tracker.wandb.dir={wandb_dir}", "experiment_name=grid-test", "tracker.wandb.tags=[unit]"]
    config = compose(overrides)
    assert config["tracker"]["wandb"]["mode"] == "offline"  # from WANDB_MODE
    document = run_case(validate(config))

    assert document["status"] == "ok"
    mirror = document["tracking"]["wandb"]
    assert mirror["status"] == "ok", mirror
    runs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb")), f"no run file in {runs[0]}"
    on_disk = documents(tmp_path / "results")[document["case_id"]]
    assert on_disk["tracking"]["wandb"]["run_id"] == mirror["run_id"]


def test_wandb_failure_keeps_the_result_and_records_the_error(tiny_case, tmp_path, offline_no_network, monkeypatch):
    import wandb

    def refuse(*args, **kwargs):
        raise wandb.errors.CommError("quota exceeded")

    monkeypatch.setattr(wandb, "init", refuse)
    document = run_case(validate(compose([*tiny_case, "tracker=wandb"])))
    on_disk = documents(tmp_path / "results")[document["case_id"]]
    assert on_disk["status"] == "ok" and "ppl" in on_disk["metrics"]
    assert on_disk["tracking"]["wandb"]["status"] == "failed"
    assert on_disk["tracking"]["wandb"]["error"]["message"] == "quota exceeded"


def test_a_case_whose_mirror_was_lost_is_mirrored_again_into_one_run(tiny_case, tmp_path, offline_no_network):
    """A kill between the local document and its W&B mirror: the re-launch skips the case, mirrors it,
    and a case mirrored twice keeps one offline run (same run id)."""
    from sparsebench.results import write_document

    wandb_dir = tmp_path / "wandb-runs"
    overrides = [*tiny_case, "tracker=wandb", f"tracker.wandb.dir={wandb_dir}"]
    first = run_case(validate(compose(overrides)))
    path = tmp_path / "results" / f"{first['case_id']}.json"
    lost = {key: value for key, value in first.items() if key != "tracking"}
    write_document(path, lost)  # as if killed after the document, before the mirror
    skipped = run_case(validate(compose(overrides)))
    assert skipped["started_at"] == first["started_at"]  # not run again
    assert skipped["tracking"]["wandb"]["status"] == "ok"
    assert skipped["tracking"]["wandb"]["run_id"] == first["tracking"]["wandb"]["run_id"]
    assert documents(tmp_path / "results")[first["case_id"]]["tracking"]["wandb"]["status"] == "ok"
    run_case(validate(compose([*overrides, "rerun=true"])))
    runs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert [run.name.rsplit("-", 1)[1] for run in runs] == [first["tracking"]["wandb"]["run_id"].rsplit("-", 1)[1]], runs
