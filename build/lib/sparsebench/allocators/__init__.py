"""Sparsity allocators, one module each, registered by name.

An allocator decides how much of each layer (or each row) to prune so that the model as a whole
reaches the target sparsity. It is a pure function
``allocate(layers, sparsity, **params) -> {layer name: ratio}`` where a ratio is a float for the
whole layer or a tensor with one ratio per output row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

from sparsebench.errors import ConfigError
from sparsebench.registry import Registry


@dataclass(frozen=True)
class PrunableLayer:
    name: str  # "<block index>.<module path in the block>", e.g. "3.self_attn.q_proj"
    block: int
    rows: int
    cols: int

    @property
    def numel(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class AllocatorSpec:
    name: str
    allocate: Callable[..., dict[str, float | Tensor]]
    params: type
    supports_nm: bool = False  # an N:M pattern fixes every layer's ratio; only uniform honours it
    paper: str = ""

    def make_params(self, values: dict[str, Any], key: str = "allocator") -> dict[str, Any]:
        allowed = {f.name for f in dataclasses.fields(self.params)}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ConfigError(
                f"{key}.{unknown[0]}: not a key of allocator {self.name!r}; allowed: {', '.join(sorted(allowed)) or 'none'}"
            )
        return dataclasses.asdict(self.params(**values))


ALLOCATORS: Registry[AllocatorSpec] = Registry("allocator", __name__)


def register_allocator(name: str, params: type, supports_nm: bool = False, paper: str = ""):
    def decorate(fn):
        ALLOCATORS.add(name, AllocatorSpec(name, fn, params, supports_nm, paper))
        return fn

    return decorate
