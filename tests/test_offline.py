"""Without network access, hub ids fail fast with an error that says what to do instead."""

import os
import subprocess
import sys

import pytest

OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=OFFLINE, timeout=300)


def test_hub_model_offline_is_a_model_load_error(tmp_path):
    done = _python(
        "from pathlib import Path\n"
        "from sparsebench.errors import ModelLoadError\n"
        "from sparsebench.models.loading import load_model\n"
        "try:\n"
        f"    load_model('sparsebench-test/no-such-model', Path({str(tmp_path)!r}))\n"
        "except ModelLoadError as error:\n"
        "    print('ModelLoadError', error)\n"
    )
    assert "ModelLoadError model.path='sparsebench-test/no-such-model': could not read the model config" in done.stdout, done.stderr[-2000:]


def test_hub_corpus_offline_names_the_local_data_key():
    done = _python(
        "from sparsebench.data.corpora import CORPORA, read_rows, resolve_source\n"
        "from sparsebench.errors import DataError\n"
        "try:\n"
        "    read_rows(resolve_source(CORPORA['ptb'], 'test', None))\n"
        "except DataError as error:\n"
        "    print('DataError', error)\n"
    )
    assert "DataError ptb: could not load ptb-text-only/ptb_text_only (test) from the hub" in done.stdout, done.stderr[-2000:]
    assert "offline, give a local copy with data.ptb=PATH" in done.stdout


def test_a_conversion_published_first_by_another_case_is_used(tmp_path):
    """Cases of a grid that convert the same GGUF at once: the later rename keeps the first copy."""
    from sparsebench.models.loading import _publish_converted

    folder = tmp_path / "converted" / "abc"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"first")
    partial = tmp_path / "converted" / ".partial-x"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"second")
    _publish_converted(partial, folder)
    assert (folder / "model.safetensors").read_bytes() == b"first"

    empty = tmp_path / "converted" / "broken"
    (empty / "leftover").mkdir(parents=True)  # taken, but holds no model: a real failure
    with pytest.raises(OSError):
        _publish_converted(partial, empty)
    fresh = tmp_path / "converted" / "fresh"
    _publish_converted(partial, fresh)
    assert (fresh / "model.safetensors").read_bytes() == b"second"
