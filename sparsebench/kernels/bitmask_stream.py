"""One-token products on the ``sparse-bitmask`` layout, the walking kernel's scheme (``bitmask_walk``: each lane
multiplies as it walks its own mask word) with a deeper pipeline that runs on across a warp's chunks and rows: a CUDA
C++ kernel (NVRTC), ``Launch.one_token="stream"``. Not a default: checked on the CPU (tests/test_kernels_on_the_host.py,
under AddressSanitizer and ThreadSanitizer), not yet run on a GPU.

Why: the walking kernel's time at one token fits a large fixed part (on an H100, about 6 us for q/k/v/o and 14 us for
gate/up and down at zero density, from its 50-80 % timings), which its instructions and bytes do not explain: each
warp waits for memory at each row's start (the mask word, then the values it counts, then their copy) and whenever
a chunk's copy, issued one chunk ahead, has not landed. Here no such wait is in a warp's path but the first.

How: a block of ``WARPS_PER_BLOCK`` warps first copies ``x`` to shared memory (float16 or bfloat16, two halves of
padding after every 32 columns, so that lanes reading their own 32 columns hit different banks); then one warp per row,
one 1,024-column chunk at a time. The grid is as many blocks as the GPU runs at once (the driver's occupancy), each warp
taking every ``grid * WARPS_PER_BLOCK``-th row, so that ``x`` is copied once a block rather than once every eight rows.
A warp's chunks, row after row, go through one pipeline of ``STAGES`` (4) chunks, so that it waits for memory neither
at a chunk nor at a row's start:

1. Fetch (``STAGES`` chunks ahead): each lane loads its mask word of the chunk; all lanes load the chunk's
   ``chunk_offsets`` entry and the next one in memory (the next row's first for a row's last chunk, ``n_values`` after
   the last row), whose difference is the chunk's count of values, so no mask word is waited for before a copy. The
   first chunks' loads are issued before ``x`` is copied and wait with it.
2. Copy (``STAGES - 1`` ahead): the chunk's values go to one of the warp's ``STAGES`` slots in shared memory with
   ``cp.async`` (16-byte pieces from the aligned address at or below the chunk's first value; a piece past the end of
   ``values`` is cut short by its source size and filled with zeros). A slot holds 1.25 times the weight's mean values
   a chunk plus 64 (``slot_values``, known on the host from the shapes and the count of values); a chunk with more is
   read from global memory instead, correct and slower.
3. Multiply: lane ``i`` holds the chunk's mask word ``i``, counts its bits, and an inclusive scan over the lanes gives
   where its kept weights end in the chunk's run of values. Each lane walks its word from the highest set bit down
   (find-leading-one, clear it): the bit is the column, its value the next one down from the end of the lane's run;
   ``x`` at the column comes from shared memory. The warp takes as many steps as its densest word has bits (at 70 %
   about 15 for 9.6 on average); a lane whose bits are spent idles. After a row's last chunk the warp's sum is stored.

Sums are float32, reduced over the warp by shuffles. Requirements, checked before the launch with an error that names
them: those of ``bitmask_walk`` (one token on a CUDA tensor, columns a multiple of 32, ``values`` 16-byte aligned,
compute capability 8.0 or newer), with ``x`` beside ``STAGES`` whole chunks' slots a warp in shared memory
(``max_columns``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsebench.kernels.bitmask_walk import MIN_CAPABILITY, X_AND_COPIES, check_staged_operands, columns_beside, launch_staged, x_bytes
from sparsebench.kernels.nvrtc import CompiledKernel
from sparsebench.kernels.one_token_cuda import CHUNK_COLUMNS, PRELUDE, OneTokenKernel
from sparsebench.kernels.one_token_cuda import WARPS_PER_BLOCK as DEFAULT_WARPS

KERNEL_NAME = "bitmask_stream_gemv"
WARPS_PER_BLOCK = DEFAULT_WARPS  # the default launch's warps (rows) a block
STAGES = 4  # chunks a warp has in flight: copied (STAGES - 1) or fetched (one) while one is multiplied
FULL_SLOT = CHUNK_COLUMNS + 8  # a whole chunk's values and up to 7 before its first (the 16-byte aligned copy)
# a slot holds a chunk of up to 1.25 times the weight's mean kept weights a chunk plus SLOT_SPARE (and the up to 7 values
# before its first); a chunk with more is read from global memory instead (correct, slower)
SLOT_SPARE = 64

SOURCE = PRELUDE + X_AND_COPIES + r"""
#ifndef STAGES
#define STAGES 4
#endif

