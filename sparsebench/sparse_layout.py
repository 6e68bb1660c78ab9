"""The compact layouts of a pruned weight, one for disk and GPU alike.

Both are compressed-tensors 0.13's layouts, tensor for tensor, so a folder written with them can be
renamed into what that release (and vLLM <= 0.18.1 with it) reads:

- ``sparse-bitmask`` (any sparsity): ``values`` the non-zeros in row-major order, ``bitmask`` one bit
  per weight packed eight to a byte along each row, least significant bit first (numpy's
  ``packbits(..., bitorder="little")``), ``row_offsets`` the index in ``values`` of each row's first
  non-zero, ``shape`` ``[rows, cols]``;
- ``sparse-24-bitmask`` (2:4): ``values`` ``[rows, cols / 2]``, the kept two of every group of four
  (the two of largest magnitude, zeros among them where a group has fewer than two non-zeros), and
  ``bitmask`` as above for those kept positions.

Pure functions on tensors, on any device: the efficiency kernels pack on the GPU with the same code
that the export runs on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


@dataclass(frozen=True)
class Bitmask:
    """A weight in the ``sparse-bitmask`` layout."""

    shape: tuple[int, int]
    values: torch.Tensor  # [nnz], the weight's dtype
    bitmask: torch.Tensor  # uint8 [rows, ceil(cols / 8)]
    row_offsets: torch.Tensor  # int64 [rows]


@dataclass(frozen=True)
class Bitmask24:
    """A 2:4 weight in the ``sparse-24-bitmask`` layout."""

    shape: tuple[int, int]
    values: torch.Tensor  # [rows, cols / 2], the weight's dtype
    bitmask: torch.Tensor  # uint8 [rows, cols / 8]


def pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """Pack a boolean ``[rows, cols]`` mask into uint8 ``[rows, ceil(cols / 8)]``, least significant bit first."""
    rows, cols = keep.shape
    padded = torch.zeros(rows, -(-cols // 8) * 8, dtype=torch.uint8, device=keep.device)
    padded[:, :cols] = keep.to(torch.uint8)
    return (padded.view(rows, -1, 8) * _BIT_WEIGHTS.to(keep.device)).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(bitmask: torch.Tensor, cols: int) -> torch.Tensor:
    """The boolean ``[rows, cols]`` mask of ``pack_bits``."""
    bits = bitmask.unsqueeze(-1).bitwise_and(_BIT_WEIGHTS.to(bitmask.device)).ne(0)
    return bits.reshape(bitmask.shape[0], -1)[:, :cols]


def pack_bitmask(weight: torch.Tensor) -> Bitmask:
    """``weight`` (2-D) in the ``sparse-bitmask`` layout."""
    if weight.dim() != 2:
        raise ValueError(f"pack_bitmask takes a 2-D weight, got shape {tuple(weight.shape)}")
    keep = weight != 0
    row_counts = keep.sum(dim=1)
    return Bitmask(tuple(weight.shape), weight[keep], pack_bits(keep), torch.cumsum(row_counts, 0) - row_counts)


def unpack_bitmask(packed: Bitmask) -> torch.Tensor:
    """The dense weight of ``pack_bitmask``, bit for bit."""
    rows, cols = packed.shape
    keep = unpack_bits(packed.bitmask, cols)
    weight = torch.zeros(rows, cols, dtype=packed.values.dtype, device=packed.values.device)
    return weight.masked_scatter_(keep, packed.values)  # row-major, as weight[keep]; several times faster than weight[keep] = ...


def keep_24(weight: torch.Tensor) -> torch.Tensor:
    """The kept positions of a 2:4 weight: the two of largest magnitude in every group of four.

    Ties are broken towards the lower index (a stable sort), so a group with fewer than two non-zeros
    keeps its non-zeros, then its first zeros. compressed-tensors 0.13 breaks ties with ``topk``, which
    may keep other zeros: the packed tensors then differ there, the weights they decode to do not.
    """
    rows, cols = weight.shape
    if cols % 4:
        raise ValueError(f"a 2:4 weight needs a multiple of 4 columns, got {cols}")
    groups = weight.abs().reshape(rows, cols // 4, 4).float()
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :2]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
    return keep.reshape(rows, cols)


def is_2of4(weight: torch.Tensor) -> bool:
    """Whether a 2-D ``weight`` is 2:4 sparse: at most two non-zeros in every group of four consecutive inputs."""
    rows, cols = weight.shape
    return cols % 4 == 0 and int(weight.detach().reshape(rows, -1, 4).ne(0).sum(dim=-1).max()) <= 2


def pack_24(weight: torch.Tensor) -> Bitmask24:
    """A 2:4 ``weight`` in the ``sparse-24-bitmask`` layout; raises if a group has more than two non-zeros."""
    if weight.dim() != 2:
        raise ValueError(f"pack_24 takes a 2-D weight, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    keep = keep_24(weight)
    if bool(((weight != 0) & ~keep).any()):
        raise ValueError("the weight is not 2:4: some group of four columns has more than two non-zeros")
    return Bitmask24((rows, cols), weight[keep].reshape(rows, cols // 2), pack_bits(keep))


def unpack_24(packed: Bitmask24) -> torch.Tensor:
    """The dense weight of ``pack_24``, bit for bit."""
    rows, cols = packed.shape
    keep = unpack_bits(packed.bitmask, cols)
    weight = torch.zeros(rows, cols, dtype=packed.values.dtype, device=packed.values.device)
    return weight.masked_scatter_(keep, packed.values.reshape(-1))


BITMASK = "sparse-bitmask"
BITMASK_24 = "sparse-24-bitmask"
LAYOUTS = (BITMASK, BITMASK_24)


def pack(weight: torch.Tensor, layout: str) -> Bitmask | Bitmask24:
    """``weight`` in ``layout`` (``sparse-bitmask`` or ``sparse-24-bitmask``)."""
    if layout == BITMASK:
        return pack_bitmask(weight)
    if layout == BITMASK_24:
        return pack_24(weight)
    raise ValueError(f"unknown sparse layout {layout!r}: allowed values are {', '.join(LAYOUTS)}")


def unpack(packed: Bitmask | Bitmask24) -> torch.Tensor:
    """The dense weight of ``pack``, bit for bit."""
    return unpack_24(packed) if isinstance(packed, Bitmask24) else unpack_bitmask(packed)


def named_tensors(name: str, packed: Bitmask | Bitmask24) -> dict[str, torch.Tensor]:
    """The tensors of a packed weight under compressed-tensors 0.13's names for the linear ``name``.

    ``<name>.compressed`` (values), ``<name>.bitmask``, ``<name>.shape`` (int64; ``[[rows], [cols]]`` for
    2:4, ``[rows, cols]`` otherwise, as 0.13 stores them) and, for ``sparse-bitmask``, ``<name>.row_offsets``.
    """
    tensors = {f"{name}.compressed": packed.values, f"{name}.bitmask": packed.bitmask}
    if isinstance(packed, Bitmask24):
        tensors[f"{name}.shape"] = torch.tensor(packed.shape, dtype=torch.int64).reshape(-1, 1)
    else:
        tensors[f"{name}.shape"] = torch.tensor(packed.shape, dtype=torch.int64)
        tensors[f"{name}.row_offsets"] = packed.row_offsets
    return tensors


def from_named_tensors(name: str, tensors: dict[str, torch.Tensor], layout: str) -> Bitmask | Bitmask24:
    """The packed weight of the linear ``name`` from ``named_tensors``' entries of ``tensors`` (removed from it)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown sparse layout {layout!r}: allowed values are {', '.join(LAYOUTS)}")
    shape = tuple(int(size) for size in tensors.pop(f"{name}.shape").flatten().tolist())
    values, bitmask = tensors.pop(f"{name}.compressed"), tensors.pop(f"{name}.bitmask")
    if layout == BITMASK_24:
        return Bitmask24(shape, values, bitmask)
    return Bitmask(shape, values, bitmask, tensors.pop(f"{name}.row_offsets"))
