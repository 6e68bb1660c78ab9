"""Values computed once and kept on disk under the cache folder, keyed by everything they depend on.

Used for token tensors (``tokens/``) and for dense work shared by every case of a model
(``dense/``: e.g. OWL's per-block outlier ratios of the dense model). A value is written to a
temporary file and renamed into place, so parallel cases never read half a file; two cases that
race compute the same value and the last rename wins.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, TypeVar

import torch

from sparsebench.files import partial_file

T = TypeVar("T")


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cached(cache_dir: Path | None, folder: str, kind: str, key: dict, build: Callable[[], T]) -> tuple[T, bool]:
    """``(value, was_cached)``: the value stored for ``key``, or ``build()`` stored for next time."""
    if cache_dir is None:
        return build(), False
    path = Path(cache_dir) / folder / f"{kind}-{key_digest(key)}.pt"
    if path.exists():
        return torch.load(path, weights_only=True), True
    value = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = partial_file(path.parent, "partial-", ".pt.tmp")  # the umask's mode: a shared cache stays readable
    os.close(handle)
    try:
        torch.save(value, partial)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return value, False
