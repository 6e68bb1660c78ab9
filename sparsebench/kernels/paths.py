"""The sparse execution paths a pruned model can be measured on, and swapping them into its pruned linears.

A path turns one pruned ``nn.Linear`` into a module computing the same product from a compact weight:

- ``cusparselt``: 2:4 through cuSPARSELt called directly (``sparsebench.kernels.semi_sparse``);
- ``semi_structured``: 2:4 through PyTorch's tensor subclass ``torch.sparse.to_sparse_semi_structured`` under an
  ``nn.Linear`` (cuSPARSELt too, but with the default algorithm id and the subclass's host work on every call);
- ``bitmask``: unstructured sparsity in the ``sparse-bitmask`` layout: at one token the walking CUDA kernel from 55 %
  sparsity, else Triton kernels; above 64 tokens the weight unpacked for the call and the dense product
  (``sparsebench.kernels.bitmask_linear``, ``bitmask_walk``, ``bitmask_unpack``);
- ``cusparselt_gemv24``: 2:4, both cuSPARSELt's packed weight and the ``sparse-24-bitmask`` layout held, the
  kernel picked by token count as serving engines pick one by batch size (``TokenCountLinear``);
- ``gemv24``: 2:4, the ``sparse-24-bitmask`` Triton kernel (``sparsebench.kernels.gemv24``) at every token count;
- ``bitmask_kept``: ``bitmask`` with the kept-weights CUDA kernel at one token at any density (``bitmask_kept``, the
  default before the walking kernel): a comparison, measured only where named (``eval.efficiency.paths``).

``paths_for(pattern)`` gives a pattern's paths measured by default; ``paths_for(pattern, names)`` those named.

``swapped(model, linears, convert)`` replaces the modules and parks the dense linears on the CPU, so the GPU holds
only what the path stores, then puts everything back.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


# cusparselt_gemv24: calls of at most this many tokens go through gemv24, more through cuSPARSELt. Measured on an H100
# (benchmarks/bench_gemv24.py, docs/efficiency.md): graphed, gemv24 is 1.34-1.88x of cuSPARSELt at 1 token and
# 0.27-0.68x at 2-16 tokens (its tensor-core loop), so only one token goes to it.
GEMV24_MAX_TOKENS = 1


@dataclass(frozen=True)
class SparsePath:
    name: str
    description: str
    patterns: tuple[str, ...]  # "2:4" and/or "unstructured"
    module: str  # where its converter lives (imported when the path is used)
    converter: str  # module attribute: a function nn.Linear -> nn.Module
    by_default: bool = True  # measured unless eval.efficiency.paths names others


PATHS = {
    path.name: path
    for path in (
        SparsePath("cusparselt", "cuSPARSELt called directly: torch._cslt_compress once, torch._cslt_sparse_mm with the algorithm id "
                   "cuSPARSELt's search picked, per (shape, token count, operand layout), then a tiled Triton transpose into [tokens, out]; "
                   "the MLP's input projections hand [out, tokens] on as it lies, read row-major by the output projection", ("2:4",), "sparsebench.kernels.semi_sparse", "SemiSparseLinear.from_linear"),
        SparsePath("semi_structured", "torch.sparse.to_sparse_semi_structured weight under nn.Linear (tensor subclass, default algorithm id)",
                   ("2:4",), "sparsebench.kernels.paths", "semi_structured_linear"),
        SparsePath("bitmask", "kernels on the sparse-bitmask layout (bitmask + packed non-zeros): one token from 55 % sparsity the walking "
                   "CUDA kernel, else Triton; above 64 tokens the weight unpacked for the call and the dense product", ("unstructured",),
                   "sparsebench.kernels.bitmask_linear", "BitmaskLinear.from_linear"),
        SparsePath("cusparselt_gemv24", f"2:4, both forms held: calls of <= {GEMV24_MAX_TOKENS} token(s) through the Triton kernel on the sparse-24-bitmask "
                   f"layout (gemv24), more through cuSPARSELt called directly; weights in memory count both (about 0.56 + 0.58 of dense)",
                   ("2:4",), "sparsebench.kernels.paths", "TokenCountLinear.from_linear"),
        SparsePath("gemv24", "2:4, the Triton kernel on the sparse-24-bitmask layout at every token count (made for 1-16; more tokens "
                   "run as tiles of 16, each decoding the weight again: slow prefill)", ("2:4",), "sparsebench.kernels.gemv24",
                   "Gemv24Linear.any_tokens"),
        SparsePath("bitmask_kept", "the bitmask path with one token through the kept-weights CUDA kernel (a column list in shared "
                   "memory, then the products) at any density: the default before the walking kernel, measured only where named",
                   ("unstructured",), "sparsebench.kernels.bitmask_linear", "BitmaskLinear.kept_weights", by_default=False),
    )
}


def paths_for(pattern_name: str, names: tuple[str, ...] | list[str] | None = None) -> list[SparsePath]:
    """The paths for a sparsity pattern (``"2:4"``, ``"unstructured"``, or another N:M name: none): those measured by
    default, or, given ``names``, those of them named (paths measured only where named included)."""
    if names is None:
        return [path for path in PATHS.values() if pattern_name in path.patterns and path.by_default]
    return [path for path in PATHS.values() if pattern_name in path.patterns and path.name in names]


def converter(path: SparsePath):
    """The function converting a linear for ``path``; ImportError names the missing module."""
    target = importlib.import_module(path.module)
    for part in path.converter.split("."):
        target = getattr(target, part)
    return target


class TokenCountLinear(nn.Module):
    """A 2:4 linear holding both ``SemiSparseLinear`` (cuSPARSELt) and ``Gemv24Linear`` (the sparse-24-bitmask kernel):
    a call of at most ``GEMV24_MAX_TOKENS`` tokens goes to gemv24, a longer one to cuSPARSELt."""

    def __init__(self, decode: nn.Module, prefill: nn.Module) -> None:
        super().__init__()
        self.decode, self.prefill = decode, prefill
        self.in_features, self.out_features = prefill.in_features, prefill.out_features

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> TokenCountLinear:
        """Both packed forms of ``linear``'s 2:4 weight; raises ValueError naming why either cannot be built."""
        from sparsebench.kernels.gemv24 import Gemv24Linear
        from sparsebench.kernels.semi_sparse import SemiSparseLinear

        return cls(Gemv24Linear.from_linear(linear, max_tokens=GEMV24_MAX_TOKENS), SemiSparseLinear.from_linear(linear))

    def hand_on_features_major(self) -> None:
        """The cuSPARSELt form's output layout (``SemiSparseLinear.hand_on_features_major``); one token stays token-major."""
        self.prefill.hand_on_features_major()

    def weight_bytes(self) -> int:
        """Both forms' bytes (values, bitmask, cuSPARSELt's packed weight and each one's bias copy)."""
        return self.decode.weight_bytes() + self.prefill.weight_bytes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.numel() // self.in_features
        return self.decode(x) if tokens <= GEMV24_MAX_TOKENS else self.prefill(x)


