"""Trackers mirror a finished result document somewhere else; the local document stays the truth.

``tracker=local`` (the default) does nothing more than the result document ``run_case`` writes.
``tracker=wandb`` also logs one W&B run per case (``tracking/wandb_mirror.py``). A mirror that
fails never loses the result: the error is recorded in the document, which is rewritten
atomically, and the grid goes on.
"""

from __future__ import annotations

import importlib.util
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from sparsebench.errors import ConfigError
from sparsebench.results import write_document

log = logging.getLogger(__name__)

TRACKERS = ("local", "wandb")
WANDB_MODES = ("online", "offline", "disabled")


@dataclass(frozen=True)
class WandbSpec:
    mode: str
    project: str
    entity: str | None
    group: str
    tags: tuple[str, ...]
    dir: Path | None  # where W&B writes its run files (offline runs: ``DIR/wandb/offline-run-*``)


@dataclass(frozen=True)
class TrackerSpec:
    name: str = "local"
    wandb: WandbSpec | None = None


LOCAL_TRACKER = TrackerSpec()


def validate_tracker(tracker: dict, experiment_name: str) -> TrackerSpec:
    """Check the ``tracker`` keys of a resolved configuration."""
    name = tracker.get("name", "local")
    if name not in TRACKERS:
        raise ConfigError(f"tracker.name={name!r}: allowed values are {', '.join(TRACKERS)}")
    if name == "local":
        return LOCAL_TRACKER
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError("tracker=wandb needs the wandb package, which is not installed: pip install 'sparsebench[wandb]'")
    wandb = tracker.get("wandb") or {}
    mode = wandb.get("mode", "online")
    if mode not in WANDB_MODES:
        raise ConfigError(f"tracker.wandb.mode={mode!r}: allowed values are {', '.join(WANDB_MODES)}")
    if not wandb.get("project"):
        raise ConfigError("tracker.wandb.project: required (the W&B project that holds the runs)")
    tags = wandb.get("tags") or []
    if not isinstance(tags, (list, tuple)) or not all(isinstance(tag, str) for tag in tags):
        raise ConfigError(f"tracker.wandb.tags={tags!r}: must be a list of strings")
    return TrackerSpec(
        name=name,
        wandb=WandbSpec(
            mode=mode,
            project=wandb["project"],
            entity=wandb.get("entity"),
            group=wandb.get("group") or experiment_name,
            tags=tuple(tags),
            dir=Path(wandb["dir"]).expanduser() if wandb.get("dir") else None,
        ),
    )


def mirror(tracker: TrackerSpec, document: dict, path: Path) -> dict:
    """Mirror a written document to the tracker; record the outcome in the document and rewrite it."""
    if tracker.name == "local":
        return document
    from sparsebench.tracking.wandb_mirror import log_case

    try:
        outcome = {"status": "ok", **log_case(tracker.wandb, document)}
    except Exception as error:  # a mirror must never lose the result
        log.error("W&B mirror of %s failed (the local document is kept): %s: %s", document["case_id"], type(error).__name__, error)
        outcome = {"status": "failed", "error": {"type": type(error).__name__, "message": str(error), "traceback": traceback.format_exc()}}
    document = {**document, "tracking": {**document.get("tracking", {}), "wandb": outcome}}
    write_document(path, document)
    return document
