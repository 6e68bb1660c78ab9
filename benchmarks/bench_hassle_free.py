"""HASSLE-free's low-rank step: the Gram-eigenvector form against a full SVD, and whole prunes of one layer.

    python benchmarks/bench_hassle_free.py            # on a GPU if one is visible, else the CPU

For each layer shape (SmolLM2-135M's and LLaMA-2-7B's) it times the low-rank step as computed now
(``best_low_rank``: the top eigenvectors of the smaller Gram matrix of P = M C, in float64) against
the same step through ``torch.linalg.svd`` of P (the form used before, in float32), prints the
ratio and the largest difference of the two products B A relative to the product's largest entry,
then times one whole HASSLE-free prune (rank 64, 20 iterations) of that layer at 70 %.
Weights and inputs are random (times only; a random layer is far from low-rank).
"""

from __future__ import annotations

import argparse
import time

import torch

from sparsebench.masks import SparsityTarget
from sparsebench.metrics import METRICS
from sparsebench.metrics.hassle_free import best_low_rank
from sparsebench.stats import HESSIAN, LayerStats

SHAPES = {
    "SmolLM2 q/o 576x576": (576, 576),
    "SmolLM2 gate/up 1536x576": (1536, 576),
    "SmolLM2 down 576x1536": (576, 1536),
    "LLaMA-2-7B q 4096x4096": (4096, 4096),
    "LLaMA-2-7B gate 11008x4096": (11008, 4096),
    "LLaMA-2-7B down 4096x11008": (4096, 11008),
}


def svd_low_rank(residual, cholesky, rank):
    """The low-rank step through a full SVD of P = M C (the form this project used before)."""
    left, values, right = torch.linalg.svd(residual @ cholesky, full_matrices=False)
    root = values[:rank].sqrt()
    down = torch.linalg.solve_triangular(cholesky, root.unsqueeze(1) * right[:rank], upper=False, left=False)
    return left[:, :rank] * root, down


def timed(fn, device, repeats=3):
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return result, (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=None, help=f"a subset of: {', '.join(SHAPES)}")
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--no-prune", action="store_true", help="time the low-rank step only")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = args.shapes or (list(SHAPES) if device == "cuda" else [name for name in SHAPES if name.startswith("SmolLM2")])
    print(f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}, rank {args.rank}")
    for name in shapes:
        rows, cols = SHAPES[name]
        g = torch.Generator(device=device).manual_seed(0)
        inputs = torch.randn(4 * cols, cols, generator=g, device=device)
        hessian = inputs.T @ inputs
        cholesky = torch.linalg.cholesky(hessian + 0.01 * hessian.diagonal().mean() * torch.eye(cols, device=device))
        residual = torch.randn(rows, cols, generator=g, device=device)
        (up, down), gram_s = timed(lambda: best_low_rank(residual, cholesky, args.rank), device)
        (svd_up, svd_down), svd_s = timed(lambda: svd_low_rank(residual, cholesky, args.rank), device, repeats=1)
        product, svd_product = up @ down, svd_up @ svd_down
        difference = float((product - svd_product).abs().max() / svd_product.abs().max())
        damped = cholesky.double() @ cholesky.double().T

        def objective(low_rank):  # what the step minimises: tr((M - L) H (M - L)^T), in float64
            error = residual.double() - low_rank.double()
            return float(torch.sum((error @ damped) * error))

        excess = objective(product) / objective(svd_product) - 1
        line = (f"{name:<28} low-rank step: SVD {svd_s * 1e3:8.1f} ms, Gram eigenvectors {gram_s * 1e3:7.1f} ms -> {svd_s / gram_s:5.1f}x; "
                f"max |BA difference| / max |BA| {difference:.1e}; objective, Gram form / SVD form - 1: {excess:+.1e}")
        if not args.no_prune:
            stats = LayerStats(inputs.shape[0], sums={HESSIAN: hessian})
            weight = torch.randn(rows, cols, generator=g, device=device)
            prune = METRICS.get("hassle_free").prune
            result, prune_s = timed(lambda: prune(weight, stats, SparsityTarget(0.7), rank=args.rank, iterations=20), device, repeats=1)
            line += f"; whole prune (20 iterations, {result.info['iterations']} accepted) {prune_s:.2f} s"
        print(line, flush=True)


if __name__ == "__main__":
    main()
