"""Result documents: one JSON file per case, named by a case id, written atomically.

The case id is derived from what defines the case (model, sparsity, metric, allocator,
calibration, evaluation and the local data it reads), not from how it is run (device batch
sizes, progress bars, output folder), so re-running the same case finds the same document.
The dense model (``metric=none``) does not depend on sparsity or calibration: one id per model
and evaluation. See the README for the schema.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

SCHEMA_VERSION = 1
STATUSES = ("ok", "failed")
REQUIRED_KEYS = ("schema_version", "case_id", "status", "config", "timings", "environment")


# Keys that were in every document's id before later keys were added: a later key enters the id
# only when it is set, so the ids of earlier cases stay what they were.
_FIRST_DATA_KEYS = ("wikitext2", "c4", "ptb")


def _defining_eval(evaluation: dict) -> dict:
    defining = {"ppl": {k: v for k, v in evaluation["ppl"].items() if k != "batch_size"}}
    zeroshot = evaluation.get("zeroshot") or {}
    if zeroshot.get("tasks"):
        defining["zeroshot"] = {k: v for k, v in zeroshot.items() if k not in ("batch_size", "max_batch_size")}
    return {**{k: v for k, v in evaluation.items() if k != "zeroshot"}, **defining}


def defining_config(config: dict, device_type: str) -> dict:
    """The parts of a resolved configuration that change a case's numbers."""
    model = {k: config["model"].get(k) for k in ("path", "family", "dtype", "revision")}
    if config["model"].get("bos_per_segment") is not None:  # later key: in the id only when set
        model["bos_per_segment"] = config["model"]["bos_per_segment"]
    data = {k: v for k, v in config["data"].items() if v is not None or k in _FIRST_DATA_KEYS}
    defining = {"model": model, "metric": config["metric"], "eval": _defining_eval(config["eval"]), "data": data, "device_type": device_type}
    if config["metric"].get("name") != "none":
        defining["sparsity"] = config["sparsity"]
        defining["allocator"] = config["allocator"]
        defining["calibration"] = {k: v for k, v in config["calibration"].items() if k != "batch_size"}
    if (config.get("decomposition") or {}).get("rank") is not None:
        defining["decomposition"] = config["decomposition"]
    return defining


def case_id(config: dict, model_name: str, device_type: str) -> str:
    digest = hashlib.sha256(json.dumps(defining_config(config, device_type), sort_keys=True, default=str).encode()).hexdigest()[:10]
    metric = config["metric"].get("name", "unknown")
    if metric == "none":
        readable = [model_name, "dense"]
    else:
        sparsity = config["sparsity"]
        level = sparsity["pattern"].replace(":", "of") if sparsity["pattern"] != "unstructured" else f"s{sparsity['ratio']:g}"
        readable = [model_name, metric, config["allocator"].get("name", "unknown"), level]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(readable))
    return f"{safe}_{digest}"


def document_path(results_dir: Path, case: str) -> Path:
    return Path(results_dir) / f"{case}.json"


def write_document(path: Path, document: dict) -> None:
    """Write JSON to a temporary file in the same folder, flush it to disk, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".partial")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(document, stream, indent=2, sort_keys=False, default=str)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def read_document(path: Path) -> dict | None:
    """The document at ``path`` if it exists and is a valid result document, else None."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(document, dict) or any(key not in document for key in REQUIRED_KEYS):
        return None
    if document["status"] not in STATUSES or document["schema_version"] != SCHEMA_VERSION:
        return None
    return document


def is_done(path: Path) -> bool:
    document = read_document(path)
    return document is not None and document["status"] == "ok"
