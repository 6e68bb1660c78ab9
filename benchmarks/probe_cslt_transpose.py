"""Where cuSPARSELt can write the transposed product itself, and what that saves over SemiSparseLinear's copy, on a GPU.

    PYTHONPATH=$PWD python benchmarks/probe_cslt_transpose.py --out probe.json

``SemiSparseLinear`` (sparsebench/kernels/semi_sparse.py) computes ``W @ xᵀ`` with cuSPARSELt and copies it
into the contiguous ``[tokens, out]`` the next operations need; on an H100 PyTorch's copy of the transposed view
cost 63 µs for a 4096-wide output at 2,048 tokens, about half the product's time (docs/efficiency.md, "On a GPU"). ``torch._cslt_sparse_mm(..., transpose_result=True)`` writes ``[tokens, out]``
directly, but its algorithm search failed at 16 tokens on that H100 ("internal error" in
``cusparseLtMatmulSearch``, then an illegal instruction that poisons the CUDA context).

So each (shape, token count) is probed in its own child process, and a failure poisons only that child. A child
searches the algorithm for the transposed form, checks the result against ``F.linear``, and times four products,
each replayed as a CUDA graph: the plain product and PyTorch's copy of its transposed view, the plain product
and a tiled Triton transpose (``transposed_copy`` below: the other way to drop the copy's cost), the transposed
form, and dense ``F.linear``. The parent prints one line per case (``ok`` with the times and ratios, or ``failed``
with the child's last error line) and, with ``--out``, writes them as JSON. The result says from which token count
the transposed form (or the Triton transpose) may be used; this script changes nothing in the library.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from sparsebench.kernels.transpose import transposed_copy

SHAPES = {"q/k/v/o_proj": (4096, 4096), "gate/up_proj": (11008, 4096), "down_proj": (4096, 11008)}  # LLaMA-2-7B (out, in)
TOKENS = (16, 32, 64, 128, 256, 512, 2048, 8192)


def child(rows: int, cols: int, tokens: int, repeats: int) -> dict:
    """One case, in this process: the transposed form's search, its error, and the four graphed timings (ms)."""
    import torch.nn.functional as F

    from bench_efficiency import _eager_and_graph, packed_case  # benchmarks/ is this script's folder

    weight, x, packed = packed_case(rows, cols, tokens)
    plain_id = int(torch._cslt_sparse_mm_search(packed, x.t()))
    plain = torch._cslt_sparse_mm(packed, x.t(), alg_id=plain_id)
    if not torch.equal(transposed_copy(plain), plain.t()):
        raise AssertionError("the Triton transpose differs from product.t()")
    fused_id = int(torch._cslt_sparse_mm_search(packed, x.t(), transpose_result=True))
    fused = torch._cslt_sparse_mm(packed, x.t(), alg_id=fused_id, transpose_result=True)
    reference = F.linear(x.float(), weight.float())
    torch.cuda.synchronize()
    calls = 20 if tokens <= 2048 else 5
    timings = {
        "dense": _eager_and_graph(lambda: F.linear(x, weight), calls, repeats),
        "copy": _eager_and_graph(lambda: torch._cslt_sparse_mm(packed, x.t(), alg_id=plain_id).t().contiguous(), calls, repeats),
        "triton_transpose": _eager_and_graph(lambda: transposed_copy(torch._cslt_sparse_mm(packed, x.t(), alg_id=plain_id)), calls, repeats),
        "transpose_result": _eager_and_graph(lambda: torch._cslt_sparse_mm(packed, x.t(), alg_id=fused_id, transpose_result=True), calls, repeats),
    }
    return {
        "shape": [rows, cols], "tokens": tokens, "status": "ok", "contiguous": fused.is_contiguous(), "output_shape": list(fused.shape),
        "relative_difference": float(torch.linalg.norm(fused.float() - reference) / torch.linalg.norm(reference)),
        "graph_ms": {name: timing.get("graph_ms") for name, timing in timings.items()}, "timings": timings,
    }


def probe(rows: int, cols: int, tokens: int, repeats: int, timeout: float) -> dict:
    """``child`` in a fresh process; a crash, a hang or an error comes back as ``status: failed`` with its last line."""
    command = [sys.executable, __file__, "--child", str(rows), str(cols), str(tokens), "--repeats", str(repeats)]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).parent)
    except subprocess.TimeoutExpired:
        return {"shape": [rows, cols], "tokens": tokens, "status": "failed", "error": f"no answer within {timeout:.0f} s"}
    lines = finished.stdout.strip().splitlines()
    if finished.returncode == 0 and lines:
        return json.loads(lines[-1])
    errors = [line for line in finished.stderr.strip().splitlines() if line.strip()]
    return {"shape": [rows, cols], "tokens": tokens, "status": "failed", "returncode": finished.returncode,
            "error": errors[-1] if errors else "no output"}


def describe(case: dict) -> str:
    rows, cols = case["shape"]
    head = f"[probe] {rows:5d}x{cols:<5d} {case['tokens']:5d} tokens"
    if case["status"] != "ok":
        return f"{head}: failed: {case['error']}"
    ms = case["graph_ms"]
    if None in ms.values():
        return f"{head}: ok, rel. diff {case['relative_difference']:.1e}, but a graph could not be captured: {case['timings']}"
    return (f"{head}: ok, rel. diff {case['relative_difference']:.1e}; graphed dense {ms['dense']:.4f}, copy {ms['copy']:.4f}, "
            f"triton transpose {ms['triton_transpose']:.4f}, transpose_result {ms['transpose_result']:.4f} ms; of dense: copy "
            f"{ms['dense'] / ms['copy']:.2f}x, triton transpose {ms['dense'] / ms['triton_transpose']:.2f}x, transpose_result "
            f"{ms['dense'] / ms['transpose_result']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a child may take")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", type=int, nargs=3, metavar=("ROWS", "COLS", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.repeats)), flush=True)
        return
    cases = []
    for rows, cols in SHAPES.values():
        for tokens in args.tokens:
            cases.append(probe(rows, cols, tokens, args.repeats, args.timeout))
            print(describe(cases[-1]), flush=True)
            if args.out:
                args.out.write_text(json.dumps(cases, indent=1))


if __name__ == "__main__":
    main()