// the copies this thread asked for, but for the last STAGES - 1 groups (a chunk's copies are one group)
__device__ __forceinline__ void wait_for_copies_but_the_last_stages() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;" :: "n"(STAGES - 1) : "memory");
#endif
}

// one chunk of one row, as a warp's pipeline carries it: each lane's mask word; before its values are copied, the
// index in values of its first kept weight (`base`) and of the next chunk's (`end`); after, where the first lies in
// the warp's slot (`place` >= 0) or, for a chunk with more values than a slot holds, -1 - base (read from global memory)
struct Chunk {
  unsigned int bits;
  int base, end, place;
};

// the chunk_offsets entries of a chunk and of the one after it in memory (the next row's first for a row's last
// chunk; n_values after the last row), and this lane's mask word; a warp-uniform `valid` false gives an empty chunk
__device__ __forceinline__ Chunk fetch_item(const unsigned int* __restrict__ words, const int* __restrict__ chunk_offsets,
                                            int row, int chunk, bool valid, int rows, int words_per_row, int chunks,
                                            int n_values, int lane) {
  Chunk fetched = {0u, 0, 0, 0};
  if (valid) {
    const size_t index = (size_t)row * chunks + chunk;
    fetched.base = __ldg(chunk_offsets + index);
    fetched.end = index + 1 < (size_t)rows * chunks ? __ldg(chunk_offsets + index + 1) : n_values;
    const int word = chunk * 32 + lane;
    fetched.bits = word < words_per_row ? __ldg(words + (size_t)row * words_per_row + word) : 0u;
  }
  return fetched;
}

// the chunk's values to `slot` (one copy group), from the 16-byte aligned index at or below its base, this lane's
// 16-byte pieces (every 32nd); `place` tells the walk where to read them
__device__ __forceinline__ void copy_chunk_values(Chunk& item, unsigned short* slot, int slot_values,
                                                  const unsigned short* __restrict__ values, int n_values, int lane) {
  const int first = item.base & ~7;
  if (item.end - first > slot_values) {  // more values than a slot holds: the walk reads them from global memory
    item.place = -1 - item.base;
  } else {
    const unsigned short* source = values + first + 8 * lane;
    unsigned short* destination = slot + 8 * lane;
    for (int index = first + 8 * lane; index < item.end; index += 256, source += 256, destination += 256) {
      if (index + 8 <= n_values) copy_16_bytes(destination, source);
      else copy_last_bytes(destination, source, 2 * (n_values - index));  // the piece that runs past the end of values
    }
    item.place = item.base - first;
  }
  end_copy_group();
}

// the products of this lane's kept weights in a chunk: its word from the highest bit down, its values from the end
// of its run down (`value` points at the last); a lane whose bits are spent waits for the others
template <typename Load>
__device__ __forceinline__ float walk_word(unsigned int walking, const unsigned short* value, const unsigned short* x_word,
                                           float sum, Load load) {
#pragma unroll 4
  for (int left = __popc(walking); left > 0; --left, --value) {
    const int bit = 31 - __clz(walking);
    sum += as_float(load(value)) * as_float(x_word[bit]);
    walking ^= 1u << bit;
  }
  return sum;
}

struct SharedLoad {
  __device__ __forceinline__ unsigned short operator()(const unsigned short* p) const { return *p; }
};
struct GlobalLoad {
  __device__ __forceinline__ unsigned short operator()(const unsigned short* p) const { return __ldg(p); }
};

