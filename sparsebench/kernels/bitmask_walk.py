"""One-token products on the ``sparse-bitmask`` layout in which each lane multiplies as it walks its own mask word: a
CUDA C++ kernel (NVRTC), ``Launch.one_token="walk"``: the one-token default at densities up to
``bitmask_linear.WALK_DENSITY_LIMIT`` (docs/efficiency.md, "The walking kernel", gives its timings).

What it computes: ``y = x @ W^T (+ bias)`` for one token, as ``bitmask_kept`` does, from the same operands (``values``,
``bitmask`` and its ``chunk_offsets``).

Why a second kernel: the kept-weights kernel (``bitmask_kept``) first writes each chunk's kept columns to a list in
shared memory and then reads them back, one store and one load per kept weight besides the product, and reads ``x``
from the L1 cache with a 64-bit address a product (about 22 instructions a kept weight at 70 % in its sm_90 code,
``benchmarks/bitmask_kernel_sass.py``). Here the bit found is the column: a lane multiplies at once.

How: a block of ``WARPS_PER_BLOCK`` warps first copies ``x`` to shared memory (float16 or bfloat16, two halves of
padding after every 32 columns, so that lanes reading their own 32 columns hit different banks); then one warp per row,
one 1,024-column chunk at a time. The grid is as many blocks as the GPU runs at once (the driver's occupancy), each warp
taking every ``grid * WARPS_PER_BLOCK``-th row, so that ``x`` is copied once a block rather than once every eight rows:

1. The chunk's values were copied to the warp's shared memory with ``cp.async`` while the chunk before was multiplied
   (two chunks' slots a warp; 16-byte pieces from the aligned address at or below the chunk's first value, their count
   from the chunk's mask words, which were loaded a chunk earlier still; a piece past the end of ``values`` is cut short
   by its source size and filled with zeros). The next chunk's copies are asked for now.
2. Lane ``i`` holds the chunk's mask word ``i``, counts its bits, and an inclusive scan over the lanes gives where its
   kept weights end in the chunk's run of values.
3. Each lane walks its word from the highest set bit down (find-leading-one, clear it): the bit is the column, its value
   the next one down from the end of the lane's run; ``x`` at the column comes from shared memory. The warp takes as
   many steps as its densest word has bits (at 70 % about 15 for 9.6 on average); a lane whose bits are spent idles.

Sums are float32, reduced over the warp by shuffles. Requirements, checked before the launch with an error that names
them: one token on a CUDA tensor, columns a multiple of 32, ``values`` 16-byte aligned (``cp.async``), compute
capability 8.0 or newer, and ``x`` small enough for shared memory (``max_columns``). The source also builds for the
CPU with ``sparsebench/testing/warp_emulation.h`` (tests/test_kernels_on_the_host.py runs it under AddressSanitizer
and ThreadSanitizer).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsebench.kernels.nvrtc import CompiledKernel
from sparsebench.kernels.one_token_cuda import CHUNK_COLUMNS, PRELUDE, OneTokenKernel
from sparsebench.kernels.one_token_cuda import WARPS_PER_BLOCK as DEFAULT_WARPS

KERNEL_NAME = "bitmask_walk_gemv"
WARPS_PER_BLOCK = DEFAULT_WARPS  # the default launch's warps (rows) a block
VALUE_SLOTS = CHUNK_COLUMNS + 8  # a chunk's values and up to 7 before its first (the 16-byte aligned copy)
MIN_CAPABILITY = (8, 0)  # cp.async
SHARED_MEMORY_LIMIT = 227 * 1024  # a block's shared memory on compute capability 8.0 and 9.0
PROGRAMMATIC_LAUNCH = False  # launched as a programmatic dependent launch on compute capability 9.0 (nvrtc.CompiledKernel.launch)

SOURCE = PRELUDE + r"""
#define VALUE_SLOTS (CHUNK_COLUMNS + 8)
#define GROUP_SLOTS 34  // shared-memory halves a group of 32 columns of x takes: 32 and 2 of padding

// a row's mask words (one a lane, 32 a chunk) and chunk_offsets entries: each chunk's are loaded while the chunk
// before is worked on
struct RowChunks {
  const unsigned int* row_words;
  const int* row_chunks;
  int words_per_row, chunks, lane;
  unsigned int next_bits;
  int next_base;

