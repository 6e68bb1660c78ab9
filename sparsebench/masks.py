"""Mask selection: turn weight scores and target ratios into boolean masks (True = prune).

Every selector prunes the lowest-scoring weights of its comparison group:
- per row: ``floor(cols * ratio_r)`` weights of each output row r (Wanda's default group);
- per layer: ``floor(rows * cols * ratio)`` weights of the whole matrix (magnitude's default);
- N:M: ``n`` weights of every ``m`` consecutive inputs of each row (2:4, 4:8).
Ties are broken by position (stable sort), so results do not depend on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# ratio * count is computed in floating point; 0.29 * 100 = 28.999999999999996 must still prune 29.
_ROUNDING_SLACK = 1e-6


@dataclass(frozen=True)
class NMPattern:
    """Semi-structured sparsity: prune ``n`` of every ``m`` consecutive input weights of a row."""

    n: int
    m: int

    @property
    def ratio(self) -> float:
        return self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class SparsityTarget:
    """What one layer must reach: a ratio (one float, or one per output row) and an optional N:M pattern."""

    ratio: float | Tensor
    pattern: NMPattern | None = None

    def row_ratios(self, rows: int) -> Tensor | None:
        """Per-row ratios as a tensor, or None when the ratio is one float for the whole layer."""
        if isinstance(self.ratio, Tensor):
            if self.ratio.shape != (rows,):
                raise ValueError(f"per-row ratios have shape {tuple(self.ratio.shape)}, expected ({rows},)")
            return self.ratio
        return None


def parse_pattern(text: str) -> NMPattern | None:
    """``"unstructured"`` -> None; ``"2:4"`` -> NMPattern(2, 4). Raises ValueError on anything else."""
    if text == "unstructured":
        return None
    parts = text.split(":")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if 0 < n < m:
            return NMPattern(n, m)
    raise ValueError(f"{text!r} is not 'unstructured' or 'N:M' with 0 < N < M (e.g. 2:4, 4:8)")


def prune_count(total: int, ratio: float) -> int:
    """How many of ``total`` weights a ratio prunes: floor, as in the reference implementations."""
    return min(total, math.floor(total * ratio + _ROUNDING_SLACK))


def select_per_layer(scores: Tensor, ratio: float) -> Tensor:
    """Prune the ``floor(numel * ratio)`` lowest scores of the whole matrix."""
    flat = scores.flatten()
    count = prune_count(flat.numel(), ratio)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if count:
        order = torch.sort(flat, stable=True).indices
        mask[order[:count]] = True
    return mask.view_as(scores)


def prune_counts_per_row(ratio: float | Tensor, rows: int, cols: int, device) -> Tensor:
    """``floor(cols * ratio_r)`` for each row r, as a long tensor (one ratio, or one per row)."""
    if isinstance(ratio, Tensor):
        counts = torch.floor(ratio.to(torch.float64) * cols + _ROUNDING_SLACK).clamp_(0, cols)
        return counts.to(device=device, dtype=torch.long)
    return torch.full((rows,), prune_count(cols, ratio), device=device, dtype=torch.long)


def select_per_row(scores: Tensor, ratio: float | Tensor) -> Tensor:
    """Prune the ``floor(cols * ratio_r)`` lowest scores of each row r (one ratio, or one per row)."""
    rows, cols = scores.shape
    counts = prune_counts_per_row(ratio, rows, cols, scores.device)
    order = torch.sort(scores, dim=1, stable=True).indices
    ranks_pruned = torch.arange(cols, device=scores.device).unsqueeze(0) < counts.unsqueeze(1)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask.scatter_(1, order, ranks_pruned)
    return mask


_N_M_COMPARISONS = 1 << 28


def select_n_m(scores: Tensor, pattern: NMPattern) -> Tensor:
    """Prune the ``n`` lowest scores in every group of ``m`` consecutive columns of each row."""
    rows, cols = scores.shape
    if cols % pattern.m:
        raise ValueError(f"{pattern} sparsity needs the input size ({cols}) to be a multiple of {pattern.m}")
    groups = scores.reshape(rows, cols // pattern.m, pattern.m)
    if scores.is_cuda:  # a segmented sort of M elements is slow on GPUs: 9x slower at 2:4 on an H200
        return _n_m_by_ranks(groups, pattern).view(rows, cols)
    return _n_m_by_sort(groups, pattern).view(rows, cols)


def _n_m_by_sort(groups: Tensor, pattern: NMPattern) -> Tensor:
    """[rows, G, M] -> mask of the N lowest of each group, ties to the left (a stable sort)."""
    order = torch.sort(groups, dim=2, stable=True).indices[..., : pattern.n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, order, True)
    return mask


def _n_m_by_ranks(groups: Tensor, pattern: NMPattern) -> Tensor:
    """The same mask as ``_n_m_by_sort`` without sorting: column j's rank in its group counts the
    lower scores and the equal ones to its left; the N lowest ranks are pruned. Rows are taken in
    chunks so that the [rows, G, M, M] comparisons stay below ``_N_M_COMPARISONS`` elements."""
    rows, count, m = groups.shape
    left = torch.ones(m, m, dtype=torch.bool, device=groups.device).tril(diagonal=-1)  # [j, k]: k < j
    mask = torch.empty(groups.shape, dtype=torch.bool, device=groups.device)
    chunk = max(1, _N_M_COMPARISONS // (count * m * m))
    for start in range(0, rows, chunk):
        part = groups[start : start + chunk]
        mine, others = part.unsqueeze(-1), part.unsqueeze(-2)
        mask[start : start + chunk] = ((others < mine) | ((others == mine) & left)).sum(-1) < pattern.n
    return mask


def select_mask(scores: Tensor, target: SparsityTarget, comparison: str = "row") -> Tensor:
    """Choose the mask for one layer: N:M if the target has a pattern, else per row or per layer."""
    if target.pattern is not None:
        return select_n_m(scores, target.pattern)
    row_ratios = target.row_ratios(scores.shape[0])
    if row_ratios is not None:
        return select_per_row(scores, row_ratios)
    if comparison == "layer":
        return select_per_layer(scores, float(target.ratio))
    if comparison == "row":
        return select_per_row(scores, float(target.ratio))
    raise ValueError(f"comparison must be 'row' or 'layer', got {comparison!r}")
