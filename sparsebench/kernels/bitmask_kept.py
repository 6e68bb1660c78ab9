"""One-token products on the ``sparse-bitmask`` layout that walk only the kept weights: a CUDA C++ kernel (NVRTC).

What it computes: ``y = x @ W^T (+ bias)`` for one token, ``x [1, in]`` in float16 or bfloat16, ``W [out, in]``
in the layout that ``bitmask_linear`` reads (``values``, ``bitmask``, and its ``chunk_offsets``: the index in
``values`` of each row's first kept weight in every 1,024 columns). ``bitmask_linear.bitmask_matmul`` calls it
for ``Launch.one_token="kept"``.

Why a kernel of its own: the Triton kernels walk every weight position, kept or not, at about 12 instructions a
position (benchmarks/bitmask_kernel_sass.py), which at 70 % sparsity made a one-token product issue-bound on an
H200 and no faster than the dense one. This kernel spends its instructions on the kept weights, and Triton
cannot express it: it hands a list of columns from lane to lane through shared memory.

How, one warp per output row, one 1,024-column chunk at a time:

1. Lane ``i`` reads the chunk's 32-bit mask word ``i`` (columns ``32 i .. 32 i + 31``; the bytes of a row are
   little-endian, least significant bit first, so bit ``b`` of the word is column ``32 i + b``), counts its bits,
   and an inclusive scan over the lanes (five shuffles) gives where its kept weights end in the chunk's list.
2. The chunk's values are requested at once, 32 consecutive a load (coalesced), lane ``t`` holding values
   ``t``, ``t + 32``, ... in registers (up to ``VALUES_PER_LANE``, 512 a chunk; a denser chunk loads the rest in
   step 4), so that they arrive while step 3 runs. The next chunk's mask words and ``chunk_offsets`` entry are
   requested at the start of each chunk for the same reason.
3. Each lane writes the column of each of its kept weights into the warp's list in shared memory, highest bit
   first (find-leading-one, clear it; eight bits a step), from the end of its run backwards: the list holds the
   chunk's kept columns in order, which is the order of their values.
4. Lane ``t`` multiplies its values by ``x`` at their columns from the list (1,024 columns of ``x`` are 2 KB, so
   these loads hit the L1 cache) and sums the products in float32.

The warp's sum is reduced by shuffles and lane 0 writes the row's output (plus the bias). Step 3 costs its
lanes the most bits of any word in the chunk (at 70 % about 15 steps for 9.6 bits on average), step 4 one
step per 32 kept weights; the chunks of a row need no running offset (``chunk_offsets`` starts each). In sm_90
machine code step 3 takes 54 instructions for eight bits and step 4 about 9 a kept weight
(``python benchmarks/bitmask_kernel_sass.py``).

Measured on an H100 against the Triton ``chunks`` kernel (docs/efficiency.md, "The kept-weights kernel"): its time
follows the kept weights, the ``chunks`` kernel's every position, so it is 1.05-1.31x as fast at 70-80 % sparsity
and 6-19 % slower at 50-60 %; ``bitmask_linear.default_launch`` took it from 65 % until the walking kernel
(``bitmask_walk``, 1.01-1.15x as fast as this one on an H100) replaced it. Two other orders were timed and not kept: without step 2 (values loaded after the list) it was slower than ``chunks`` at 70 %; copying the values
to shared memory asynchronously (``cp.async``) a chunk ahead was no faster than step 2.

Requirements, checked before the launch with an error that names them: a CUDA tensor, one token, the mask's
bytes per row a multiple of 4 (columns a multiple of 32, so a row's words are 4-byte aligned), tensors
contiguous. The kernel is compiled once per architecture, dtype and block size (NVRTC, ``kernels.nvrtc``).

The same source builds for the CPU (its ``__CUDA_ARCH__`` branches replace the PTX conversions):
tests/test_kernels_on_the_host.py runs it there a host thread a GPU thread (``sparsebench/testing/warp_emulation.h``)
under AddressSanitizer and ThreadSanitizer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsebench.kernels.nvrtc import CompiledKernel
from sparsebench.kernels.one_token_cuda import CHUNK_COLUMNS, PRELUDE, OneTokenKernel
from sparsebench.kernels.one_token_cuda import WARPS_PER_BLOCK as DEFAULT_WARPS

KERNEL_NAME = "bitmask_kept_gemv"
WARPS_PER_BLOCK = DEFAULT_WARPS  # the default launch's warps (rows) a block
VALUES_PER_LANE = 16  # values of a chunk a lane loads ahead of use (512 a chunk; a denser chunk reads the rest after)
MIN_CAPABILITY = (8, 0)

SOURCE = PRELUDE + r"""
#ifndef VALUES_PER_LANE
#define VALUES_PER_LANE 16
#endif
#if VALUES_PER_LANE % 4
#error VALUES_PER_LANE must be a multiple of 4
#endif

