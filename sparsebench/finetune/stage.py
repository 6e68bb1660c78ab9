"""The fine-tuning stage of a case: LoRA recovery between the sparsity check and evaluation.

Training sequences are windows of ``seqlen`` tokens drawn from the chosen corpus split exactly as
calibration segments are (seeded, cached per tokenizer). The adapters train with the pruned
weights frozen; with ``merge`` they are folded into the weights under the pruning mask. The zeros of
every pruned linear are counted before and after, and a layer that lost zeros fails the case.
Returns the result document's ``finetune`` section.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from sparsebench.data.corpora import TextSource
from sparsebench.data.tokens import calibration_tokens
from sparsebench.errors import SparsityMismatchError
from sparsebench.finetune.lora import adapter_parameters, attach_lora, base_linear, merge_keeping_mask, target_names
from sparsebench.finetune.loop import TrainSettings, resolve_autocast, train
from sparsebench.finetune.spec import FinetuneSpec
from sparsebench.models.adapters import FamilyAdapter
from sparsebench.sparsity import count_zeros

if TYPE_CHECKING:
    from sparsebench.blockwalk import Execution
    from sparsebench.models.loading import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class FinetuneOutcome:
    section: dict  # the result document's ``finetune`` section
    zeros_after: dict[str, int]  # per pruned linear (``<block>.<linear>``), counted on the evaluated weights
    prior_peak_gpu: dict  # the case's GPU peaks before the training loop reset them (empty on a CPU)


def zeros_per_layer(model: nn.Module, adapter: FamilyAdapter) -> dict[str, int]:
    """Zero weights of every pruned linear (the frozen base weight under an adapter)."""
    return {
        f"{index}.{name}": count_zeros(base_linear(module).weight)
        for index, block in enumerate(adapter.get_blocks(model))
        for name, module in adapter.get_linears(block).items()
    }


def _micro_batches(tokens, batch_size: int):
    for start in range(0, tokens.shape[0], batch_size):
        yield tokens[start : start + batch_size]


def settings_of(spec: FinetuneSpec, autocast: str) -> TrainSettings:
    return TrainSettings(
        steps=spec.steps, learning_rate=spec.learning_rate, schedule=spec.schedule, warmup_steps=spec.warmup_steps,
        weight_decay=spec.weight_decay, max_grad_norm=spec.max_grad_norm, grad_accum=spec.grad_accum,
        autocast=autocast, gradient_checkpointing=spec.gradient_checkpointing, log_every=spec.log_every,
    )


def run_finetune(spec: FinetuneSpec, loaded: LoadedModel, source: TextSource, execution: Execution, cache_dir, fingerprint: str | None) -> FinetuneOutcome:
    """Fine-tune ``loaded.model`` in place with LoRA on ``execution.device``; returns the document section and the zeros after."""
    model, tokenizer, adapter = loaded.model, loaded.tokenizer, loaded.adapter
    device, progress = execution.device, execution.progress
    started = time.perf_counter()
    tokens = calibration_tokens(source, tokenizer, spec.sequences, spec.seqlen, spec.seed, cache_dir, fingerprint)
    data_s = time.perf_counter() - started
    zeros_before = zeros_per_layer(model, adapter)

    names = target_names(model, adapter, spec.target_modules)
    torch.manual_seed(spec.seed)  # the adapters' A initialisation and the dropout masks
    trainable = attach_lora(model, names, spec.rank, spec.alpha, spec.dropout)
    parameters = sum(p.numel() for p in model.parameters()) - trainable
    autocast = resolve_autocast(spec.autocast, device, next(model.parameters()).dtype)
    prior_peak = {}
    if device.startswith("cuda"):
        prior_peak = {"peak_gpu_allocated_bytes": torch.cuda.max_memory_allocated(device), "peak_gpu_reserved_bytes": torch.cuda.max_memory_reserved(device)}
    record = train(model, _micro_batches(tokens, spec.batch_size), settings_of(spec, autocast), device, progress)

    if spec.merge:
        merge_keeping_mask(model, names)
    zeros_after = zeros_per_layer(model, adapter)
    lost = {name: (zeros_before[name], zeros_after[name]) for name in zeros_before if zeros_after[name] < zeros_before[name]}
    if lost:
        name, (before, after) = next(iter(lost.items()))
        raise SparsityMismatchError(f"fine-tuning lost zeros in {len(lost)} layer(s); first: {name} had {before}, now {after}")
    kept = adapter_parameters(model)
    prunable = sum(base_linear(module).weight.numel() for block in adapter.get_blocks(model) for module in adapter.get_linears(block).values())
    losses = record.losses
    section = {
        "method": spec.method,
        "rank": spec.rank,
        "alpha": spec.alpha,
        "dropout": spec.dropout,
        "target_modules": [name for name in adapter.linear_names if any(target.endswith(f".{name}") for target in names)],
        "adapted_linears": len(names),
        "merged": spec.merge,
        "trainable_parameters": trainable,
        "trainable_share_of_model": trainable / parameters,
        "adapter_parameters_kept": kept,  # dense parameters the evaluated model carries besides its weights (0 after a merge)
        "adapter_parameters_kept_share_of_prunable": kept / prunable if prunable else 0.0,
        "data": source.describe(),
        "split": source.split,
        "sequences": spec.sequences,
        "seqlen": spec.seqlen,
        "batch_size": spec.batch_size,
        "grad_accum": spec.grad_accum,
        "steps": spec.steps,
        "tokens_seen": record.tokens_seen,
        "learning_rate": spec.learning_rate,
        "schedule": spec.schedule,
        "warmup_steps": spec.warmup_steps,
        "autocast": autocast,
        "gradient_checkpointing": spec.gradient_checkpointing,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_first_window": sum(losses[: spec.log_every]) / len(losses[: spec.log_every]),
        "loss_last_window": sum(losses[-spec.log_every :]) / len(losses[-spec.log_every :]),
        "loss_curve": record.curve(spec.log_every),
        "train_s": record.seconds,
        "data_s": data_s,
        "seconds_per_step": record.seconds / spec.steps,
        "tokens_per_second": record.tokens_seen / record.seconds if record.seconds else None,
        "peak_gpu_allocated_bytes": record.peak_gpu_allocated_bytes,
        "sparsity": {
            "zeros_before": sum(zeros_before.values()),
            "zeros_after": sum(zeros_after.values()),
            "prunable_parameters": prunable,
            "achieved_before": sum(zeros_before.values()) / prunable if prunable else 0.0,
            "achieved_after": sum(zeros_after.values()) / prunable if prunable else 0.0,
            "layers_with_more_zeros": sorted(name for name in zeros_before if zeros_after[name] > zeros_before[name]),
        },
    }
    log.info(
        "fine-tuned %d linears (%d trainable parameters) for %d steps, %d tokens in %.1f s: loss %.4f -> %.4f%s",
        len(names), trainable, spec.steps, record.tokens_seen, record.seconds, section["loss_first_window"],
        section["loss_last_window"], " (merged, mask re-applied)" if spec.merge else " (adapters kept separate)",
    )
    return FinetuneOutcome(section, zeros_after, prior_peak)
