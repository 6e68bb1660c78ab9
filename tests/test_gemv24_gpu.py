"""Gemv24Linear and the cusparselt_gemv24 path against ``F.linear`` on the dense weight, compiled on a CUDA GPU at LLaMA-2-7B's
linear shapes (``pytest -m gpu``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsebench.kernels.gemv24 import Gemv24Linear
from sparsebench.kernels.paths import TokenCountLinear
from sparsebench.sparse_layout import keep_24

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (out, in): q/k/v/o, gate/up, down


def _linear_24(rows: int, cols: int, dtype: torch.dtype, bias: bool, seed: int) -> torch.nn.Linear:
    g = torch.Generator(device="cuda").manual_seed(seed)
    linear = torch.nn.Linear(cols, rows, bias=bias, device="cuda", dtype=dtype)
    with torch.no_grad():
        weight = torch.randn(rows, cols, device="cuda", generator=g) * cols**-0.5
        linear.weight.copy_(weight * keep_24(weight))
    return linear


@pytest.mark.parametrize("rows, cols", SHAPES)
@pytest.mark.parametrize("tokens", [1, 2, 5, 16])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gemv24_equals_f_linear_at_llama_2_7b_shapes(rows, cols, tokens, dtype):
    linear = _linear_24(rows, cols, dtype, tokens == 5, rows + cols + tokens)
    module = Gemv24Linear.from_linear(linear)
    x = torch.randn(tokens, cols, device="cuda", dtype=dtype)
    with torch.no_grad():
        ours, dense = module(x), F.linear(x, linear.weight, linear.bias)
        exact = x.double() @ linear.weight.double().T + (0 if linear.bias is None else linear.bias.double())
    tolerance = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(ours, dense, rtol=tolerance, atol=tolerance)
    assert (ours.double() - exact).abs().max() <= 2 * (dense.double() - exact).abs().max() + 1e-3 * exact.abs().max()


def test_token_count_linear_routes_and_holds_both_forms():
    linear = _linear_24(4096, 4096, torch.float16, False, 1)
    module = TokenCountLinear.from_linear(linear)
    for tokens in (1, 16, 17, 64):
        x = torch.randn(tokens, 4096, device="cuda", dtype=torch.float16)
        with torch.no_grad():
            torch.testing.assert_close(module(x), F.linear(x, linear.weight), rtol=1e-2, atol=1e-2)
    ratio = module.weight_bytes() / (linear.weight.numel() * 2)
    assert 0.5625 < ratio < 1.25  # 0.5625 (values + bitmask) plus cuSPARSELt's packed weight (about 0.56-0.6)
