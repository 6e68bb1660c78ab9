"""The allocation stage: the allocator's plan for the case, with lazy, cached access to the model.

``allocate(spec, loaded, calibration_ids, facts)`` builds the ``AllocationContext`` an
allocator's ``plan`` reads (``sparsebench.allocators``): a dense pass over the calibration data and
a pass over the weights, each run only when asked for and cached on disk under what it depends on
(``sparsebench.identity``: shared by every case of that model), and trial prunes with the case's metric.
It returns an ``AllocationResult``: the ratios and the result document's ``allocation`` section.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from sparsebench.allocators import Allocation
from sparsebench.disk_cache import cached
from sparsebench.identity import Facts, identity
from sparsebench.layers import PrunableLayer, prunable_layers
from sparsebench.prune import PrunePlan, dense_block_summaries, weight_block_summaries
from sparsebench.sparsity import target_mean
from sparsebench.trials import BlockTrials


@dataclass
class AllocationResult:
    ratios: dict[str, float | Tensor]
    section: dict[str, Any]  # the result document's "allocation"
    seconds: float
    dense_summaries: str | None = None  # "computed" or "reused from the cache"; None: no pass ran


@dataclass
class _CaseContext:
    """The ``AllocationContext`` of one case (see ``sparsebench.allocators``)."""

    spec: Any  # the CaseSpec
    loaded: Any  # the LoadedModel
    calibration_ids: Tensor | None
    facts: Facts  # the device type, tokenizer and BOS token, for the cache keys
    layers: list[PrunableLayer]
    sparsity: float
    block_summaries: list | None = None
    dense_summaries_origin: str | None = None
    _trials: BlockTrials | None = field(default=None, repr=False)

    def dense_summaries(self, needs: frozenset[str], summarize) -> list:
        spec, loaded = self.spec, self.loaded
        declared = spec.allocator.reads.dense
        if not needs <= declared:
            raise RuntimeError(f"allocator {spec.allocator.name!r} asked for {sorted(needs)} of a dense pass but declared only {sorted(declared)} in its reads")
        summaries, shared = cached(
            spec.cache_dir, "dense", f"summaries-{spec.allocator.name}", identity("dense", spec.resolved, self.facts),
            lambda: dense_block_summaries(loaded.model, loaded.adapter, self.calibration_ids, needs, summarize, spec.execution(spec.calibration.batch_size)),
            spec.claims.heartbeat_s, spec.claims.stale_after_s,  # cases running at once wait for the one computing it
        )
        return self._record(summaries, shared)

    def weight_summaries(self, summarize) -> list:
        spec, loaded = self.spec, self.loaded
        summaries, shared = cached(
            spec.cache_dir, "dense", f"weight-summaries-{spec.allocator.name}", identity("weights", spec.resolved, self.facts),
            lambda: weight_block_summaries(loaded.model, loaded.adapter, summarize, spec.execution(spec.calibration.batch_size)),
            spec.claims.heartbeat_s, spec.claims.stale_after_s,
        )
        return self._record(summaries, shared)

    def trials(self) -> BlockTrials:
        if not self.spec.allocator.reads.trials:
            raise RuntimeError(f"allocator {self.spec.allocator.name!r} asked for trial prunes but did not declare them in its reads")
        if self._trials is None:
            spec, loaded = self.spec, self.loaded
            plan = PrunePlan(spec.metric, spec.metric_params, {}, spec.pattern)  # each trial run sets the ratios
            self._trials = BlockTrials(loaded.model, loaded.adapter, plan, self.calibration_ids, spec.execution(spec.calibration.batch_size))
        return self._trials

    def _record(self, summaries: list, shared: bool) -> list:
        self.block_summaries = summaries
        self.dense_summaries_origin = "reused from the cache" if shared else "computed"
        return summaries


def allocate(spec, loaded, calibration_ids: Tensor | None, facts: Facts) -> AllocationResult:
    """Each layer's target ratio from the case's allocator, and the document's ``allocation`` section."""
    started = time.perf_counter()
    layers = prunable_layers(loaded.model, loaded.adapter)
    ctx = _CaseContext(spec, loaded, calibration_ids, facts, layers, spec.ratio)
    allocation = spec.allocator.plan(ctx)
    if not isinstance(allocation, Allocation):
        raise TypeError(f"allocator {spec.allocator.name!r}: plan returned {type(allocation).__name__}, not an Allocation")
    section = {
        "allocator": spec.allocator.name, "block_summaries": ctx.block_summaries, "block_ratios": block_ratios(layers, allocation.ratios),
        "layer_ratios": layer_ratios(allocation.ratios), **allocation.details,
    }
    return AllocationResult(allocation.ratios, section, time.perf_counter() - started, ctx.dense_summaries_origin)


def with_refinement(section: dict, refined: dict[str, tuple[Tensor | float, dict]]) -> dict:
    """The ``allocation`` section once a refiner changed the ratios at prune time: the ratios pruned are the
    refined ones, the allocator's own stay as ``layerwise_ratios``."""
    if not refined:
        return section
    return {
        **section, "layerwise_ratios": section["layer_ratios"],
        "layer_ratios": layer_ratios({name: ratio for name, (ratio, _) in refined.items()}),
        "refinement": {name: details for name, (_, details) in refined.items()},
    }


def block_ratios(layers: list[PrunableLayer], ratios) -> list[float]:
    """Mean target ratio of each block (per-row ratios averaged), for the result document."""
    per_block: dict[int, list[float]] = {}
    for layer in layers:
        per_block.setdefault(layer.block, []).append(target_mean(ratios[layer.name]))
    return [sum(values) / len(values) for _, values in sorted(per_block.items())]


def layer_ratios(ratios) -> dict:
    """Each layer's target ratio; per-row ratios as their mean, min and max."""
    summary = {}
    for name, ratio in ratios.items():
        if isinstance(ratio, Tensor):
            summary[name] = {"mean": target_mean(ratio), "min": float(ratio.min()), "max": float(ratio.max())}
        else:
            summary[name] = float(ratio)
    return summary
