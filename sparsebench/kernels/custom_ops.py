"""The Triton sparse products as ``torch.library`` custom operators, for ``torch.compile``.

A product's Python launch logic (shape checks on data pointers, a ``Launch`` dataclass, the grid) cannot be
traced with fake tensors, so for the compiler each product is one custom operator (``torch.library.custom_op``,
PyTorch's documented way to make a function opaque to ``torch.compile``): plain tensor and integer arguments,
and a fake implementation that gives only the output's shape and dtype. The modules call the operator only
while ``torch.compiler.is_compiling()``; eagerly they call the plain function, because the operator's dispatch
adds host time to every call (about 10 us measured on this project's CPU; see ``semi_sparse``), which would
change what the eager modes measure.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def row_product_op(name: str, product: Callable[..., Tensor]) -> torch.library.CustomOpDef:
    """``product(x2d, values, bitmask, ...)`` as the custom operator ``sparsebench::<name>``.

    ``product`` returns ``x2d @ W^T``: ``[tokens, rows]`` in x's dtype, ``rows`` the first dimension of
    ``bitmask`` (the weight's mask, one row of bytes per output); that is the fake implementation.
    """
    op = torch.library.custom_op(f"sparsebench::{name}", product, mutates_args=())
    op.register_fake(_row_product_shape)
    return op


def _row_product_shape(x2d: Tensor, values: Tensor, bitmask: Tensor, *rest) -> Tensor:
    return x2d.new_empty(x2d.shape[0], bitmask.shape[0])
