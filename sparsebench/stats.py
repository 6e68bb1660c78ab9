"""Calibration statistics of a linear layer's inputs, accumulated over all calibration tokens.

One ``LayerStats`` serves every linear that reads the same input (q/k/v, gate/up), so the
statistics are computed once per input, not once per layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

INPUT_SQ_NORMS = "input_sq_norms"  # sum_t x_tj^2 per input feature j (Wanda, RIA)
HESSIAN = "hessian"  # sum_t x_t x_t^T (SparseGPT); its diagonal is INPUT_SQ_NORMS
LAST_TOKEN_INPUTS = "last_token_inputs"  # not a sum: the input at the last token of each sequence, [sequences, features] (TRIM)
INPUT_SUMS = "input_sums"  # sum_t x_tj per input feature j (DSnoT's mean input)
SEQUENCE_VARIANCES = "sequence_variances"  # sum over sequences of each sequence's variance of x_j over its tokens (DSnoT)
KNOWN_STATISTICS = (INPUT_SQ_NORMS, HESSIAN, LAST_TOKEN_INPUTS, INPUT_SUMS, SEQUENCE_VARIANCES)


@dataclass
class LayerStats:
    """Sums over calibration tokens of one input; ``num_tokens`` counts the tokens summed, ``num_sequences`` the sequences."""

    num_tokens: int = 0
    num_sequences: int = 0
    sums: dict[str, Tensor] = field(default_factory=dict)

    @property
    def input_sq_norms(self) -> Tensor:
        if INPUT_SQ_NORMS in self.sums:
            return self.sums[INPUT_SQ_NORMS]
        if HESSIAN in self.sums:
            return torch.diagonal(self.sums[HESSIAN])
        raise KeyError("these statistics hold neither input norms nor a Hessian")

    @property
    def hessian(self) -> Tensor:
        return self.sums[HESSIAN]

    @property
    def last_token_inputs(self) -> Tensor:
        return self.sums[LAST_TOKEN_INPUTS]

    @property
    def input_sums(self) -> Tensor:
        return self.sums[INPUT_SUMS]

    @property
    def sequence_variances(self) -> Tensor:
        return self.sums[SEQUENCE_VARIANCES]


def symmetric_gram_tiles(features: int) -> int:
    """Tiles per side for ``add_symmetric_gram``: 4 from 2,048 features up (10 of 16 tile products,
    62.5 % of the arithmetic of the full product), else 1 (the full product: small layers gain nothing)."""
    return 4 if features >= 2048 else 1


def add_symmetric_gram(total: Tensor, inputs: Tensor, tiles: int, product: Callable[[Tensor, Tensor], Tensor]) -> None:
    """``total += inputs^T inputs`` for a symmetric ``total`` [features, features], computing only the tiles on and above the diagonal.

    ``product(a, b)`` is the float32 matrix product ``a @ b``. The features are cut into ``tiles``
    ranges; each tile row's products from its diagonal tile rightwards are added, and the tiles
    below the diagonal are then copied, transposed, from those above it, so ``total`` stays
    symmetric and equals the full product's sum up to summation order.
    """
    features = inputs.shape[1]
    if tiles <= 1:
        total += product(inputs.T, inputs)
        return
    width = -(-features // tiles)
    bounds = [(start, min(start + width, features)) for start in range(0, features, width)]
    for start, stop in bounds:
        total[start:stop, start:] += product(inputs[:, start:stop].T, inputs[:, start:])
    for start, stop in bounds[1:]:
        total[start:stop, :start] = total[:start, start:stop].T


def _half_product_on_gpu(inputs: Tensor) -> Callable[[Tensor, Tensor], Tensor] | None:
    """A float32 product of fp16/bf16 operands on tensor cores, or None where unsupported.

    The products of half-precision values are exact in the float32 accumulator, so this equals
    the float32 product up to summation order, without an upcast copy of the activations.
    """
    global _HALF_GRAM_SUPPORTED
    if not (inputs.is_cuda and inputs.dtype in (torch.float16, torch.bfloat16)) or _HALF_GRAM_SUPPORTED is False:
        return None
    if _HALF_GRAM_SUPPORTED is None:
        try:
            torch.mm(inputs[:1, :1].T, inputs[:1, :1], out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):
            _HALF_GRAM_SUPPORTED = False  # older PyTorch: the TF32 path below computes the same sums
            return None
        _HALF_GRAM_SUPPORTED = True
    return lambda a, b: torch.mm(a, b, out_dtype=torch.float32)


_HALF_GRAM_SUPPORTED: bool | None = None


@contextmanager
def _tensor_cores_for(inputs: Tensor):
    """Let float32 products of half-precision activations run on tensor cores (TF32).

    TF32 keeps 10 mantissa bits, as many as float16 has (bfloat16 has 7), so products of
    upcast fp16/bf16 values are exact and accumulate in float32: only the summation order
    changes. For float32 activations the flag is left alone.
    """
    matmul = torch.backends.cuda.matmul
    if inputs.is_cuda and inputs.dtype in (torch.float16, torch.bfloat16) and not matmul.allow_tf32:
        matmul.allow_tf32 = True
        try:
            yield
        finally:
            matmul.allow_tf32 = False
    else:
        yield


class StatsAccumulator:
    """Adds batches of layer inputs ``[..., features]`` to running float32 sums.

    ``LAST_TOKEN_INPUTS`` instead keeps ``inputs[:, -1]`` of each batch ``[sequences, tokens, features]``;
    ``SEQUENCE_VARIANCES`` adds each sequence's (population) variance over its tokens.
    """

    def __init__(self, needs: frozenset[str], seqlen: int | None = None):
        unknown = set(needs) - set(KNOWN_STATISTICS)
        if unknown:
            raise ValueError(f"unknown statistics {sorted(unknown)}; known: {KNOWN_STATISTICS}")
        self.needs = needs
        self.seqlen = seqlen  # tokens per sequence, for inputs that arrive flattened to [tokens, features] (OPT's MLP)
        self.stats = LayerStats()

    def add(self, inputs: Tensor) -> None:
        if inputs.dim() == 2 and self.seqlen is not None:
            inputs = inputs.reshape(-1, self.seqlen, inputs.shape[-1])
        flat = inputs.reshape(-1, inputs.shape[-1])
        sums = self.stats.sums
        if HESSIAN in self.needs:
            if HESSIAN not in sums:
                sums[HESSIAN] = torch.zeros(flat.shape[1], flat.shape[1], device=flat.device)
            tiles = symmetric_gram_tiles(flat.shape[1])
            half_product = _half_product_on_gpu(flat)
            if half_product is not None:
                add_symmetric_gram(sums[HESSIAN], flat, tiles, half_product)
            else:
                with _tensor_cores_for(flat):
                    add_symmetric_gram(sums[HESSIAN], flat.float(), tiles, torch.mm)
        elif INPUT_SQ_NORMS in self.needs:
            if INPUT_SQ_NORMS not in sums:
                sums[INPUT_SQ_NORMS] = torch.zeros(flat.shape[1], device=flat.device)
            sums[INPUT_SQ_NORMS].add_(torch.linalg.vector_norm(flat, dim=0, dtype=torch.float32).square())
        if INPUT_SUMS in self.needs:
            if INPUT_SUMS not in sums:
                sums[INPUT_SUMS] = torch.zeros(flat.shape[1], device=flat.device)
            sums[INPUT_SUMS].add_(flat.sum(dim=0, dtype=torch.float32))
        if SEQUENCE_VARIANCES in self.needs:
            sequences = inputs.reshape(-1, *inputs.shape[-2:])
            if SEQUENCE_VARIANCES not in sums:
                sums[SEQUENCE_VARIANCES] = torch.zeros(flat.shape[1], device=flat.device)
            for sequence in sequences:  # one at a time: no float32 copy of the whole batch
                sums[SEQUENCE_VARIANCES].add_(torch.var(sequence.float(), dim=0, correction=0))
        if LAST_TOKEN_INPUTS in self.needs:
            last = inputs.reshape(-1, *inputs.shape[-2:])[:, -1].to(torch.float32, copy=True)  # a copy: no view of the batch
            sums[LAST_TOKEN_INPUTS] = torch.cat([sums[LAST_TOKEN_INPUTS], last]) if LAST_TOKEN_INPUTS in sums else last
        self.stats.num_tokens += flat.shape[0]
        self.stats.num_sequences += inputs.reshape(-1, *inputs.shape[-2:]).shape[0]
