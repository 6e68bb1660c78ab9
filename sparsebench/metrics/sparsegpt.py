"""SparseGPT (Frantar & Alistarh 2023, arXiv 2301.00774; IST-DASLab/sparsegpt ``fasterprune``).

Optimal-brain-surgeon pruning with lazy batched updates, as in the reference:

1. ``H = X^T X`` over the calibration tokens, plus ``damp * mean(diag H)`` on the diagonal
   (features that never fire get ``H_jj = 1`` first); ``U = chol(H^-1)``, upper triangular.
2. Columns are taken in blocks of ``blocksize``. For unstructured sparsity the mask of a block is
   chosen at its start from ``w^2 / U_jj^2`` over the whole ``rows x blocksize`` tile; for N:M it
   is chosen for every group of M columns from the weights as updated so far.
3. Each pruned weight's error ``e_j = w_j / U_jj`` is propagated to the columns not yet processed:
   ``w_k -= e_j U_jk`` (k > j), inside the block column by column and to later blocks at once.

Hot path without a per-column Python loop: within a group of columns whose mask is fixed, the
column-by-column recursion of the reference is, for each row r, a triangular system
``e_r A_r = m_r * w_r`` with ``A_r = diag(U) + triu(U, 1) * m_r`` (column j scaled by the mask);
all rows are solved at once with a batched triangular solve. This is the same arithmetic as the
reference loop, reordered; ``tests/test_sparsegpt.py`` checks it against a column-by-column
transcription in float64.

Two deliberate differences from the reference, both documented in the README:
- exactly ``floor(numel * ratio)`` weights of each tile are pruned (the reference's ``<=``
  threshold prunes one more when there are no ties);
- weights of features that never fire are pruned or kept by the criterion like any other
  (the reference zeroes them outright, which would push sparsity over the target).
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from sparsebench.errors import ConfigError
from sparsebench.masks import SparsityTarget, select_n_m, select_per_layer
from sparsebench.metrics import register_metric
from sparsebench.stats import HESSIAN, LayerStats

# Rows solved together are bounded so that the batched systems take at most this many elements.
_SOLVE_ELEMENTS = 1 << 26
_CPU_SUB_BLOCK = 16


@dataclass
class SparseGPTParams:
    blocksize: int = 128
    damp: float = 0.01

    def check(self, key: str) -> None:
        if self.blocksize < 1:
            raise ConfigError(f"{key}.blocksize={self.blocksize}: must be a positive integer")
        if not 0 <= self.damp < 1:
            raise ConfigError(f"{key}.damp={self.damp}: must be in [0, 1)")


def damped_hessian(hessian: Tensor, damp: float, damp_diagonal: float = 0.0) -> Tensor:
    """H with dead features' diagonal set to 1, plus ``damp * mean(diag H) + damp_diagonal * diag H`` on the diagonal.

    ``damp_diagonal`` is 0 for SparseGPT; HASSLE-free's reference exposes it (``--hess_diag``).
    """
    h = hessian.clone()
    diagonal = torch.diagonal(h)
    diagonal[diagonal == 0] = 1
    diagonal.add_(damp * diagonal.mean() + damp_diagonal * diagonal)
    return h


def inverse_factor_of_damped(damped: Tensor) -> Tensor:
    """Upper Cholesky factor U of H^-1 for an already damped (positive definite) H."""
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)


def inverse_hessian_factor(hessian: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1, with dead features set to 1."""
    return inverse_factor_of_damped(damped_hessian(hessian, damp))