def semi_structured_linear(linear: nn.Linear) -> nn.Linear:
    """A new ``nn.Linear`` whose weight is ``to_sparse_semi_structured(linear.weight)`` (the bias shared)."""
    from torch.sparse import to_sparse_semi_structured

    replacement = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
    replacement.weight = nn.Parameter(to_sparse_semi_structured(linear.weight.detach()), requires_grad=False)
    if linear.bias is not None:
        replacement.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return replacement


def weight_bytes_in_memory(model: nn.Module) -> int:
    """Bytes of the model's weights as held: a module with ``weight_bytes()`` counts itself, others their own parameters.

    A semi-structured parameter counts its packed values and metadata; buffers of other modules (rotary tables) are left out.
    """
    total = 0
    inside_counted: set[int] = set()
    seen_parameters: set[int] = set()  # tied weights (embeddings and head) count once
    for module in model.modules():  # a parent comes before its children
        if id(module) in inside_counted:
            continue
        if hasattr(module, "weight_bytes"):
            total += module.weight_bytes()
            inside_counted.update(id(sub) for sub in module.modules())
            continue
        for parameter in module.parameters(recurse=False):
            if id(parameter) not in seen_parameters:
                seen_parameters.add(id(parameter))
                total += _stored_bytes(parameter.data)
    return total


def _stored_bytes(data: torch.Tensor) -> int:
    parts = [getattr(data, name, None) for name in ("packed", "meta", "packed_t", "meta_t")] if type(data) is not torch.Tensor else []
    parts = [part for part in parts if isinstance(part, torch.Tensor)]
    return sum(p.numel() * p.element_size() for p in parts) if parts else data.numel() * data.element_size()


@contextmanager
def swapped(model: nn.Module, linears: list[nn.Module], convert, features_major: tuple[nn.Module, ...] = ()):
    """Replace each of ``linears`` in ``model`` by ``convert(linear)``; the originals wait on the CPU and come back after.

    ``features_major``: those of ``linears`` whose output reaches another of them only through elementwise operations (the
    MLP's input projections, ``FamilyAdapter.mlp_input_linears``); a replacement that can (``hand_on_features_major``,
    the cuSPARSELt paths) hands their outputs on in its product's own ``[out, tokens]`` layout, saving a transpose each.
    """
    parents = {id(child): (parent, name) for parent in model.modules() for name, child in parent.named_children()}
    hand_on = {id(linear) for linear in features_major}
    originals = []
    try:
        for linear in linears:
            parent, name = parents[id(linear)]
            device = linear.weight.device
            replacement = convert(linear)
            if id(linear) in hand_on and hasattr(replacement, "hand_on_features_major"):
                replacement.hand_on_features_major()
            setattr(parent, name, replacement)
            originals.append((parent, name, linear, device))
            linear.to("cpu")
        yield
    finally:
        for parent, name, linear, device in reversed(originals):
            setattr(parent, name, linear.to(device))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