  __device__ __forceinline__ RowChunks(const unsigned int* words, const int* chunk_offsets, int row, int words_per_row_,
                                       int chunks_, int lane_)
      : row_words(words + (size_t)row * words_per_row_), row_chunks(chunk_offsets + (size_t)row * chunks_),
        words_per_row(words_per_row_), chunks(chunks_), lane(lane_) {
    next_bits = lane < words_per_row ? __ldg(row_words + lane) : 0u;
    next_base = __ldg(row_chunks);
  }

  // chunk `chunk`'s mask word of this lane and the index in values of its first kept weight; asks for the next chunk's
  __device__ __forceinline__ void take(int chunk, unsigned int& bits, int& base) {
    bits = next_bits;
    base = next_base;
    const int next = chunk + 1;
    next_bits = next < chunks && next * 32 + lane < words_per_row ? __ldg(row_words + next * 32 + lane) : 0u;
    next_base = next < chunks ? __ldg(row_chunks + next) : 0;
  }
};

// where column `column` of x sits in shared memory
__device__ __forceinline__ int x_slot(int column) { return column + 2 * (column >> 5); }

__device__ __forceinline__ unsigned int shared_address(const void* pointer) {
#if defined(__CUDA_ARCH__)
  unsigned long long address;
  asm("cvta.to.shared.u64 %0, %1;" : "=l"(address) : "l"((unsigned long long)pointer));
  return (unsigned int)address;
#else
  return 0u;
#endif
}

// cp.async's destination: on the GPU a shared-space byte address, computed once a kernel (a generic pointer turned into
// one at every chunk cost the chunk about 30 instructions); on the host a pointer
#if defined(__CUDA_ARCH__)
typedef unsigned int SharedAddress;
__device__ __forceinline__ SharedAddress to_shared_address(unsigned short* pointer) { return shared_address(pointer); }
__device__ __forceinline__ SharedAddress shared_at(SharedAddress base, int halves) { return base + 2u * (unsigned int)halves; }
#else
typedef unsigned short* SharedAddress;
inline SharedAddress to_shared_address(unsigned short* pointer) { return pointer; }
inline SharedAddress shared_at(SharedAddress base, int halves) { return base + halves; }
#endif

// 16 bytes from global `source` to shared `destination`, asynchronously
__device__ __forceinline__ void copy_16_bytes(SharedAddress destination, const unsigned short* source) {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(destination), "l"(source) : "memory");
#else  // element by element, so that ThreadSanitizer sees each store (with g++ 12.2 it missed a memcpy's stores here)
  for (int i = 0; i < 8; ++i) destination[i] = source[i];
#endif
}

// the same for the last piece of `values`: only `source_bytes` (2 to 14) are read, the rest are zeros
__device__ __forceinline__ void copy_last_bytes(SharedAddress destination, const unsigned short* source, int source_bytes) {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(destination), "l"(source), "r"(source_bytes) : "memory");
#else
  for (int i = 0; i < 8; ++i) destination[i] = 2 * i < source_bytes ? source[i] : (unsigned short)0;
#endif
}

// the copies this thread asked for, but for the last group (a chunk's copies are one group)
__device__ __forceinline__ void wait_for_copies_but_one() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group 1;" ::: "memory");
#endif
}

__device__ __forceinline__ void wait_for_all_copies() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

__device__ __forceinline__ void end_copy_group() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// the `total` values from index `base` to the warp's slot at `slot`, from the 16-byte aligned index at or below `base`,
// this lane's 16-byte pieces (every 32nd; at 70 % a lane copies one or two, so the loop is not unrolled); returns
// where the first lies in the slot
__device__ __forceinline__ int copy_chunk_values(SharedAddress slot, const unsigned short* values, int base, int total,
                                                 int n_values, int lane) {
  const int first = base & ~7;
  const int stop = base + total;
  int index = first + 8 * lane;
  const unsigned short* source = values + index;
  SharedAddress destination = shared_at(slot, 8 * lane);
#pragma unroll 1
  for (; index < stop; index += 256, source += 256, destination = shared_at(destination, 256)) {
    if (index + 8 <= n_values) copy_16_bytes(destination, source);
    else copy_last_bytes(destination, source, 2 * (n_values - index));  // the piece that runs past the end of values
  }
  end_copy_group();
  return base - first;
}

