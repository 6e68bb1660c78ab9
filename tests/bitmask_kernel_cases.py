"""Run the bitmask kernel (sparsebench/kernels/bitmask_linear.py) in Triton's interpreter on CPU tensors; print one JSON object.

Called by tests/test_bitmask_kernel.py in a subprocess, because TRITON_INTERPRET must be set before
the kernel is defined. Each case multiplies random half-precision inputs by a random sparse weight
through ``bitmask_matmul`` and reports the largest error against the float64 product of the same
half-precision numbers, divided by the error that rounding allows: half an output ulp (the result is
rounded to x's dtype once; see ROUNDING for bfloat16) plus float32 accumulation (``cols * 2**-24 * sum |x w|``), so a ratio
above 1 is a wrong value, not rounding.
"""

from __future__ import annotations

import json
import os

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from sparsebench.kernels.bitmask_linear import BitmaskLinear, Launch, bitmask_matmul, chunk_offsets  # noqa: E402
from sparsebench.kernels.bitmask_unpack import unpack_dense  # noqa: E402
from sparsebench.sparse_layout import pack_bitmask  # noqa: E402
from sparsebench.testing.compiled_ops import compiled_against_eager  # noqa: E402

# half an ulp, relative; bfloat16 a whole ulp: Triton 3.6's interpreter casts float32 to bfloat16 by
# truncation (interpreter.py, cast_impl without a rounding mode), the GPU rounds to nearest
ROUNDING = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-7}

# (name, rows, cols, tokens, sparsity, launch, dtype, bias): in_features not a multiple of a chunk
# (8 * block_bytes columns) nor of 8; 1,100 columns span two index chunks (138 bytes), so two
# splits start the second on chunk_offsets[:, 1]; 65 tokens take two token tiles of 64.
# The one-token "chunks" kernel (1,024 columns a step): 2,100 columns end in a partial chunk and a
# partial byte, 2,048 fill two chunks exactly (no bounds masks), odd row counts leave the last two-row program one row
CHUNKS_ONE_ROW, CHUNKS_TWO_ROWS = Launch(1, 128, warps=1), Launch(2, 128, warps=1)
CASES = [
    ("chunks 50% T=1 one row", 7, 2100, 1, 0.5, CHUNKS_ONE_ROW, torch.float16, False),
    ("chunks 70% T=1 two rows", 9, 2100, 1, 0.7, CHUNKS_TWO_ROWS, torch.float16, True),
    ("chunks 80% T=1 whole chunks", 5, 2048, 1, 0.8, CHUNKS_TWO_ROWS, torch.float16, False),
    ("chunks 70% T=1 two splits", 5, 2100, 1, 0.7, Launch(2, 128, warps=1, splits=2), torch.float16, True),
    ("chunks 70% T=1 whole chunks two splits", 3, 2048, 1, 0.7, Launch(2, 128, warps=1, splits=2), torch.float16, True),
    ("chunks 60% T=1 bfloat16", 6, 1030, 1, 0.6, CHUNKS_TWO_ROWS, torch.bfloat16, True),
    ("50% T=1", 12, 300, 1, 0.5, Launch(1, 16, warps=1, one_token="bytes"), torch.float16, False),
    ("70% T=1 default launch", 12, 300, 1, 0.7, None, torch.float16, False),
    ("80% T=1", 12, 300, 1, 0.8, Launch(1, 16, prefetch=True, one_token="bytes"), torch.float16, True),
    ("70% T=1 two splits", 9, 1100, 1, 0.7, Launch(1, 32, splits=2, prefetch=True, one_token="bytes"), torch.float16, True),
    ("70% T=5 two splits", 20, 1100, 5, 0.7, Launch(16, 16, splits=2, prefetch=True), torch.float16, True),
    ("50% T=64", 33, 200, 64, 0.5, Launch(16, 32), torch.float16, False),
    ("80% T=65", 33, 200, 65, 0.8, Launch(16, 32), torch.float16, True),  # above 64 tokens: unpacked, the dense product
    ("70% T=200 unpacked", 20, 2100, 200, 0.7, None, torch.float16, True),
    ("60% T=70 bfloat16 unpacked", 16, 300, 70, 0.6, None, torch.bfloat16, True),
    # bfloat16 on the one-token path only: Triton 3.6's interpreter multiplies bfloat16 operands of
    # tl.dot as their uint16 bit patterns (interpreter.py, create_dot); tests/test_bitmask_gpu.py runs it compiled
    ("60% T=1 bfloat16", 16, 136, 1, 0.6, Launch(1, 16, one_token="bytes"), torch.bfloat16, True),
]
EMPTY_ROWS, FULL_ROWS = (0, 3, 10), (5, 7, 15)


