"""SparseGPT's N:M solve per linear: ours against the reference's column loop, same inputs.

    python benchmarks/bench_sparsegpt_nm.py                 # on a GPU if one is visible, else the CPU
    python benchmarks/bench_sparsegpt_nm.py --patterns 2:4 4:8 --shapes 4096x4096 11008x4096 4096x11008

For each weight shape (rows x input features; LLaMA-2-7B's by default) it builds a random weight
and a Hessian from random correlated inputs, then times the solve of ``sparsegpt_solve`` and of
the reference's column-by-column loop (a transcription of IST-DASLab/sparsegpt ``fasterprune``,
sparsebench/testing/reference_impls.py) and counts the weights whose pruned/kept state differs (float32
rounding can flip a near-tie). On a GPU it also times our solve without CUDA graphs. ``--extra PATH`` also times another copy of the module (e.g. an
older sparsegpt.py) to measure a change. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

import torch

from sparsebench.testing.reference_impls import sparsegpt_column_by_column
from sparsebench.masks import NMPattern, SparsityTarget
from sparsebench.metrics.sparsegpt import inverse_hessian_factor, sparsegpt_solve


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str):
    _sync(device)
    started = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - started


def _load_extra(path: str):
    """Another copy of sparsegpt.py, loaded beside ours without registering its metric again."""
    import sparsebench.metrics as metrics

    register = metrics.register_metric
    metrics.register_metric = lambda *args, **kwargs: (lambda fn: fn)
    try:
        spec = importlib.util.spec_from_file_location("sparsegpt_extra", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        metrics.register_metric = register
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patterns", nargs="+", default=["2:4", "4:8"])
    parser.add_argument("--shapes", nargs="+", default=["4096x4096", "11008x4096", "4096x11008"])
    parser.add_argument("--tokens", type=int, default=8192, help="rows of the random inputs behind the Hessian")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) reference loop")
    parser.add_argument("--extra", help="another sparsegpt.py to time beside ours")
    parser.add_argument("--kernel", choices=["triton", "torch"], default="torch",
                        help="metric.kernel of our solve on a GPU (torch: the batched-inverse path this script was written for; triton: bench_sparsegpt_kernel.py)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    extra = _load_extra(args.extra) if args.extra else None
    print(f"{torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, torch {torch.__version__}")
    generator = torch.Generator(device=device).manual_seed(0)
    results = []
    for shape in args.shapes:
        rows, cols = (int(part) for part in shape.split("x"))
        mixing = torch.randn(cols, cols, device=device, generator=generator) / cols**0.5 + torch.eye(cols, device=device)
        inputs = torch.randn(args.tokens, cols, device=device, generator=generator) @ mixing
        hessian = inputs.T @ inputs
        weight = torch.randn(rows, cols, device=device, generator=generator) * 0.02
        factor = inverse_hessian_factor(hessian, 0.01)
        for spec in args.patterns:
            n, m = (int(part) for part in spec.split(":"))
            target = SparsityTarget(n / m, NMPattern(n, m))
            sparsegpt_solve(weight[:, : 4 * m], factor[: 4 * m, : 4 * m], target, kernel=args.kernel)  # warm-up
            sparsegpt_solve(weight, factor, target, kernel=args.kernel)  # captures this shape's CUDA graph (once per block shape)
            ours, ours_s = _timed(lambda: sparsegpt_solve(weight, factor, target, kernel=args.kernel), device)
            row = {"shape": shape, "pattern": spec, "kernel": args.kernel, "ours_s": round(ours_s, 3)}
            if device == "cuda" and args.kernel == "torch":  # the same solve without CUDA graphs: what the graphs save
                eager, eager_s = _timed(lambda: sparsegpt_solve(weight, factor, target, cuda_graphs=False, kernel="torch"), device)
                row.update(eager_s=round(eager_s, 3), eager_equal=bool(torch.equal(eager, ours)))
            if extra is not None:
                other, other_s = _timed(lambda: extra.sparsegpt_solve(weight, factor, target), device)
                row.update(extra_s=round(other_s, 3), extra_mask_differs=int(((other == 0) != (ours == 0)).sum()))
            if not args.no_reference:
                reference, reference_s = _timed(lambda: sparsegpt_column_by_column(weight, hessian, n / m, n, m), device)
                row.update(reference_s=round(reference_s, 3), speedup=round(reference_s / ours_s, 1),
                           mask_differs=int(((reference == 0) != (ours == 0)).sum()), weights=weight.numel())
            print(json.dumps(row))
            results.append(row)
    print(json.dumps({"device": device, "results": results}))


if __name__ == "__main__":
    main()
