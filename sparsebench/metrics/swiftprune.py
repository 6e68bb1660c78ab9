"""SwiftPrune (Kang et al., Findings of EMNLP 2025, arXiv 2501.16376; its v1 was titled "HWPQ"):
a Hessian-free "contribution" score (the L-score) with an EWMA-based selection instead of a sort.

APPROXIMATION. No official code exists and the paper's equations could not be read here (see
docs/research/swiftprune.md). What is implemented, and how sure each part is:

Two readings of the score, chosen by ``metric.score``:
- ``contribution`` (the default): ``|W_ij| * ||X_j||``, each weight's contribution to its output
  over the calibration tokens. The abstract calls the metric "contribution-based" and claims
  accuracy on par with the state of the art at 50 %; this reading has Wanda's score, so with the
  per-row selection below its mask is Wanda's, found without a sort.
- ``obs_rank1``: the L-score as reconstructed below from an unofficial re-implementation. Measured
  on SmolLM2 it behaves like magnitude pruning (docs/research/swiftprune.md), which contradicts the
  paper's accuracy claims; it is kept for comparison.

Score ``obs_rank1`` (form confirmed in part, inputs our reading). The L-score replaces the OBS saliency
``w_q^2 / [H^-1]_qq``. An unofficial re-implementation documents the form
``L_i = w_i^2 / (1 - x_i^2 / S)``; a summary of the paper says L depends on "the weight's value
and the sum of squared input values". We read x as the layer input:

    L_ij = W_ij^2 / (1 - a_j),    a_j = ||X_j||^2 / sum_k ||X_k||^2,

where ``||X_j||^2`` sums input feature j squared over all calibration tokens (Wanda's statistic).
This is exactly OBS with the Hessian replaced by a damped rank-one matrix built from the inputs:
for ``H = lam*I + x x^T``, Sherman-Morrison gives ``[H^-1]_qq = (1 - x_q^2 / (lam + S)) / lam``
(lam -> 0). The unofficial code instead uses the row's own weights for x, which makes L a
monotone function of |W| within a row, i.e. plain per-row magnitude pruning (``metric=magnitude
comparison=row``). Guards: ``1 - a_j`` is clamped to float32 eps; inputs with no energy give a = 0.

Selection (our construction; the paper's EWMA rule is not confirmed). Per output row, without
sorting, in linear passes vectorised over rows:
1. EWMA estimate: ``m = EWMA_alpha(L)`` along the row (``m_t = (1-alpha) m_{t-1} + alpha L_t``,
   ``m_0 = L_0``; computed as one weighted sum). Modelling the signed root score
   ``sign(W) sqrt(L)`` of a row as N(0, m), the share p of smallest |.| lies below
   ``tau = z_p^2 m`` with ``z_p = Phi^-1((1 + p) / 2)``.
2. ``refine_passes`` counting passes: with q the share found below tau, rescale
   ``tau <- tau (z_p / z_q)^2`` (the same model, re-fitted to the observed count); a row whose
   miss changes sign halves its later steps (tied or lumpy scores make it oscillate).
3. Exact count: the framework checks that each row prunes ``floor(cols * ratio)`` weights, which
   a threshold alone does not hit. The rows' shortfall or excess d is closed by a partial
   selection (``topk`` of depth max|d|, small after step 2; no full sort), which yields the k-th
   smallest L; weights below it are pruned, ties at it by position.
The mask therefore equals a stable per-row sort of L (tested); ``ewma_alpha`` and
``refine_passes`` change only the speed. The unofficial code's EWMA constants alpha = beta =
0.125, la = 4 (declared there, unused) are not the paper's confirmed values; we keep alpha = 0.125
as the EWMA gain and have no use for beta and la.

N:M (the paper evaluates 2:4): the n lowest L of every m consecutive inputs of a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from sparsebench.errors import ConfigError
from sparsebench.masks import SparsityTarget, prune_counts_per_row, select_n_m
from sparsebench.metrics import register_metric
from sparsebench.metrics.wanda import wanda_scores
from sparsebench.schema import run_only
from sparsebench.stats import INPUT_SQ_NORMS, LayerStats


SCORES = ("contribution", "obs_rank1")


# the two keys change speed only, yet the case ids of the release that added them hash them (the
# metric group is hashed whole): they stay in the id so that a re-launch finds those documents
_IN_EARLIER_IDS = "hashed into the case ids of the release that added it; kept so a re-launch finds those documents"


@dataclass
class SwiftPruneParams:
    score: str = "contribution"
    ewma_alpha: float = field(default=0.125, metadata=run_only(hashed=_IN_EARLIER_IDS))
    refine_passes: int = field(default=4, metadata=run_only(hashed=_IN_EARLIER_IDS))

    def check(self, key: str) -> None:
        if self.score not in SCORES:
            raise ConfigError(f"{key}.score={self.score!r}: allowed values are {', '.join(SCORES)}")
        if isinstance(self.ewma_alpha, bool) or not isinstance(self.ewma_alpha, (int, float)) or not 0 < self.ewma_alpha <= 1:
            raise ConfigError(f"{key}.ewma_alpha={self.ewma_alpha!r}: must be a number in (0, 1]")
        if isinstance(self.refine_passes, bool) or not isinstance(self.refine_passes, int) or self.refine_passes < 0:
            raise ConfigError(f"{key}.refine_passes={self.refine_passes!r}: must be an integer >= 0")


def l_scores(weight: Tensor, input_sq_norms: Tensor) -> Tensor:
    """``W_ij^2 / (1 - a_j)`` with ``a_j`` input feature j's share of the total input energy, in float32."""
    energy = input_sq_norms.float()
    total = energy.sum()
    share = energy / total if total > 0 else torch.zeros_like(energy)
    remainder = (1 - share).clamp_min(torch.finfo(torch.float32).eps)
    return weight.float().square() / remainder.unsqueeze(0)