extern "C" __global__ void __launch_bounds__(WARPS_PER_BLOCK * 32)
bitmask_stream_gemv(const unsigned short* __restrict__ x, const unsigned short* __restrict__ values,
                  const unsigned int* __restrict__ words, const int* __restrict__ chunk_offsets,
                  const unsigned short* __restrict__ bias, unsigned short* __restrict__ out,
                  int rows, int words_per_row, int chunks, int has_bias, int n_values, int slot_values) {
#if defined(__CUDA_ARCH__)
  extern __shared__ __align__(16) unsigned short x_shared[];
#else
  unsigned short* x_shared = static_cast<unsigned short*>(emu::dynamic_shared());
#endif
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  // after x (rounded up to 16 bytes), each warp's STAGES slots of slot_values values
  unsigned short* warp_slots = x_shared + ((words_per_row * GROUP_SLOTS + 7) & ~7) + warp * STAGES * slot_values;
  // a warp's rows are every (gridDim.x * WARPS_PER_BLOCK)-th from its first; its items their chunks, row after row,
  // carried by one pipeline: item i + STAGES is fetched and item i + STAGES - 1 copied while item i is multiplied
  const int row_step = gridDim.x * WARPS_PER_BLOCK;
  const int first_row = blockIdx.x * WARPS_PER_BLOCK + warp;
  const int items = first_row < rows ? ((rows - 1 - first_row) / row_step + 1) * chunks : 0;
  int fetch_row = first_row, fetch_chunk = 0;
  Chunk ahead[STAGES];  // items i .. i + STAGES - 1: all but the last copied
#pragma unroll
  for (int s = 0; s < STAGES; ++s) {  // the first items' loads go out before x is copied, and wait with it
    ahead[s] = fetch_item(words, chunk_offsets, fetch_row, fetch_chunk, s < items, rows, words_per_row, chunks, n_values, lane);
    if (++fetch_chunk == chunks) { fetch_chunk = 0; fetch_row += row_step; }
  }
  // x to shared memory, two columns (4 bytes) a copy, by the whole block
  const unsigned int* x_pairs = (const unsigned int*)x;
  for (int pair = threadIdx.x; pair < words_per_row * 16; pair += WARPS_PER_BLOCK * 32)
    *(unsigned int*)(x_shared + x_slot(2 * pair)) = __ldg(x_pairs + pair);
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) copy_chunk_values(ahead[s], warp_slots + s * slot_values, slot_values, values, n_values, lane);
  __syncthreads();
  int walk_row = first_row, walk_chunk = 0, walk_slot = 0, fill_slot = STAGES - 1;
  const unsigned short* const x_lane = x_shared + lane * GROUP_SLOTS;  // this lane's 32 columns of a row's first chunk
  const unsigned short* x_word = x_lane;  // and of the chunk walked (a running pointer: one LEA a product to address x)
  float sum = 0.0f;
  for (int item = 0; item < items; ++item) {
    copy_chunk_values(ahead[STAGES - 1], warp_slots + fill_slot * slot_values, slot_values, values, n_values, lane);
    const Chunk next = fetch_item(words, chunk_offsets, fetch_row, fetch_chunk, item + STAGES < items, rows, words_per_row,
                                   chunks, n_values, lane);
    if (++fetch_chunk == chunks) { fetch_chunk = 0; fetch_row += row_step; }
    wait_for_copies_but_the_last_stages();
    const Chunk& now = ahead[0];
    const int end = inclusive_scan(__popc(now.bits), lane);  // where this lane's kept weights end in the chunk's run
    __syncwarp();  // every lane's copies of this chunk have landed
    if (now.place >= 0) sum = walk_word(now.bits, warp_slots + walk_slot * slot_values + now.place + end - 1, x_word, sum, SharedLoad());
    else sum = walk_word(now.bits, values + (-1 - now.place) + end - 1, x_word, sum, GlobalLoad());
    x_word += 32 * GROUP_SLOTS;
    if (++walk_chunk == chunks) {
      store_row(sum, lane, walk_row, bias, has_bias, out);
      sum = 0.0f;
      walk_chunk = 0;
      walk_row += row_step;
      x_word = x_lane;
    }
    __syncwarp();  // this slot takes the item STAGES on
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) ahead[s] = ahead[s + 1];
    ahead[STAGES - 1] = next;
    walk_slot = walk_slot + 1 == STAGES ? 0 : walk_slot + 1;
    fill_slot = fill_slot + 1 == STAGES ? 0 : fill_slot + 1;
  }
}
"""


KERNEL = OneTokenKernel(KERNEL_NAME, SOURCE, "stream", "the streaming walk kernel", MIN_CAPABILITY, "cp.async", (("STAGES", STAGES),))


def defines(dtype: torch.dtype, warps_per_block: int = WARPS_PER_BLOCK) -> dict[str, int]:
    """The source's macros for ``dtype`` (float16 or bfloat16) and ``warps_per_block``."""
    return KERNEL.defines(dtype, warps_per_block)


