"""Token tensors for calibration and evaluation, built once and cached on disk.

The cache key covers the tokenizer (a hash of its full definition), the source text's identity
and every sampling parameter, so a cached tensor is reused only for the same inputs.
"""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

import torch
from torch import Tensor

from sparsebench.data.corpora import TextSource, read_rows
from sparsebench.disk_cache import cached
from sparsebench.errors import DataError

log = logging.getLogger(__name__)


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else f"{type(tokenizer).__name__}:{tokenizer.name_or_path}:{len(tokenizer)}"
    return hashlib.sha256(definition.encode()).hexdigest()[:24]


def _encode(tokenizer, text: str) -> Tensor:
    return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)


def evaluation_tokens(source: TextSource, tokenizer, cache_dir: Path | None, fingerprint: str | None = None) -> Tensor:
    """The evaluation split as one token sequence (rows joined with the corpus's joiner)."""
    corpus = source.corpus
    key = {"tokenizer": fingerprint or tokenizer_fingerprint(tokenizer), "source": source.identity(), "joiner": corpus.eval_joiner, "max_documents": corpus.eval_max_documents}

    def build() -> Tensor:
        rows = read_rows(source)
        if corpus.eval_max_documents is not None:
            rows = rows[: corpus.eval_max_documents]
        return _encode(tokenizer, corpus.eval_joiner.join(rows))

    return cached(cache_dir, "tokens", "eval", key, build)[0]


def calibration_tokens(
    source: TextSource, tokenizer, nsamples: int, seqlen: int, seed: int, cache_dir: Path | None, fingerprint: str | None = None
) -> Tensor:
    """``[nsamples, seqlen]`` calibration segments drawn as Wanda/SparseGPT's data loaders draw them.

    Joined corpora (WikiText-2, PTB): windows at ``random.randint(0, len - seqlen - 1)`` of the
    tokenised joined text. Document corpora (C4): a random document with more than ``seqlen``
    tokens, then a random window in it. Python's ``random`` seeded with ``seed``, as the references.
    """
    corpus = source.corpus
    key = {"tokenizer": fingerprint or tokenizer_fingerprint(tokenizer), "source": source.identity(), "nsamples": nsamples, "seqlen": seqlen, "seed": seed}

    def build() -> Tensor:
        rows = read_rows(source)
        rng = random.Random(seed)
        segments = []
        if corpus.train_joiner is not None:
            tokens = _encode(tokenizer, corpus.train_joiner.join(rows))
            if tokens.numel() <= seqlen + 1:
                raise DataError(f"calibration: {source.describe()} has {tokens.numel()} tokens, fewer than calibration.seqlen={seqlen} + 2")
            for _ in range(nsamples):
                start = rng.randint(0, tokens.numel() - seqlen - 1)
                segments.append(tokens[start : start + seqlen])
        else:
            for _ in range(nsamples):
                for _attempt in range(100 * len(rows) + 1000):
                    document = _encode(tokenizer, rows[rng.randint(0, len(rows) - 1)])
                    if document.numel() > seqlen:
                        break
                else:
                    raise DataError(f"calibration: no document of {source.describe()} has more than calibration.seqlen={seqlen} tokens")
                start = rng.randint(0, document.numel() - seqlen - 1)
                segments.append(document[start : start + seqlen])
        return torch.stack(segments)

    return cached(cache_dir, "tokens", "calib", key, build)[0]
