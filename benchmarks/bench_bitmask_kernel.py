"""Unstructured sparsity at decode: BitmaskLinear (the ``sparse-bitmask`` layout and its Triton kernel) against dense ``F.linear``.

    PYTHONPATH=$PWD python benchmarks/bench_bitmask_kernel.py                 # on a CUDA GPU
    PYTHONPATH=$PWD python benchmarks/bench_bitmask_kernel.py --sweep --json figures.json

For each LLaMA-2-7B linear shape (out x in: 4096 x 4096 for q/k/v/o, 11008 x 4096 for gate/up,
4096 x 11008 for down), each sparsity (random positions, fp16) and each token count, it times one
linear's product, dense ``F.linear`` on the dense-stored weight against ``BitmaskLinear``, both
replayed as CUDA graphs (``torch.cuda.CUDAGraph``) the way a server decodes. One graph holds one
call on each of several copies of the weight, at least ``--stream-mib`` of weights in all (several
times the L2, 50-60 MB on Hopper), so every call reads its weight from HBM as a decode step does,
not from the L2; a linear's time is the graph's (median of ``--repeats`` replays, CUDA events) over
the copies.

It prints, per case: the dense and sparse time, the ratio dense / sparse (above 1: sparse faster),
the bytes of the layout over the dense fp16 bytes (``BitmaskLinear.weight_bytes``: values, bitmask,
row offsets and the kernel's chunk offsets), the effective bandwidth of each (weight bytes read
over time) and the ratio the bytes alone would give at dense's bandwidth (``1 / bytes ratio``),
and the largest difference to ``F.linear`` on one copy. At one token it times the four one-token kernels: the
CUDA C++ ``kept`` and ``walk`` kernels and the two Triton ones in the launches they had as defaults
(``ONE_TOKEN_LABELS``, ``bitmask_linear.one_token_launch``), and prints, per shape and sparsity, dense /
kept, dense / chunks, chunks / kept (above 1: the kept kernel is faster), dense / walk and kept / walk (above 1: the
walking kernel is faster), and which kernel ``default_launch`` takes at that density. ``--sweep`` first times each launch of ``LAUNCHES`` at 70 % for the
``--sweep-tokens`` (1 and 16) and reports both the default launch and the fastest for those.
The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
import triton

from sparsebench.kernels.bitmask_linear import BitmaskLinear, Launch, default_launch, one_token_launch

SHAPES = {"q/k/v/o_proj": (4096, 4096), "gate/up_proj": (11008, 4096), "down_proj": (4096, 11008)}
# the one-token kernels by name, each in its own launch (bitmask_linear.one_token_launch): the CUDA C++ kernels (kept:
# sparsebench/kernels/bitmask_kept.py; walk: bitmask_walk.py) and the Triton ones as they were the default (chunks until
# the kept kernel, bytes before chunks)
ONE_TOKEN_LABELS = {"kept": "kept (CUDA)", "walk": "walk (CUDA)", "chunks": "chunks (Triton)", "bytes": "bytes (Triton)"}
# candidates of --sweep: one token (one row per program, 32 * warps mask bytes a step, one a thread),
# several tokens (tensor cores: block_rows >= 16)
LAUNCHES = {
    "one": [Launch(1, 128, 8, one_token="kept"), Launch(1, 128, 4, one_token="kept"),
            Launch(1, 128, 2, one_token="kept"), Launch(1, 128, 8, one_token="walk"), Launch(1, 128, 4, one_token="walk"),
            Launch(1, 128, 16, one_token="walk"), Launch(2, 128, 1), Launch(1, 128, 1), Launch(2, 128, 1, splits=2), Launch(1, 128, 1, splits=2), Launch(2, 128, 1, splits=4),
            Launch(1, 32, 1, one_token="bytes"), Launch(1, 32, 1, prefetch=True, one_token="bytes"),
            Launch(1, 64, 2, prefetch=True, one_token="bytes"), Launch(1, 32, 1, splits=2, prefetch=True, one_token="bytes")],
    "several": [Launch(16, 32, 4), Launch(16, 32, 4, prefetch=True), Launch(32, 32, 4, prefetch=True),
                Launch(16, 32, 4, splits=2, prefetch=True), Launch(16, 32, 4, splits=4, prefetch=True)],
}


def sparse_weight(rows: int, cols: int, sparsity: float, seed: int) -> torch.Tensor:
    """A random fp16 weight with ``sparsity`` of its entries (uniformly placed) set to zero."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    weight = torch.randn(rows, cols, device="cuda", dtype=torch.float16, generator=g) * cols**-0.5
    weight[torch.rand(rows, cols, device="cuda", generator=g) < sparsity] = 0
    return weight


