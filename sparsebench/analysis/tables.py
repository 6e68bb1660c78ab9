"""Paper-style tables: rows are methods (metric + allocator), columns sparsity x dataset, then a mean.

Cases that differ only in a replicate key (``calibration.seed`` unless told otherwise) share a cell,
shown as mean ± standard deviation (n) and compared with a baseline (``replicates.py``).

One table per model and measure (perplexity; prune time; zero-shot accuracy, the ``acc`` of each
task as Wanda, OWL, NeuroAL and TRIM report it). The best pruned value
of each column (lowest or highest, as the measure says) is bold; the dense row is shown but never
bold. A cell with no ``ok`` document stays blank and is listed in
``Table.missing`` (with the error, when the case failed): nothing is dropped silently. A cell
that cannot exist (an allocator that cannot honour an N:M pattern, say) reads ``n/a`` and is
listed as "not applicable (reason)", the reason being the one the configuration check gives.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Callable

from sparsebench.analysis.replicates import DEFAULT_ALPHA, DEFAULT_REPLICATE_KEYS, Comparison, Spread, compare, replicate_signature, replicate_values
from sparsebench.config import combination_problem, model_name_from_path

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
    shows_mean: bool = True  # False: columns of different units (efficiency), no row mean
    column_lower_is_better: Callable[[str], bool] | None = None  # per-column direction, else lower_is_better
    explain: Callable[[dict, str], str | None] | None = None  # why an ok document has no value (listed under missing)
    # The range a single measurement's value may take (from its repeats), and what it is checked against: a number,
    # or None for the dense row's range in the same column. Cells then read within or beyond noise.
    interval: Callable[[dict, str], tuple[float, float] | None] | None = None
    noise_reference: Callable[[str], float | None] | None = None
    column_problem: Callable[[str, str, str], str | None] | None = None  # (method, sparsity label, column) -> why that cell cannot exist

    def lower_is_better_for(self, column: str) -> bool:
        return self.lower_is_better if self.column_lower_is_better is None else self.column_lower_is_better(column)


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


SPEEDUP = "×"  # a speedup column's unit: a sparse path over dense-stored, in one mode


def _efficiency_columns(config: dict) -> list[str]:
    """Export size when the case exported; throughput and peak memory when it measured efficiency; the sparse
    paths' speedups. Documents from before the paths and modes (no ``eval.efficiency.modes``) keep their columns:
    dense-stored throughput and the 2:4 kernels' speedups, eager."""
    columns = []
    if (config.get("export") or {}).get("format", "none") != "none":
        columns += ["export MB", "export / dense"]
    efficiency = config["eval"].get("efficiency") or {}
    if not efficiency.get("enabled"):
        return columns
    batches = efficiency.get("decode_batches") or []
    pruned = config["metric"].get("name") != "none"
    pattern = str(config["sparsity"].get("pattern"))
    columns += ["prefill tok/s", *[f"decode b{b} tok/s" for b in batches]]
    if "modes" not in efficiency:
        columns.append("peak MB")
        if pruned and pattern == "2:4":
            columns += ["prefill speedup", *[f"decode b{b} speedup" for b in batches]]
        return columns
    from sparsebench.kernels.paths import paths_for

    modes = [mode for mode in efficiency["modes"] if mode != "eager"]  # eager is the plain columns above
    columns += [column for mode in modes for column in ([f"prefill tok/s ({mode})"] if mode != "static_eager" else []) + [f"decode b{b} tok/s ({mode})" for b in batches]]
    columns.append("peak MB")
    if pruned:
        for path in paths_for(pattern, efficiency.get("paths")):
            for mode in efficiency["modes"]:
                steps = ([] if mode == "static_eager" else ["prefill"]) + [f"decode b{b}" for b in batches]
                columns += [f"{path.name} {mode} {step} {SPEEDUP}" for step in steps]
    return columns


