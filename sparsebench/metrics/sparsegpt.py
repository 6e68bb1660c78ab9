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
all rows are solved at once with a batched triangular solve (unstructured: one per block). For
N:M the mask changes every M columns, so the systems of every possible mask of a group (C(M, N)
of them: 6 for 2:4) are inverted once per block, and each group costs a sort, a gathered M x M
matmul per row and one rank-M update, a dozen small kernels instead of the reference's M column
steps. This is the same arithmetic as the reference loop, reordered; ``tests/test_metrics.py``
checks it against a column-by-column transcription in float64.

Device dispatch (``kernel``, the config key ``metric.kernel``): on a CUDA device the default
``triton`` runs each block's column loop as one Triton kernel (``_sparsegpt_triton``: every
program holds a tile of rows in registers and runs the reference's recursion column by column, N:M
masks chosen in the kernel), then one GEMM carries the block's errors to the later columns, as
the reference does; this is the reference's arithmetic in the reference's order, and the fast
path on GPUs (see docs/sparsegpt_kernel.md). On a CPU, and on CUDA with ``kernel=torch`` (kept to compare), the
torch path below runs. This is a choice by device, not a fallback: ``kernel=triton`` on CUDA
without the triton package is an error.

Layers that share one Hessian (q/k/v, gate/up) share its factor: ``sparsegpt`` keeps the factor
of the last Hessian it saw for as long as that Hessian tensor lives and is not modified.

Two deliberate differences from the reference, both documented in the README:
- exactly ``floor(numel * ratio)`` weights of each tile are pruned (the reference's ``<=``
  threshold prunes one more when there are no ties);
- weights of features that never fire are pruned or kept by the criterion like any other
  (the reference zeroes them outright, which would push sparsity over the target).
"""

import itertools
import weakref
from dataclasses import dataclass

import torch
from torch import Tensor

from sparsebench.errors import ConfigError
from sparsebench.masks import NMPattern, SparsityTarget, select_per_layer
from sparsebench.metrics import check_choice, register_metric
from sparsebench.stats import HESSIAN, LayerStats

# Rows solved together are bounded so that the batched systems take at most this many elements.
_SOLVE_ELEMENTS = 1 << 26
_CPU_SUB_BLOCK = 16
KERNELS = ("triton", "torch")
# How U is computed: "reference" as the reference does, in the solve's dtype (float32 for half and
# float32 weights); "float64": one Cholesky and a triangular inverse in float64, then rounded.
FACTORS = ("reference", "float64")


@dataclass
class SparseGPTParams:
    blocksize: int = 128
    damp: float = 0.01
    kernel: str = "triton"
    factor: str = "reference"

    def check(self, key: str) -> None:
        check_choice(f"{key}.kernel", self.kernel, KERNELS)
        check_choice(f"{key}.factor", self.factor, FACTORS)
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
    """Upper Cholesky factor U of H^-1 for an already damped (positive definite) H.

    Computed as the reference does (Cholesky, inverse, Cholesky), so that in float32 the factor
    is the reference's bit for bit. The one-Cholesky form (``inverse_factor_by_one_cholesky``)
    failed the float64-reference test on the GPU in float32 (cause not isolated) and is used only
    in float64 (``factor="float64"``; docs/sparsegpt_kernel.md).
    """
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)


def inverse_factor_by_one_cholesky(damped: Tensor) -> Tensor:
    """The same U from one Cholesky and one triangular inverse: with J the order reversal and
    ``J H J = L L^T``, ``H^-1 = (J L^-T J)(J L^-1 J)`` and ``J L^-1 J`` is upper triangular with a
    positive diagonal, so it is U (the Cholesky factor is unique). A third of the reference's
    arithmetic; used in float64 (``factor=float64``), where its rounding is far below float32's."""
    lower = torch.linalg.cholesky(torch.flip(damped, (0, 1)))
    return torch.flip(lower_triangular_inverse(lower), (0, 1))


def lower_triangular_inverse(lower: Tensor, leaf: int = 1024) -> Tensor:
    """L^-1 of a lower-triangular L by halves: ``[[A, 0], [B, C]]^-1 = [[A^-1, 0], [-C^-1 B A^-1, C^-1]]``;
    triangular solves against the identity for diagonal blocks of at most ``leaf``."""
    size = lower.shape[0]
    if size <= leaf:
        return torch.linalg.solve_triangular(lower, torch.eye(size, dtype=lower.dtype, device=lower.device), upper=False)
    half = size // 2
    inverse = torch.zeros_like(lower)
    inverse[:half, :half] = lower_triangular_inverse(lower[:half, :half], leaf)
    inverse[half:, half:] = lower_triangular_inverse(lower[half:, half:], leaf)
    inverse[half:, :half] = -(inverse[half:, half:] @ lower[half:, :half]) @ inverse[:half, :half]
    return inverse


