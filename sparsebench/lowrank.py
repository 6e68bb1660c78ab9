"""Sparse-plus-low-rank linears: a weight W replaced by S + B A, kept as a sparse weight and two thin linears.

A decomposition metric (``hassle_free``) returns a ``Decomposition`` instead of a pruned weight;
the pruning walk then swaps the layer's ``nn.Linear`` for a ``SparsePlusLowRankLinear``:

    y = x S^T + b + (x A^T) B^T        S: [out, in] sparse,  A: [rank, in],  B: [out, rank]

It *is* an ``nn.Linear`` whose ``weight`` is S, so everything that finds linears by name (family
adapters, the sparsity count, perplexity, lm-eval) sees the sparse part as the layer's weight,
and the low-rank part runs in its ``forward``. The factors are the submodules ``low_rank_down``
(A) and ``low_rank_up`` (B), so ``state_dict`` holds ``<layer>.low_rank_down.weight`` and
``<layer>.low_rank_up.weight`` beside ``<layer>.weight``; ``attach_low_rank`` rebuilds the
structure in a fresh model before ``load_state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class Decomposition:
    """What a decomposition metric returns for one linear: W ~ sparse + low_rank_up @ low_rank_down."""

    sparse: Tensor  # S [out, in]
    low_rank_down: Tensor  # A [rank, in]
    low_rank_up: Tensor  # B [out, rank]
    info: dict = field(default_factory=dict)  # per-layer record for the result document

    @property
    def rank(self) -> int:
        return self.low_rank_down.shape[0]


class SparsePlusLowRankLinear(nn.Linear):
    """``nn.Linear`` with weight S plus a rank-r path ``low_rank_up(low_rank_down(x))``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.low_rank_down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.low_rank_up = nn.Linear(rank, out_features, bias=False, device=device, dtype=dtype)

    @property
    def rank(self) -> int:
        return self.low_rank_down.out_features

    def forward(self, inputs: Tensor) -> Tensor:
        return super().forward(inputs) + self.low_rank_up(self.low_rank_down(inputs))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> SparsePlusLowRankLinear:
        """A copy of ``linear`` (same weight, bias, device, dtype) with a zero rank-``rank`` part.

        Built outside inference mode, so that its parameters are ordinary tensors even when the
        pruning walk runs under ``torch.inference_mode``.
        """
        weight = linear.weight
        with torch.inference_mode(False), torch.no_grad():
            module = cls(linear.in_features, linear.out_features, rank, linear.bias is not None, device="meta", dtype=weight.dtype)
            module.to_empty(device=weight.device)
            module.weight.copy_(weight)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
            module.low_rank_down.weight.zero_()
            module.low_rank_up.weight.zero_()
        module.requires_grad_(weight.requires_grad)
        module.train(linear.training)
        return module


def replace_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def install_decomposition(root: nn.Module, name: str, decomposition: Decomposition) -> SparsePlusLowRankLinear:
    """Replace the linear ``root.<name>`` by S + B A from ``decomposition``; returns the new module."""
    linear = root.get_submodule(name)
    module = SparsePlusLowRankLinear.from_linear(linear, decomposition.rank)
    with torch.inference_mode(False), torch.no_grad():
        for parameter, value in (
            (module.weight, decomposition.sparse),
            (module.low_rank_down.weight, decomposition.low_rank_down),
            (module.low_rank_up.weight, decomposition.low_rank_up),
        ):
            parameter.copy_(value)
    replace_submodule(root, name, module)
    return module


def low_rank_ranks(model: nn.Module) -> dict[str, int]:
    """``{module path: rank}`` of every sparse-plus-low-rank linear in ``model``."""
    return {name: module.rank for name, module in model.named_modules() if isinstance(module, SparsePlusLowRankLinear)}


def attach_low_rank(model: nn.Module, ranks: dict[str, int]) -> None:
    """Give a fresh model the structure of a decomposed one (``low_rank_ranks`` of it), before ``load_state_dict``."""
    for name, rank in ranks.items():
        replace_submodule(model, name, SparsePlusLowRankLinear.from_linear(model.get_submodule(name), rank))


def summarize(per_layer: dict[str, dict], model_parameters: int, prunable_parameters: int) -> dict:
    """The result document's ``decomposition`` section from each layer's ``Decomposition.info``."""
    extra = sum(layer["extra_parameters"] for layer in per_layer.values())
    ranks = sorted({layer["rank"] for layer in per_layer.values()})

    def mean(key: str) -> float:
        return sum(layer[key] for layer in per_layer.values()) / len(per_layer)

    return {
        "rank": ranks[0] if len(ranks) == 1 else ranks,
        "extra_parameters": extra,
        "extra_parameters_share_of_model": extra / model_parameters,
        "extra_parameters_share_of_prunable": extra / prunable_parameters,
        "mean_relative_error_sparse_only": mean("relative_error_sparse_only"),
        "mean_relative_error": mean("relative_error"),
        "per_layer": per_layer,
    }