__device__ __forceinline__ unsigned int shift_left(unsigned int value, unsigned int amount) {
#if defined(__CUDA_ARCH__)
  unsigned int shifted;  // PTX clamps amounts above 32 to 32 (C++ leaves them undefined)
  asm("shl.b32 %0, %1, %2;" : "=r"(shifted) : "r"(value), "r"(amount));
  return shifted;
#else
  return amount >= 32 ? 0u : value << amount;
#endif
}

extern "C" __global__ void __launch_bounds__(WARPS_PER_BLOCK * 32)
bitmask_kept_gemv(const unsigned short* __restrict__ x, const unsigned short* __restrict__ values,
                  const unsigned int* __restrict__ words, const int* __restrict__ chunk_offsets,
                  const unsigned short* __restrict__ bias, unsigned short* __restrict__ out,
                  int rows, int words_per_row, int chunks, int has_bias) {
  __shared__ unsigned short kept_columns[WARPS_PER_BLOCK][CHUNK_COLUMNS];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int row = blockIdx.x * WARPS_PER_BLOCK + warp;
  if (row >= rows) return;  // the whole warp: one row a warp
  unsigned short* list = kept_columns[warp];
  const unsigned int* row_words = words + (size_t)row * words_per_row;
  const int* row_chunks = chunk_offsets + (size_t)row * chunks;
  // the next chunk's mask words and first value index are loaded while this chunk is worked on
  unsigned int next_bits = lane < words_per_row ? __ldg(row_words + lane) : 0u;
  int next_base = __ldg(row_chunks);
  float sum = 0.0f;
  for (int chunk = 0; chunk < chunks; ++chunk) {
    unsigned int bits = next_bits;
    const int base = next_base;
    const int next = chunk + 1;
    next_bits = next < chunks && next * 32 + lane < words_per_row ? __ldg(row_words + next * 32 + lane) : 0u;
    next_base = next < chunks ? __ldg(row_chunks + next) : 0;
    const int count = __popc(bits);
    const int end = inclusive_scan(count, lane);  // where this lane's kept weights end in the chunk's list
    const int total = __shfl_sync(FULL, end, 31);
    const int most = (int)__reduce_max_sync(FULL, (unsigned int)count);
    // the chunk's values (32 consecutive a load) are requested before the list is built, to arrive meanwhile
    const unsigned short* chunk_values = values + base;
    unsigned short held[VALUES_PER_LANE];
#pragma unroll
    for (int group = 0; group < VALUES_PER_LANE; group += 4) {
      if (32 * group >= total) break;  // the same for the whole warp
#pragma unroll
      for (int i = group; i < group + 4; ++i) held[i] = lane + 32 * i < total ? __ldg(chunk_values + lane + 32 * i) : (unsigned short)0;
    }
    const unsigned int first_column = __shfl_sync(FULL, (unsigned int)lane * 32u, lane);  // kept in a register
    unsigned short* slot = list + end - 1;
#pragma unroll 1
    for (int left = count, k = 0; k < most; k += 8, left -= 8, slot -= 8) {
#pragma unroll
      for (int j = 0; j < 8; ++j) {  // highest kept bit first, written from the end of the lane's run
        const unsigned int bit = 31 - __clz(bits);  // 0xffffffff once the lane's bits are spent
        if (left > j) slot[-j] = (unsigned short)(first_column | bit);
        bits &= ~shift_left(1u, bit);  // clears that bit; 0 stays 0
      }
    }
    __syncwarp();
    const unsigned long long chunk_x = (unsigned long long)(x + chunk * CHUNK_COLUMNS);
#pragma unroll
    for (int group = 0; group < VALUES_PER_LANE; group += 4) {
      if (32 * group >= total) break;
#pragma unroll
      for (int i = group; i < group + 4; ++i) {
        if (lane + 32 * i < total) {
          const unsigned short* input = (const unsigned short*)(chunk_x + 2ull * list[lane + 32 * i]);
          sum += as_float(held[i]) * as_float(__ldg(input));
        }
      }
    }
    for (int kept = lane + 32 * VALUES_PER_LANE; kept < total; kept += 32) {  // chunks denser than the registers hold
      const unsigned short* input = (const unsigned short*)(chunk_x + 2ull * list[kept]);
      sum += as_float(__ldg(chunk_values + kept)) * as_float(__ldg(input));
    }
    __syncwarp();
  }
  store_row(sum, lane, row, bias, has_bias, out);
}
"""

KERNEL = OneTokenKernel(KERNEL_NAME, SOURCE, "kept", "the kept-weights kernel", MIN_CAPABILITY,
                        "__reduce_max_sync, a warp's largest bit count", (("VALUES_PER_LANE", VALUES_PER_LANE),))


def defines(dtype: torch.dtype, warps_per_block: int = WARPS_PER_BLOCK) -> dict[str, int]:
    """The source's macros for ``dtype`` (float16 or bfloat16) and ``warps_per_block``."""
    return KERNEL.defines(dtype, warps_per_block)


