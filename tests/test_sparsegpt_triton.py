"""SparseGPT's Triton kernel (sparsebench/metrics/_sparsegpt_triton.py) in Triton's interpreter on this CPU.

The cases run in one subprocess (tests/sparsegpt_triton_cases.py) because TRITON_INTERPRET must be
set before the kernel is defined. GPU checks of the compiled kernel are in tests/test_gpu.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsebench.errors import ConfigError
from sparsebench.metrics import METRICS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def interpreted() -> dict:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "sparsegpt_triton_cases.py")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["unstructured", "2:4", "4:8"])
def test_triton_kernel_matches_the_float64_reference_and_the_torch_path(interpreted, case):
    result = interpreted[case]
    exact = result["float64"]
    assert exact["dtype"] == "torch.float64"
    for other in ("vs_reference", "vs_torch"):
        assert exact[other]["mask_differs"] == 0
        assert exact[other]["max_abs"] < 1e-12
    assert exact["pruned"] == result["target_pruned"]  # floor(60 %) of every tile, or N of every M


@pytest.mark.parametrize("case", ["unstructured", "2:4", "4:8"])
def test_triton_kernel_in_float32_agrees_to_rounding(interpreted, case):
    single = interpreted[case]["float32"]
    assert single["dtype"] == "torch.float32"
    for other in ("vs_reference", "vs_torch"):
        assert single[other]["mask_differs"] <= 2  # a near-tie may flip under float32 rounding
        assert single[other]["relative"] < 1e-5


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_triton_kernel_breaks_n_m_ties_in_column_order(interpreted, pattern):
    result = interpreted[f"ties {pattern}"]
    assert result["vs_torch"]["mask_differs"] == 0 and result["vs_torch"]["max_abs"] == 0
    assert result["pruned"] == result["weights"] // 2


def test_kernel_key_names_allowed_values():
    spec = METRICS.get("sparsegpt")
    assert spec.make_params({"kernel": "torch"})["kernel"] == "torch"
    with pytest.raises(ConfigError, match="metric.kernel='cuda'.*triton, torch"):
        spec.make_params({"kernel": "cuda"})


def test_cpu_tensors_take_the_torch_path_whatever_the_kernel_key():
    import torch

    from sparsebench.masks import SparsityTarget
    from sparsebench.stats import HESSIAN, LayerStats

    g = torch.Generator().manual_seed(3)
    inputs = torch.randn(256, 40, generator=g, dtype=torch.float64)
    weight = torch.randn(9, 40, generator=g, dtype=torch.float64)
    stats = LayerStats(256, sums={HESSIAN: inputs.T @ inputs})
    spec = METRICS.get("sparsegpt")
    default = spec.prune(weight, stats, SparsityTarget(0.5), blocksize=16)
    forced = spec.prune(weight, stats, SparsityTarget(0.5), blocksize=16, kernel="torch")
    assert torch.equal(default, forced)


def test_layers_sharing_a_hessian_share_its_factor():
    import torch

    from sparsebench.metrics import sparsegpt as module

    g = torch.Generator().manual_seed(4)
    inputs = torch.randn(128, 24, generator=g, dtype=torch.float64)
    hessian = inputs.T @ inputs
    first = module._shared_factor(hessian, torch.float64, 0.01)
    assert module._shared_factor(hessian, torch.float64, 0.01) is first
    assert torch.equal(first, module.inverse_hessian_factor(hessian, 0.01))
    assert module._shared_factor(hessian, torch.float64, 0.02) is not first  # another damp
    hessian.mul_(2)  # modified in place: recomputed
    assert torch.equal(module._shared_factor(hessian, torch.float64, 0.01), module.inverse_hessian_factor(hessian, 0.01))
    del hessian
    assert not module._FACTOR_CACHE  # dropped with its Hessian