def contribution_scores(weight: Tensor, input_sq_norms: Tensor) -> Tensor:
    """``|W_ij| * ||X_j||``: each weight's contribution to its output, computed as Wanda computes its
    score (same operations, float32), so that the masks are Wanda's bit for bit. The EWMA threshold
    models squared scores; on these it starts further off and its counting passes and the partial
    selection make up for it (speed only: the mask is exact either way)."""
    return wanda_scores(weight, input_sq_norms)


SCORE_FUNCTIONS = {"contribution": contribution_scores, "obs_rank1": l_scores}


def ewma_last(values: Tensor, alpha: float) -> Tensor:
    """Last value of ``m_t = (1 - alpha) m_{t-1} + alpha v_t`` along each row (``m_0 = v_0``).

    Unrolled, ``m_{n-1} = (1-alpha)^(n-1) v_0 + sum_{t>=1} alpha (1-alpha)^(n-1-t) v_t``: one
    weighted sum per row (a matrix-vector product) instead of n sequential steps.
    """
    cols = values.shape[-1]
    steps_to_end = torch.arange(cols - 1, -1, -1, device=values.device, dtype=torch.float64)
    weights = alpha * (1 - alpha) ** steps_to_end
    weights[0] = (1 - alpha) ** (cols - 1)
    return values @ weights.to(values.dtype)


def _half_normal_quantile(share: Tensor) -> Tensor:
    """z with P(|N(0, 1)| < z) = share."""
    return torch.special.ndtri((1 + share) / 2)