def graph_time(calls: list, repeats: int) -> float:
    """Seconds per call of ``calls`` (zero-argument functions) captured once each in one CUDA graph; median over replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compile and warm outside the capture
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    for _ in range(3):
        graph.replay()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / len(calls))
    return statistics.median(times)


def _module_calls(modules: list[BitmaskLinear], x: torch.Tensor, launch: Launch | None) -> list:
    for module in modules:
        module.launch = launch
    return [lambda module=module: module(x) for module in modules]


@torch.inference_mode()
def sweep(shape: tuple[int, int], copies: int, tokens: int, repeats: int, budget_s: float) -> list[dict]:
    """Each candidate launch at 70 %, fastest first (stops adding candidates after ``budget_s``)."""
    rows, cols = shape
    modules = [BitmaskLinear.from_linear(_linear(sparse_weight(rows, cols, 0.7, seed))) for seed in range(copies)]
    x = torch.randn(tokens, cols, device="cuda", dtype=torch.float16)
    started, timed = time.perf_counter(), []
    for launch in LAUNCHES["one" if tokens == 1 else "several"]:
        if time.perf_counter() - started > budget_s:
            break
        timed.append({"launch": launch, "seconds": graph_time(_module_calls(modules, x, launch), repeats)})
    return sorted(timed, key=lambda entry: entry["seconds"])


def _linear(weight: torch.Tensor) -> torch.nn.Linear:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    return linear


def _launch_json(launch: Launch) -> dict:
    return {"block_rows": launch.block_rows, "block_bytes": launch.block_bytes, "warps": launch.warps,
            "splits": launch.splits, "prefetch": launch.prefetch, "one_token": launch.one_token}


def _launch_label(launch: Launch) -> str:
    kernel = f"/{launch.one_token}" if launch.block_rows <= 2 else ""
    return f"{launch.block_rows}x{launch.block_bytes}/w{launch.warps}/s{launch.splits}{'/p' if launch.prefetch else ''}{kernel}"


def one_token_ratios(results: list[dict]) -> list[dict]:
    """Per shape and sparsity at one token: dense / kept (CUDA), dense / chunks (Triton), chunks / kept, and which the default takes."""
    rows = []
    for name, shape in SHAPES.items():
        for sparsity in sorted({row["sparsity"] for row in results}):
            timed = {row["launch_label"]: row for row in results
                     if row["linear"] == name and row["sparsity"] == sparsity and row["tokens"] == 1}
            if "kept (CUDA)" not in timed or "chunks (Triton)" not in timed:
                continue
            kept, chunks = timed["kept (CUDA)"], timed["chunks (Triton)"]
            row = {"linear": name, "shape": list(shape), "sparsity": sparsity, "dense_us": kept["dense_us"],
                   "kept_us": kept["sparse_us"], "chunks_us": chunks["sparse_us"],
                   "dense_over_kept": kept["dense_over_sparse"], "dense_over_chunks": chunks["dense_over_sparse"],
                   "chunks_over_kept": chunks["sparse_us"] / kept["sparse_us"], "default": kept["default_one_token"]}
            if "walk (CUDA)" in timed:
                walk = timed["walk (CUDA)"]
                row.update({"walk_us": walk["sparse_us"], "dense_over_walk": walk["dense_over_sparse"],
                            "kept_over_walk": kept["sparse_us"] / walk["sparse_us"]})
            rows.append(row)
    return rows


@torch.inference_mode()
def measure(name: str, shape: tuple[int, int], sparsities: list[float], token_counts: list[int], stream_bytes: int,
            repeats: int, best: dict) -> list[dict]:
    rows, cols = shape
    dense_bytes = rows * cols * 2
    copies = max(2, math.ceil(stream_bytes / dense_bytes))
    dense = [sparse_weight(rows, cols, 0.0, 1000 + seed) for seed in range(copies)]
    inputs = {tokens: torch.randn(tokens, cols, device="cuda", dtype=torch.float16) for tokens in token_counts}
    dense_s = {tokens: graph_time([lambda w=w, x=inputs[tokens]: F.linear(x, w) for w in dense], repeats) for tokens in token_counts}
    del dense
    results = []
    for sparsity in sparsities:
        weights = [sparse_weight(rows, cols, sparsity, seed) for seed in range(copies)]
        modules = [BitmaskLinear.from_linear(_linear(weight)) for weight in weights]
        first_dense = weights[0]
        del weights
        sparse_bytes = modules[0].weight_bytes()
        for tokens in token_counts:
            x = inputs[tokens]
            _module_calls(modules, x, None)  # the default launch (an earlier capture may have set another)
            difference = float((modules[0](x) - F.linear(x, first_dense)).abs().max())
            if tokens == 1:  # each kernel, named; the default picks one of the first two by density (default_launch)
                launches = {label: one_token_launch(kernel, rows) for kernel, label in ONE_TOKEN_LABELS.items()}
            else:
                launches = {"default": default_launch(tokens, rows, cols)}
            if (shape, tokens) in best:
                launches["best of sweep"] = best[(shape, tokens)]
            for label, launch in launches.items():
                seconds = graph_time(_module_calls(modules, x, launch), repeats)
                row = {"linear": name, "shape": [rows, cols], "sparsity": sparsity, "tokens": tokens, "launch_label": label,
                       "launch": _launch_json(launch), "copies": copies, "dense_us": dense_s[tokens] * 1e6,
                       "sparse_us": seconds * 1e6, "dense_over_sparse": dense_s[tokens] / seconds,
                       "bytes_ratio": sparse_bytes / dense_bytes, "byte_floor_ratio": dense_bytes / sparse_bytes,
                       "dense_gb_s": dense_bytes / dense_s[tokens] / 1e9, "sparse_gb_s": sparse_bytes / seconds / 1e9,
                       "max_abs_difference": difference,
                       "default_one_token": default_launch(1, rows, cols, torch.cuda.get_device_capability(), 1 - sparsity).one_token}
                results.append(row)
                print(f"{name:13s} {rows:5d}x{cols:<5d} {sparsity:4.0%} T={tokens:<3d} {label:16s} dense {row['dense_us']:7.1f} us "
                      f"sparse {row['sparse_us']:7.1f} us  dense/sparse {row['dense_over_sparse']:5.2f}x  bytes {row['bytes_ratio']:.3f} "
                      f"(floor {row['byte_floor_ratio']:.2f}x)  GB/s dense {row['dense_gb_s']:6.0f} sparse {row['sparse_gb_s']:6.0f}  "
                      f"max|diff| {difference:.1e}", flush=True)
        del modules, first_dense
        torch.cuda.empty_cache()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--stream-mib", type=int, default=256, help="weights per graph, several times the L2")
    parser.add_argument("--repeats", type=int, default=20, help="graph replays; the median is reported")
    parser.add_argument("--sweep", action="store_true", help="time LAUNCHES at 70 %% first; report the default and the fastest")
    parser.add_argument("--sweep-tokens", type=int, nargs="+", default=[1, 16], help="token counts swept (others: the default launch)")
    parser.add_argument("--sweep-budget-s", type=float, default=15.0, help="time for the candidates of one shape and token count")
    parser.add_argument("--json", help="also write the JSON line to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_bitmask_kernel.py needs a CUDA GPU")
    stream_bytes = args.stream_mib * 2**20
    device = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "l2_mb": torch.cuda.get_device_properties(0).L2_cache_size / 1e6}
    print(json.dumps(device), flush=True)
    best, sweeps = {}, []
    if args.sweep:
        for name, shape in SHAPES.items():
            for tokens in args.sweep_tokens:
                copies = max(2, math.ceil(stream_bytes / (shape[0] * shape[1] * 2)))
                timed = sweep(shape, copies, tokens, args.repeats, args.sweep_budget_s)
                best[(shape, tokens)] = timed[0]["launch"]
                sweeps.append({"linear": name, "tokens": tokens, "candidates": [
                    {"launch": _launch_json(entry["launch"]), "sparse_us": entry["seconds"] * 1e6} for entry in timed]})
                print(f"sweep {name} T={tokens}: " + ", ".join(
                    f"{_launch_label(entry['launch'])} {entry['seconds'] * 1e6:.1f}us" for entry in timed), flush=True)
    results = []
    for name, shape in SHAPES.items():
        results += measure(name, shape, args.sparsities, args.tokens, stream_bytes, args.repeats, best)
    ratios = one_token_ratios(results)
    for row in ratios:
        print(f"one token {row['linear']:13s} {row['sparsity']:4.0%}: dense {row['dense_us']:6.1f} us, kept {row['kept_us']:6.1f} us, "
              f"chunks {row['chunks_us']:6.1f} us; dense/kept {row['dense_over_kept']:4.2f}x, dense/chunks {row['dense_over_chunks']:4.2f}x, "
              f"chunks/kept {row['chunks_over_kept']:4.2f}x; default {row['default']}"
              + (f"; walk {row['walk_us']:6.1f} us, dense/walk {row['dense_over_walk']:4.2f}x, kept/walk {row['kept_over_walk']:4.2f}x"
                 if "walk_us" in row else ""), flush=True)
    line = json.dumps({"device": device, "sweeps": sweeps, "per_linear": results, "one_token": ratios})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            handle.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
