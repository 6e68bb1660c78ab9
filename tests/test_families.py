"""Every supported family, as a tiny random model: prune with each metric, check sparsity, evaluate."""

import math

import pytest
import torch

from conftest import compose_config, tiny_case_overrides
from sparsebench.config import validate
from sparsebench.evaluate.perplexity import mean_nll, perplexity
from sparsebench.models.adapters import adapter_for
from sparsebench.runner import run_case
from tiny_models import TINY_CONFIGS, tiny_model

FAMILIES = sorted(TINY_CONFIGS)


@pytest.mark.parametrize("family", FAMILIES)
def test_block_walk_reproduces_the_full_forward(family):
    model = tiny_model(family)
    adapter = adapter_for("auto", model.config.model_type)
    ids = torch.randint(0, 300, (5, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = math.exp(mean_nll(model(ids).logits, ids).mean().item())
    assert perplexity(model, adapter, ids, "cpu", False, batch_size=2, progress=False).ppl == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("metric", ["magnitude", "wanda", "sparsegpt", "ria"])
@pytest.mark.parametrize("sparsity", ["sparsity=unstructured", "sparsity=2of4"])
def test_family_prunes_to_exact_sparsity_and_evaluates(family, metric, sparsity, tiny_model_dirs, tmp_path, cache_dir):
    spec = validate(compose_config(tiny_case_overrides(tiny_model_dirs[family], tmp_path, cache_dir, metric, [sparsity])))
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


def test_embeddings_and_head_are_never_pruned(tiny_model_dirs, tmp_path, cache_dir):
    from sparsebench.models.loading import load_model
    from sparsebench.prune import prunable_layers

    loaded = load_model(str(tiny_model_dirs["llama"]), cache_dir)
    names = [layer.name for layer in prunable_layers(loaded.model, loaded.adapter)]
    assert not any("embed" in name or "lm_head" in name for name in names)
    assert len(names) == 2 * 7