def _efficiency_field(column: str) -> tuple[str, float]:
    """The ``efficiency_fields`` key of a column and the scale it is shown in."""
    fixed = {"export MB": ("export_weight_bytes", 1e-6), "export / dense": ("export_vs_dense", 1.0), "peak MB": ("peak_memory_bytes", 1e-6),
             "prefill tok/s": ("prefill_tokens_per_s", 1.0), "prefill speedup": ("speedup_prefill", 1.0)}
    if column in fixed:
        return fixed[column]
    if column.endswith(f" {SPEEDUP}"):  # "<path> <mode> prefill ×" / "<path> <mode> decode b<B> ×"
        path, mode, step = column.removesuffix(f" {SPEEDUP}").split(" ", 2)
        return f"speedup_{path}_{mode}_{step.replace(' ', '_')}", 1.0
    if column.startswith("prefill tok/s ("):
        return f"dense_stored_{column.split('(')[1].rstrip(')')}_prefill_tokens_per_s", 1.0
    batch, unit = column.removeprefix("decode b").split(" ", 1)
    if unit.startswith("tok/s ("):
        return f"dense_stored_{unit.split('(')[1].rstrip(')')}_decode_b{batch}_tokens_per_s", 1.0
    return (f"decode_b{batch}_tokens_per_s" if unit == "tok/s" else f"speedup_decode_b{batch}"), 1.0


def _fields(document: dict) -> dict:
    from sparsebench.evaluate.efficiency import efficiency_fields

    return document.get("efficiency_fields") or efficiency_fields(document)


def _efficiency_value(document: dict, column: str) -> float | None:
    key, scale = _efficiency_field(column)
    value = _fields(document).get(key)
    return None if value is None else float(value) * scale


def _efficiency_range(document: dict, column: str) -> tuple[float, float] | None:
    """The range of a throughput or speedup that the interquartile ranges of its repeat times allow."""
    key, scale = _efficiency_field(column)
    fields = _fields(document)
    low, high = fields.get(f"{key}_low"), fields.get(f"{key}_high")
    return None if low is None or high is None else (float(low) * scale, float(high) * scale)


def _efficiency_gap(document: dict, column: str) -> str | None:
    skipped = _fields(document).get("skipped")
    return f"skipped: {skipped}" if skipped and ("speedup" in column or column.endswith(SPEEDUP) or "(" in column) else None


def _efficiency_column_problem(method: str, sparsity: str, column: str) -> str | None:
    """A speedup column that cannot exist for a row: the dense model has no sparse path, and each path has its patterns."""
    if not column.endswith(f" {SPEEDUP}"):
        return None
    if method == DENSE:
        return "the dense model has no sparse path"
    from sparsebench.kernels.paths import PATHS

    path = PATHS.get(column.split(" ", 1)[0])
    pattern = "unstructured" if sparsity.endswith("%") else sparsity
    if path is not None and pattern not in path.patterns:
        return f"the {path.name} path serves {', '.join(path.patterns)} sparsity, not {pattern}"
    return None


def _efficiency_noise_reference(column: str) -> float | None:
    """What a cell's range is compared with: 1.0 for a speedup (the dense-stored speed), else the dense row's range."""
    return 1.0 if column.endswith(SPEEDUP) else None


EFFICIENCY = Measure(
    "efficiency", "export size (MB of weights, share of the dense model at the same dtype), throughput (tokens/s, weights stored dense; "
    "eager unless a mode is named), peak memory (MB), speedups (×) of each sparse path over dense-stored in each mode; "
    "bold: the best pruned value", False, _efficiency_columns, _efficiency_value,
    sorted_columns=False, shows_mean=False, column_lower_is_better=lambda column: column in ("export MB", "export / dense", "peak MB"),
    explain=_efficiency_gap, interval=_efficiency_range, noise_reference=_efficiency_noise_reference,
    column_problem=_efficiency_column_problem,
)
MEASURES = {measure.name: measure for measure in (PERPLEXITY, PRUNE_TIME, ZEROSHOT, EFFICIENCY)}


