"""BitmaskLinear against ``F.linear`` on the dense weight, compiled on a CUDA GPU at LLaMA-2-7B's linear shapes (``pytest -m gpu``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsebench.kernels.bitmask_linear import BitmaskLinear, Launch, default_launch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# (out, in): q/k/v/o, gate/up, down
SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]


def _pruned_linear(rows: int, cols: int, sparsity: float, dtype: torch.dtype, bias: bool, seed: int) -> torch.nn.Linear:
    g = torch.Generator(device="cuda").manual_seed(seed)
    linear = torch.nn.Linear(cols, rows, bias=bias, device="cuda", dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(rows, cols, device="cuda", generator=g) * cols**-0.5)
        linear.weight[torch.rand(rows, cols, device="cuda", generator=g) < sparsity] = 0
    return linear


def _assert_as_close_as_dense(ours: torch.Tensor, dense: torch.Tensor, exact: torch.Tensor) -> None:
    """Within fp16 tolerance of F.linear, and no further from the float64 product than F.linear's own rounding allows."""
    torch.testing.assert_close(ours, dense, rtol=1e-2, atol=1e-2)
    scale = exact.abs().max()
    assert (ours.double() - exact).abs().max() <= 2 * (dense.double() - exact).abs().max() + 1e-3 * scale


@pytest.mark.parametrize("rows, cols", SHAPES)
@pytest.mark.parametrize("sparsity", [0.5, 0.7])
@pytest.mark.parametrize("tokens", [1, 16, 64, 65])
def test_bitmask_linear_equals_f_linear_at_llama_2_7b_shapes(rows, cols, sparsity, tokens):
    linear = _pruned_linear(rows, cols, sparsity, torch.float16, False, rows + cols + tokens)
    module = BitmaskLinear.from_linear(linear)
    x = torch.randn(tokens, cols, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        dense = F.linear(x, linear.weight)
        exact = x.double() @ linear.weight.double().T
        _assert_as_close_as_dense(module(x), dense, exact)


@pytest.mark.parametrize("launch", [Launch(1, 128, 8, one_token="kept"), Launch(1, 128, 4, one_token="kept"),
                                    Launch(1, 128, 16, one_token="kept"), Launch(1, 128, 1, one_token="kept"),
                                    Launch(1, 128, 8, one_token="walk"), Launch(1, 128, 1, one_token="walk"),
                                    Launch(1, 128, 16, one_token="walk"),
                                    Launch(2, 128, 1), Launch(1, 128, 1, splits=4), Launch(2, 128, 1, splits=8),
                                    Launch(1, 32, 1, splits=4, prefetch=True, one_token="bytes"), Launch(1, 128, 4, one_token="bytes"),
                                    Launch(16, 32, splits=2), Launch(32, 64, warps=8, prefetch=True)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_launches_bias_and_bfloat16(launch, dtype):
    linear = _pruned_linear(4096, 11008, 0.7, dtype, True, 7)
    module = BitmaskLinear.from_linear(linear, launch)
    leading = (1, 1) if launch.block_rows <= 2 else (2, 8)  # one token, or the tensor-core path
    ours = _assert_as_close_as_f_linear_with_bias(module, linear, torch.randn(*leading, 11008, device="cuda", dtype=dtype))
    assert ours.shape == (*leading, 4096) and ours.dtype == dtype


def _assert_as_close_as_f_linear_with_bias(module: BitmaskLinear, linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` within the dtype's tolerance of ``F.linear`` (bias included) and as close to the float64 product; returned."""
    with torch.no_grad():
        ours = module(x)
        dense = F.linear(x, linear.weight, linear.bias)
        exact = x.double() @ linear.weight.double().T + linear.bias.double()
    tolerance = 1e-2 if x.dtype == torch.float16 else 5e-2
    torch.testing.assert_close(ours, dense, rtol=tolerance, atol=tolerance)
    assert (ours.double() - exact).abs().max() <= 2 * (dense.double() - exact).abs().max() + 1e-3 * exact.abs().max()
    return ours


def test_module_holds_the_layout_bytes_not_the_dense_weight():
    linear = _pruned_linear(11008, 4096, 0.7, torch.float16, False, 3)
    module = BitmaskLinear.from_linear(linear)
    dense_bytes = linear.weight.numel() * 2
    assert module.values.device.type == "cuda"
    assert 0.34 < module.weight_bytes() / dense_bytes < 0.38  # 0.3 * 2 + 1 / 8 bytes a weight, over 2


@pytest.mark.parametrize("rows, cols, sparsity", [(4099, 4096, 0.7), (9, 96, 0.5), (40, 2080, 0.0), (40, 2080, 0.99), (33, 1024, 0.8)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kernel", ["kept", "walk"])
def test_cuda_kernels_at_edge_shapes(rows, cols, sparsity, dtype, kernel):
    """Rows not a multiple of the block's eight, fewer columns than a chunk, a last partial chunk, full and nearly empty rows."""
    linear = _pruned_linear(rows, cols, sparsity, dtype, True, rows * cols)
    with torch.no_grad():
        linear.weight[1] = 0  # an empty row
        linear.weight[2] = torch.randn(cols, device="cuda", dtype=dtype) * cols**-0.5  # a full one
    module = BitmaskLinear.from_linear(linear, Launch(1, 128, 8, one_token=kernel))
    _assert_as_close_as_f_linear_with_bias(module, linear, torch.randn(1, cols, device="cuda", dtype=dtype))


@pytest.mark.parametrize("kernel", [None, "kept"])  # None: the default, the walking kernel at 70 %
def test_cuda_kernels_run_in_a_cuda_graph_and_compiled(kernel):
    linear = _pruned_linear(4096, 11008, 0.7, torch.float16, False, 11)
    module = BitmaskLinear.from_linear(linear, None if kernel is None else Launch(1, 128, 8, one_token=kernel))
    assert default_launch(1, 4096, 11008, None, module.values.numel() / (4096 * 11008)).one_token == "walk"
    x = torch.randn(1, 11008, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        expected = module(x)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = module(x)
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.testing.assert_close(captured, module(x), rtol=0, atol=0)
        compiled = torch.compile(module, fullgraph=True)
        torch.testing.assert_close(compiled(x), module(x), rtol=0, atol=0)
    assert expected.shape == (1, 4096)


@pytest.mark.parametrize("kernel", ["kept", "walk"])
def test_cuda_kernels_refuse_columns_that_are_not_32_bit_words(kernel):
    linear = _pruned_linear(16, 100, 0.5, torch.float16, False, 5)
    assert default_launch(1, 16, 100).one_token == "chunks"
    module = BitmaskLinear.from_linear(linear, Launch(1, 128, 8, one_token=kernel))
    with pytest.raises(ValueError, match="a multiple of 32 input columns"):
        module(torch.randn(1, 100, device="cuda", dtype=torch.float16))


@pytest.mark.parametrize("rows, cols", SHAPES)
def test_prefill_unpacks_the_weight_exactly_and_takes_the_dense_product(rows, cols):
    from sparsebench.kernels.bitmask_unpack import unpack_dense

    linear = _pruned_linear(rows, cols, 0.7, torch.float16, True, rows + 2 * cols)
    module = BitmaskLinear.from_linear(linear)
    assert torch.equal(unpack_dense(module.values, module.bitmask, module.chunk_offsets, cols), linear.weight)
    _assert_as_close_as_f_linear_with_bias(module, linear, torch.randn(2048, cols, device="cuda", dtype=torch.float16))
