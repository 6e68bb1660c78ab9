"""Allocation and prune time of metric + allocator pairs in one process, on one model, one after another.

    python benchmarks/bench_methods.py gpu --out FILE [--methods wanda:uniform sparsegpt:uniform multiflow:uniform \\
        wanda:dsnot sparsegpt:dsnot wanda:alpha wanda:trim:layerwise=alpha] [--nsamples 128] [--layers 32]
    python benchmarks/bench_methods.py cpu --out FILE      # the same on a small LLaMA on the CPU (a smoke run)

The GPU mode builds a model with LLaMA-2-7B's shapes and random fp16 weights (honest for time, never
for quality), calibrates on ``--nsamples`` x 2048 random tokens and, for each ``metric:allocator[:key=value,...]``
at ``--sparsity`` (0.7), restores the dense weights and times what a case's prune does
(``sparsebench.runner``): the allocator's dense or weight pass and allocation (``allocate_s``), then
the block walk with the allocator's prune-time refinement (``prune_s`` and its phases). A weight
pass (AlphaPruning's spectra) is computed once and reused by later methods, as the runner's cache
does for every case of a model. It prints each method's times next to Wanda's and writes them as
JSON (``benchmarks/estimate_grid.py --methods`` composes grid cases from them).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


DEFAULT_METHODS = ["wanda:uniform", "sparsegpt:uniform", "multiflow:uniform", "wanda:dsnot", "sparsegpt:dsnot", "wanda:alpha", "wanda:trim:layerwise=alpha"]


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device):
    _synchronize(device)
    start = time.perf_counter()
    result = fn()
    _synchronize(device)
    return result, time.perf_counter() - start


def _llama(layers: int, hidden: int, intermediate: int, heads: int, device: str, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, max_position_embeddings=4096,
    )
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    generator = torch.Generator(device=device).manual_seed(0)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.02, generator=generator) if parameter.dim() > 1 else parameter.data.fill_(1.0)
    model.eval()
    model.config.use_cache = False
    return model


def parse_method(text: str) -> tuple[str, str, dict]:
    metric, allocator, *rest = text.split(":")
    keys = {}
    for item in (rest[0].split(",") if rest else []):
        key, value = item.split("=", 1)
        keys[key] = value if not value.replace(".", "", 1).isdigit() else (float(value) if "." in value else int(value))
    return metric, allocator, keys


@torch.inference_mode()
def time_methods(model, adapter, ids, methods: list[str], sparsity: float, device: str, batch_size: int = 8, record=None) -> dict:
    """{method: times}; ``record(results)`` is called after each method (partial results survive a time limit)."""
    from sparsebench.allocators import ALLOCATORS
    from sparsebench.metrics import METRICS
    from sparsebench.layers import prunable_layers
    from sparsebench.blockwalk import Execution
    from sparsebench.prune import PrunePlan, dense_block_summaries, prune_model, weight_block_summaries
    from sparsebench.trials import BlockTrials

    original = {name: p.detach().cpu() for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name and "lm_head" not in name}
    layers = prunable_layers(model, adapter)
    weight_passes: dict = {}
    results = {}

    class Context:  # the AllocationContext of sparsebench.allocators, without the disk cache; weight passes shared by kind
        def __init__(self, kind):
            self.layers, self.sparsity, self.kind, self.reused = layers, sparsity, kind, False

        def dense_summaries(self, needs, summarize):
            return dense_block_summaries(model, adapter, ids, needs, summarize, Execution(device, False, batch_size))

        def weight_summaries(self, summarize):
            self.reused = self.kind in weight_passes
            if not self.reused:
                weight_passes[self.kind] = weight_block_summaries(model, adapter, summarize, Execution(device))
            return weight_passes[self.kind]

        def trials(self):
            return BlockTrials(model, adapter, PrunePlan(self.metric, self.metric_params, {}, None), ids, Execution(device, False, batch_size))

    for text in methods:
        metric_name, allocator_name, keys = parse_method(text)
        for name, parameter in model.named_parameters():
            if name in original:
                parameter.copy_(original[name])
        metric = METRICS.get(metric_name)
        metric_params = metric.make_params({})
        allocator_class = ALLOCATORS.get(allocator_name)
        params = allocator_class.make_params(keys)
        allocator = allocator_class(params, metric, metric_params)
        started = time.perf_counter()
        context = Context(params.get("layerwise", allocator_name))
        context.metric, context.metric_params = metric, metric_params
        ratios = allocator.plan(context).ratios
        reused = context.reused
        _synchronize(device)
        allocate_s = time.perf_counter() - started
        report, prune_s = _timed(lambda: prune_model(model, adapter, PrunePlan(metric, metric_params, ratios, None, allocator.refiner()), ids, Execution(device, False, batch_size)), device)
        swaps = sum(details.get("swaps", 0) for _, details in report.refined.values())
        results[text] = {
            "allocate_s": allocate_s, "weight_pass_reused": reused, "prune_s": prune_s, "phases": report.timings,
            "achieved": sum(r.zeros for r in report.layers) / sum(r.numel for r in report.layers),
        }
        if swaps:
            results[text]["dsnot_swaps"] = swaps
        phases = ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in report.timings.items())
        print(f"{text:<28} allocate {allocate_s:7.2f} s{' (weight pass reused)' if reused else ''}  prune {prune_s:7.2f} s ({phases})", flush=True)
        if record is not None:
            record(results)
    base = results.get("wanda:uniform")
    if base:
        for text, result in results.items():
            total = result["allocate_s"] + result["prune_s"]
            print(f"  {text:<28} allocation + prune {total:7.2f} s = {total / (base['allocate_s'] + base['prune_s']):.2f}x Wanda")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["cpu", "gpu"])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--nsamples", type=int, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from sparsebench.models.adapters import ADAPTERS

    if args.mode == "gpu":
        device, nsamples, seqlen, layers = "cuda", args.nsamples or 128, 2048, args.layers or 32
        model, seconds = _timed(lambda: _llama(layers, 4096, 11008, 32, device, torch.float16), device)
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; LLaMA-2-7B shapes, {layers} blocks, built in {seconds:.1f} s")
    else:
        device, nsamples, seqlen, layers = "cpu", args.nsamples or 8, 128, args.layers or 2  # 8: NeuroAL's default samples
        model = _llama(layers, 256, 512, 4, device, torch.float32)
    ids = torch.randint(0, 32000, (nsamples, seqlen), generator=torch.Generator().manual_seed(0))
    print(f"sparsity {args.sparsity}, calibration {nsamples} x {seqlen} random tokens", flush=True)
    billions = sum(p.numel() for p in model.parameters()) / 1e9
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def record(results):
        args.out.write_text(json.dumps({
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "blocks": layers, "parameters_billions": billions,
            "nsamples": nsamples, "seqlen": seqlen, "sparsity": args.sparsity, "methods": results,
        }, indent=1))

    time_methods(model, ADAPTERS["llama"], ids, args.methods, args.sparsity, device, record=record)


if __name__ == "__main__":
    main()
