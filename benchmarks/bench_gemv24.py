"""The gemv24 kernel (sparsebench/kernels/gemv24.py) against dense cuBLAS and cuSPARSELt at decode token counts, on a GPU.

    PYTHONPATH=$PWD python benchmarks/bench_gemv24.py --out gemv24.json

For each LLaMA-2-7B linear shape (4096x4096, 11008x4096, 4096x11008), fp16, a random 2:4 weight, and 1, 2, 4, 8
and 16 tokens: ``F.linear`` on the dense weight (cuBLAS), ``SemiSparseLinear`` (cuSPARSELt called directly) and
``Gemv24Linear``, each eager (back-to-back calls) and replayed as one CUDA graph of the calls (medians of CUDA-event
times, bench_efficiency's helpers). Prints each time, gemv24's ratio to dense and to cuSPARSELt, and the GB/s of
the bytes it must read (values + bitmask + inputs + outputs). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

TOKENS = (1, 2, 4, 8, 16)


def _bytes_read(rows: int, cols: int, tokens: int) -> int:
    return rows * cols // 2 * 2 + rows * cols // 8 + 2 * tokens * (rows + cols)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--calls", type=int, default=100, help="calls per timing (and per CUDA graph)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from bench_efficiency import LLAMA2_7B_LINEARS, _eager_and_graph, prune_2of4  # benchmarks/ is this script's folder

    from sparsebench.kernels.gemv24 import Gemv24Linear
    from sparsebench.kernels.semi_sparse import SemiSparseLinear

    rows_out = []
    print(f"[gemv24] {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    for name, (rows, cols) in LLAMA2_7B_LINEARS.items():
        torch.manual_seed(0)
        dense = torch.nn.Linear(cols, rows, bias=False, device="cuda", dtype=torch.float16)
        prune_2of4(dense.weight.data.normal_(0, 0.02))
        modules = {"cusparselt": SemiSparseLinear.from_linear(dense), "gemv24": Gemv24Linear.from_linear(dense)}
        for tokens in TOKENS:
            x = torch.randn(tokens, cols, device="cuda", dtype=torch.float16)
            reference = F.linear(x, dense.weight)
            timings = {"dense": _eager_and_graph(lambda: F.linear(x, dense.weight), args.calls, args.repeats)}
            for path, module in modules.items():
                module(x)  # cuSPARSELt's algorithm search happens outside the graph
                timings[path] = _eager_and_graph(lambda module=module: module(x), args.calls, args.repeats)
            difference = float((modules["gemv24"](x).float() - reference.float()).norm() / reference.float().norm())
            row = {"linear": name, "shape": [rows, cols], "tokens": tokens, "timings": timings, "gemv24_relative_difference": difference}
            for mode in ("eager_ms", "graph_ms"):
                if all(mode in timing for timing in timings.values()):
                    row[f"{mode[:-3]}_gemv24_vs_dense"] = timings["dense"][mode] / timings["gemv24"][mode]
                    row[f"{mode[:-3]}_gemv24_vs_cusparselt"] = timings["cusparselt"][mode] / timings["gemv24"][mode]
                    row[f"{mode[:-3]}_gemv24_gb_per_s"] = _bytes_read(rows, cols, tokens) / (timings["gemv24"][mode] * 1e-3) / 1e9
            rows_out.append(row)
            graph = (f"graph dense {timings['dense'].get('graph_ms', float('nan')):.4f} / cuSPARSELt {timings['cusparselt'].get('graph_ms', float('nan')):.4f}"
                     f" / gemv24 {timings['gemv24'].get('graph_ms', float('nan')):.4f} ms = {row.get('graph_gemv24_vs_dense', float('nan')):.2f}x of dense, "
                     f"{row.get('graph_gemv24_vs_cusparselt', float('nan')):.2f}x of cuSPARSELt, {row.get('graph_gemv24_gb_per_s', float('nan')):.0f} GB/s")
            print(f"[gemv24] {name:13s} {rows:5d}x{cols:<5d} {tokens:2d} tokens: eager {row.get('eager_gemv24_vs_dense', float('nan')):.2f}x of dense "
                  f"({row.get('eager_gemv24_gb_per_s', float('nan')):.0f} GB/s); {graph}; rel. diff {difference:.1e}", flush=True)
        del modules, dense
        torch.cuda.empty_cache()
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows_out}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
