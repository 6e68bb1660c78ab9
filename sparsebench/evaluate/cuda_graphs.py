"""Prefill and decode the way a server runs them: captured once as CUDA graphs and replayed.

A CUDA graph (``torch.cuda.CUDAGraph``) records a sequence of kernel launches once and replays it with one
launch, so the host work between kernels (Python, HF's module calls, cuSPARSELt's per-call plan) leaves the
timed path. vLLM and SGLang decode this way; TensorRT-LLM too.

- ``graphed(fn)``: one graph of ``fn`` (a prefill of one shape: one graph per shape);
- ``StaticDecoder``: greedy decoding with HF's ``StaticCache`` (fixed-size KV tensors, so every step has the
  same shapes and addresses); one decode step (forward of the last token, argmax, feed it back) is captured
  once and replayed for every step. ``graph=False`` runs the same steps eagerly, which isolates what the
  graph saves (the launch gaps).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

CAPTURE_WARMUP = 3  # calls on a side stream before capture: lazy allocations, cuBLAS/cuSPARSELt handles and searches


def graphed(fn) -> torch.cuda.CUDAGraph:
    """``fn`` captured in one CUDA graph after warm-up calls on a side stream (``.replay()`` runs it)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(CAPTURE_WARMUP):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


class StaticDecoder:
    """Greedy decoding of ``batch`` prompts of ``prompt`` tokens with a static KV cache of ``prompt + steps + 1`` positions."""

    def __init__(self, model: nn.Module, prompt_ids: torch.Tensor, steps: int, graph: bool, step_model=None):
        """``step_model``: what runs the one-token steps (a compiled ``model``, ``sparsebench.evaluate.compiled``); the prompt always runs ``model``."""
        from transformers import StaticCache

        self.model, self.prompt_ids, self.steps = model, prompt_ids, steps
        self.step_model = model if step_model is None else step_model
        # transformers 5.2x renamed the cache argument (``past_key_values`` stays as a deprecated alias)
        self.cache_argument = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
        batch, prompt = prompt_ids.shape
        self.cache = StaticCache(config=model.config, max_cache_len=prompt + steps + 1 + CAPTURE_WARMUP)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=prompt_ids.device)
        self.generated: list[torch.Tensor] = []
        self.prefill()  # the cache allocates its tensors on first use, before any capture
        self.graph = graphed(self._forward_step) if graph else None
        self._step = self.graph.replay if graph else self._forward_step
        if graph:  # the warm-up steps before the capture advanced the cache and the token: rewind
            self.prefill()

    @torch.inference_mode()
    def _forward_step(self) -> None:
        logits = self.step_model(input_ids=self.token, use_cache=True, **{self.cache_argument: self.cache}).logits
        self.token.copy_(logits[:, -1].argmax(dim=-1, keepdim=True))

    @torch.inference_mode()
    def prefill(self) -> None:
        """Rewind the cache and run the prompt (eager); the next token waits in ``self.token``."""
        self.cache.reset()
        logits = self.model(input_ids=self.prompt_ids, use_cache=True, logits_to_keep=1, **{self.cache_argument: self.cache}).logits
        self.token.copy_(logits[:, -1].argmax(dim=-1, keepdim=True))
        self.generated = [self.token.clone()]

    def decode(self, keep: bool = False) -> None:
        """``steps`` decode steps after ``prefill()``; ``keep`` collects the tokens (a copy per step: for checks, not timing)."""
        for _ in range(self.steps):
            self._step()
            if keep:
                self.generated.append(self.token.clone())

    def tokens(self) -> torch.Tensor:
        """The greedy tokens of the last ``decode(keep=True)``: ``[batch, steps + 1]``."""
        return torch.cat(self.generated, dim=1)
