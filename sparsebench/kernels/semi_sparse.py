"""2:4 linear layers through cuSPARSELt, called directly.

NVIDIA's 2:4 structured sparsity (Mishra et al., "Accelerating Sparse Deep Neural Networks", 2021):
the sparse tensor cores of Ampere and Hopper skip the two zeros of every group of four weights. PyTorch
reaches them through cuSPARSELt with three private operators, the same ones its
``SparseSemiStructuredTensorCUSPARSELT`` and torchao's semi-sparse linear call:

- ``torch._cslt_compress(W)`` packs a 2:4 weight ``[out, in]`` once (the kept half and its metadata);
- ``torch._cslt_sparse_mm_search(Wc, x.T, ...)`` times cuSPARSELt's algorithms for one product shape and
  returns the fastest one's id;
- ``torch._cslt_sparse_mm(Wc, x.T, alg_id=...)`` computes ``W @ x.T``, transposed back to ``x @ W.T``.

The output is handed on as a contiguous ``[tokens, out]`` tensor, as ``nn.Linear``'s is. Handing on the
transposed view of ``W @ x.T`` instead (what this module did first) made a whole LLaMA block 2.9x slower at 2,048
tokens on an H100 while its linears were 1.4x faster (docs/data/efficiency_gpu, the H100 run of 2026-12-05): the
attention's query, key and value then have a strided last dimension, which FlashAttention refuses, so
``scaled_dot_product_attention`` fell back to a slower kernel. PyTorch's own copy of the transposed view
(``.t().contiguous()``) then cost 63 us for a 4096-wide product at 2,048 tokens on that H100, about half the
product's time, so eagerly the copy is a tiled Triton transpose (``sparsebench.kernels.transpose``). cuSPARSELt
can write the transposed product itself (``transpose_result=True``), but its search for that form failed on an
H100 (torch 2.11.0+cu130, cuSPARSELt 0.8.0) at 16 tokens with "internal error" in ``cusparseLtMatmulSearch``,
then an illegal instruction that poisons the CUDA context, so that form is not used
(``benchmarks/probe_cslt_transpose.py`` probes it per shape and token count).

``SemiSparseLinear`` keeps only the packed weight (no dense copy, no tensor subclass) and remembers the
algorithm id for each (weight shape, dtype, token count), searched once on the first call of that shape
outside a CUDA graph capture. The per-call host work left (cuSPARSELt's plan for the call) is what a CUDA
graph hides.

Seen on an H100 (torch 2.11.0+cu130, cuSPARSELt 0.8.0): ``_cslt_sparse_mm_search`` with 8 dense columns and
``transpose_result=True`` failed inside ``cusparseLtMatmulSearch`` ("internal error", then an illegal
instruction that poisons the CUDA context). So the token count is padded to a multiple of 16 and the
product is the plain ``W @ x.T`` form searched in /work/shared/docs/sparse-kernels.md (16 to 8,192 tokens);
a bias is added afterwards.

For ``torch.compile`` the product is the custom operator ``sparsebench::cusparselt_mm`` (``torch.library``,
opaque to the compiler, with a fake implementation that gives its shape). It returns cuSPARSELt's own
``W @ rows.T`` (``[out, tokens]``), and the module hands on its transposed view: no copy of its own, since the
operations that Inductor fuses around it (the residual add, RMSNorm, rotary, SiLU times the up projection) read
the view in place and write their outputs in the layout the next operation needs. The padding and bias around it
stay ordinary operators. The algorithm id is an argument of the operator, looked up before it: a search cannot
run while the compiler traces, so tracing a shape with no searched id raises (run it eagerly first), as
capturing one does. ``out_features`` is an argument because the packed buffer does not carry the weight's shape.
The rows are made contiguous before the operator, and Inductor passes a custom operator its inputs with the
strides traced (torch 2.13's ``custom_op_default_layout_constraint`` is ``needs_exact_strides``), so the product
sees the operand layout that its algorithm id was searched for. Eagerly the module calls the plain functions
directly: the operator's dispatch costs about 10 us of host time a call (measured on this project's CPU), which
would change what the eager modes measure.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.kernels.cusparselt_plans import Plan, search_plan
from sparsebench.kernels.transpose import transposed_copy  # Triton: the CUDA builds of torch bring it
from sparsebench.sparse_layout import is_2of4

log = logging.getLogger(__name__)

DTYPES = (torch.float16, torch.bfloat16)
WEIGHT_MULTIPLE = 16  # cuSPARSELt's smallest tile for a 16-bit sparse operand (torch.sparse's _DTYPE_SHAPE_CONSTRAINTS)
TOKEN_MULTIPLE = 16  # the dense operand's rows are padded to this multiple (torch.sparse pads to 8; see above)

# (out_features, in_features, dtype, padded token count) -> how cuSPARSELt runs it; shared by every linear of that shape
_PLANS: dict[tuple, Plan] = {}


def cusparselt_transposed_product(packed: torch.Tensor, rows: torch.Tensor, alg_id: int, split_k: int, split_k_mode: int,
                                  out_features: int) -> torch.Tensor:
    """``W @ rows.T`` (``[out_features, tokens]``, contiguous) for the packed 2:4 weight ``W`` and contiguous ``rows [tokens, in]``,
    as the plan ``(alg_id, split_k, split_k_mode)`` says (``cusparselt_plans``): cuSPARSELt's own product, the transpose of ``rows @ W.T``."""
    return torch._cslt_sparse_mm(packed, rows.t(), alg_id=alg_id, split_k=split_k, split_k_mode=split_k_mode)


