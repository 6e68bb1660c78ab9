from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import compose_config, tiny_case_overrides
from sparsebench.allocators import PrunableLayer
from sparsebench.allocators.owl import outlier_ratio, owl, owl_block_sparsities
from sparsebench.config import validate
from sparsebench.errors import ConfigError
from sparsebench.models.adapters import adapter_for
from sparsebench.layers import prunable_layers
from sparsebench.blockwalk import Execution
from sparsebench.prune import dense_block_summaries
from sparsebench.runner import run_case
from sparsebench.stats import INPUT_SQ_NORMS
from sparsebench.testing.tiny_models import tiny_model


@settings(max_examples=80, deadline=None)
@given(ratios=st.lists(st.floats(0, 100), min_size=2, max_size=40), sparsity=st.floats(0.3, 0.8), lam=st.floats(0.0, 0.15))
def test_owl_ratios_keep_the_mean_and_span_two_lambda(ratios, sparsity, lam):
    d = torch.tensor(ratios, dtype=torch.float64)
    block = owl_block_sparsities(d, sparsity, lam)
    assert abs(block.mean().item() - sparsity) < 1e-9  # (the range is not bounded here: owl() refuses ratios outside (0, 1))
    if d.max() > d.min():
        assert block.max() - block.min() == pytest.approx(2 * lam, abs=1e-9)
        assert block[d.argmax()] == block.min()  # the block with most outliers is pruned least
    else:
        assert torch.allclose(block, torch.full_like(block, sparsity))


def test_owl_follows_the_reference_formula_to_the_edge_and_refuses_a_ratio_of_one():
    """OWL's reference rescales the outlier ratios to [0, 2 lam] and centres them on 1 - sparsity: at sparsity 0.8 and
    lam 0.15 a block without outliers among two with them gets sparsity 1.0, which owl() refuses (found by Hypothesis)."""
    block = owl_block_sparsities(torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64), 0.8, 0.15)
    assert torch.allclose(block, torch.tensor([1.0, 0.7, 0.7], dtype=torch.float64))
    layers = [SimpleNamespace(name=f"b{i}", block=i) for i in range(3)]
    with pytest.raises(ConfigError, match="allocator.lam=0.15: block sparsities reach 0.700..1.000, outside"):
        owl(layers, 0.8, [0.0, 1.0, 1.0], lam=0.15)


def test_owl_uniform_statistics_give_uniform_ratios():
    layers = [PrunableLayer(f"{b}.x", b, 4, 4) for b in range(5)]
    ratios = owl(layers, 0.6, [0.02] * 5)
    assert set(ratios.values()) == {0.6}


def _reference_owl(model, ids, sparsity, m=5.0, lam=0.08):
    """OWL's computation, transcribed: dense forward, Wanda metric per block, outlier %, normalisation."""
    adapter = adapter_for("auto", model.config.model_type)
    inputs = {}
    handles = []
    for b, block in enumerate(adapter.get_blocks(model)):
        for name in adapter.linear_names:
            module = block.get_submodule(name)
            handles.append(module.register_forward_pre_hook(lambda mod, args, key=(b, name): inputs.setdefault(key, []).append(args[0].reshape(-1, args[0].shape[-1]))))
    with torch.no_grad():
        model(ids)
    for handle in handles:
        handle.remove()
    all_layer_ratio = []
    for b, block in enumerate(adapter.get_blocks(model)):
        metrics = []
        for name in adapter.linear_names:
            x = torch.cat(inputs[(b, name)])
            scaler_row = torch.norm(x, p=2, dim=0) ** 2 / ids.shape[0]
            metrics.append((torch.abs(block.get_submodule(name).weight.data) * torch.sqrt(scaler_row.reshape((1, -1)))).flatten())
        layer_wmetric = torch.cat(metrics)
        all_layer_ratio.append(((layer_wmetric > torch.mean(layer_wmetric) * m).sum() / layer_wmetric.numel()).item() * 100)
    ratio = np.array(all_layer_ratio)
    ratio = (ratio - ratio.min()) * (1 / (ratio.max() - ratio.min()) * lam * 2)
    ratio = ratio - np.mean(ratio) + (1 - sparsity)
    return 1 - ratio


def test_owl_matches_the_reference_computation():
    model = tiny_model("llama")
    with torch.no_grad():  # spread the blocks' weight scales so that their outlier shares differ
        for b, block in enumerate(model.model.layers):
            block.mlp.down_proj.weight[:, : 4 * (b + 1)] *= 8
    adapter = adapter_for("auto", model.config.model_type)
    ids = torch.randint(0, 300, (4, 48), generator=torch.Generator().manual_seed(0))
    summaries = dense_block_summaries(model, adapter, ids, frozenset({INPUT_SQ_NORMS}), outlier_ratio, Execution("cpu", False, 2))
    ratios = owl(prunable_layers(model, adapter), 0.7, summaries, m=5.0, lam=0.08)
    ours = [ratios[f"{b}.mlp.down_proj"] for b in range(2)]
    assert np.allclose(ours, _reference_owl(model, ids, 0.7), atol=1e-6)
    assert ours[0] != ours[1]


def test_owl_with_wanda_end_to_end(tiny_model_dirs, tmp_path, cache_dir):
    document = run_case(validate(compose_config(tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, "wanda", ["allocator=owl", "sparsity.ratio=0.6"]))))
    assert document["status"] == "ok", document.get("error")
    allocation = document["allocation"]
    assert allocation["allocator"] == "owl" and len(allocation["block_summaries"]) == 2
    assert sum(allocation["block_ratios"]) / 2 == pytest.approx(0.6)
    for name, layer in document["sparsity"]["per_layer"].items():
        assert layer["target"] == pytest.approx(allocation["block_ratios"][int(name.split(".")[0])])
    assert document["sparsity"]["achieved"] == pytest.approx(0.6, abs=0.01)


def test_owl_rejects_n_m_patterns(tiny_model_dirs, tmp_path, cache_dir):
    with pytest.raises(ConfigError, match="allocator='owl' cannot honour sparsity.pattern=2:4 .* allocators that can: uniform"):
        validate(compose_config(tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, "wanda", ["allocator=owl", "sparsity=2of4"])))
    with pytest.raises(ConfigError, match="allocator.lam=0.7"):
        validate(compose_config(tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, "wanda", ["allocator=owl", "allocator.lam=0.7"])))


def test_owl_dense_pass_is_shared_by_every_case_of_the_model(tiny_model_dirs, tmp_path):
    cache_dir = tmp_path / "cache"  # empty: the first case computes the pass

    def run(metric, ratio, extra=()):
        overrides = tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, metric, ["allocator=owl", f"sparsity.ratio={ratio}", *extra])
        document = run_case(validate(compose_config(overrides)))
        assert document["status"] == "ok", document.get("error")
        return document

    first = run("wanda", 0.6)
    second = run("magnitude", 0.7)  # another metric and sparsity: the same dense pass
    other_m = run("wanda", 0.6, ["allocator.m=3.0"])  # another outlier threshold: its own pass
    assert first["notes"]["dense_summaries"] == "computed"
    assert second["notes"]["dense_summaries"] == "reused from the cache"
    assert second["allocation"]["block_summaries"] == first["allocation"]["block_summaries"]
    assert other_m["notes"]["dense_summaries"] == "computed"