def inverse_hessian_factor(hessian: Tensor, damp: float, factor: str = "reference") -> Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) * I)^-1, with dead features set to 1.

    ``factor="reference"``: three factorisations in ``hessian``'s dtype, as the reference.
    ``factor="float64"``: ``inverse_factor_by_one_cholesky`` in float64, returned in ``hessian``'s
    dtype: closer to the exact factor than the reference's float32 one, and on GPUs with full-rate
    float64 (A100, H100, H200) faster (benchmarks/bench_sparsegpt_kernel.py times both); on GPUs
    with 1/32-1/64-rate float64 (most consumer and L-series cards) it is slow.
    """
    if factor == "float64":
        return inverse_factor_by_one_cholesky(damped_hessian(hessian.to(torch.float64), damp)).to(hessian.dtype)
    if factor != "reference":
        raise ValueError(f"factor={factor!r}: allowed values are {', '.join(FACTORS)}")
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


def obs_saliency(weight: Tensor, hessian: Tensor, damp: float = 0.01) -> Tensor:
    """The OBS saliency of the dense weights, W_ij^2 / [U]_jj^2 (arXiv 2301.00774, eq. 3 with U = chol(H^-1));
    weights of features that never fire: 0. What DSnoT's references take as SparseGPT's initial metric."""
    factor = inverse_hessian_factor(hessian.float(), damp)
    w = weight.float().masked_fill((torch.diagonal(hessian) == 0).unsqueeze(0), 0.0)
    return w.square() / torch.diagonal(factor).square().unsqueeze(0)


def _saliency(weight: Tensor, stats: LayerStats, damp: float = 0.01, **_solver_keys) -> Tensor:
    return obs_saliency(weight, stats.hessian, damp)


@register_metric("sparsegpt", SparseGPTParams, needs=frozenset({HESSIAN}), paper="arXiv 2301.00774", row_ratios=False, saliency=_saliency)
def sparsegpt(
    weight: Tensor, stats: LayerStats, target: SparsityTarget, blocksize: int = 128, damp: float = 0.01, kernel: str = "triton",
    factor: str = "reference",
) -> Tensor:
    compute_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    factor = _shared_factor(stats.hessian, compute_dtype, damp, factor)
    return sparsegpt_solve(weight.to(compute_dtype), factor, target, blocksize, kernel=kernel).to(weight.dtype)


# (weak reference to the Hessian, its version counter, dtype, damp) -> factor; one entry
_FACTOR_CACHE: dict = {}


def _shared_factor(hessian: Tensor, dtype: torch.dtype, damp: float, method: str = "reference") -> Tensor:
    """``inverse_hessian_factor`` of ``hessian``, computed once for the layers that share it.

    The entry is dropped when the Hessian tensor is freed (so it holds no memory past the block)
    and not used if the tensor was modified in place since (its version counter moved). Tensors
    made under ``torch.inference_mode`` (the runner's) have no version counter: their statistics
    are final before any metric reads them, and a caller that changes one in place between two
    layers must pass a new tensor.
    """
    version = None if hessian.is_inference() else hessian._version
    entry = _FACTOR_CACHE.get("last")
    if entry is not None and entry[0]() is hessian and entry[1:4] == (version, dtype, (damp, method)):
        return entry[4]
    _FACTOR_CACHE.clear()
    factor = inverse_hessian_factor(hessian.to(dtype), damp, method)
    _FACTOR_CACHE["last"] = (weakref.ref(hessian, lambda _: _FACTOR_CACHE.clear()), version, dtype, (damp, method), factor)
    return factor


def sparsegpt_solve(
    weight: Tensor, factor: Tensor, target: SparsityTarget, blocksize: int = 128, cuda_graphs: bool = True, kernel: str = "triton"
) -> Tensor:
    """SparseGPT's pruned and updated weight for ``weight`` given U = ``factor`` (see the module docstring).

    ``weight`` is not modified; the result has its dtype, which should be that of ``factor``.
    ``kernel``: ``triton`` runs the Triton kernel on CUDA tensors (the torch path on CPU tensors),
    ``torch`` always the torch path. ``cuda_graphs``: in the torch path, replay N:M group loops as
    CUDA graphs on a GPU (False runs them eagerly).
    """
    if isinstance(target.ratio, Tensor):
        raise ValueError("sparsegpt takes one ratio per layer, not per-row ratios")
    if kernel not in KERNELS:
        raise ValueError(f"kernel={kernel!r}: allowed values are {', '.join(KERNELS)}")
    rows, cols = weight.shape
    pattern = target.pattern
    if pattern is not None and blocksize % pattern.m:
        raise ValueError(f"blocksize {blocksize} must be a multiple of M={pattern.m}")
    if pattern is not None and cols % pattern.m:
        raise ValueError(f"{pattern} sparsity needs the input size ({cols}) to be a multiple of {pattern.m}")
    if kernel == "triton" and weight.is_cuda:
        return _triton_solve(weight, factor, target, blocksize)
    work = weight.clone()
    sub_block = None if work.is_cuda else _CPU_SUB_BLOCK
    patterns = None if pattern is None else NMPatternTable(pattern, work.device)
    for start in range(0, cols, blocksize):
        stop = min(start + blocksize, cols)
        block = work[:, start:stop]
        block_factor = factor[start:stop, start:stop]
        if patterns is not None:
            block_errors = _solve_n_m_block(block, block_factor, patterns, cuda_graphs)
        else:
            scale = torch.diagonal(block_factor).square().unsqueeze(0)
            block_mask = select_per_layer(block.square() / scale, float(target.ratio))
            kept, block_errors = solve_fixed_mask_group(block, block_factor, block_mask, sub_block)
            block.copy_(kept)
        work[:, stop:] -= block_errors @ factor[start:stop, stop:]
    return work


def _triton_solve(weight: Tensor, factor: Tensor, target: SparsityTarget, blocksize: int) -> Tensor:
    """``sparsegpt_solve`` with each block's column loop in the Triton kernel (module docstring)."""
    try:
        from sparsebench.metrics._sparsegpt_triton import obs_block
    except ImportError as error:
        raise ImportError(
            f"metric.kernel=triton on a CUDA device needs the triton package ({error}); "
            "install it (pip install 'sparsebench[triton]') or set metric.kernel=torch"
        ) from error
    work = weight.contiguous().clone()
    factor = factor.contiguous()
    rows, cols = work.shape
    pattern = target.pattern
    errors = torch.empty(rows, min(blocksize, cols), dtype=work.dtype, device=work.device)
    for start in range(0, cols, blocksize):
        stop = min(start + blocksize, cols)
        block = work[:, start:stop]
        block_factor = factor[start:stop, start:stop]
        block_errors = errors[:, : stop - start]
        if pattern is None:
            scale = torch.diagonal(block_factor).square().unsqueeze(0)
            obs_block(block, block_factor, block_errors, mask=select_per_layer(block.square() / scale, float(target.ratio)))
        else:
            obs_block(block, block_factor, block_errors, n=pattern.n, m=pattern.m)
        if stop < cols:
            work[:, stop:].addmm_(block_errors, factor[start:stop, stop:], alpha=-1)
    return work


class NMPatternTable:
    """Every way to prune N of M columns: ``masks`` [P, M] (P = C(M, N), lexicographic) and
    ``index_of_code`` mapping a mask's bit code (sum of 2^column) to its row in ``masks``."""

    def __init__(self, pattern: NMPattern, device: torch.device):
        combos = list(itertools.combinations(range(pattern.m), pattern.n))
        self.pattern = pattern
        self.masks = torch.zeros(len(combos), pattern.m, dtype=torch.bool)
        self.index_of_code = torch.full((1 << pattern.m,), -1, dtype=torch.long)
        for index, combo in enumerate(combos):
            self.masks[index, list(combo)] = True
            self.index_of_code[sum(1 << column for column in combo)] = index
        self.masks, self.index_of_code = self.masks.to(device), self.index_of_code.to(device)
        self.powers = (1 << torch.arange(pattern.m)).to(device)

    def index_of(self, pruned_columns: Tensor) -> Tensor:
        """Row of ``masks`` for each row of ``pruned_columns`` [rows, N] (column indices in 0..M-1)."""
        codes = torch.index_select(self.powers, 0, pruned_columns.flatten()).view_as(pruned_columns).sum(1)
        return torch.index_select(self.index_of_code, 0, codes)


def _masked_inverses(block_factor: Tensor, patterns: NMPatternTable) -> Tensor:
    """``B[g, p] = diag(m_p) A_{g,p}^-1`` for every group g of M columns and pattern p, with
    ``A = diag(U_g) + triu(U_g, 1) * m_p`` (the fixed-mask system of ``_solve_errors``), so that a
    row's errors in group g are ``w @ B[g, p]``: one small batched matmul instead of a triangular
    solve per group. Shape [G, P, M, M]."""
    m = patterns.pattern.m
    groups = block_factor.shape[0] // m
    index = torch.arange(groups, device=block_factor.device)
    diagonal_blocks = block_factor.reshape(groups, m, groups, m)[index, :, index, :]  # [G, M, M]
    masks = patterns.masks.to(block_factor.dtype)  # [P, M]
    systems = torch.triu(diagonal_blocks, diagonal=1).unsqueeze(1) * masks[None, :, None, :]
    systems.diagonal(dim1=2, dim2=3).copy_(torch.diagonal(diagonal_blocks, dim1=1, dim2=2).unsqueeze(1).expand_as(systems.diagonal(dim1=2, dim2=3)))
    identity = torch.eye(m, dtype=block_factor.dtype, device=block_factor.device).expand_as(systems)
    inverses = torch.linalg.solve_triangular(systems, identity, upper=True)
    return masks[None, :, :, None] * inverses


def _solve_n_m_block(block: Tensor, block_factor: Tensor, patterns: NMPatternTable, cuda_graphs: bool = True) -> Tensor:
    """SparseGPT's N:M step over one block, in place; returns the block's errors for later blocks.

    For each group of M columns, in order: the mask prunes the N lowest ``w^2 / U_jj^2`` of the
    weights as updated so far (a stable sort, as ``select_n_m``), the errors are ``w @ B[g, p]``
    (``_masked_inverses``), and one rank-M update carries them to the group's kept columns and to
    the block's later columns (the pruned ones are then set to exactly 0).

    On a GPU the group loop (a dozen tiny kernels per group, so launch-bound) is captured once per
    block shape as a CUDA graph and replayed: 2-5.5x faster on an H200 (benchmarks/bench_sparsegpt_nm.py).
    The arithmetic is the same; cuBLAS may choose other algorithms under capture, so the result can
    differ from the eager loop's by float32 rounding (tests/test_gpu.py bounds it).
    """
    inverses = _masked_inverses(block_factor, patterns)
    if block.is_cuda and cuda_graphs:
        return _graphed_group_loop(block, block_factor, inverses, patterns)
    errors = torch.empty_like(block)
    _group_loop(block, block_factor, inverses, patterns, errors)
    return errors


_GRAPHS: dict = {}


class _GraphedGroupLoop:
    """``_group_loop`` captured as a CUDA graph on static buffers of one block shape."""

    def __init__(self, rows: int, size: int, patterns: NMPatternTable, dtype: torch.dtype, device: torch.device):
        groups, count, m = size // patterns.pattern.m, patterns.masks.shape[0], patterns.pattern.m
        self.patterns = patterns  # the graph reads its tensors: keep them alive
        self.block = torch.zeros(rows, size, dtype=dtype, device=device)
        self.factor = torch.eye(size, dtype=dtype, device=device)
        self.inverses = torch.zeros(groups, count, m, m, dtype=dtype, device=device)
        self.errors = torch.zeros(rows, size, dtype=dtype, device=device)
        with torch.cuda.device(device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graphs asks
                _group_loop(self.block, self.factor, self.inverses, patterns, self.errors)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                _group_loop(self.block, self.factor, self.inverses, patterns, self.errors)

    def __call__(self, block: Tensor, block_factor: Tensor, inverses: Tensor) -> Tensor:
        self.block.copy_(block)
        self.factor.copy_(block_factor)
        self.inverses.copy_(inverses)
        self.graph.replay()
        block.copy_(self.block)
        return self.errors.clone()


def _graphed_group_loop(block: Tensor, block_factor: Tensor, inverses: Tensor, patterns: NMPatternTable) -> Tensor:
    key = (*block.shape, patterns.pattern.n, patterns.pattern.m, block.dtype, block.device)
    if key not in _GRAPHS:
        _GRAPHS[key] = _GraphedGroupLoop(block.shape[0], block.shape[1], patterns, block.dtype, block.device)
    return _GRAPHS[key](block, block_factor, inverses)


def _group_loop(block: Tensor, block_factor: Tensor, inverses: Tensor, patterns: NMPatternTable, errors: Tensor) -> None:
    """The groups of one block in order (see ``_solve_n_m_block``); fills ``errors``, updates ``block``."""
    m, n = patterns.pattern.m, patterns.pattern.n
    scale = torch.diagonal(block_factor).square()
    for group, c0 in enumerate(range(0, block.shape[1], m)):
        c1 = c0 + m
        weights = block[:, c0:c1]
        # the N lowest by a stable sort, as select_n_m's CPU path; the indices pick the pattern's inverses
        pruned = torch.sort(weights.square() / scale[c0:c1], dim=1, stable=True).indices[:, :n]
        chosen = patterns.index_of(pruned)
        group_errors = torch.bmm(weights.unsqueeze(1), torch.index_select(inverses[group], 0, chosen)).squeeze(1)
        block[:, c0:].addmm_(group_errors, block_factor[c0:c1, c0:], alpha=-1)
        block[:, c0:c1].masked_fill_(torch.index_select(patterns.masks, 0, chosen), 0)
        errors[:, c0:c1] = group_errors
