"""The block-by-block pruning walk (the shared protocol of Wanda and SparseGPT).

For each decoder block in order: collect the calibration statistics of every prunable linear's
input from one forward of the block (inputs: the outputs of the already pruned previous block),
prune each linear with the metric, then run the pruned block to produce the next block's inputs.
Metrics that need no calibration data (magnitude) skip the forwards entirely, unless a
``Refinement`` (an allocator's per-linear step at prune time, TRIM) reads statistics.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sparsebench.allocators import PrunableLayer
from sparsebench.blockwalk import (
    BlockInputs, StopBlock, capture_block_inputs, check_finite, move_non_block_modules, run_block, run_block_for_hooks, synchronize,
)
from sparsebench.lowrank import Decomposition, install_decomposition
from sparsebench.masks import NMPattern, SparsityTarget
from sparsebench.metrics import MetricSpec
from sparsebench.models.adapters import FamilyAdapter
from sparsebench.sparsity import LayerSparsity, count_zeros, target_mean
from sparsebench.stats import LayerStats, StatsAccumulator

log = logging.getLogger(__name__)


@dataclass
class PruneReport:
    layers: list[LayerSparsity]
    timings: dict[str, float] = field(default_factory=dict)
    decompositions: dict[str, dict] = field(default_factory=dict)  # sparse-plus-low-rank metrics: info per layer
    refined: dict[str, tuple[Tensor, dict]] = field(default_factory=dict)  # per layer: (refined ratios, details)


@dataclass(frozen=True)
class Refinement:
    """A change of each linear's target just before it is pruned: ``refine(weight, stats, ratio) -> (ratio, details)``,
    or the linear's mask itself: ``mask(weight, stats, ratio, name) -> (mask, details)`` (True = prune; the metric's
    prune is then not called).

    ``needs``: the statistics it reads, gathered with the metric's in the block's statistics forward.
    """

    needs: frozenset[str]
    refine: Callable[[Tensor, LayerStats | None, float | Tensor], tuple[float | Tensor, dict]] | None = None
    mask: Callable[[Tensor, LayerStats | None, float | Tensor, str], tuple[Tensor, dict]] | None = None


def refinement_for(allocator, allocator_params: dict, metric: MetricSpec, metric_params: dict, adapter: FamilyAdapter) -> Refinement | None:
    """The allocator's per-linear step at prune time (TRIM's ratios, DSnoT's mask), from the metric's scores; None if it has none."""
    if allocator.refine_mask is not None:
        def mask(weight, stats, ratio, name):
            scores = metric.scores(weight, stats, **metric_params) if metric.scores is not None else None  # None: the allocator scores (DSnoT's SparseGPT saliency)
            return allocator.refine_mask(weight, scores, stats, ratio, adapter.linear_kind(name), **allocator_params)

        return Refinement(allocator.refine_needs, mask=mask)
    if allocator.refine_layer is None:
        return None

    def refine(weight, stats, ratio):
        scores = metric.scores(weight, stats, **metric_params)
        return allocator.refine_layer(weight, scores, stats, ratio, **allocator_params)

    return Refinement(allocator.refine_needs, refine=refine)


def prunable_layers(model, adapter: FamilyAdapter) -> list[PrunableLayer]:
    layers = []
    for index, block in enumerate(adapter.get_blocks(model)):
        for name, linear in adapter.get_linears(block).items():
            rows, cols = linear.weight.shape
            layers.append(PrunableLayer(f"{index}.{name}", index, rows, cols))
    return layers


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


def _prune_block_linears(block, adapter, metric, params, ratios, pattern, block_index, stats_by_group, device, records, decompositions, refinement=None, refined=None):
    for group in adapter.input_groups:
        stats = stats_by_group.get(group[0]) if stats_by_group else None
        for name in group:
            linear = block.get_submodule(name)
            weight = linear.weight.data
            ratio = ratios[f"{block_index}.{name}"]
            rows, cols = weight.shape
            work = weight.to(device)
            mask = None
            if refinement is not None:
                if refinement.mask is not None:
                    mask, details = refinement.mask(work, stats, ratio, name)
                else:
                    ratio, details = refinement.refine(work, stats, ratio)
                refined[f"{block_index}.{name}"] = (ratio, details)
            record = LayerSparsity(f"{block_index}.{name}", weight.numel(), rows, cols, target_mean(ratio), count_zeros(weight))
            if mask is not None:
                pruned = work.masked_fill(mask, 0)
            else:
                pruned = metric.prune(work, stats, SparsityTarget(ratio, pattern), **params)
            if isinstance(pruned, Decomposition):  # the linear becomes S + B A (sparsebench.lowrank)
                weight = install_decomposition(block, name, pruned).weight.data
                decompositions[record.name] = pruned.info
            else:
                weight.copy_(pruned.to(weight.device))
            record.zeros = count_zeros(weight)
            records.append(record)


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
def dense_block_summaries(
    model, adapter: FamilyAdapter, calibration_ids: Tensor, needs: frozenset[str], summarize, params: dict,
    device: str, offload: bool, batch_size: int, progress: bool = True,
) -> list:
    """One value per block from ``summarize(weights, stats, **params)`` over a pass of the dense model.

    Inputs are propagated through the unpruned blocks (as OWL's reference does); weights and
    statistics are given per linear name.
    """
    blocks = adapter.get_blocks(model)
    if offload:
        move_non_block_modules(model, blocks, device)
    inputs = capture_block_inputs(model, adapter, calibration_ids, device, batch_size)
    summaries = []
    for block in tqdm(blocks, desc="dense statistics", unit="block", disable=not progress):
        if offload:
            block.to(device)
        stats_by_group = collect_block_stats(block, adapter, inputs, needs, batch_size)
        weights = {name: block.get_submodule(name).weight.data for name in adapter.linear_names}
        stats = {name: stats_by_group[group[0]] for group in adapter.input_groups for name in group}
        summaries.append(summarize(weights, stats, **params))
        inputs.hidden = run_block(block, inputs, batch_size, out=inputs.hidden)
        check_finite(inputs.hidden, f"after dense block {len(summaries) - 1}")
        if offload:
            block.to("cpu")
    return summaries


@torch.inference_mode()
def weight_block_summaries(model, adapter: FamilyAdapter, summarize, params: dict, device: str, progress: bool = True) -> list:
    """One value per block from ``summarize(weights, None, **params)``, reading only the weights (AlphaPruning).

    Each block's weights are read on ``device`` (copied there one block at a time when offloaded).
    """
    summaries = []
    for block in tqdm(adapter.get_blocks(model), desc="weight statistics", unit="block", disable=not progress):
        weights = {name: block.get_submodule(name).weight.data.to(device) for name in adapter.linear_names}
        summaries.append(summarize(weights, None, **params))
        del weights
    return summaries


@torch.inference_mode()
def prune_model(
    model,
    adapter: FamilyAdapter,
    metric: MetricSpec,
    params: dict,
    ratios: dict[str, float | Tensor],
    pattern: NMPattern | None,
    calibration_ids: Tensor | None,
    device: str,
    offload: bool,
    batch_size: int,
    progress: bool = True,
    refinement: Refinement | None = None,
) -> PruneReport:
    """Prune every prunable linear of ``model`` in place; returns per-layer records and timings."""
    blocks = adapter.get_blocks(model)
    clock = _Clock(device)
    records: list[LayerSparsity] = []
    decompositions: dict[str, dict] = {}
    refined: dict[str, tuple[Tensor, dict]] = {}
    needs = metric.needs | (refinement.needs if refinement is not None else frozenset())
    inputs: BlockInputs | None = None
    if needs:
        if calibration_ids is None:
            raise ValueError(f"metric {metric.name!r} (or the allocator's refinement) needs calibration data")
        if offload:
            move_non_block_modules(model, blocks, device)
        with clock.phase("capture_s"):
            inputs = capture_block_inputs(model, adapter, calibration_ids, device, batch_size)
        check_finite(inputs.hidden, "in the inputs of the first block")
    for index, block in enumerate(tqdm(blocks, desc=f"prune ({metric.name})", unit="block", disable=not progress)):
        if offload:
            block.to(device)
        stats_by_group = None
        if inputs is not None:
            with clock.phase("statistics_forward_s"):
                stats_by_group = collect_block_stats(block, adapter, inputs, needs, batch_size)
        with clock.phase("solve_s"):
            _prune_block_linears(block, adapter, metric, params, ratios, pattern, index, stats_by_group, device, records, decompositions, refinement, refined)
        del stats_by_group
        if inputs is not None:
            with clock.phase("pruned_forward_s"):
                inputs.hidden = run_block(block, inputs, batch_size, out=inputs.hidden)
                check_finite(inputs.hidden, f"after pruned block {index}")
        if offload:
            block.to("cpu")
    return PruneReport(records, clock.totals, decompositions, refined)
