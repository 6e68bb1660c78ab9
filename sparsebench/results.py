"""Result documents: one JSON file per case, named by a case id, written atomically.

The case id is derived from what defines the case (model, sparsity, metric, allocator,
calibration, evaluation and the local data it reads), not from how it is run (device batch
sizes, progress bars, output folder), so re-running the same case finds the same document:
``sparsebench.identity`` reads which keys define a case from the schema's field metadata.
The dense model (``metric=none``) does not depend on sparsity or calibration: one id per model
and evaluation. See docs/results.md for the document's keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from sparsebench.errors import StoreError
from sparsebench.files import atomic_write
from sparsebench.identity import Facts, identity

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed")
REQUIRED_KEYS = ("schema_version", "case_id", "status", "config", "timings", "environment")
CORRUPT_FOLDER = "corrupt"  # invalid documents are moved here, not deleted
MIN_FREE_BYTES = 16 * 2**20
PROBE_BYTES = 64 * 2**10


def case_id(config: dict, model_name: str, device_type: str) -> str:
    """``<model>_<metric>_<allocator>_<level>[_<finetune>]_<digest>``: the digest hashes what defines the case
    (``identity("case", ...)``), the readable part is for people."""
    defining = identity("case", config, Facts(device_type))
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:10]
    metric = config["metric"].get("name", "unknown")
    if metric == "none":
        readable = [model_name, "dense"]
    else:
        sparsity = config["sparsity"]
        level = sparsity["pattern"].replace(":", "of") if sparsity["pattern"] != "unstructured" else f"s{sparsity['ratio']:g}"
        readable = [model_name, metric, config["allocator"].get("name", "unknown"), level]
    finetune = (config.get("finetune") or {}).get("name", "none")
    if finetune != "none":
        readable.append(finetune)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(readable))
    return f"{safe}_{digest}"


def document_path(results_dir: Path, case: str) -> Path:
    return Path(results_dir) / f"{case}.json"


def write_document(path: Path, document: dict) -> None:
    """Write JSON to a temporary file in the same folder, flush it to disk, then rename it (umask honoured)."""
    atomic_write(Path(path), json.dumps(document, indent=2, sort_keys=False, default=str) + "\n")


def document_problem(path: Path) -> str | None:
    """Why the file at ``path`` is not a valid result document, or None if it is one (or is absent)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"cannot be read: {error}"
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        return f"not JSON ({len(text)} bytes; {error})"
    if not isinstance(document, dict):
        return f"not a JSON object but {type(document).__name__}"
    absent = [key for key in REQUIRED_KEYS if key not in document]
    if absent:
        return f"lacks {', '.join(absent)}"
    if document["status"] not in STATUSES:
        return f"status {document['status']!r} is none of {', '.join(STATUSES)}"
    if document["schema_version"] != SCHEMA_VERSION:
        return f"schema_version {document['schema_version']!r}, this sparsebench reads {SCHEMA_VERSION}"
    return None


def read_document(path: Path) -> dict | None:
    """The document at ``path`` if it exists and is a valid result document, else None."""
    if not Path(path).exists() or document_problem(path) is not None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):  # replaced or removed in between
        return None


def is_done(path: Path) -> bool:
    document = read_document(path)
    return document is not None and document["status"] == "ok"


def quarantine(path: Path, problem: str) -> Path:
    """Move a file that is not a valid document to ``<results_dir>/corrupt/`` (kept for inspection)."""
    path = Path(path)
    folder = path.parent / CORRUPT_FOLDER
    folder.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    moved = folder / f"{path.stem}.{stamp}{path.suffix}"
    os.replace(path, moved)
    log.warning("%s is not a valid result document (%s): moved to %s; the case runs again", path, problem, moved)
    return moved


def remove_partials(results_dir: Path, case: str) -> list[Path]:
    """Delete temporary files a killed writer of ``case`` left (call only while holding its claim)."""
    removed = []
    for partial in Path(results_dir).glob(f".{case}-*.partial"):
        partial.unlink(missing_ok=True)
        removed.append(partial)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write of %s", len(removed), case)
    return removed


def check_results_dir(results_dir: Path, min_free_bytes: int = MIN_FREE_BYTES) -> None:
    """Fail with one line, before any model loads, if result documents cannot be written here.

    Creates the folder if needed, checks the free space, and writes, syncs and deletes a probe
    file as large as a typical document: a read-only, full or over-quota folder fails here.
    """
    results_dir = Path(results_dir)
    key = f"results_dir={str(results_dir)!r}"
    if results_dir.exists() and not results_dir.is_dir():
        raise StoreError(f"{key}: exists but is not a folder")
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"{key}: cannot create the folder: {error.strerror or error}") from None
    free = shutil.disk_usage(results_dir).free
    if free < min_free_bytes:
        raise StoreError(f"{key}: the disk is full ({free} bytes free, result documents need at least {min_free_bytes})")
    probe = None
    try:
        handle, probe = tempfile.mkstemp(dir=results_dir, prefix=".write-check-", suffix=".partial")
        with os.fdopen(handle, "wb") as stream:
            stream.write(b"\0" * PROBE_BYTES)
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as error:
        raise StoreError(f"{key}: cannot write result documents there: {error.strerror or error}") from None
    finally:
        if probe is not None:
            Path(probe).unlink(missing_ok=True)
