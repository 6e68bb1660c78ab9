"""SparseGPT's in-block column recursion as one Triton kernel (the CUDA path of ``sparsegpt_solve``).

For one block of ``size <= 128`` columns, each program takes ``block_rows`` rows of the block
``W [rows, size]`` and the block's factor ``U [size, size]`` and runs the reference's column loop
(IST-DASLab/sparsegpt ``fasterprune``) on its tile held in registers:

    for column i:   (N:M only, when i % M == 0: prune the N lowest w_j^2 / U_jj^2 of the next M
                     columns of the weights as updated so far; ties in column order, as a stable sort)
        e_i = w_i * pruned_i / U_ii;   w_j -= e_i * U_ij  (j > i)

then writes the block back (pruned weights set to 0) and the errors ``e``, which the caller carries
to the later columns with one GEMM (``W[:, stop:] -= E @ U[block, stop:]``). Rows are independent,
so the programs never communicate; the column loop's 128 steps run on registers instead of as
128 (or, with the batched solves, a dozen per group) launches of small kernels.

Unstructured masks are chosen by the caller for the whole tile (they need every row) and passed
in; N:M masks are chosen here, per row, from the weights as updated so far.

Arithmetic: float32 (or float64) as the input; divisions are correctly rounded (``div_rn``, as
torch), so the N:M scores ``w^2 / U_jj^2`` are those of the torch path bit for bit when the
weights are. Products and subtractions may fuse into FMAs, so the updated weights can differ from
the torch path and the reference by float rounding (tests/test_sparsegpt_triton.py).

Triton's interpreter (``TRITON_INTERPRET=1`` before triton is imported) runs this kernel on CPU
tensors; the tests use it there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Launch shape (rows per program, warps), fastest of eight on an H200 for an 11008 x 128 block
# (bench_sparsegpt_kernel.py --sweep): unstructured 8 rows / 4 warps (172 us, 16 / 4: 183 us),
# N:M 16 rows / 8 warps (214 us, 16 / 4: 306 us).
LAUNCH_UNSTRUCTURED = (8, 4)
LAUNCH_N_M = (16, 8)


@triton.jit
def _divide(x, y, IS_FP64: tl.constexpr):
    if IS_FP64:
        return x / y  # float64 division is always correctly rounded
    else:
        return tl.math.div_rn(x, y)  # '/' on float32 is an approximate division in Triton


@triton.jit
def _column_step(w, errors, pruned, u_ptr, u_stride, i, c, cmask, IS_FP64: tl.constexpr):
    """One step of the column loop: column i's error, and its update of the columns after it."""
    at_i = c == i
    e_i = tl.sum(tl.where(at_i[None, :] & pruned, w, 0.0), axis=1)
    d_i = tl.load(u_ptr + i * u_stride + i)
    e_i = _divide(e_i, d_i, IS_FP64)
    u_row = tl.load(u_ptr + i * u_stride + c, mask=(c > i) & cmask, other=0.0)
    w = w - e_i[:, None] * u_row[None, :]
    errors = tl.where(at_i[None, :], e_i[:, None], errors)
    return w, errors


@triton.jit
def _obs_block_kernel(
    w_ptr, w_stride, mask_ptr, mask_stride, u_ptr, u_stride, err_ptr, err_stride, rows,
    SIZE: tl.constexpr, N: tl.constexpr, M: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr, IS_FP64: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    c = tl.arange(0, BLOCK_COLS)
    cmask = c < SIZE
    tile = (r < rows)[:, None] & cmask[None, :]
    r64 = r.to(tl.int64)
    w = tl.load(w_ptr + r64[:, None] * w_stride + c[None, :], mask=tile, other=0.0)
    errors = tl.zeros_like(w)
    if M == 0:  # unstructured: the mask is given
        pruned = tl.load(mask_ptr + r64[:, None] * mask_stride + c[None, :], mask=tile, other=0) != 0
        for i in range(0, SIZE):
            w, errors = _column_step(w, errors, pruned, u_ptr, u_stride, i, c, cmask, IS_FP64)
    else:
        pruned = c[None, :] < 0  # all False, [1, BLOCK_COLS]; broadcasts to the tile below
        pruned = pruned & tile
        for g in range(0, SIZE // M):
            start = g * M
            # rank of each column among the group's M by (score, column): the N lowest are pruned
            scores = tl.zeros_like(w)
            rank = tl.zeros(w.shape, dtype=tl.int32)
            for a in tl.static_range(M):
                at_a = c == start + a
                w_a = tl.sum(tl.where(at_a[None, :], w, 0.0), axis=1)
                d_a = tl.load(u_ptr + (start + a) * u_stride + start + a)
                s_a = _divide(w_a * w_a, d_a * d_a, IS_FP64)
                earlier = (c >= start) & (c < start + a)
                below = earlier[None, :] & (scores <= s_a[:, None])  # ties: the earlier column ranks lower
                above = earlier[None, :] & (scores > s_a[:, None])
                rank_a = tl.sum(below.to(tl.int32), axis=1)
                rank = tl.where(above, rank + 1, rank)
                rank = tl.where(at_a[None, :], rank_a[:, None], rank)
                scores = tl.where(at_a[None, :], s_a[:, None], scores)
            in_group = (c >= start) & (c < start + M)
            pruned = pruned | (in_group[None, :] & (rank < N))
            for a in tl.static_range(M):
                w, errors = _column_step(w, errors, pruned, u_ptr, u_stride, start + a, c, cmask, IS_FP64)
    w = tl.where(pruned, 0.0, w)
    tl.store(w_ptr + r64[:, None] * w_stride + c[None, :], w, mask=tile)
    tl.store(err_ptr + r64[:, None] * err_stride + c[None, :], errors, mask=tile)


def obs_block(block: Tensor, block_factor: Tensor, errors: Tensor, mask: Tensor | None = None, n: int = 0, m: int = 0,
              block_rows: int | None = None, num_warps: int | None = None) -> None:
    """Run SparseGPT's column loop over one block in place (see the module docstring).

    ``block`` [rows, size] (a view with unit column stride, e.g. ``work[:, start:stop]``) becomes
    the pruned and updated block; ``errors`` [rows, size] receives ``e``. Either ``mask`` (True
    where pruned, unstructured) or ``n:m`` (N:M, chosen here; ``size`` a multiple of ``m``).
    """
    rows, size = block.shape
    if size > 256:
        raise ValueError(f"the Triton SparseGPT kernel takes blocks of at most 256 columns, not {size}")
    if (mask is None) == (m == 0):
        raise ValueError("give either an unstructured mask or an N:M pattern")
    for name, tensor in (("block", block), ("block_factor", block_factor), ("errors", errors)):
        if tensor.stride(1) != 1:
            raise ValueError(f"{name} needs unit column stride")
    default_rows, default_warps = LAUNCH_UNSTRUCTURED if m == 0 else LAUNCH_N_M
    block_rows, num_warps = block_rows or default_rows, num_warps or default_warps
    mask_arg = block if mask is None else mask.view(torch.uint8) if mask.dtype == torch.bool else mask  # unread when N:M
    mask_stride = 0 if mask is None else mask_arg.stride(0)
    grid = (triton.cdiv(rows, block_rows),)
    _obs_block_kernel[grid](
        block, block.stride(0), mask_arg, mask_stride, block_factor, block_factor.stride(0), errors, errors.stride(0), rows,
        SIZE=size, N=n, M=m, BLOCK_ROWS=block_rows, BLOCK_COLS=max(16, triton.next_power_of_2(size)),
        IS_FP64=block.dtype.itemsize == 8, num_warps=num_warps,
    )
