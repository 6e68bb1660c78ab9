"""OWL, Outlier Weighed Layerwise sparsity (Yin et al. 2023, arXiv 2310.05175; luuyin/OWL,
``prune_wanda_outlier``).

A dense pass over the blocks (inputs propagated through the unpruned model) computes, for each
block, the layer-wise outlier distribution D_b: the share of the block's Wanda scores
``|W_ij| * ||X_j||`` (all its linears together) that exceed ``m`` times their mean. The D_b are
min-max scaled to [0, 2 * lam], shifted to have mean ``1 - S`` and used as each block's density,
so blocks with more outliers are pruned less and the block sparsities span [S - lam, S + lam]
with mean exactly S. Every linear of a block gets the block's ratio. Equal outlier ratios give
uniform sparsity. The reference reports D in percent; the scale cancels in the min-max step.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from sparsebench.allocators import Allocation, Allocator, PrunableLayer, Reads, register_allocator
from sparsebench.errors import ConfigError
from sparsebench.metrics.wanda import wanda_scores
from sparsebench.stats import INPUT_SQ_NORMS, LayerStats


OWL_NEEDS = frozenset({INPUT_SQ_NORMS})  # its dense pass: Wanda's input norms


@dataclass
class OWLParams:
    m: float = 5.0  # outlier threshold: scores above m x the block's mean score (the paper's M)
    lam: float = 0.08  # half-width of the block sparsity range (the paper's lambda)

    def check(self, key: str) -> None:
        if self.m <= 0:
            raise ConfigError(f"{key}.m={self.m}: must be > 0")
        if not 0 <= self.lam < 0.5:
            raise ConfigError(f"{key}.lam={self.lam}: must be in [0, 0.5)")


def outlier_ratio(weights: dict[str, Tensor], stats: dict[str, LayerStats], m: float = 5.0, lam: float = 0.08) -> float:
    """D_b: the share of a block's Wanda scores above ``m`` times their mean."""
    scores = torch.cat([wanda_scores(weight, stats[name].input_sq_norms).flatten() for name, weight in weights.items()])
    return float((scores > m * scores.mean()).float().mean())


def owl_block_sparsities(outlier_ratios: Tensor, sparsity: float, lam: float) -> Tensor:
    spread = outlier_ratios.max() - outlier_ratios.min()
    if spread == 0:
        return torch.full_like(outlier_ratios, sparsity)
    density = (outlier_ratios - outlier_ratios.min()) / spread * (2 * lam)
    density = density - density.mean() + (1 - sparsity)
    return 1 - density


def owl(layers: list[PrunableLayer], sparsity: float, block_summaries: list[float], m: float = 5.0, lam: float = 0.08) -> dict[str, float]:
    block_sparsity = owl_block_sparsities(torch.tensor(block_summaries, dtype=torch.float64), sparsity, lam)
    if block_sparsity.min() <= 0 or block_sparsity.max() >= 1:
        raise ConfigError(f"allocator.lam={lam}: block sparsities reach {block_sparsity.min():.3f}..{block_sparsity.max():.3f}, outside (0, 1) at sparsity {sparsity}")
    return {layer.name: float(block_sparsity[layer.block]) for layer in layers}


def owl_plan(ctx, m: float, lam: float) -> dict[str, float]:
    """OWL's ratios after its dense pass (Wanda statistics, one outlier ratio per block)."""
    summaries = ctx.dense_summaries(OWL_NEEDS, lambda weights, stats: outlier_ratio(weights, stats, m, lam))
    return owl(ctx.layers, ctx.sparsity, summaries, m, lam)


@register_allocator
class OWL(Allocator):
    name = "owl"
    Params = OWLParams
    paper = "arXiv 2310.05175"
    reads = Reads(dense=OWL_NEEDS)

    def plan(self, ctx) -> Allocation:
        return Allocation(owl_plan(ctx, **self.params))
