"""The walking kernel (sparsebench/kernels/bitmask_walk.py) called a few times at one LLaMA-2-7B shape, for a profiler
to measure where its time goes; prints nothing but its shape and one timing.

    ncu --kernel-name bitmask_walk_gemv --launch-skip 4 --launch-count 1 --set full \\
        python benchmarks/profile_walk_kernel.py --rows 11008 --cols 4096 --sparsity 0.7

One token on a random float16 weight pruned at random (``bench_bitmask_kernel.sparse_weight``), packed as
``BitmaskLinear`` packs it, three copies called in turn so that each call reads its weight from HBM, as in the
benchmark (the L2 cache holds 50 MB). ``--variant NAME`` runs one of ``bench_walk_variants.py``'s variants instead.
Needs a CUDA GPU and Nsight Compute (``ncu``); docs/efficiency.md, "Variants of the walking kernel", says what it is for.
"""
import argparse

import torch

import bench_bitmask_kernel  # siblings in benchmarks/, the script's folder and so the first entry of sys.path
import bench_walk_variants
from sparsebench.kernels.bitmask_linear import BitmaskLinear


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=11008)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--variant", help="a variant of bench_walk_variants.py")
    args = parser.parse_args()
    if args.variant:
        bench_walk_variants.use(args.variant)
    modules = []
    for seed in range(3):
        linear = torch.nn.Linear(args.cols, args.rows, bias=False, device="cuda", dtype=torch.float16)
        linear.weight.data = bench_bitmask_kernel.sparse_weight(args.rows, args.cols, args.sparsity, seed)
        modules.append(BitmaskLinear.from_linear(linear))
    x = torch.randn(1, args.cols, device="cuda", dtype=torch.float16)
    for call in range(args.calls):
        modules[call % 3](x)
    torch.cuda.synchronize()
    seconds = bench_bitmask_kernel.graph_time([lambda m=m: m(x) for m in modules], 10)
    print(f"walk {args.rows}x{args.cols} at {args.sparsity:.0%}: {seconds * 1e6:.1f} us a call (CUDA graph, median)", flush=True)


if __name__ == "__main__":
    main()
