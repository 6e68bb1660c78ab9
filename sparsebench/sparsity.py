"""Achieved sparsity, measured on the weights after pruning, and its check against the target.

A layer passes when its share of zero weights is within rounding of its target: each comparison
group (row, tile or layer) prunes ``floor(count * ratio)`` weights, so at most one weight per
row or per column is missing, and weights that were already zero in the dense model (0.03 % of
SmolLM2's) may be kept and still count as zeros.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from sparsebench.errors import SparsityMismatchError


@dataclass
class LayerSparsity:
    name: str
    numel: int
    rows: int
    cols: int
    target: float  # mean over rows for row-wise targets
    dense_zeros: int
    zeros: int = -1

    @property
    def achieved(self) -> float:
        return self.zeros / self.numel

    @property
    def tolerance(self) -> float:
        return (self.rows + self.cols + self.dense_zeros) / self.numel

    def as_dict(self) -> dict:
        record = asdict(self)
        record["achieved"] = self.achieved
        return record


def target_mean(ratio: float | Tensor) -> float:
    return float(ratio.float().mean()) if isinstance(ratio, Tensor) else float(ratio)


def count_zeros(weight: Tensor) -> int:
    return int((weight == 0).sum())


def summarize(layers: list[LayerSparsity], total_parameters: int) -> dict:
    numel = sum(layer.numel for layer in layers)
    zeros = sum(layer.zeros for layer in layers)
    target = sum(layer.target * layer.numel for layer in layers) / numel if numel else 0.0
    return {
        "target": target,
        "achieved": zeros / numel if numel else 0.0,
        "achieved_of_all_parameters": zeros / total_parameters if total_parameters else 0.0,
        "prunable_parameters": numel,
        "zeros": zeros,
        "per_layer": {layer.name: layer.as_dict() for layer in layers},
    }


def check(layers: list[LayerSparsity]) -> None:
    """Raise if any layer's achieved sparsity is off its target by more than rounding."""
    bad = [layer for layer in layers if abs(layer.achieved - layer.target) > layer.tolerance]
    if bad:
        worst = max(bad, key=lambda layer: abs(layer.achieved - layer.target))
        raise SparsityMismatchError(
            f"{len(bad)} layer(s) missed their target sparsity; worst: {worst.name} achieved "
            f"{worst.achieved:.6f} for target {worst.target:.6f} (tolerance {worst.tolerance:.6f})"
        )


def measure(zeros: dict[str, int], shapes: dict[str, tuple[int, int]], total_parameters: int) -> dict:
    """The share of zero weights of linears that this case did not prune (``metric=none``, e.g. a pruned
    model loaded from an export): measured on the loaded weights, checked against no target.

    ``zeros`` and ``shapes``: per linear (``<block>.<linear>``), its zero count and ``(rows, cols)``.
    """
    per_layer = {
        name: {"numel": rows * cols, "rows": rows, "cols": cols, "zeros": zeros[name], "achieved": zeros[name] / (rows * cols)}
        for name, (rows, cols) in shapes.items()
    }
    numel = sum(layer["numel"] for layer in per_layer.values())
    total_zeros = sum(layer["zeros"] for layer in per_layer.values())
    return {
        "achieved": total_zeros / numel if numel else 0.0,
        "achieved_of_all_parameters": total_zeros / total_parameters if total_parameters else 0.0,
        "prunable_parameters": numel,
        "zeros": total_zeros,
        "checked_against_target": False,
        "per_layer": per_layer,
    }
