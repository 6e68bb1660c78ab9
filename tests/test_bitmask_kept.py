"""The CUDA C++ one-token kernels (sparsebench/kernels/bitmask_kept.py, bitmask_walk.py) compiled on this CPU by NVRTC,
and their host-side checks.

NVRTC needs no GPU: the kernels' sources are compiled for Ampere and Hopper here, and their machine code read with the
cuobjdump that Triton ships (no local memory, no stack: nothing spills). Their products are checked against
``F.linear`` on a GPU in tests/test_bitmask_gpu.py, and their sources run on the CPU in tests/test_kernels_on_the_host.py.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import tempfile

import pytest
import torch

from sparsebench.kernels import bitmask_kept, bitmask_walk
from sparsebench.kernels.bitmask_kept import CHUNK_COLUMNS, SOURCE, WARPS_PER_BLOCK, check_kept_operands, defines
from sparsebench.kernels.nvrtc import NvrtcError, compile_cubin, nvrtc_library, programmatic_launch_config

triton = pytest.importorskip("triton")


def _nvrtc_or_skip() -> None:
    try:
        nvrtc_library()
    except NvrtcError as error:
        pytest.skip(f"NVRTC is not installed (pip install nvidia-cuda-nvrtc): {str(error).splitlines()[0]}")


def _resource_usage(cubin: bytes) -> dict[str, int]:
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        text = subprocess.run([cuobjdump, "-res-usage", handle.name], capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kernel", ["kept", "walk"])
def test_the_kernels_compile_without_spilling(arch, dtype, kernel):
    _nvrtc_or_skip()
    module = bitmask_kept if kernel == "kept" else bitmask_walk
    usage = _resource_usage(compile_cubin(module.SOURCE, arch, module.defines(dtype)))
    assert usage["LOCAL"] == 0 and usage["STACK"] == 0
    # kept: a list of 16-bit columns a warp; walk: its value slots (x is dynamic shared memory)
    ours = WARPS_PER_BLOCK * CHUNK_COLUMNS * 2 if kernel == "kept" else 0  # walk: all of it dynamic (bitmask_walk.shared_bytes)
    assert usage["SHARED"] in (ours, ours + 1024)  # sm_90 reserves 1 KB a block for the system
    assert usage["REG"] <= 64  # eight warps a block leave room for eight blocks (64 warps) on a multiprocessor


def test_compile_errors_carry_the_compilers_log():
    _nvrtc_or_skip()
    with pytest.raises(NvrtcError, match=r"(?s)could not compile broken\.cu for sm_90.*undefined_function"):
        compile_cubin('extern "C" __global__ void broken() { undefined_function(); }', "sm_90", name="broken.cu")


def test_only_real_architectures_and_half_precision():
    with pytest.raises(ValueError, match="arch must name a real architecture"):
        compile_cubin("", "compute_90")
    with pytest.raises(TypeError, match="supports torch.float16 and torch.bfloat16, got torch.float32"):
        defines(torch.float32)


def test_a_programmatic_launch_passes_cuda_h_s_structures():
    """cuLaunchKernelEx reads CUlaunchConfig and CUlaunchAttribute as cuda.h lays them out on 64-bit machines (CUDA
    12.x's definitions, read in copies of the header in public repositories; launches built this way ran on an H100
    with torch 2.11.0+cu130, docs/efficiency.md): an attribute is its id, padding to 8 bytes and a 64-byte union; the
    config's stream follows seven 32-bit fields at byte 32."""
    config, attribute = programmatic_launch_config((660, 1, 1), (256, 1, 1), 41_584, 0x1234)
    assert ctypes.sizeof(attribute) == 72 and ctypes.sizeof(config) == 56
    assert bytes(attribute)[:12] == (6).to_bytes(4, "little") + bytes(4) + (1).to_bytes(4, "little")  # serialization allowed
    raw = ctypes.string_at(ctypes.addressof(config), 56)
    assert [int.from_bytes(raw[4 * i:4 * i + 4], "little") for i in range(7)] == [660, 1, 1, 256, 1, 1, 41_584]
    assert int.from_bytes(raw[32:40], "little") == 0x1234
    assert int.from_bytes(raw[40:48], "little") == ctypes.addressof(attribute) and int.from_bytes(raw[48:52], "little") == 1


def test_operand_checks_name_what_the_kernel_needs():
    values, offsets = torch.zeros(10, dtype=torch.float16), torch.zeros(4, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="multiplies one token, got 2"):
        check_kept_operands(torch.zeros(2, 64), values, torch.zeros(4, 8, dtype=torch.uint8), offsets)
    with pytest.raises(ValueError, match="a multiple of 32 input columns .* got 9 bytes per row; use Launch.one_token='chunks'"):
        check_kept_operands(torch.zeros(1, 72), values, torch.zeros(4, 9, dtype=torch.uint8), offsets)
    with pytest.raises(ValueError, match="one entry per 1024 columns, got 2"):
        check_kept_operands(torch.zeros(1, 64), values, torch.zeros(4, 8, dtype=torch.uint8), torch.zeros(4, 2, dtype=torch.int32))


def test_the_walking_kernels_operand_checks_name_what_it_needs():
    values, offsets = torch.zeros(16, dtype=torch.float16), torch.zeros(4, 1, dtype=torch.int32)
    bitmask = torch.zeros(4, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="the walking kernel .Launch.one_token='walk'. multiplies one token, got 2"):
        bitmask_walk.check_walk_operands(torch.zeros(2, 64), values, bitmask, offsets)
    with pytest.raises(ValueError, match="a multiple of 32 input columns .* got 9 bytes per row"):
        bitmask_walk.check_walk_operands(torch.zeros(1, 72), values, torch.zeros(4, 9, dtype=torch.uint8), offsets)
    with pytest.raises(ValueError, match="16-byte pieces .cp.async.: it needs values starting on a 16-byte boundary"):
        bitmask_walk.check_walk_operands(torch.zeros(1, 64), values[1:], bitmask, offsets)
    widest = bitmask_walk.max_columns()
    assert 90_000 < widest < 110_000  # LLaMA's widest input (28,672 columns, 70B's down_proj) fits with room
    assert bitmask_walk.shared_bytes(widest) <= bitmask_walk.SHARED_MEMORY_LIMIT < bitmask_walk.shared_bytes(widest + 32)
    assert bitmask_walk.shared_bytes(11008) == 2 * (11008 // 32 * 34) + 8 * 2 * 2 * bitmask_walk.VALUE_SLOTS  # already a 16-byte multiple
    too_wide = torch.zeros(1, (widest + 32) // 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=f"at most {widest} columns with 8 warps a block, got {widest + 32}; use Launch.one_token='kept'"):
        bitmask_walk.check_walk_operands(torch.zeros(1, widest + 32), values, too_wide, torch.zeros(1, -(-too_wide.shape[1] // 128), dtype=torch.int32))
