"""Golden values: the real SmolLM2-135M pruned by every method, bit for bit as recorded at commit 5e6e410.

A refactoring of the pipeline (allocators, the block walk, the stages; issue 25) must leave every
number a case produces unchanged. Each case runs through ``run_case``, the CLI's entry, on the
CPU with a small calibration (8 x 128 tokens of WikiText-2's validation split) and 3 perplexity
segments of 128 tokens of its test split. To keep it cheap on a 2-core machine the model is cut to
its first ``BLOCKS`` decoder blocks (the real trained weights; the head reads the last kept block),
loaded once, and its dense weights are restored between cases (``load_model`` in the runner is
replaced by one that hands out the same restored model). For each case the test compares the perplexity (the exact float) and a sha256
over every prunable linear's ``weight != 0`` bytes in module order against the values below.

To record new values after an intended change of behaviour, run
``SPARSEBENCH_GOLDEN_PRINT=1 python -m pytest tests/test_golden.py -s`` and say why in the commit.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from conftest import SHARED_DATA, compose_config
from sparsebench import runner
from sparsebench.config import validate
from sparsebench.models.loading import load_model

pytestmark = pytest.mark.slow

# name: overrides on top of the common ones below
CASES = {
    "dense": ["metric=none"],
    "magnitude_50": ["metric=magnitude", "sparsity.ratio=0.5"],
    "magnitude_2of4": ["metric=magnitude", "sparsity=2of4"],
    "wanda_50": ["metric=wanda", "sparsity.ratio=0.5"],
    "wanda_2of4": ["metric=wanda", "sparsity=2of4"],
    "sparsegpt_50": ["metric=sparsegpt", "sparsity.ratio=0.5"],
    "sparsegpt_2of4": ["metric=sparsegpt", "sparsity=2of4"],
    "owl_70": ["metric=wanda", "sparsity.ratio=0.7", "allocator=owl"],
    "neuroal_70": [
        "metric=wanda", "sparsity.ratio=0.7", "allocator=neuroal", "allocator.block_lambdas=[0.02,0.1]", "allocator.row_lambdas=[0.0,0.05]",
    ],
    "trim_70": ["metric=wanda", "sparsity.ratio=0.7", "allocator=trim", "allocator.iterations=3", "allocator.learning_rates=[0.01,0.04]"],
    "trim_owl_70": [
        "metric=wanda", "sparsity.ratio=0.7", "allocator=trim", "allocator.layerwise=owl", "allocator.iterations=2",
        "allocator.learning_rates=[0.02]",
    ],
    "alpha_70": ["metric=wanda", "sparsity.ratio=0.7", "allocator=alpha"],
    "dsnot_70": ["metric=wanda", "sparsity.ratio=0.7", "allocator=dsnot"],
    "dsnot_sparsegpt_alpha_70": ["metric=sparsegpt", "sparsity.ratio=0.7", "allocator=dsnot", "allocator.layerwise=alpha"],
}

BLOCKS = 4  # of SmolLM2-135M's 30
GOLDEN_THREADS = 2

# recorded at commit 5e6e410 (CPU, float32)
GOLDEN: dict[str, tuple[float, str]] = {
    "dense": (58629207.127940096, "1b97060a75a4b6ea16e75d0f695288cad108bf64ae79609f78d42ac8d7888d0d"),
    "magnitude_50": (212161681.78471994, "8c906d74cbf5acf880964d35b5563de366f852025b705a16462ca26b3fd7b6ad"),
    "magnitude_2of4": (558077793.996028, "d830b3ed4ace51728c179ed0ccf234eb09a976e9cf944c79570c7d274886166c"),
    "wanda_50": (104701027.71264319, "5ca819c887f7cb9347cb163bf121a5270afbceb6c1a695dd2aebba62c33f269f"),
    "wanda_2of4": (213075356.6860635, "9c103432b82f5ffcaa4aaa248c3f02f1041bc4f7d20d8ba92d52d1ca58a13139"),
    "sparsegpt_50": (83696860.08807518, "38133f038be9d5741f650c8b37d125fa07a4cefeb4003cbf591f65d365dcc034"),
    "sparsegpt_2of4": (108400447.31001942, "006a64c09ab3fcafa64b97cfba0cb01cbf67bb9acb022ffd42980aab0a64ed3b"),
    "owl_70": (353520028.3048558, "3fe6d2bc48516a30256ff170945a6baf05e214b3951a2ad117932723494a8d16"),
    "neuroal_70": (256523781.47866967, "75f079e621694a0b0dab6a9bc4a9ee7e04ab2c5bd22044e17caf74ba22a5d8e3"),
    "trim_70": (598006491.590443, "c5a59a85435f5e21e18e30e79a3f89b54942d9fd9277c2f251ae6001556f187c"),
    "trim_owl_70": (429292604.96601474, "150daf6a034402d9d782fa5cb8ad81a11dd2740698e228b9c0474d8e526bb607"),
    "alpha_70": (182809354.93708184, "bcdf884ddff6f0d603e9b7ee983711a1125f042685fbcabe3bd62ae6fd1ad7aa"),
    "dsnot_70": (431863147.7788624, "2c3b4b64224727c1cdd024527d16767f60236b9f7190c52e6dac5e7e484de83a"),
    "dsnot_sparsegpt_alpha_70": (413640380.1531917, "60d27bfba58a320c460fbc5f2366d72bc80a2bce4f846c08414169d6a05639ee"),
}


def _common(results_dir, cache_dir) -> list[str]:
    return [
        "model=smollm2-135m-q4",
        f"data.wikitext2={SHARED_DATA / 'wikitext2-tok'}",
        "calibration.dataset=wikitext2",
        "calibration.split=validation",
        "calibration.nsamples=8",
        "calibration.seqlen=128",
        "calibration.batch_size=4",
        "eval.ppl.seqlen=128",
        "eval.ppl.max_segments=3",
        "eval.ppl.batch_size=3",
        "device=cpu",
        "progress=false",
        f"results_dir={results_dir}",
        f"cache_dir={cache_dir}",
    ]


def _mask_hash(loaded) -> str:
    """sha256 over every prunable linear's ``weight != 0`` bytes, blocks and linears in the adapter's order."""
    digest = hashlib.sha256()
    adapter = loaded.adapter
    for block in adapter.get_blocks(loaded.model):
        for linear in adapter.get_linears(block).values():
            digest.update((linear.weight.data != 0).numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def golden_results(tmp_path_factory):
    """{case: (perplexity, mask hash)} of every case, from one loaded model restored between cases."""
    model_cache = os.environ.get("SPARSEBENCH_CACHE", os.path.expanduser("~/.cache/sparsebench"))
    first = validate(compose_config(_common(tmp_path_factory.mktemp("r"), model_cache) + ["metric=none"]))
    loaded = load_model(first.model_path, first.cache_dir, first.family, first.dtype, first.device, first.offload, first.revision, first.trust_remote_code)
    blocks = loaded.adapter.get_blocks(loaded.model)
    del blocks[BLOCKS:]
    loaded.model.config.num_hidden_layers = BLOCKS
    assert len(loaded.adapter.get_blocks(loaded.model)) == BLOCKS
    dense = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    modules = [name for name, _ in loaded.model.named_modules()]

    def restored(*args, **kwargs):
        assert [name for name, _ in loaded.model.named_modules()] == modules, "a case left a replaced module behind"
        loaded.model.load_state_dict(dense)
        return loaded

    cache_dir = tmp_path_factory.mktemp("cache")  # fresh: dense passes and tokens are computed, not read from an earlier run
    results = {}
    threads = torch.get_num_threads()
    # SparseGPT's CPU solve rounds differently with another thread count (its sums split otherwise): the values were
    # recorded with two torch threads, this machine's default.
    torch.set_num_threads(GOLDEN_THREADS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "load_model", restored)
        for name, overrides in CASES.items():
            results_dir = tmp_path_factory.mktemp(name)
            document = runner.run_case(validate(compose_config(_common(results_dir, cache_dir) + overrides)))
            assert document["status"] == "ok", (name, document.get("error"))
            results[name] = (document["metrics"]["ppl"]["wikitext2"]["ppl"], _mask_hash(loaded))
    torch.set_num_threads(threads)
    if os.environ.get("SPARSEBENCH_GOLDEN_PRINT"):
        for name, (ppl, digest) in results.items():
            print(f'    "{name}": ({ppl!r}, "{digest}"),')
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_case_is_bit_equal_to_the_recorded_values(golden_results, name):
    assert name in GOLDEN, f"no recorded value for {name}"
    assert golden_results[name] == GOLDEN[name]


def test_cases_differ():
    """The recorded values are not all one value: the hash sees the masks and the cases prune differently."""
    assert len({digest for _, digest in GOLDEN.values()}) == len(GOLDEN)
    assert len({ppl for ppl, _ in GOLDEN.values()}) == len(GOLDEN)