def slot_values(n_values: int, rows: int, cols: int) -> int:
    """The values a warp's slot holds for a ``[rows, cols]`` weight of ``n_values`` kept weights (a multiple of 8, so
    that every slot starts on 16 bytes): 1.25 times the mean a chunk plus ``SLOT_SPARE``, plus 7 for the aligned copy's
    start, at most ``FULL_SLOT``. Known on the host without reading the mask, so a launch needs no synchronisation."""
    mean = CHUNK_COLUMNS * n_values / max(rows * cols, 1)
    return min(FULL_SLOT, -(-int(1.25 * mean + SLOT_SPARE + 7) // 8) * 8)


def shared_bytes(cols: int, warps_per_block: int = WARPS_PER_BLOCK, slot: int = FULL_SLOT) -> int:
    """The shared memory a block takes (all of it dynamic): ``x`` (``bitmask_walk.x_bytes``), then each warp's ``STAGES``
    slots of ``slot`` values (``slot_values``)."""
    return x_bytes(cols) + 2 * warps_per_block * STAGES * slot


def max_columns(warps_per_block: int = WARPS_PER_BLOCK) -> int:
    """The most input columns whose ``x`` fits a block's shared memory beside the warps' slots at any density (whole
    chunks' slots)."""
    return columns_beside(shared_bytes(0, warps_per_block))


def check_stream_operands(x2d: Tensor, values: Tensor, bitmask: Tensor, offsets: Tensor, warps_per_block: int = WARPS_PER_BLOCK) -> None:
    """Raise ValueError naming what the streaming kernel needs and the operands lack."""
    check_staged_operands(KERNEL, x2d, values, bitmask, offsets, max_columns(warps_per_block), warps_per_block)


def load_kernel(device: torch.device, dtype: torch.dtype, warps_per_block: int = WARPS_PER_BLOCK) -> CompiledKernel:
    """The kernel for ``dtype`` on ``device``, compiled and loaded (once), so that neither happens inside a timed call
    or a CUDA graph's capture."""
    return KERNEL.load(device, dtype, warps_per_block)


def stream_gemv(x2d: Tensor, values: Tensor, bitmask: Tensor, offsets: Tensor, bias: Tensor | None,
                warps_per_block: int = WARPS_PER_BLOCK) -> Tensor:
    """``x2d [1, in] @ W^T (+ bias)``: ``[1, out]`` in x's dtype; operands as ``bitmask_linear`` checks them, plus ``check_stream_operands``."""
    check_stream_operands(x2d, values, bitmask, offsets, warps_per_block)
    rows, cols = bitmask.shape[0], 8 * bitmask.shape[1]
    slot = slot_values(values.numel(), rows, cols)
    kernel = load_kernel(x2d.device, x2d.dtype, warps_per_block)
    return launch_staged(kernel, x2d, values, bitmask, offsets, bias, warps_per_block, shared_bytes(cols, warps_per_block, slot), (slot,))