def cusparselt_product(packed: torch.Tensor, rows: torch.Tensor, plan: Plan, out_features: int) -> torch.Tensor:
    """``rows @ W.T`` (``[tokens, out_features]``, contiguous): cuSPARSELt's product, transposed by one tiled copy."""
    return transposed_copy(cusparselt_transposed_product(packed, rows, plan.alg_id, plan.split_k, plan.split_k_mode, out_features))


cusparselt_mm = torch.library.custom_op("sparsebench::cusparselt_mm", cusparselt_transposed_product, mutates_args=())


@cusparselt_mm.register_fake
def _cusparselt_mm_shape(packed: torch.Tensor, rows: torch.Tensor, alg_id: int, split_k: int, split_k_mode: int, out_features: int) -> torch.Tensor:
    return rows.new_empty(out_features, rows.shape[0])


def semi_sparse_problem(linear: nn.Linear) -> str | None:
    """Why ``linear`` cannot run through cuSPARSELt's 2:4 kernels (None: it can)."""
    weight = linear.weight
    if weight.dtype not in DTYPES:
        return f"cuSPARSELt's 2:4 kernels are used here in float16/bfloat16; the weight is {str(weight.dtype).removeprefix('torch.')}"
    out_features, in_features = weight.shape
    if out_features % WEIGHT_MULTIPLE or in_features % WEIGHT_MULTIPLE:
        return f"cuSPARSELt needs both weight dimensions to be multiples of {WEIGHT_MULTIPLE}; this weight is {out_features} x {in_features}"
    if not is_2of4(weight):
        return "the weight is not 2:4 sparse (a group of four consecutive inputs has more than two non-zeros)"
    if weight.device.type != "cuda":
        return f"cuSPARSELt needs the weight on a CUDA GPU (it is on {weight.device.type})"
    capability = torch.cuda.get_device_capability(weight.device)
    if capability < (8, 0):
        return f"cuSPARSELt's 2:4 kernels need compute capability 8.0 or more; this GPU has {capability[0]}.{capability[1]}"
    return None


class SemiSparseLinear(nn.Module):
    """``y = x @ W.T + b`` for a 2:4 weight, through ``torch._cslt_sparse_mm`` with a searched algorithm id."""

    def __init__(self, packed: torch.Tensor, out_features: int, in_features: int, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features, self.dtype = out_features, in_features, dtype
        self.register_buffer("packed", packed)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> SemiSparseLinear:
        """Compress ``linear``'s 2:4 weight once; raises ValueError naming why it cannot."""
        problem = semi_sparse_problem(linear)
        if problem is not None:
            raise ValueError(problem)
        weight = linear.weight.detach()
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(torch._cslt_compress(weight.contiguous()), weight.shape[0], weight.shape[1], bias, weight.dtype)

    def weight_bytes(self) -> int:
        """Bytes the layer keeps on the GPU: the packed weight (kept values and metadata) and the bias."""
        return sum(t.numel() * t.element_size() for t in (self.packed, self.bias) if t is not None)

    def _plan(self, rows_t: torch.Tensor) -> Plan:
        key = (self.out_features, self.in_features, self.dtype, rows_t.shape[1])
        plan = _PLANS.get(key)
        if plan is None:
            tracing = torch.compiler.is_compiling()
            if tracing or torch.cuda.is_current_stream_capturing():
                before = "torch.compile traces the model" if tracing else "capturing a CUDA graph"
                raise RuntimeError(
                    f"SemiSparseLinear {self.out_features}x{self.in_features}: no cuSPARSELt plan for {rows_t.shape[1]} tokens yet; "
                    f"run the same shapes once eagerly before {before} (the search can be neither traced nor captured)"
                )
            plan, timings = search_plan(self.packed, rows_t)
            _PLANS[key] = plan
            log.debug("cuSPARSELt plan %s for %s (graphed ms: %s)", plan, key, timings)
        return plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        tokens = rows.shape[0]
        padding = (-tokens) % TOKEN_MULTIPLE
        if padding:
            rows = F.pad(rows, (0, 0, 0, padding))
        rows = rows.contiguous()
        plan = self._plan(rows.t())  # rows.t(): [in, tokens], column-major, the operand the search timed
        if torch.compiler.is_compiling():  # [out, tokens] from the opaque operator; its transposed view is fused onwards
            out = torch.ops.sparsebench.cusparselt_mm.default(self.packed, rows, plan.alg_id, plan.split_k, plan.split_k_mode, self.out_features)
            out = out.t()[:tokens]
        else:
            out = cusparselt_product(self.packed, rows, plan, self.out_features)[:tokens]  # [tokens, out], contiguous
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, cuSPARSELt 2:4"
