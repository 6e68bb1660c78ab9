"""The model's forward compiled by ``torch.compile`` (TorchInductor), for the ``compiled_graph`` efficiency mode.

Why: HF's eager forward runs many small unfused kernels around the linears (RMSNorm in float32 pieces, rotary,
SiLU times the up projection, residual adds, cache copies); serving engines fuse them (vLLM compiles its model
with ``torch.compile`` and replays CUDA graphs). Compiling both the dense-stored and the sparse model, then
capturing the compiled forward in the same CUDA graphs as the ``cuda_graph`` mode (``graphed``,
``StaticDecoder``), measures what sparsity buys once that fixed overhead is fused.

What is compiled: the whole model's forward, ``torch.compile(model, fullgraph=True, dynamic=False)`` with the
default mode (not ``"reduce-overhead"``: the CUDA graphs are captured by
``sparsebench.evaluate.cuda_graphs``, so the compiler must not capture its own). The decoder layers are unrolled
into one graph, as vLLM compiles one graph for the whole model. The sparse linears are opaque custom operators
(``sparsebench::cusparselt_mm``, ``sparsebench::bitmask_matmul``); everything around them is fused by Inductor.

Why not one compiled layer reused by every layer: Dynamo specialises integer attributes of modules, and HF's
attention passes ``self.layer_idx`` to the cache (``cache.layers[layer_idx].update``), so with a KV cache each
layer guards on its own index and recompiles (checked with transformers 5.25 and torch 2.13: each layer of a
six-layer model compiled on its own hit the recompile limit of 8 within its first static-cache calls, ``last
reason: self._modules['self_attn'].layer_idx == 0``). Marking the index
dynamic does not help, since indexing a Python list by it specialises it again. The whole-model forward is
traced once per input shape, whatever the number of layers: with ``dynamic=False`` one compilation for the
prefill and one per decode batch for the one-token step. The decode prompt, untimed, runs eagerly on the same
``StaticCache`` (``StaticDecoder(step_model=...)``): compiled, a fresh cache and a rewound one would be two more
compilations per batch (the cache's lazy allocation is guarded on), for nothing that is timed.

Attention in a compiled prefill (``causal_prefill_attention``): HF's SDPA attention passes no mask, and so runs
SDPA's causal FlashAttention, when a prefill has no padding; but while Dynamo traces, transformers materialises the
causal mask (its ``_ignore_causal_mask_sdpa`` never skips under compilation before torch 2.14, pytorch#176499, as
transformers 5.25's source says), and SDPA with a mask tensor runs a slower kernel. A server compiles its prefill
with causal FlashAttention. So for the ``compiled_graph`` mode an SDPA model runs a registered attention function
that is HF's ``sdpa_attention_forward`` with the mask dropped where it is the causal one of an unpadded prefill:
as many keys as queries (no cache, or an empty one), more than one query, no sliding window; the efficiency stage
never pads. Both sides run it, dense-stored and sparse. Everything else (decode steps, prompts into a cache,
sliding-window layers) keeps its mask.

Failing loudly: ``fullgraph=True`` makes a graph break an error, and within ``compiled_forward`` Dynamo's
``fail_on_recompile_limit_hit`` is on with ``recompile_limit`` set to the number of shapes the caller will
run, so an unexpected recompilation raises instead of running eagerly. The model object is never changed
(the compiled callable wraps it); Dynamo's caches are reset on entry and exit (``torch._dynamo.reset``,
process-wide), so compiled code of one path never counts against, or runs for, another.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import contextmanager

import torch
import torch._dynamo
from torch import nn

log = logging.getLogger(__name__)


def compile_problem(device: str) -> str | None:
    """Why TorchInductor cannot compile for ``device`` here (None: it can)."""
    if device.startswith("cuda"):
        from torch.utils._triton import has_triton

        return None if has_triton() else "torch.compile (TorchInductor) needs Triton for CUDA kernels; torch.utils._triton.has_triton() is False here"
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        compiler = get_cpp_compiler()
    except RuntimeError as error:  # no compiler found
        return f"torch.compile (TorchInductor) needs a C++ compiler on the CPU: {error}"
    if shutil.which(compiler) is None:
        return f"torch.compile (TorchInductor) needs a C++ compiler on the CPU; {compiler!r} is not on PATH"
    return None


CAUSAL_PREFILL_ATTENTION = "sparsebench_sdpa_causal_prefill"  # registered with transformers' AttentionInterface


def _sdpa_causal_prefill(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask, **kwargs):
    """HF's SDPA attention, with the mask of an unpadded causal prefill dropped (SDPA's ``is_causal`` instead; see above)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    queries = query.shape[2]
    if queries > 1 and key.shape[2] == queries and kwargs.get("sliding_window") is None and getattr(module, "sliding_window", None) is None:
        attention_mask = None
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


@contextmanager
def causal_prefill_attention(model: nn.Module):
    """While inside, an SDPA ``model`` runs ``_sdpa_causal_prefill`` (yields its name); any other model runs as it is
    (yields None). For inputs without padding only, as the efficiency stage makes them."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None)
    if previous != "sdpa" or not hasattr(model, "set_attn_implementation"):
        yield None
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CAUSAL_PREFILL_ATTENTION, _sdpa_causal_prefill)
    AttentionMaskInterface.register(CAUSAL_PREFILL_ATTENTION, sdpa_mask)
    model.set_attn_implementation(CAUSAL_PREFILL_ATTENTION)
    try:
        if config._attn_implementation != CAUSAL_PREFILL_ATTENTION:
            raise RuntimeError(f"{type(model).__name__} kept attention {config._attn_implementation!r} when set to {CAUSAL_PREFILL_ATTENTION!r}")
        yield CAUSAL_PREFILL_ATTENTION
    finally:
        model.set_attn_implementation(previous)


@contextmanager
def compiled_forward(model: nn.Module, shapes: int, backend: str = "inductor"):
    """A callable computing ``model(...)`` through ``torch.compile(model, fullgraph=True, dynamic=False)`` while inside;
    at most ``shapes`` compilations. The model object itself is not changed.

    ``backend``: Dynamo's backend (``"inductor"`` for measurements; tests may count graphs with a lighter one).
    """
    if shapes < 1:
        raise ValueError(f"compiled_forward: shapes={shapes} must be >= 1 (one compilation per input shape)")
    torch._dynamo.reset()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=shapes):
        compiled = torch.compile(model, fullgraph=True, dynamic=False, backend=backend)

        def forward(*args, **kwargs):
            try:
                return compiled(*args, **kwargs)
            except torch._dynamo.exc.FailOnRecompileLimitHit as error:  # an Exception, not a RuntimeError: say what it means here
                raise RuntimeError(f"torch.compile needed more than {shapes} compilations (one per input shape expected): {error}") from error

        log.info("model compiled with %s (fullgraph, static shapes, at most %d compilations)", backend, shapes)
        try:
            yield forward
        finally:
            del compiled, forward
            torch._dynamo.reset()