extern "C" __global__ void __launch_bounds__(WARPS_PER_BLOCK * 32)
bitmask_walk_gemv(const unsigned short* __restrict__ x, const unsigned short* __restrict__ values,
                  const unsigned int* __restrict__ words, const int* __restrict__ chunk_offsets,
                  const unsigned short* __restrict__ bias, unsigned short* __restrict__ out,
                  int rows, int words_per_row, int chunks, int has_bias, int n_values) {
#if defined(__CUDA_ARCH__)
  extern __shared__ __align__(16) unsigned short x_shared[];
#else
  unsigned short* x_shared = static_cast<unsigned short*>(emu::dynamic_shared());
#endif
  // after x (rounded up to 16 bytes), each warp's slots for two chunks' values
  unsigned short* value_slots = x_shared + ((words_per_row * GROUP_SLOTS + 7) & ~7) + (threadIdx.x >> 5) * 2 * VALUE_SLOTS;
  // x to shared memory, two columns (4 bytes) a copy, by the whole block
  const unsigned int* x_pairs = (const unsigned int*)x;
  for (int pair = threadIdx.x; pair < words_per_row * 16; pair += WARPS_PER_BLOCK * 32)
    *(unsigned int*)(x_shared + x_slot(2 * pair)) = __ldg(x_pairs + pair);
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  // the warp's two slots, as cp.async writes them and as the products read them; they swap at every chunk
  SharedAddress copy_to = to_shared_address(value_slots), copy_next = to_shared_address(value_slots + VALUE_SLOTS);
  const unsigned short* read_from = value_slots;
  const unsigned short* read_next = value_slots + VALUE_SLOTS;
  // a warp a row, the grid's warps taking every (gridDim.x * WARPS_PER_BLOCK)-th row: a block copies x once for all its rows
  for (int row = blockIdx.x * WARPS_PER_BLOCK + warp; row < rows; row += gridDim.x * WARPS_PER_BLOCK) {
    RowChunks row_chunks(words, chunk_offsets, row, words_per_row, chunks, lane);
    // chunk c's values are copied while chunk c - 1 is multiplied: its mask words (asked for a chunk before) give
    // their count, chunk_offsets their start
    unsigned int next_bits;
    int next_base;
    row_chunks.take(0, next_bits, next_base);
    int next_lead = copy_chunk_values(copy_to, values, next_base, (int)__reduce_add_sync(FULL, __popc(next_bits)), n_values, lane);
    const unsigned short* x_word = x_shared + lane * GROUP_SLOTS;  // this lane's 32 columns of the chunk
    float sum = 0.0f;
    for (int chunk = 0; chunk < chunks; ++chunk, x_word += 32 * GROUP_SLOTS) {
      unsigned int walking = next_bits;
      const int lead = next_lead;
      const unsigned short* slots = read_from;
      if (chunk + 1 < chunks) {
        row_chunks.take(chunk + 1, next_bits, next_base);
        next_lead = copy_chunk_values(copy_next, values, next_base, (int)__reduce_add_sync(FULL, __popc(next_bits)), n_values, lane);
        wait_for_copies_but_one();
      } else {
        wait_for_all_copies();
      }
      { const SharedAddress swap = copy_to; copy_to = copy_next; copy_next = swap; }
      { const unsigned short* swap = read_from; read_from = read_next; read_next = swap; }
      const int count = __popc(walking);
      const int end = inclusive_scan(count, lane);  // where this lane's kept weights end in the chunk's run
      __syncwarp();  // every lane's copies of this chunk have landed
      // the lane's word from its highest bit down, its values from the end of its run down (a lane whose bits are
      // spent waits for the others: the warp takes as many steps as its densest word has bits)
      const unsigned short* value = slots + lead + end - 1;
#pragma unroll 4
      for (int left = count; left > 0; --left, --value) {
        const int bit = 31 - __clz(walking);
        sum += as_float(*value) * as_float(x_word[bit]);
        walking ^= 1u << bit;  // that bit cleared
      }
      __syncwarp();  // these slots take the chunk after next
    }
    store_row(sum, lane, row, bias, has_bias, out);
  }
}
"""


KERNEL = OneTokenKernel(KERNEL_NAME, SOURCE, "walk", "the walking kernel", MIN_CAPABILITY, "cp.async")


def defines(dtype: torch.dtype, warps_per_block: int = WARPS_PER_BLOCK) -> dict[str, int]:
    """The source's macros for ``dtype`` (float16 or bfloat16) and ``warps_per_block``."""
    return KERNEL.defines(dtype, warps_per_block)


