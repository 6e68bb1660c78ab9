"""Wanda (Sun et al. 2023, arXiv 2306.11695; locuslab/wanda): score |W_ij| * ||X_j||_2.

``||X_j||_2`` is the norm of input feature j over all calibration tokens. Scores are compared
within each output row (the paper's default; ``comparison=layer`` is its ablation); N:M picks
within each group of M consecutive inputs of a row. No weight is updated.
The reference scales ``||X_j||^2`` by 1/nsamples; a common factor does not change any mask.
"""

from dataclasses import dataclass

from torch import Tensor

from sparsebench.masks import SparsityTarget
from sparsebench.metrics import check_choice, prune_by_scores, register_metric
from sparsebench.stats import INPUT_SQ_NORMS, LayerStats


@dataclass
class WandaParams:
    comparison: str = "row"

    def check(self, key: str) -> None:
        check_choice(f"{key}.comparison", self.comparison, ("row", "layer"))


def wanda_scores(weight: Tensor, input_sq_norms: Tensor) -> Tensor:
    """|W_ij| * sqrt(sum_t x_tj^2), in float32."""
    return weight.float().abs() * input_sq_norms.float().sqrt().unsqueeze(0)


def _wanda_layer_scores(weight: Tensor, stats: LayerStats, comparison: str = "row") -> Tensor:
    return wanda_scores(weight, stats.input_sq_norms)


@register_metric("wanda", WandaParams, needs=frozenset({INPUT_SQ_NORMS}), paper="arXiv 2306.11695", scores=_wanda_layer_scores)
def wanda(weight: Tensor, stats: LayerStats, target: SparsityTarget, comparison: str = "row") -> Tensor:
    return prune_by_scores(weight, wanda_scores(weight, stats.input_sq_norms), target, comparison)
