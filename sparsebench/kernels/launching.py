"""What the Triton kernels' Python launchers share: where they may run, their launch checks, the float32
partial sums of a product split along its input dimension, and the ``sparse-bitmask`` kernels' index chunk.

Used by ``bitmask_linear`` (the ``sparse-bitmask`` kernels) and ``gemv24`` (the ``sparse-24-bitmask`` kernels).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

# mask bytes (1,024 columns) per entry of a sparse-bitmask weight's chunk_offsets, the index every bitmask kernel starts
# from: bitmask_linear's kernels (a split starts on one), bitmask_kept's chunks and bitmask_unpack's programs
INDEX_BYTES = 128


def interpreted() -> bool:
    """Whether Triton's interpreter runs the kernels (``TRITON_INTERPRET=1``, set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_powers_of_two(launch, names: tuple[str, ...]) -> None:
    """Raise ValueError naming the first of ``launch``'s fields ``names`` that is not a power of two >= 1."""
    for name in names:
        value = getattr(launch, name)
        if value < 1 or value & (value - 1):
            raise ValueError(f"{type(launch).__name__}.{name} must be a power of two >= 1, got {value}")


def check_one_device(tensors: list[Tensor], op: str) -> None:
    """All ``tensors`` on one device, a CUDA one unless the interpreter runs the kernels; errors name ``op``."""
    devices = {tensor.device for tensor in tensors}
    if len(devices) != 1:
        raise ValueError(f"{op} needs all tensors on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type != "cuda" and not interpreted():
        raise RuntimeError(f"{op} runs on CUDA devices (or in Triton's interpreter, TRITON_INTERPRET=1), got device {device}")


def split_output(x2d: Tensor, rows: int, splits: int) -> Tensor:
    """The kernels' output: ``[tokens, rows]`` in x's dtype for one split, else ``[splits, tokens, rows]`` float32 partial sums."""
    if splits == 1:
        return torch.empty(x2d.shape[0], rows, dtype=x2d.dtype, device=x2d.device)
    return torch.empty(splits, x2d.shape[0], rows, dtype=torch.float32, device=x2d.device)


def summed(out: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``split_output``'s tensor as the product: the partial sums added (and the bias, which one split fuses) in float32."""
    if out.dim() == 2:
        return out
    total = out.sum(dim=0)
    if bias is not None:
        total += bias
    return total.to(dtype)
