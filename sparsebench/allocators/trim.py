"""TRIM, Targeted Row-wise Iterative Metric-driven pruning (arXiv 2505.16743; github flobk/TRIM at
effcd518: ``lib/trim.py``, ``lib/prune.py`` ``prune_wanda`` with ``trim=True``).

TRIM keeps a layer-wise allocator's ratio s_L for each linear (``layerwise=uniform``, ``owl`` or
``alpha``)
and, at prune time, redistributes it over the linear's output rows. With X the linear's inputs at
the last token of each calibration sequence ([cols, sequences]; from the block's statistics
forward, i.e. the outputs of the already pruned previous blocks), the metric's per-row ascending
order of scores, and W(s) the weight with row r's floor(cols * s_r) lowest-scoring weights zeroed
(s_r < 0 prunes nothing):

    Y = W X,   Y^(s) = W(s) X
    Q(s)   = cos(vec Y, vec Y^(s))                   (layer quality, float64)
    q_r(s) = cos(Y_r, Y^(s)_r)                       (row quality over the sequences)
    cos(a, b) = clamp(<a / (|a| + 1e-8), b / (|b| + 1e-8)>, -1, 1)

For one learning rate lr, from s = s_L 1 and for ``iterations`` steps:

    d = (q - min q) / (max q - min q + 1e-6) * 2 lr ;  d = d - mean(d)
    s = clip(s + d, 0, 0.95) ;  s = s - mean(s) + s_L

keeping the iterate with the highest Q (strictly higher than the best so far, starting from the
uniform s_L 1). With lr > 0 the best preserved rows are pruned more and the worst preserved less,
which narrows the spread of q_r. The learning rates 0.01, 0.02, 0.04, 0.08, 0.12, 0.16 are tried
in order; the sweep stops at the first lr whose best Q is not above the best Q of the lrs before
it. If no lr beat the uniform Q, the negative lrs -0.01, -0.02, -0.04 are swept the same way
(``negative_learning_rates: []`` forbids this, as the reference's ``--forbid_neg_lr``). The
chosen s is clipped to [0, 0.95] and re-centred to mean s_L once more, and row r prunes
floor(cols * s_r) weights, counted as the reference does (float32 s, truncation, none if
negative, all if above 1). The ratios returned are these counts over cols, so the mask is the
reference's exactly and the layer's realised ratio is s_L minus at most 1 / cols (plus the
small excess where a re-centred s_r fell below 0).

Every other detail is the reference's defaults (``main.py``): ``qmetric=cosim_flat``,
``qmetric_dimwise=cosim``, 10 iterations, negative lrs allowed, no ``--input_recalc``. The
reference calibrates on 256 C4 sequences; here X has one column per calibration sequence
(``calibration.nsamples``). Under ``layerwise=owl`` the block ratios are OWL's
(``sparsebench.allocators.owl``) with TRIM's defaults M = 7, lambda = 0.05 (its ``--Hyper_m``,
``--Lamda``; its scripts use per-model values, e.g. 5 and 0.12 for Qwen2.5-3B). Under
``layerwise=alpha`` they are AlphaPruning's (``sparsebench.allocators.alpha``, TRIM's
``wanda_alpha``: alpha_peak, block-wise mapping) with ``epsilon`` null = 0.2 (TRIM's argparse
default is 0.3, its Qwen2.5-3B script 0.1; 0.2 is AlphaPruning's own Wanda setting, and 0.3 puts
ratios above 1 at 80 %). TRIM needs the
metric's ordering, so it composes with the score-based metrics (magnitude, Wanda, RIA,
SwiftPrune), each row ordered by the metric's scores; metrics that take one ratio per layer
(SparseGPT, HASSLE-free) and N:M patterns are rejected (the reference ignores N:M under TRIM).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from sparsebench.allocators import Allocation, Allocator, LinearToRefine, Refined, register_allocator
from sparsebench.allocators._layerwise import base_reads, check_base, layerwise_plan, require_metric
from sparsebench.errors import ConfigError
from sparsebench.stats import LAST_TOKEN_INPUTS, LayerStats

REFERENCE_LEARNING_RATES = [0.01, 0.02, 0.04, 0.08, 0.12, 0.16]
REFERENCE_NEGATIVE_LEARNING_RATES = [-0.01, -0.02, -0.04]
ROW_RATIO_CAP = 0.95  # the reference's "don't allow sparsity > 95% for stability"
OWL_DEFAULTS = {"m": 7.0, "lam": 0.05}  # the TRIM reference's --Hyper_m and --Lamda
_EPS = 1e-8
_SPREAD_EPS = 1e-6


@dataclass
class TRIMParams:
    layerwise: str = "uniform"  # uniform | owl | alpha: the layer ratios TRIM refines per row
    iterations: int = 10
    learning_rates: list[float] = field(default_factory=lambda: list(REFERENCE_LEARNING_RATES))
    negative_learning_rates: list[float] = field(default_factory=lambda: list(REFERENCE_NEGATIVE_LEARNING_RATES))  # []: none
    m: float | None = None  # layerwise=owl only; null: 7
    lam: float | None = None  # layerwise=owl only; null: 0.05
    epsilon: float | None = None  # layerwise=alpha only; null: 0.2

    def check(self, key: str) -> None:
        check_base(key, self.layerwise, OWL_DEFAULTS, self.m, self.lam, self.epsilon)
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise ConfigError(f"{key}.iterations={self.iterations!r}: must be an integer >= 1")
        rates = self.learning_rates
        if not rates or not all(isinstance(lr, (int, float)) and lr > 0 for lr in rates):
            raise ConfigError(f"{key}.learning_rates={rates!r}: must be a non-empty list of numbers > 0")
        negative = self.negative_learning_rates
        if negative is None or not all(isinstance(lr, (int, float)) and lr < 0 for lr in negative):
            raise ConfigError(f"{key}.negative_learning_rates={negative!r}: must be a list of numbers < 0 ([] forbids them)")


# ---------------------------------------------------------------- the row refinement of one linear


def cosine_flat(a: Tensor, b: Tensor) -> float:
    """Q: the cosine of the flattened outputs, in float64."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    return float(torch.clamp(torch.sum(a / (torch.norm(a) + _EPS) * (b / (torch.norm(b) + _EPS))), -1.0, 1.0))


