"""What cuSPARSELt's split-K gives a 2:4 product at decode token counts, and what its own search picks, on a GPU.

    PYTHONPATH=$PWD python benchmarks/probe_cslt_split_k.py --out split_k.json

``SemiSparseLinear`` (sparsebench/kernels/semi_sparse.py) keeps the algorithm id that
``torch._cslt_sparse_mm_search`` returns and calls ``torch._cslt_sparse_mm`` without split-K. At 16 tokens a
4096 x 4096 product has only ``4096 / 128`` output tiles for a GPU of 132 multiprocessors, and on an H100 it ran
at 0.78x of dense (docs/efficiency.md, "On a GPU"). ``_cslt_sparse_mm`` takes ``split_k`` (programs along the
input dimension) and ``split_k_mode`` (cuSPARSELt's ``cusparseLtSplitKMode_t``: 1 one kernel, 2 two kernels),
and PyTorch's newer search, ``torch._C._cusparselt.mm_search``, returns the split-K that cuSPARSELt's own search
chose along with the algorithm id. For each LLaMA-2-7B shape and token count this prints that search's answer and
the graphed time of each (split_k, mode) with the searched algorithm id, against dense ``F.linear``, and checks
every product against ``F.linear``; with ``--out`` it writes them as JSON. It changes nothing in the library.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_efficiency import LLAMA2_7B_LINEARS, _eager_and_graph, packed_case  # benchmarks/ is this script's folder

SPLITS = (1, 2, 4, 8, 16)
MODES = (1, 2)  # cusparseLtSplitKMode_t: CUSPARSELT_SPLIT_K_MODE_ONE_KERNEL, CUSPARSELT_SPLIT_K_MODE_TWO_KERNELS


def new_search(packed: torch.Tensor, operand: torch.Tensor) -> dict:
    """``torch._C._cusparselt.mm_search``'s answer, or why it could not be had."""
    search = getattr(getattr(torch._C, "_cusparselt", None), "mm_search", None)
    if search is None:
        return {"error": "torch._C._cusparselt.mm_search is not in this torch"}
    try:
        return {"result": list(search(packed, operand, None, None, None, False)), "doc": (search.__doc__ or "")[:300]}
    except (RuntimeError, TypeError) as error:
        return {"error": f"{type(error).__name__}: {str(error)[:300]}", "doc": (search.__doc__ or "")[:300]}


def case(rows: int, cols: int, tokens: int, repeats: int) -> dict:
    weight, x, packed = packed_case(rows, cols, tokens)
    alg_id = int(torch._cslt_sparse_mm_search(packed, x.t()))
    reference = F.linear(x.float(), weight.float()).t()
    calls = 50
    row = {"shape": [rows, cols], "tokens": tokens, "alg_id": alg_id, "mm_search": new_search(packed, x.t()),
           "dense_graph_ms": _eager_and_graph(lambda: F.linear(x, weight), calls, repeats).get("graph_ms"), "configs": []}
    for split_k in SPLITS:
        for mode in MODES if split_k > 1 else (-1,):
            entry = {"split_k": split_k, "split_k_mode": mode}
            try:
                out = torch._cslt_sparse_mm(packed, x.t(), alg_id=alg_id, split_k=split_k, split_k_mode=mode)
                entry["relative_difference"] = float(torch.linalg.norm(out.float() - reference) / torch.linalg.norm(reference))
                entry["graph_ms"] = _eager_and_graph(lambda: torch._cslt_sparse_mm(packed, x.t(), alg_id=alg_id, split_k=split_k, split_k_mode=mode),
                                                     calls, repeats).get("graph_ms")
            except RuntimeError as error:
                entry["error"] = f"{type(error).__name__}: {str(error)[:200]}"
                torch.cuda.synchronize()  # raises again if the context is poisoned: the run stops there
            row["configs"].append(entry)
    return row


def describe(row: dict) -> str:
    rows, cols = row["shape"]
    timed = [c for c in row["configs"] if c.get("graph_ms")]
    parts = [f"k{c['split_k']}/m{c['split_k_mode']} {row['dense_graph_ms'] / c['graph_ms']:.2f}x" for c in timed]
    failed = [f"k{c['split_k']}/m{c['split_k_mode']}: {c['error']}" for c in row["configs"] if "error" in c]
    return (f"[split_k] {rows:5d}x{cols:<5d} {row['tokens']:4d} tokens, alg {row['alg_id']}, mm_search {row['mm_search']}, dense "
            f"{row['dense_graph_ms']:.4f} ms; of dense: " + ", ".join(parts) + (f"; failed: {failed}" if failed else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    for rows_, cols in LLAMA2_7B_LINEARS.values():
        for tokens in args.tokens:
            rows.append(case(rows_, cols, tokens, args.repeats))
            print(describe(rows[-1]), flush=True)
            if args.out:
                args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
