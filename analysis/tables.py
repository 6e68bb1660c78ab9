"""Paper-style tables: rows are methods (metric + allocator), columns sparsity x dataset, then a mean.

One table per model and measure (perplexity; prune time; zero-shot accuracy, the ``acc`` of each
task as Wanda, OWL, NeuroAL and TRIM report it). The best pruned value
of each column (lowest or highest, as the measure says) is bold; the dense row is shown but never
bold. A cell with no ``ok`` document stays blank and is listed in
``Table.missing`` (with the error, when the case failed): nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Callable

from sparsebench.config import model_name_from_path

DENSE = "dense"


class AnalysisError(ValueError):
    """The documents cannot make one unambiguous table."""


@dataclass(frozen=True)
class Measure:
    """What a table shows: one number per (document, column name), and which direction is better."""

    name: str
    title: str  # under the model's name, e.g. "perplexity, lower is better"
    lower_is_better: bool
    columns: Callable[[dict], list[str]]  # the column names a document's config asks for
    read: Callable[[dict, str], float | None]  # a document's value for a column name, None if absent
    shows_dense: bool = True
    sorted_columns: bool = True  # False: columns in the order the configs list them (zero-shot tasks)


def _ppl(document: dict, dataset: str) -> float | None:
    result = document.get("metrics", {}).get("ppl", {}).get(dataset)
    return None if result is None else float(result["ppl"])


def _prune_seconds(document: dict, column: str) -> float | None:
    timings = document.get("timings", {})
    if "prune_s" not in timings:
        return None
    return float(timings["prune_s"]) + float(timings.get("allocate_s", 0.0))


def _zeroshot_tasks(config: dict) -> list[str]:
    zeroshot = config["eval"].get("zeroshot") or {}
    return list(zeroshot.get("tasks") or [])


def _zeroshot_accuracy(document: dict, task: str) -> float | None:
    """lm-eval's plain ``acc`` of ``task``, in percent: the metric of the papers' seven-task mean.

    The row's mean column is then the papers' mean (``metrics.zeroshot.mean.wanda``) when every
    task is there; ``sparsebench.evaluate.zeroshot_means`` says which papers take ``acc``.
    """
    result = document.get("metrics", {}).get("zeroshot", {}).get(task)
    return None if result is None or "acc" not in result else 100.0 * float(result["acc"])


PERPLEXITY = Measure("ppl", "perplexity, lower is better", True, lambda config: list(config["eval"]["ppl"]["datasets"]), _ppl)
PRUNE_TIME = Measure(
    "prune_time", "prune time in seconds (allocation + pruning), lower is better", True, lambda config: ["prune s"], _prune_seconds, shows_dense=False
)
ZEROSHOT = Measure(
    "zeroshot", "zero-shot accuracy (lm-eval acc, %), higher is better", False, _zeroshot_tasks, _zeroshot_accuracy, sorted_columns=False
)
MEASURES = {measure.name: measure for measure in (PERPLEXITY, PRUNE_TIME, ZEROSHOT)}


@dataclass
class Table:
    model: str
    methods: list[str]
    columns: list[tuple[str, str]]  # (sparsity label, dataset or task)
    values: dict[tuple[str, tuple[str, str]], float]
    missing: list[str] = field(default_factory=list)
    measure: Measure = PERPLEXITY

    def row_mean(self, method: str) -> float | None:
        row = [self.values.get((method, column)) for column in self.columns]
        return None if any(value is None for value in row) or not row else sum(row) / len(row)

    def _pick(self, values: list[float]) -> float | None:
        if not values:
            return None
        return min(values) if self.measure.lower_is_better else max(values)

    def best(self, column: tuple[str, str]) -> float | None:
        return self._pick([self.values[(m, column)] for m in self.methods if m != DENSE and (m, column) in self.values])

    def best_mean(self) -> float | None:
        means = [self.row_mean(m) for m in self.methods if m != DENSE]
        return self._pick([mean for mean in means if mean is not None])


def method_of(config: dict) -> str:
    """``metric + allocator``; an allocator refining a layer-wise base other than uniform (TRIM, DSnoT) adds it: ``wanda + trim (alpha)``."""
    metric = config["metric"].get("name", "?")
    allocator = config["allocator"]
    base = allocator.get("layerwise")
    label = f"{allocator.get('name', '?')} ({base})" if base not in (None, "uniform") else allocator.get("name", "?")
    return DENSE if metric == "none" else f"{metric} + {label}"


def sparsity_of(config: dict) -> str:
    pattern = str(config["sparsity"].get("pattern", "unstructured"))
    return pattern if pattern != "unstructured" else f"{float(config['sparsity']['ratio']) * 100:g}%"


def model_of(config: dict) -> str:
    return config["model"].get("name") or model_name_from_path(config["model"]["path"])


def _sparsity_order(label: str) -> tuple[int, float, str]:
    return (0, float(label[:-1]), label) if label.endswith("%") else (1, 0.0, label)


def build_tables(documents: list[dict], datasets: list[str] | None = None, measure: Measure = PERPLEXITY) -> dict[str, Table]:
    """Tables by model name from result documents (ok and failed)."""
    by_model: dict[str, list[dict]] = {}
    for document in documents:
        by_model.setdefault(model_of(document["config"]), []).append(document)
    return {model: _table(model, docs, datasets, measure) for model, docs in sorted(by_model.items())}


def _table(model: str, documents: list[dict], datasets: list[str] | None, measure: Measure) -> Table:
    if not measure.shows_dense:
        documents = [d for d in documents if method_of(d["config"]) != DENSE]
    pruned = [d for d in documents if method_of(d["config"]) != DENSE]
    sparsities = sorted({sparsity_of(d["config"]) for d in pruned}, key=_sparsity_order) or [DENSE]  # dense only: one column group
    named = list(dict.fromkeys(name for d in documents for name in measure.columns(d["config"])))
    wanted = datasets or (sorted(named) if measure.sorted_columns else named)
    methods = sorted({method_of(d["config"]) for d in documents}, key=lambda m: (m != DENSE, m))
    columns = [(sparsity, dataset) for sparsity in sparsities for dataset in wanted]
    values: dict = {}
    sources: dict = {}
    failures: dict = {}
    for document in documents:
        method = method_of(document["config"])
        keys = columns if method == DENSE else [(sparsity_of(document["config"]), dataset) for dataset in wanted]
        for column in keys:
            if document["status"] != "ok":
                failures[(method, column)] = document
                continue
            value = measure.read(document, column[1])
            if value is None:
                continue
            if (method, column) in sources:
                raise AnalysisError(
                    f"two ok documents for {model} / {method} / {column[0]} / {column[1]}: {sources[(method, column)]} and "
                    f"{document['case_id']}; filter them apart (--experiment) or keep one results folder per grid"
                )
            values[(method, column)] = value
            sources[(method, column)] = document["case_id"]
    missing = []
    for method in methods:
        for column in columns:
            if (method, column) not in values:
                failed = failures.get((method, column))
                reason = f"failed: {failed['error']['type']}: {failed['error']['message']}" if failed and failed.get("error") else "not run"
                missing.append(f"{model} / {method} / {column[0]} / {column[1]}: {reason}")
    return Table(model, methods, columns, values, missing, measure)


def _cell(value: float | None, best: float | None, bold: tuple[str, str]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = f"{value:.2f}"
    return f"{bold[0]}{text}{bold[1]}" if best is not None and value == best else text


def _rows(table: Table, bold: tuple[str, str]) -> list[list[str]]:
    rows = []
    for method in table.methods:
        dense = method == DENSE
        cells = [_cell(table.values.get((method, c)), None if dense else table.best(c), bold) for c in table.columns]
        cells.append(_cell(table.row_mean(method), None if dense else table.best_mean(), bold))
        rows.append([method, *cells])
    return rows


def _header(table: Table) -> list[str]:
    return ["method", *[f"{sparsity} {dataset}" for sparsity, dataset in table.columns], "mean"]


def to_markdown(table: Table) -> str:
    lines = [f"**{table.model}** ({table.measure.title})", "", "| " + " | ".join(_header(table)) + " |"]
    lines.append("|" + "---|" + "---:|" * (len(table.columns) + 1))
    lines += ["| " + " | ".join(row) + " |" for row in _rows(table, ("**", "**"))]
    if table.missing:
        lines += ["", "Missing cases:", *[f"- {entry}" for entry in table.missing]]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("%", r"\%").replace("_", r"\_").replace("&", r"\&")


def to_latex(table: Table) -> str:
    lines = [f"% {table.model}: {table.measure.title}; blank = missing", r"\begin{tabular}{l" + "r" * (len(table.columns) + 1) + "}", r"\toprule"]
    lines.append(" & ".join(_latex_escape(cell) for cell in _header(table)) + r" \\")
    lines.append(r"\midrule")
    for row in _rows(table, (r"\textbf{", "}")):
        lines.append(" & ".join([_latex_escape(row[0]), *row[1:]]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% missing: {_latex_escape(entry)}" for entry in table.missing]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """Full-precision numbers, blanks for missing cells, no emphasis."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["model", *_header(table)])
    for method in table.methods:
        values = [table.values.get((method, column)) for column in table.columns] + [table.row_mean(method)]
        writer.writerow([table.model, method, *["" if v is None else repr(v) for v in values]])
    return out.getvalue()
