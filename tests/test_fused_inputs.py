"""Linears that read one input run as one product (``sparsebench.kernels.fused_inputs``), as vLLM runs q/k/v and gate/up."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsebench.evaluate.compiled import compiled_forward
from sparsebench.evaluate.cuda_graphs import StaticDecoder
from sparsebench.kernels.fused_inputs import FusedMember, fused_inputs, fused_linear
from sparsebench.kernels.paths import swapped, weight_bytes_in_memory
from sparsebench.models.adapters import adapter_for
from sparsebench.testing.compiled_ops import RecordingBackend
from sparsebench.testing.tiny_models import tiny_model


def _groups(model, family: str) -> list[tuple[nn.Linear, ...]]:
    adapter = adapter_for("auto", family)
    return [tuple(block.get_submodule(name) for name in group) for block in adapter.get_blocks(model) for group in adapter.input_groups]


@pytest.mark.parametrize("family", ["llama", "opt", "gpt_neox"])
def test_fused_products_give_the_model_s_logits_and_put_everything_back(family):
    model = tiny_model(family)
    groups = _groups(model, family)
    originals = {id(linear) for group in groups for linear in group}
    ids = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with fused_inputs(model, groups) as computing:
            fused = [module for module in model.modules() if isinstance(module, FusedMember)]
            assert len(fused) == sum(len(group) for group in groups if len(group) > 1)
            assert (len(fused) > 0) == (family != "gpt_neox")  # GPT-NeoX's q/k/v is one linear already
            assert set(computing) == originals
            torch.testing.assert_close(model(input_ids=ids).logits, expected)
            assert all(member.shared._input is None and member.shared._outputs is None for member in fused)  # nothing kept
    assert {id(module) for module in model.modules() if isinstance(module, nn.Linear)} >= originals
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, expected)


def test_the_fused_linear_concatenates_weights_and_biases_with_zeros_where_missing():
    first, second = nn.Linear(8, 3, bias=True), nn.Linear(8, 5, bias=False)
    fused = fused_linear([first, second])
    x = torch.randn(4, 8)
    torch.testing.assert_close(fused(x), torch.cat([first(x), second(x)], dim=-1))
    with pytest.raises(ValueError, match="must read the same input size"):
        fused_linear([first, nn.Linear(6, 2)])


def test_a_member_called_with_another_input_gets_the_product_of_its_own_input():
    model = tiny_model("llama")
    groups = _groups(model, "llama")
    attention = adapter_for("auto", "llama").get_blocks(model)[0].self_attn
    hidden = model.config.hidden_size
    a, b = torch.randn(1, 3, hidden), torch.randn(1, 3, hidden)
    with torch.no_grad():
        expected_q, expected_k = attention.q_proj(a), attention.k_proj(b)
        with fused_inputs(model, groups):
            q = attention.q_proj(a)
            k = attention.k_proj(b)  # not a's product: computed again for b
    torch.testing.assert_close(q, expected_q)
    torch.testing.assert_close(k, expected_k)


def test_compiled_the_model_runs_one_product_per_group_and_decodes_the_eager_tokens():
    model = tiny_model("llama")
    groups = _groups(model, "llama")
    ids = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(1))
    backend = RecordingBackend()
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits
        with fused_inputs(model, groups):
            with compiled_forward(model, shapes=1, backend=backend) as compiled:
                first = compiled(input_ids=ids, use_cache=False).logits
                second = compiled(input_ids=ids, use_cache=False).logits  # no recompilation (it would raise)
    linears = [node for node in backend.calls() if node.target is torch._C._nn.linear]
    blocks = model.config.num_hidden_layers
    assert len(backend.graphs) == 1 and len(linears) == 4 * blocks + 1  # q/k/v, o, gate/up, down per block, then the head
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)


def test_fused_decoding_on_a_static_cache_gives_the_unfused_tokens():
    model = tiny_model("llama")
    prompt = torch.randint(0, 320, (2, 7), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        plain = StaticDecoder(model, prompt, 6, graph=False)
        plain.decode(keep=True)
        with fused_inputs(model, _groups(model, "llama")):
            fused = StaticDecoder(model, prompt, 6, graph=False)
            fused.decode(keep=True)
    assert torch.equal(fused.tokens(), plain.tokens())


def test_a_sparse_path_converts_the_fused_linears_and_memory_counts_each_product_once():
    model = tiny_model("llama")
    groups = _groups(model, "llama")
    dense_bytes = weight_bytes_in_memory(model)
    ids = torch.randint(0, 320, (1, 9), generator=torch.Generator().manual_seed(3))
    converted = []

    def convert(linear):
        converted.append(linear.out_features)
        copy = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        copy.load_state_dict(linear.state_dict())
        return copy

    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with fused_inputs(model, groups) as computing:
            assert weight_bytes_in_memory(model) == dense_bytes
            linears = list({id(module): module for module in (computing[id(linear)] for group in groups for linear in group)}.values())
            with swapped(model, linears, convert):
                torch.testing.assert_close(model(input_ids=ids).logits, expected)
    config = model.config
    hidden, intermediate, kv = config.hidden_size, config.intermediate_size, config.num_key_value_heads * config.hidden_size // config.num_attention_heads
    assert converted[:4] == [hidden + 2 * kv, hidden, 2 * intermediate, hidden]  # q/k/v, o, gate/up, down of block 0


def test_the_stage_measures_the_fused_model_on_every_side_and_says_so():
    from sparsebench.blockwalk import Execution
    from sparsebench.evaluate.efficiency import EfficiencySpec, evaluate_efficiency

    model = tiny_model("llama")
    groups = _groups(model, "llama")
    linears = [linear for group in groups for linear in group]
    spec = EfficiencySpec(1, 16, (1,), 8, 4, 0, 2, "auto", ("eager", "static_eager"), fuse_projections=True)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(sum(isinstance(m, FusedMember) for m in module.modules())))
    result = evaluate_efficiency(model, linears, spec, Execution("cpu"), None, 256, groups=groups)
    blocks = model.config.num_hidden_layers
    assert result["fused_projections"] == 2 * blocks  # q/k/v and gate/up in each block
    assert seen and all(count == 5 * blocks for count in seen)  # every forward ran fused (3 + 2 members a block)
    assert result["runs"]["dense_stored"]["modes"]["eager"]["prefill"]["tokens_per_s"] > 0
    assert not any(isinstance(module, FusedMember) for module in model.modules())  # put back
    unfused = evaluate_efficiency(model, linears, EfficiencySpec(1, 16, (1,), 8, 4, 0, 1, "auto", ("eager",)), Execution("cpu"), None, 256, groups=groups)
    assert unfused["fused_projections"] == 0
