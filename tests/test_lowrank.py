"""Sparse-plus-low-rank linears in a pruned model: forward, sparsity count, result document, state_dict round trip."""

import math

import pytest
import torch

from conftest import compose_config, tiny_case_overrides
from sparsebench.config import validate
from sparsebench.errors import ConfigError
from sparsebench.lowrank import Decomposition, SparsePlusLowRankLinear, attach_low_rank, install_decomposition, low_rank_ranks
from sparsebench.masks import NMPattern
from sparsebench.metrics import METRICS
from sparsebench.models.adapters import adapter_for
from sparsebench.layers import prunable_layers
from sparsebench.blockwalk import Execution
from sparsebench.prune import PrunePlan, prune_model
from sparsebench.identity import Facts, identity
from sparsebench.results import case_id
from sparsebench.runner import run_case
from sparsebench.testing.tiny_models import tiny_model


def test_module_computes_sparse_plus_low_rank_and_is_still_a_linear():
    g = torch.Generator().manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(12, 10))
    sparse = torch.randn(10, 12, generator=g).masked_fill(torch.rand(10, 12, generator=g) < 0.5, 0)
    down, up = torch.randn(3, 12, generator=g), torch.randn(10, 3, generator=g)
    with torch.inference_mode():  # as in the pruning walk
        module = install_decomposition(block, "0", Decomposition(sparse, down, up))
    x = torch.randn(5, 12, generator=g)
    assert isinstance(block[0], SparsePlusLowRankLinear) and isinstance(block[0], torch.nn.Linear)
    assert torch.equal(module.weight, sparse)
    assert torch.allclose(block(x), x @ (sparse + up @ down).T + module.bias, atol=1e-5)
    block(x).sum().backward()  # ordinary parameters, not inference tensors
    assert module.low_rank_down.weight.grad is not None


def _prune_tiny(family: str, rank: int, pattern: NMPattern | None, ratio: float):
    model = tiny_model(family)
    adapter = adapter_for("auto", model.config.model_type)
    layers = prunable_layers(model, adapter)
    ratios = {layer.name: ratio for layer in layers}
    ids = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(1))
    metric = METRICS.get("hassle_free")
    params = {**metric.make_params({"iterations": 3}), "rank": rank}
    report = prune_model(model, adapter, PrunePlan(metric, params, ratios, pattern), ids, Execution("cpu", False, 2))
    return model, adapter, layers, report


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_pruned_model_holds_sparse_weights_and_low_rank_factors(family):
    model, adapter, layers, report = _prune_tiny(family, 4, NMPattern(2, 4), 0.5)
    assert [layer.name for layer in prunable_layers(model, adapter)] == [layer.name for layer in layers]  # still found by name
    for block in adapter.get_blocks(model):
        for linear in adapter.get_linears(block).values():
            assert isinstance(linear, SparsePlusLowRankLinear) and linear.rank == 4
            groups = (linear.weight == 0).reshape(linear.out_features, -1, 4).sum(-1)
            assert bool((groups >= 2).all())  # 2:4 on S alone
    assert all(record.zeros >= record.numel // 2 for record in report.layers)
    assert set(report.decompositions) == {layer.name for layer in layers}
    for layer in layers:
        info = report.decompositions[layer.name]
        assert info["extra_parameters"] == 4 * (layer.rows + layer.cols)
        assert info["relative_error"] < info["relative_error_sparse_only"]


def test_state_dict_round_trip_restores_the_decomposed_model():
    model, adapter, _, _ = _prune_tiny("llama", 4, None, 0.6)
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(2))
    state = model.state_dict()
    assert any(key.endswith("q_proj.low_rank_down.weight") for key in state)
    fresh = tiny_model("llama", seed=7)
    attach_low_rank(fresh, low_rank_ranks(model))
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        expected, restored = model(ids).logits, fresh(ids).logits
        for module in model.modules():  # the low-rank part is used: without it the outputs change
            if isinstance(module, SparsePlusLowRankLinear):
                module.low_rank_up.weight.zero_()
        sparse_only = model(ids).logits
    assert torch.equal(expected, restored)
    assert not torch.allclose(expected, sparse_only, atol=1e-4)


@pytest.mark.parametrize("sparsity", ["sparsity=2of4", "sparsity.ratio=0.7"])
def test_case_records_rank_extra_parameters_and_errors(sparsity, tiny_model_dirs, tmp_path, cache_dir):
    overrides = tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, "hassle_free", [sparsity, "decomposition.rank=8", "metric.iterations=3"])
    document = run_case(validate(compose_config(overrides)))
    assert document["status"] == "ok", document.get("error")
    target = 0.5 if sparsity.endswith("2of4") else 0.7
    for layer in document["sparsity"]["per_layer"].values():  # the sparse part alone
        assert abs(layer["achieved"] - target) <= (layer["rows"] + layer["cols"]) / layer["numel"]
    decomposition = document["decomposition"]
    per_layer = decomposition["per_layer"]
    assert decomposition["rank"] == 8 and set(per_layer) == set(document["sparsity"]["per_layer"])
    expected_extra = sum(8 * (layer["rows"] + layer["cols"]) for layer in document["sparsity"]["per_layer"].values())
    assert decomposition["extra_parameters"] == expected_extra
    assert decomposition["extra_parameters_share_of_model"] == expected_extra / document["model"]["parameters"]
    assert decomposition["mean_relative_error"] < decomposition["mean_relative_error_sparse_only"]
    assert math.isfinite(document["metrics"]["ppl"]["wikitext2"]["ppl"])


def test_rank_is_validated_and_part_of_the_case(tiny_model_dirs, tmp_path, cache_dir):
    base = tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, "hassle_free")
    spec = validate(compose_config(base))
    assert spec.metric_params["rank"] == 64  # the paper's rank, from conf/metric/hassle_free.yaml
    with pytest.raises(ConfigError, match=r"decomposition.rank=0: must be an integer >= 1"):
        validate(compose_config(base + ["decomposition.rank=0"]))
    wanda = tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, "wanda")
    with pytest.raises(ConfigError, match=r"decomposition.rank=8: metric='wanda' has no low-rank part; metrics that do: hassle_free"):
        validate(compose_config(wanda + ["decomposition.rank=8"]))
    assert "decomposition" not in identity("case", compose_config(wanda), Facts("cpu"))  # other cases keep their ids
    ids = {case_id(compose_config(base + [f"decomposition.rank={rank}"]), "m", "cpu") for rank in (8, 16)}
    assert len(ids) == 2


def test_rank_too_large_for_a_layer_is_a_config_error(tiny_model_dirs, tmp_path, cache_dir):
    # the tiny llama's k_proj is 32 x 64: rank 32 leaves nothing for the sparse part to do
    overrides = tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, "hassle_free", ["decomposition.rank=32"])
    document = run_case(validate(compose_config(overrides)))
    assert document["status"] == "failed"
    assert document["error"]["type"] == "ConfigError"
    assert "decomposition.rank=32: must be an integer in [1, min(rows, cols))" in document["error"]["message"]
    assert "a 32x64 linear allows at most 31" in document["error"]["message"]
