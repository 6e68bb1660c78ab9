"""SparseGPT's solve per LLaMA-2-7B block: the Triton kernel against the torch path, the reference loop and the FLOP floor.

    python benchmarks/bench_sparsegpt_kernel.py                    # on a CUDA GPU: both sparsities, reference on q_proj
    python benchmarks/bench_sparsegpt_kernel.py --sweep --profile  # also launch shapes of the kernel and a kernel profile

One block = LLaMA-2-7B's seven linears (q, k, v, o: 4096 x 4096; gate, up: 11008 x 4096; down:
4096 x 11008) with random weights and Hessians from random correlated inputs, q/k/v and gate/up
sharing one Hessian as in a real block. For each sparsity (unstructured 50 %, 2:4 by default) it
times what ``prune_model`` counts as a block's solve (the metric call for the seven linears:
factor of each Hessian, then the solve), for

- ``triton``: metric.kernel=triton (the default on CUDA), factor shared by the layers of one Hessian;
- ``torch``: metric.kernel=torch, factor shared;
- ``torch, factor per layer``: the torch path with a factor per linear (the code before the kernel);

then the solve alone (factors given) of triton and torch, the factors alone (and, for comparison,
by one Cholesky, an alternative not used: docs/sparsegpt_kernel.md), and the FLOP floor
of the solve: in-block column updates ``rows * B * (B - 1)`` per block of B columns, plus the
trailing GEMMs ``2 * rows * B * (later columns)``, divided by the fp32 peak without tensor cores
(``--peak-tflops``, 67 by the H200 datasheet) and by an fp32 GEMM rate measured here (8192^3,
TF32 off: the arithmetic the solve uses). ``--reference`` (on by default) times the reference
column loop (sparsebench/testing/reference_impls.py, a transcription of IST-DASLab/sparsegpt ``fasterprune``)
on q_proj and compares masks. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from sparsebench.testing.reference_impls import sparsegpt_column_by_column
from sparsebench.masks import NMPattern, SparsityTarget
from sparsebench.metrics import METRICS
from sparsebench.metrics import sparsegpt as module
from sparsebench.stats import HESSIAN, LayerStats

# (name, rows, input group): LLaMA-2-7B's linears of one block; linears of one group share the input
LAYERS = [("q", 4096, "attn"), ("k", 4096, "attn"), ("v", 4096, "attn"), ("o", 4096, "o"),
          ("gate", 11008, "mlp"), ("up", 11008, "mlp"), ("down", 4096, "down")]
INPUTS = {"attn": 4096, "o": 4096, "mlp": 4096, "down": 11008}


def _timed(fn, repeats: int = 1, warmup: bool = True):
    if warmup:  # Triton compilation, cuBLAS/cuSOLVER handles, CUDA graphs
        fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    torch.cuda.synchronize()
    return result, (time.perf_counter() - started) / repeats


def _target(spec: str) -> SparsityTarget:
    if ":" in spec:
        n, m = (int(part) for part in spec.split(":"))
        return SparsityTarget(n / m, NMPattern(n, m))
    return SparsityTarget(float(spec))


def solve_flops(rows: int, cols: int, blocksize: int) -> int:
    """In-block column updates plus the trailing GEMMs of one linear (multiply and add counted as 2)."""
    total = 0
    for start in range(0, cols, blocksize):
        size = min(blocksize, cols - start)
        total += rows * size * (size - 1) + 2 * rows * size * (cols - start - size)
    return total


def measured_fp32_gemm_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda")
    _, seconds = _timed(lambda: a @ a, repeats=5)
    return 2 * 8192**3 / seconds / 1e12


def build_block(tokens: int, generator: torch.Generator):
    hessians = {}
    for group, cols in INPUTS.items():
        mixing = torch.randn(cols, cols, device="cuda", generator=generator) / cols**0.5 + torch.eye(cols, device="cuda")
        inputs = torch.randn(tokens, cols, device="cuda", generator=generator) @ mixing
        hessians[group] = inputs.T @ inputs
        del mixing, inputs
    weights = {name: (torch.randn(rows, INPUTS[group], device="cuda", generator=generator) * 0.02).half() for name, rows, group in LAYERS}
    return weights, hessians


def compare_factor_methods(hessians) -> list[dict]:
    """Time and float32 error (against float64) of the factor as computed the reference's way, by one Cholesky in
    float32 (rejected: see docs/sparsegpt_kernel.md) and by one Cholesky in float64 (``metric.factor=float64``)."""
    rows = []
    for group in ("attn", "down"):
        damped = module.damped_hessian(hessians[group], 0.01)
        ours, ours_s = _timed(lambda: module.inverse_factor_of_damped(damped), repeats=3)
        alternative, alternative_s = _timed(lambda: module.inverse_factor_by_one_cholesky(damped), repeats=3)
        exact = module.inverse_factor_of_damped(damped.double())
        in_float64, float64_s = _timed(lambda: module.inverse_hessian_factor(hessians[group], 0.01, "float64"), repeats=3)
        rows.append({"size": damped.shape[0], "reference_way_ms": round(ours_s * 1e3, 1), "one_cholesky_ms": round(alternative_s * 1e3, 1),
                     "factor_float64_ms": round(float64_s * 1e3, 1),
                     "factor_float64_rel_err_vs_f64": float(torch.linalg.norm(in_float64.double() - exact) / torch.linalg.norm(exact)),
                     "reference_way_rel_err_vs_f64": float(torch.linalg.norm(ours.double() - exact) / torch.linalg.norm(exact)),
                     "one_cholesky_rel_err_vs_f64": float(torch.linalg.norm(alternative.double() - exact) / torch.linalg.norm(exact))})
    return rows


def block_solve(weights, stats, target, kernel: str, factor_per_layer: bool = False):
    metric = METRICS.get("sparsegpt")
    out = {}
    for name, _, group in LAYERS:
        if factor_per_layer:
            module._FACTOR_CACHE.clear()
        out[name] = metric.prune(weights[name], stats[group], target, kernel=kernel)
    return out


def sweep(weights, factors, target) -> list[dict]:
    """Kernel-only time of one 128-column block of gate_proj (11008 rows) per launch shape."""
    from sparsebench.metrics._sparsegpt_triton import obs_block
    from sparsebench.masks import select_per_layer

    block = weights["gate"][:, :128].float().contiguous()
    factor = factors["mlp"][:128, :128].contiguous()
    errors = torch.empty_like(block)
    mask = None
    if target.pattern is None:
        mask = select_per_layer(block.square() / torch.diagonal(factor).square(), target.ratio)
    rows = []
    for block_rows, warps in [(8, 2), (8, 4), (16, 2), (16, 4), (16, 8), (32, 4), (32, 8), (64, 8)]:
        kwargs = dict(mask=mask) if mask is not None else dict(n=target.pattern.n, m=target.pattern.m)
        try:
            _, seconds = _timed(lambda: obs_block(block.clone(), factor, errors, block_rows=block_rows, num_warps=warps, **kwargs), repeats=20)
        except Exception as error:  # a launch shape that does not compile (registers) is reported, not fatal
            rows.append({"block_rows": block_rows, "warps": warps, "error": str(error)[:120]})
            continue
        rows.append({"block_rows": block_rows, "warps": warps, "us": round(seconds * 1e6, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsity", nargs="+", default=["0.5", "2:4"], help="0.5 (unstructured) or N:M")
    parser.add_argument("--tokens", type=int, default=8192, help="rows of the random inputs behind each Hessian")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference column loop on q_proj")
    parser.add_argument("--peak-tflops", type=float, default=67.0, help="fp32 peak without tensor cores (H200 SXM datasheet: 67)")
    parser.add_argument("--sweep", action="store_true", help="time the kernel's launch shapes (rows per program, warps)")
    parser.add_argument("--profile", action="store_true", help="print the CUDA kernels of one block's Triton solve")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_sparsegpt_kernel.py needs a CUDA GPU (on CPUs the torch path is the only one)")
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    gemm_tflops = measured_fp32_gemm_tflops()
    print(f"fp32 GEMM 8192^3 (TF32 off): {gemm_tflops:.1f} TFLOP/s measured; floor below uses {args.peak_tflops} (datasheet) and the measured rate")
    weights, hessians = build_block(args.tokens, torch.Generator(device="cuda").manual_seed(0))
    stats = {group: LayerStats(args.tokens, sums={HESSIAN: h}) for group, h in hessians.items()}
    flops = sum(solve_flops(rows, INPUTS[group], 128) for _, rows, group in LAYERS)
    floor_peak, floor_gemm = flops / (args.peak_tflops * 1e12), flops / (gemm_tflops * 1e12)
    factors, factor_s = _timed(lambda: {g: module.inverse_hessian_factor(h, 0.01) for g, h in hessians.items()})
    print(f"one block's solve: {flops / 1e12:.3f} TFLOP -> floor {floor_peak * 1e3:.1f} ms at {args.peak_tflops} TFLOP/s, "
          f"{floor_gemm * 1e3:.1f} ms at the measured GEMM rate; factors of its 4 Hessians (3 x 4096, 1 x 11008): {factor_s * 1e3:.0f} ms")
    print(json.dumps({"factor_methods": compare_factor_methods(hessians)}))
    results = []
    for spec in args.sparsity:
        target = _target(spec)
        row = {"sparsity": spec, "flops": flops, "factors_s": round(factor_s, 4)}
        for label, kernel, per_layer in [("triton", "triton", False), ("torch", "torch", False), ("torch_factor_per_layer", "torch", True)]:
            out, seconds = _timed(lambda: block_solve(weights, stats, target, kernel, per_layer))
            row[f"{label}_s"] = round(seconds, 4)
            if label == "triton":
                triton_out = out
            else:
                row[f"mask_differs_{label}"] = sum(int(((out[n] == 0) != (triton_out[n] == 0)).sum()) for n in out)
        for kernel in ("triton", "torch"):
            def solve_only():
                return [module.sparsegpt_solve(weights[name].float(), factors[group], target, kernel=kernel) for name, _, group in LAYERS]
            _, seconds = _timed(solve_only)
            row[f"{kernel}_solve_only_s"] = round(seconds, 4)
        row.update(
            weights=sum(w.numel() for w in weights.values()),
            triton_vs_torch=round(row["torch_s"] / row["triton_s"], 2),
            triton_vs_before=round(row["torch_factor_per_layer_s"] / row["triton_s"], 2),
            triton_solve_only_over_floor_peak=round(row["triton_solve_only_s"] / floor_peak, 2),
            triton_solve_only_over_floor_gemm=round(row["triton_solve_only_s"] / floor_gemm, 2),
            torch_solve_only_over_floor_peak=round(row["torch_solve_only_s"] / floor_peak, 2),
        )
        if not args.no_reference:
            weight, hessian = weights["q"].float(), hessians["attn"]
            nm = (target.pattern.n, target.pattern.m) if target.pattern else (0, 0)
            reference, reference_s = _timed(lambda: sparsegpt_column_by_column(weight, hessian, target.ratio, *nm), warmup=False)

            def ours_with_factor():
                module._FACTOR_CACHE.clear()  # the factor counts here, as in the reference's time
                return METRICS.get("sparsegpt").prune(weight, stats["attn"], target)

            ours, ours_s = _timed(ours_with_factor)
            row.update(reference_q_s=round(reference_s, 3), triton_q_s=round(ours_s, 4), reference_q_over_triton=round(reference_s / ours_s, 1),
                       mask_differs_reference_q=int(((reference == 0) != (ours == 0)).sum()), weights_q=weight.numel())
        print(json.dumps(row))
        if args.sweep:
            print(json.dumps({"sweep": spec, "gate_block_11008x128": sweep(weights, factors, target)}))
        results.append(row)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for spec in args.sparsity:
            target = _target(spec)
            block_solve(weights, stats, target, "triton")
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                block_solve(weights, stats, target, "triton")
                torch.cuda.synchronize()
            print(f"profile of one block's triton solve at {spec}:")
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=70))
    print(json.dumps({"device": torch.cuda.get_device_name(), "fp32_gemm_tflops": round(gemm_tflops, 1), "peak_tflops": args.peak_tflops,
                      "floor_peak_s": round(floor_peak, 4), "floor_gemm_s": round(floor_gemm, 4), "results": results}))


if __name__ == "__main__":
    main()
