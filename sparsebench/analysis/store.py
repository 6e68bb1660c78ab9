"""Read result documents: from a local results folder, or from W&B runs logged by ``tracker=wandb``.

Both give the same minimal shape (case_id, status, config, metrics: perplexity and zero-shot
accuracy, timings, sparsity; from W&B also ``efficiency_fields``, the flat export and efficiency
figures that a local document yields through ``efficiency_fields``), so the tables do not know where the numbers came from.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sparsebench.results import document_problem, read_document

log = logging.getLogger(__name__)


def local_documents(results_dir: Path, experiment: str | None = None) -> list[dict]:
    """Every valid result document in ``results_dir`` (optionally only one ``experiment_name``)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"--results {results_dir}: no such folder")
    found = []
    for path in sorted(results_dir.glob("*.json")):
        document = read_document(path)
        if document is None:
            log.warning("not a valid result document, left out: %s (%s)", path, document_problem(path) or "removed while reading")
            continue
        if experiment is None or document["config"].get("experiment_name") == experiment:
            found.append(document)
    return found


def wandb_documents(project: str, entity: str | None = None, group: str | None = None, tags: tuple[str, ...] = (), api=None) -> list[dict]:
    """Runs of a W&B project as documents, filtered by group and tags (all must match)."""
    if api is None:
        import wandb

        api = wandb.Api()
    filters: dict = {}
    if group:
        filters["group"] = group
    if tags:
        filters["tags"] = {"$all": list(tags)}
    path = f"{entity}/{project}" if entity else project
    found = []
    for run in api.runs(path, filters=filters):
        summary = dict(run.summary)
        ppl = {key.split("/", 1)[1]: {"ppl": value} for key, value in summary.items() if key.startswith("ppl/")}
        zeroshot: dict = {}
        for key, value in summary.items():
            if key.startswith("zeroshot/") and key.count("/") == 2:
                _, task, metric = key.split("/")
                zeroshot.setdefault(task, {})[metric] = value
        found.append(
            {
                "case_id": run.name,
                "status": summary.get("status", "failed"),
                "config": dict(run.config),
                "metrics": {"ppl": ppl, "zeroshot": zeroshot},
                "timings": {key.split("/", 1)[1]: value for key, value in summary.items() if key.startswith("timings/")},
                "sparsity": {key.split("/", 1)[1]: value for key, value in summary.items() if key.startswith("sparsity/")},
                "error": {"type": "", "message": summary["error"]} if "error" in summary else None,
                "efficiency_fields": {key.split("/", 1)[1]: value for key, value in summary.items() if key.startswith("efficiency/")},
            }
        )
    return found
