"""The efficiency stage's parts that run on a CPU: static-cache decoding, the sparse-path swap and its wiring,
timing spreads, and the flat fields of both document layouts. The kernels themselves are tested in test_gpu_kernels.py."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from sparsebench.evaluate.cuda_graphs import StaticDecoder
from sparsebench.evaluate.efficiency import EfficiencySpec, _path_run, efficiency_fields, static_decode
from sparsebench.evaluate.measure import PeakMemory, spread
from sparsebench.kernels.paths import PATHS, paths_for, swapped, weight_bytes_in_memory
from sparsebench.kernels.semi_sparse import SemiSparseLinear, semi_sparse_problem
from sparsebench.testing.tiny_models import tiny_model

SPEC = EfficiencySpec(1, 16, (1, 2), 8, 6, 0, 2, "auto", ("eager", "static_eager"))


def _linears(model):
    return [module for name, module in model.named_modules() if name.endswith("proj")]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_static_cache_decoding_gives_the_tokens_of_hf_generate(family):
    model = tiny_model(family)
    prompt = torch.randint(0, 320, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
        decoder = StaticDecoder(model, prompt, 5, graph=False)
        decoder.decode(keep=True)
        first = decoder.tokens()
        decoder.prefill()  # rewinds: the same tokens again
        decoder.decode(keep=True)
    assert torch.equal(first, expected[:, 7:]) and torch.equal(decoder.tokens(), first)


def test_static_decode_times_the_steps_only():
    result = static_decode(tiny_model("llama"), 2, 8, 6, "cpu", 0, 3, PeakMemory("cpu"), graph=False)
    assert result["steps"] == 5 and len(result["seconds"]) == 3
    assert result["tokens_per_s"] == pytest.approx(2 * 5 / result["seconds_median"])


def test_spread_keeps_every_time_with_its_quartiles():
    assert spread([4.0, 1.0, 3.0, 2.0, 5.0]) == {
        "seconds": [4.0, 1.0, 3.0, 2.0, 5.0], "seconds_median": 3.0, "seconds_min": 1.0, "seconds_q1": 2.0, "seconds_q3": 4.0, "seconds_max": 5.0}
    assert spread([2.5])["seconds_q1"] == spread([2.5])["seconds_q3"] == 2.5


class _StandIn(nn.Module):
    """A test-only stand-in for a sparse module: the dense product, and half the weight's bytes claimed as held."""

    def __init__(self, linear):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    @classmethod
    def from_linear(cls, linear):
        return cls(linear)

    def weight_bytes(self):
        return self.weight.numel() * self.weight.element_size() // 2

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


def test_swapped_replaces_the_pruned_linears_counts_their_bytes_and_puts_them_back():
    model = tiny_model("llama")
    linears = _linears(model)
    ids = torch.randint(0, 320, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    dense_bytes = weight_bytes_in_memory(model)
    assert dense_bytes == sum(p.numel() * 4 for p in model.parameters())  # tied weights once
    linear_bytes = sum(linear.weight.numel() * 4 for linear in linears)
    with swapped(model, linears, _StandIn.from_linear):
        assert not any(isinstance(module, nn.Linear) and module in linears for module in model.modules())
        assert weight_bytes_in_memory(model) == dense_bytes - linear_bytes // 2
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, before)
    assert all(any(module is linear for module in model.modules()) for linear in linears)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


def test_the_unstructured_path_is_wired_to_bitmask_linear(monkeypatch):
    """The agreed interface (BitmaskLinear.from_linear, weight_bytes) through a test-only stand-in module."""
    class _Kept(_StandIn):
        one_token_kernel = "kept"  # as BitmaskLinear says which one-token kernel it runs

    stand_in = types.ModuleType("sparsebench.kernels.bitmask_linear")
    stand_in.BitmaskLinear = _Kept
    monkeypatch.setitem(sys.modules, "sparsebench.kernels.bitmask_linear", stand_in)
    assert [path.name for path in paths_for("unstructured")] == ["bitmask"]  # bitmask_kept only where named
    assert [path.name for path in paths_for("unstructured", ["bitmask_kept", "cusparselt"])] == ["bitmask_kept"]
    assert [path.name for path in paths_for("2:4")] == ["cusparselt", "semi_structured", "cusparselt_gemv24", "gemv24"] and paths_for("4:8") == []
    model = tiny_model("llama")
    linears = _linears(model)
    run, skipped = _path_run(model, linears, (), PATHS["bitmask"], SPEC, "cpu", 256, PeakMemory("cpu"), False)
    assert skipped == [] and run["path"].startswith("kernels on the sparse-bitmask layout")
    assert run["one_token_kernels"] == {"kept": len(linears)}
    assert set(run["modes"]) == {"eager", "static_eager"} and "prefill" not in run["modes"]["static_eager"]
    assert run["weight_bytes_in_memory"] == weight_bytes_in_memory(model) - sum(linear.weight.numel() * 2 for linear in linears)


