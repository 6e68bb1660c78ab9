"""NeuroAL, neuron-alignment top-up (Cunegatti, Custode & Iacca, TMLR 2025, arXiv 2411.07066;
github eliacunegatti/NeuroAL: ``sparsity_distribution.py``, ``lib/neuroal.py``).

A top-up over any metric: it re-distributes the target sparsity S over blocks, then over the rows
of each layer, and picks its two hyper-parameters (the spreads lambda) by trial prunes alone
(forward passes on 8 calibration sequences, no gradients). For one candidate allocation the
misalignment is, over every linear l of every block (sequential trial, ``sparsebench.trials``),

    M = sum_l || a_l / sum(a_l) - a~_l / sum(a~_l) ||_2 / len(a_l)

where a_l = ||X_j||_2 per input feature j of linear l with its block dense and a~_l with its block
pruned at the candidate ratios (same inputs). The candidate with the least M wins (the first
listed one on ties, as the reference's ``list.index(min)``).

Block step. For each lambda in ``block_lambdas`` (reference: 0.01..0.10 by 0.01, 0.12, 0.15, 0.20,
0.25; 0.25 dropped when S >= 0.8; no lambda = 0), block densities are the ramp over blocks
v = 1..B min-max scaled to [0, 2 lambda], shifted to mean 1 - S, and given in decreasing order
(block 0 keeps the most weights): sparsity_b = S - lambda + 2 lambda b / (B - 1). Every linear of
block b gets sparsity_b.

Row step (skipped when the metric takes one ratio per layer, i.e. SparseGPT, as the reference
does). With the chosen block distribution, the alignment d = a - a~ of the chosen block trial is
routed to the layers whose *outputs* those input features are: each input group of a block takes
the alignment of the next input group (q,k,v <- o's input; o <- gate/up's input; gate,up <- down's
input; OPT/Phi out <- fc1, fc1 <- fc2), the block's last group takes the next block's first input,
and the last block keeps its block ratio on every row. Per layer, for each lambda in
``row_lambdas`` (reference: 0 and the block list with 0.25 kept at every S):

    n = (d - min d) / (max d - min d) * 2 lambda ;  n = n - (mean(n) - (1 - s_block)) ;  s_row = 1 - n

so rows whose downstream feature lost more activation norm are pruned less. A layer keeps its
block ratio on every row when sum(d) = 0 (reference), when max d = min d (the reference divides
by zero there), or when a layer of its group has a different number of rows than d has features
(grouped-query k/v, fused qkv: the reference keeps q, k, v at the block ratio for Mistral only and
would fail elsewhere). Rows are pruned with the reference's 'neuron' rounding: each row keeps
floor((1 - s_row) * cols) weights (at least one), so ratios are returned already rounded to whole
weights; the block step alone prunes floor(s * cols) per row, as the reference's 'row' mask.

Clipping. The reference clips every ratio to [0.01, 0.99], which changes the mean where a bound
binds (e.g. S = 0.8, block lambda 0.2 gives a last block at 1.0). With ``clip=keep_mean`` (default)
ratios are instead clip(x + t, 0.01, 0.99) with the shift t that restores the mean (the Euclidean
projection onto the bounded set with that mean); where no bound binds t = 0 and the ratios are the
reference's. ``clip=reference`` clips as the reference does (blocks: <= 0 -> 0.01, >= 1 -> 0.99;
rows: clip to [0.01, 0.99]).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sparsebench.allocators import Allocation, Allocator, PrunableLayer, Reads, register_allocator
from sparsebench.errors import ConfigError
from sparsebench.trials import BlockTrials, InputNorms

log = logging.getLogger(__name__)

REFERENCE_BLOCK_LAMBDAS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.12, 0.15, 0.2, 0.25)
REFERENCE_ROW_LAMBDAS = (0.0, *REFERENCE_BLOCK_LAMBDAS)
RATIO_BOUNDS = (0.01, 0.99)
STEPS = ("both", "block", "row")
CLIPS = ("keep_mean", "reference")


@dataclass
class NeuroALParams:
    step: str = "both"  # block | row | both (the paper's method)
    samples: int = 8  # trial prunes use the first `samples` calibration sequences
    block_lambdas: list[float] | None = None  # null: the reference's list (0.25 dropped at S >= 0.8)
    row_lambdas: list[float] | None = None  # null: the reference's list, from 0
    clip: str = "keep_mean"  # keep_mean | reference (see the module docstring)

    def check(self, key: str) -> None:
        if self.step not in STEPS:
            raise ConfigError(f"{key}.step={self.step!r}: allowed values are {', '.join(STEPS)}")
        if self.clip not in CLIPS:
            raise ConfigError(f"{key}.clip={self.clip!r}: allowed values are {', '.join(CLIPS)}")
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ConfigError(f"{key}.samples={self.samples!r}: must be a positive integer")
        for name in ("block_lambdas", "row_lambdas"):
            values = getattr(self, name)
            if values is None:
                continue
            if not values or not all(isinstance(v, (int, float)) and 0 <= v < 0.5 for v in values):
                raise ConfigError(f"{key}.{name}={values!r}: must be null or a non-empty list of numbers in [0, 0.5)")


def reference_block_lambdas(sparsity: float) -> list[float]:
    return [lam for lam in REFERENCE_BLOCK_LAMBDAS if not (sparsity >= 0.8 and lam == 0.25)]


def clip_keeping_mean(ratios: Tensor, mean: float, low: float = RATIO_BOUNDS[0], high: float = RATIO_BOUNDS[1]) -> Tensor:
    """clip(ratios + t, low, high) with the t that makes the mean ``mean``; ``ratios`` unchanged when inside the bounds."""
    if ratios.min() >= low and ratios.max() <= high:
        return ratios
    if not low <= mean <= high:
        raise ValueError(f"a mean of {mean} is outside the bounds [{low}, {high}]")
    below, above = low - float(ratios.max()), high - float(ratios.min())  # mean(clip(x + t)) rises from low to high
    for _ in range(64):  # bisection finds which entries sit at a bound ...
        shift = (below + above) / 2
        if float(torch.clamp(ratios + shift, low, high).mean()) < mean:
            below = shift
        else:
            above = shift
    shifted = ratios + (below + above) / 2
    at_low, at_high = shifted <= low, shifted >= high
    free = ~(at_low | at_high)
    if free.any():  # ... and the free entries take the exact shift
        shift = (mean * ratios.numel() - low * int(at_low.sum()) - high * int(at_high.sum()) - float(ratios[free].sum())) / int(free.sum())
        shifted = ratios + shift
    return torch.clamp(shifted, low, high)


def _bounded(ratios: Tensor, mean: float, clip: str, rows: bool) -> Tensor:
    if clip == "keep_mean":
        return clip_keeping_mean(ratios, mean)
    low, high = RATIO_BOUNDS
    if rows:  # np.clip(1 - n, 0.01, 0.99)
        return torch.clamp(ratios, low, high)
    # blocks: <= 0 -> 0.01, >= 1 -> 0.99 (values in (0, 0.01) or (0.99, 1) stay)
    return torch.where(ratios <= 0, low, torch.where(ratios >= 1, high, ratios))


def block_sparsities(num_blocks: int, sparsity: float, lam: float, clip: str = "keep_mean") -> Tensor:
    """The block ramp for one lambda: sparsity S - lambda at block 0 rising linearly to S + lambda (float64)."""
    if num_blocks == 1:
        return torch.tensor([sparsity], dtype=torch.float64)
    ramp = torch.arange(1, num_blocks + 1, dtype=torch.float64)
    density = (ramp - ramp.min()) * (1 / (ramp.max() - ramp.min()) * lam * 2)
    density = density - density.mean() + (1 - sparsity)
    density = density.flip(0)  # the reference sorts the densities in decreasing order
    return _bounded(1 - density, sparsity, clip, rows=False)


def row_sparsities(alignment: Tensor, block_sparsity: float, lam: float, clip: str = "keep_mean") -> Tensor:
    """Per-row sparsity of one layer from the alignment of the input its rows feed (float64)."""
    d = alignment.to(torch.float64)
    low, high = d.min(), d.max()
    if d.sum() == 0 or high == low:
        return torch.full_like(d, block_sparsity)
    density = (d - low) / (high - low) * lam * 2
    density = density - (density.mean() - (1 - block_sparsity))
    return _bounded(1 - density, block_sparsity, clip, rows=True)


def neuron_rounding(row_sparsity: Tensor, cols: int) -> Tensor:
    """Ratios that prune what the reference's 'neuron' mask prunes: each row keeps floor((1 - s) * cols) weights.

    At least one weight is kept (the reference would empty a row with fewer than 1 / (1 - s) columns,
    which cannot happen at s <= 0.99 with 100 columns or more).
    """
    kept = torch.floor((1 - row_sparsity.to(torch.float64)) * cols).clamp_(min=1)
    return (cols - kept) / cols


def misalignment(dense: Tensor, sparse: Tensor) -> float:
    """|| dense / sum(dense) - sparse / sum(sparse) ||_2 / len(dense): the distance of the L1-normalised profiles."""
    dense, sparse = dense.to(torch.float64), sparse.to(torch.float64)
    return float(torch.linalg.vector_norm(dense / dense.sum() - sparse / sparse.sum()) / dense.numel())


def total_misalignment(measured: list[list[InputNorms]]) -> float:
    """Summed over every linear (the reference sums per linear, so an input read by q, k and v counts three times)."""
    return sum(len(norms.layers) * misalignment(norms.dense, norms.sparse) for block in measured for norms in block)


def route_alignment(measured: list[list[InputNorms]]) -> dict[str, Tensor]:
    """For each linear, the alignment a - a~ of the input that consumes its outputs (none for the last block)."""
    routed = {}
    inputs = [norms for block in measured for norms in block]
    last_block_start = len(inputs) - len(measured[-1])
    for position, norms in enumerate(inputs[:last_block_start]):
        consumer = inputs[position + 1]
        for name in norms.layers:
            routed[name] = consumer.dense - consumer.sparse
    return routed


def row_allocation(
    layers: list[PrunableLayer], groups: list[tuple[str, ...]], block_ratio: dict[str, float], routed: dict[str, Tensor], lam: float, clip: str
) -> dict[str, Tensor]:
    """Per-row ratios of every layer for one row lambda, rounded as the reference's 'neuron' mask.

    ``groups``: the linears of each block input (a group is routed as one, so a group with a
    layer whose rows do not match its alignment keeps its block ratio everywhere).
    """
    by_name = {layer.name: layer for layer in layers}
    ratios = {}
    for group in groups:
        alignment = routed.get(group[0])
        fits = alignment is not None and all(by_name[name].rows == alignment.numel() for name in group)
        for name in group:
            layer = by_name[name]
            if fits:
                rows = row_sparsities(alignment, block_ratio[name], lam, clip)
            else:
                rows = torch.full((layer.rows,), block_ratio[name], dtype=torch.float64)
            ratios[name] = neuron_rounding(rows, layer.cols)
    return ratios


def _first_least(scores: list[float]) -> int:
    return scores.index(min(scores))


def neuroal(
    layers: list[PrunableLayer], sparsity: float, trials: BlockTrials, step: str = "both", samples: int = 8,
    block_lambdas: list[float] | None = None, row_lambdas: list[float] | None = None, clip: str = "keep_mean",
) -> Allocation:
    low, high = RATIO_BOUNDS
    if not low <= sparsity <= high:
        raise ConfigError(f"sparsity.ratio={sparsity}: NeuroAL's ratios lie in [{low}, {high}]; choose a target inside")
    if samples > trials.samples:
        raise ConfigError(f"allocator.samples={samples}: more than the {trials.samples} calibration sequences (calibration.nsamples)")
    trials = trials.first(samples)
    num_blocks = max(layer.block for layer in layers) + 1
    details: dict = {"step": step, "trial_samples": samples, "clip": clip}

    def run(ratios, label):
        measured = trials.run(ratios, desc=f"NeuroAL {label}")
        score = total_misalignment(measured)
        if not math.isfinite(score):
            raise ValueError(f"NeuroAL {label}: the misalignment is {score} (an input with zero activation norm?)")
        log.info("NeuroAL %s: misalignment %.6e", label, score)
        return measured, score

    def per_layer(block_ratios: Tensor) -> dict[str, float]:
        return {layer.name: float(block_ratios[layer.block]) for layer in layers}

    if step in ("block", "both"):
        candidates = list(block_lambdas) if block_lambdas is not None else reference_block_lambdas(sparsity)
        scores, best_measured, best_ratios = [], None, None
        for lam in candidates:
            block_ratios = block_sparsities(num_blocks, sparsity, lam, clip)
            measured, score = run(per_layer(block_ratios), f"block lambda={lam}")
            if not scores or score < min(scores):
                best_measured, best_ratios = measured, block_ratios
            scores.append(score)
        best = _first_least(scores)
        details["block_lambda"] = candidates[best]
        details["block_candidates"] = [{"lambda": lam, "misalignment": score} for lam, score in zip(candidates, scores)]
    else:  # the row step alone starts from uniform blocks (the reference's lambda = 0 ramp)
        best_ratios = torch.full((num_blocks,), sparsity, dtype=torch.float64)
        best_measured, _ = run(per_layer(best_ratios), "uniform blocks")
    details["block_step_ratios"] = [float(r) for r in best_ratios]
    block_ratio = per_layer(best_ratios)

    if step == "block":
        return Allocation(block_ratio, details)
    if not trials.metric_takes_row_ratios:
        details["row_step"] = f"skipped: metric {trials.metric.name!r} takes one ratio per layer (as the reference skips it for SparseGPT)"
        return Allocation(block_ratio, details)

    routed = route_alignment(best_measured)
    groups = [norms.layers for block in best_measured for norms in block]
    del best_measured
    candidates = list(row_lambdas) if row_lambdas is not None else list(REFERENCE_ROW_LAMBDAS)
    scores, chosen = [], None
    for lam in candidates:
        ratios = row_allocation(layers, groups, block_ratio, routed, lam, clip)
        _, score = run(ratios, f"row lambda={lam}")
        if not scores or score < min(scores):
            chosen = ratios
        scores.append(score)
    details["row_lambda"] = candidates[_first_least(scores)]
    details["row_candidates"] = [{"lambda": lam, "misalignment": score} for lam, score in zip(candidates, scores)]
    return Allocation(chosen, details)


@register_allocator
class NeuroAL(Allocator):
    name = "neuroal"
    Params = NeuroALParams
    paper = "arXiv 2411.07066 (TMLR 2025)"
    reads = Reads(trials=True)

    def plan(self, ctx) -> Allocation:
        return neuroal(ctx.layers, ctx.sparsity, ctx.trials(), **self.params)
