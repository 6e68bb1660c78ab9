"""RIA, Relative Importance and Activations (Zhang et al., ICLR 2024, "Plug-and-Play";
github biomedical-cybernetics/Relative-importance-and-activation-pruning, ``prune_ria``).

Score ``(|W_ij| / sum_i |W_ij| + |W_ij| / sum_j |W_ij|) * (||X_j||_2)^a``: the weight's share of
its input column plus its share of its output row, times the input feature's activation norm
to the power ``a`` (0.5). As in the reference's defaults, scores are compared within the whole
layer (``comparison=row`` is its ``--per_outneuron`` option) and N:M picks directly within each
group of M inputs (its optional channel reallocation / linear-sum-assignment permutation is not
implemented). The reference's ``||X_j||`` carries a 1/sqrt(nsamples) factor; a common factor
raised to the power ``a`` scales every score alike and changes no mask.
"""

from dataclasses import dataclass

from torch import Tensor

from sparsebench.errors import ConfigError
from sparsebench.masks import SparsityTarget
from sparsebench.metrics import check_choice, prune_by_scores, register_metric
from sparsebench.stats import INPUT_SQ_NORMS, LayerStats


@dataclass
class RIAParams:
    a: float = 0.5
    comparison: str = "layer"

    def check(self, key: str) -> None:
        check_choice(f"{key}.comparison", self.comparison, ("layer", "row"))
        if not isinstance(self.a, (int, float)) or self.a < 0:
            raise ConfigError(f"{key}.a={self.a!r}: must be a number >= 0")


def ria_scores(weight: Tensor, input_sq_norms: Tensor, a: float = 0.5) -> Tensor:
    magnitude = weight.float().abs()
    relative = magnitude / magnitude.sum(dim=0, keepdim=True) + magnitude / magnitude.sum(dim=1, keepdim=True)
    return relative * input_sq_norms.float().sqrt().pow(a).unsqueeze(0)


def _ria_layer_scores(weight: Tensor, stats: LayerStats, a: float = 0.5, comparison: str = "layer") -> Tensor:
    return ria_scores(weight, stats.input_sq_norms, a)


@register_metric("ria", RIAParams, needs=frozenset({INPUT_SQ_NORMS}), paper="ICLR 2024, Plug-and-Play (RIA)", scores=_ria_layer_scores)
def ria(weight: Tensor, stats: LayerStats, target: SparsityTarget, a: float = 0.5, comparison: str = "layer") -> Tensor:
    return prune_by_scores(weight, ria_scores(weight, stats.input_sq_norms, a), target, comparison)
