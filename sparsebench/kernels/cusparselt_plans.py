"""Which cuSPARSELt configuration runs a 2:4 product of one shape fastest: the algorithm id and the split-K.

``torch._cslt_sparse_mm_search`` times cuSPARSELt's algorithms for one product shape and returns the fastest one's
id, but with the input dimension unsplit: at decode token counts a product has few output tiles (a 4096 x 4096
weight at 16 tokens gives ``4096 / 128`` of them on a GPU of 132 multiprocessors), and cuSPARSELt can split the
input dimension among more programs (``split_k``, its ``CUSPARSELT_MATMUL_SPLIT_K``; ``split_k_mode``
``cusparseLtSplitKMode_t``: 1 one kernel, 2 a second kernel adding the parts), which ``torch._cslt_sparse_mm``
takes as arguments. ``search_plan`` keeps the searched id and, for at most ``SPLIT_K_MAX_TOKENS`` tokens, times
each split of ``SPLIT_KS`` in both modes as CUDA graphs (graphed: the product's GPU time, not cuSPARSELt's host
work of about 0.6 ms a call), each checked against the unsplit product, and keeps the fastest.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

SPLIT_K_MAX_TOKENS = 64  # more tokens give enough output tiles; prefill keeps the unsplit product
SPLIT_KS = (2, 4, 8)
SPLIT_K_MODES = (1, 2)  # CUSPARSELT_SPLIT_K_MODE_ONE_KERNEL, CUSPARSELT_SPLIT_K_MODE_TWO_KERNELS
CALLS, REPEATS = 20, 3  # products per timed graph, graphs timed per candidate (the median is kept)
AGREEMENT = 1e-2  # relative difference from the unsplit product a split one may have (fp16 sums in another order)


@dataclass(frozen=True)
class Plan:
    """How ``torch._cslt_sparse_mm`` is called: ``alg_id``, ``split_k`` (1: unsplit) and ``split_k_mode`` (-1: not set)."""

    alg_id: int
    split_k: int = 1
    split_k_mode: int = -1


def product(packed: torch.Tensor, rows_t: torch.Tensor, plan: Plan) -> torch.Tensor:
    """``W @ rows_t`` (``[out, tokens]``) for the packed 2:4 weight ``W``, the way ``plan`` says."""
    return torch._cslt_sparse_mm(packed, rows_t, alg_id=plan.alg_id, split_k=plan.split_k, split_k_mode=plan.split_k_mode)


def _graphed_ms(packed: torch.Tensor, rows_t: torch.Tensor, plan: Plan) -> float:
    """Median milliseconds of one product, ``CALLS`` of them captured in one CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        product(packed, rows_t, plan)  # cuSPARSELt's lazy set-up, outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(CALLS):
                product(packed, rows_t, plan)
    torch.cuda.current_stream().wait_stream(stream)
    times = []
    for _ in range(REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / CALLS)
    return statistics.median(times)


def search_plan(packed: torch.Tensor, rows_t: torch.Tensor) -> tuple[Plan, dict[str, float]]:
    """The fastest plan for ``W @ rows_t`` and every candidate's graphed milliseconds (``"k2/m1"``: split 2, mode 1).

    Must run eagerly on the GPU (not while a CUDA graph is captured, nor while ``torch.compile`` traces).
    """
    unsplit = Plan(int(torch._cslt_sparse_mm_search(packed, rows_t)))
    if rows_t.shape[1] > SPLIT_K_MAX_TOKENS:
        return unsplit, {}
    reference = product(packed, rows_t, unsplit).float()
    scale = float(torch.linalg.norm(reference)) or 1.0
    timings = {"k1": _graphed_ms(packed, rows_t, unsplit)}
    best, best_ms = unsplit, timings["k1"]
    for split_k in SPLIT_KS:
        for mode in SPLIT_K_MODES:
            plan = Plan(unsplit.alg_id, split_k, mode)
            name = f"k{split_k}/m{mode}"
            try:
                difference = float(torch.linalg.norm(product(packed, rows_t, plan).float() - reference)) / scale
            except RuntimeError as error:  # a configuration cuSPARSELt refuses for this shape: not a candidate
                log.debug("cuSPARSELt refused %s for %s: %s", name, tuple(rows_t.shape), error)
                continue
            if difference > AGREEMENT:
                raise RuntimeError(f"cuSPARSELt split-K {name} differs from the unsplit product by {difference:.2e} (relative) "
                                   f"for a [{reference.shape[0]}, {rows_t.shape[0]}] weight at {rows_t.shape[1]} tokens")
            timings[name] = _graphed_ms(packed, rows_t, plan)
            if timings[name] < best_ms:
                best, best_ms = plan, timings[name]
    return best, timings
