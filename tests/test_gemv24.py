"""The gemv24 kernels (sparsebench/kernels/gemv24.py) in Triton's interpreter on this CPU, their module's checks, and the
cusparselt_gemv24 path's routing.

The products run in one subprocess (tests/gemv24_cases.py) because TRITON_INTERPRET must be set before the
kernels are defined. GPU checks of the compiled kernels are in tests/test_gemv24_gpu.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from sparsebench.kernels.gemv24 import Gemv24Linear, Launch, gemv24_matmul  # noqa: E402
from sparsebench.kernels.paths import GEMV24_MAX_TOKENS, PATHS, TokenCountLinear, paths_for  # noqa: E402
from sparsebench.sparse_layout import keep_24, pack_24  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PRODUCTS = ["T=1", "T=1 default launch bias", "T=1 two splits", "T=2", "T=5 bias", "T=16", "T=17", "T=1 bfloat16",
            "Gemv24Linear [2, 3, 264]"]


@pytest.fixture(scope="module")
def interpreted() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "gemv24_cases.py")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", PRODUCTS)
def test_kernel_matches_f_linear_on_the_unpacked_weight(interpreted, case):
    assert interpreted[case]["error_over_tolerance"] <= 1.0


def test_cases_cover_what_they_name(interpreted):
    assert interpreted["T=16"]["shape"] == [16, 33] and interpreted["T=17"]["shape"] == [17, 20]
    assert interpreted["T=1 bfloat16"]["dtype"] == "torch.bfloat16"
    assert interpreted["T=1"]["zero_row"] == 0.0 and interpreted["T=16"]["zero_row"] == 0.0  # the all-zero row
    assert interpreted["Gemv24Linear [2, 3, 264]"]["out_shape"] == [2, 3, 40]


def test_module_compiles_to_the_opaque_operator_with_the_eager_result(interpreted):
    for case, shape in (("Gemv24Linear compiled", [2, 3, 40]), ("Gemv24Linear compiled launch", [1, 1, 40])):
        compiled = interpreted[case]
        assert compiled["graphs"] == 1 and compiled["out_shape"] == shape, case
        assert compiled["ops"].count("sparsebench.gemv24_matmul.default") == 1, compiled["ops"]
        assert compiled["equal_to_eager"], case


def test_cusparselt_gemv24_compiled_routes_one_token_to_gemv24_and_more_to_the_prefill_kernel(interpreted):
    decode = interpreted[f"TokenCountLinear compiled {GEMV24_MAX_TOKENS} token(s)"]
    prefill = interpreted[f"TokenCountLinear compiled {GEMV24_MAX_TOKENS + 1} token(s)"]
    assert decode["graphs"] == 1 and decode["ops"].count("sparsebench.gemv24_matmul.default") == 1 and decode["equal_to_eager"]
    assert prefill["graphs"] == 1 and "sparsebench.gemv24_matmul.default" not in prefill["ops"] and prefill["equal_to_eager"]
    assert "<built-in function linear>" in prefill["ops"]  # the stand-in for cuSPARSELt


def _linear_24(rows: int, cols: int, bias: bool = True) -> torch.nn.Linear:
    linear = torch.nn.Linear(cols, rows, bias=bias, dtype=torch.float16)
    with torch.no_grad():
        linear.weight.mul_(keep_24(linear.weight))
    return linear


def test_module_keeps_no_dense_copy_and_counts_its_bytes():
    module = Gemv24Linear.from_linear(_linear_24(12, 264))
    assert sorted(name for name, _ in module.named_buffers()) == ["bias", "bitmask", "values"] and not list(module.parameters())
    assert module.weight_bytes() == 12 * 132 * 2 + 12 * 33 + 12 * 2  # values, bitmask, bias: 0.5625 of dense plus the bias


def test_more_tokens_than_the_module_takes_is_an_error_naming_the_limit():
    module = Gemv24Linear.from_linear(_linear_24(12, 264))
    with pytest.raises(ValueError, match="at most 16 tokens a call.*got 17"):
        module(torch.zeros(17, 264, dtype=torch.float16))
    assert Gemv24Linear.any_tokens(_linear_24(12, 264)).max_tokens is None


def test_unsupported_shapes_and_dtypes_name_what_is_allowed():
    with pytest.raises(ValueError, match="in_features must be a multiple of 8, got 260"):
        Gemv24Linear.from_linear(_linear_24(8, 260))
    with pytest.raises(ValueError, match="float16, torch.bfloat16.*torch.float32"):
        Gemv24Linear.from_linear(_linear_24(8, 64).float())
    with pytest.raises(ValueError, match="not 2:4"):
        Gemv24Linear.from_linear(torch.nn.Linear(64, 8, dtype=torch.float16))
    packed = pack_24(_linear_24(8, 64).weight.detach())
    with pytest.raises(ValueError, match=r"x of shape \[tokens, 64\], got \(1, 72\)"):
        gemv24_matmul(torch.zeros(1, 72, dtype=torch.float16), packed)
    with pytest.raises(TypeError, match="x in the values' dtype torch.float16, got torch.bfloat16"):
        gemv24_matmul(torch.zeros(1, 64, dtype=torch.bfloat16), packed)
    with pytest.raises(ValueError, match="5 tokens run on the tensor cores: the launch needs block_rows >= 16"):
        gemv24_matmul(torch.zeros(5, 64, dtype=torch.float16), packed, launch=Launch(4, 16))
    with pytest.raises(ValueError, match="Launch.block_rows must be a power of two"):
        Launch(3, 16)


def test_cpu_tensors_outside_the_interpreter_are_an_error_not_a_fallback():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs Triton's interpreter")
    with pytest.raises(RuntimeError, match="runs on CUDA devices.*got device cpu"):
        Gemv24Linear.from_linear(_linear_24(8, 64))(torch.zeros(1, 64, dtype=torch.float16))


class _Recorder(torch.nn.Module):
    def __init__(self, name: str, size: int) -> None:
        super().__init__()
        self.name, self.size, self.in_features, self.out_features, self.calls = name, size, 64, 8, []

    def weight_bytes(self) -> int:
        return self.size

    def forward(self, x):
        self.calls.append(x.shape)
        return x[..., :8]


def test_cusparselt_gemv24_routes_by_token_count_and_counts_both_forms():
    decode, prefill = _Recorder("gemv24", 100), _Recorder("cusparselt", 7)
    module = TokenCountLinear(decode, prefill)
    module(torch.zeros(GEMV24_MAX_TOKENS, 1, 64))
    module(torch.zeros(1, GEMV24_MAX_TOKENS + 1, 64))
    assert decode.calls == [(GEMV24_MAX_TOKENS, 1, 64)] and prefill.calls == [(1, GEMV24_MAX_TOKENS + 1, 64)]
    assert module.weight_bytes() == 107
    names = [path.name for path in paths_for("2:4")]
    assert "cusparselt_gemv24" in names and "gemv24" in names and f"<= {GEMV24_MAX_TOKENS} token(s)" in PATHS["cusparselt_gemv24"].description
