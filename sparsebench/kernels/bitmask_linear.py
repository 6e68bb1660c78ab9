"""A linear layer whose weight stays in the ``sparse-bitmask`` layout on the GPU, with kernels for skinny products.

One token at 55 % sparsity or more (a density of at most ``WALK_DENSITY_LIMIT``) runs ``bitmask_walk``'s CUDA C++
kernel, in which each lane multiplies as it walks its mask word (``bitmask_kept``'s kernel where ``x`` is too wide for
its shared memory); denser weights, and shapes or GPUs they do not take, run the Triton ``chunks`` kernel below
(``default_launch``). ``Launch.one_token="kept"`` (``BitmaskLinear.kept_weights``, the ``bitmask_kept`` path) runs the
kept-weights kernel, the default before. 2 to 64 tokens run the Triton tensor-core kernel; more (a prefill) unpack the
weight for the call (``bitmask_unpack``) and take the dense product, whatever the launch.

What it computes: ``y = x @ W^T (+ bias)`` for ``x [T, in]`` in float16 or bfloat16 (any ``T``; made
for decode, 1 to 64 tokens), with ``W [out, in]`` given as compressed-tensors 0.13's
``sparse-bitmask`` layout (sparsebench/sparse_layout.py): ``values`` the non-zeros in row-major
order, ``bitmask`` one bit per weight, eight to a byte along each row, least significant bit first,
``row_offsets`` the index in ``values`` of each row's first non-zero.

Why this layout: it is the project's compressed export, so one format serves disk and GPU; and at
batch-1 decode a linear's cost is reading its weight, which here is ``2 * nnz + rows * cols / 8``
bytes (plus 8 bytes a row of row offsets) against ``2 * rows * cols`` dense: 0.36 of the dense bytes at
70 % sparsity, 0.56 at 50 % (unstructured sparsity as Wanda, SparseGPT, OWL produce it).

How, one token (decode at batch 1), ``_chunk_kernel`` (``Launch.one_token="chunks"``, the default): one
warp walks one or two rows a chunk of 1,024 columns (128 mask bytes, one ``chunk_offsets`` entry) at a
time. Lane ``i`` takes bytes ``i``, ``32 + i``, ``64 + i`` and ``96 + i`` of the chunk: at each bit the 32
lanes gather values that lie within about 32 * 8 * density weights of each other (two or three 128-byte
lines at 70 %), as the first kernel's did, instead of the ~5 lines that 32 contiguous columns a lane
would touch. The lane's four bytes share one int32, and so do their bit counts (a byte each, Hacker's
Delight 5-1), so one ``tl.cumsum`` over the lanes gives the exclusive prefix sums of all four (each at
most 248, no carry between fields); with the chunk's ``chunk_offsets`` entry they give the index in
``values`` of each byte's first kept weight. There is no running offset from chunk to chunk, so the
chunks of a row have no dependence on each other. Then, for bit ``j = 0 .. 7`` of a byte, a predicated
16-bit load of the kept value and an unsigned byte offset that steps past it (the address is one 64-bit
add, the step one shift-add), and a float32 FMA with the input at column ``8 * byte + j`` (a lane loads
its byte's eight inputs as one 16-byte vector and splits it in registers). The two rows of a program
share the inputs' loads and their conversion to float32.

Cost, from the sm_90 machine code (benchmarks/bitmask_kernel_sass.py, Triton 3.6): 12.1 instructions per
weight in the main loop for two rows a program, 12.8 for one, against 15.8 for the first kernel
(``one_token="bytes"``: one byte a thread, ``block_bytes`` bytes a step, a running 64-bit pointer);
none goes through shared memory. The loop's loads are not bounds-masked: with one split only a last,
partial chunk is (after the loop; 11,008 columns have one), with several splits that do not cover the
row's chunks exactly every chunk is (13.4 and 14.8). About 10 instructions a weight are per bit: the
bit test (2), the step (1), the 64-bit address (2), the zeroed predicated load (2), the two conversions
to float32 (1.5 with the second row sharing the input's) and the FMA. The same gathers bound the kernel
from the other side (an estimate, not measured): one 16-bit load a weight, each touching two or three
cache lines per warp, at about one line a cycle on an SM's L1 comes to roughly as many cycles as the
instructions take to issue. Fewer instructions a weight needs values that a warp loads in vectors and
expands in registers or shared memory, which Triton's per-element gathers do not give. The first
kernel stays selectable until a GPU sweep (benchmarks/bench_bitmask_kernel.py --sweep) has timed both.

``_one_token_kernel`` (``one_token="bytes"``): one program per output row, one mask byte per thread, so
that every tensor of the kernel is 1-D in one layout (a 2-D tile of rows x bytes makes Triton move
the gather pointers through shared memory at every bit). A program walks its row ``block_bytes``
mask bytes (``8 * block_bytes`` columns) at a time: it loads the bytes, counts the bits of each,
and an exclusive prefix sum of the counts (``tl.cumsum``) plus the row's running offset gives the
index in ``values`` of each byte's first kept weight. Then, for bit ``j = 0 .. 7`` of every byte at
once, it gathers the kept values (a masked load; zero where the bit is clear), steps each byte's
pointer past a kept value, and multiplies by the input at column ``8 * byte + j``, in float32.

Several tokens (2 to 64 a program, padded to 16): ``block_rows`` rows per program, the same walk on
a ``[block_rows, block_bytes]`` tile, and for each bit one ``tl.dot`` of the inputs at columns
``8 * byte + j`` with the gathered ``[block_rows, block_bytes]`` slice on the tensor cores, fp32
accumulation: a sum over the columns does not depend on their order, so a chunk is eight column
slices of stride 8 and the gathered values are never shuffled into column order.

The one derived index, ``chunk_offsets`` (int32 ``[rows, ceil(bytes_per_row / 128)]``: the index
in ``values`` of the first kept weight of every 1,024 columns of each row), starts every chunk of the
``chunks`` kernel and lets programs split the input dimension (``splits > 1``, partial sums added
afterwards) without a pass over the preceding bits; it adds 4 bytes per 1,024 weights, counted in
``weight_bytes`` (0.365 of the dense fp16 bytes in all at 70 %).

Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is imported) runs the kernel on CPU
tensors; tests/test_bitmask_kernel.py uses it there. Everywhere else the tensors must be on CUDA.

For ``torch.compile`` the product is the custom operator ``sparsebench::bitmask_matmul`` (``torch.library``,
opaque to the compiler, with a fake implementation giving ``[T, out]`` in x's dtype; ``custom_ops``), so the
compiler neither traces the launch logic nor the kernel; eagerly ``BitmaskLinear`` calls ``bitmask_matmul``
directly (the operator's dispatch would add host time to what the eager modes measure; see ``custom_ops``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor, nn
from torch.nn import functional as F

from sparsebench.kernels import bitmask_kept, bitmask_walk
from sparsebench.kernels.bitmask_unpack import unpack_dense
from sparsebench.kernels.custom_ops import row_product_op
from sparsebench.kernels.launching import INDEX_BYTES, check_one_device, check_powers_of_two, interpreted, split_output, summed
from sparsebench.kernels.one_token_cuda import WARPS_PER_BLOCK as CUDA_WARPS_PER_BLOCK
from sparsebench.sparse_layout import Bitmask, pack_bitmask

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
ONE_TOKEN_KERNELS = ("chunks", "bytes", "kept", "walk")
# CUDA C++ (NVRTC), one warp a row, Triton's interpreter cannot run them: each one's product and loader
_CUDA_KERNELS = {"kept": (bitmask_kept.kept_gemv, bitmask_kept.load_kernel), "walk": (bitmask_walk.walk_gemv, bitmask_walk.load_kernel)}
CUDA_ONE_TOKEN_KERNELS = tuple(_CUDA_KERNELS)
# the CUDA kernels' cost follows the kept weights, the chunks kernel's every position: timed on an H100 at LLaMA-2-7B's
# shapes (docs/data/efficiency_gpu/h100_2026-12-05h_bitmask_one_token.txt) walk is 1.02-1.06x as fast as chunks at 60 %
# for q/k/v/o and down, 0.99x for gate/up, 1.11-1.39x at 70-80 %, 0.89-0.93x at 50 % (and 1.01-1.15x as fast as
# kept everywhere); so the default takes walk from 55 % sparsity
WALK_DENSITY_LIMIT = 0.45
_MAX_TOKENS_PER_PROGRAM = 64
# more tokens than this (a prefill) unpack the weight and take the dense product: the tensor-core kernel would decode
# the weight again for every 64 tokens (a 2,048-token prefill took about 50 times dense's time on an H100)
UNPACK_ABOVE_TOKENS = _MAX_TOKENS_PER_PROGRAM
_BYTE_COUNTS = torch.tensor([bin(byte).count("1") for byte in range(256)], dtype=torch.int32)


@dataclass(frozen=True)
class Launch:
    """How the kernel is launched.

    ``block_rows``: output rows per program: for one token 1 or 2 (``chunks``) or 1 (``bytes``), for several
    at least 16 (the tensor cores' tile); ``block_bytes``: mask bytes walked per step: ``INDEX_BYTES`` for
    ``chunks`` (a 1,024-column chunk, four bytes a lane), otherwise one a thread at ``32 * warps``;
    ``splits``: programs along the input dimension, whose float32 partial sums are added afterwards;
    ``prefetch``: load the next step's mask bytes before gathering this step's values (``bytes`` and
    several tokens); ``one_token``: the one-token kernel, ``chunks`` (``_chunk_kernel``), ``bytes``
    (``_one_token_kernel``, the first kernel), ``kept`` (``bitmask_kept``: the CUDA C++ kernel that walks
    only the kept weights, one warp a row and ``warps`` rows a block; ``block_rows=1``,
    ``block_bytes=INDEX_BYTES``, one split, no prefetch) or ``walk`` (``bitmask_walk``: CUDA C++ too, each
    lane multiplying as it walks its mask word, no column list; the same launch as ``kept``).
    """

    block_rows: int
    block_bytes: int
    warps: int = 4
    splits: int = 1
    prefetch: bool = False
    one_token: str = "chunks"

    def __post_init__(self) -> None:
        check_powers_of_two(self, ("block_rows", "block_bytes", "warps", "splits"))
        if INDEX_BYTES % self.block_bytes:
            raise ValueError(f"Launch.block_bytes must divide {INDEX_BYTES}, got {self.block_bytes}")
        if self.one_token not in ONE_TOKEN_KERNELS:
            raise ValueError(f"Launch.one_token must be one of {ONE_TOKEN_KERNELS}, got {self.one_token!r}")


def one_token_launch(kernel: str, rows: int) -> Launch:
    """The launch of the one-token kernel ``kernel`` (``ONE_TOKEN_KERNELS``) for a weight of ``rows`` rows: the CUDA kernels
    eight warps (rows) a block, ``chunks`` one warp of two rows from 8,192 rows or of one below, ``bytes`` 32 bytes a step."""
    if kernel in CUDA_ONE_TOKEN_KERNELS:
        return Launch(block_rows=1, block_bytes=INDEX_BYTES, warps=CUDA_WARPS_PER_BLOCK, one_token=kernel)
    if kernel == "chunks":
        return Launch(block_rows=2 if rows >= 8192 else 1, block_bytes=INDEX_BYTES, warps=1)
    if kernel == "bytes":
        return Launch(block_rows=1, block_bytes=32, warps=1, one_token="bytes")
    raise ValueError(f"the one-token kernel must be one of {ONE_TOKEN_KERNELS}, got {kernel!r}")


def default_launch(tokens: int, rows: int, cols: int, capability: tuple[int, int] | None = None,
                   density: float | None = None) -> Launch:
    """The launch for ``tokens`` tokens on a ``[rows, cols]`` weight of ``density`` kept weights.

    One token, on a GPU of compute capability 8.0 or more, columns a multiple of 32 and a density of at most
    ``WALK_DENSITY_LIMIT``: the walking CUDA kernel (``bitmask_walk``) with eight warps a block, or the kept-weights
    kernel where ``x`` is too wide for the walking kernel's shared memory. Eight warps were within 1 % of the best of a
    sweep for q/k/v/o and gate/up at 70 % on an H100, 4 % behind 16 warps for down_proj
    (docs/data/efficiency_gpu/h100_2026-12-05h_bitmask_one_token.txt).

    Otherwise, chosen from the shapes whose main loop has the fewest instructions per weight in sm_90 machine code
    (benchmarks/bitmask_kernel_sass.py) and timed on an H100 against the best of a sweep
    (``bench_bitmask_kernel.py --sweep``, docs/data/efficiency_gpu/h100_2026-12-05b_bitmask.txt), within 3 % of it at
    70 % for the three LLaMA-2-7B shapes. One token: the ``chunks`` kernel, a one-warp program of two rows (they share
    the inputs' conversion to float32: 12.1 instructions a weight against 12.8), or of one row below 8,192 rows, so
    that a 4,096-row weight still gives each of 132 multiprocessors about 31 warps (64 registers a thread allow 32).
    Several tokens: 32 rows a program with the mask prefetched, the input dimension split in four (fewer than 8,192
    rows) or two, so that a 132-multiprocessor GPU gets several programs each; at 16 tokens the path is 0.18-0.30x of
    dense per linear on that H100 (docs/data/efficiency_gpu/h100_2026-12-05b_bench_gpu_70.txt).
    """
    if (tokens == 1 and cols % 32 == 0 and not interpreted() and (capability is None or capability >= bitmask_walk.MIN_CAPABILITY)
            and (density is None or density <= WALK_DENSITY_LIMIT)):
        return one_token_launch("walk" if cols <= bitmask_walk.max_columns(CUDA_WARPS_PER_BLOCK) else "kept", rows)
    if tokens == 1:
        return one_token_launch("chunks", rows)
    return Launch(block_rows=32, block_bytes=32, warps=4, splits=4 if rows < 8192 else 2, prefetch=True)


def _capability(device: torch.device) -> tuple[int, int] | None:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def chunk_offsets(packed: Bitmask) -> Tensor:
    """int32 ``[rows, ceil(bytes_per_row / INDEX_BYTES)]``: the index in ``values`` of each row's first kept weight in each 1,024 columns."""
    rows = packed.shape[0]
    if packed.values.numel() >= 2**31:
        raise ValueError(f"the kernel indexes values with int32; this weight has {packed.values.numel()} non-zeros (at most 2**31 - 1)")
    counts = _BYTE_COUNTS.to(packed.bitmask.device)[packed.bitmask.long()]
    n_index = -(-counts.shape[1] // INDEX_BYTES)
    padded = torch.zeros(rows, n_index * INDEX_BYTES, dtype=torch.int32, device=counts.device)
    padded[:, : counts.shape[1]] = counts
    per_chunk = padded.view(rows, n_index, INDEX_BYTES).sum(dim=-1, dtype=torch.int64)
    before = torch.cumsum(per_chunk, dim=1) - per_chunk
    return (packed.row_offsets.view(rows, 1) + before).to(torch.int32)


@triton.jit
def _byte_popcount(byte):
    """Set bits of each value in 0..255 (int32), by the parallel bit count of Hacker's Delight 5-1."""
    count = byte - ((byte >> 1) & 0x55)
    count = (count & 0x33) + ((count >> 2) & 0x33)
    return (count + (count >> 4)) & 0x0F


@triton.jit
def _eight_columns(xs, BLOCK_BYTES: tl.constexpr):
    """``xs [BLOCK_BYTES, 8]`` (each thread holds its byte's eight inputs) as its eight columns, by in-register splits."""
    even, odd = tl.split(xs.reshape(BLOCK_BYTES, 4, 2))  # columns 2q and 2q + 1
    even_lo, even_hi = tl.split(even.reshape(BLOCK_BYTES, 2, 2))  # 4s, 4s + 2
    odd_lo, odd_hi = tl.split(odd.reshape(BLOCK_BYTES, 2, 2))  # 4s + 1, 4s + 3
    x0, x4 = tl.split(even_lo)
    x2, x6 = tl.split(even_hi)
    x1, x5 = tl.split(odd_lo)
    x3, x7 = tl.split(odd_hi)
    return x0, x1, x2, x3, x4, x5, x6, x7


@triton.jit
def _chunk_starts(m0, m1, m2, m3, base):
    """Index in ``values`` of the first kept weight of each lane's byte in the chunk's four 32-byte groups.

    The four bytes of a lane share one int32, and so do their bit counts (Hacker's Delight 5-1, a byte
    each): one ``tl.cumsum`` over the 32 lanes gives all four exclusive prefix sums, each at most
    31 * 8 = 248, so no field carries into the next. The groups' totals (up to 256) are summed in 16-bit fields.
    """
    packed = (m0 | (m1 << 8) | (m2 << 16) | (m3 << 24)).to(tl.uint32)
    counts = packed - ((packed >> 1) & 0x55555555)
    counts = (counts & 0x33333333) + ((counts >> 2) & 0x33333333)
    counts = (counts + (counts >> 4)) & 0x0F0F0F0F
    before = tl.cumsum(counts, 0) - counts
    even_totals = tl.sum(counts & 0x00FF00FF, 0)  # groups 0 and 2
    odd_totals = tl.sum((counts >> 8) & 0x00FF00FF, 0)  # groups 1 and 3
    base_1 = base + (even_totals & 0xFFFF)
    base_2 = base_1 + (odd_totals & 0xFFFF)
    base_3 = base_2 + (even_totals >> 16)
    return (base + (before & 0xFF), base_1 + ((before >> 8) & 0xFF), base_2 + ((before >> 16) & 0xFF), base_3 + (before >> 24))


@triton.jit
def _chunk_base(offsets_ptr, row, chunk, n_index, MASKED: tl.constexpr):
    """``chunk_offsets[row, chunk]``; ``MASKED``: a chunk past the row's end (the last split's) gets 0 and has no bits set."""
    if MASKED:
        return tl.load(offsets_ptr + row * n_index + chunk, mask=chunk < n_index, other=0)
    return tl.load(offsets_ptr + row * n_index + chunk)


@triton.jit
def _chunk_masks(mask_row, byte, n_bytes, MASKED: tl.constexpr):
    """The chunk's mask bytes (int32), lane ``i`` holding bytes ``i``, ``32 + i``, ``64 + i``, ``96 + i``; ``MASKED``: zero past the row."""
    if MASKED:
        m0 = tl.load(mask_row + byte, mask=byte < n_bytes, other=0).to(tl.int32)
        m1 = tl.load(mask_row + byte + 32, mask=byte + 32 < n_bytes, other=0).to(tl.int32)
        m2 = tl.load(mask_row + byte + 64, mask=byte + 64 < n_bytes, other=0).to(tl.int32)
        m3 = tl.load(mask_row + byte + 96, mask=byte + 96 < n_bytes, other=0).to(tl.int32)
    else:
        m0 = tl.load(mask_row + byte).to(tl.int32)
        m1 = tl.load(mask_row + byte + 32).to(tl.int32)
        m2 = tl.load(mask_row + byte + 64).to(tl.int32)
        m3 = tl.load(mask_row + byte + 96).to(tl.int32)
    return m0, m1, m2, m3


@triton.jit
def _byte_products(acc, start, mask_byte, x_bits, values_ptr):
    """Add the eight products of one mask byte a lane. ``start``: the index in ``values`` of the byte's first kept weight;
    ``x_bits``: the byte's eight inputs in float32. Kept weight ``k`` sits at ``start + k``: a predicated load, then a step."""
    values_bytes = values_ptr.to(tl.pointer_type(tl.uint8))
    offset = start.to(tl.uint32) * 2  # in bytes, unsigned: the address is one 64-bit add, the step one shift-add
    for bit in tl.static_range(8):
        kept = (mask_byte & (1 << bit)) != 0
        weight = tl.load((values_bytes + offset).to(values_ptr.dtype), mask=kept, other=0.0)
        offset = tl.where(kept, offset + 2, offset)
        acc += weight.to(tl.float32) * x_bits[bit]
    return acc


@triton.jit
def _group_inputs(x_ptr, byte, cols, MASKED: tl.constexpr):
    """The eight inputs (float32) of each of 32 lanes' mask byte: one 16-byte load, split in registers; ``MASKED``: zero past x."""
    column = byte[:, None] * 8 + tl.arange(0, 8)[None, :]
    if MASKED:
        xs = tl.load(x_ptr + column, mask=column < cols, other=0.0)
    else:
        xs = tl.load(x_ptr + column)
    return _eight_columns(xs.to(tl.float32), 32)


@triton.jit
def _chunk_step(acc, acc_b, chunk, x_ptr, values_ptr, offsets_ptr, mask_row, mask_row_b, row, row_b, cols, n_bytes, n_index,
                TWO_ROWS: tl.constexpr, INDEX_BYTES: tl.constexpr, MASKED: tl.constexpr):
    """Add one chunk's products of row ``row`` to ``acc`` (and of ``row_b`` to ``acc_b``); ``MASKED``: bounds-mask the loads."""
    byte = chunk * INDEX_BYTES + tl.arange(0, 32)
    masks = _chunk_masks(mask_row, byte, n_bytes, MASKED)
    starts = _chunk_starts(*masks, _chunk_base(offsets_ptr, row, chunk, n_index, MASKED))
    if TWO_ROWS:
        masks_b = _chunk_masks(mask_row_b, byte, n_bytes, MASKED)
        starts_b = _chunk_starts(*masks_b, _chunk_base(offsets_ptr, row_b, chunk, n_index, MASKED))
    for group in tl.static_range(4):  # the lanes' bytes group, 32 * group + lane
        x_bits = _group_inputs(x_ptr, byte + 32 * group, cols, MASKED)
        acc = _byte_products(acc, starts[group], masks[group], x_bits, values_ptr)
        if TWO_ROWS:
            acc_b = _byte_products(acc_b, starts_b[group], masks_b[group], x_bits, values_ptr)
    return acc, acc_b


@triton.jit
def _chunk_kernel(
    x_ptr, values_ptr, bitmask_ptr, offsets_ptr, bias_ptr, out_ptr,
    rows, cols, n_bytes, n_index, stride_out_split,
    HAS_BIAS: tl.constexpr, TWO_ROWS: tl.constexpr, INDEX_BYTES: tl.constexpr, CHUNKS: tl.constexpr,
    MASKED: tl.constexpr, MASKED_TAIL: tl.constexpr,
):
    """One token: one warp walks one (or two) rows a chunk of 1,024 columns at a time, lane ``i`` taking mask bytes
    ``i``, ``32 + i``, ``64 + i``, ``96 + i`` of the chunk; each chunk starts at its ``chunk_offsets`` entry.

    ``CHUNKS`` chunks a split. ``MASKED``: bounds-mask every chunk's loads (several splits that do not
    cover the row's chunks exactly); ``MASKED_TAIL``: only the last chunk's (one split, ``cols`` not a
    multiple of 1,024). The unmasked chunks cost about 1.3 instructions a weight fewer."""
    row = tl.program_id(0) * (2 if TWO_ROWS else 1)
    split = tl.program_id(1)
    mask_row = bitmask_ptr + row.to(tl.int64) * n_bytes
    acc = tl.zeros((32,), dtype=tl.float32)
    acc_b = tl.zeros((32,), dtype=tl.float32)  # the second row's; unused for one row
    row_b = tl.minimum(row + 1, rows - 1)  # a missing second row repeats the first, and is not stored
    mask_row_b = bitmask_ptr + row_b.to(tl.int64) * n_bytes
    for step in range(CHUNKS - MASKED_TAIL):
        acc, acc_b = _chunk_step(acc, acc_b, split * CHUNKS + step, x_ptr, values_ptr, offsets_ptr, mask_row, mask_row_b, row, row_b,
                                 cols, n_bytes, n_index, TWO_ROWS, INDEX_BYTES, MASKED)
    if MASKED_TAIL:
        acc, acc_b = _chunk_step(acc, acc_b, split * CHUNKS + CHUNKS - 1, x_ptr, values_ptr, offsets_ptr, mask_row, mask_row_b, row, row_b,
                                 cols, n_bytes, n_index, TWO_ROWS, INDEX_BYTES, True)
    result = tl.sum(acc, 0)
    if HAS_BIAS:
        result += tl.load(bias_ptr + row).to(tl.float32)
    tl.store(out_ptr + split * stride_out_split + row, result.to(out_ptr.dtype.element_ty))
    if TWO_ROWS:
        result_b = tl.sum(acc_b, 0)
        if HAS_BIAS:
            result_b += tl.load(bias_ptr + row_b).to(tl.float32)
        tl.store(out_ptr + split * stride_out_split + row_b, result_b.to(out_ptr.dtype.element_ty), mask=row + 1 < rows)


@triton.jit
def _one_token_kernel(
    x_ptr, values_ptr, bitmask_ptr, offsets_ptr, bias_ptr, out_ptr,
    cols, n_bytes, n_index, stride_out_split, bytes_per_split,
    HAS_BIAS: tl.constexpr, BLOCK_BYTES: tl.constexpr, INDEX_BYTES: tl.constexpr, STEPS: tl.constexpr,
    PREFETCH: tl.constexpr,
):
    """One output row per program, one mask byte per thread: every tensor is 1-D in one layout, so no shuffles between them."""
    row = tl.program_id(0)
    split = tl.program_id(1)
    byte_start = split * bytes_per_split
    byte_stop = tl.minimum(byte_start + bytes_per_split, n_bytes)
    offset = tl.load(offsets_ptr + row * n_index + byte_start // INDEX_BYTES)  # next kept weight's index in values
    lane = tl.arange(0, BLOCK_BYTES)
    eight = tl.arange(0, 8)
    mask_row = bitmask_ptr + row.to(tl.int64) * n_bytes
    acc = tl.zeros((BLOCK_BYTES,), dtype=tl.float32)
    if PREFETCH:  # the next chunk's mask bytes are loaded while this chunk's values are gathered
        upcoming = tl.load(mask_row + byte_start + lane, mask=byte_start + lane < byte_stop, other=0)
    for step in range(STEPS):  # the last split's tail is masked
        byte = byte_start + step * BLOCK_BYTES + lane
        if PREFETCH:
            mask = upcoming.to(tl.int32)
            upcoming = tl.load(mask_row + byte + BLOCK_BYTES, mask=byte + BLOCK_BYTES < byte_stop, other=0)
        else:
            mask = tl.load(mask_row + byte, mask=byte < byte_stop, other=0).to(tl.int32)
        count = _byte_popcount(mask)
        pointer = values_ptr + (offset + tl.cumsum(count, 0) - count)  # each byte's first kept weight
        offset += tl.sum(count, 0)
        column = byte[:, None] * 8 + eight[None, :]
        x_bits = _eight_columns(tl.load(x_ptr + column, mask=column < cols, other=0.0), BLOCK_BYTES)
        for bit in tl.static_range(8):
            kept = ((mask >> bit) & 1) != 0
            weight = tl.load(pointer, mask=kept, other=0.0)
            pointer = tl.where(kept, pointer + 1, pointer)
            acc += weight.to(tl.float32) * x_bits[bit].to(tl.float32)
    result = tl.sum(acc, 0)
    if HAS_BIAS:
        result += tl.load(bias_ptr + row).to(tl.float32)
    tl.store(out_ptr + split * stride_out_split + row, result.to(out_ptr.dtype.element_ty))


@triton.jit
def _tokens_kernel(
    x_ptr, values_ptr, bitmask_ptr, offsets_ptr, bias_ptr, out_ptr,
    tokens, rows, cols, n_bytes, n_index, stride_x, stride_out_token, stride_out_split, bytes_per_split,
    HAS_BIAS: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_TOKENS: tl.constexpr, BLOCK_BYTES: tl.constexpr,
    INDEX_BYTES: tl.constexpr, STEPS: tl.constexpr, PREFETCH: tl.constexpr,
):
    """``BLOCK_ROWS`` output rows and ``BLOCK_TOKENS`` tokens per program; eight ``tl.dot`` a chunk, one per bit of the bytes."""
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = row < rows
    token = tl.program_id(1) * BLOCK_TOKENS + tl.arange(0, BLOCK_TOKENS)
    token_ok = token < tokens
    split = tl.program_id(2)
    byte_start = split * bytes_per_split
    byte_stop = tl.minimum(byte_start + bytes_per_split, n_bytes)
    offset = tl.load(offsets_ptr + row * n_index + byte_start // INDEX_BYTES, mask=row_ok, other=0)
    lane = tl.arange(0, BLOCK_BYTES)
    mask_rows = bitmask_ptr + row[:, None].to(tl.int64) * n_bytes
    acc = tl.zeros((BLOCK_TOKENS, BLOCK_ROWS), dtype=tl.float32)
    if PREFETCH:
        upcoming = tl.load(mask_rows + tl.max_contiguous(byte_start + lane, 1)[None, :],
                           mask=row_ok[:, None] & (byte_start + lane < byte_stop)[None, :], other=0)
    for step in range(STEPS):
        # max_contiguous(.., 1): the mask load takes the gathers' layout (not a vectorised one), so their
        # pointers are not converted through shared memory at every bit
        byte = tl.max_contiguous(byte_start + step * BLOCK_BYTES + lane, 1)
        if PREFETCH:
            mask = upcoming.to(tl.int32)
            upcoming = tl.load(mask_rows + (byte + BLOCK_BYTES)[None, :],
                               mask=row_ok[:, None] & (byte + BLOCK_BYTES < byte_stop)[None, :], other=0)
        else:
            mask = tl.load(mask_rows + byte[None, :], mask=row_ok[:, None] & (byte < byte_stop)[None, :], other=0).to(tl.int32)
        count = _byte_popcount(mask)
        position = offset[:, None] + tl.cumsum(count, axis=1) - count
        offset += tl.sum(count, axis=1)
        for bit in tl.static_range(8):
            kept = (mask >> bit) & 1
            weight = tl.load(values_ptr + position, mask=kept != 0, other=0.0)
            position += kept
            column = byte * 8 + bit
            x = tl.load(x_ptr + token[:, None] * stride_x + column[None, :], mask=token_ok[:, None] & (column < cols)[None, :], other=0.0)
            acc = tl.dot(x, tl.trans(weight), acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + row, mask=row_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + split * stride_out_split + token[:, None] * stride_out_token + row[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=token_ok[:, None] & row_ok[None, :])


def _check_operands(x2d: Tensor, packed: Bitmask, offsets: Tensor, bias: Tensor | None) -> None:
    rows, cols = packed.shape
    if x2d.dim() != 2 or x2d.shape[1] != cols:
        raise ValueError(f"bitmask_matmul takes x of shape [tokens, {cols}], got {tuple(x2d.shape)}")
    if x2d.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"bitmask_matmul supports x.dtype in (torch.float16, torch.bfloat16), got {x2d.dtype}")
    if packed.values.dtype != x2d.dtype:
        raise TypeError(f"bitmask_matmul needs values of x's dtype {x2d.dtype}, got {packed.values.dtype}")
    if bias is not None and (bias.shape != (rows,) or bias.dtype != x2d.dtype):
        raise ValueError(f"bias must be a [{rows}] tensor of {x2d.dtype}, got {tuple(bias.shape)} {bias.dtype}")
    if packed.bitmask.dtype != torch.uint8 or packed.bitmask.shape != (rows, -(-cols // 8)):
        raise ValueError(f"bitmask must be uint8 [{rows}, {-(-cols // 8)}], got {packed.bitmask.dtype} {tuple(packed.bitmask.shape)}")
    expected = (rows, -(-packed.bitmask.shape[1] // INDEX_BYTES))
    if offsets.dtype != torch.int32 or tuple(offsets.shape) != expected:
        raise ValueError(f"chunk_offsets must be int32 {list(expected)} (from chunk_offsets(packed)), got {offsets.dtype} {tuple(offsets.shape)}")


def bitmask_matmul(x2d: Tensor, packed: Bitmask, offsets: Tensor, bias: Tensor | None = None,
                   launch: Launch | None = None) -> Tensor:
    """``x2d @ W^T (+ bias)`` for ``x2d [T, in]`` and ``W`` given as ``packed`` with its ``chunk_offsets(packed)``; ``[T, out]`` in x's dtype."""
    _check_operands(x2d, packed, offsets, bias)
    rows, cols = packed.shape
    tokens = x2d.shape[0]
    launch = launch or default_launch(tokens, rows, cols, _capability(x2d.device), packed.values.numel() / (rows * cols))
    if tokens == 1 and launch.one_token == "chunks" and (launch.block_rows > 2 or launch.block_bytes != INDEX_BYTES
                                                         or launch.warps != 1 or launch.prefetch):
        raise ValueError(f"one token on the 'chunks' kernel runs one warp of one or two rows, {INDEX_BYTES} mask bytes a step, "
                         f"no prefetch: the launch needs block_rows in (1, 2), block_bytes={INDEX_BYTES}, warps=1, "
                         f"prefetch=False, got {launch}")
    if tokens == 1 and launch.one_token in CUDA_ONE_TOKEN_KERNELS and (launch.block_rows != 1 or launch.block_bytes != INDEX_BYTES
                                                                       or launch.splits != 1 or launch.prefetch):
        raise ValueError(f"one token on the '{launch.one_token}' kernel runs one warp a row and `warps` rows a block, {INDEX_BYTES} "
                         f"mask bytes a step: the launch needs block_rows=1, block_bytes={INDEX_BYTES}, splits=1, prefetch=False, got {launch}")
    if tokens == 1 and launch.one_token == "bytes" and launch.block_rows != 1:
        raise ValueError(f"one token on the 'bytes' kernel runs one output row per program: the launch needs block_rows=1, got {launch}")
    if tokens > 1 and (launch.block_rows < 16 or launch.block_bytes < 16):
        raise ValueError(f"{tokens} tokens run on the tensor cores: the launch needs block_rows >= 16 and block_bytes >= 16, got {launch}")
    check_one_device([x2d, packed.values, packed.bitmask, offsets] + ([bias] if bias is not None else []), "bitmask_matmul")
    if tokens == 0:
        return x2d.new_empty(0, rows)
    if tokens > UNPACK_ABOVE_TOKENS:  # a prefill: the dense product on the weight unpacked for this call (bitmask_unpack)
        return F.linear(x2d, unpack_dense(packed.values, packed.bitmask, offsets, cols), bias)
    if tokens == 1 and launch.one_token in CUDA_ONE_TOKEN_KERNELS:
        if interpreted():
            raise RuntimeError(f"the '{launch.one_token}' kernel is CUDA C++ (NVRTC), which Triton's interpreter cannot run; "
                               "use one_token='chunks' there")
        product, _ = _CUDA_KERNELS[launch.one_token]
        return product(x2d, packed.values, packed.bitmask, offsets, bias, launch.warps)
    x2d = x2d.contiguous()
    n_bytes = packed.bitmask.shape[1]
    # every split but the last covers a whole number of index chunks
    bytes_per_split = -(-(-(-n_bytes // launch.splits)) // INDEX_BYTES) * INDEX_BYTES
    splits = -(-n_bytes // bytes_per_split)
    if splits == 1:
        bytes_per_split = n_bytes
    out = split_output(x2d, rows, splits)
    stride_split = out.stride(0) if splits > 1 else 0
    fused_bias = bias is not None and splits == 1
    steps = triton.cdiv(bytes_per_split, launch.block_bytes)
    common = (x2d, packed.values, packed.bitmask, offsets, bias if fused_bias else x2d, out)
    if tokens == 1 and launch.one_token == "chunks":
        # every split a whole number of chunks inside the row: no bounds masks; else only the one split's last chunk
        whole_chunks = cols % (8 * INDEX_BYTES) == 0 and splits * bytes_per_split == n_bytes
        _chunk_kernel[(triton.cdiv(rows, launch.block_rows), splits)](
            *common, rows, cols, n_bytes, offsets.shape[1], stride_split,
            HAS_BIAS=fused_bias, TWO_ROWS=launch.block_rows == 2, INDEX_BYTES=INDEX_BYTES,
            CHUNKS=triton.cdiv(bytes_per_split, INDEX_BYTES), MASKED=splits > 1 and not whole_chunks,
            MASKED_TAIL=splits == 1 and not whole_chunks, num_warps=1,
        )
    elif tokens == 1:
        _one_token_kernel[(rows, splits)](
            *common, cols, n_bytes, offsets.shape[1], stride_split, bytes_per_split,
            HAS_BIAS=fused_bias, BLOCK_BYTES=launch.block_bytes, INDEX_BYTES=INDEX_BYTES, STEPS=steps,
            PREFETCH=launch.prefetch, num_warps=launch.warps,
        )
    else:
        block_tokens = min(max(16, triton.next_power_of_2(tokens)), _MAX_TOKENS_PER_PROGRAM)
        grid = (triton.cdiv(rows, launch.block_rows), triton.cdiv(tokens, block_tokens), splits)
        _tokens_kernel[grid](
            *common, tokens, rows, cols, n_bytes, offsets.shape[1], x2d.stride(0), rows, stride_split, bytes_per_split,
            HAS_BIAS=fused_bias, BLOCK_ROWS=launch.block_rows, BLOCK_TOKENS=block_tokens, BLOCK_BYTES=launch.block_bytes,
            INDEX_BYTES=INDEX_BYTES, STEPS=steps, PREFETCH=launch.prefetch, num_warps=launch.warps,
        )
    return summed(out, bias, x2d.dtype)


def _bitmask_op_product(x2d: Tensor, values: Tensor, bitmask: Tensor, row_offsets: Tensor, offsets: Tensor, bias: Tensor | None,
                        in_features: int, launch: list[int] | None) -> Tensor:
    """``bitmask_matmul`` with plain arguments (``launch``: ``launch_arguments``'s list; None: the default)."""
    packed = Bitmask((bitmask.shape[0], in_features), values, bitmask, row_offsets)
    chosen = None if launch is None else Launch(*launch[:4], prefetch=bool(launch[4]), one_token=ONE_TOKEN_KERNELS[launch[5]])
    return bitmask_matmul(x2d, packed, offsets, bias, chosen)


bitmask_matmul_op = row_product_op("bitmask_matmul", _bitmask_op_product)


def launch_arguments(launch: Launch | None) -> list[int] | None:
    """``launch`` as the operator's integer list: block_rows, block_bytes, warps, splits, prefetch, the index of
    ``one_token`` in ``ONE_TOKEN_KERNELS`` (None stays None)."""
    if launch is None:
        return None
    return [launch.block_rows, launch.block_bytes, launch.warps, launch.splits, int(launch.prefetch), ONE_TOKEN_KERNELS.index(launch.one_token)]


class BitmaskLinear(nn.Module):
    """A drop-in for a pruned ``nn.Linear`` that keeps only the ``sparse-bitmask`` layout (no dense copy) and multiplies with ``bitmask_matmul``.

    ``launch``: one launch for every call (None: ``default_launch`` per call); ``one_token``: the kernel of one-token
    calls (``ONE_TOKEN_KERNELS``, in ``one_token_launch``), the default launch for the others."""

    def __init__(self, packed: Bitmask, bias: Tensor | None = None, launch: Launch | None = None, one_token: str | None = None) -> None:
        super().__init__()
        if packed.values.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"BitmaskLinear supports weights in (torch.float16, torch.bfloat16), got {packed.values.dtype}")
        if launch is not None and one_token is not None:
            raise ValueError("BitmaskLinear takes a launch for every call or a one_token kernel, not both")
        self.out_features, self.in_features = packed.shape
        self.launch = launch
        self.one_token_override = None if one_token is None else one_token_launch(one_token, self.out_features)
        self.register_buffer("values", packed.values)
        self.register_buffer("bitmask", packed.bitmask)
        self.register_buffer("row_offsets", packed.row_offsets)
        self.register_buffer("chunk_offsets", chunk_offsets(packed))
        self.register_buffer("bias", None if bias is None else bias.detach().to(packed.values.dtype))
        one_token = launch or self.one_token_override or default_launch(1, self.out_features, self.in_features, _capability(packed.values.device),
                                                                      packed.values.numel() / (self.out_features * self.in_features))
        self.one_token_kernel = one_token.one_token  # which kernel a one-token product runs (recorded by eval=efficiency)
        if one_token.one_token in CUDA_ONE_TOKEN_KERNELS and packed.values.device.type == "cuda":  # compiled and loaded now, not in a timed call
            _, load = _CUDA_KERNELS[one_token.one_token]
            load(packed.values.device, packed.values.dtype, one_token.warps)

    @classmethod
    def from_linear(cls, linear: nn.Linear, launch: Launch | None = None) -> BitmaskLinear:
        """Pack ``linear``'s weight once, on its device; the module holds no dense copy and keeps the bias."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"BitmaskLinear.from_linear takes an nn.Linear, got {type(linear).__name__}")
        return cls(pack_bitmask(linear.weight.detach()), linear.bias, launch)

    @classmethod
    def kept_weights(cls, linear: nn.Linear) -> BitmaskLinear:
        """``from_linear`` with one-token calls through the kept-weights CUDA kernel at any density (the ``bitmask_kept`` path)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"BitmaskLinear.kept_weights takes an nn.Linear, got {type(linear).__name__}")
        return cls(pack_bitmask(linear.weight.detach()), linear.bias, one_token="kept")

    def packed(self) -> Bitmask:
        """The weight in the ``sparse-bitmask`` layout (the module's own tensors, not copies)."""
        return Bitmask((self.out_features, self.in_features), self.values, self.bitmask, self.row_offsets)

    def weight_bytes(self) -> int:
        """Bytes held for the weight: values, bitmask, row_offsets and chunk_offsets (not the bias)."""
        return sum(t.numel() * t.element_size() for t in (self.values, self.bitmask, self.row_offsets, self.chunk_offsets))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"BitmaskLinear expects inputs [..., {self.in_features}], got {tuple(x.shape)}")
        rows = x.reshape(-1, self.in_features)
        launch = self.launch or (self.one_token_override if rows.shape[0] == 1 else None)
        if torch.compiler.is_compiling():
            y = torch.ops.sparsebench.bitmask_matmul.default(rows, self.values, self.bitmask, self.row_offsets, self.chunk_offsets, self.bias,
                                                             self.in_features, launch_arguments(launch))
        else:
            y = bitmask_matmul(rows, self.packed(), self.chunk_offsets, self.bias, launch)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        sparsity = 1 - self.values.numel() / (self.out_features * self.in_features)
        return f"in_features={self.in_features}, out_features={self.out_features}, sparsity={sparsity:.3f}, bias={self.bias is not None}"
