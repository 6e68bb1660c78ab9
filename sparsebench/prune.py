"""The block-by-block pruning walk (the shared protocol of Wanda and SparseGPT).

For each decoder block in order: collect the calibration statistics of every prunable linear's
input from one forward of the block (inputs: the outputs of the already pruned previous block),
prune each linear with the metric, then run the pruned block to produce the next block's inputs.
Metrics that need no calibration data (magnitude) skip the forwards entirely, unless a
``Refiner`` (an allocator's per-linear step at prune time, TRIM, DSnoT) reads statistics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sparsebench.allocators import LinearToRefine, Refiner
from sparsebench.blockwalk import (
    BlockInputs, Execution, StopBlock, first_block_inputs, run_block, run_block_for_hooks, synchronize, walk_blocks,
)
from sparsebench.lowrank import Decomposition, install_decomposition
from sparsebench.masks import NMPattern, SparsityTarget
from sparsebench.metrics import MetricSpec
from sparsebench.models.adapters import FamilyAdapter
from sparsebench.sparsity import LayerSparsity, count_zeros, target_mean
from sparsebench.stats import LayerStats, StatsAccumulator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrunePlan:
    """What each linear is pruned with: the metric and its keys, the linear's ratio, the N:M pattern, and the
    allocator's refiner (its step just before each linear is pruned), if it has one."""

    metric: MetricSpec
    params: dict
    ratios: dict[str, float | Tensor]
    pattern: NMPattern | None = None
    refiner: Refiner | None = None

    @property
    def needs(self) -> frozenset[str]:
        """The statistics of each input the block's statistics forward gathers."""
        return self.metric.needs | (self.refiner.needs if self.refiner is not None else frozenset())


@dataclass
class PruneReport:
    layers: list[LayerSparsity]
    timings: dict[str, float] = field(default_factory=dict)
    decompositions: dict[str, dict] = field(default_factory=dict)  # sparse-plus-low-rank metrics: info per layer
    refined: dict[str, tuple[Tensor, dict]] = field(default_factory=dict)  # per layer: (refined ratios, details)


class _Clock:
    """Adds up wall time per phase, synchronising the GPU so that asynchronous work is counted."""

    def __init__(self, device):
        self.device = device
        self.totals: dict[str, float] = {}

    def phase(self, name: str):
        clock = self

        class _Phase:
            def __enter__(self):
                synchronize(clock.device)
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                synchronize(clock.device)
                clock.totals[name] = clock.totals.get(name, 0.0) + time.perf_counter() - self.start

        return _Phase()


def _prune_block_linears(block, adapter: FamilyAdapter, plan: PrunePlan, block_index: int, stats_by_group: dict | None, device, report: PruneReport) -> None:
    """Prune every linear of one block with ``plan``, adding each linear's record to ``report``."""
    for group in adapter.input_groups:
        stats = stats_by_group.get(group[0]) if stats_by_group else None
        for name in group:
            linear = block.get_submodule(name)
            weight = linear.weight.data
            ratio = plan.ratios[f"{block_index}.{name}"]
            rows, cols = weight.shape
            work = weight.to(device)
            mask = None
            if plan.refiner is not None:
                answer = plan.refiner(LinearToRefine(f"{block_index}.{name}", adapter.linear_kind(name), work, stats, ratio))
                ratio, mask = answer.ratio, answer.mask
                report.refined[f"{block_index}.{name}"] = (ratio, answer.details)
            record = LayerSparsity(f"{block_index}.{name}", weight.numel(), rows, cols, target_mean(ratio), count_zeros(weight))
            if mask is not None:
                pruned = work.masked_fill(mask, 0)
            else:
                pruned = plan.metric.prune(work, stats, SparsityTarget(ratio, plan.pattern), **plan.params)
            if isinstance(pruned, Decomposition):  # the linear becomes S + B A (sparsebench.lowrank)
                weight = install_decomposition(block, name, pruned).weight.data
                report.decompositions[record.name] = pruned.info
            else:
                weight.copy_(pruned.to(weight.device))
            record.zeros = count_zeros(weight)
            report.layers.append(record)


