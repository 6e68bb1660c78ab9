"""multiflow (Farina et al., CVPR 2024, "MULTIFLOW: Shifting Towards Task-Agnostic Vision-Language
Pruning", arXiv 2404.05621), as NeuroAL's code prunes LLMs with it (eliacunegatti/NeuroAL at
118b014, ``lib/prune.py`` ``prune_multiflow``).

A weight's score is its magnitude times the importance of the two neurons it connects, where a
neuron's importance is the mean activation-weighted magnitude ("information flow") of its edges:

    A_ij = |W_ij| * ||X_j||_2                     (Wanda's score)
    out_i = mean_j A_ij,   in_j = mean_i A_ij     (output and input neuron importance)
    S_ij = |W_ij| * out_i * in_j

Scores are compared within each output row (the reference's default granularity 'row'; with
``comparison=layer`` within the whole matrix). The reference's ``||X_j||`` carries a
1/sqrt(nsamples) factor, which scales S by a constant and changes no mask. The reference has no
N:M path for multiflow (its ``compute_mask`` has none); here N:M picks the n lowest S of every m
inputs of a row, as for every other score-based metric.
"""

from dataclasses import dataclass

from torch import Tensor

from sparsebench.masks import SparsityTarget
from sparsebench.metrics import check_choice, prune_by_scores, register_metric
from sparsebench.stats import INPUT_SQ_NORMS, LayerStats


@dataclass
class MultiflowParams:
    comparison: str = "row"

    def check(self, key: str) -> None:
        check_choice(f"{key}.comparison", self.comparison, ("row", "layer"))


def multiflow_scores(weight: Tensor, input_sq_norms: Tensor) -> Tensor:
    """|W_ij| * mean_k(|W_ik| ||X_k||) * mean_k(|W_kj| ||X_j||), in float32."""
    magnitude = weight.float().abs()
    flow = magnitude * input_sq_norms.float().sqrt().unsqueeze(0)
    return magnitude * flow.mean(dim=1, keepdim=True) * flow.mean(dim=0, keepdim=True)


def _multiflow_layer_scores(weight: Tensor, stats: LayerStats, comparison: str = "row") -> Tensor:
    return multiflow_scores(weight, stats.input_sq_norms)


@register_metric("multiflow", MultiflowParams, needs=frozenset({INPUT_SQ_NORMS}), paper="arXiv 2404.05621 (as NeuroAL's prune_multiflow)", scores=_multiflow_layer_scores)
def multiflow(weight: Tensor, stats: LayerStats, target: SparsityTarget, comparison: str = "row") -> Tensor:
    return prune_by_scores(weight, multiflow_scores(weight, stats.input_sq_norms), target, comparison)
