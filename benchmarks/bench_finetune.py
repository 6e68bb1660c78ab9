"""Time and peak memory of LoRA recovery fine-tuning (``finetune=lora``) per 100 optimizer steps.

    python benchmarks/bench_finetune.py gpu                 # LLaMA-2-7B shapes, random fp16 weights, on a GPU
    python benchmarks/bench_finetune.py cpu --shape tiny    # a tiny LLaMA, to check the script here

No Hydra: the model is built from its config with random weights (honest for time and memory,
never for quality), pruned 2:4 by magnitude so that the mask-keeping merge can be checked on the
device, then trained with the library's own ``attach_lora`` and ``train`` (the code a case runs):
LoRA rank 8 on every pruned linear, AdamW, fp16 autocast with a gradient scaler for the fp16
model (what ``finetune.autocast=auto`` picks for LLaMA-2), on random token batches. For each
setting (batch x sequence length, activation checkpointing on/off) it prints the seconds per 100
steps (measured over ``--steps`` after ``--warmup`` steps), the ratio of one step to one plain
forward of the same batch, tokens per second, and the peak GPU memory; at the end it merges the
adapters under the mask and checks that every pruned weight is still zero.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sparsebench.finetune.lora import adapter_parameters, attach_lora, base_linear, merge_keeping_mask, target_names
from sparsebench.finetune.loop import TrainSettings, resolve_autocast, train
from sparsebench.models.adapters import adapter_for


def build_model(shape: str, layers: int, dtype: torch.dtype, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape == "llama-2-7b":
        config = LlamaConfig(
            vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
            num_key_value_heads=32, max_position_embeddings=4096,
        )
    else:
        from sparsebench.testing.tiny_models import TINY_CONFIGS

        config = TINY_CONFIGS["llama"]()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(previous)
    with torch.no_grad():
        for parameter in model.parameters():  # the same scale as the default init, without its slow per-module calls
            parameter.normal_(0, 0.02) if parameter.dim() > 1 else parameter.fill_(1.0)
    model.eval()
    model.config.use_cache = False
    return model


@torch.no_grad()
def prune_2of4(model, adapter) -> int:
    """Magnitude 2:4 on every pruned linear (keeps the 2 largest of every 4 inputs); returns the zeros."""
    zeros = 0
    for block in adapter.get_blocks(model):
        for linear in adapter.get_linears(block).values():
            weight = linear.weight
            groups = weight.view(weight.shape[0], -1, 4)
            keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().topk(2, dim=-1).indices, True)
            groups.mul_(keep)
            zeros += int((weight == 0).sum())
    return zeros


def zeros_of(model, adapter) -> int:
    return sum(int((base_linear(m).weight == 0).sum()) for b in adapter.get_blocks(model) for m in adapter.get_linears(b).values())


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


@torch.no_grad()
def forward_seconds(model, batch: torch.Tensor, device: str, repeats: int = 3) -> float:
    model(input_ids=batch)  # warm
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        model(input_ids=batch)
    synchronize(device)
    return (time.perf_counter() - started) / repeats


def measure(model, batch_size: int, seqlen: int, checkpointing: bool, steps: int, warmup: int, autocast: str, device: str) -> dict:
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)

    def batches(count):
        for _ in range(count):
            yield torch.randint(0, vocab, (batch_size, seqlen), generator=generator)

    settings = dict(learning_rate=1e-4, schedule="linear", autocast=autocast, gradient_checkpointing=checkpointing, log_every=10)
    train(model, batches(warmup), TrainSettings(steps=warmup, **settings), device, progress=False)
    record = train(model, batches(steps), TrainSettings(steps=steps, **settings), device, progress=False)
    batch = torch.randint(0, vocab, (batch_size, seqlen), generator=generator).to(device)
    with torch.autocast(device.split(":")[0], dtype=torch.float16 if autocast == "float16" else torch.bfloat16, enabled=autocast != "none"):
        forward = forward_seconds(model, batch, device)
    step = record.seconds / steps
    return {
        "batch": batch_size, "seqlen": seqlen, "activation_checkpointing": checkpointing, "steps_measured": steps,
        "seconds_per_100_steps": 100 * step, "seconds_per_step": step, "tokens_per_second": record.tokens_seen / record.seconds,
        "forward_seconds": forward, "step_over_forward": step / forward,
        "peak_gpu_gib": record.peak_gpu_allocated_bytes / 2**30 if record.peak_gpu_allocated_bytes else None,
        "loss_first": record.losses[0], "loss_last": record.losses[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["gpu", "cpu"])
    parser.add_argument("--shape", choices=["llama-2-7b", "tiny"], default="llama-2-7b")
    parser.add_argument("--layers", type=int, default=32, help="decoder blocks (LLaMA-2-7B has 32)")
    parser.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--short-steps", type=int, default=20, help="steps measured for the settings after the first")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=["1x2048:ckpt", "1x2048:nockpt", "4x2048:ckpt"],
                        help="BATCHxSEQLEN:ckpt|nockpt; the first is measured over --steps, the others over --short-steps")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args()

    device = "cuda" if args.mode == "gpu" else "cpu"
    dtype = getattr(torch, args.dtype) if device == "cuda" else torch.float32
    started = time.perf_counter()
    model = build_model(args.shape, args.layers, dtype, device)
    adapter = adapter_for("llama", "llama")
    zeros_pruned = prune_2of4(model, adapter)
    block0 = {name: linear.weight != 0 for name, linear in adapter.get_linears(adapter.get_blocks(model)[0]).items()}
    names = target_names(model, adapter, None)
    torch.manual_seed(0)
    trainable = attach_lora(model, names, rank=8, alpha=16, dropout=0.05)
    autocast = resolve_autocast("auto", device, dtype)
    header = {
        "shape": args.shape, "layers": args.layers, "dtype": str(dtype).removeprefix("torch."), "autocast": autocast,
        "parameters": sum(p.numel() for p in model.parameters()) - trainable, "lora_rank": 8, "adapted_linears": len(names),
        "trainable_parameters": trainable, "build_s": time.perf_counter() - started,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
    }
    print(json.dumps(header), flush=True)
    results = []
    for index, setting in enumerate(args.settings):
        shape, _, mode = setting.partition(":")
        batch_size, seqlen = (int(part) for part in shape.split("x"))
        steps = args.steps if index == 0 else args.short_steps
        try:
            result = measure(model, batch_size, seqlen, mode == "ckpt", steps, args.warmup, autocast, device)
        except torch.OutOfMemoryError as error:
            result = {"setting": setting, "error": f"out of memory: {str(error).splitlines()[0]}"}
            torch.cuda.empty_cache()
        results.append(result)
        print(json.dumps(result), flush=True)

    synchronize(device)
    merge_started = time.perf_counter()
    merge_keeping_mask(model, names)
    synchronize(device)
    zeros_merged = zeros_of(model, adapter)
    linears = adapter.get_linears(adapter.get_blocks(model)[0])
    pruned_nonzero = sum(int((linears[name].weight[~kept] != 0).sum()) for name, kept in block0.items())
    merge = {"merge_s": time.perf_counter() - merge_started, "zeros_after_2of4": zeros_pruned, "zeros_after_merge": zeros_merged,
             "block0_pruned_weights_nonzero_after_merge": pruned_nonzero, "adapter_parameters_left": adapter_parameters(model)}
    print(json.dumps(merge), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps({"header": header, "results": results, "merge": merge}, indent=2))


if __name__ == "__main__":
    main()
