"""A tiled transpose on the GPU: ``product.t().contiguous()`` for a contiguous 2-D tensor, in one Triton kernel.

cuSPARSELt computes a 2:4 linear as ``W @ xᵀ`` (``[out, tokens]``), and the next operations want ``[tokens, out]``
(``sparsebench.kernels.semi_sparse``). PyTorch's copy of the transposed view reads or writes one of the two
tensors with a stride of a whole row, one element per access: on an H100 it took 63 µs for a 4096 x 2,048 fp16
product (0.5 TB/s; docs/efficiency.md, "On a GPU"). Here each program loads a ``TILE`` x ``TILE`` tile along the
source's rows and stores its transpose along the target's, so both sides are read and written in whole rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sparsebench.kernels.launching import check_one_device

TILE = 64  # rows and columns of one tile


@triton.jit
def _transpose_kernel(source, target, rows, cols, TILE: tl.constexpr):
    row = tl.program_id(0) * TILE + tl.arange(0, TILE)
    col = tl.program_id(1) * TILE + tl.arange(0, TILE)
    inside = (row[:, None] < rows) & (col[None, :] < cols)
    tile = tl.load(source + row[:, None] * cols + col[None, :], mask=inside)
    tl.store(target + col[:, None] * rows + row[None, :], tl.trans(tile), mask=tl.trans(inside))


def transposed_copy(product: torch.Tensor) -> torch.Tensor:
    """``product.t().contiguous()`` for a contiguous 2-D ``[rows, cols]`` tensor: a new contiguous ``[cols, rows]`` tensor."""
    if product.dim() != 2 or not product.is_contiguous():
        raise ValueError(f"transposed_copy takes a contiguous 2-D tensor; got shape {tuple(product.shape)}, strides {product.stride()}")
    check_one_device([product], "transposed_copy")
    rows, cols = product.shape
    out = torch.empty(cols, rows, dtype=product.dtype, device=product.device)
    if product.numel():
        _transpose_kernel[(triton.cdiv(rows, TILE), triton.cdiv(cols, TILE))](product, out, rows, cols, TILE=TILE)
    return out
