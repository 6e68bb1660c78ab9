"""Values computed once and kept on disk under the cache folder, keyed by everything they depend on.

Used for token tensors (``tokens/``) and for dense work shared by every case of a model
(``dense/``: e.g. OWL's per-block outlier ratios of the dense model). A value is written to a
temporary file and renamed into place, so parallel cases never read half a file.

Parallel cases (several GPUs, or several slots of one) compute a value once: the first to miss it
claims it (``<cache_dir>/.claims/<folder>-<kind>-<digest>.claim``, the same claims as a case's, see
``sparsebench.claims``) and computes it; the others wait for its file. A claim whose owner died
(SIGKILL, out of memory) is taken over at once on the same host, and after ``stale_after_s`` of
no heartbeat from another host, so a killed holder never leaves the others waiting for ever.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, TypeVar

import torch

from sparsebench.claims import DEFAULT_HEARTBEAT_S, DEFAULT_STALE_AFTER_S, Busy, claim_case
from sparsebench.files import partial_file

log = logging.getLogger(__name__)

T = TypeVar("T")
POLL_S = 0.5  # how often a process waiting for another's value looks for its file


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _store(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = partial_file(path.parent, "partial-", ".pt.tmp")  # the umask's mode: a shared cache stays readable
    os.close(handle)
    try:
        torch.save(value, partial)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def cached(
    cache_dir: Path | None, folder: str, kind: str, key: dict, build: Callable[[], T],
    heartbeat_s: float = DEFAULT_HEARTBEAT_S, stale_after_s: float = DEFAULT_STALE_AFTER_S,
) -> tuple[T, bool]:
    """``(value, was_cached)``: the value stored for ``key``, or ``build()`` stored for next time.

    ``was_cached`` is true also when another process computed the value while this one waited.
    """
    if cache_dir is None:
        return build(), False
    path = Path(cache_dir) / folder / f"{kind}-{key_digest(key)}.pt"
    waited_since = None
    while True:
        if path.exists():
            if waited_since is not None:
                log.info("%s: computed by another process; waited %.1f s", path.name, time.monotonic() - waited_since)
            return torch.load(path, weights_only=True), True
        claim = claim_case(Path(cache_dir), f"{folder}-{path.stem}", heartbeat_s, stale_after_s)  # beside, not in, the values' folder
        if isinstance(claim, Busy):
            if waited_since is None:
                waited_since = time.monotonic()
                log.info("%s is being computed by %s; waiting for it", path.name, claim.describe())
            time.sleep(POLL_S)
            continue
        with claim:
            if path.exists():  # stored between our look and our claim
                continue
            value = build()
            _store(path, value)
        return value, False
