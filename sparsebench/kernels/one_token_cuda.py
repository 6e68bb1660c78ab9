"""What the CUDA C++ one-token kernels on the ``sparse-bitmask`` layout share (``bitmask_kept``, ``bitmask_walk``).

- ``PRELUDE``: CUDA source placed before each kernel's own: the float16/bfloat16 conversions (PTX on the GPU, host
  functions of ``sparsebench/testing/warp_emulation.h`` on the CPU), the inclusive scan of the lanes' bit counts and
  the warp's sum written as the row's output (the kept kernel's machine code is byte for byte what it was when it
  spelled these out, so its timings stand).
- ``OneTokenKernel``: a kernel's source and name with its macros, its operand checks and its compiling and loading,
  once per architecture, dtype and block size (``kernels.nvrtc``), before any timed call or CUDA graph capture.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from sparsebench.kernels.launching import INDEX_BYTES
from sparsebench.kernels.nvrtc import CompiledKernel, compile_cubin

CHUNK_COLUMNS = 8 * INDEX_BYTES  # the columns of one chunk_offsets entry, a warp's step
WARP_COUNTS = (1, 2, 4, 8, 16)  # warps (rows) a block
WARPS_PER_BLOCK = 8  # the default launch's (bitmask_linear.one_token_launch)

PRELUDE = r"""
#ifndef IS_BF16
#define IS_BF16 0
#endif
#ifndef WARPS_PER_BLOCK
#define WARPS_PER_BLOCK 8
#endif
#ifndef CHUNK_COLUMNS
#define CHUNK_COLUMNS 1024
#endif
#define FULL 0xffffffffu

__device__ __forceinline__ float as_float(unsigned short bits) {
#if IS_BF16
  return __uint_as_float(((unsigned int)bits) << 16);
#elif defined(__CUDA_ARCH__)
  float value;
  asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(bits));
  return value;
#else
  return emu_half_to_float(bits);
#endif
}

__device__ __forceinline__ unsigned short from_float(float value) {
#if defined(__CUDA_ARCH__)
  unsigned short bits;
#if IS_BF16
  asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(bits) : "f"(value));
#else
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(value));
#endif
  return bits;
#elif IS_BF16
  return emu_float_to_bf16(value);
#else
  return emu_float_to_half(value);
#endif
}

// where each lane's `count` kept weights end in the warp's run: an inclusive scan over the lanes (five shuffles)
__device__ __forceinline__ int inclusive_scan(int count, int lane) {
  int end = count;
#pragma unroll
  for (int step = 1; step < 32; step <<= 1) {
    const int before = __shfl_up_sync(FULL, end, step);
    if (lane >= step) end += before;
  }
  return end;
}

// the lanes' float32 sums added over the warp; lane 0 writes the row's output, plus its bias
__device__ __forceinline__ void store_row(float sum, int lane, int row, const unsigned short* __restrict__ bias, int has_bias,
                                          unsigned short* __restrict__ out) {
#pragma unroll
  for (int step = 16; step > 0; step >>= 1) sum += __shfl_xor_sync(FULL, sum, step);
  if (lane == 0) {
    if (has_bias) sum += as_float(bias[row]);
    out[row] = from_float(sum);
  }
}
"""


@dataclass(frozen=True)
class OneTokenKernel:
    """A CUDA C++ one-token kernel: ``name`` (its ``extern "C"`` function) in ``source`` (``PRELUDE`` included),
    ``launch_name`` (its ``Launch.one_token``), ``what`` (how errors name it), the compute capability it needs and why,
    and the macros besides the dtype and the block size (``fixed_defines``)."""

    name: str
    source: str
    launch_name: str
    what: str
    min_capability: tuple[int, int]
    capability_reason: str
    fixed_defines: tuple[tuple[str, int], ...] = ()

    def defines(self, dtype: torch.dtype, warps_per_block: int) -> dict[str, int]:
        """The source's macros for ``dtype`` (float16 or bfloat16) and ``warps_per_block``."""
        if dtype not in (torch.float16, torch.bfloat16):
            raise TypeError(f"{self.what} supports torch.float16 and torch.bfloat16, got {dtype}")
        return {"IS_BF16": int(dtype == torch.bfloat16), "WARPS_PER_BLOCK": warps_per_block, **dict(self.fixed_defines),
                "CHUNK_COLUMNS": CHUNK_COLUMNS}

    def check_operands(self, x2d: Tensor, values: Tensor, bitmask: Tensor, offsets: Tensor) -> None:
        """Raise ValueError naming what the kernel needs and the operands lack (the checks both kernels share)."""
        if x2d.shape[0] != 1:
            raise ValueError(f"{self.what} (Launch.one_token='{self.launch_name}') multiplies one token, got {x2d.shape[0]}")
        if bitmask.shape[1] % 4:
            raise ValueError(f"{self.what} reads the mask as 32-bit words: it needs a multiple of 32 input columns "
                             f"(mask bytes per row a multiple of 4), got {bitmask.shape[1]} bytes per row; use Launch.one_token='chunks'")
        if not bitmask.is_contiguous() or bitmask.data_ptr() % 4:
            raise ValueError(f"{self.what} needs a contiguous, 4-byte aligned bitmask")
        if not values.is_contiguous() or not offsets.is_contiguous():
            raise ValueError(f"{self.what} needs contiguous values and chunk_offsets")
        if offsets.shape[1] != -(-bitmask.shape[1] // INDEX_BYTES):
            raise ValueError(f"chunk_offsets must have one entry per {CHUNK_COLUMNS} columns, got {offsets.shape[1]} for {bitmask.shape[1]} mask bytes")

    def load(self, device: torch.device, dtype: torch.dtype, warps_per_block: int) -> CompiledKernel:
        """The kernel for ``dtype`` on ``device``, compiled and loaded (once)."""
        if warps_per_block not in WARP_COUNTS:
            raise ValueError(f"{self.what} runs 1, 2, 4, 8 or 16 warps a block, got {warps_per_block}")
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < self.min_capability:
            raise RuntimeError(f"{self.what} needs compute capability {self.min_capability[0]}.{self.min_capability[1]} or newer "
                               f"({self.capability_reason}), this GPU has {major}.{minor}; use Launch.one_token='chunks'")
        kernel = _compiled(self, f"sm_{major}{minor}", dtype, warps_per_block)
        kernel.load(device)
        return kernel

    def cubin(self, arch: str, dtype: torch.dtype, warps_per_block: int) -> bytes:
        """The machine code for ``arch`` (e.g. ``"sm_90"``), compiled by NVRTC (no GPU needed)."""
        return compile_cubin(self.source, arch, self.defines(dtype, warps_per_block), name=f"{self.name}.cu")


@lru_cache(maxsize=None)
def _compiled(kernel: OneTokenKernel, arch: str, dtype: torch.dtype, warps_per_block: int) -> CompiledKernel:
    return CompiledKernel(kernel.cubin(arch, dtype, warps_per_block), kernel.name)
