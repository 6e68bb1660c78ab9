"""Sparsity allocators, one module each, registered by name.

An allocator decides how much of each layer (or each row) to prune so that the model as a whole
reaches the target sparsity. It is a pure function
``allocate(layers, sparsity, block_summaries, **params) -> {layer name: ratio}`` where a ratio is
a float for the whole layer or a tensor with one ratio per output row. An allocator that looks
at the dense model (OWL) declares the calibration statistics it ``needs`` and a
``summarize_block(weights, stats, **params)`` that a dense pass over the blocks calls once per
block; ``block_summaries`` is then the list of what it returned, else None. An allocator with a
``summarize_block`` and no ``needs`` (AlphaPruning) reads the weights alone: it is called once
per block with ``stats=None`` and no calibration data is read for it. An allocator that
chooses among candidate allocations by trial prunes (NeuroAL) declares ``uses_trials`` and gets
``trials=`` a ``sparsebench.trials.BlockTrials`` (trial prunes with the case's metric on
calibration data). An allocator may return an ``Allocation`` instead of the bare ratios, to
record what it chose (``details`` go to the result document's ``allocation``).

An allocator may also refine each linear's ratio at prune time (TRIM): ``refine_layer(weight,
scores, stats, ratio, **params) -> (per-row ratios, details)`` is called by the pruning walk
just before the metric prunes, with the metric's ``scores`` and the statistics ``refine_needs``
of that block's inputs (the already pruned previous blocks' outputs). ``bind(spec, params,
metric) -> spec`` checks the case's metric and resolves what depends on the keys (e.g. the
dense-pass ``needs`` of the layer-wise allocator TRIM runs under); it runs at validation.
Instead of ratios, an allocator may choose each linear's mask at prune time (DSnoT):
``refine_mask(weight, scores, stats, ratio, linear, **params) -> (mask, details)``, ``linear``
being the adapter's kind of the linear (``attention`` or ``mlp``); the weights it masks are zeroed
and the metric's own prune is not called.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor

from sparsebench.errors import ConfigError
from sparsebench.registry import Registry


@dataclass(frozen=True)
class PrunableLayer:
    name: str  # "<block index>.<module path in the block>", e.g. "3.self_attn.q_proj"
    block: int
    rows: int
    cols: int

    @property
    def numel(self) -> int:
        return self.rows * self.cols


@dataclass
class Allocation:
    ratios: dict[str, float | Tensor]
    details: dict[str, Any] = field(default_factory=dict)  # recorded in the result document's "allocation"


@dataclass(frozen=True)
class AllocatorSpec:
    name: str
    allocate: Callable[..., dict[str, float | Tensor]]
    params: type
    supports_nm: bool = False  # an N:M pattern fixes every layer's ratio; only uniform honours it
    paper: str = ""
    needs: frozenset[str] = frozenset()  # statistics of the dense model, per block (see sparsebench.stats)
    summarize_block: Callable[..., Any] | None = None
    uses_trials: bool = False  # allocate(..., trials=BlockTrials): trial prunes with the case's metric
    refine_layer: Callable[..., tuple[Tensor, dict]] | None = None  # per-row ratios of one linear at prune time
    refine_needs: frozenset[str] = frozenset()  # statistics refine_layer reads, gathered in the pruning walk
    bind: Callable[..., AllocatorSpec] | None = None  # (spec, params, metric) -> spec, at validation
    refine_mask: Callable[..., tuple[Tensor, dict]] | None = None  # the mask of one linear at prune time (DSnoT)

    def bound(self, params: dict[str, Any], metric) -> AllocatorSpec:
        """This spec for these keys and this metric (itself unless the allocator has ``bind``)."""
        return self if self.bind is None else self.bind(self, params, metric)

    def make_params(self, values: dict[str, Any], key: str = "allocator") -> dict[str, Any]:
        allowed = {f.name for f in dataclasses.fields(self.params)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ConfigError(
                f"{key}.{unknown[0]}: not a key of allocator {self.name!r}; allowed: {', '.join(sorted(allowed)) or 'none'}"
            )
        params = self.params(**values)
        check = getattr(params, "check", None)
        if check is not None:
            check(key)
        return dataclasses.asdict(params)


ALLOCATORS: Registry[AllocatorSpec] = Registry("allocator", __name__)


def register_allocator(
    name: str,
    params: type,
    supports_nm: bool = False,
    paper: str = "",
    needs: frozenset[str] = frozenset(),
    summarize_block: Callable[..., Any] | None = None,
    uses_trials: bool = False,
    refine_layer: Callable[..., tuple[Tensor, dict]] | None = None,
    refine_needs: frozenset[str] = frozenset(),
    bind: Callable[..., AllocatorSpec] | None = None,
    refine_mask: Callable[..., tuple[Tensor, dict]] | None = None,
):
    def decorate(fn):
        spec = AllocatorSpec(
            name, fn, params, supports_nm, paper, frozenset(needs), summarize_block, uses_trials, refine_layer, frozenset(refine_needs), bind, refine_mask,
        )
        ALLOCATORS.add(name, spec)
        return fn

    return decorate