@dataclass
class Table:
    model: str
    methods: list[str]
    columns: list[tuple[str, str]]  # (sparsity label, dataset or task)
    values: dict[tuple[str, tuple[str, str]], float]
    missing: list[str] = field(default_factory=list)
    measure: Measure = PERPLEXITY
    not_applicable: dict[tuple[str, tuple[str, str]], str] = field(default_factory=dict)  # cells that cannot exist, and why
    spreads: dict[tuple[str, tuple[str, str]], Spread] = field(default_factory=dict)  # each cell's replicates (values holds their mean)
    comparisons: dict[tuple[str, tuple[str, str]], Comparison] = field(default_factory=dict)  # each cell against its baseline's
    replicate_keys: tuple[str, ...] = DEFAULT_REPLICATE_KEYS
    ranges: dict[tuple[str, tuple[str, str]], tuple[float, float]] = field(default_factory=dict)  # a measurement's range over its repeats
    noise: dict[tuple[str, tuple[str, str]], str] = field(default_factory=dict)  # "within noise" / "beyond noise" of its reference

    @property
    def has_replicates(self) -> bool:
        return any(spread.n > 1 for spread in self.spreads.values())

    def row_mean(self, method: str) -> float | None:
        if not self.measure.shows_mean:
            return None
        row = [self.values.get((method, column)) for column in self.columns]
        return None if any(value is None for value in row) or not row else sum(row) / len(row)

    def _pick(self, values: list[float], lower_is_better: bool | None = None) -> float | None:
        if not values:
            return None
        lower = self.measure.lower_is_better if lower_is_better is None else lower_is_better
        return min(values) if lower else max(values)

    def best(self, column: tuple[str, str]) -> float | None:
        values = [self.values[(m, column)] for m in self.methods if m != DENSE and (m, column) in self.values]
        return self._pick(values, self.measure.lower_is_better_for(column[1]))

    def best_mean(self) -> float | None:
        means = [self.row_mean(m) for m in self.methods if m != DENSE]
        return self._pick([mean for mean in means if mean is not None])


# Metric keys that choose between readings of a method rather than a setting of one: each reading is its own row.
METRIC_VARIANT_KEYS = ("score",)  # SwiftPrune's contribution / obs_rank1


def method_of(config: dict) -> str:
    """``metric + allocator``; an allocator refining a layer-wise base other than uniform (TRIM, DSnoT) adds it: ``wanda + trim (alpha)``;
    a metric's reading (``METRIC_VARIANT_KEYS``) follows its name: ``swiftprune (contribution) + uniform``."""
    metric = config["metric"].get("name", "?")
    variants = [str(config["metric"][key]) for key in METRIC_VARIANT_KEYS if key in config["metric"]]
    if variants and metric != "none":
        metric = f"{metric} ({', '.join(variants)})"
    allocator = config["allocator"]
    base = allocator.get("layerwise")
    label = f"{allocator.get('name', '?')} ({base})" if base not in (None, "uniform") else allocator.get("name", "?")
    method = DENSE if metric == "none" else f"{metric} + {label}"
    finetune = config.get("finetune") or {}
    if finetune.get("name", "none") != "none":  # a recovered model is its own row
        method += f" + {finetune['name']}{' (merged)' if finetune.get('merge') else ''}"
    return method


def sparsity_of(config: dict) -> str:
    pattern = str(config["sparsity"].get("pattern", "unstructured"))
    return pattern if pattern != "unstructured" else f"{float(config['sparsity']['ratio']) * 100:g}%"


def model_of(config: dict) -> str:
    return config["model"].get("name") or model_name_from_path(config["model"]["path"])


def _sparsity_order(label: str) -> tuple[int, float, str]:
    return (0, float(label[:-1]), label) if label.endswith("%") else (1, 0.0, label)


def build_tables(
    documents: list[dict], datasets: list[str] | None = None, measure: Measure = PERPLEXITY,
    replicate_keys: tuple[str, ...] = DEFAULT_REPLICATE_KEYS, baseline: str | None = None, alpha: float = DEFAULT_ALPHA,
) -> dict[str, Table]:
    """Tables by model name from result documents (ok and failed).

    Documents of one cell that differ only in ``replicate_keys`` are its replicates (mean ± std);
    each pruned cell is compared with ``baseline`` (a method name, e.g. ``wanda + uniform``), by
    default the same metric with the uniform allocator.
    """
    by_model: dict[str, list[dict]] = {}
    for document in documents:
        by_model.setdefault(model_of(document["config"]), []).append(document)
    return {model: _table(model, docs, datasets, measure, tuple(replicate_keys), baseline, alpha) for model, docs in sorted(by_model.items())}


