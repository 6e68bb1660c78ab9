"""``SemiSparseLinear``'s operand and output layouts on the CPU, with cuSPARSELt's product and search stood in for.

The MLP's input projections may hand their output on features-major (the transposed view of cuSPARSELt's
``[out, tokens]`` product); the output projection then reads it row-major, with an algorithm id searched for that
layout. The stand-in product is ``W @ B`` for whichever layout ``B`` has, and records it, so the tests check both what
reaches cuSPARSELt and that the MLP computes the dense one's output. tests/test_gpu_kernels.py runs the real product.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsebench.kernels import paths, semi_sparse
from sparsebench.kernels.paths import swapped
from sparsebench.kernels.semi_sparse import SemiSparseLinear
from sparsebench.models.adapters import adapter_for
from sparsebench.testing.compiled_ops import RecordingBackend
from sparsebench.testing.tiny_models import tiny_model


class _Cusparselt:
    """Stands in for ``torch._cslt_sparse_mm`` and the search: the "packed" buffer is the dense weight, flattened."""

    def __init__(self) -> None:
        self.operands: list[tuple[tuple[int, ...], bool]] = []  # (shape, row-major) of every B the product was given
        self.searched: list[tuple[int, bool]] = []  # (tokens, row-major) of every search

    def product(self, packed, dense_b, alg_id):
        assert alg_id == (11 if dense_b.is_contiguous() else 7)  # the id searched for this operand layout
        self.operands.append((tuple(dense_b.shape), dense_b.is_contiguous()))
        return packed.view(-1, dense_b.shape[0]) @ dense_b

    def search(self, packed, rows_t):
        self.searched.append((rows_t.shape[1], rows_t.is_contiguous()))
        return 11 if rows_t.is_contiguous() else 7


@pytest.fixture
def cusparselt(monkeypatch):
    stand_in = _Cusparselt()
    monkeypatch.setattr(torch, "_cslt_sparse_mm", stand_in.product)
    monkeypatch.setattr(semi_sparse, "search_algorithm", stand_in.search)
    monkeypatch.setattr(semi_sparse, "transposed_copy", lambda product: product.t().contiguous())  # the Triton kernel needs a GPU
    monkeypatch.setattr(semi_sparse, "_ALGORITHM_IDS", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)  # the CPU build of torch cannot ask
    return stand_in


def _stand_in(linear: nn.Linear) -> SemiSparseLinear:
    bias = None if linear.bias is None else linear.bias.detach().clone()
    return SemiSparseLinear(linear.weight.detach().reshape(-1).clone(), linear.out_features, linear.in_features, bias, linear.weight.dtype)


def _mlp_and_input(tokens: int):
    model = tiny_model("llama")
    adapter = adapter_for("auto", "llama")
    block = adapter.get_blocks(model)[0]
    linears = list(adapter.get_linears(block).values())
    mlp_inputs = [block.get_submodule(name) for name in adapter.mlp_input_linears]
    x = torch.randn(1, tokens, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    return model, block.mlp, linears, mlp_inputs, x


def test_the_mlp_input_projections_are_named_for_every_family():
    assert adapter_for("auto", "llama").mlp_input_linears == ("mlp.gate_proj", "mlp.up_proj")
    assert adapter_for("auto", "opt").mlp_input_linears == ("fc1",)
    assert adapter_for("auto", "gpt_neox").mlp_input_linears == ("mlp.dense_h_to_4h",)
    assert adapter_for("auto", "phi").mlp_input_linears == ("mlp.fc1",)


def test_the_adapter_hands_out_every_blocks_grouped_linears_and_mlp_inputs():
    model = tiny_model("llama")
    adapter = adapter_for("auto", "llama")
    blocks = adapter.get_blocks(model)
    groups = adapter.grouped_linears(model)
    assert len(groups) == len(blocks) * len(adapter.input_groups)
    assert groups[0] == (blocks[0].self_attn.q_proj, blocks[0].self_attn.k_proj, blocks[0].self_attn.v_proj)
    assert groups[-1] == (blocks[-1].mlp.down_proj,)
    assert adapter.mlp_input_modules(model) == [module for block in blocks for module in (block.mlp.gate_proj, block.mlp.up_proj)]


def test_features_major_outputs_reach_the_output_projection_row_major_and_give_the_dense_output(cusparselt):
    model, mlp, linears, mlp_inputs, x = _mlp_and_input(32)
    with torch.no_grad():
        dense = mlp(x)
        with swapped(model, linears, _stand_in, mlp_inputs):
            assert mlp.gate_proj.features_major_output and mlp.up_proj.features_major_output and not mlp.down_proj.features_major_output
            gate = mlp.gate_proj(x)
            assert gate.shape == (1, 32, model.config.intermediate_size) and gate.stride() == (32, 1, 32)  # the view of the [out, tokens] product: no copy
            cusparselt.operands.clear()
            sparse = mlp(x)
    hidden, intermediate = model.config.hidden_size, model.config.intermediate_size
    # gate and up read x column-major ([in, tokens] as x's transposed view); down reads the intermediate row-major
    assert cusparselt.operands == [((hidden, 32), False), ((hidden, 32), False), ((intermediate, 32), True)]
    assert set(cusparselt.searched) == {(32, False), (32, True)}  # one search per (shape, tokens, operand layout)
    torch.testing.assert_close(sparse, dense)


def test_padded_token_counts_stay_token_major(cusparselt):
    model, mlp, linears, mlp_inputs, x = _mlp_and_input(5)  # padded to 16: the padded product is never handed on
    with torch.no_grad():
        dense = mlp(x)
        with swapped(model, linears, _stand_in, mlp_inputs):
            assert mlp.gate_proj(x).is_contiguous()
            cusparselt.operands.clear()
            sparse = mlp(x)
    assert [row_major for _, row_major in cusparselt.operands] == [False, False, False]
    torch.testing.assert_close(sparse, dense)


def test_without_features_major_every_output_is_contiguous(cusparselt):
    model, mlp, linears, _, x = _mlp_and_input(32)
    with torch.no_grad(), swapped(model, linears, _stand_in):
        assert mlp.gate_proj(x).is_contiguous()
        cusparselt.operands.clear()
        mlp(x)
    assert [row_major for _, row_major in cusparselt.operands] == [False, False, False]


def test_swapped_hands_on_features_major_only_where_the_replacement_can(cusparselt):
    model, mlp, linears, mlp_inputs, _ = _mlp_and_input(16)
    with swapped(model, linears, lambda linear: nn.Linear(linear.in_features, linear.out_features), mlp_inputs):
        assert isinstance(mlp.gate_proj, nn.Linear)  # a replacement without hand_on_features_major is left as it is
    with swapped(model, linears, _token_count_stand_in, mlp_inputs):
        assert mlp.gate_proj.prefill.features_major_output and not mlp.down_proj.prefill.features_major_output
        assert not getattr(mlp.gate_proj.decode, "features_major_output", False)


def _token_count_stand_in(linear: nn.Linear) -> paths.TokenCountLinear:
    return paths.TokenCountLinear(nn.Linear(linear.in_features, linear.out_features), _stand_in(linear))


def test_tracing_calls_the_features_major_operator_for_the_mlp_inputs(cusparselt):
    model, mlp, linears, mlp_inputs, x = _mlp_and_input(32)
    backend = RecordingBackend()
    with torch.no_grad(), swapped(model, linears, _stand_in, mlp_inputs):
        eager = mlp(x)  # searches the ids, as the modes run a shape eagerly before compiling it
        torch._dynamo.reset()
        compiled = torch.compile(mlp, fullgraph=True, dynamic=False, backend=backend)(x)
    targets = [node.target for node in backend.calls()]
    assert targets.count(torch.ops.sparsebench.cusparselt_mm_features_major.default) == 2
    assert targets.count(torch.ops.sparsebench.cusparselt_mm.default) == 1
    torch.testing.assert_close(compiled, eager)
