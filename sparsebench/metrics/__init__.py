"""Pruning metrics, one module each, registered by name.

A metric is a pure function ``prune(weight, stats, target, **params) -> pruned weight``:
it scores the weights of one linear layer (from the weight and calibration statistics of its
input), picks the mask for ``target`` and returns the new weight with pruned entries set to zero
(a solver such as SparseGPT also updates the weights it keeps). ``params`` are the keys of the
metric's YAML in ``conf/metric/``, declared by its ``Params`` dataclass.

A metric registered with ``low_rank=True`` (HASSLE-free) also takes ``rank`` (the config key
``decomposition.rank``) and returns a ``sparsebench.lowrank.Decomposition`` (sparse weight plus
low-rank factors) instead of a tensor.

A metric declares what else it offers to allocators that refine masks at prune time, so that
no allocator tests a metric's name:

- ``scores(weight, stats, **params) -> Tensor``: the scores its masks are chosen from (lowest
  pruned first, via ``prune_by_scores``), so that an allocator can order each row's weights as the
  metric would (TRIM, DSnoT);
- ``saliency(weight, stats, **params) -> Tensor``: for a metric whose mask is not a ranking of
  fixed scores (SparseGPT's solver), a per-weight importance of the dense weights from the same
  statistics (``needs``), lowest least important (DSnoT's initial mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

from sparsebench.errors import ConfigError
from sparsebench.masks import SparsityTarget, select_mask
from sparsebench.registry import Registry, make_params


@dataclass(frozen=True)
class MetricSpec:
    name: str
    prune: Callable[..., Tensor] | None  # None: the dense model (metric=none)
    params: type  # dataclass of the metric's configuration keys
    needs: frozenset[str] = frozenset()  # calibration statistics it reads (see sparsebench.stats)
    paper: str = ""
    row_ratios: bool = True  # accepts one target ratio per output row (SparseGPT takes one per layer)
    low_rank: bool = False  # takes ``rank`` and returns a Decomposition (sparse plus low-rank)
    scores: Callable[..., Tensor] | None = None  # scores(weight, stats, **params): lowest pruned first, None if not score-based
    saliency: Callable[..., Tensor] | None = None  # saliency(weight, stats, **params) of a metric that is not score-based

    @property
    def needs_calibration(self) -> bool:
        return bool(self.needs)

    @property
    def ranking(self) -> Callable[..., Tensor] | None:
        """The per-weight order it offers (its ``scores``, else its ``saliency``), or None."""
        return self.scores if self.scores is not None else self.saliency

    def make_params(self, values: dict[str, Any], key: str = "metric") -> dict[str, Any]:
        """Check configuration keys against ``Params``; returns plain keyword arguments."""
        return make_params(self.params, values, key, "metric", self.name)


METRICS: Registry[MetricSpec] = Registry("metric", __name__)


def register_metric(
    name: str, params: type, needs: frozenset[str] = frozenset(), paper: str = "", row_ratios: bool = True, low_rank: bool = False,
    scores: Callable[..., Tensor] | None = None, saliency: Callable[..., Tensor] | None = None,
):
    """Decorator: ``@register_metric("wanda", WandaParams, needs={INPUT_SQ_NORMS})``."""

    def decorate(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        METRICS.add(name, MetricSpec(name, fn, params, frozenset(needs), paper, row_ratios, low_rank, scores, saliency))
        return fn

    return decorate


def prune_by_scores(weight: Tensor, scores: Tensor, target: SparsityTarget, comparison: str) -> Tensor:
    """Zero the weights whose scores the mask selector picks (lowest first)."""
    mask = select_mask(scores, target, comparison)
    return weight.masked_fill(mask, 0)


def check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: allowed values are {', '.join(allowed)}")