def cosine_rows(a: Tensor, b: Tensor) -> Tensor:
    """q_r: the cosine of each output row over the samples, in float64."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    a_unit = a / (torch.norm(a, dim=1, keepdim=True) + _EPS)
    b_unit = b / (torch.norm(b, dim=1, keepdim=True) + _EPS)
    return torch.clamp(torch.sum(a_unit * b_unit, dim=1), -1.0, 1.0)


def row_prune_counts(ratios: Tensor, cols: int) -> Tensor:
    """floor(cols * s_r) as the reference counts it: a float32 product truncated (negative: none pruned)."""
    return (cols * ratios.to(torch.float32)).long().clamp(0, cols)


def prune_rows(weight: Tensor, order: Tensor, ratios: Tensor) -> Tensor:
    """W(s): each row's ``row_prune_counts`` first weights in ``order`` (ascending scores) zeroed."""
    rows, cols = weight.shape
    counts = row_prune_counts(ratios, cols).to(weight.device)
    keep_rank = torch.arange(cols, device=weight.device).unsqueeze(0) >= counts.unsqueeze(1)
    keep = torch.empty_like(keep_rank).scatter_(1, order, keep_rank)
    return weight * keep


@dataclass
class IterationResult:
    ratios: Tensor  # float32, as the reference's
    quality: float  # Q of ``ratios``
    iteration: int  # 0: the uniform start; k: after k updates


def iterate_row_ratios(weight: Tensor, inputs: Tensor, order: Tensor, ratio: float, learning_rate: float, iterations: int) -> IterationResult:
    """The reference's ``get_sparsities_iterative``: ``iterations`` updates of s, the best Q kept."""
    dense = weight @ inputs
    s = torch.full((weight.shape[0],), ratio, dtype=torch.float32, device=weight.device)
    pruned = prune_rows(weight, order, s) @ inputs
    best = IterationResult(s.clone(), cosine_flat(dense, pruned), 0)
    for step in range(1, iterations + 1):
        q = cosine_rows(dense, pruned)
        d = (q - q.min()) / (q.max() - q.min() + _SPREAD_EPS) * (learning_rate * 2)
        d = d - d.mean()
        s = (s + d).to(torch.float32)
        s = clip_and_recentre(s, ratio)
        pruned = prune_rows(weight, order, s) @ inputs
        quality = cosine_flat(dense, pruned)
        if quality > best.quality:
            best = IterationResult(s.clone(), quality, step)
    return best


def clip_and_recentre(s: Tensor, ratio: float) -> Tensor:
    """clip(s, 0, 0.95) shifted back to mean ``ratio`` (so values may leave [0, 0.95] slightly)."""
    s = s.clamp(0, ROW_RATIO_CAP)
    return s - s.mean() + ratio


def _sweep(weight, inputs, order, ratio, iterations, learning_rates, best_quality) -> tuple[IterationResult | None, float | None, list]:
    """Try ``learning_rates`` in order until one does not beat the lrs before it; the best above ``best_quality``."""
    chosen, chosen_lr, tried, best_this_sweep = None, None, [], float("-inf")
    for lr in learning_rates:
        result = iterate_row_ratios(weight, inputs, order, ratio, lr, iterations)
        tried.append({"learning_rate": lr, "quality": result.quality, "iteration": result.iteration})
        if result.quality > best_quality:
            chosen, chosen_lr, best_quality = result, lr, result.quality
        if result.quality > best_this_sweep:
            best_this_sweep = result.quality
        else:
            break
    return chosen, chosen_lr, tried


