"""Fixtures for the grid tests: a tiny random LLaMA with an offline-trained tokenizer, a small
WikiText-2 slice, and helpers to compose a case in-process or launch a multirun as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsebench.testing.config import REPO, local_data_dir, missing_data_reason
from sparsebench.testing.config import compose_config as compose  # noqa: F401  (the grid tests' name for it)

WIKITEXT_TEST = local_data_dir() / "wikitext2-tok" / "test.txt"
CORPUS_LINES = 400


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    if not WIKITEXT_TEST.exists():
        pytest.skip(missing_data_reason(WIKITEXT_TEST))
    lines = WIKITEXT_TEST.read_text().splitlines(keepends=True)[:CORPUS_LINES]
    path = tmp_path_factory.mktemp("data") / "wikitext2-slice.txt"
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, corpus_file) -> Path:
    """A saved tiny random LLaMA (2 blocks, width 64) and its tokenizer, as a local model folder."""
    from sparsebench.testing.tiny_models import VOCAB, tiny_model, whitespace_bpe_tokenizer

    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    tokenizer = whitespace_bpe_tokenizer(corpus_file, VOCAB)
    assert len(tokenizer) <= VOCAB
    tiny_model("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def case_overrides(model: Path, corpus: Path, results: Path, cache: Path) -> list[str]:
    """Overrides for a quick case on the tiny model (seconds on a CPU)."""
    return [
        f"model.path={model}",
        "model.name=tiny-llama",
        f"data.wikitext2={corpus}",
        "calibration.dataset=wikitext2",
        "calibration.nsamples=4",
        "calibration.seqlen=32",
        "eval.ppl.seqlen=32",
        "eval.ppl.max_segments=4",
        "device=cpu",
        "progress=false",
        f"results_dir={results}",
        f"cache_dir={cache}",
    ]


@pytest.fixture
def tiny_case(tiny_llama, corpus_file, tmp_path) -> list[str]:
    return case_overrides(tiny_llama, corpus_file, tmp_path / "results", tmp_path / "cache")


def run_cli(args: list[str], cwd: Path, extra_env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run ``python -m sparsebench.cli ARGS`` with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "sparsebench.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def documents(results: Path) -> dict[str, dict]:
    """Result documents by case id (ignores logs and anything that is not a finished document)."""
    from sparsebench.results import read_document

    found = {}
    for path in sorted(Path(results).glob("*.json")):
        document = read_document(path)
        if document is not None:
            found[document["case_id"]] = document
    return found
