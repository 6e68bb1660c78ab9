"""Trial prunes: how a candidate allocation changes the activations, measured without keeping it.

Allocators that choose among candidate ratio maps by looking at the pruned model (NeuroAL) call
``BlockTrials.run(ratios)``. One run walks the blocks in order on a few calibration sequences,
as the pruning walk does, and for each block:

1. one forward with the block's current (dense) weights collects each input's statistics
   (``||X_j||`` for the measurement, plus whatever the metric needs);
2. the block's linears are pruned with the case's metric at the candidate ratios (the same code
   as the real prune, ``sparsebench.prune``);
3. one forward of the pruned block on the same inputs measures ``||X_j||`` again and produces the
   next block's inputs (so later blocks see the outputs of the pruned earlier blocks);
4. the block's weights are restored.

So the "dense" norms of block b are those of dense weights on inputs that already went through
the pruned blocks 0..b-1, as in NeuroAL's reference (``get_neuroal_block``). The model is left as
it was. Forwards run in micro-batches of ``batch_size`` sequences; the first block's inputs are
captured once and reused by every run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from sparsebench.blockwalk import BlockInputs, Execution, first_block_inputs, walk_blocks
from sparsebench.lowrank import replace_submodule
from sparsebench.metrics import MetricSpec
from sparsebench.models.adapters import FamilyAdapter
from sparsebench.prune import PrunePlan, PruneReport, _prune_block_linears, collect_block_stats
from sparsebench.stats import INPUT_SQ_NORMS, LayerStats


@dataclass(frozen=True)
class InputNorms:
    """One input of a block, read by ``layers``: ``||X_j||_2`` per input feature j, before and after pruning the block."""

    layers: tuple[str, ...]  # the linears that read this input, e.g. ("3.self_attn.q_proj", "3.self_attn.k_proj", ...)
    dense: Tensor  # float32 on the CPU, [features]
    sparse: Tensor


def _norms(stats: LayerStats) -> Tensor:
    return stats.input_sq_norms.float().sqrt().cpu()


class BlockTrials:
    """Trial prunes of a model with one metric (``plan``: its ratios are those of each run) on a fixed set of
    calibration sequences."""

    def __init__(self, model, adapter: FamilyAdapter, plan: PrunePlan, calibration_ids: Tensor, run: Execution):
        self.model = model
        self.adapter = adapter
        self.plan = plan
        self.calibration_ids = calibration_ids
        self.run_as = run
        self._first_block_inputs: BlockInputs | None = None

    @property
    def metric(self) -> MetricSpec:
        return self.plan.metric

    @property
    def samples(self) -> int:
        return self.calibration_ids.shape[0]

    @property
    def metric_takes_row_ratios(self) -> bool:
        return self.metric.row_ratios

    def first(self, count: int) -> BlockTrials:
        """The same trials on the first ``count`` calibration sequences."""
        if not 0 < count <= self.samples:
            raise ValueError(f"cannot take the first {count} of {self.samples} calibration sequences")
        return BlockTrials(self.model, self.adapter, self.plan, self.calibration_ids[:count], self.run_as)

    def _inputs(self) -> BlockInputs:
        if self._first_block_inputs is None:
            self._first_block_inputs = first_block_inputs(self.model, self.adapter, self.calibration_ids, self.run_as)
        captured = self._first_block_inputs
        return BlockInputs(captured.hidden.clone(), captured.kwargs, captured.block_kwargs)

    @torch.inference_mode()
    def run(self, ratios: dict[str, float | Tensor], desc: str = "trial prune") -> list[list[InputNorms]]:
        """Input norms before and after pruning at ``ratios``: one list per block, one entry per input group in block order."""
        inputs = self._inputs()
        needs = self.metric.needs | {INPUT_SQ_NORMS}
        plan = dataclasses.replace(self.plan, ratios=ratios)
        batch_size = self.run_as.batch_size
        measured = []
        for index, block in walk_blocks(self.model, self.adapter, self.run_as, desc, inputs, stage="trial-pruned"):
            dense = collect_block_stats(block, self.adapter, inputs, needs, batch_size)
            linears = self.adapter.get_linears(block)
            saved = {name: linear.weight.data.clone() for name, linear in linears.items()}
            try:
                _prune_block_linears(block, self.adapter, plan, index, dense, self.run_as.device, PruneReport([]))
                sparse = collect_block_stats(block, self.adapter, inputs, frozenset({INPUT_SQ_NORMS}), batch_size, propagate=True)
            finally:  # restore the dense weights, and the dense linears where a decomposition replaced them
                for name, linear in linears.items():
                    if block.get_submodule(name) is not linear:
                        replace_submodule(block, name, linear)
                    linear.weight.data.copy_(saved[name])
            measured.append([
                InputNorms(tuple(f"{index}.{name}" for name in group), _norms(dense[group[0]]), _norms(sparse[group[0]]))
                for group in self.adapter.input_groups
            ])
            del dense, sparse, saved
        return measured