def ewma_threshold(scores: Tensor, counts: Tensor, alpha: float, refine_passes: int) -> Tensor:
    """Per-row threshold with about ``counts`` scores below it: EWMA estimate, then counting passes.

    Each pass re-fits the model to the count it finds; a row whose miss changes sign (it stepped
    over its target, as tied or lumpy scores make it do) halves its later steps.
    """
    cols = scores.shape[1]
    target_z = _half_normal_quantile(counts.to(torch.float64) / cols)
    threshold = target_z.square() * ewma_last(scores, alpha).double()
    step = torch.ones_like(threshold)
    previous_miss = torch.zeros_like(threshold)
    for _ in range(refine_passes):
        found = (scores < threshold.to(scores.dtype).unsqueeze(1)).sum(1).double()
        miss = found - counts
        step = torch.where(miss * previous_miss < 0, step / 2, step)
        previous_miss = miss
        found_z = _half_normal_quantile(found.clamp(0.5, cols - 0.5) / cols)
        threshold = threshold * (target_z / found_z).square().pow(step)
    return threshold.to(scores.dtype)


def _kth_smallest_near(scores: Tensor, counts: Tensor, threshold: Tensor) -> Tensor:
    """The ``counts``-th smallest score of each row, by partial selection next to the threshold.

    A row short of ``counts`` below its threshold needs the ``shortfall``-th smallest score above
    it; a row with too many, the ``(excess + 1)``-th largest below it. One ``topk`` of depth
    ``max |miss| + 1`` serves both (the second as the smallest negated score). Rows with
    ``counts == 0`` give -inf.
    """
    cols = scores.shape[1]
    below = scores < threshold.unsqueeze(1)
    found = below.sum(1)
    short = (counts > found).unsqueeze(1)
    rank = torch.where(short.squeeze(1), counts - found, found - counts + 1).clamp(1, cols)
    keys = torch.where(short, torch.where(below, float("inf"), scores), torch.where(below, -scores, float("inf")))
    depth = int(rank.max())
    picked = torch.topk(keys, depth, dim=1, largest=False).values.gather(1, (rank - 1).unsqueeze(1)).squeeze(1)
    kth = torch.where(short.squeeze(1), picked, -picked)
    return kth.masked_fill(counts == 0, float("-inf"))


def select_per_row_ewma(scores: Tensor, ratio: float | Tensor, alpha: float = 0.125, refine_passes: int = 4) -> Tensor:
    """Prune the ``floor(cols * ratio_r)`` lowest scores of each row without sorting (ties by position)."""
    rows, cols = scores.shape
    counts = prune_counts_per_row(ratio, rows, cols, scores.device)
    kth = _kth_smallest_near(scores, counts, ewma_threshold(scores, counts, alpha, refine_passes))
    at_most = scores <= kth.unsqueeze(1)
    if bool((at_most.sum(1) == counts).all()):  # no tie at the k-th score straddles the count
        return at_most
    ties = scores == kth.unsqueeze(1)
    room = counts - (at_most & ~ties).sum(1)
    return (at_most & ~ties) | (ties & (ties.cumsum(1) <= room.unsqueeze(1)))


def _swiftprune_layer_scores(weight: Tensor, stats: LayerStats, score: str = "contribution", ewma_alpha: float = 0.125, refine_passes: int = 4) -> Tensor:
    return SCORE_FUNCTIONS[score](weight, stats.input_sq_norms)  # its masks equal a stable per-row sort of these


@register_metric(
    "swiftprune", SwiftPruneParams, needs=frozenset({INPUT_SQ_NORMS}), paper="arXiv 2501.16376 (approximation)", scores=_swiftprune_layer_scores
)
def swiftprune(
    weight: Tensor, stats: LayerStats, target: SparsityTarget, score: str = "contribution", ewma_alpha: float = 0.125, refine_passes: int = 4
) -> Tensor:
    scores = SCORE_FUNCTIONS[score](weight, stats.input_sq_norms)
    if target.pattern is not None:
        mask = select_n_m(scores, target.pattern)
    else:
        row_ratios = target.row_ratios(scores.shape[0])
        mask = select_per_row_ewma(scores, float(target.ratio) if row_ratios is None else row_ratios, ewma_alpha, refine_passes)
    return weight.masked_fill(mask, 0)