def _weight(rows: int, cols: int, sparsity: float, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g)
    weight[torch.rand(rows, cols, generator=g) < sparsity] = 0
    return weight.to(dtype)


def _error_over_bound(y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> dict:
    exact = x.double() @ weight.double().T + (0 if bias is None else bias.double())
    magnitude = x.double().abs() @ weight.double().abs().T + (0 if bias is None else bias.double().abs())
    bound = ROUNDING[y.dtype] * exact.abs() + weight.shape[1] * 2.0**-24 * magnitude + 1e-30
    return {"error_over_bound": float(((y.double() - exact).abs() / bound).max()), "shape": list(y.shape),
            "dtype": str(y.dtype), "max_abs": float(exact.abs().max())}


def _product(weight: torch.Tensor, tokens: int, launch: Launch | None, with_bias: bool, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(tokens, weight.shape[1], generator=g).to(weight.dtype)
    bias = torch.randn(weight.shape[0], generator=g).to(weight.dtype) if with_bias else None
    packed = pack_bitmask(weight)
    y = bitmask_matmul(x, packed, chunk_offsets(packed), bias, launch)
    return _error_over_bound(y, x, weight, bias)


def main() -> None:
    results = {}
    for seed, (name, rows, cols, tokens, sparsity, launch, dtype, bias) in enumerate(CASES):
        weight = _weight(rows, cols, sparsity, dtype, seed)
        results[name] = {**_product(weight, tokens, launch, bias, seed), "sparsity": float((weight == 0).double().mean())}
    # empty rows (no values, the next row's offset repeats) and full rows (every bit set); at 2,100
    # columns a full row fills whole 32-byte groups (256 kept weights, the largest group total)
    for cols, runs in ((264, ((1, Launch(1, 16, one_token="bytes"), "T=1"), (5, Launch(16, 16, prefetch=True), "T=5"))),
                       (2100, ((1, CHUNKS_TWO_ROWS, "chunks T=1"), (100, None, "unpacked T=100")))):
        weight = _weight(16, cols, 0.7, torch.float16, 50)
        weight[list(EMPTY_ROWS)] = 0
        weight[list(FULL_ROWS)] = torch.randn(len(FULL_ROWS), cols, generator=torch.Generator().manual_seed(51)).half()
        for tokens, launch, label in runs:
            case = _product(weight, tokens, launch, True, 52)
            case["row_counts"] = (weight != 0).sum(dim=1).tolist()
            results[f"empty and full rows {label}"] = case
        packed = pack_bitmask(weight)
        results[f"unpack {cols} columns with empty and full rows"] = torch.equal(unpack_dense(packed.values, packed.bitmask, chunk_offsets(packed), cols), weight)
    for rows, cols, sparsity, dtype in ((7, 2100, 0.7, torch.float16), (5, 1024, 0.5, torch.bfloat16), (3, 13, 0.0, torch.float16), (4, 40, 1.0, torch.float16)):
        weight = _weight(rows, cols, sparsity, dtype, rows + cols)
        packed = pack_bitmask(weight)
        out = torch.full((rows, cols), 7.0, dtype=dtype)  # every position written, kept or not
        unpacked = unpack_dense(packed.values, packed.bitmask, chunk_offsets(packed), cols, out=out)
        results[f"unpack {rows}x{cols} {sparsity:.0%} {str(dtype).removeprefix('torch.')}"] = unpacked is out and torch.equal(out, weight)
    # the module: inputs [..., in], bias kept, no dense copy
    linear = torch.nn.Linear(300, 40, dtype=torch.float16)
    with torch.no_grad():
        linear.weight.copy_(_weight(40, 300, 0.7, torch.float16, 60))
    module = BitmaskLinear.from_linear(linear)
    x = torch.randn(2, 3, 300, generator=torch.Generator().manual_seed(61)).half()
    y = module(x)
    results["BitmaskLinear [2, 3, 300]"] = {**_error_over_bound(y.reshape(6, 40), x.reshape(6, 300), linear.weight.detach(), linear.bias.detach()),
                                            "out_shape": list(y.shape)}
    results["BitmaskLinear compiled"] = compiled_against_eager(module, x, y)
    # the launch travels through the operator as integers, the one-token kernel's name included
    bytes_kernel = BitmaskLinear.from_linear(linear, Launch(1, 16, one_token="bytes"))
    results["BitmaskLinear compiled bytes kernel"] = compiled_against_eager(bytes_kernel, x[:1, :1], bytes_kernel(x[:1, :1]))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
