"""Linears that read the same input computed as one product, as serving engines compute them.

vLLM runs a decoder block's query, key and value projections as one linear (``QKVParallelLinear``) and the gated
MLP's gate and up projections as another (``MergedColumnParallelLinear``; ``vllm/model_executor/models/llama.py``, read
at vLLM commit e06c9ba2): one product of the concatenated weights instead of two or three, so fewer and larger kernels. HF's modules call each projection on its own. ``fused_inputs``
gives a model the fused products without changing its code: each group of linears that read one input (the
adapter's ``input_groups``: q/k/v, gate/up) becomes one ``nn.Linear`` of the concatenated weights (and biases),
owned by a ``SharedInputProduct``; each member's place in the model takes a ``FusedMember`` that returns its slice.

How a member finds its slice: the first member called with an input computes the whole product and keeps it with
that input; a member called with the same tensor object takes its slice; once every member has been served, both
references are dropped. A call with another input computes the product again, so the result is always the fused
product of the member's own input (the product is a pure function of it, and HF never changes a block's hidden
states in place between its projections). The slices are views (``split`` along the last dimension). Under
``torch.compile`` the bookkeeping is traced as attribute side effects and ends each forward as it began (no tensor
kept), so it adds no guard that changes between calls.

The fused linear is an ``nn.Linear``: the dense-stored side runs it as it is, and a sparse path converts it like
any pruned linear (``sparsebench.kernels.paths.swapped``); a 2:4 or unstructured pattern holds row by row, so the
concatenation keeps it. The original linears wait on the CPU while fused and come back after (``swapped``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from sparsebench.kernels.paths import swapped


class SharedInputProduct(nn.Module):
    """One product for several linears that read the same input: ``fused`` (any module ``[.., in] -> [.., sum(widths)]``)."""

    def __init__(self, fused: nn.Module, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.fused, self.widths = fused, tuple(widths)
        self._input: torch.Tensor | None = None
        self._outputs: tuple[torch.Tensor, ...] | None = None
        self._served = 0

    def slice_for(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if self._input is None or self._input is not x:
            self._input, self._outputs, self._served = x, self.fused(x).split(self.widths, dim=-1), 0
        out = self._outputs[index]
        self._served += 1
        if self._served == len(self.widths):  # every member has its slice: keep no tensor between forwards
            self._input, self._outputs, self._served = None, None, 0
        return out


class FusedMember(nn.Module):
    """A linear's place in the model while fused: its slice of ``shared``'s product."""

    def __init__(self, shared: SharedInputProduct, index: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.shared, self.index = shared, index
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared.slice_for(x, self.index)

    def extra_repr(self) -> str:
        return f"slice {self.index} of a fused product: in_features={self.in_features}, out_features={self.out_features}"


def fused_linear(linears: list[nn.Linear]) -> nn.Linear:
    """An ``nn.Linear`` whose weight is the row-wise concatenation of ``linears``' (and bias, zeros where a member has none)."""
    first = linears[0]
    if any(not isinstance(linear, nn.Linear) for linear in linears):
        raise TypeError(f"fused_linear takes nn.Linear modules, got {[type(linear).__name__ for linear in linears]}")
    if any(linear.in_features != first.in_features for linear in linears):
        raise ValueError(f"linears fused into one product must read the same input size, got {[linear.in_features for linear in linears]}")
    weight = first.weight
    has_bias = any(linear.bias is not None for linear in linears)
    fused = nn.Linear(first.in_features, sum(linear.out_features for linear in linears), bias=has_bias, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([linear.weight for linear in linears]))
        if has_bias:
            fused.bias.copy_(torch.cat([linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)
                                        for linear in linears]))
    fused.requires_grad_(False)
    return fused


@contextmanager
def fused_inputs(model: nn.Module, groups: list[tuple[nn.Linear, ...]]):
    """While inside, each group of ``groups`` with more than one linear runs as one fused product (see the module's
    docstring). Yields ``{id(original linear): the linear now computing it}``: the fused ``nn.Linear`` for a fused
    member, the linear itself otherwise. The members are replaced, parked and put back by ``paths.swapped``."""
    computing, members = {}, {}
    for group in groups:
        if len(group) < 2:
            computing.update({id(linear): linear for linear in group})
            continue
        fused = fused_linear(list(group))
        shared = SharedInputProduct(fused, tuple(linear.out_features for linear in group))
        for index, linear in enumerate(group):
            members[id(linear)] = FusedMember(shared, index, linear.in_features, linear.out_features)
            computing[id(linear)] = fused
    fused_members = [linear for group in groups if len(group) > 1 for linear in group]
    with swapped(model, fused_members, lambda linear: members[id(linear)]):
        yield computing