def trim_row_ratios(
    weight: Tensor, inputs: Tensor, order: Tensor, ratio: float, iterations: int = 10,
    learning_rates=tuple(REFERENCE_LEARNING_RATES), negative_learning_rates=tuple(REFERENCE_NEGATIVE_LEARNING_RATES),
) -> tuple[Tensor, dict]:
    """Per-row ratios of one linear (counts / cols, float64) and what was chosen.

    ``weight`` [rows, cols], ``inputs`` [cols, samples], ``order`` [rows, cols] each row's column
    indices by ascending score (stable sort), ``ratio`` the layer's s_L.
    """
    weight, inputs = weight.float(), inputs.float().to(weight.device)
    dense = weight @ inputs
    uniform = torch.full((weight.shape[0],), ratio, dtype=torch.float32, device=weight.device)
    uniform_output = prune_rows(weight, order, uniform) @ inputs
    baseline = cosine_flat(dense, uniform_output)
    chosen, lr, tried = _sweep(weight, inputs, order, ratio, iterations, learning_rates, baseline)
    if chosen is None and negative_learning_rates:
        chosen, lr, negative = _sweep(weight, inputs, order, ratio, iterations, negative_learning_rates, baseline)
        tried += negative
    best = chosen or IterationResult(uniform, baseline, 0)
    final = clip_and_recentre(best.ratios, ratio)
    counts = row_prune_counts(final, weight.shape[1])
    details = {
        "learning_rate": lr,  # None: no lr beat the uniform split, which is kept
        "iteration": best.iteration,
        "quality_uniform": baseline,
        "quality": best.quality,
        "row_quality_var_uniform": float(cosine_rows(dense, uniform_output).var()),
        "row_quality_var": float(cosine_rows(dense, prune_rows(weight, order, best.ratios) @ inputs).var()),
        "sweep": tried,
    }
    return counts.to(torch.float64) / weight.shape[1], details


def refine_layer(weight: Tensor, scores: Tensor, stats: LayerStats, ratio, iterations: int = 10, learning_rates=None,
                 negative_learning_rates=None) -> tuple[Tensor, dict]:
    """One linear's per-row ratios around its layer-wise ratio ``ratio`` (null lists: the reference's)."""
    if isinstance(ratio, Tensor):
        raise ValueError("TRIM refines one ratio per layer; the layer-wise allocator gave per-row ratios")
    order = torch.sort(scores, dim=1, stable=True).indices
    return trim_row_ratios(
        weight, stats.last_token_inputs.T, order, float(ratio), iterations,
        REFERENCE_LEARNING_RATES if learning_rates is None else learning_rates,
        REFERENCE_NEGATIVE_LEARNING_RATES if negative_learning_rates is None else negative_learning_rates,
    )


# ---------------------------------------------------------------- the layer-wise part and the registration


class _RowRefiner:
    """TRIM's step at prune time: each linear's per-row ratios from the metric's score order."""

    needs = frozenset({LAST_TOKEN_INPUTS})

    def __init__(self, scores, metric_params: dict, iterations: int, learning_rates, negative_learning_rates):
        self.scores, self.metric_params = scores, metric_params
        self.keys = {"iterations": iterations, "learning_rates": learning_rates, "negative_learning_rates": negative_learning_rates}

    def __call__(self, linear: LinearToRefine) -> Refined:
        scores = self.scores(linear.weight, linear.stats, **self.metric_params)
        ratios, details = refine_layer(linear.weight, scores, linear.stats, linear.ratio, **self.keys)
        return Refined(ratios, details)


@register_allocator
class TRIM(Allocator):
    """The layer-wise ratios TRIM starts from (``plan``); the rows are refined at prune time (``refiner``)."""

    name = "trim"
    Params = TRIMParams
    paper = "arXiv 2505.16743"

    def __init__(self, params, metric, metric_params):
        super().__init__(params, metric, metric_params)
        require_metric(
            "trim", metric, lambda m: m.scores is not None and m.row_ratios,
            "TRIM needs per-row ratios and the metric's score order within each row; metrics that have both",
        )
        self.reads = base_reads(params["layerwise"], _RowRefiner.needs)

    def plan(self, ctx) -> Allocation:
        base = layerwise_plan(ctx, self.params, OWL_DEFAULTS)
        return Allocation(base.ratios, {"layerwise": self.params["layerwise"], "iterations": self.params["iterations"], **base.details})

    def refiner(self) -> _RowRefiner:
        p = self.params
        return _RowRefiner(self.metric.scores, self.metric_params, p["iterations"], p["learning_rates"], p["negative_learning_rates"])
