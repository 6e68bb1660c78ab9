"""Per-phase time and peak memory of one pruning case.

    python benchmarks/bench_case.py cpu            # real SmolLM2-135M on this CPU, through the CLI's runner
    python benchmarks/bench_case.py gpu            # LLaMA-2-7B-shaped random weights on a GPU
    python benchmarks/bench_case.py gpu --metrics sparsegpt --sparsity 0.5 2:4   # SparseGPT unstructured and 2:4

The GPU mode builds a model with LLaMA-2-7B's shapes and random fp16 weights (honest for timing,
never for quality), calibrates on 128 x 2048 random tokens, and prints for Wanda and SparseGPT:
capture, statistics forward, solve, pruned forward, perplexity time, and peak GPU memory, next to
the floor of one plain forward pass over the calibration tokens. It also times the reference
SparseGPT algorithm (a column-by-column transcription of IST-DASLab/sparsegpt,
sparsebench/testing/reference_impls.py) on the seven layers of one block against ours on the same inputs, and
compares their masks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _gib(value):
    return f"{value / 2**30:.2f} GiB" if value else "n/a"


def cpu_case(args) -> None:
    from sparsebench.testing.config import compose_config, local_data_dir
    from sparsebench.config import validate
    from sparsebench.runner import run_case

    for metric in args.metrics:
        overrides = [
            "model=smollm2-135m-q4", f"metric={metric}", f"data.wikitext2={local_data_dir() / 'wikitext2-tok'}",
            "calibration.dataset=wikitext2", "calibration.split=validation", f"calibration.nsamples={args.nsamples}",
            f"calibration.seqlen={args.seqlen}", "eval.ppl.seqlen=512", "eval.ppl.max_segments=16", "device=cpu",
            "progress=false", "rerun=true", f"results_dir={args.results_dir}",
        ]
        document = run_case(validate(compose_config(overrides)))
        timings = {k: round(v, 2) for k, v in document["timings"].items()}
        print(f"[cpu] smollm2-135m-q4 {metric} 50% ({args.nsamples} x {args.seqlen} calibration): ppl {document['metrics']['ppl']['wikitext2']['ppl']:.2f}")
        print(f"      timings (s): {json.dumps(timings)}")
        print(f"      peak CPU RSS: {_gib(document['memory']['peak_cpu_rss_bytes'])}")


def _seven_b_model(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=4096,
    )
    torch.set_default_dtype(torch.float16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    for parameter in model.parameters():  # the default init is slow to call per module; this is the same scale
        parameter.data.normal_(0, 0.02) if parameter.dim() > 1 else parameter.data.fill_(1.0)
    model.eval()
    model.config.use_cache = False
    return model


def _timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return result, time.perf_counter() - start


@torch.inference_mode()
def reference_comparison(model, adapter, ids) -> None:
    """Reference SparseGPT vs ours on the seven linears of block 0 (same Hessians, float32)."""
    from sparsebench.testing.reference_impls import sparsegpt_column_by_column
    from sparsebench.blockwalk import capture_block_inputs, run_block_for_hooks
    from sparsebench.masks import SparsityTarget
    from sparsebench.metrics import METRICS
    from sparsebench.stats import HESSIAN, StatsAccumulator

    block = adapter.get_blocks(model)[0]
    inputs = capture_block_inputs(model, adapter, ids, "cuda", 8)
    accumulators = {group[0]: StatsAccumulator(frozenset({HESSIAN})) for group in adapter.input_groups}
    handles = [block.get_submodule(n).register_forward_pre_hook(lambda m, a, acc=acc: acc.add(a[0])) for n, acc in accumulators.items()]
    run_block_for_hooks(block, inputs, 8)
    for handle in handles:
        handle.remove()
    ours_total = reference_total = 0.0
    mismatches = total = 0
    for group in adapter.input_groups:
        hessian = accumulators[group[0]].stats.hessian
        for name in group:
            weight = block.get_submodule(name).weight.data
            ours, seconds = _timed(lambda: METRICS.get("sparsegpt").prune(weight, accumulators[group[0]].stats, SparsityTarget(0.5)))
            ours_total += seconds
            reference, seconds = _timed(lambda: sparsegpt_column_by_column(weight.float(), hessian, 0.5))
            reference_total += seconds
            mismatches += int(((ours == 0) != (reference == 0)).sum())
            total += weight.numel()
    print(f"[gpu] SparseGPT on block 0's 7 linears (50%): reference column loop {reference_total:.2f} s, ours {ours_total:.2f} s "
          f"-> {reference_total / ours_total:.1f}x; masks differ in {mismatches} of {total} weights ({mismatches / total:.2e}, float32 rounding)")
    print(f"      extrapolated to 32 blocks: reference {32 * reference_total:.0f} s, ours {32 * ours_total:.0f} s (solve only)")


@torch.inference_mode()
def _restore(model, original: dict) -> None:
    """Put the dense weights back before the next metric prunes."""
    for name, parameter in model.named_parameters():
        if name in original:
            parameter.copy_(original[name])


def gpu_case(args) -> None:
    from sparsebench.allocators.uniform import uniform
    from sparsebench.blockwalk import Execution
    from sparsebench.evaluate.perplexity import perplexity
    from sparsebench.masks import NMPattern
    from sparsebench.metrics import METRICS
    from sparsebench.models.adapters import ADAPTERS
    from sparsebench.layers import prunable_layers
    from sparsebench.prune import PrunePlan, prune_model

    print(f"[gpu] {torch.cuda.get_device_name()}, torch {torch.__version__}")
    adapter = ADAPTERS["llama"]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32000, (args.nsamples, args.seqlen), generator=generator)
    eval_ids = torch.randint(0, 32000, (args.eval_segments, 4096), generator=generator)
    model, seconds = _timed(lambda: _seven_b_model(args.layers))
    print(f"[gpu] built a LLaMA-2-7B-shaped model ({args.layers} blocks, {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params, fp16) in {seconds:.1f} s")
    ids_gpu = ids.cuda()

    def plain_forward():
        with torch.inference_mode():
            for start in range(0, ids.shape[0], 8):
                model.model(ids_gpu[start : start + 8])

    plain_forward()
    _, floor = _timed(plain_forward)
    print(f"[gpu] forward-pass floor: one plain forward over {args.nsamples} x {args.seqlen} tokens = {floor:.2f} s")
    if args.reference:
        reference_comparison(model, adapter, ids[:32])
    # dense weights to restore between metrics, kept in CPU memory so they do not count on the GPU
    original = {name: p.detach().cpu() for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name and "lm_head" not in name}
    results = {}
    factors = args.factor or [None]
    cases = [(metric, sparsity, factor) for sparsity in args.sparsity for metric in args.metrics for factor in (factors if metric == "sparsegpt" else [None])]
    for metric, sparsity, factor in cases:
        _restore(model, original)
        torch.cuda.reset_peak_memory_stats()
        pattern = NMPattern(*(int(part) for part in sparsity.split(":"))) if ":" in sparsity else None
        ratios = uniform(prunable_layers(model, adapter), pattern.ratio if pattern else float(sparsity))
        params = {"kernel": args.kernel} if metric == "sparsegpt" and args.kernel else {}
        if factor:
            params["factor"] = factor
        report, prune_s = _timed(lambda: prune_model(model, adapter, PrunePlan(METRICS.get(metric), params, ratios, pattern), ids, Execution("cuda", False, 8)))
        prune_peak = torch.cuda.max_memory_allocated()
        result, ppl_s = _timed(lambda: perplexity(model, adapter, eval_ids, Execution("cuda", False, 4)))
        phases = ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in report.timings.items())
        results[metric] = prune_s + ppl_s
        label = sparsity if pattern else f"{float(sparsity):.0%}"
        print(f"[gpu] {metric:>9} {label}{''.join(f' ({k}={v})' for k, v in params.items())}: prune {prune_s:.2f} s ({phases}); perplexity on {args.eval_segments} x 4096 tokens {ppl_s:.2f} s; "
              f"case {prune_s + ppl_s:.2f} s = {(prune_s + ppl_s) / floor:.1f}x the floor; peak GPU {_gib(prune_peak)}")
    if args.offload:
        model.cpu()
        for metric in args.metrics:
            _restore(model, original)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            ratios = uniform(prunable_layers(model, adapter), 0.5)
            _, prune_s = _timed(lambda: prune_model(model, adapter, PrunePlan(METRICS.get(metric), {}, ratios, None), ids, Execution("cuda", True, 8)))
            print(f"[gpu] {metric:>9} with offload=true: prune {prune_s:.2f} s, peak GPU {_gib(torch.cuda.max_memory_allocated())} "
                  f"(model in CPU memory; one block, the non-block modules and {args.nsamples} x {args.seqlen} activations on the GPU)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["cpu", "gpu"])
    parser.add_argument("--metrics", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--nsamples", type=int, default=None)
    parser.add_argument("--seqlen", type=int, default=None)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--eval-segments", type=int, default=80, help="WikiText-2 test is about 80 segments of 4096 LLaMA tokens")
    parser.add_argument("--sparsity", nargs="+", default=["0.5"], help="GPU: 0.5 (unstructured) and/or N:M patterns such as 2:4")
    parser.add_argument("--kernel", choices=["triton", "torch"], help="GPU: SparseGPT's metric.kernel (default: the metric's default, triton)")
    parser.add_argument("--factor", nargs="+", choices=["reference", "float64"], help="GPU: SparseGPT's metric.factor, each in turn (default: the metric's default, reference)")
    parser.add_argument("--reference", action="store_true", help="time the reference SparseGPT loop on one block (GPU)")
    parser.add_argument("--offload", action="store_true", help="also prune with offload=true (GPU)")
    parser.add_argument("--results-dir", default=str(ROOT / "results" / "benchmarks"))
    args = parser.parse_args()
    if args.mode == "cpu":
        args.nsamples, args.seqlen = args.nsamples or 16, args.seqlen or 512
        cpu_case(args)
    else:
        args.nsamples, args.seqlen = args.nsamples or 128, args.seqlen or 2048
        gpu_case(args)


if __name__ == "__main__":
    main()