def _spreads(model: str, cells: dict, replicate_keys: tuple[str, ...]) -> dict:
    """Each cell's replicates; documents of one cell that differ in more than the replicate keys are an error."""
    spreads = {}
    for (method, column), entries in cells.items():
        ids = ", ".join(document["case_id"] for document, _ in entries)
        contents = [(document.get("notes") or {}).get("data_content") for document, _ in entries]
        by_content = all(contents)  # data by content only when every document of the cell recorded it
        signatures = {replicate_signature(document["config"], replicate_keys, content if by_content else None) for (document, _), content in zip(entries, contents)}
        if len(signatures) > 1:
            raise AnalysisError(
                f"two ok documents for {model} / {method} / {column[0]} / {column[1]} differ in more than the replicate keys "
                f"({', '.join(replicate_keys)}): {ids}; filter them apart (--experiment), keep one results folder per grid, "
                f"or name the key that differs with --replicate-key"
            )
        seen = [repr(replicate_values(document["config"], replicate_keys)) for document, _ in entries]
        if len(set(seen)) < len(seen):
            raise AnalysisError(
                f"two ok documents for {model} / {method} / {column[0]} / {column[1]} with the same replicate keys "
                f"({', '.join(replicate_keys)}): {ids}; filter them apart (--experiment) or keep one results folder per grid"
            )
        spreads[(method, column)] = Spread(tuple(value for _, value in entries))
    return spreads


def _comparisons(spreads: dict, parts: dict, baseline: str | None, alpha: float) -> dict:
    """Each pruned cell against its baseline's cell of the same column (not the baseline's own row)."""
    comparisons = {}
    for (method, column), spread in spreads.items():
        if method == DENSE:
            continue
        reference = baseline or f"{parts[method][0]} + uniform"
        if reference != method and (reference, column) in spreads:
            comparisons[(method, column)] = compare(spread, spreads[(reference, column)], reference, alpha)
    return comparisons


def _table(
    model: str, documents: list[dict], datasets: list[str] | None, measure: Measure, replicate_keys: tuple[str, ...] = DEFAULT_REPLICATE_KEYS,
    baseline: str | None = None, alpha: float = DEFAULT_ALPHA,
) -> Table:
    if not measure.shows_dense:
        documents = [d for d in documents if method_of(d["config"]) != DENSE]
    pruned = [d for d in documents if method_of(d["config"]) != DENSE]
    sparsities = sorted({sparsity_of(d["config"]) for d in pruned}, key=_sparsity_order) or [DENSE]  # dense only: one column group
    named = list(dict.fromkeys(name for d in documents for name in measure.columns(d["config"])))
    wanted = datasets or (sorted(named) if measure.sorted_columns else named)
    methods = sorted({method_of(d["config"]) for d in documents}, key=lambda m: (m != DENSE, m))
    columns = [(sparsity, dataset) for sparsity in sparsities for dataset in wanted]
    cells: dict = {}
    failures: dict = {}
    gaps: dict = {}
    for document in documents:
        method = method_of(document["config"])
        keys = columns if method == DENSE else [(sparsity_of(document["config"]), dataset) for dataset in wanted]
        for column in keys:
            if document["status"] != "ok":
                failures[(method, column)] = document
                continue
            value = measure.read(document, column[1])
            if value is None:
                gap = measure.explain(document, column[1]) if measure.explain else None
                if gap:
                    gaps[(method, column)] = gap
                continue
            cells.setdefault((method, column), []).append((document, value))
    spreads = _spreads(model, cells, replicate_keys)
    values = {key: spread.mean for key, spread in spreads.items()}
    parts = {method_of(d["config"]): (d["config"]["metric"].get("name"), d["config"]["allocator"].get("name")) for d in pruned}
    inapplicable = {}
    for method, (metric, allocator) in parts.items():
        for sparsity in sparsities:
            problem = None if sparsity.endswith("%") else combination_problem(metric, allocator, sparsity)
            if problem:
                inapplicable.update({(method, column): problem for column in columns if column[0] == sparsity})
    if measure.column_problem is not None:
        for method in methods:
            for column in columns:
                problem = measure.column_problem(method, column[0], column[1])
                if problem and (method, column) not in values:
                    inapplicable.setdefault((method, column), problem)
    missing = []
    for method in methods:
        for column in columns:
            if (method, column) in inapplicable:
                continue
            if (method, column) not in values:
                failed = failures.get((method, column))
                reason = f"failed: {failed['error']['type']}: {failed['error']['message']}" if failed and failed.get("error") else gaps.get((method, column), "not run")
                missing.append(f"{model} / {method} / {column[0]} / {column[1]}: {reason}")
    comparisons = _comparisons(spreads, parts, baseline, alpha) if any(s.n > 1 for s in spreads.values()) else {}
    ranges, noise = _noise(cells, measure)
    return Table(model, methods, columns, values, missing, measure, inapplicable, spreads, comparisons, replicate_keys, ranges, noise)


