"""The prunable linears of a model as the allocators and the pruning walk see them: name, block and shape."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrunableLayer:
    name: str  # "<block index>.<module path in the block>", e.g. "3.self_attn.q_proj"
    block: int
    rows: int
    cols: int

    @property
    def numel(self) -> int:
        return self.rows * self.cols


def prunable_layers(model, adapter) -> list[PrunableLayer]:
    """Every linear the family adapter prunes, block by block in the adapter's order."""
    layers = []
    for index, block in enumerate(adapter.get_blocks(model)):
        for name, linear in adapter.get_linears(block).items():
            rows, cols = linear.weight.shape
            layers.append(PrunableLayer(f"{index}.{name}", index, rows, cols))
    return layers
