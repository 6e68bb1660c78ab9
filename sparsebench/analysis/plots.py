"""Figures as PNG: perplexity vs sparsity per method (error bars: the standard deviation over
replicates), and per-layer target ratios per allocator."""

from __future__ import annotations

import logging
from pathlib import Path

from sparsebench.analysis.tables import DENSE, Table, method_of, model_of

log = logging.getLogger(__name__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text)


def _finish(pyplot, figure, axes, path: Path) -> Path:
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def ppl_vs_sparsity(table: Table, out_dir: Path) -> list[Path]:
    """One figure per dataset: a line per pruned method, the dense model as a dashed line."""
    pyplot = _pyplot()
    written = []
    for dataset in sorted({dataset for _, dataset in table.columns}):
        columns = [column for column in table.columns if column[1] == dataset and column[0].endswith("%")]
        figure, axes = pyplot.subplots(figsize=(5, 3.5))
        for method in table.methods:
            present = [c for c in columns if (method, c) in table.values]
            points = [(float(c[0][:-1]), table.values[(method, c)]) for c in present]
            if method == DENSE and points:
                axes.axhline(points[0][1], color="gray", linestyle="--", label=DENSE)
            elif points:
                spreads = [table.spreads.get((method, c)) for c in present]
                errors = [spread.std if spread is not None and spread.std is not None else 0.0 for spread in spreads]
                axes.errorbar(*zip(*points), yerr=errors if any(errors) else None, marker="o", capsize=3, label=method)
        axes.set(xlabel="sparsity (%)", ylabel=f"{dataset} perplexity", yscale="log", title=table.model)
        written.append(_finish(pyplot, figure, axes, Path(out_dir) / f"ppl_vs_sparsity_{_safe(table.model)}_{_safe(dataset)}.png"))
    return written


def per_layer_ratios(documents: list[dict], out_dir: Path) -> list[Path]:
    """One figure per model and target sparsity: each allocator's per-layer target, in layer order."""
    pyplot = _pyplot()
    groups: dict[tuple[str, float], dict[str, dict]] = {}
    for document in documents:
        layers = document.get("sparsity", {}).get("per_layer")
        if document["status"] != "ok" or not layers or method_of(document["config"]) == DENSE:
            continue
        allocator = document["config"]["allocator"].get("name", "?")
        key = (model_of(document["config"]), round(float(document["sparsity"]["target"]), 4))
        groups.setdefault(key, {}).setdefault(allocator, layers)  # the allocation does not depend on the metric for most allocators
    written = []
    for (model, target), by_allocator in sorted(groups.items()):
        figure, axes = pyplot.subplots(figsize=(6, 3.5))
        for allocator, layers in sorted(by_allocator.items()):
            axes.plot([layer["target"] for layer in layers.values()], label=allocator, linewidth=1)
        axes.set(xlabel="prunable layer (model order)", ylabel="target sparsity", title=f"{model}, mean target {target:g}")
        written.append(_finish(pyplot, figure, axes, Path(out_dir) / f"per_layer_{_safe(model)}_{target:g}.png"))
    return written