def _noise(cells: dict, measure: Measure) -> tuple[dict, dict]:
    """Each single measurement's range over its repeats, and whether it is within noise of its reference: a number
    (a speedup against 1.0) or the dense row's range in the same column (the ranges overlap)."""
    if measure.interval is None:
        return {}, {}
    ranges = {}
    for key, entries in cells.items():
        bounds = measure.interval(entries[0][0], key[1][1]) if len(entries) == 1 else None
        if bounds is not None:
            ranges[key] = bounds
    noise = {}
    for (method, column), (low, high) in ranges.items():
        reference = measure.noise_reference(column[1]) if measure.noise_reference else None
        if reference is not None:
            noise[(method, column)] = "within noise" if low <= reference <= high else "beyond noise"
        elif method != DENSE:
            dense = next((bounds for (other, (_, name)), bounds in ranges.items() if other == DENSE and name == column[1]), None)
            if dense is not None:
                noise[(method, column)] = "within noise" if low <= dense[1] and dense[0] <= high else "beyond noise"
    return ranges, noise


MARKS = {"beyond noise": " *", "within noise": " ~"}
NOISE_LEGEND = (
    "Measured values: the median of the repeats, with the range (low-high) that the interquartile ranges of the repeat times "
    "allow. Throughput: `~` within noise of the dense model's in the same column (the ranges overlap), `*` beyond. Speedup (×): "
    "a sparse path over the same weights stored dense, in one mode; `~` its range contains 1.0 (within noise), `*` it does not."
)


def _cell(
    value: float | None, best: float | None, bold: tuple[str, str], spread: Spread | None = None, comparison: Comparison | None = None, pm: str = "±",
    bounds: tuple[float, float] | None = None, noise: str | None = None,
) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = f"{value:.2f}"
    if spread is not None and spread.n > 1:
        text += f" {pm} {spread.std:.2f} ({spread.n})"
    if bounds is not None:
        text += f" ({bounds[0]:.2f}-{bounds[1]:.2f})"
    text = f"{bold[0]}{text}{bold[1]}" if best is not None and value == best else text
    verdict = comparison.verdict if comparison is not None else noise
    return text + MARKS.get(verdict, "")


NOT_APPLICABLE = "n/a"


def _rows(table: Table, bold: tuple[str, str], pm: str = "±") -> list[list[str]]:
    rows = []
    for method in table.methods:
        dense = method == DENSE
        cells = [
            NOT_APPLICABLE if (method, c) in table.not_applicable else _cell(
                table.values.get((method, c)), None if dense else table.best(c), bold, table.spreads.get((method, c)), table.comparisons.get((method, c)), pm,
                table.ranges.get((method, c)), table.noise.get((method, c)),
            )
            for c in table.columns
        ]
        if table.measure.shows_mean:
            cells.append(_cell(table.row_mean(method), None if dense else table.best_mean(), bold))
        rows.append([method, *cells])
    return rows


def _header(table: Table) -> list[str]:
    mean = ["mean"] if table.measure.shows_mean else []
    return ["method", *[f"{sparsity} {dataset}" for sparsity, dataset in table.columns], *mean]


def to_markdown(table: Table) -> str:
    lines = [f"**{table.model}** ({table.measure.title})", "", "| " + " | ".join(_header(table)) + " |"]
    lines.append("|" + "---|" + "---:|" * (len(_header(table)) - 1))
    lines += ["| " + " | ".join(row) + " |" for row in _rows(table, ("**", "**"))]
    if table.has_replicates:
        lines += ["", *_legend(table)]
        if table.comparisons:
            lines += ["", "Differences from baselines:", *[f"- {entry}" for entry in _comparison_entries(table)]]
    if table.ranges:
        lines += ["", NOISE_LEGEND]
    if table.missing:
        lines += ["", "Missing cases:", *[f"- {entry}" for entry in table.missing]]
    if table.not_applicable:
        lines += ["", "Not applicable (n/a):", *[f"- {entry}" for entry in _not_applicable_entries(table)]]
    return "\n".join(lines) + "\n"


