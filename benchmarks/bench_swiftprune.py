"""Prune time of SwiftPrune against Wanda and SparseGPT on the same model, and the cost of its
sort-free selection against a sort.

    python benchmarks/bench_swiftprune.py cpu     # real SmolLM2-135M on this CPU, whole cases through the runner
    python benchmarks/bench_swiftprune.py gpu     # LLaMA-2-7B-shaped random fp16 weights on a GPU (timing only)

Both modes print, per metric and sparsity, the prune time and its phases (capture, statistics
forward, solve = scores and masks, pruned forward); the CPU mode also the perplexity. Then they
time the per-row selection alone on the model's own weight shapes: SwiftPrune's EWMA threshold +
partial selection, a stable sort (``select_per_row``, what Wanda uses) and ``torch.kthvalue``,
and check that the EWMA mask equals the sorted one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

from bench_case import _restore, _seven_b_model  # noqa: E402  (python puts the script's folder, benchmarks/, on the path)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _best_of(fn, device: str, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def _kthvalue_mask(scores, ratio):
    """Threshold at the k-th smallest of each row (ties at it all pruned; timing only)."""
    return scores <= torch.kthvalue(scores, int(scores.shape[1] * ratio), dim=1).values.unsqueeze(1)


def selection_table(weights: dict[str, torch.Tensor], ratio: float, device: str, repeats: int) -> None:
    """Per-row selection alone, on each weight shape (scores = SwiftPrune's L with unit input energy)."""
    from sparsebench.masks import select_per_row
    from sparsebench.metrics.swiftprune import l_scores, select_per_row_ewma

    threads = f", {torch.get_num_threads()} CPU threads" if device == "cpu" else ""
    print(f"[{device}] per-row selection at {ratio:.0%} (ms, best of {repeats}{threads}): shape | EWMA + partial selection | stable sort | kthvalue")
    totals = [0.0, 0.0, 0.0]
    for name, weight in weights.items():
        scores = l_scores(weight.to(device), torch.ones(weight.shape[1], device=device))
        ewma = select_per_row_ewma(scores, ratio)
        if not torch.equal(ewma, select_per_row(scores, ratio)):
            raise AssertionError(f"{name}: the EWMA mask differs from the sorted one")
        times = [
            _best_of(lambda: select_per_row_ewma(scores, ratio), device, repeats),
            _best_of(lambda: select_per_row(scores, ratio), device, repeats),
            _best_of(lambda: _kthvalue_mask(scores, ratio), device, repeats),
        ]
        totals = [a + b for a, b in zip(totals, times)]
        print(f"      {name:>24} {tuple(weight.shape)}: {times[0] * 1e3:8.2f} | {times[1] * 1e3:8.2f} | {times[2] * 1e3:8.2f}")
    print(f"      sum over these shapes: {totals[0] * 1e3:.2f} | {totals[1] * 1e3:.2f} | {totals[2] * 1e3:.2f} ms")


def cpu_case(args) -> None:
    from sparsebench.testing.config import compose_config, local_data_dir
    from safetensors.torch import load_file
    from sparsebench.config import validate
    from sparsebench.runner import run_case

    if args.threads:
        torch.set_num_threads(args.threads)
    for sparsity in args.sparsities:
        for metric in args.metrics:
            overrides = [
                "model=smollm2-135m-q4", f"metric={metric}", f"data.wikitext2={local_data_dir() / 'wikitext2-tok'}",
                "calibration.dataset=wikitext2", "calibration.split=validation", f"calibration.nsamples={args.nsamples}",
                f"calibration.seqlen={args.seqlen}", "eval.ppl.seqlen=512", "eval.ppl.max_segments=16", "device=cpu",
                "progress=false", "rerun=true", f"results_dir={args.results_dir}", sparsity,
            ]
            document = run_case(validate(compose_config(overrides)))
            if document["status"] != "ok":
                raise RuntimeError(f"{metric} {sparsity}: {document['error']['message']}")
            timings = document["timings"]
            phases = ", ".join(f"{k.removeprefix('prune_').removesuffix('_s')} {v:.2f}" for k, v in timings.items() if k.startswith("prune_") and k != "prune_s")
            print(f"[cpu] smollm2-135m-q4 {metric:>10} {sparsity:>20}: prune {timings['prune_s']:6.2f} s ({phases}); "
                  f"wikitext2 ppl {document['metrics']['ppl']['wikitext2']['ppl']:.2f}")
    state = load_file(str(Path(document["model"]["location"]) / "model.safetensors"))  # the de-quantised SmolLM2 the cases loaded
    weights = {name.removeprefix("model.layers.0."): state[name].float() for name in state if name.startswith("model.layers.0.") and name.endswith("proj.weight")}
    selection_table(weights, 0.7, "cpu", args.repeats)


def gpu_case(args) -> None:
    from sparsebench.allocators.uniform import uniform
    from sparsebench.masks import NMPattern
    from sparsebench.metrics import METRICS
    from sparsebench.models.adapters import ADAPTERS
    from sparsebench.layers import prunable_layers
    from sparsebench.blockwalk import Execution
    from sparsebench.prune import PrunePlan, prune_model

    print(f"[gpu] {torch.cuda.get_device_name()}, torch {torch.__version__}")
    adapter = ADAPTERS["llama"]
    ids = torch.randint(0, 32000, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    model = _seven_b_model(args.layers)
    print(f"[gpu] LLaMA-2-7B-shaped model, {args.layers} blocks, random fp16 weights; calibration {args.nsamples} x {args.seqlen} random tokens")
    original = {name: p.detach().cpu() for name, p in model.named_parameters() if p.dim() == 2 and "embed" not in name and "lm_head" not in name}
    for sparsity in args.sparsities:
        pattern = NMPattern(2, 4) if sparsity == "sparsity=2of4" else None
        ratio = 0.5 if pattern else float(sparsity.split("=")[1])
        for metric in args.metrics:
            _restore(model, original)
            ratios = uniform(prunable_layers(model, adapter), ratio)
            torch.cuda.synchronize()
            start = time.perf_counter()
            report = prune_model(model, adapter, PrunePlan(METRICS.get(metric), {}, ratios, pattern), ids, Execution("cuda", False, 8))
            torch.cuda.synchronize()
            prune_s = time.perf_counter() - start
            phases = ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in report.timings.items())
            print(f"[gpu] {metric:>10} {sparsity:>20}: prune {prune_s:7.2f} s ({phases})")
    block = adapter.get_blocks(model)[0]
    weights = {name: block.get_submodule(name).weight.data.float() for name in adapter.linear_names}
    selection_table(weights, 0.7, "cuda", args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["cpu", "gpu"])
    parser.add_argument("--metrics", nargs="+", default=["swiftprune", "wanda", "sparsegpt"])
    parser.add_argument("--sparsities", nargs="+", default=["sparsity.ratio=0.7", "sparsity=2of4"])
    parser.add_argument("--nsamples", type=int, default=None)
    parser.add_argument("--seqlen", type=int, default=None)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (cpu mode)")
    parser.add_argument("--results-dir", default=str(ROOT / "results" / "benchmarks"))
    args = parser.parse_args()
    default_nsamples, default_seqlen, run = {"cpu": (16, 512, cpu_case), "gpu": (128, 2048, gpu_case)}[args.mode]
    args.nsamples, args.seqlen = args.nsamples or default_nsamples, args.seqlen or default_seqlen
    run(args)


if __name__ == "__main__":
    main()
