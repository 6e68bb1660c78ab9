"""DSnoT, Dynamic Sparse No Training (Zhang et al., ICLR 2024, arXiv 2310.08915; github zyxxmu/DSnoT
at dd4e2ee, ``lib/prune.py`` ``prune_DSnoT``, unstructured branch; the same code is NeuroAL's
``prune_DSnoT``, its ``--top_up DSnoT``).

A training-free refinement of a base metric's mask, linear by linear at prune time: weights are
swapped between pruned and kept, one pair per row and cycle, so that the expected change of each
output, sum over pruned j of W_ij E[x_j], moves towards zero while the row's count stays fixed.

Design: DSnoT is a top-up, so it is an allocator (``allocator=dsnot``, as NeuroAL's ``--top_up``)
that sets each linear's ratio from a layer-wise base (``layerwise=uniform|owl|alpha``, see
``sparsebench.allocators._layerwise``) and, through its refiner, chooses each
linear's mask just before it would be pruned, from the case's metric's scores and the block's
statistics (inputs: the outputs of the already pruned previous blocks, as in the reference). It
composes with every metric that offers a ranking (``MetricSpec.ranking``): the score-based ones
(magnitude, Wanda, RIA, SwiftPrune, multiflow) and, as the references' ``--initial_method
sparsegpt`` does, SparseGPT through its saliency: the initial mask is then the lowest OBS saliency
W_ij^2 / [U]_jj^2 (U the upper Cholesky factor of (H + damp mean(diag H) I)^-1 with the metric's
``damp``, by default 0.01, the references' hard-coded damping) of the dense weights, and no weight
is updated (SparseGPT's solver does not run). The initial mask always compares within rows, as the reference's. Per row r
of W [rows, cols]:

    mu_j = sum_t x_tj / sequences,  v_j = mean over sequences of the variance of x_j over the tokens
    c_ij = W_ij mu_j                       (the reference's DSnoT_metric)
    initial mask: the floor(cols * s) lowest scores of the base metric (stable order)
    e_r = sum over pruned j of c_rj        (reconstruction error) ; sign0 = sign(e_r)
    regrow candidates: all j ordered by g_j = c_rj / v_j^p over pruned j (0 for kept j), ascending
    prune candidates: the kept j ordered by Wanda's |W_rj| ||X_j|| ascending, then rearranged:
        those with c_rj < 0 first (ascending Wanda), those with c_rj > 0 last (ascending Wanda
        read from the end); zeros in between as the reference's ``return_reorder_indice`` puts them
    for up to ``max_cycles`` cycles, while some row is active:
        regrow j+ = next candidate from the top if e_r > 0, else from the bottom
        prune  j- = next candidate from the end if e_r < 0, else from the start
        active_r &= |e_r| > update_threshold  (and, with same_sign, sign0 == sign(e_r + c_rj- - c_rj+))
        where active: prune j-, regrow j+, e_r += c_rj- - c_rj+

Both candidate lists advance every cycle in every row, active or not, as in the reference. The
reference's update can change a row's count where a list runs past its candidates (a regrow
candidate that is kept, a prune candidate already pruned: narrow rows, many cycles); here such a
row stops instead, so every row prunes exactly floor(cols * s) weights. Elsewhere the masks are
the reference's (tests/test_dsnot.py).

Defaults are the references' effective ones: ``max_cycles`` 50, ``update_threshold`` 0.1,
``pow_of_var_regrowing`` 1, ``skip: mlp`` (the MLP's linears keep the base metric's mask: its
``--skip_layer mlp``, which NeuroAL forces for LLaMA, Phi and Mistral), and ``same_sign: false``:
both references declare ``--without_same_sign`` with ``type=bool, default=True``, so the same-sign
rule is off in every run of their code. ``--pow_of_var_pruning`` is parsed but never read in the
unstructured branch, so it is not a key here. The threshold is in the reference's units (mu sums
over each sequence's tokens, so it scales with the sequence length). The reference's N:M branch is
not implemented (``allocator=dsnot`` takes unstructured sparsity only), nor per-row ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparsebench.allocators import Allocation, Allocator, LinearToRefine, Refined, register_allocator
from sparsebench.allocators._layerwise import base_reads, check_base, layerwise_plan, require_metric
from sparsebench.errors import ConfigError
from sparsebench.masks import prune_count
from sparsebench.stats import INPUT_SQ_NORMS, INPUT_SUMS, SEQUENCE_VARIANCES, LayerStats

OWL_DEFAULTS = {"m": 5.0, "lam": 0.08}  # NeuroAL's --M and --lam
SKIPS = ("mlp", "attention", "none")
DSNOT_NEEDS = frozenset({INPUT_SQ_NORMS, INPUT_SUMS, SEQUENCE_VARIANCES})


@dataclass
class DSnoTParams:
    layerwise: str = "uniform"  # uniform | owl | alpha: the layer ratios whose masks DSnoT refines
    max_cycles: int = 50
    update_threshold: float = 0.1
    pow_of_var_regrowing: float = 1.0
    same_sign: bool = False
    skip: str = "mlp"  # mlp | attention | none: linears that keep the base metric's mask
    m: float | None = None  # layerwise=owl only; null: 5
    lam: float | None = None  # layerwise=owl only; null: 0.08
    epsilon: float | None = None  # layerwise=alpha only; null: 0.2

    def check(self, key: str) -> None:
        check_base(key, self.layerwise, OWL_DEFAULTS, self.m, self.lam, self.epsilon)
        if not isinstance(self.max_cycles, int) or isinstance(self.max_cycles, bool) or self.max_cycles < 0:
            raise ConfigError(f"{key}.max_cycles={self.max_cycles!r}: must be an integer >= 0")
        if not isinstance(self.update_threshold, (int, float)) or self.update_threshold < 0:
            raise ConfigError(f"{key}.update_threshold={self.update_threshold!r}: must be a number >= 0")
        if not isinstance(self.pow_of_var_regrowing, (int, float)) or self.pow_of_var_regrowing < 0:
            raise ConfigError(f"{key}.pow_of_var_regrowing={self.pow_of_var_regrowing!r}: must be a number >= 0")
        if not isinstance(self.same_sign, bool):
            raise ConfigError(f"{key}.same_sign={self.same_sign!r}: must be true or false")
        if self.skip not in SKIPS:
            raise ConfigError(f"{key}.skip={self.skip!r}: allowed values are {', '.join(SKIPS)}")


def sign_reorder(values: Tensor) -> Tensor:
    """The reference's ``return_reorder_indice``: per row, positions of negatives ascending, then zeros
    (as position 0), then positions of positives descending."""
    cols = values.shape[1]
    positions = torch.arange(cols, device=values.device, dtype=torch.float64).expand_as(values)
    inf = torch.full_like(positions, float("inf"))
    positives = torch.flip(torch.sort(torch.where(values > 0, positions, inf), dim=1).values, dims=[1])
    negatives = torch.sort(torch.where(values < 0, positions, inf), dim=1).values
    positives = torch.where(torch.isinf(positives), torch.zeros_like(positives), positives)
    negatives = torch.where(torch.isinf(negatives), torch.zeros_like(negatives), negatives)
    return (positives + negatives).to(torch.int64)


def dsnot_mask(
    weight: Tensor, scores: Tensor, input_sq_norms: Tensor, input_means: Tensor, input_variances: Tensor, ratio: float,
    max_cycles: int = 50, update_threshold: float = 0.1, pow_of_var_regrowing: float = 1.0, same_sign: bool = False,
) -> tuple[Tensor, dict]:
    """The refined mask (True = pruned) of one linear and what the cycles did."""
    weight = weight.float()
    rows, cols = weight.shape
    pruned_count = prune_count(cols, ratio)
    kept_count = cols - pruned_count
    order = torch.sort(scores.float(), dim=1, stable=True).indices
    pruned, kept = order[:, :pruned_count], order[:, pruned_count:]
    mask = torch.zeros_like(weight, dtype=torch.bool).scatter_(1, pruned, True)
    if pruned_count == 0 or kept_count == 0 or max_cycles == 0:
        return mask, {"cycles": 0, "swaps": 0}

    contribution = weight * input_means.float().to(weight.device).unsqueeze(0)
    regrow_metric = contribution.clone().scatter_(1, kept, 0.0)
    error = regrow_metric.sum(dim=1, keepdim=True)
    initial_error = error.clone()
    initial_sign = torch.sign(error)
    if pow_of_var_regrowing:
        regrow_metric = regrow_metric / torch.pow(input_variances.float().to(weight.device).unsqueeze(0), pow_of_var_regrowing)
    regrow_order = torch.sort(regrow_metric, dim=1, stable=True).indices

    wanda = weight.abs() * input_sq_norms.float().to(weight.device).sqrt().unsqueeze(0)
    wanda = wanda.scatter_(1, pruned, float("inf"))
    kept_by_wanda = torch.sort(wanda, dim=1, stable=True).indices[:, :kept_count]
    prune_order = kept_by_wanda.gather(1, sign_reorder(contribution.gather(1, kept_by_wanda)))

    device = weight.device
    regrow_next = torch.tensor([0, cols - 1], device=device).repeat(rows, 1)  # [from the bottom, from the top]
    prune_next = torch.tensor([0, kept_count - 1], device=device).repeat(rows, 1)
    step = torch.tensor([1, -1], device=device).repeat(rows, 1)
    active = torch.ones(rows, 1, dtype=torch.bool, device=device)
    cycles = swaps = 0
    while cycles < max_cycles and bool(active.any()):
        cycles += 1
        regrow_side = (error > 0).long()
        regrow_at = regrow_next.gather(1, regrow_side)
        regrow = regrow_order.gather(1, regrow_at.clamp(0, cols - 1))
        regrow_next.scatter_(1, regrow_side, regrow_at + step.gather(1, regrow_side))
        prune_side = (error < 0).long()
        prune_at = prune_next.gather(1, prune_side)
        prune = prune_order.gather(1, prune_at.clamp(0, kept_count - 1))
        prune_next.scatter_(1, prune_side, prune_at + step.gather(1, prune_side))

        regrow_value = contribution.gather(1, regrow)
        prune_value = contribution.gather(1, prune)
        active &= error.abs() > update_threshold
        if same_sign:
            active &= initial_sign == torch.sign(error + prune_value - regrow_value)
        # a swap needs a pruned weight to regrow and a kept weight to prune (see the module docstring)
        in_range = (regrow_at >= 0) & (regrow_at < cols) & (prune_at >= 0) & (prune_at < kept_count)
        active &= in_range & mask.gather(1, regrow) & ~mask.gather(1, prune)
        mask.scatter_(1, prune, mask.gather(1, prune) | active)
        mask.scatter_(1, regrow, mask.gather(1, regrow) & ~active)
        error += torch.where(active, prune_value, torch.zeros_like(prune_value))
        error -= torch.where(active, regrow_value, torch.zeros_like(regrow_value))
        swaps += int(active.sum())
    return mask, {
        "cycles": cycles, "swaps": swaps,
        "error_before": float(initial_error.abs().mean()), "error_after": float(error.abs().mean()),
    }


def refine_mask(
    weight: Tensor, scores: Tensor, stats: LayerStats, ratio, linear: str, max_cycles: int = 50, update_threshold: float = 0.1,
    pow_of_var_regrowing: float = 1.0, same_sign: bool = False, skip: str = "mlp",
) -> tuple[Tensor, dict]:
    """The mask of one linear (``linear``: its kind, ``attention`` or ``mlp``) from the metric's ``scores``."""
    if isinstance(ratio, Tensor):
        raise ValueError("DSnoT refines one ratio per layer; the layer-wise allocator gave per-row ratios")
    if linear == skip:
        order = torch.sort(scores.float(), dim=1, stable=True).indices[:, : prune_count(weight.shape[1], float(ratio))]
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, True), {"skipped": True}
    sequences = stats.num_sequences
    return dsnot_mask(
        weight, scores, stats.input_sq_norms, stats.input_sums / sequences, stats.sequence_variances / sequences, float(ratio),
        max_cycles, update_threshold, pow_of_var_regrowing, same_sign,
    )


