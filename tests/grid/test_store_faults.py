"""Faults of the result store: permissions, corrupt documents, read-only or full folders, data checks."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections import namedtuple

import pytest

from sparsebench import results as store
from sparsebench.config import validate
from sparsebench.errors import ConfigError, StoreError
from sparsebench.results import check_results_dir, write_document
from sparsebench.runner import run_case

from .conftest import REPO, compose, documents, run_cli


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_documents_and_cached_tensors_honour_the_umask(tmp_path, umask, mask, mode):
    import torch

    from sparsebench.disk_cache import cached

    umask(mask)
    write_document(tmp_path / "case.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "case.json").stat().st_mode) == mode
    cached(tmp_path, "tokens", "eval", {"k": mask}, lambda: torch.zeros(2))
    (tensor,) = (tmp_path / "tokens").glob("eval-*.pt")
    assert stat.S_IMODE(tensor.stat().st_mode) == mode


def test_a_document_written_by_a_case_is_readable_by_the_group(tiny_case, tmp_path, umask):
    umask(0o002)
    document = run_case(validate(compose(tiny_case)))
    path = tmp_path / "results" / f"{document['case_id']}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o664


@pytest.mark.parametrize(
    ("content", "problem"),
    [("{\"schema_version\": 1, \"case_id\": \"x\", \"sta", "not JSON"), ("[1, 2]", "not a JSON object"), ("{\"schema_version\": 1}", "lacks case_id")],
)
def test_a_corrupt_document_is_named_moved_aside_and_its_case_runs_again(tiny_case, tmp_path, caplog, content, problem):
    spec = validate(compose(tiny_case))
    first = run_case(spec)
    path = tmp_path / "results" / f"{first['case_id']}.json"
    path.write_text(content)  # truncated by a crash of the disk, edited by hand...
    with caplog.at_level("WARNING"):
        again = run_case(spec)
    assert again["status"] == "ok" and again["started_at"] >= first["started_at"]
    (moved,) = (tmp_path / "results" / "corrupt").iterdir()
    assert moved.read_text() == content  # kept for inspection, byte for byte
    assert again["notes"]["replaced_invalid_document"]["moved_to"] == str(moved)
    assert problem in again["notes"]["replaced_invalid_document"]["problem"]
    warning = " ".join(record.getMessage() for record in caplog.records if record.levelname == "WARNING")
    assert str(path) in warning and str(moved) in warning and problem in warning
    assert list(documents(tmp_path / "results")) == [first["case_id"]]


def test_temporary_files_of_an_interrupted_write_are_removed_when_the_case_runs(tiny_case, tmp_path):
    spec = validate(compose(tiny_case))
    document = run_case(spec)
    leftover = tmp_path / "results" / f".{document['case_id']}-abc123.partial"
    leftover.write_text('{"half": ')
    run_case(validate(compose([*tiny_case, "rerun=true"])))
    assert not leftover.exists()


def test_a_results_dir_that_is_a_file_or_full_fails_with_one_line(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(StoreError, match=r"results_dir='.*file': exists but is not a folder"):
        check_results_dir(not_a_folder)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(store.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(StoreError, match=r"results_dir='.*': the disk is full \(4096 bytes free"):
        check_results_dir(tmp_path / "results")


def test_a_write_that_fails_is_reported_with_its_reason(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.tempfile, "mkstemp", no_space)
    with pytest.raises(StoreError, match="cannot write result documents there: No space left on device"):
        check_results_dir(tmp_path)


def _without_root_powers() -> list[str]:
    """A command prefix under which this user cannot write into a folder without write bits (root too)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a folder read-only for this user")
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]


def test_a_read_only_results_folder_fails_before_the_model_loads(tiny_case, tmp_path):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    prefix = _without_root_powers()
    overrides = [entry for entry in tiny_case if not entry.startswith("results_dir=")] + [f"results_dir={read_only}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([*prefix, sys.executable, "-m", "sparsebench.cli", *overrides], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"sparsebench: error: results_dir='{read_only}': cannot write result documents there: Permission denied" in run.stderr
    assert "loading" not in (run.stdout + run.stderr).lower()
    assert list(read_only.iterdir()) == []


def test_a_local_copy_without_the_split_a_case_reads_fails_at_validation(tiny_case, tmp_path):
    folder = tmp_path / "wikitext2-valid-only"
    folder.mkdir()
    (folder / "valid.txt").write_text("some text\n")
    overrides = [entry for entry in tiny_case if not entry.startswith("data.wikitext2=")] + [f"data.wikitext2={folder}"]
    with pytest.raises(ConfigError, match=r"data.wikitext2='.*wikitext2-valid-only': no file for the 'test' split"):
        validate(compose(overrides))


def test_a_bad_data_path_is_named_by_the_command_before_anything_loads(tmp_path):
    run = run_cli(["data.wikitext2=/nonexistent", f"results_dir={tmp_path / 'results'}"], tmp_path)
    assert run.returncode == 2
    assert "sparsebench: error: data.wikitext2='/nonexistent': no such file or folder" in run.stderr


def test_calibration_from_an_unreachable_hub_fails_before_the_model_loads(tiny_case, tmp_path, monkeypatch):
    """The rough edge: data.wikitext2 given, calibration left at its C4 default, no network."""
    monkeypatch.setattr("sparsebench.runner.hub_unreachable", lambda: "https://huggingface.co does not answer (refused)")
    overrides = [entry for entry in tiny_case if not entry.startswith("calibration.dataset=")]
    document = run_case(validate(compose(overrides)))
    assert document["status"] == "failed"
    message = document["error"]["message"]
    assert message.startswith("calibration.dataset=c4 reads allenai/c4 from the hub, which cannot be reached")
    assert "give a local copy with data.c4=PATH" in message
    assert "or calibrate on a corpus you have a copy of: calibration.dataset=wikitext2" in message
    assert "load_s" not in document["timings"]  # the model never loaded