def collect_block_stats(
    block, adapter: FamilyAdapter, inputs: BlockInputs, needs: frozenset[str], batch_size: int, propagate: bool = False
) -> dict:
    """Statistics of each input group's input over one forward of the block: {first linear: LayerStats}.

    With ``propagate`` the same forward also replaces ``inputs.hidden`` by the block's outputs.
    Without it, each batch's forward ends as soon as every input group has been observed: the
    last linear (the MLP's down projection in most families) and the residual after it would only
    compute outputs that are dropped, about a fifth of a LLaMA block's arithmetic.
    """
    accumulators = {group[0]: StatsAccumulator(needs, seqlen=inputs.hidden.shape[1]) for group in adapter.input_groups}
    observed: set[str] = set()  # input groups seen in the current batch

    def observe(first: str, inputs_of_group: Tensor) -> None:
        accumulators[first].add(inputs_of_group)
        if propagate:
            return
        observed.add(first)
        if len(observed) == len(accumulators):
            observed.clear()
            raise StopBlock

    handles = [
        block.get_submodule(first).register_forward_pre_hook(lambda module, args, first=first: observe(first, args[0]))
        for first in accumulators
    ]
    try:
        if propagate:
            inputs.hidden = run_block(block, inputs, batch_size, out=inputs.hidden)
        else:
            run_block_for_hooks(block, inputs, batch_size)
    finally:
        for handle in handles:
            handle.remove()
    if observed:
        raise RuntimeError(f"a block forward observed only {sorted(observed)} of its input groups ({adapter.name} adapter)")
    return {first: acc.stats for first, acc in accumulators.items()}


@torch.inference_mode()
def dense_block_summaries(model, adapter: FamilyAdapter, calibration_ids: Tensor, needs: frozenset[str], summarize, run: Execution) -> list:
    """One value per block from ``summarize(weights, stats)`` over a pass of the dense model.

    Inputs are propagated through the unpruned blocks (as OWL's reference does); weights and
    statistics are given per linear name.
    """
    inputs = first_block_inputs(model, adapter, calibration_ids, run)
    summaries = []
    for _, block in walk_blocks(model, adapter, run, "dense statistics", inputs, stage="dense"):
        stats_by_group = collect_block_stats(block, adapter, inputs, needs, run.batch_size)
        weights = {name: block.get_submodule(name).weight.data for name in adapter.linear_names}
        stats = {name: stats_by_group[group[0]] for group in adapter.input_groups for name in group}
        summaries.append(summarize(weights, stats))
        inputs.hidden = run_block(block, inputs, run.batch_size, out=inputs.hidden)
    return summaries


@torch.inference_mode()
def weight_block_summaries(model, adapter: FamilyAdapter, summarize, run: Execution) -> list:
    """One value per block from ``summarize(weights)``, reading only the weights (AlphaPruning).

    Each block's weights are read on the device (copied there one block at a time when offloaded).
    """
    summaries = []
    for _, block in walk_blocks(model, adapter, Execution(run.device, progress=run.progress), "weight statistics"):
        weights = {name: block.get_submodule(name).weight.data.to(run.device) for name in adapter.linear_names}
        summaries.append(summarize(weights))
        del weights
    return summaries


@torch.inference_mode()
def prune_model(model, adapter: FamilyAdapter, plan: PrunePlan, calibration_ids: Tensor | None, run: Execution) -> PruneReport:
    """Prune every prunable linear of ``model`` in place; returns per-layer records and timings."""
    clock = _Clock(run.device)
    report = PruneReport([])
    needs = plan.needs
    inputs: BlockInputs | None = None
    if needs:
        if calibration_ids is None:
            raise ValueError(f"metric {plan.metric.name!r} (or the allocator's refiner) needs calibration data")
        with clock.phase("capture_s"):
            inputs = first_block_inputs(model, adapter, calibration_ids, run)
    for index, block in walk_blocks(model, adapter, run, f"prune ({plan.metric.name})", inputs, stage="pruned"):
        stats_by_group = None
        if inputs is not None:
            with clock.phase("statistics_forward_s"):
                stats_by_group = collect_block_stats(block, adapter, inputs, needs, run.batch_size)
        with clock.phase("solve_s"):
            _prune_block_linears(block, adapter, plan, index, stats_by_group, run.device, report)
        del stats_by_group
        if inputs is not None:
            with clock.phase("pruned_forward_s"):
                inputs.hidden = run_block(block, inputs, run.batch_size, out=inputs.hidden)
    report.timings = clock.totals
    return report
