"""The bitmask kernel (sparsebench/kernels/bitmask_linear.py) in Triton's interpreter on this CPU, and its module's checks.

The products run in one subprocess (tests/bitmask_kernel_cases.py) because TRITON_INTERPRET must be
set before the kernel is defined. GPU checks of the compiled kernel are in tests/test_bitmask_gpu.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from sparsebench.kernels.bitmask_linear import (  # noqa: E402
    INDEX_BYTES,
    BitmaskLinear,
    Launch,
    bitmask_matmul,
    chunk_offsets,
    default_launch,
    one_token_launch,
)
from sparsebench.sparse_layout import pack_bitmask  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PRODUCTS = ["chunks 50% T=1 one row", "chunks 70% T=1 two rows", "chunks 80% T=1 whole chunks", "chunks 70% T=1 two splits",
            "chunks 70% T=1 whole chunks two splits",
            "chunks 60% T=1 bfloat16", "empty and full rows chunks T=1", "50% T=1", "70% T=1 default launch", "80% T=1", "70% T=1 two splits", "70% T=5 two splits", "50% T=64",
            "80% T=65", "70% T=200 unpacked", "60% T=70 bfloat16 unpacked", "60% T=1 bfloat16", "empty and full rows T=1",
            "empty and full rows T=5", "empty and full rows unpacked T=100", "BitmaskLinear [2, 3, 300]"]
UNPACKED = ["unpack 264 columns with empty and full rows", "unpack 2100 columns with empty and full rows", "unpack 7x2100 70% float16",
            "unpack 5x1024 50% bfloat16", "unpack 3x13 0% float16", "unpack 4x40 100% float16"]


@pytest.fixture(scope="module")
def interpreted() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "bitmask_kernel_cases.py")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", PRODUCTS)
def test_kernel_matches_the_float64_product_to_rounding(interpreted, case):
    assert interpreted[case]["error_over_bound"] <= 1.0  # above 1: a wrong value, not rounding


@pytest.mark.parametrize("case", UNPACKED)
def test_unpacking_gives_the_dense_weight_exactly(interpreted, case):
    """Partial chunks and bytes (2,100 and 13 columns), empty and full rows, no weight kept, every one kept, into ``out``."""
    assert interpreted[case] is True


def test_cases_cover_the_shapes_they_name(interpreted):
    assert interpreted["50% T=64"]["shape"] == [64, 33] and interpreted["80% T=65"]["shape"] == [65, 33]
    for name, target in (("50% T=1", 0.5), ("70% T=1 two splits", 0.7), ("80% T=65", 0.8)):
        assert abs(interpreted[name]["sparsity"] - target) < 0.03
    counts = interpreted["empty and full rows T=1"]["row_counts"]
    assert counts.count(0) == 3 and counts.count(264) == 3
    counts = interpreted["empty and full rows chunks T=1"]["row_counts"]
    assert counts.count(0) == 3 and counts.count(2100) == 3
    assert interpreted["chunks 70% T=1 two rows"]["shape"] == [1, 9]  # an odd row count: the last program has one row
    assert interpreted["chunks 60% T=1 bfloat16"]["dtype"] == "torch.bfloat16"
    assert interpreted["60% T=1 bfloat16"]["dtype"] == "torch.bfloat16"
    assert interpreted["BitmaskLinear [2, 3, 300]"]["out_shape"] == [2, 3, 40]


def test_module_compiles_to_the_opaque_operator_with_the_eager_result(interpreted):
    compiled = interpreted["BitmaskLinear compiled"]
    assert compiled["graphs"] == 1 and compiled["out_shape"] == [2, 3, 40]
    assert "sparsebench.bitmask_matmul.default" in compiled["ops"]
    assert compiled["equal_to_eager"]
    compiled = interpreted["BitmaskLinear compiled bytes kernel"]
    assert compiled["out_shape"] == [1, 1, 40] and "sparsebench.bitmask_matmul.default" in compiled["ops"] and compiled["equal_to_eager"]


@pytest.mark.parametrize("rows, cols", [(4096, 4096), (11008, 4096), (4096, 11008), (12, 320), (8192, 28672)])
def test_one_token_defaults_to_the_walking_kernel_and_several_to_the_tensor_cores(rows, cols, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for density in (None, 0.3, 0.2, 0.4, 0.45):
        assert default_launch(1, rows, cols, (9, 0), density) == Launch(block_rows=1, block_bytes=INDEX_BYTES, warps=8, one_token="walk")
    assert default_launch(16, rows, cols).block_rows >= 16


def test_one_token_takes_the_kept_kernel_where_x_is_too_wide_for_the_walking_kernels_shared_memory(monkeypatch):
    from sparsebench.kernels.bitmask_walk import max_columns

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    widest = max_columns(8)
    assert default_launch(1, 4096, widest, (9, 0), 0.3).one_token == "walk"
    assert default_launch(1, 4096, widest + 32, (9, 0), 0.3) == Launch(block_rows=1, block_bytes=INDEX_BYTES, warps=8, one_token="kept")


@pytest.mark.parametrize("density, capability", [(0.5, (9, 0)), (0.46, None), (0.3, (7, 5))])
def test_one_token_takes_the_chunks_kernel_for_denser_weights_and_older_gpus(density, capability, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert default_launch(1, 4096, 4096, capability, density).one_token == "chunks"


@pytest.mark.parametrize("rows, cols, rows_per_program", [(4096, 4100, 1), (11008, 4104, 2), (12, 300, 1)])
def test_one_token_takes_the_chunks_kernel_where_the_mask_is_not_32_bit_words(rows, cols, rows_per_program, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert default_launch(1, rows, cols) == Launch(block_rows=rows_per_program, block_bytes=INDEX_BYTES, warps=1, one_token="chunks")


def test_the_interpreter_defaults_to_the_chunks_kernel_which_it_can_run(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert default_launch(1, 4096, 4096).one_token == "chunks"
    packed = pack_bitmask(torch.randn(8, 64, dtype=torch.float16))
    for kernel in ("kept", "walk"):
        with pytest.raises(RuntimeError, match=f"the '{kernel}' kernel is CUDA C.. .NVRTC., which Triton's interpreter cannot run"):
            bitmask_matmul(torch.randn(1, 64, dtype=torch.float16), packed, chunk_offsets(packed), launch=Launch(1, 128, 8, one_token=kernel))


@pytest.mark.parametrize("kernel", ["kept", "walk"])
@pytest.mark.parametrize("launch", [Launch(2, 128, 8), Launch(1, 64, 8), Launch(1, 128, 4, splits=2), Launch(1, 128, 8, prefetch=True)])
def test_the_cuda_kernels_refuse_launches_they_do_not_run(launch, kernel):
    packed = pack_bitmask(torch.randn(8, 64, dtype=torch.float16))
    with pytest.raises(ValueError, match=f"one token on the '{kernel}' kernel runs one warp a row"):
        bitmask_matmul(torch.randn(1, 64, dtype=torch.float16), packed, chunk_offsets(packed), launch=replace(launch, one_token=kernel))


def test_chunk_offsets_index_the_first_kept_weight_of_every_1024_columns():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(7, 2100, generator=g)
    weight[torch.rand(7, 2100, generator=g) < 0.7] = 0
    weight[2] = 0
    packed = pack_bitmask(weight)
    offsets = chunk_offsets(packed)
    keep = weight != 0
    columns = 8 * INDEX_BYTES
    assert offsets.dtype == torch.int32 and offsets.shape == (7, 3)
    for row in range(7):
        for chunk in range(3):
            expected = int(keep[:row].sum()) + int(keep[row, : chunk * columns].sum())
            assert int(offsets[row, chunk]) == expected


def test_module_keeps_no_dense_copy_and_counts_its_bytes():
    linear = torch.nn.Linear(1030, 12, dtype=torch.float16)
    with torch.no_grad():
        linear.weight[torch.rand(12, 1030, generator=torch.Generator().manual_seed(1)) < 0.7] = 0
    module = BitmaskLinear.from_linear(linear)
    nnz = int((linear.weight != 0).sum())
    assert sorted(name for name, _ in module.named_buffers()) == ["bias", "bitmask", "chunk_offsets", "row_offsets", "values"]
    assert not list(module.parameters())
    # values fp16, bitmask 1 bit a weight (rows padded to bytes), row_offsets int64, chunk_offsets int32 (2 chunks a row)
    assert module.weight_bytes() == 2 * nnz + 12 * 129 + 8 * 12 + 4 * 12 * 2
    assert torch.equal(module.bias, linear.bias.detach())
    assert module.packed().shape == (12, 1030)


def test_cpu_tensors_outside_the_interpreter_are_an_error_not_a_fallback():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs Triton's interpreter")
    module = BitmaskLinear.from_linear(torch.nn.Linear(64, 8, dtype=torch.float16))
    with pytest.raises(RuntimeError, match="runs on CUDA devices.*got device cpu"):
        module(torch.randn(1, 64, dtype=torch.float16))


def test_unsupported_dtypes_and_shapes_name_what_is_allowed():
    with pytest.raises(TypeError, match="float16, torch.bfloat16.*torch.float32"):
        BitmaskLinear.from_linear(torch.nn.Linear(64, 8))
    packed = pack_bitmask(torch.randn(8, 64, dtype=torch.float16))
    offsets = chunk_offsets(packed)
    with pytest.raises(TypeError, match="x.dtype in .*got torch.float32"):
        bitmask_matmul(torch.randn(1, 64), packed, offsets)
    with pytest.raises(ValueError, match=r"x of shape \[tokens, 64\], got \(1, 63\)"):
        bitmask_matmul(torch.randn(1, 63, dtype=torch.float16), packed, offsets)
    with pytest.raises(ValueError, match="chunk_offsets must be int32"):
        bitmask_matmul(torch.randn(1, 64, dtype=torch.float16), packed, offsets.long())
    with pytest.raises(ValueError, match="one token on the 'bytes' kernel runs one output row per program: the launch needs block_rows=1"):
        bitmask_matmul(torch.randn(1, 64, dtype=torch.float16), packed, offsets, launch=Launch(4, 16, one_token="bytes"))
    for launch in (Launch(4, 128, warps=1), Launch(2, 64, warps=1), Launch(2, 128, warps=2), Launch(1, 128, warps=1, prefetch=True)):
        with pytest.raises(ValueError, match=r"the launch needs block_rows in \(1, 2\), block_bytes=128, warps=1, prefetch=False"):
            bitmask_matmul(torch.randn(1, 64, dtype=torch.float16), packed, offsets, launch=launch)
    with pytest.raises(ValueError, match=r"Launch.one_token must be one of \('chunks', 'bytes', 'kept', 'walk'\), got 'words'"):
        Launch(1, 128, one_token="words")
    with pytest.raises(ValueError, match="5 tokens run on the tensor cores: the launch needs block_rows >= 16"):
        bitmask_matmul(torch.randn(5, 64, dtype=torch.float16), packed, offsets, launch=Launch(8, 16))
    with pytest.raises(ValueError, match="Launch.block_rows must be a power of two"):
        Launch(block_rows=3, block_bytes=16)
    with pytest.raises(ValueError, match="Launch.block_bytes must divide 128"):
        Launch(block_rows=4, block_bytes=256)


def test_each_module_says_which_one_token_kernel_it_runs_and_the_stage_counts_them(monkeypatch):
    from sparsebench.evaluate.efficiency import one_token_kernels

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    g = torch.Generator().manual_seed(3)
    modules = []
    for sparsity in (0.7, 0.8, 0.5):
        linear = torch.nn.Linear(256, 16, bias=False, dtype=torch.float16)
        with torch.no_grad():
            linear.weight[torch.rand(16, 256, generator=g) < sparsity] = 0
        modules.append(BitmaskLinear.from_linear(linear))
    assert [module.one_token_kernel for module in modules] == ["walk", "walk", "chunks"]  # walk up to a density of 0.45
    assert BitmaskLinear.from_linear(torch.nn.Linear(256, 16, dtype=torch.float16), Launch(2, 128, 1)).one_token_kernel == "chunks"
    assert one_token_kernels(torch.nn.Sequential(*modules, torch.nn.ReLU())) == {"chunks": 1, "walk": 2}
    assert one_token_kernels(torch.nn.Sequential(torch.nn.Linear(4, 4))) == {}


def test_a_module_can_name_its_one_token_kernel_and_keeps_the_default_launch_for_more_tokens(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    linear = torch.nn.Linear(256, 16, bias=False, dtype=torch.float16)
    module = BitmaskLinear.from_linear(linear)
    assert module.one_token_kernel == "chunks" and module.one_token_override is None  # dense: the default takes chunks
    kept = BitmaskLinear.kept_weights(linear)  # the bitmask_kept path's converter
    assert kept.one_token_kernel == "kept" and kept.launch is None
    assert kept.one_token_override == one_token_launch("kept", 16) == Launch(1, INDEX_BYTES, 8, one_token="kept")
    assert one_token_launch("chunks", 8192) == Launch(2, INDEX_BYTES, 1) and one_token_launch("chunks", 100) == Launch(1, INDEX_BYTES, 1)
    assert one_token_launch("bytes", 100) == Launch(1, 32, 1, one_token="bytes")
    with pytest.raises(ValueError, match=r"the one-token kernel must be one of \('chunks', 'bytes', 'kept', 'walk'\), got 'fast'"):
        one_token_launch("fast", 16)
    with pytest.raises(ValueError, match="a launch for every call or a one_token kernel, not both"):
        BitmaskLinear(pack_bitmask(linear.weight.detach()), launch=Launch(1, 128, 1), one_token="walk")
    with pytest.raises(TypeError, match="BitmaskLinear.kept_weights takes an nn.Linear, got Identity"):
        BitmaskLinear.kept_weights(torch.nn.Identity())
