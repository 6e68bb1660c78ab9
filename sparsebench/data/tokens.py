"""Token tensors for calibration and evaluation, built once and cached on disk.

The cache key (``sparsebench.identity``) covers the tokenizer (a hash of its full definition), the
source text's identity and every sampling parameter, so a cached tensor is reused only for the same inputs.
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
from sparsebench.identity import Facts, identity

log = logging.getLogger(__name__)


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else f"{type(tokenizer).__name__}:{tokenizer.name_or_path}:{len(tokenizer)}"
    return hashlib.sha256(definition.encode()).hexdigest()[:24]


def _encode(tokenizer, text: str, bos_token_id: int | None = None) -> Tensor:
    """Token ids of ``text``; with ``bos_token_id``, without the BOS the tokenizer may put first
    (segments get their own, see ``with_bos``)."""
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    if bos_token_id is not None and ids.numel() and ids[0] == bos_token_id:
        ids = ids[1:]
    return ids


def with_bos(windows: Tensor, bos_token_id: int | None) -> Tensor:
    """``[n, length]`` windows, each preceded by the BOS token when one is given: ``[n, length + 1]``."""
    if bos_token_id is None:
        return windows
    return torch.cat([windows.new_full((windows.shape[0], 1), bos_token_id), windows], dim=1)


def evaluation_tokens(source: TextSource, tokenizer, cache_dir: Path | None, fingerprint: str | None = None, bos_token_id: int | None = None) -> Tensor:
    """The evaluation split as one token sequence (rows joined with the corpus's joiner); with
    ``bos_token_id``, a BOS the tokenizer put at its start is dropped (each segment gets one)."""
    corpus = source.corpus
    read = {"source": source.identity(), "joiner": corpus.eval_joiner, "max_documents": corpus.eval_max_documents}
    key = identity("tokens", facts=Facts(tokenizer=fingerprint or tokenizer_fingerprint(tokenizer), bos_token_id=bos_token_id), read=read)

    def build() -> Tensor:
        rows = read_rows(source)
        if corpus.eval_max_documents is not None:
            rows = rows[: corpus.eval_max_documents]
        return _encode(tokenizer, corpus.eval_joiner.join(rows), bos_token_id)

    return cached(cache_dir, "tokens", "eval", key, build)[0]


def calibration_tokens(
    source: TextSource, tokenizer, nsamples: int, seqlen: int, seed: int, cache_dir: Path | None, fingerprint: str | None = None,
    bos_token_id: int | None = None,
) -> Tensor:
    """``[nsamples, seqlen]`` calibration segments drawn as Wanda/SparseGPT's data loaders draw them.

    Joined corpora (WikiText-2, PTB): windows at ``random.randint(0, len - seqlen - 1)`` of the
    tokenised joined text. Document corpora (C4): a random document with more than ``seqlen``
    tokens, then a random window in it. Python's ``random`` seeded with ``seed``, as the references.
    With ``bos_token_id`` (``model.bos_per_segment``) each segment is the BOS token followed by a
    window of ``seqlen - 1`` tokens drawn the same way from the text without the tokenizer's BOS.
    """
    corpus = source.corpus
    read = {"source": source.identity(), "nsamples": nsamples, "seqlen": seqlen, "seed": seed}
    key = identity("tokens", facts=Facts(tokenizer=fingerprint or tokenizer_fingerprint(tokenizer), bos_token_id=bos_token_id), read=read)
    window = seqlen - 1 if bos_token_id is not None else seqlen
    length = f"calibration.seqlen={seqlen}" + (" less its BOS token" if bos_token_id is not None else "")

    def build() -> Tensor:
        rows = read_rows(source)
        rng = random.Random(seed)
        segments = []
        if corpus.train_joiner is not None:
            tokens = _encode(tokenizer, corpus.train_joiner.join(rows), bos_token_id)
            if tokens.numel() <= window + 1:
                raise DataError(f"calibration: {source.describe()} has {tokens.numel()} tokens, fewer than {length} + 2")
            for _ in range(nsamples):
                start = rng.randint(0, tokens.numel() - window - 1)
                segments.append(tokens[start : start + window])
        else:
            for _ in range(nsamples):
                for _attempt in range(100 * len(rows) + 1000):
                    document = _encode(tokenizer, rows[rng.randint(0, len(rows) - 1)], bos_token_id)
                    if document.numel() > window:
                        break
                else:
                    raise DataError(f"calibration: no document of {source.describe()} has more than {length} tokens")
                start = rng.randint(0, document.numel() - window - 1)
                segments.append(document[start : start + window])
        return with_bos(torch.stack(segments), bos_token_id)

    return cached(cache_dir, "tokens", "calib", key, build)[0]
