"""Every supported family, as a tiny random model: prune with each metric, check sparsity, evaluate."""

import math

import pytest
import torch

from conftest import compose_config, tiny_case_overrides
from sparsebench.config import validate
from sparsebench.blockwalk import BlockInputs, Execution, capture_block_kwargs
from sparsebench.evaluate.perplexity import mean_nll, perplexity
from sparsebench.metrics import METRICS
from sparsebench.models.adapters import adapter_for
from sparsebench.runner import run_case
from sparsebench.testing.tiny_models import TINY_CONFIGS, tiny_model

FAMILIES = sorted(TINY_CONFIGS)
FAMILY_METRICS = ["magnitude", "wanda", "sparsegpt", "ria"]


@pytest.mark.parametrize("family", FAMILIES)
def test_block_walk_reproduces_the_full_forward(family):
    model = tiny_model(family)
    adapter = adapter_for("auto", model.config.model_type)
    ids = torch.randint(0, 300, (5, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = math.exp(mean_nll(model(ids).logits, ids).mean().item())
    assert perplexity(model, adapter, ids, Execution("cpu", False, 2)).ppl == pytest.approx(expected, rel=1e-5)


# Every family with every metric, the sparsity alternating (a Latin square): each family also prunes
# unstructured and 2:4 (two metrics each) and each metric both ways on several families. A family's
# part of a case (its adapter: blocks, linears, input groups, the block call) and a metric's part
# (scores, per-row or N:M selection) are separate code, so the full product repeats paths.
SPARSITIES = ("sparsity=unstructured", "sparsity=2of4")
FAMILY_CASES = [(family, metric, SPARSITIES[(i + j) % 2]) for i, family in enumerate(FAMILIES) for j, metric in enumerate(FAMILY_METRICS)]


@pytest.mark.parametrize("family,metric,sparsity", FAMILY_CASES)
def test_family_prunes_to_exact_sparsity_and_evaluates(family, metric, sparsity, tiny_model_dirs, tmp_path, cache_dir):
    _check_case(family, metric, sparsity, [], tiny_model_dirs, tmp_path, cache_dir)


# What the other metrics need on a 64-wide tiny model (HASSLE-free's default rank 64 is too large).
_METRIC_OVERRIDES = {"hassle_free": ["decomposition.rank=8", "metric.iterations=3"]}


@pytest.mark.parametrize("metric", [name for name in METRICS.names() if name not in FAMILY_METRICS and name != "none"])
@pytest.mark.parametrize("sparsity", ["sparsity=unstructured", "sparsity=2of4"])
def test_gemma3_prunes_with_every_other_metric(metric, sparsity, tiny_model_dirs, tmp_path, cache_dir):
    _check_case("gemma3", metric, sparsity, _METRIC_OVERRIDES.get(metric, []), tiny_model_dirs, tmp_path, cache_dir)


def _check_case(family, metric, sparsity, extra, tiny_model_dirs, tmp_path, cache_dir):
    spec = validate(compose_config(tiny_case_overrides(tiny_model_dirs[family], tmp_path, cache_dir, metric, [sparsity, *extra])))
    document = run_case(spec)
    assert document["status"] == "ok", document.get("error")
    assert document["model"]["family"] == family
    layers = document["sparsity"]["per_layer"]
    assert len(layers) == 2 * len(adapter_for(family, None).linear_names)
    for layer in layers.values():
        if sparsity.endswith("2of4"):
            assert layer["zeros"] - layer["dense_zeros"] <= layer["numel"] // 2 <= layer["zeros"]
        else:
            assert abs(layer["achieved"] - 0.5) <= (layer["rows"] + layer["cols"]) / layer["numel"]
    ppl = document["metrics"]["ppl"]["wikitext2"]
    assert math.isfinite(ppl["ppl"]) and ppl["segments"] == 3 and ppl["seqlen"] == 64


def _full_forward_ppl(model, ids) -> float:
    with torch.no_grad():
        return math.exp(mean_nll(model(ids).logits, ids).mean().item())


def test_gemma3_blocks_take_the_arguments_of_their_own_layer_type(monkeypatch):
    model = tiny_model("gemma3")
    adapter = adapter_for("auto", model.config.model_type)
    ids = torch.randint(0, 300, (5, 40), generator=torch.Generator().manual_seed(0))
    sliding, full = adapter.get_blocks(model)
    assert model.config.layer_types == ["sliding_attention", "full_attention"] and model.config.sliding_window < 40
    kwargs = capture_block_kwargs(model, adapter, ids[:1], "cpu")
    cos_sliding, cos_full = kwargs[sliding]["position_embeddings"][0], kwargs[full]["position_embeddings"][0]
    assert not torch.allclose(cos_sliding, cos_full)  # local and global rotary bases
    sliding_mask, full_mask = kwargs[sliding]["attention_mask"], kwargs[full]["attention_mask"]
    assert sliding_mask is not None  # a window of 8 tokens; the causal mask may be None (SDPA's is_causal)
    assert full_mask is None or not torch.equal(sliding_mask, full_mask)
    expected = _full_forward_ppl(model, ids)
    assert perplexity(model, adapter, ids, Execution("cpu", False, 2)).ppl == pytest.approx(expected, rel=1e-5)
    # Given the first block's arguments (as before), the full-attention block computes something else.
    monkeypatch.setattr(BlockInputs, "kwargs_for", lambda inputs, block: inputs.kwargs)
    wrong = perplexity(model, adapter, ids, Execution("cpu", False, 2)).ppl
    assert wrong != pytest.approx(expected, rel=1e-4)


def test_gemma3_final_logit_softcapping_is_applied_after_the_head():
    model = tiny_model("gemma3")
    model.config.final_logit_softcapping = 2.0  # Gemma 2 caps at 30; a random tiny model's logits need a small cap
    adapter = adapter_for("auto", model.config.model_type)
    ids = torch.randint(0, 300, (4, 40), generator=torch.Generator().manual_seed(1))
    capped = _full_forward_ppl(model, ids)
    assert perplexity(model, adapter, ids, Execution("cpu", False, 2)).ppl == pytest.approx(capped, rel=1e-5)
    model.config.final_logit_softcapping = None
    assert _full_forward_ppl(model, ids) != pytest.approx(capped, rel=1e-4)


def test_embeddings_and_head_are_never_pruned(tiny_model_dirs, tmp_path, cache_dir):
    from sparsebench.models.loading import load_model
    from sparsebench.layers import prunable_layers

    loaded = load_model(str(tiny_model_dirs["llama"]), cache_dir)
    names = [layer.name for layer in prunable_layers(loaded.model, loaded.adapter)]
    assert not any("embed" in name or "lm_head" in name for name in names)
    assert len(names) == 2 * 7
