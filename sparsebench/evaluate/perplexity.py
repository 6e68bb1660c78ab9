"""Perplexity with the community protocol (Wanda / SparseGPT ``eval_ppl``).

The evaluation text is tokenised once and cut into non-overlapping segments of ``seqlen`` tokens
(the tail that does not fill a segment is dropped); each segment is scored on its own from its
first token, and ``ppl = exp(mean over segments of the mean next-token NLL)``, which equals
``exp(total NLL / predicted tokens)`` because every segment predicts ``seqlen - 1`` tokens.
The model is run block by block on all segments, so the same code serves offloaded models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsebench.errors import NumericalError
from sparsebench.blockwalk import Execution, batches, first_block_inputs, run_block, walk_blocks
from sparsebench.data.tokens import with_bos
from sparsebench.models.adapters import FamilyAdapter


@dataclass
class PerplexityResult:
    ppl: float
    segments: int
    seqlen: int
    tokens_scored: int

    def as_dict(self) -> dict:
        return {"ppl": self.ppl, "segments": self.segments, "seqlen": self.seqlen, "tokens_scored": self.tokens_scored}


def segment(tokens: Tensor, seqlen: int, max_segments: int | None, bos_token_id: int | None = None) -> Tensor:
    """``[count, seqlen]`` non-overlapping windows of ``tokens``; with ``bos_token_id``
    (``model.bos_per_segment``) each is the BOS token followed by the next ``seqlen - 1`` tokens,
    so every token of the text is predicted once, the first of each window from the BOS alone."""
    length = seqlen - 1 if bos_token_id is not None else seqlen
    count = tokens.numel() // length
    if max_segments is not None:
        count = min(count, max_segments)
    if count == 0:
        raise ValueError(f"the evaluation text has {tokens.numel()} tokens, fewer than one segment of {seqlen}")
    return with_bos(tokens[: count * length].view(count, length), bos_token_id)


def mean_nll(logits: Tensor, input_ids: Tensor) -> Tensor:
    """Mean next-token NLL of each sequence: logits [b, s, vocab], input_ids [b, s] -> [b]."""
    shift_logits = logits[:, :-1].float()
    targets = input_ids[:, 1:].to(shift_logits.device)
    nll = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape).mean(dim=1)


def chunked_mean_nll(head, hidden: Tensor, input_ids: Tensor, positions_per_chunk: int = 1024) -> Tensor:
    """``mean_nll(head(hidden), input_ids)`` without holding [b, s, vocab] logits at once."""
    batch, length = input_ids.shape
    total = torch.zeros(batch, dtype=torch.float32, device=hidden.device)
    for start in range(0, length - 1, positions_per_chunk):
        stop = min(length - 1, start + positions_per_chunk)
        logits = head(hidden[:, start:stop]).float()
        targets = input_ids[:, start + 1 : stop + 1].to(logits.device)
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
        total += nll.view(batch, -1).sum(dim=1)
    return total / (length - 1)


@torch.inference_mode()
def perplexity(model, adapter: FamilyAdapter, segments: Tensor, run: Execution, desc: str = "perplexity") -> PerplexityResult:
    """The perplexity of ``segments`` [count, seqlen], the blocks run as ``run`` says."""
    batch_size = run.batch_size
    inputs = first_block_inputs(model, adapter, segments, run)
    for _, block in walk_blocks(model, adapter, run, desc, inputs):
        inputs.hidden = run_block(block, inputs, batch_size, out=inputs.hidden)
    final_modules = adapter.get_final_modules(model)
    head = adapter.get_head(model)
    nlls = []
    for part in batches(segments.shape[0], batch_size):
        hidden = inputs.hidden[part]
        for module in final_modules:
            hidden = module(hidden)
        nlls.append(chunked_mean_nll(head, hidden, segments[part]))
    mean = torch.cat(nlls).mean().item()
    if not math.isfinite(mean):
        raise NumericalError(f"the mean token NLL is not finite ({mean}) although every block's outputs were: check the final norm and head in this dtype")
    count, seqlen = segments.shape
    return PerplexityResult(math.exp(mean), count, seqlen, count * (seqlen - 1))
