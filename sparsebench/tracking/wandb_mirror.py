"""Log one result document as one W&B run: name = case id, group = experiment, tags from the case.

The run's config is the resolved configuration; its summary holds the metrics, timings and the
sparsity summary; the per-layer sparsity allocation is a ``wandb.Table``; a fine-tuned case's loss
curve (the document's summarised curve) is a time series ``finetune/loss`` over ``finetune/step``. Offline runs land in
``DIR/wandb/offline-run-*`` and can be uploaded later with ``wandb sync``. The run id is derived
from the case (``run_id``), so mirroring a case again (after a kill between its document and its
mirror) resumes the same online run, and replaces the same offline run's folder.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

from sparsebench.tracking import WandbSpec

log = logging.getLogger(__name__)

PER_LAYER_COLUMNS = ("layer", "numel", "target", "achieved")


def case_tags(document: dict) -> list[str]:
    config = document["config"]
    sparsity = document.get("sparsity", {})
    level = sparsity.get("pattern") if sparsity.get("pattern") not in (None, "unstructured") else f"{config['sparsity']['ratio']:g}"
    if config["metric"].get("name") == "none":
        level = "dense"
    tags = [
        f"model:{document.get('model', {}).get('name') or config['model'].get('name') or config['model']['path']}",
        f"metric:{config['metric'].get('name')}",
        f"allocator:{config['allocator'].get('name')}",
        f"sparsity:{level}",
    ]
    finetune = (config.get("finetune") or {}).get("name", "none")
    if finetune != "none":
        tags.append(f"finetune:{finetune}")
    return tags


def flat_summary(document: dict) -> dict:
    """Scalars for the run summary: ``ppl/<dataset>``, ``zeroshot/<task>/<acc|acc_norm>``,
    ``zeroshot_mean/<convention>``, ``timings/<phase>``, ``sparsity/<key>``, ``status``, and the export
    and efficiency figures as ``efficiency/<field>`` (``sparsebench.evaluate.efficiency.efficiency_fields``)."""
    summary = {"status": document["status"], "case_id": document["case_id"]}
    for dataset, result in document.get("metrics", {}).get("ppl", {}).items():
        summary[f"ppl/{dataset}"] = result["ppl"]
    for dataset, result in document.get("metrics", {}).get("ppl_before_finetune", {}).items():
        summary[f"ppl_before_finetune/{dataset}"] = result["ppl"]
    for key, value in document.get("finetune", {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            summary[f"finetune/{key}"] = value
    for task, result in document.get("metrics", {}).get("zeroshot", {}).items():
        for metric in ("acc", "acc_norm") if task not in ("mean", "lm_eval") else ():
            if metric in result:
                summary[f"zeroshot/{task}/{metric}"] = result[metric]
    for convention, mean in document.get("metrics", {}).get("zeroshot", {}).get("mean", {}).items():
        if mean.get("value") is not None:
            summary[f"zeroshot_mean/{convention}"] = mean["value"]
    for phase, seconds in document.get("timings", {}).items():
        summary[f"timings/{phase}"] = seconds
    for key, value in document.get("sparsity", {}).items():
        if key != "per_layer":
            summary[f"sparsity/{key}"] = value
    from sparsebench.evaluate.efficiency import efficiency_fields

    summary.update({f"efficiency/{key}": value for key, value in efficiency_fields(document).items()})
    if "error" in document:
        summary["error"] = f"{document['error']['type']}: {document['error']['message']}"
    return summary


def run_id(spec: WandbSpec, case_id: str) -> str:
    """One W&B run id per (project, group, case): a case mirrored again reuses its run, never adds one."""
    digest = hashlib.sha256(f"{spec.entity}/{spec.project}/{spec.group}/{case_id}".encode()).hexdigest()
    return f"sb-{digest[:20]}"


def _replace_offline_runs(spec: WandbSpec, identifier: str) -> None:
    """Delete earlier offline run folders of this id (an interrupted or failed mirror), so one stays per case."""
    root = (spec.dir if spec.dir is not None else Path.cwd()) / "wandb"
    for folder in root.glob(f"offline-run-*-{identifier}"):
        log.info("replacing the earlier offline W&B run %s", folder)
        shutil.rmtree(folder, ignore_errors=True)
def log_loss_curve(run, curve: dict | None) -> None:
    """The fine-tuning loss curve as a time series: ``finetune/loss`` against ``finetune/step``."""
    if not curve:
        return
    run.define_metric("finetune/step")
    run.define_metric("finetune/loss", step_metric="finetune/step")
    for step, loss in zip(curve["step"], curve["loss"]):
        run.log({"finetune/step": step, "finetune/loss": loss})


def log_case(spec: WandbSpec, document: dict) -> dict:
    """Create (or resume), fill and finish the case's run; returns what identifies it (recorded in the document)."""
    import wandb

    if spec.dir is not None:
        spec.dir.mkdir(parents=True, exist_ok=True)
    identifier = run_id(spec, document["case_id"])
    if spec.mode == "offline":
        _replace_offline_runs(spec, identifier)
    run = wandb.init(
        id=identifier,
        resume="allow",
        project=spec.project,
        entity=spec.entity,
        group=spec.group,
        name=document["case_id"],
        job_type="case",
        tags=[*case_tags(document), *spec.tags],
        config=document["config"],
        mode=spec.mode,
        dir=str(spec.dir) if spec.dir is not None else None,
        reinit="finish_previous",
        settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
    )
    try:
        per_layer = document.get("sparsity", {}).get("per_layer", {})
        if per_layer:
            table = wandb.Table(columns=list(PER_LAYER_COLUMNS), data=[[name, layer["numel"], layer.get("target"), layer["achieved"]] for name, layer in per_layer.items()])
            run.log({"per_layer_sparsity": table})
        log_loss_curve(run, document.get("finetune", {}).get("loss_curve"))
        run.summary.update(flat_summary(document))
        outcome = {"mode": spec.mode, "project": spec.project, "group": spec.group, "run_id": run.id, "run_dir": getattr(run.settings, "sync_dir", None)}
        if spec.mode == "online":
            outcome["url"] = run.url
    finally:
        run.finish()
    log.info("W&B run %s (%s) for %s", outcome["run_id"], spec.mode, document["case_id"])
    return outcome
