"""The CUDA C++ kernels' own sources run on this CPU (sparsebench/testing/warp_emulation.h, a host thread a GPU thread),
built with AddressSanitizer (every access inside the caller's buffers) and ThreadSanitizer (no lane reads shared memory
that another lane wrote without a ``__syncwarp`` between): the products equal the float64 product within rounding.

The GPU tests (tests/test_bitmask_gpu.py) check the same kernel's machine code at LLaMA-2-7B shapes; these check its
logic and its memory accesses at small edge shapes on every CI run. Two tests break the source on purpose and expect
each sanitizer to report it, so that neither check passes by not looking.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparsebench.kernels import bitmask_kept, bitmask_walk
from sparsebench.kernels.bitmask_linear import chunk_offsets
from sparsebench.sparse_layout import pack_bitmask
from sparsebench.testing.host_cuda import HostKernelError, build_host_program, host_compiler, run_host_program

MAINS = Path(__file__).with_name("host_kernels")
KERNELS = {"kept": bitmask_kept, "walk": bitmask_walk}

pytestmark = pytest.mark.skipif(host_compiler() is None, reason="needs a C++ compiler (g++ or clang++) to build kernels for the CPU")

_BUILT: dict[tuple, Path] = {}
_WARPS: dict[Path, int] = {}  # each program's warps a block


def _program(tmp_path_factory, kernel: str, dtype: torch.dtype, warps: int, sanitizer: str, source: str | None = None) -> Path:
    module = KERNELS[kernel]
    source = module.SOURCE if source is None else source
    key = (kernel, dtype, warps, sanitizer, source)
    if key not in _BUILT:
        folder = tmp_path_factory.mktemp(f"{kernel}_{str(dtype)[6:]}_{warps}_{sanitizer}")
        _BUILT[key] = build_host_program(source, MAINS / f"bitmask_{kernel}_main.cpp", module.defines(dtype, warps), sanitizer, folder)
        _WARPS[_BUILT[key]] = warps
    return _BUILT[key]


def _weight(rows: int, cols: int, density: float, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(rows, cols, generator=g) * cols**-0.5).to(dtype)
    weight[torch.rand(rows, cols, generator=g) >= density] = 0
    if rows > 2:
        weight[1] = 0  # an empty row
        weight[2] = (torch.rand(cols, generator=g) + 0.5).to(dtype)  # a full row
    return weight


def _run(program: Path, folder: Path, weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, blocks: int | None = None) -> torch.Tensor:
    """``program`` (a kernel's host build, ``_program``) on ``weight`` packed as ``bitmask_linear`` packs it: ``W x + bias``."""
    packed = pack_bitmask(weight)
    offsets = chunk_offsets(packed)
    rows, cols = weight.shape
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"x": x.view(torch.int16), "values": packed.values.view(torch.int16), "words": packed.bitmask.view(torch.int32),
              "offsets": offsets, **({"bias": bias.view(torch.int16)} if bias is not None else {})}
    for name, tensor in arrays.items():
        (folder / f"{name}.bin").write_bytes(tensor.contiguous().numpy().tobytes())
    arguments = [str(folder), str(rows), str(cols // 32), str(offsets.shape[1]), str(int(bias is not None))]
    if program.name.startswith("bitmask_walk"):
        arguments += [str(bitmask_walk.shared_bytes(cols, _WARPS[program]))] + ([] if blocks is None else [str(blocks)])
    run_host_program(program, arguments)
    out = torch.frombuffer(bytearray((folder / "out.bin").read_bytes()), dtype=torch.int16)
    return out.view(x.dtype)


def _expect_product(out: torch.Tensor, weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> None:
    exact = weight.double() @ x.double() + (bias.double() if bias is not None else 0)
    rounding = torch.finfo(x.dtype).eps  # the output's own rounding, plus float32 sums of a few thousand products
    scale = (weight.double().abs() @ x.double().abs()) + (bias.double().abs() if bias is not None else 0)
    assert torch.all((out.double() - exact).abs() <= rounding * exact.abs() + 1e-5 * scale + 1e-30), (out, exact)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
# one build a kernel and dtype (a build takes about 2 s): eight warps a block for float16, one for bfloat16
@pytest.mark.parametrize("dtype, warps, rows, cols, density, bias", [
    (torch.float16, 8, 21, 2080, 0.3, True),     # three chunks, the last of two words; 21 rows: a block's last warps idle
    (torch.bfloat16, 1, 9, 96, 0.7, False),      # one chunk of three words
    (torch.float16, 8, 4, 4096, 0.95, False),    # denser than the kept kernel's registers hold (its tail loop)
    (torch.float16, 8, 6, 1024, 0.0, True),      # nothing kept but the full row
])
def test_each_kernel_computes_the_product_inside_its_buffers(tmp_path_factory, tmp_path, kernel, dtype, warps, rows, cols, density, bias):
    weight = _weight(rows, cols, density, dtype, seed=rows + cols)
    x = torch.randn(cols, generator=torch.Generator().manual_seed(1)).to(dtype)
    b = torch.randn(rows, generator=torch.Generator().manual_seed(2)).to(dtype) if bias else None
    out = _run(_program(tmp_path_factory, kernel, dtype, warps, "address"), tmp_path, weight, x, b)
    _expect_product(out, weight, x, b)


def test_the_walking_kernels_warps_take_every_row_of_a_smaller_grid(tmp_path_factory, tmp_path):
    """On a GPU the grid is the blocks it runs at once (``CompiledKernel.resident_blocks``), each warp taking several rows."""
    weight = _weight(21, 2080, 0.3, torch.float16, seed=7)
    x = torch.randn(2080, generator=torch.Generator().manual_seed(8)).to(torch.float16)
    bias = torch.randn(21, generator=torch.Generator().manual_seed(9)).to(torch.float16)
    out = _run(_program(tmp_path_factory, "walk", torch.float16, 8, "address"), tmp_path, weight, x, bias, blocks=2)  # 16 warps, 21 rows
    _expect_product(out, weight, x, bias)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_each_kernels_threads_share_memory_only_across_a_barrier(tmp_path_factory, tmp_path, kernel):
    weight = _weight(3, 2048, 0.4, torch.float16, seed=3)
    x = torch.randn(2048, generator=torch.Generator().manual_seed(4)).to(torch.float16)
    out = _run(_program(tmp_path_factory, kernel, torch.float16, 2, "thread"), tmp_path, weight, x, None)
    _expect_product(out, weight, x, None)


# each kernel's source with one guard or fence taken out: (kernel, what is replaced, by what, sanitizer, its report)
BROKEN = {
    "kept reads past its values": ("kept", "held[i] = lane + 32 * i < total ? __ldg(chunk_values + lane + 32 * i) : (unsigned short)0;",
                                   "held[i] = __ldg(chunk_values + lane + 32 * i);", "address", "heap-buffer-overflow"),
    "kept without the fence before its list is read": ("kept", "    __syncwarp();\n    const unsigned long long chunk_x",
                                                       "    const unsigned long long chunk_x", "thread", "data race"),
    "walk copies whole pieces past its values": ("walk", "else copy_last_bytes(destination, source, 2 * (n_values - index));",
                                                 "else copy_16_bytes(destination, source);", "address", "heap-buffer-overflow"),
    "walk without the barrier after copying x": ("walk", "  __syncthreads();\n", "", "thread", "data race"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_source_is_reported_by_its_sanitizer(tmp_path_factory, tmp_path, case):
    kernel, guarded, unguarded, sanitizer, report = BROKEN[case]
    source = KERNELS[kernel].SOURCE
    assert source.count(guarded) == 1
    weight = _weight(2, 1024, 0.3, torch.float16, seed=5)  # two sparse rows, a warp each: the last row's over-read leaves the buffer
    x = torch.ones(1024, dtype=torch.float16)
    with pytest.raises(HostKernelError, match=report):
        _run(_program(tmp_path_factory, kernel, torch.float16, 2, sanitizer, source.replace(guarded, unguarded)), tmp_path, weight, x, None)