def shared_bytes(cols: int, warps_per_block: int = WARPS_PER_BLOCK) -> int:
    """The shared memory a block takes (all of it dynamic): ``x`` of ``cols`` columns with two halves of padding every 32,
    rounded up to 16 bytes, then each warp's slots for two chunks' values."""
    x_halves = -(-(cols // 32 * 34) // 8) * 8
    return 2 * (x_halves + warps_per_block * 2 * VALUE_SLOTS)


def max_columns(warps_per_block: int = WARPS_PER_BLOCK) -> int:
    """The most input columns whose ``x`` fits a block's shared memory beside the warps' slots."""
    room = SHARED_MEMORY_LIMIT - shared_bytes(0, warps_per_block)
    return room // (2 * 34) * 32


def grid_blocks(rows: int, chunks: int, warps_per_block: int, resident: int) -> int:
    """The launch's blocks: a warp a row, at most the ``resident`` blocks the GPU runs at once (a warp then takes every
    ``grid * warps_per_block``-th row)."""
    return min(-(-rows // warps_per_block), resident)


def check_walk_operands(x2d: Tensor, values: Tensor, bitmask: Tensor, offsets: Tensor, warps_per_block: int = WARPS_PER_BLOCK) -> None:
    """Raise ValueError naming what the walking kernel needs and the operands lack."""
    KERNEL.check_operands(x2d, values, bitmask, offsets)
    if values.data_ptr() % 16:
        raise ValueError("the walking kernel copies values in 16-byte pieces (cp.async): it needs values starting on a "
                         f"16-byte boundary, got address {values.data_ptr():#x}")
    cols = 8 * bitmask.shape[1]
    if cols > max_columns(warps_per_block):
        raise ValueError(f"the walking kernel keeps x in shared memory: at most {max_columns(warps_per_block)} columns with "
                         f"{warps_per_block} warps a block, got {cols}; use Launch.one_token='kept'")


def load_kernel(device: torch.device, dtype: torch.dtype, warps_per_block: int = WARPS_PER_BLOCK) -> CompiledKernel:
    """The kernel for ``dtype`` on ``device``, compiled and loaded (once), so that neither happens inside a timed call
    or a CUDA graph's capture."""
    return KERNEL.load(device, dtype, warps_per_block)


def walk_gemv(x2d: Tensor, values: Tensor, bitmask: Tensor, offsets: Tensor, bias: Tensor | None,
              warps_per_block: int = WARPS_PER_BLOCK) -> Tensor:
    """``x2d [1, in] @ W^T (+ bias)``: ``[1, out]`` in x's dtype; operands as ``bitmask_linear`` checks them, plus ``check_walk_operands``."""
    check_walk_operands(x2d, values, bitmask, offsets, warps_per_block)
    rows, cols = bitmask.shape[0], 8 * bitmask.shape[1]
    device = x2d.device
    kernel = load_kernel(device, x2d.dtype, warps_per_block)
    x2d = x2d.contiguous()
    if x2d.data_ptr() % 4:  # x is copied to shared memory two columns at a time
        x2d = x2d.clone()
    out = torch.empty(1, rows, dtype=x2d.dtype, device=device)
    words = bitmask.view(torch.int32)
    threads, shared = 32 * warps_per_block, shared_bytes(cols, warps_per_block)
    blocks = grid_blocks(rows, offsets.shape[1], warps_per_block, kernel.resident_blocks(device, threads, shared))
    kernel.launch((blocks, 1, 1), (threads, 1, 1),
                  [x2d, values, words, offsets, bias if bias is not None else x2d, out, rows, words.shape[1], offsets.shape[1],
                   int(bias is not None), values.numel()], device, shared_bytes=shared,
                  programmatic=PROGRAMMATIC_LAUNCH and torch.cuda.get_device_capability(device) >= (9, 0))
    return out
