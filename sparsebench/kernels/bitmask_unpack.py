"""The ``sparse-bitmask`` layout unpacked to the dense weight on the GPU, a Triton kernel: how ``BitmaskLinear`` prefills.

What it computes: ``W [rows, cols]`` (zeros where the bitmask is clear) from ``values``, ``bitmask`` and the
``chunk_offsets`` that ``bitmask_linear`` keeps (the index in ``values`` of each row's first kept weight in every
1,024 columns), into a fresh tensor or into ``out``.

Why: a product of many tokens (a prefill) is bound by arithmetic, not by reading the weight, so the compact layout
saves nothing there; the skinny-product kernels re-decode the weight for every 64 tokens, which made a 2,048-token
prefill through the ``bitmask`` path about 50 times slower than dense. Unpacking once and calling the dense product
(cuBLAS) costs one pass over the compact bytes and one write of the dense ones per call: about 123 MB for a
LLaMA-2-7B gate projection at 70 %, some 40 us at 3 TB/s, against the product's own time at 2,048 tokens. Timed on an
H100 for the whole 7B-shaped model at 70 %, a 2,048-token prefill ran at 0.83x of dense-stored (docs/efficiency.md, the
walking kernel's section). The dense weight lives only for the call.

How: one program per row and 1,024 columns (128 mask bytes, one ``chunk_offsets`` entry). Each byte's eight bits
become a ``[128, 8]`` tile; a byte's kept weights start at the chunk's offset plus the exclusive prefix sum of the
bytes' bit counts, and each bit's weight sits at that start plus the bits set before it in its byte (a prefix sum
along the byte); the tile is gathered (zero where the bit is clear) and stored row-major, eight columns a byte.

Triton's interpreter runs it on CPU tensors (tests/bitmask_kernel_cases.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from sparsebench.kernels.launching import INDEX_BYTES, check_one_device


@triton.jit
def _unpack_kernel(values_ptr, bitmask_ptr, offsets_ptr, out_ptr, cols, n_bytes, n_index, stride_out, INDEX_BYTES: tl.constexpr):
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    byte = chunk * INDEX_BYTES + tl.arange(0, INDEX_BYTES)
    mask = tl.load(bitmask_ptr + row.to(tl.int64) * n_bytes + byte, mask=byte < n_bytes, other=0).to(tl.int32)
    bits = (mask[:, None] >> tl.arange(0, 8)[None, :]) & 1
    counts = tl.sum(bits, axis=1)
    starts = tl.load(offsets_ptr + row * n_index + chunk) + tl.cumsum(counts, 0) - counts
    position = starts[:, None] + tl.cumsum(bits, axis=1) - bits
    weight = tl.load(values_ptr + position, mask=bits != 0, other=0.0)
    column = byte[:, None] * 8 + tl.arange(0, 8)[None, :]
    tl.store(out_ptr + row.to(tl.int64) * stride_out + column, weight, mask=column < cols)


def unpack_dense(values: Tensor, bitmask: Tensor, offsets: Tensor, cols: int, out: Tensor | None = None) -> Tensor:
    """The dense ``[rows, cols]`` weight in ``values``' dtype; ``out`` (contiguous, that shape and dtype) to write into."""
    rows, n_bytes = bitmask.shape
    if n_bytes != -(-cols // 8):
        raise ValueError(f"bitmask must have ceil(cols / 8) = {-(-cols // 8)} bytes per row for {cols} columns, got {n_bytes}")
    n_index = -(-n_bytes // INDEX_BYTES)
    if tuple(offsets.shape) != (rows, n_index) or offsets.dtype != torch.int32:
        raise ValueError(f"chunk_offsets must be int32 [{rows}, {n_index}], got {offsets.dtype} {tuple(offsets.shape)}")
    if out is None:
        out = torch.empty(rows, cols, dtype=values.dtype, device=values.device)
    elif out.shape != (rows, cols) or out.dtype != values.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous [{rows}, {cols}] tensor of {values.dtype}, got {tuple(out.shape)} {out.dtype}")
    check_one_device([values, bitmask, offsets, out], "unpack_dense")
    if rows and cols:
        _unpack_kernel[(rows, n_index)](values, bitmask, offsets, out, cols, n_bytes, n_index, out.stride(0), INDEX_BYTES=INDEX_BYTES, num_warps=4)
    return out
