"""The tiled Triton transpose (sparsebench/kernels/transpose.py) in Triton's interpreter on this CPU: equal to
``.t().contiguous()`` for shapes that are and are not multiples of its tile. GPU: tests/test_gpu_kernels.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from sparsebench.kernels.transpose import transposed_copy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CASES = """
import json, os
os.environ["TRITON_INTERPRET"] = "1"
import torch
from sparsebench.kernels.transpose import transposed_copy
results = {}
for rows, cols, dtype in ((64, 128, torch.float16), (100, 37, torch.float16), (5, 130, torch.bfloat16), (1, 1, torch.float16)):
    source = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows)).to(dtype)
    out = transposed_copy(source)
    results[f"{rows}x{cols}"] = {"equal": torch.equal(out, source.t()), "contiguous": out.is_contiguous(), "shape": list(out.shape)}
print(json.dumps(results))
"""


def test_transpose_equals_the_transposed_copy_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", CASES], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(results) == {"64x128", "100x37", "5x130", "1x1"}
    for name, result in results.items():
        rows, cols = map(int, name.split("x"))
        assert result == {"equal": True, "contiguous": True, "shape": [cols, rows]}, name


def test_transpose_refuses_what_it_cannot_read_in_rows():
    with pytest.raises(ValueError, match="contiguous 2-D tensor; got shape \\(4, 6\\), strides \\(1, 4\\)"):
        transposed_copy(torch.zeros(6, 4).t())
    with pytest.raises(ValueError, match="contiguous 2-D tensor; got shape \\(2, 3, 4\\)"):
        transposed_copy(torch.zeros(2, 3, 4))
    with pytest.raises(RuntimeError, match="transposed_copy runs on CUDA devices"):
        transposed_copy(torch.zeros(3, 4))
