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



def test_factor_key_names_allowed_values():
    spec = METRICS.get("sparsegpt")
    assert spec.make_params({"factor": "float64"})["factor"] == "float64"
    with pytest.raises(ConfigError, match="metric.factor='fp64'.*reference, float64"):
        spec.make_params({"factor": "fp64"})


def test_float64_factor_by_one_cholesky_is_the_exact_factor_rounded():
    import torch

    from sparsebench.metrics import sparsegpt as module

    g = torch.Generator().manual_seed(5)
    # an ill-conditioned Hessian (rank 12 plus a little noise) over 300 features: two levels of halving at leaf 64
    inputs = torch.randn(600, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 300, generator=g, dtype=torch.float64)
    inputs += 0.05 * torch.randn(600, 300, generator=g, dtype=torch.float64)
    hessian = inputs.T @ inputs
    exact = module.inverse_factor_of_damped(module.damped_hessian(hessian, 0.01))
    damped = module.damped_hessian(hessian, 0.01)
    lower = torch.linalg.cholesky(torch.flip(damped, (0, 1)))
    assert torch.allclose(module.lower_triangular_inverse(lower, leaf=64), torch.linalg.inv(lower), rtol=1e-9, atol=1e-12)
    assert torch.allclose(module.inverse_factor_by_one_cholesky(damped), exact, rtol=1e-8, atol=1e-12)
    in_float64 = module.inverse_hessian_factor(hessian.float(), 0.01, "float64")
    reference_way = module.inverse_hessian_factor(hessian.float(), 0.01)
    assert in_float64.dtype == torch.float32
    # against the exact factor of the float32 Hessian they were given
    exact_of_given = module.inverse_factor_of_damped(module.damped_hessian(hessian.float().double(), 0.01))
    error = lambda factor: float(torch.linalg.norm(factor.double() - exact_of_given) / torch.linalg.norm(exact_of_given))  # noqa: E731
    assert error(in_float64) < 1e-7 < error(reference_way)  # float32 rounding of the exact factor; the reference's float32 arithmetic is worse


def test_sparsegpt_with_the_float64_factor_matches_the_float64_reference():
    import torch

    from sparsebench.masks import SparsityTarget
    from sparsebench.stats import HESSIAN, LayerStats
    from sparsebench.testing.reference_impls import sparsegpt_column_by_column

    g = torch.Generator().manual_seed(6)
    inputs = torch.randn(512, 96, generator=g, dtype=torch.float64)
    weight = torch.randn(20, 96, generator=g, dtype=torch.float64)
    hessian = inputs.T @ inputs
    reference = sparsegpt_column_by_column(weight, hessian, 0.5, blocksize=32)
    ours = METRICS.get("sparsegpt").prune(weight.float(), LayerStats(512, sums={HESSIAN: hessian.float()}), SparsityTarget(0.5), blocksize=32, factor="float64")
    assert ((ours == 0) != (reference == 0)).float().mean() < 2e-3
    assert torch.linalg.norm(ours.double() - reference) / torch.linalg.norm(reference) < 1e-5
