"""Uniform allocation: every layer (and so every row, for per-row metrics) gets the target ratio."""

from dataclasses import dataclass

from sparsebench.allocators import Allocation, Allocator, PrunableLayer, register_allocator


@dataclass
class UniformParams:
    pass


def uniform(layers: list[PrunableLayer], sparsity: float) -> dict[str, float]:
    return {layer.name: sparsity for layer in layers}


@register_allocator
class Uniform(Allocator):
    name = "uniform"
    Params = UniformParams
    paper = "Wanda / SparseGPT default"
    supports_nm = True

    def plan(self, ctx) -> Allocation:
        return Allocation(uniform(ctx.layers, ctx.sparsity))
