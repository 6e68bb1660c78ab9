"""A module's product under ``torch.compile`` against its eager result, for the kernels' interpreter tests."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch._dynamo.backends.debugging import aot_eager


def compiled_against_eager(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eager: torch.Tensor) -> dict:
    """``module`` under torch.compile (fullgraph, static shapes, aot_eager: Dynamo, the custom operators' fake
    implementations, AOTAutograd) around a SiLU, so the graph holds more than the product.

    Returns whether the result equals ``silu(eager)`` bit for bit, the number of graphs, the targets of the
    graphs' function calls (a custom operator appears as ``sparsebench.<name>.default``) and the output shape.
    """
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(lambda inputs: F.silu(module(inputs)), fullgraph=True, dynamic=False, backend=backend)
    y = compiled(x)
    ops = [str(node.target) for gm in graphs for node in gm.graph.nodes if node.op == "call_function"]
    return {"equal_to_eager": bool(torch.equal(y, F.silu(eager))), "graphs": len(graphs), "ops": ops, "out_shape": list(y.shape)}


class RecordingBackend:
    """A ``torch.compile`` backend that keeps every traced graph (``graphs``) and runs it as traced (no Inductor)."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs) -> Callable:
        self.graphs.append(gm)
        return gm.forward

    def calls(self, index: int = 0) -> list[torch.fx.Node]:
        """The function calls of graph ``index``."""
        return [node for node in self.graphs[index].graph.nodes if node.op == "call_function"]
