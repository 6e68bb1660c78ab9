"""2:4 decode products (1 to 16 tokens) straight from the ``sparse-24-bitmask`` layout, a Triton kernel.

The layout (sparsebench/sparse_layout.py, ``Bitmask24``; compressed-tensors 0.13's ``sparse-24-bitmask``):
``values [rows, cols / 2]`` the kept two of every group of four inputs, in column order, and ``bitmask``
uint8 ``[rows, cols / 8]``, least significant bit first, exactly two bits set in every nibble. It is
fixed-rate: byte ``b`` of a row holds the positions of that row's values ``4b .. 4b + 3``, so no offsets
are stored or computed, and a weight is read as ``2 * cols / 2 + cols / 8`` bytes a row, 0.5625 of the
dense fp16 bytes. At batch-1 decode a linear's time is reading its weight, so a product that streams
this layout at memory speed approaches ``1 / 0.5625 = 1.78x`` of dense.

How (Mishra et al., "Accelerating Sparse Deep Neural Networks", 2021, for the 2:4 format itself): every
tensor of the main loop is a ``[block_rows, block_bytes]`` tile of mask bytes in one layout. For each
byte the kernel loads its four kept values as one 8-byte word (``values`` viewed as int64) and the eight
inputs of its columns as two 8-byte words (``x`` viewed as int64, shared by the tile's rows), and takes
the halves apart with shifts (no per-weight gathers, no shared memory). For the nibble of columns
``c .. c + 3`` with bits ``b0 .. b3`` and kept values ``v0, v1``:

- one token (``_one_token_kernel``, CUDA cores): ``v0 * x[p0] + v1 * x[p1]`` with the lower position
  ``p0 in {0, 1, 2}`` and the higher ``p1 in {1, 2, 3}``, taken by selects, ``x[p0] = b0 ? x0 : (b1 ? x1
  : x2)`` and ``x[p1] = b3 ? x3 : (b2 ? x2 : x1)``, then two float32 FMAs: the decode costs a few bit
  tests and selects per kept weight and no address arithmetic;
- 2 to 16 tokens (``_tokens_kernel``, tensor cores): the nibble decoded once into its four dense
  weights (``d0 = b0 ? v0 : 0``, ``d1 = b1 ? (b0 ? v1 : v0) : 0``, ``d2 = b2 ? (b3 ? v0 : v1) : 0``,
  ``d3 = b3 ? v1 : 0``), then for each of the byte's eight positions ``j`` one ``tl.dot`` of the tokens'
  inputs at columns ``8 * byte + j`` with the decoded ``[block_rows, block_bytes]`` slice, float32
  accumulation; the tokens are padded to 16 (the tensor cores' smallest tile), so 16 tokens decode the
  weight once, like one. A sum over columns does not depend on their order, so the columns are never
  put back in order.

Instructions per weight of the sm_90 machine code (counted with ``bitmask_kernel_sass``'s functions; ``gemv24``'s script is ``benchmarks/gemv24_sass.py``; Triton 3.6, counted without a GPU): the one-token loop at
``Launch(4, 64)`` has 7.1 per dense weight position (14 per kept weight), 40 registers, no shared memory, above
the 4-5 aimed at (the half extractions and the loop's address arithmetic); the tensor-core loop at ``Launch(32, 64)``
about 9, with the decoded tile staged through shared memory for ``tl.dot``. More than 16 tokens run as tiles of 16 on a third grid axis (each tile decodes the weight again:
correct but slow, for the pure ``gemv24`` path's prefill); ``Gemv24Linear`` refuses them unless built
with ``max_tokens=None``.

Supported shapes: ``cols`` a multiple of 8 (whole mask bytes; a 2:4 weight with ``cols % 8 == 4`` is
refused with that reason), any ``rows``, float16 or bfloat16. Triton's interpreter
(``TRITON_INTERPRET=1`` set before triton is imported) runs the kernels on CPU tensors
(tests/test_gemv24.py); everywhere else the tensors must be on CUDA.

For ``torch.compile`` the product is the custom operator ``sparsebench::gemv24_matmul`` (``custom_ops``: opaque
to the compiler, a fake implementation giving ``[T, out]`` in x's dtype), so the compiler traces neither the
launch logic (the alignment check reads data pointers, which fake tensors do not have) nor the kernels;
eagerly ``Gemv24Linear`` calls ``gemv24_matmul`` directly, so the eager modes measure no operator dispatch.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor, nn

from sparsebench.kernels.custom_ops import row_product_op
from sparsebench.kernels.launching import check_one_device, check_powers_of_two, split_output, summed
from sparsebench.sparse_layout import Bitmask24, pack_24

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
MAX_DECODE_TOKENS = 16  # tokens one tile of the tensor-core kernel takes; Gemv24Linear's default limit
_TOKEN_TILE = 16


@dataclass(frozen=True)
class Launch:
    """How the kernel is launched: ``block_rows`` output rows and ``block_bytes`` mask bytes (8 columns each) a
    step per program, ``warps`` a program, ``splits`` programs along the input dimension (float32 partial sums
    added afterwards). The tensor-core kernel (2 or more tokens) needs ``block_rows >= 16`` and ``block_bytes >= 16``."""

    block_rows: int
    block_bytes: int
    warps: int = 4
    splits: int = 1

    def __post_init__(self) -> None:
        check_powers_of_two(self, ("block_rows", "block_bytes", "warps", "splits"))


def default_launch(tokens: int, rows: int, cols: int) -> Launch:
    """The launch for ``tokens`` tokens on a ``[rows, cols]`` weight, chosen from the sm_90 instruction counts
    (benchmarks/gemv24_sass.py). Timed on an H100 (benchmarks/bench_gemv24.py, docs/data/efficiency_gpu): one token
    at 1.35-1.64x of dense (2.2-2.5 TB/s, near the memory's speed); 2-16 tokens slower than cuSPARSELt, untuned."""
    if tokens == 1:
        return Launch(block_rows=4, block_bytes=64, warps=4)
    return Launch(block_rows=32, block_bytes=64, warps=4, splits=2 if rows <= 4096 else 1)


@triton.jit
def _half(word, index: tl.constexpr, DTYPE: tl.constexpr):
    """The ``index``-th 16-bit value (0 = least significant) of the int64 ``word``, as ``DTYPE``; through its
    32-bit halves, which the machine code takes as registers (no 64-bit shifts)."""
    half_word = (word >> 32).to(tl.int32) if index >= 2 else word.to(tl.int32)
    return (half_word >> (16 * (index % 2))).to(tl.int16).to(DTYPE, bitcast=True)


@triton.jit
def _bit(mask, index: tl.constexpr):
    return ((mask >> index) & 1) != 0


@triton.jit
def _nibble_dot(acc, mask, shift: tl.constexpr, values, value_index: tl.constexpr, inputs, DTYPE: tl.constexpr):
    """``acc + v0 * x[p0] + v1 * x[p1]`` in float32 for the nibble of ``mask`` at bit ``shift``, its kept values the
    halves ``value_index``, ``value_index + 1`` of ``values`` and its four inputs the halves of ``inputs``; the
    inputs are selected as 16-bit values and only the two selected converted."""
    b0, b1, b2, b3 = _bit(mask, shift), _bit(mask, shift + 1), _bit(mask, shift + 2), _bit(mask, shift + 3)
    x0, x1, x2, x3 = _half(inputs, 0, DTYPE), _half(inputs, 1, DTYPE), _half(inputs, 2, DTYPE), _half(inputs, 3, DTYPE)
    lower = tl.where(b0, x0, tl.where(b1, x1, x2)).to(tl.float32)
    upper = tl.where(b3, x3, tl.where(b2, x2, x1)).to(tl.float32)
    acc += _half(values, value_index, DTYPE).to(tl.float32) * lower
    acc += _half(values, value_index + 1, DTYPE).to(tl.float32) * upper
    return acc


@triton.jit
def _one_token_kernel(
    x_ptr, values_ptr, bitmask_ptr, bias_ptr, out_ptr,
    rows, n_bytes, bytes_per_split, stride_out_split,
    HAS_BIAS: tl.constexpr, DTYPE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_BYTES: tl.constexpr, STEPS: tl.constexpr,
):
    """``BLOCK_ROWS`` output rows per program, a ``[BLOCK_ROWS, BLOCK_BYTES]`` tile of mask bytes a step; ``x_ptr`` and
    ``values_ptr`` point to int64 words (four halves each: inputs ``4w .. 4w + 3``, kept values of byte ``w``)."""
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = row < rows
    byte_start = tl.program_id(1) * bytes_per_split
    byte_stop = tl.minimum(byte_start + bytes_per_split, n_bytes)
    lane = tl.arange(0, BLOCK_BYTES)
    row_base = row.to(tl.int64)[:, None] * n_bytes
    acc = tl.zeros((BLOCK_ROWS, BLOCK_BYTES), dtype=tl.float32)
    for step in range(STEPS):
        byte = byte_start + step * BLOCK_BYTES + lane
        byte_ok = byte < byte_stop
        ok = row_ok[:, None] & byte_ok[None, :]
        mask = tl.load(bitmask_ptr + row_base + byte[None, :], mask=ok, other=0).to(tl.int32)
        values = tl.load(values_ptr + row_base + byte[None, :], mask=ok, other=0)
        inputs_low = tl.load(x_ptr + 2 * byte, mask=byte_ok, other=0)[None, :]
        inputs_high = tl.load(x_ptr + 2 * byte + 1, mask=byte_ok, other=0)[None, :]
        acc = _nibble_dot(acc, mask, 0, values, 0, inputs_low, DTYPE)
        acc = _nibble_dot(acc, mask, 4, values, 2, inputs_high, DTYPE)
    result = tl.sum(acc, 1)
    if HAS_BIAS:
        result += tl.load(bias_ptr + row, mask=row_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + tl.program_id(1) * stride_out_split + row, result.to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _dense_nibble(mask, shift: tl.constexpr, values, value_index: tl.constexpr, DTYPE: tl.constexpr):
    """The four dense weights of the nibble of ``mask`` at bit ``shift`` (zeros where its bits are clear)."""
    b0, b1, b2, b3 = _bit(mask, shift), _bit(mask, shift + 1), _bit(mask, shift + 2), _bit(mask, shift + 3)
    v0, v1 = _half(values, value_index, DTYPE), _half(values, value_index + 1, DTYPE)
    zero = tl.zeros_like(v0)
    return (tl.where(b0, v0, zero), tl.where(b1, tl.where(b0, v1, v0), zero),
            tl.where(b2, tl.where(b3, v0, v1), zero), tl.where(b3, v1, zero))


@triton.jit
def _tokens_kernel(
    x_ptr, values_ptr, bitmask_ptr, bias_ptr, out_ptr,
    tokens, rows, cols, n_bytes, bytes_per_split, stride_x, stride_out_token, stride_out_split,
    HAS_BIAS: tl.constexpr, DTYPE: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_TOKENS: tl.constexpr,
    BLOCK_BYTES: tl.constexpr, STEPS: tl.constexpr,
):
    """``BLOCK_ROWS`` rows and ``BLOCK_TOKENS`` tokens per program; each step decodes a ``[BLOCK_ROWS, BLOCK_BYTES]``
    tile of bytes into eight dense slices and multiplies each with the inputs of its columns (``tl.dot``)."""
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = row < rows
    token = tl.program_id(1) * BLOCK_TOKENS + tl.arange(0, BLOCK_TOKENS)
    token_ok = token < tokens
    split = tl.program_id(2)
    byte_start = split * bytes_per_split
    byte_stop = tl.minimum(byte_start + bytes_per_split, n_bytes)
    lane = tl.arange(0, BLOCK_BYTES)
    row_base = row.to(tl.int64)[:, None] * n_bytes
    x_rows = x_ptr + token.to(tl.int64)[:, None] * stride_x
    acc = tl.zeros((BLOCK_TOKENS, BLOCK_ROWS), dtype=tl.float32)
    for step in range(STEPS):
        byte = byte_start + step * BLOCK_BYTES + lane
        byte_ok = byte < byte_stop
        ok = row_ok[:, None] & byte_ok[None, :]
        mask = tl.load(bitmask_ptr + row_base + byte[None, :], mask=ok, other=0).to(tl.int32)
        values = tl.load(values_ptr + row_base + byte[None, :], mask=ok, other=0)
        x_ok = token_ok[:, None] & byte_ok[None, :]
        low = _dense_nibble(mask, 0, values, 0, DTYPE)
        high = _dense_nibble(mask, 4, values, 2, DTYPE)
        for position in tl.static_range(8):
            weight = low[position] if position < 4 else high[position - 4]
            x = tl.load(x_rows + (byte * 8 + position)[None, :], mask=x_ok, other=0.0)
            acc = tl.dot(x, tl.trans(weight), acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + row, mask=row_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + split * stride_out_split + token[:, None] * stride_out_token + row[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=token_ok[:, None] & row_ok[None, :])


def layout_problem(packed: Bitmask24) -> str | None:
    """Why ``packed`` cannot go through this kernel (None: it can)."""
    rows, cols = packed.shape
    if packed.values.dtype not in SUPPORTED_DTYPES:
        return f"gemv24 supports values in (torch.float16, torch.bfloat16), got {packed.values.dtype}"
    if cols % 8:
        return f"gemv24 reads whole mask bytes: in_features must be a multiple of 8, got {cols}"
    if tuple(packed.values.shape) != (rows, cols // 2) or not packed.values.is_contiguous():
        return f"values must be a contiguous [{rows}, {cols // 2}] tensor, got {tuple(packed.values.shape)}"
    if packed.bitmask.dtype != torch.uint8 or tuple(packed.bitmask.shape) != (rows, cols // 8) or not packed.bitmask.is_contiguous():
        return f"bitmask must be a contiguous uint8 [{rows}, {cols // 8}] tensor, got {packed.bitmask.dtype} {tuple(packed.bitmask.shape)}"
    if packed.values.data_ptr() % 8:
        return "values must start on an 8-byte boundary (the kernel reads four values as one 8-byte word)"
    return None


def _check(x2d: Tensor, packed: Bitmask24, bias: Tensor | None) -> None:
    problem = layout_problem(packed)
    if problem is not None:
        raise ValueError(problem)
    rows, cols = packed.shape
    if x2d.dim() != 2 or x2d.shape[1] != cols:
        raise ValueError(f"gemv24_matmul takes x of shape [tokens, {cols}], got {tuple(x2d.shape)}")
    if x2d.dtype != packed.values.dtype:
        raise TypeError(f"gemv24_matmul needs x in the values' dtype {packed.values.dtype}, got {x2d.dtype}")
    if bias is not None and (tuple(bias.shape) != (rows,) or bias.dtype != x2d.dtype):
        raise ValueError(f"bias must be a [{rows}] tensor of {x2d.dtype}, got {tuple(bias.shape)} {bias.dtype}")
    check_one_device([x2d, packed.values, packed.bitmask] + ([bias] if bias is not None else []), "gemv24_matmul")


def gemv24_matmul(x2d: Tensor, packed: Bitmask24, bias: Tensor | None = None, launch: Launch | None = None) -> Tensor:
    """``x2d @ W^T (+ bias)`` for ``x2d [T, in]`` and a 2:4 ``W`` in the ``sparse-24-bitmask`` layout; ``[T, out]`` in x's dtype.

    Made for T in 1..16 (one token on CUDA cores, 2 to 16 on the tensor cores in one tile); more tokens
    run as tiles of 16, each decoding the weight again.
    """
    rows, cols = packed.shape
    tokens = x2d.shape[0]
    launch = launch or default_launch(tokens, rows, cols)
    if tokens > 1 and (launch.block_rows < 16 or launch.block_bytes < 16):
        raise ValueError(f"{tokens} tokens run on the tensor cores: the launch needs block_rows >= 16 and block_bytes >= 16, got {launch}")
    _check(x2d, packed, bias)
    if tokens == 0:
        return x2d.new_empty(0, rows)
    x2d = x2d.contiguous()
    if x2d.data_ptr() % 8:  # the one-token kernel reads x as 8-byte words
        x2d = x2d.clone(memory_format=torch.contiguous_format)
    n_bytes = cols // 8
    bytes_per_split = -(-n_bytes // launch.splits)
    splits = -(-n_bytes // bytes_per_split)
    out = split_output(x2d, rows, splits)
    stride_split = out.stride(0) if splits > 1 else 0
    fused_bias = bias is not None and splits == 1
    steps = triton.cdiv(bytes_per_split, launch.block_bytes)
    dtype = tl.float16 if x2d.dtype == torch.float16 else tl.bfloat16
    values_words = packed.values.view(torch.int64)  # [rows, cols / 8]: the four kept values of each mask byte
    bias_arg = bias if fused_bias else x2d
    if tokens == 1:
        grid = (triton.cdiv(rows, launch.block_rows), splits)
        _one_token_kernel[grid](
            x2d.view(torch.int64), values_words, packed.bitmask, bias_arg, out, rows, n_bytes, bytes_per_split, stride_split,
            HAS_BIAS=fused_bias, DTYPE=dtype, BLOCK_ROWS=launch.block_rows, BLOCK_BYTES=launch.block_bytes, STEPS=steps,
            num_warps=launch.warps,
        )
    else:
        grid = (triton.cdiv(rows, launch.block_rows), triton.cdiv(tokens, _TOKEN_TILE), splits)
        _tokens_kernel[grid](
            x2d, values_words, packed.bitmask, bias_arg, out, tokens, rows, cols, n_bytes, bytes_per_split, x2d.stride(0), rows, stride_split,
            HAS_BIAS=fused_bias, DTYPE=dtype, BLOCK_ROWS=launch.block_rows, BLOCK_TOKENS=_TOKEN_TILE, BLOCK_BYTES=launch.block_bytes, STEPS=steps,
            num_warps=launch.warps,
        )
    return summed(out, bias, x2d.dtype)


def _gemv24_op_product(x2d: Tensor, values: Tensor, bitmask: Tensor, bias: Tensor | None, launch: list[int] | None) -> Tensor:
    """``gemv24_matmul`` with plain arguments (``launch``: block_rows, block_bytes, warps, splits; None: the default)."""
    packed = Bitmask24((bitmask.shape[0], 8 * bitmask.shape[1]), values, bitmask)
    return gemv24_matmul(x2d, packed, bias, None if launch is None else Launch(*launch))


gemv24_matmul_op = row_product_op("gemv24_matmul", _gemv24_op_product)


class Gemv24Linear(nn.Module):
    """A drop-in for a pruned 2:4 ``nn.Linear`` that keeps only the ``sparse-24-bitmask`` layout and multiplies with
    ``gemv24_matmul``; ``max_tokens`` (default 16) is the most tokens a call may bring (None: any, as tiles of 16)."""

    def __init__(self, packed: Bitmask24, bias: Tensor | None = None, max_tokens: int | None = MAX_DECODE_TOKENS,
                 launch: Launch | None = None) -> None:
        super().__init__()
        problem = layout_problem(packed)
        if problem is not None:
            raise ValueError(problem)
        self.out_features, self.in_features = packed.shape
        self.max_tokens, self.launch = max_tokens, launch
        self.register_buffer("values", packed.values)
        self.register_buffer("bitmask", packed.bitmask)
        self.register_buffer("bias", None if bias is None else bias.detach().to(packed.values.dtype).clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, max_tokens: int | None = MAX_DECODE_TOKENS, launch: Launch | None = None) -> Gemv24Linear:
        """Pack ``linear``'s 2:4 weight once with ``sparse_layout.pack_24``, on its device; no dense copy is kept.

        Raises ValueError if the weight is not 2:4 or its shape or dtype is not supported (``layout_problem``)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Gemv24Linear.from_linear takes an nn.Linear, got {type(linear).__name__}")
        if linear.in_features % 8:
            raise ValueError(f"gemv24 reads whole mask bytes: in_features must be a multiple of 8, got {linear.in_features}")
        return cls(pack_24(linear.weight.detach()), linear.bias, max_tokens, launch)

    @classmethod
    def any_tokens(cls, linear: nn.Linear) -> Gemv24Linear:
        """``from_linear`` without a token limit: every token count through the Triton kernel (the ``gemv24`` path)."""
        return cls.from_linear(linear, max_tokens=None)

    def packed(self) -> Bitmask24:
        """The weight in the ``sparse-24-bitmask`` layout (the module's own tensors, not copies)."""
        return Bitmask24((self.out_features, self.in_features), self.values, self.bitmask)

    def weight_bytes(self) -> int:
        """Bytes held: values, bitmask and bias."""
        return sum(t.numel() * t.element_size() for t in (self.values, self.bitmask, self.bias) if t is not None)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Gemv24Linear expects inputs [..., {self.in_features}], got {tuple(x.shape)}")
        rows = x.reshape(-1, self.in_features)
        if self.max_tokens is not None and rows.shape[0] > self.max_tokens:
            raise ValueError(f"Gemv24Linear takes at most {self.max_tokens} tokens a call (decode), got {rows.shape[0]}; "
                             "route more through another kernel (the cusparselt_gemv24 path does) or build it with max_tokens=None")
        if torch.compiler.is_compiling():
            launch = None if self.launch is None else list(astuple(self.launch))
            y = torch.ops.sparsebench.gemv24_matmul.default(rows, self.values, self.bitmask, self.bias, launch)
        else:
            y = gemv24_matmul(rows, self.packed(), self.bias, self.launch)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        limit = "any" if self.max_tokens is None else self.max_tokens
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, 2:4 bitmask, tokens={limit}"
