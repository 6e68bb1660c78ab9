"""LoRA adapters on the pruned linears (through peft), and their mask-keeping merge.

LoRA (Hu et al., arXiv 2106.09685, eq. 3): a frozen weight W gets a trainable rank-r update,
``h = W x + (alpha / r) B A x`` with A [r, in] (random init) and B [out, r] (zero init), so the
model starts exactly where pruning left it. peft's ``LoraConfig`` / ``inject_adapter_in_model``
builds the layers; the modules keep their names and their frozen weight is ``base_layer.weight``.

Merging (our addition for sparsity): ``W <- (W + (alpha / r) B A) ⊙ M`` with M = (W != 0), the
pruning mask read from the frozen weight itself, then the adapter module is replaced by its base
linear, so the merged model has exactly the pruned positions at zero and no extra parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sparsebench.finetune.spec import matches
from sparsebench.lowrank import replace_submodule
from sparsebench.models.adapters import FamilyAdapter

ADAPTER_NAME = "default"


def target_names(model: nn.Module, adapter: FamilyAdapter, targets: tuple[str, ...] | None) -> list[str]:
    """Full module paths of the pruned linears that get adapters (all of them when ``targets`` is None)."""
    chosen = [name for name in adapter.linear_names if targets is None or any(matches(t, name) for t in targets)]
    count = len(adapter.get_blocks(model))
    return [f"{adapter.blocks}.{index}.{name}" for index in range(count) for name in chosen]


def attach_lora(model: nn.Module, names: list[str], rank: int, alpha: float, dropout: float) -> int:
    """Inject LoRA layers into ``names`` in place; freeze everything else. Returns the trainable parameter count."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(names), bias="none")
    with torch.inference_mode(False):
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    trainable = 0
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(".lora_" in name)
        if parameter.requires_grad:
            # float32 adapters (mixed precision): half-precision weights would lose the small updates,
            # and a gradient scaler cannot unscale fp16 gradients
            parameter.data = parameter.data.float()
            trainable += parameter.numel()
    return trainable


def base_linear(module: nn.Module) -> nn.Module:
    """The frozen linear under a LoRA layer (or the module itself)."""
    return getattr(module, "base_layer", module)


def delta_weight(layer: nn.Module) -> Tensor:
    """``(alpha / r) B A`` of a LoRA layer, in float32."""
    down = layer.lora_A[ADAPTER_NAME].weight.float()
    up = layer.lora_B[ADAPTER_NAME].weight.float()
    return (up @ down) * layer.scaling[ADAPTER_NAME]


@torch.no_grad()
def merge_keeping_mask(model: nn.Module, names: list[str]) -> None:
    """Merge each adapter into its weight, zero the pruned positions again, and drop the adapter modules."""
    for name in names:
        layer = model.get_submodule(name)
        base = base_linear(layer)
        weight = base.weight
        mask = weight != 0
        merged = (weight.float() + delta_weight(layer).to(weight.device)) * mask
        weight.copy_(merged.to(weight.dtype))
        replace_submodule(model, name, base)


def adapter_parameters(model: nn.Module) -> int:
    """Parameters of the LoRA modules still in the model (0 after a merge)."""
    return sum(p.numel() for name, p in model.named_parameters() if ".lora_" in name)
