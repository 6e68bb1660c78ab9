"""Uniform allocation: every layer (and so every row, for per-row metrics) gets the target ratio."""

from dataclasses import dataclass

from sparsebench.allocators import PrunableLayer, register_allocator


@dataclass
class UniformParams:
    pass


@register_allocator("uniform", UniformParams, supports_nm=True, paper="Wanda / SparseGPT default")
def uniform(layers: list[PrunableLayer], sparsity: float, block_summaries=None) -> dict[str, float]:
    return {layer.name: sparsity for layer in layers}