def check_kept_operands(x2d: Tensor, values: Tensor, bitmask: Tensor, offsets: Tensor) -> None:
    """Raise ValueError naming what the kept-weights kernel needs and the operands lack."""
    KERNEL.check_operands(x2d, values, bitmask, offsets)


def load_kernel(device: torch.device, dtype: torch.dtype, warps_per_block: int = WARPS_PER_BLOCK) -> CompiledKernel:
    """The kernel for ``dtype`` on ``device``, compiled and loaded (once); ``BitmaskLinear`` calls it when it is built,
    so that neither compiling nor loading happens inside a timed call or a CUDA graph's capture."""
    return KERNEL.load(device, dtype, warps_per_block)


def kept_gemv(x2d: Tensor, values: Tensor, bitmask: Tensor, offsets: Tensor, bias: Tensor | None,
              warps_per_block: int = WARPS_PER_BLOCK) -> Tensor:
    """``x2d [1, in] @ W^T (+ bias)``: ``[1, out]`` in x's dtype; operands as ``bitmask_linear`` checks them, plus ``check_kept_operands``."""
    check_kept_operands(x2d, values, bitmask, offsets)
    rows = bitmask.shape[0]
    device = x2d.device
    kernel = load_kernel(device, x2d.dtype, warps_per_block)
    x2d = x2d.contiguous()
    out = torch.empty(1, rows, dtype=x2d.dtype, device=device)
    words = bitmask.view(torch.int32)
    kernel.launch((-(-rows // warps_per_block), 1, 1), (32 * warps_per_block, 1, 1),
                  [x2d, values, words, offsets, bias if bias is not None else x2d, out, rows, words.shape[1], offsets.shape[1],
                   int(bias is not None)], device)
    return out
