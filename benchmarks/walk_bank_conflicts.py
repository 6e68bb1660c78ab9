"""A model of the walking kernel's shared-memory reads (sparsebench/kernels/bitmask_walk.py), no GPU needed: how many
wavefronts (bank passes) one warp-wide read of ``x`` and one of the values take, on random masks.

    python benchmarks/walk_bank_conflicts.py [--densities 0.3 0.5] [--chunks 2000]

Each lane walks its 32-bit mask word from the highest bit down; at step ``k`` a lane with bits left reads ``x`` at
its bit's column (the kernel's layout: 32 columns of float16 and two of padding a lane, 68 bytes) and its ``k``-th
value from the end of its run (the chunk's values packed in lane order, from an offset of 0-7 halves). A read takes
as many wavefronts as the most distinct 4-byte words any one of the 32 banks holds among the lanes' addresses. Also
printed: the same for ``x`` staged as float32 with column ``32 w + b`` at ``32 b + w`` (bench_walk_variants.py's
``x_floats``), and the steps a chunk (the densest lane's bits) against the mean. A model of the bank rule, not a
measurement.
"""
import argparse

import numpy as np


def wavefronts(byte_addresses: list[int]) -> int:
    words = np.unique(np.asarray(byte_addresses, dtype=np.int64) // 4)
    return int(np.bincount(words % 32, minlength=32).max()) if len(words) else 0


def model(density: float, chunks: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    totals = {"x": 0, "values": 0, "x_floats": 0}
    steps_all = bits_all = 0
    for _ in range(chunks):
        bits = rng.random((32, 32)) < density  # lane, bit
        counts = bits.sum(1)
        ends = np.cumsum(counts)
        lead = int(rng.integers(0, 8))
        columns = [np.nonzero(bits[lane])[0][::-1] for lane in range(32)]  # highest bit first
        steps = int(counts.max())
        steps_all += steps
        bits_all += int(counts.sum())
        for k in range(steps):
            lanes = [lane for lane in range(32) if counts[lane] > k]
            totals["x"] += wavefronts([68 * lane + 2 * int(columns[lane][k]) for lane in lanes])
            totals["values"] += wavefronts([2 * (lead + int(ends[lane]) - 1 - k) for lane in lanes])
            totals["x_floats"] += wavefronts([128 * int(columns[lane][k]) + 4 * lane for lane in lanes])
    return {"steps": steps_all / chunks, "mean_bits": bits_all / chunks / 32, **{key: value / steps_all for key, value in totals.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--chunks", type=int, default=2000)
    args = parser.parse_args()
    for density in args.densities:
        m = model(density, args.chunks)
        print(f"density {density:.2f}: {m['steps']:.1f} steps a chunk (a lane's mean {m['mean_bits']:.1f} bits); wavefronts a step: "
              f"x {m['x']:.2f}, values {m['values']:.2f}, x as float32 transposed {m['x_floats']:.2f}")


if __name__ == "__main__":
    main()