def _legend(table: Table) -> list[str]:
    alpha = next(iter(table.comparisons.values())).alpha if table.comparisons else None
    legend = [f"Cells: mean ± sample standard deviation (number of replicates over {', '.join(table.replicate_keys)}); bold: the best mean."]
    if alpha is not None:
        legend.append(
            f"Against its baseline (the same metric with the uniform allocator unless named): `*` beyond noise, `~` within noise "
            f"(Welch's t-test, two-sided, p < {alpha:g}); no mark: no baseline, or fewer than 2 replicates on a side."
        )
    return legend


def _comparison_entries(table: Table) -> list[str]:
    entries = []
    for (method, column), comparison in table.comparisons.items():
        p = "n/a" if comparison.p_value is None else f"{comparison.p_value:.3g}"
        entries.append(
            f"{method} vs {comparison.baseline}, {column[0]} {column[1]}: {comparison.difference:+.2f} "
            f"({table.values[(method, column)]:.2f} vs {table.values[(comparison.baseline, column)]:.2f}), p = {p}: {comparison.verdict}"
        )
    return entries


def _not_applicable_entries(table: Table) -> list[str]:
    """One line per (method, sparsity) that cannot exist: ``not applicable (reason)``."""
    seen = {}
    for (method, (sparsity, _)), reason in table.not_applicable.items():
        seen.setdefault((method, sparsity), reason)
    return [f"{table.model} / {method} / {sparsity}: not applicable ({reason})" for (method, sparsity), reason in seen.items()]


def _latex_escape(text: str) -> str:
    return text.replace("\\", r"\textbackslash{}").replace("%", r"\%").replace("_", r"\_").replace("&", r"\&")


def to_latex(table: Table) -> str:
    lines = [f"% {table.model}: {table.measure.title}; blank = missing", r"\begin{tabular}{l" + "r" * (len(_header(table)) - 1) + "}", r"\toprule"]
    lines.append(" & ".join(_latex_escape(cell) for cell in _header(table)) + r" \\")
    lines.append(r"\midrule")
    for row in _rows(table, (r"\textbf{", "}"), r"$\pm$"):
        lines.append(" & ".join([_latex_escape(row[0]), *row[1:]]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% missing: {_latex_escape(entry)}" for entry in table.missing]
    lines += [f"% {_latex_escape(entry)}" for entry in _not_applicable_entries(table)]
    if table.ranges:
        lines.append(f"% {_latex_escape(NOISE_LEGEND)}")
    if table.has_replicates:
        lines += [f"% {_latex_escape(entry)}" for entry in _legend(table)]
        lines += [f"% {_latex_escape(entry)}" for entry in _comparison_entries(table)]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """Full-precision numbers, blanks for missing cells, no emphasis.

    With replicates, each column is followed by its ``std``, ``n`` and, where there is a baseline,
    the Welch p-value against it (``p vs baseline``); with measured ranges (efficiency), by the range's
    ``low`` and ``high`` and the ``noise`` verdict.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = _header(table)
    suffixes = ("", " std", " n", " p vs baseline") if table.has_replicates else ("", " low", " high", " noise") if table.ranges else None
    if suffixes:
        named = header[1 : 1 + len(table.columns)]
        header = [header[0], *[f"{name}{suffix}" for name in named for suffix in suffixes], *header[1 + len(table.columns) :]]
    writer.writerow(["model", *header])
    for method in table.methods:
        row = []
        for column in table.columns:
            value = table.values.get((method, column))
            row.append("" if value is None else repr(value))
            if table.has_replicates:
                spread, comparison = table.spreads.get((method, column)), table.comparisons.get((method, column))
                row.append("" if spread is None or spread.std is None else repr(spread.std))
                row.append("" if spread is None else str(spread.n))
                row.append("" if comparison is None or comparison.p_value is None else repr(comparison.p_value))
            elif table.ranges:
                bounds = table.ranges.get((method, column))
                row += ["", ""] if bounds is None else [repr(bounds[0]), repr(bounds[1])]
                row.append(table.noise.get((method, column), ""))
        if table.measure.shows_mean:
            mean = table.row_mean(method)
            row.append("" if mean is None else repr(mean))
        writer.writerow([table.model, method, *row])
    return out.getvalue()