class _MaskRefiner:
    """DSnoT's step at prune time: each linear's mask, from the metric's ranking (its scores, else its saliency)."""

    def __init__(self, ranking, metric_needs: frozenset[str], metric_params: dict, keys: dict):
        self.ranking, self.metric_params, self.keys = ranking, metric_params, keys
        self.needs = DSNOT_NEEDS | metric_needs  # the ranking reads the metric's own statistics

    def __call__(self, linear: LinearToRefine) -> Refined:
        scores = self.ranking(linear.weight, linear.stats, **self.metric_params)
        mask, details = refine_mask(linear.weight, scores, linear.stats, linear.ratio, linear.kind, **self.keys)
        return Refined(linear.ratio, details, mask)


@register_allocator
class DSnoT(Allocator):
    """The layer-wise ratios whose masks DSnoT refines (``plan``); the masks are chosen at prune time (``refiner``)."""

    name = "dsnot"
    Params = DSnoTParams
    paper = "arXiv 2310.08915"

    def __init__(self, params, metric, metric_params):
        super().__init__(params, metric, metric_params)
        require_metric(
            "dsnot", metric, lambda m: m.ranking is not None, "DSnoT starts from the metric's scores or saliency; metrics that have them",
        )
        self.reads = base_reads(params["layerwise"], self.refiner().needs)

    def plan(self, ctx) -> Allocation:
        p = self.params
        base = layerwise_plan(ctx, p, OWL_DEFAULTS)
        details = {"layerwise": p["layerwise"], "max_cycles": p["max_cycles"], "update_threshold": p["update_threshold"], "skip": p["skip"], "same_sign": p["same_sign"]}
        return Allocation(base.ratios, {**details, **base.details})

    def refiner(self) -> _MaskRefiner:
        keys = {name: self.params[name] for name in ("max_cycles", "update_threshold", "pow_of_var_regrowing", "same_sign", "skip")}
        return _MaskRefiner(self.metric.ranking, self.metric.needs, self.metric_params, keys)
