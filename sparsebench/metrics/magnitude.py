"""Magnitude pruning: score |W_ij|, compared within the whole layer (default) or within each row.

The Wanda reference (locuslab/wanda, ``prune_magnitude``) compares within the layer; it thresholds
with ``<=`` on the k-th smallest score, which prunes one weight more than ``floor(numel * ratio)``
when there are no ties. We prune exactly ``floor(numel * ratio)``.
"""

from dataclasses import dataclass

from torch import Tensor

from sparsebench.masks import SparsityTarget
from sparsebench.metrics import check_choice, prune_by_scores, register_metric
from sparsebench.stats import LayerStats


@dataclass
class MagnitudeParams:
    comparison: str = "layer"

    def check(self, key: str) -> None:
        check_choice(f"{key}.comparison", self.comparison, ("layer", "row"))


def _magnitude_scores(weight: Tensor, stats: LayerStats | None, comparison: str = "layer") -> Tensor:
    return weight.abs()


@register_metric("magnitude", MagnitudeParams, paper="Han et al. 2015; as in Sun et al. 2023 (Wanda) baselines", scores=_magnitude_scores)
def magnitude(weight: Tensor, stats: LayerStats | None, target: SparsityTarget, comparison: str = "layer") -> Tensor:
    return prune_by_scores(weight, weight.abs(), target, comparison)
