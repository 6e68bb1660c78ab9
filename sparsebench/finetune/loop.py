"""A plain causal-LM training loop for the trainable (adapter) parameters of a model.

AdamW, a warmup-then-decay schedule (transformers' ``get_scheduler``), gradient accumulation,
gradient clipping, optional autocast (fp16 with a gradient scaler) and activation checkpointing.
The loss is the model's own next-token cross-entropy (``labels = input_ids``). Nothing here reads a
config object: the arguments are plain values.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    learning_rate: float
    schedule: str = "linear"  # constant | linear | cosine
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    grad_accum: int = 1
    autocast: str = "none"  # none | bfloat16 | float16 (resolved: see resolve_autocast)
    gradient_checkpointing: bool = False
    log_every: int = 10


@dataclass
class TrainRecord:
    losses: list[float] = field(default_factory=list)  # one per optimizer step: the mean over its micro-batches
    learning_rates: list[float] = field(default_factory=list)
    tokens_seen: int = 0
    seconds: float = 0.0
    peak_gpu_allocated_bytes: int | None = None

    def curve(self, every: int) -> dict:
        """The loss curve summarised: the mean loss of each window of ``every`` steps, at the window's last step."""
        steps, means = [], []
        for end in range(every, len(self.losses) + every, every):
            window = self.losses[end - every : end]
            if window:
                steps.append(min(end, len(self.losses)))
                means.append(sum(window) / len(window))
        return {"every": every, "step": steps, "loss": means}


def resolve_autocast(name: str, device: str, model_dtype: torch.dtype) -> str:
    """``auto``: none on a CPU; on a GPU the model's half type, or bfloat16 for a float32 model."""
    if name != "auto":
        return name
    if not device.startswith("cuda"):
        return "none"
    if model_dtype == torch.float16:
        return "float16"
    return "bfloat16"


def _scheduler(optimizer, settings: TrainSettings):
    from transformers import get_scheduler

    name = "constant_with_warmup" if settings.schedule == "constant" else settings.schedule
    return get_scheduler(name, optimizer, num_warmup_steps=settings.warmup_steps, num_training_steps=settings.steps)


def _enable_checkpointing(model: nn.Module) -> None:
    # transformers 5 renamed gradient_checkpointing_enable (kept as a deprecated alias)
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _disable_checkpointing(model: nn.Module) -> None:
    disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
    disable()


def train(
    model: nn.Module,
    micro_batches: Iterable[Tensor],
    settings: TrainSettings,
    device: str,
    progress: bool = True,
) -> TrainRecord:
    """Train ``model``'s parameters that require grad on ``micro_batches`` ([b, seqlen] token ids).

    ``micro_batches`` yields ``steps * grad_accum`` batches. The model is left in eval mode.
    """
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters")
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = _scheduler(optimizer, settings)
    dtype = AUTOCAST_DTYPES.get(settings.autocast)
    device_type = device.split(":")[0]
    scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None
    record = TrainRecord()
    on_gpu = device.startswith("cuda")
    if on_gpu:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    if settings.gradient_checkpointing:
        _enable_checkpointing(model)
    model.train()
    batches = iter(micro_batches)
    bar = tqdm(range(settings.steps), desc="finetune (lora)", unit="step", disable=not progress)
    started = time.perf_counter()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for _ in bar:
                step_loss = 0.0
                for _ in range(settings.grad_accum):
                    input_ids = next(batches).to(device)
                    with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
                        loss = model(input_ids=input_ids, labels=input_ids).loss
                    scaled = loss / settings.grad_accum
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    step_loss += loss.item() / settings.grad_accum
                    record.tokens_seen += input_ids.numel()
                if not math.isfinite(step_loss):
                    raise FloatingPointError(f"fine-tuning loss is {step_loss} at step {len(record.losses) + 1}; lower finetune.learning_rate")
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if settings.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
                record.learning_rates.append(scheduler.get_last_lr()[0])
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                record.losses.append(step_loss)
                window = record.losses[-settings.log_every :]
                bar.set_postfix(loss=f"{sum(window) / len(window):.4f}")
                if len(record.losses) % settings.log_every == 0:
                    log.debug("step %d: loss %.4f", len(record.losses), sum(window) / len(window))
    finally:
        model.eval()
        if settings.gradient_checkpointing:
            _disable_checkpointing(model)
        if on_gpu:
            torch.cuda.synchronize(device)
        record.seconds = time.perf_counter() - started
    if on_gpu:
        record.peak_gpu_allocated_bytes = torch.cuda.max_memory_allocated(device)
    return record
