"""Time the fixed-mask SparseGPT group solve: one batched triangular solve vs blocked sub-solves.

    python benchmarks/bench_sparsegpt_solve.py        # on a GPU if one is visible
"""

from __future__ import annotations

import time

import torch

from sparsebench.metrics.sparsegpt import solve_fixed_mask_group


def blocked(weights, factor, mask, sub=16):
    return solve_fixed_mask_group(weights, factor, mask, sub_block=sub)


def main():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 128, generator=g, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(x.T @ x + torch.eye(128, dtype=torch.float64))), upper=True)
    w = torch.randn(64, 128, generator=g, dtype=torch.float64)
    m = torch.rand(64, 128, generator=g) < 0.5
    a, b = solve_fixed_mask_group(w, u, m), blocked(w, u, m)
    print(f"float64 max difference blocked vs one solve: {max((a[0] - b[0]).abs().max().item(), (a[1] - b[1]).abs().max().item()):.2e}")
    rows = 4096 if device == "cuda" else 1024
    w = torch.randn(rows, 128, device=device)
    u = u.float().to(device)
    m = (torch.rand(rows, 128, device=device) < 0.5)
    for name, fn in [("one batched solve", solve_fixed_mask_group), ("blocked 16", lambda *a: blocked(*a, sub=16)), ("blocked 32", lambda *a: blocked(*a, sub=32)), ("blocked 8", lambda *a: blocked(*a, sub=8))]:
        for _ in range(3):
            fn(w, u, m)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            fn(w, u, m)
        if device == "cuda":
            torch.cuda.synchronize()
        print(f"{device} {rows} rows x 128 columns, {name}: {(time.perf_counter() - start) / 20 * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