def _solve_errors(weights: Tensor, factor: Tensor, mask: Tensor) -> Tensor:
    """Errors ``e`` with ``e_r A_r = m_r * w_r`` for every row, by one batched triangular solve."""
    rows, size = weights.shape
    diag = torch.diagonal(factor)
    strict_upper = torch.triu(factor, diagonal=1)
    maskf = mask.to(weights.dtype)
    errors = torch.empty_like(weights)
    chunk = max(1, _SOLVE_ELEMENTS // (size * size))
    for start in range(0, rows, chunk):
        stop = min(rows, start + chunk)
        system = strict_upper.unsqueeze(0) * maskf[start:stop].unsqueeze(1)
        system.diagonal(dim1=1, dim2=2).copy_(diag.expand(stop - start, size))
        rhs = (weights[start:stop] * maskf[start:stop]).unsqueeze(1)
        errors[start:stop] = torch.linalg.solve_triangular(system, rhs, upper=True, left=False).squeeze(1)
    return errors


def solve_fixed_mask_group(weights: Tensor, factor: Tensor, mask: Tensor, sub_block: int | None = None) -> tuple[Tensor, Tensor]:
    """OBS updates for columns whose mask is already chosen.

    ``weights`` [rows, g] as updated by all earlier columns, ``factor`` the [g, g] block of U,
    ``mask`` [rows, g] True where pruned. Returns (kept weights with pruned ones zeroed, errors
    ``e`` to propagate to later columns), as the reference's per-column loop computes them.
    ``sub_block`` splits the triangular systems into diagonal blocks of that many columns coupled
    by plain matmuls (same result; 4x faster on CPUs, while one batched solve is fastest on GPUs,
    see benchmarks/bench_sparsegpt_solve.py).
    """
    size = weights.shape[1]
    strict_upper = torch.triu(factor, diagonal=1)
    step = sub_block or size
    errors = torch.zeros_like(weights)
    for s0 in range(0, size, step):
        s1 = min(size, s0 + step)
        carried = weights[:, s0:s1] - errors[:, :s0] @ strict_upper[:s0, s0:s1]
        errors[:, s0:s1] = _solve_errors(carried, factor[s0:s1, s0:s1], mask[:, s0:s1])
    updated = weights - errors @ strict_upper
    return updated.masked_fill(mask, 0), errors


@register_metric("sparsegpt", SparseGPTParams, needs=frozenset({HESSIAN}), paper="arXiv 2301.00774", row_ratios=False)
def sparsegpt(
    weight: Tensor, stats: LayerStats, target: SparsityTarget, blocksize: int = 128, damp: float = 0.01
) -> Tensor:
    compute_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    factor = inverse_hessian_factor(stats.hessian.to(compute_dtype), damp)
    return sparsegpt_solve(weight.to(compute_dtype), factor, target, blocksize).to(weight.dtype)


def sparsegpt_solve(weight: Tensor, factor: Tensor, target: SparsityTarget, blocksize: int = 128) -> Tensor:
    """SparseGPT's pruned and updated weight for ``weight`` given U = ``factor`` (see the module docstring).

    ``weight`` is not modified; the result has its dtype, which should be that of ``factor``.
    """
    if isinstance(target.ratio, Tensor):
        raise ValueError("sparsegpt takes one ratio per layer, not per-row ratios")
    work = weight.clone()
    rows, cols = work.shape
    pattern = target.pattern
    sub_block = None if work.is_cuda else _CPU_SUB_BLOCK
    if pattern is not None and blocksize % pattern.m:
        raise ValueError(f"blocksize {blocksize} must be a multiple of M={pattern.m}")
    for start in range(0, cols, blocksize):
        stop = min(start + blocksize, cols)
        block = work[:, start:stop]
        block_factor = factor[start:stop, start:stop]
        scale = torch.diagonal(block_factor).square().unsqueeze(0)
        block_errors = torch.empty_like(block)
        group = pattern.m if pattern is not None else stop - start
        block_mask = None if pattern is not None else select_per_layer(block.square() / scale, float(target.ratio))
        for g0 in range(0, stop - start, group):
            g1 = min(g0 + group, stop - start)
            if pattern is not None:
                mask = select_n_m(block[:, g0:g1].square() / scale[:, g0:g1], pattern)
            else:
                mask = block_mask[:, g0:g1]
            kept, errors = solve_fixed_mask_group(block[:, g0:g1], block_factor[g0:g1, g0:g1], mask, sub_block)
            block[:, g1:] -= errors @ block_factor[g0:g1, g1:]
            block[:, g0:g1] = kept
            block_errors[:, g0:g1] = errors
        work[:, stop:] -= block_errors @ factor[start:stop, stop:]
    return work