def test_a_missing_kernel_module_is_skipped_with_its_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "sparsebench.kernels.bitmask_linear", None)  # import fails
    run, skipped = _path_run(tiny_model("llama"), [], (), PATHS["bitmask"], SPEC, "cpu", 256, PeakMemory("cpu"), False)
    assert run is None and skipped[0]["what"] == "sparse path bitmask" and "sparsebench.kernels.bitmask_linear is not available" in skipped[0]["why"]


def test_semi_sparse_linear_refuses_what_cusparselt_cannot_run():
    linear = nn.Linear(64, 32, dtype=torch.float16)
    assert "not 2:4 sparse" in semi_sparse_problem(linear)
    with torch.no_grad():
        linear.weight.view(32, -1, 4)[..., :2] = 0
    assert semi_sparse_problem(linear) == "cuSPARSELt needs the weight on a CUDA GPU (it is on cpu)"
    with pytest.raises(ValueError, match="multiples of 16; this weight is 32 x 40"):
        SemiSparseLinear.from_linear(nn.Linear(40, 32, dtype=torch.float16))
    assert "float16/bfloat16; the weight is float32" in semi_sparse_problem(nn.Linear(64, 32))


def _measured(tokens_per_s, peak):
    timing = {"peak_memory_bytes": peak}
    return {"prefill": {"tokens_per_s": tokens_per_s, **timing}, "decode": {"1": {"tokens_per_s": tokens_per_s / 10, **timing}}}


def test_fields_of_paths_and_modes_with_the_earlier_names_for_the_headline():
    efficiency = {
        "runs": {
            "dense_stored": {"weight_bytes_in_memory": 100, "modes": {"eager": _measured(1000.0, 500), "cuda_graph": _measured(1100.0, 510)}},
            "cusparselt": {"weight_bytes_in_memory": 56, "modes": {"eager": _measured(500.0, 300), "cuda_graph": _measured(1430.0, 320)}},
        },
        "speedup": {"cusparselt": {"eager": {"prefill": 0.5, "decode": {"1": 0.5}}, "cuda_graph": {"prefill": 1.3, "decode": {"1": 1.3}}}},
        "weight_memory_vs_dense": {"cusparselt": 0.56},
        "skipped": [{"what": "sparse path semi_structured", "why": "refused"}],
    }
    fields = efficiency_fields({"metrics": {"efficiency": efficiency}})
    assert fields["cusparselt_cuda_graph_prefill_tokens_per_s"] == 1430.0 and fields["speedup_cusparselt_eager_decode_b1"] == 0.5
    assert fields["prefill_tokens_per_s"] == 1000.0 and fields["peak_memory_bytes"] == 510 and fields["weight_bytes_in_memory"] == 100
    assert fields["speedup_prefill"] == 1.3 and fields["speedup_decode_b1"] == 1.3 and (fields["sparse_path"], fields["sparse_mode"]) == ("cusparselt", "cuda_graph")
    assert fields["weight_memory_vs_dense_cusparselt"] == 0.56 and fields["skipped"] == "sparse path semi_structured: refused"
    compiled = {**efficiency, "runs": {name: {**run, "modes": {**run["modes"], "compiled_graph": _measured(rate * 2, 330)}}
                                       for (name, run), rate in zip(efficiency["runs"].items(), (1200.0, 1800.0))},
                "speedup": {"cusparselt": {**efficiency["speedup"]["cusparselt"], "compiled_graph": {"prefill": 1.5, "decode": {"1": 1.4}}}}}
    served = efficiency_fields({"metrics": {"efficiency": compiled}})  # the compiled and graphed mode is the headline where measured
    assert (served["speedup_prefill"], served["sparse_mode"], served["sparse_prefill_tokens_per_s"]) == (1.5, "compiled_graph", 3600.0)
    legacy = efficiency_fields({"metrics": {"efficiency": {"dense_weights": {**_measured(990.0, 400), "weight_bytes_in_memory": 100}, "speedup": {"prefill": 0.4, "decode": {"1": 0.1}}}}})
    assert legacy == {"prefill_tokens_per_s": 990.0, "decode_b1_tokens_per_s": 99.0, "peak_memory_bytes": 400, "weight_bytes_in_memory": 100,
                      "speedup_prefill": 0.4, "speedup_decode_b1": 0.1}
