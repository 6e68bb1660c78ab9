"""Run SparseGPT's Triton kernel in Triton's interpreter on CPU tensors; print one JSON object.

Called by tests/test_sparsegpt_triton.py in a subprocess, because TRITON_INTERPRET must be set
before the kernel is defined (and another test may already have compiled it for a GPU). For each
case: the kernel's solve (``_triton_solve``) against the torch path (``sparsegpt_solve`` on CPU)
and against the float64 column-by-column transcription of the reference (sparsebench/testing/reference_impls.py).
"""

from __future__ import annotations

import json
import os

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from sparsebench.masks import NMPattern, SparsityTarget, prune_count  # noqa: E402
from sparsebench.metrics import sparsegpt as module  # noqa: E402
from sparsebench.testing.reference_impls import sparsegpt_column_by_column  # noqa: E402

# (name, rows, cols, blocksize, ratio, n, m): odd row counts, column counts not a multiple of the
# block (a last block of 8 or 16 columns), blocks of 8 to 32 columns (many blocks, several GEMMs)
CASES = [
    ("unstructured", 21, 72, 8, 0.6, 0, 0),
    ("2:4", 21, 72, 32, 0.5, 2, 4),
    ("4:8", 19, 80, 8, 0.5, 4, 8),
]


def _layer(rows: int, cols: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(cols, cols, generator=g, dtype=torch.float64) / cols**0.5
    inputs = torch.randn(4 * cols, cols, generator=g, dtype=torch.float64) @ mixing
    inputs += 0.1 * torch.randn(4 * cols, cols, generator=g, dtype=torch.float64)
    return torch.randn(rows, cols, generator=g, dtype=torch.float64), inputs.T @ inputs


def _compare(ours: torch.Tensor, other: torch.Tensor) -> dict:
    ours, other = ours.double(), other.double()
    return {"mask_differs": int(((ours == 0) != (other == 0)).sum()), "max_abs": float((ours - other).abs().max()),
            "relative": float(torch.linalg.norm(ours - other) / torch.linalg.norm(other))}


def main() -> None:
    results = {}
    for index, (name, rows, cols, blocksize, ratio, n, m) in enumerate(CASES):
        weight, hessian = _layer(rows, cols, index)
        target = SparsityTarget(ratio, NMPattern(n, m) if m else None)
        factor = module.inverse_hessian_factor(hessian, 0.01)
        reference = sparsegpt_column_by_column(weight, hessian, ratio, n, m, blocksize=blocksize)
        tiles = [min(blocksize, cols - start) for start in range(0, cols, blocksize)]
        target_pruned = sum(prune_count(rows * size, ratio) for size in tiles) if not m else rows * cols // m * n
        case = {"weights": weight.numel(), "target_pruned": target_pruned}
        for dtype in (torch.float64, torch.float32):
            label = "float64" if dtype == torch.float64 else "float32"
            ours = module._triton_solve(weight.to(dtype), factor.to(dtype), target, blocksize)
            torch_path = module.sparsegpt_solve(weight.to(dtype), factor.to(dtype), target, blocksize)
            case[label] = {"vs_torch": _compare(ours, torch_path), "vs_reference": _compare(ours, reference),
                           "pruned": int((ours == 0).sum()), "dtype": str(ours.dtype)}
        results[name] = case
    # ties: U = I (no propagation) and weights from {-2, -1, 1, 2}: equal scores everywhere in a
    # group, so the N:M choice must be the stable one (earlier columns first), as torch.sort(stable=True)
    g = torch.Generator().manual_seed(7)
    tied = torch.tensor([-2.0, -1.0, 1.0, 2.0], dtype=torch.float64)[torch.randint(0, 4, (13, 48), generator=g)]
    identity = torch.eye(48, dtype=torch.float64)
    for n, m in ((2, 4), (4, 8)):
        target = SparsityTarget(n / m, NMPattern(n, m))
        ours = module._triton_solve(tied, identity, target, 16)
        torch_path = module.sparsegpt_solve(tied, identity, target, 16)
        results[f"ties {n}:{m}"] = {"vs_torch": _compare(ours, torch_path), "pruned": int((ours == 0).sum()), "weights": tied.numel()}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
