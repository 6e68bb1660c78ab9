"""Sparsity allocators, one module each, registered by name: the allocator protocol.

An allocator decides how much of each layer (or each row) to prune so that the model as a whole
reaches the target sparsity. Every allocator is a subclass of ``Allocator`` registered with
``@register_allocator``; its keys are the fields of its ``Params`` dataclass (its YAML in
``conf/allocator/``). Validation binds it to the case: ``Allocator(params, metric, metric_params)``
checks that it can work with the metric (raising ``ConfigError``) and sets ``reads``, what it will
read of the model, so that the case knows before any model loads whether it needs calibration data.

At run time the runner calls ``plan(ctx) -> Allocation``: each layer's ratio (a float, or a tensor
with one ratio per output row) and details for the result document. ``ctx`` (an
``AllocationContext``) gives lazy, cached access to everything an allocator may look at:

- ``ctx.dense_summaries(needs, summarize)``: one value per block from ``summarize(weights, stats)``
  over a pass of the dense model on calibration data, the statistics ``needs`` gathered per
  input (OWL's outlier ratios); cached on disk and shared by every case of that model;
- ``ctx.weight_summaries(summarize)``: one value per block from ``summarize(weights)``, no data
  read (AlphaPruning's spectra);
- ``ctx.trials()``: a ``sparsebench.trials.BlockTrials``, trial prunes with the case's metric on
  calibration sequences (NeuroAL).

An allocator that also acts at prune time returns a ``Refiner`` from ``refiner()``: the pruning
walk calls it for each linear just before the metric would prune it, with the statistics it
``needs`` of that block's inputs (the already pruned previous blocks' outputs), and it returns a
``Refined``: the linear's ratios (TRIM's per-row ratios) or its mask (DSnoT). Refiners read the
metric only through what the metric offers (``MetricSpec.scores``, ``saliency``), never its name.

A new allocator is one module here plus one YAML; see docs/extending.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

from torch import Tensor

from sparsebench.layers import PrunableLayer
from sparsebench.registry import Registry, make_params
from sparsebench.stats import LayerStats

__all__ = [
    "ALLOCATORS", "Allocation", "AllocationContext", "Allocator", "LinearToRefine", "PrunableLayer", "Reads", "Refined", "Refiner",
    "register_allocator",
]


@dataclass
class Allocation:
    ratios: dict[str, float | Tensor]
    details: dict[str, Any] = field(default_factory=dict)  # recorded in the result document's "allocation"


@dataclass(frozen=True)
class Reads:
    """What an allocator reads of the model besides its weights: known at validation, before any model loads."""

    dense: frozenset[str] = frozenset()  # statistics of a dense pass on calibration data (ctx.dense_summaries)
    trials: bool = False  # trial prunes on calibration data (ctx.trials)
    refine: frozenset[str] = frozenset()  # statistics its refiner reads in the pruning walk

    @property
    def calibration(self) -> bool:
        return bool(self.dense or self.trials or self.refine)


class AllocationContext(Protocol):
    """What ``Allocator.plan`` may look at; every pass runs only when asked for, at most once."""

    layers: list[PrunableLayer]
    sparsity: float

    def dense_summaries(self, needs: frozenset[str], summarize: Callable[[dict[str, Tensor], dict[str, LayerStats]], Any]) -> list: ...

    def weight_summaries(self, summarize: Callable[[dict[str, Tensor]], Any]) -> list: ...

    def trials(self) -> Any: ...  # a sparsebench.trials.BlockTrials


@dataclass(frozen=True)
class LinearToRefine:
    """One linear as the pruning walk hands it to a refiner, just before it is pruned."""

    name: str  # "<block>.<module path>"
    kind: str  # the adapter's kind of the linear: "attention" or "mlp"
    weight: Tensor  # on the work device
    stats: LayerStats | None  # of its input, with the refiner's and the metric's statistics
    ratio: float | Tensor  # the allocator's ratio for it


@dataclass
class Refined:
    """A refiner's answer for one linear: the ratio(s) to prune it at, or the mask itself (True = pruned:
    the weights it marks are zeroed and the metric's prune is not called)."""

    ratio: float | Tensor
    details: dict[str, Any]
    mask: Tensor | None = None


class Refiner(Protocol):
    needs: frozenset[str]  # statistics it reads, gathered with the metric's in the block's statistics forward

    def __call__(self, linear: LinearToRefine) -> Refined: ...


class Allocator:
    """Base of every allocator: set ``name``, ``Params`` (and ``paper``, ``supports_nm``, ``reads``), implement ``plan``.

    ``__init__`` binds the allocator to a case; a subclass that checks the metric, or whose ``reads``
    depend on its keys, extends it and sets ``self.reads``.
    """

    name: ClassVar[str]
    Params: ClassVar[type]
    paper: ClassVar[str] = ""
    supports_nm: ClassVar[bool] = False  # an N:M pattern fixes every layer's ratio; only uniform honours it
    reads: Reads = Reads()

    def __init__(self, params: dict[str, Any], metric, metric_params: dict[str, Any]):
        self.params = params
        self.metric = metric  # a sparsebench.metrics.MetricSpec
        self.metric_params = metric_params

    @classmethod
    def make_params(cls, values: dict[str, Any], key: str = "allocator") -> dict[str, Any]:
        return make_params(cls.Params, values, key, "allocator", cls.name)

    def plan(self, ctx: AllocationContext) -> Allocation:
        raise NotImplementedError(f"allocator {self.name!r} has no plan")

    def refiner(self) -> Refiner | None:
        """Its per-linear step at prune time, or None."""
        return None


ALLOCATORS: Registry[type[Allocator]] = Registry("allocator", __name__)


def register_allocator(cls: type[Allocator]) -> type[Allocator]:
    """Class decorator: ``@register_allocator class OWL(Allocator): name = "owl" ...``."""
    ALLOCATORS.add(cls.name, cls)
    return cls
