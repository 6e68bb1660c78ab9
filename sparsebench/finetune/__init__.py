"""Recovery fine-tuning after pruning (``finetune=lora``): spec, LoRA layers, training loop, case stage."""

from sparsebench.finetune.spec import FinetuneSpec, validate_finetune

__all__ = ["FinetuneSpec", "validate_finetune"]
