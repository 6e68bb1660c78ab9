"""2:4 linear layers through cuSPARSELt, called directly.

NVIDIA's 2:4 structured sparsity (Mishra et al., "Accelerating Sparse Deep Neural Networks", 2021):
the sparse tensor cores of Ampere and Hopper skip the two zeros of every group of four weights. PyTorch
reaches them through cuSPARSELt with three private operators, the same ones its
``SparseSemiStructuredTensorCUSPARSELT`` and torchao's semi-sparse linear call:

- ``torch._cslt_compress(W)`` packs a 2:4 weight ``[out, in]`` once (the kept half and its metadata);
- ``torch._C._cusparselt.mm_search(Wc, x.T, ...)`` times cuSPARSELt's algorithms for one product shape and returns
  the fastest one's id (``torch._cslt_sparse_mm_search`` where torch lacks it; torch 2.11 warns that one is deprecated);
- ``torch._cslt_sparse_mm(Wc, x.T, alg_id=...)`` computes ``W @ x.T``, transposed back to ``x @ W.T``.

The output is handed on as a contiguous ``[tokens, out]`` tensor, as ``nn.Linear``'s is, by a tiled Triton
transpose of ``W @ x.T`` (``sparsebench.kernels.transpose``). Measured on an H100 (torch 2.11.0+cu130,
cuSPARSELt 0.8.0; docs/efficiency.md, "On a GPU"), LLaMA-2-7B shapes, one graphed block at 2,048 tokens against
dense:

- handing on the transposed view (no copy): 2.9x slower. The attention's query, key and value then have a
  strided last dimension, which FlashAttention refuses, so ``scaled_dot_product_attention`` falls back to a
  slower kernel. Compiled by ``torch.compile``, the view made the block 0.41x of dense as well: Inductor
  did not turn it back into a fast layout;
- PyTorch's copy of the view (``.t().contiguous()``): 0.83x. It took 63 us for a 4096-wide product, about half
  the product's time, because it reads or writes with a whole row's stride;
- the tiled transpose: 1.12x;
- cuSPARSELt writing the transposed product itself (``transpose_result=True``): its search failed for every
  7B shape at 16, 2,048 and 8,192 tokens with "internal error" in ``cusparseLtMatmulSearch``, then an illegal
  instruction that poisons the CUDA context (``benchmarks/probe_cslt_transpose.py`` runs each case in its own
  process). Not used;
- cuSPARSELt's split-K (``_cslt_sparse_mm(..., split_k=2..16)``, for decode shapes with few output tiles): every
  value was refused ("invalid value" setting ``CUSPARSELT_MATMUL_SPLIT_K``; ``benchmarks/probe_cslt_split_k.py``),
  and cuSPARSELt's own search returns split-K -1. Not used.

Features-major hand-off (``hand_on_features_major``, set by ``sparsebench.kernels.paths.swapped`` for the MLP's input
projections): such a linear hands on the transposed view of cuSPARSELt's ``[out, tokens]`` product, no copy. PyTorch's
elementwise operations keep that layout (the activation, the gate's product; Inductor too, because the next operator
asks for the traced strides), so the MLP's output projection gets ``[tokens, in]`` whose transpose is a contiguous
``[in, tokens]``, which cuSPARSELt reads row-major as it lies (torch's ``_cslt_sparse_mm`` passes a contiguous operand as
not transposed). Of the MLP's three transposes only the output projection's is left. A padded token count is never
handed on (the padded product would make every later read strided).

``SemiSparseLinear`` keeps only the packed weight (no dense copy, no tensor subclass) and remembers the
algorithm id for each (weight shape, dtype, token count, operand layout), searched once on the first call of that shape
outside a CUDA graph capture. The per-call host work left (cuSPARSELt's plan for the call) is what a CUDA
graph hides. The token count is padded to a multiple of 16, the smallest count measured in the project's shared
notes on 2:4 kernels (``sparse-kernels.md``); a bias is added afterwards.

For ``torch.compile`` the product (with its transpose) is the custom operator ``sparsebench::cusparselt_mm``
(``torch.library``, opaque to the compiler, with a fake implementation that gives its shape); the padding and
bias around it stay ordinary operators that the compiler may fuse; a features-major output is the operator
``sparsebench::cusparselt_mm_features_major`` (the product without the transpose). The algorithm id is an argument of the
operator, looked up before it: a search cannot run while the compiler traces, so tracing a shape with no
searched id raises (run it eagerly first), as capturing one does. ``out_features`` is an argument because the
packed buffer does not carry the weight's shape. The rows are made contiguous before the operator (unless
features-major), and Inductor passes a custom operator its inputs with the strides traced (both operators are tagged
``needs_exact_strides``, torch 2.13's default for custom operators), so the product sees the operand layout that its
algorithm id was searched for. Eagerly the module calls the plain function directly: the operator's dispatch
costs about 10 us of host time a call (measured on this project's CPU), which would change what the eager modes
measure.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.kernels.transpose import transposed_copy  # Triton: the CUDA builds of torch bring it
from sparsebench.sparse_layout import is_2of4

log = logging.getLogger(__name__)

DTYPES = (torch.float16, torch.bfloat16)
WEIGHT_MULTIPLE = 16  # cuSPARSELt's smallest tile for a 16-bit sparse operand (torch.sparse's _DTYPE_SHAPE_CONSTRAINTS)
TOKEN_MULTIPLE = 16  # the dense operand's rows are padded to this multiple (torch.sparse pads to 8; see above)

# (out_features, in_features, dtype, padded token count, operand row-major) -> cuSPARSELt algorithm id; shared by every
# linear of that shape
_ALGORITHM_IDS: dict[tuple, int] = {}


def cusparselt_features_major(packed: torch.Tensor, rows: torch.Tensor, alg_id: int, out_features: int) -> torch.Tensor:
    """``W @ rows.T``: ``[out_features, tokens]``, contiguous (the product's transpose, features major), for the packed 2:4
    weight ``W`` and ``rows [tokens, in]``, either contiguous (cuSPARSELt reads ``rows.T`` column-major) or the transposed
    view of a contiguous ``[in, tokens]`` (read row-major, no copy: a features-major input), with algorithm ``alg_id``."""
    return torch._cslt_sparse_mm(packed, rows.t(), alg_id=alg_id)


def cusparselt_product(packed: torch.Tensor, rows: torch.Tensor, alg_id: int, out_features: int) -> torch.Tensor:
    """``rows @ W.T`` (``[tokens, out_features]``, contiguous): ``cusparselt_features_major``'s product transposed by one
    tiled copy (see the module's docstring)."""
    return transposed_copy(cusparselt_features_major(packed, rows, alg_id, out_features))


# Inductor hands a custom operator its inputs with exactly the strides traced (the default of torch 2.13 here and of
# torch 2.11 on the measuring GPU machine, asked for by tag all the same): the product must see the operand layout (row-
# or column-major) that its algorithm id was searched for
_EXACT_STRIDES = (getattr(torch._C.Tag, "needs_exact_strides", torch._C.Tag.needs_fixed_stride_order),)
cusparselt_mm = torch.library.custom_op("sparsebench::cusparselt_mm", cusparselt_product, mutates_args=(), tags=_EXACT_STRIDES)
cusparselt_mm_features_major = torch.library.custom_op(
    "sparsebench::cusparselt_mm_features_major", cusparselt_features_major, mutates_args=(), tags=_EXACT_STRIDES
)


@cusparselt_mm.register_fake
def _cusparselt_mm_shape(packed: torch.Tensor, rows: torch.Tensor, alg_id: int, out_features: int) -> torch.Tensor:
    return rows.new_empty(rows.shape[0], out_features)


@cusparselt_mm_features_major.register_fake
def _cusparselt_mm_features_major_shape(packed: torch.Tensor, rows: torch.Tensor, alg_id: int, out_features: int) -> torch.Tensor:
    return rows.new_empty(out_features, rows.shape[0])


def features_major(rows: torch.Tensor) -> bool:
    """Whether ``rows [tokens, in]`` is the transposed view of a contiguous ``[in, tokens]`` (and not also contiguous)."""
    return rows.t().is_contiguous() and not rows.is_contiguous()


def search_algorithm(packed: torch.Tensor, rows_t: torch.Tensor) -> int:
    """The id of cuSPARSELt's fastest algorithm for ``W @ rows_t``, by its own search (run eagerly, on the GPU).

    ``torch._C._cusparselt.mm_search`` where this torch has it (torch 2.11 warns that ``_cslt_sparse_mm_search`` is
    deprecated; on an H100 both gave the same ids); it also returns a split-K (-1 there) and its mode, which
    ``_cslt_sparse_mm`` could not use on that H100 (see the module's docstring), so only the id is kept.
    """
    search = getattr(getattr(torch._C, "_cusparselt", None), "mm_search", None)
    if search is not None:
        return int(search(packed, rows_t, None, None, None, False)[0])
    return int(torch._cslt_sparse_mm_search(packed, rows_t))


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
        self.features_major_output = False  # see hand_on_features_major
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

    def hand_on_features_major(self) -> None:
        """From now on hand the output on as the transposed view of cuSPARSELt's ``[out, tokens]`` product (no copy) when no
        padding was needed. For a linear whose output reaches another 2:4 linear only through elementwise operations (the
        MLP's input projections: PyTorch's elementwise operations keep the layout), which then reads it row-major."""
        self.features_major_output = True

    def _algorithm(self, rows_t: torch.Tensor) -> int:
        key = (self.out_features, self.in_features, self.dtype, rows_t.shape[1], rows_t.is_contiguous())
        alg_id = _ALGORITHM_IDS.get(key)
        if alg_id is None:
            tracing = torch.compiler.is_compiling()
            if tracing or torch.cuda.is_current_stream_capturing():
                before = "torch.compile traces the model" if tracing else "capturing a CUDA graph"
                raise RuntimeError(
                    f"SemiSparseLinear {self.out_features}x{self.in_features}: no algorithm id for {rows_t.shape[1]} tokens "
                    f"({'row' if rows_t.is_contiguous() else 'column'}-major) yet; "
                    f"run the same shapes once eagerly before {before} (the search can be neither traced nor captured)"
                )
            alg_id = search_algorithm(self.packed, rows_t)
            _ALGORITHM_IDS[key] = alg_id
            log.debug("cuSPARSELt algorithm %d for %s", alg_id, key)
        return alg_id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        tokens = rows.shape[0]
        padding = (-tokens) % TOKEN_MULTIPLE
        if padding:
            rows = F.pad(rows, (0, 0, 0, padding))
        elif not features_major(rows):  # a features-major input (see hand_on_features_major) is read as it lies
            rows = rows.contiguous()
        alg_id = self._algorithm(rows.t())  # rows.t(): [in, tokens], the operand the search timed
        compiling = torch.compiler.is_compiling()
        if self.features_major_output and not padding:
            multiply = torch.ops.sparsebench.cusparselt_mm_features_major.default if compiling else cusparselt_features_major
            out = multiply(self.packed, rows, alg_id, self.out_features).t()  # [tokens, out], a view of [out, tokens]
        else:
            multiply = torch.ops.sparsebench.cusparselt_mm.default if compiling else cusparselt_product
            out = multiply(self.packed, rows, alg_id, self.out_features)[:tokens]  # [tokens, out], contiguous
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        layout = ", output features-major" if self.features_major_output else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, cuSPARSELt 2:4{layout}"
