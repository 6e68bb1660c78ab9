"""Run the gemv24 kernels (sparsebench/kernels/gemv24.py) in Triton's interpreter on CPU tensors; print one JSON object.

Called by tests/test_gemv24.py in a subprocess, because TRITON_INTERPRET must be set before the kernels are
defined. Each case reports the largest difference from ``F.linear`` on the unpacked weight (float32 math on
the same half-precision numbers, rounded once) over fp16 tolerance (bfloat16: see ROUNDING), so a ratio
above 1 is a wrong value, not rounding.
"""

from __future__ import annotations

import json
import os

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sparsebench.kernels.gemv24 import Gemv24Linear, Launch, gemv24_matmul  # noqa: E402
from sparsebench.kernels.paths import GEMV24_MAX_TOKENS, TokenCountLinear  # noqa: E402
from sparsebench.sparse_layout import keep_24, pack_24, unpack_24  # noqa: E402
from sparsebench.testing.compiled_ops import compiled_against_eager  # noqa: E402

# relative tolerance: fp16 rounding of the result and of float32 sums; bfloat16 a whole ulp and more (Triton 3.6's
# interpreter casts float32 to bfloat16 by truncation)
ROUNDING = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-6}

# (name, rows, cols, tokens, launch, dtype, bias): 264 and 136 columns are multiples of 8, not of 16, 64 or 128;
# 37 rows are not a multiple of a row block; 17 tokens take two tiles of 16
CASES = [
    ("T=1", 37, 264, 1, Launch(4, 16), torch.float16, False),
    ("T=1 default launch bias", 12, 136, 1, None, torch.float16, True),
    ("T=1 two splits", 9, 520, 1, Launch(2, 16, splits=2), torch.float16, True),
    ("T=2", 37, 264, 2, Launch(16, 16), torch.float16, False),
    ("T=5 bias", 20, 136, 5, Launch(16, 16, splits=2), torch.float16, True),
    ("T=16", 33, 264, 16, Launch(32, 16), torch.float16, False),
    ("T=17", 20, 72, 17, Launch(16, 16), torch.float16, True),
    # bfloat16 on the one-token kernel only: Triton 3.6's interpreter multiplies bfloat16 operands of tl.dot as their
    # uint16 bit patterns (interpreter.py, create_dot); tests/test_gemv24_gpu.py runs 2-16 tokens in bfloat16 compiled
    ("T=1 bfloat16", 16, 136, 1, Launch(4, 16), torch.bfloat16, True),
]


def _weight(rows: int, cols: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    weight = weight * keep_24(weight)
    weight[0] = 0  # an all-zero row
    weight[1, 0:2] = 0  # a group with no non-zeros (its kept values are zeros) and one with a single non-zero
    weight[1, 4:7] = 0
    return weight.to(dtype)


def _error(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> dict:
    reference = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
    magnitude = x.float().abs() @ weight.float().abs().T + (0 if bias is None else bias.float().abs())
    bound = ROUNDING[y.dtype] * (reference.abs() + magnitude) + 1e-6
    return {"error_over_tolerance": float(((y.float() - reference).abs() / bound).max()), "shape": list(y.shape), "dtype": str(y.dtype),
            "zero_row": float(y[:, 0].abs().max()) if bias is None else None}


def main() -> None:
    results = {}
    for seed, (name, rows, cols, tokens, launch, dtype, with_bias) in enumerate(CASES):
        weight = _weight(rows, cols, dtype, seed)
        g = torch.Generator().manual_seed(seed + 100)
        x = torch.randn(tokens, cols, generator=g).to(dtype)
        bias = torch.randn(rows, generator=g).to(dtype) if with_bias else None
        packed = pack_24(weight)
        assert torch.equal(unpack_24(packed), weight)
        results[name] = _error(gemv24_matmul(x, packed, bias, launch), x, weight, bias)
    linear = torch.nn.Linear(264, 40, dtype=torch.float16)
    with torch.no_grad():
        linear.weight.copy_(_weight(40, 264, torch.float16, 60))
    module = Gemv24Linear.from_linear(linear)
    x = torch.randn(2, 3, 264, generator=torch.Generator().manual_seed(61)).half()
    y = module(x)
    results["Gemv24Linear [2, 3, 264]"] = {**_error(y.reshape(6, 40), x.reshape(6, 264), linear.weight.detach(), linear.bias.detach()),
                                           "out_shape": list(y.shape)}
    results["Gemv24Linear compiled"] = compiled_against_eager(module, x, y)
    one_token = x[:1, :1]
    launched = Gemv24Linear.from_linear(linear, launch=Launch(2, 16, splits=2))  # the launch travels through the operator
    results["Gemv24Linear compiled launch"] = compiled_against_eager(launched, one_token, launched(one_token))
    # cusparselt_gemv24's routing, with a dense nn.Linear standing in for SemiSparseLinear (cuSPARSELt needs a GPU)
    routed = TokenCountLinear(Gemv24Linear.from_linear(linear, max_tokens=GEMV24_MAX_TOKENS), linear)
    for tokens in (GEMV24_MAX_TOKENS, GEMV24_MAX_TOKENS + 1):
        inputs = x[:1, :tokens]
        results[f"TokenCountLinear compiled {tokens} token(s)"] = compiled_against_eager(routed, inputs, routed(inputs))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
