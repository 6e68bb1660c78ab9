"""One case end to end: load, calibrate, prune, check sparsity, evaluate, record.

A case whose document already says ``ok`` is skipped unless ``rerun`` is set. Any error inside
the case is caught and recorded as a ``failed`` document (type, message, traceback), so a grid
goes on; the document is written atomically either way.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sparsebench import environment, export, lowrank, sparsity, tracking
from sparsebench.allocation import allocate, with_refinement
from sparsebench.claims import Busy, Claim, claim_case
from sparsebench.config import CaseSpec
from sparsebench.data.corpora import CORPORA, TextSource, resolve_source
from sparsebench.data.hub import hub_unreachable
from sparsebench.data.tokens import calibration_tokens, evaluation_tokens, tokenizer_fingerprint
from sparsebench.errors import ConfigError, DataError
from sparsebench.faults import inject
from sparsebench.identity import Facts
from sparsebench.evaluate import efficiency, zeroshot
from sparsebench.finetune.stage import run_finetune
from sparsebench.evaluate.perplexity import perplexity, segment
from sparsebench.models.loading import LoadedModel, load_model
from sparsebench.prune import PrunePlan, PruneReport, prune_model
from sparsebench.masks import NMPattern
from sparsebench.sparse_layout import is_2of4
from sparsebench.sparsity import LayerSparsity
from torch import Tensor
from sparsebench.results import (
    SCHEMA_VERSION, case_id, document_path, document_problem, quarantine, read_document, remove_partials, write_document,
)

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_lengths(spec: CaseSpec, loaded: LoadedModel) -> int:
    """Check sequence lengths against the model's context; returns the perplexity seqlen."""
    context = loaded.context_length
    ppl_seqlen = spec.perplexity.seqlen or min(context or spec.perplexity.max_seqlen, spec.perplexity.max_seqlen)
    if context is not None:
        if spec.metric.needs_calibration and spec.calibration.seqlen > context:
            raise ConfigError(f"calibration.seqlen={spec.calibration.seqlen}: longer than the model's context ({context})")
        if ppl_seqlen > context:
            raise ConfigError(f"eval.ppl.seqlen={ppl_seqlen}: longer than the model's context ({context})")
        if spec.finetune is not None and spec.finetune.seqlen > context:
            raise ConfigError(f"finetune.seqlen={spec.finetune.seqlen}: longer than the model's context ({context})")
    return ppl_seqlen


def _bos_token_id(spec: CaseSpec, loaded: LoadedModel) -> int | None:
    """The BOS token that starts every segment (``model.bos_per_segment``, by default the family's), or None."""
    wanted = spec.bos_per_segment if spec.bos_per_segment is not None else loaded.adapter.bos_per_segment
    if not wanted:
        return None
    bos = loaded.tokenizer.bos_token_id
    if bos is None:
        default = "" if spec.bos_per_segment else f" (the {loaded.adapter.name} family's default)"
        raise ConfigError(f"model.bos_per_segment=true{default}: the tokenizer of {spec.model_name} has no BOS token; set model.bos_per_segment=false")
    return int(bos)


@dataclass
class StageOutput:
    """What one stage adds to the case's document: its sections, timings and notes. ``run_case`` merges the
    outputs of its stages, in order, into the document once (nested sections such as ``metrics`` key by key)."""

    sections: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)


def merged(base: dict, update: dict) -> dict:
    """``base`` with ``update``'s keys, dictionaries merged key by key (neither argument is changed)."""
    result = dict(base)
    for key, value in update.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) else value
    return result


@dataclass(frozen=True)
class CaseTokens:
    """How the case tokenises: the tokenizer's fingerprint (cache keys) and the BOS token starting every segment, if any."""

    fingerprint: str
    bos_token_id: int | None


def _content_notes(source: TextSource) -> dict:
    """``notes.data_content.<corpus>.<split>``: what the case read, by content (see ``TextSource.content``)."""
    return {"data_content": {source.corpus.name: {source.split: source.content()}}}


def _training_source(spec: CaseSpec, corpus, split: str, stage: str) -> tuple[TextSource, dict]:
    """The text a stage learns from and its notes; if it is also evaluated, say so (``notes.<stage>_overlaps_evaluation``)."""
    source = resolve_source(corpus, split, spec.data_paths.get(corpus.name))
    eval_paths = {resolve_source(c, c.eval_split, spec.data_paths.get(c.name)).path for c in spec.perplexity.corpora}
    notes = {}
    if source.path is not None and source.path in eval_paths:
        log.warning("%s reads %s, which is also evaluated: the perplexity is not held out", stage, source.path)
        notes[f"{stage}_overlaps_evaluation"] = True
    return source, merged(notes, _content_notes(source))


def _calibration_ids(spec: CaseSpec, loaded: LoadedModel, tokens: CaseTokens):
    """The calibration segments (None when neither the metric nor the allocator reads data) and the stage's output."""
    if not spec.reads_calibration:
        return None, StageOutput()
    calib = spec.calibration
    source, notes = _training_source(spec, calib.corpus, calib.split, "calibration")
    started = time.perf_counter()
    ids = calibration_tokens(source, loaded.tokenizer, calib.nsamples, calib.seqlen, calib.seed, spec.cache_dir, tokens.fingerprint, tokens.bos_token_id)
    seconds = time.perf_counter() - started
    return ids, StageOutput(timings={"calibration_data_s": seconds}, notes={**notes, "calibration_source": source.describe()})


def _prune(spec: CaseSpec, loaded: LoadedModel, calibration_ids, tokens: CaseTokens, facts: dict) -> tuple[PruneReport, StageOutput]:
    """Allocate, then prune; the ``allocation``, ``sparsity`` (and ``decomposition``) sections (``facts``: the dense model's)."""
    parameters = facts["parameters"]
    allocation = allocate(spec, loaded, calibration_ids, Facts(spec.device_type, tokens.fingerprint, tokens.bos_token_id))
    started = time.perf_counter()
    plan = PrunePlan(spec.metric, spec.metric_params, allocation.ratios, spec.pattern, spec.allocator.refiner())
    report = prune_model(loaded.model, loaded.adapter, plan, calibration_ids, spec.execution(spec.calibration.batch_size))
    timings = {"allocate_s": allocation.seconds, "prune_s": time.perf_counter() - started, **{f"prune_{name}": value for name, value in report.timings.items()}}
    sections = {
        "allocation": with_refinement(allocation.section, report.refined),
        "sparsity": {"pattern": str(spec.pattern or "unstructured"), **sparsity.summarize(report.layers, parameters)},
    }
    if report.decompositions:
        sections["decomposition"] = lowrank.summarize(report.decompositions, parameters, facts["prunable_parameters"])
    notes = {} if allocation.dense_summaries is None else {"dense_summaries": allocation.dense_summaries}
    return report, StageOutput(sections, timings, notes)


def _zeroshot(spec: CaseSpec, loaded: LoadedModel, tasks: dict) -> StageOutput:
    zeroshot.place(loaded.model, spec.device, spec.offload)
    lm = zeroshot.wrap_model(loaded.model, loaded.tokenizer, spec.zeroshot, spec.device, spec.progress)
    results = zeroshot.evaluate_zeroshot(lm, tasks, spec.zeroshot)
    timings = {f"eval_zeroshot_{task.name}_s": results[task.name]["seconds"] for task in spec.zeroshot.tasks}
    return StageOutput({"metrics": {"zeroshot": results}}, timings)


def _evaluate(spec: CaseSpec, loaded: LoadedModel, seqlen: int, tokens: CaseTokens, stage: str = "") -> StageOutput:
    """Perplexity on every configured corpus, as ``metrics.ppl`` (``metrics.ppl_<stage>`` with a ``stage``, e.g. ``before_finetune``)."""
    results, timings, notes = {}, {}, {}
    for corpus in spec.perplexity.corpora:
        started = time.perf_counter()
        source = resolve_source(corpus, corpus.eval_split, spec.data_paths.get(corpus.name))
        token_ids = evaluation_tokens(source, loaded.tokenizer, spec.cache_dir, tokens.fingerprint, tokens.bos_token_id)
        limits = [n for n in (spec.perplexity.max_segments, corpus.eval_max_segments) if n is not None]
        segments = segment(token_ids, seqlen, min(limits) if limits else None, tokens.bos_token_id)
        result = perplexity(loaded.model, loaded.adapter, segments, spec.execution(spec.perplexity.batch_size), desc=f"ppl {corpus.name}")
        results[corpus.name] = {**result.as_dict(), "source": source.describe()}
        notes = merged(notes, _content_notes(source))
        timings[f"eval_ppl_{stage + '_' if stage else ''}{corpus.name}_s"] = time.perf_counter() - started
        log.info("%s perplexity on %s%s: %.3f (%d segments of %d tokens)", spec.model_name, corpus.name, f" ({stage})" if stage else "", result.ppl, result.segments, seqlen)
    return StageOutput({"metrics": {f"ppl_{stage}" if stage else "ppl": results}}, timings, notes)


def _hub_sources(spec: CaseSpec) -> list[tuple[str, str]]:
    """``(config key, hub dataset)`` for each corpus this case reads from the hub (no ``data.<name>``)."""
    needed = []
    if spec.reads_calibration and spec.calibration.corpus.name not in spec.data_paths:
        needed.append((f"calibration.dataset={spec.calibration.corpus.name}", spec.calibration.corpus))
    needed += [(f"eval.ppl.datasets: {corpus.name}", corpus) for corpus in spec.perplexity.corpora if corpus.name not in spec.data_paths]
    return [(key, corpus) for key, corpus in needed]


def _check_hub(spec: CaseSpec) -> None:
    """Before the model loads: every corpus without a local copy needs the hub, so it must answer."""
    needed = _hub_sources(spec)
    why = hub_unreachable() if needed else None
    if why:
        lines = [
            f"{key} reads {corpus.hub_path} from the hub, which cannot be reached: {why}; give a local copy with data.{corpus.name}=PATH"
            for key, corpus in needed
        ]
        local = sorted(spec.data_paths.keys() & set(CORPORA))
        if local and spec.reads_calibration and spec.calibration.corpus.name not in spec.data_paths:
            lines.append(f"or calibrate on a corpus you have a copy of: calibration.dataset={local[0]}")
        raise DataError("\n".join(lines))


def _skip(spec: CaseSpec, case: str, path, existing: dict) -> dict:
    """A finished case: nothing to run; mirror it again if its mirror is missing or failed (a kill in between)."""
    log.info("skipping %s: already done (%s); rerun=true runs it again", case, path)
    if spec.tracker.name == "local" or existing.get("tracking", {}).get(spec.tracker.name, {}).get("status") == "ok":
        return existing
    claim = claim_case(spec.results_dir, case, spec.claims.heartbeat_s, spec.claims.stale_after_s)
    if isinstance(claim, Busy):
        return existing
    with claim:
        existing = read_document(path) or existing
        if existing.get("tracking", {}).get(spec.tracker.name, {}).get("status") == "ok":
            return existing
        log.info("%s: its %s mirror is missing or failed; mirroring it again", case, spec.tracker.name)
        return tracking.mirror(spec.tracker, existing, path)
def _pruned_linears(loaded: LoadedModel) -> dict[str, object]:
    """``{full module name: linear}`` of every prunable linear (the ones pruned, or that would be)."""
    adapter = loaded.adapter
    return {
        f"{adapter.blocks}.{index}.{name}": linear
        for index, block in enumerate(adapter.get_blocks(loaded.model))
        for name, linear in adapter.get_linears(block).items()
    }


def _linear_weights(loaded: LoadedModel) -> dict[str, Tensor]:
    """``{<block>.<linear>: weight}`` of every prunable linear, named as the sparsity section names them."""
    adapter = loaded.adapter
    return {f"{index}.{name}": linear.weight for index, block in enumerate(adapter.get_blocks(loaded.model)) for name, linear in adapter.get_linears(block).items()}


def _measured_sparsity(loaded: LoadedModel, parameters: int, zeros: dict[str, int] | None = None) -> dict:
    """The zeros of every prunable linear as loaded (an export may be pruned): measured, not checked against a target."""
    weights = _linear_weights(loaded)
    counted = zeros if zeros is not None else {name: sparsity.count_zeros(weight) for name, weight in weights.items()}
    return sparsity.measure(counted, {name: tuple(weight.shape) for name, weight in weights.items()}, parameters)


def _export(spec: CaseSpec, loaded: LoadedModel, case: str, dense_parameters: int) -> StageOutput:
    started = time.perf_counter()
    section = export.export_model(
        loaded.model, loaded.tokenizer, spec.export, case, list(_pruned_linears(loaded)), spec.pattern, dense_parameters
    )
    return StageOutput({"export": section}, {"export_s": time.perf_counter() - started})


def _efficiency(spec: CaseSpec, loaded: LoadedModel) -> StageOutput:
    started = time.perf_counter()
    zeroshot.place(loaded.model, spec.device, spec.offload)
    linears = list(_pruned_linears(loaded).values())
    pattern = spec.pattern
    if spec.is_dense and linears and all(is_2of4(linear.weight) for linear in linears):  # a 2:4 export loaded back: its 2:4 paths
        pattern = NMPattern(2, 4)
    adapter = loaded.adapter
    result = efficiency.evaluate_efficiency(
        loaded.model, linears, spec.efficiency, spec.execution(1), pattern, loaded.context_length,
        features_major=adapter.mlp_input_modules(loaded.model), groups=adapter.grouped_linears(loaded.model),
    )
    return StageOutput({"metrics": {"efficiency": result}}, {"eval_efficiency_s": time.perf_counter() - started})


@dataclass
class _FinetuneResult:
    output: StageOutput
    layers: list[LayerSparsity] | None  # the pruned layers recounted after training, to check against their targets
    prior_peak_gpu: dict  # the GPU peaks of the case before the training loop reset them


def _finetune(spec: CaseSpec, loaded: LoadedModel, tokens: CaseTokens, report: PruneReport | None, parameters: int) -> _FinetuneResult:
    """Recovery fine-tuning (its own document section); the pruned layers' sparsity is recounted after it."""
    finetune = spec.finetune
    source, notes = _training_source(spec, finetune.corpus, finetune.split, "finetune")
    started = time.perf_counter()
    outcome = run_finetune(finetune, loaded, source, spec.execution(finetune.batch_size), spec.cache_dir, tokens.fingerprint)
    sections: dict = {"finetune": outcome.section}
    layers = None
    if report is not None:  # the evaluated weights: recount (checked against the targets again by run_case)
        layers = [dataclasses.replace(layer, zeros=outcome.zeros_after[layer.name]) for layer in report.layers]
        sections["sparsity"] = sparsity.summarize(layers, parameters)
    else:  # metric=none: measured again on the evaluated weights
        sections["sparsity"] = _measured_sparsity(loaded, parameters, outcome.zeros_after)
    return _FinetuneResult(StageOutput(sections, {"finetune_s": time.perf_counter() - started}, notes), layers, outcome.prior_peak_gpu)


def _case_peaks(memory: dict, prior_peak_gpu: dict) -> dict:
    """The case's peaks: the later of those measured now and those from before a stage reset them."""
    for key, value in prior_peak_gpu.items():
        if memory.get(key) is not None:
            memory[key] = max(memory[key], value)
    return memory


def run_case(spec: CaseSpec) -> dict:
    """Run one case and write its result document; returns the document.

    A finished case (``ok`` document) is skipped. A case that another live process is running
    (see ``sparsebench.claims``) is skipped too, returning ``{"status": "claimed", ...}`` without
    writing anything. A file at the document's path that is not a valid document is moved to
    ``<results_dir>/corrupt/`` and the case runs again.
    """
    case = case_id(spec.resolved, spec.model_name, spec.device_type)
    path = document_path(spec.results_dir, case)
    existing = read_document(path)
    if existing is not None and existing["status"] == "ok" and not spec.rerun:
        return _skip(spec, case, path, existing)
    claim = claim_case(spec.results_dir, case, spec.claims.heartbeat_s, spec.claims.stale_after_s)
    if isinstance(claim, Busy):
        log.warning("skipping %s: another process is running it: %s", case, claim.describe())
        return {"case_id": case, "status": "claimed", "claimed_by": claim.owner}
    with claim:
        remove_partials(spec.results_dir, case)
        notes: dict = {}
        problem = document_problem(path)
        if problem is not None:
            notes["replaced_invalid_document"] = {"moved_to": str(quarantine(path, problem)), "problem": problem}
        existing = read_document(path)
        if existing is not None and existing["status"] == "ok" and not spec.rerun:  # finished by another launch meanwhile
            return _skip(spec, case, path, existing)
        return _run_claimed(spec, case, path, claim, notes)


def _run_claimed(spec: CaseSpec, case: str, path, claim: Claim, notes: dict) -> dict:
    head = {"schema_version": SCHEMA_VERSION, "case_id": case, "status": "failed", "config": spec.resolved, "started_at": _now()}
    outputs = [StageOutput(notes=notes)]
    environment.reset_peak_memory(spec.device)
    prior_peak_gpu: dict = {}
    error = None
    started = time.perf_counter()
    try:
        inject(spec.fault, "load", case)
        _check_hub(spec)
        zeroshot_tasks = None
        if spec.zeroshot:  # before the model: a task whose documents cannot be had fails at once
            phase = time.perf_counter()
            zeroshot_tasks = zeroshot.load_tasks(spec.zeroshot)
            outputs.append(StageOutput(timings={"zeroshot_tasks_s": time.perf_counter() - phase}))
        phase = time.perf_counter()
        loaded = load_model(spec.model_path, spec.cache_dir, spec.family, spec.dtype, spec.device, spec.offload, spec.revision, spec.trust_remote_code)
        load_s = time.perf_counter() - phase
        facts = loaded.facts()
        tokens = CaseTokens(tokenizer_fingerprint(loaded.tokenizer), _bos_token_id(spec, loaded))
        model = {"name": spec.model_name, "path": spec.model_path, "location": loaded.source.location, **facts, "bos_per_segment": tokens.bos_token_id is not None}
        bos = {} if tokens.bos_token_id is None else {"bos_token_id": tokens.bos_token_id}
        outputs.append(StageOutput({"model": model}, {"load_s": load_s}, {"tokenizer": tokens.fingerprint, **bos}))
        ppl_seqlen = _check_lengths(spec, loaded)
        if spec.efficiency:  # before pruning: a decode longer than the context fails at once
            efficiency.check_lengths(spec.efficiency, loaded.context_length)
        if spec.zeroshot:
            zeroshot.check_fits(loaded.model, spec.device, spec.offload)

        report = None
        if spec.is_dense:  # nothing pruned here; the loaded weights may be (an export): their zeros, measured
            outputs.append(StageOutput({"sparsity": {"target": 0.0, "pattern": "dense", **_measured_sparsity(loaded, facts["parameters"])}}))
        else:
            inject(spec.fault, "prune", case)
            calibration_ids, calibration = _calibration_ids(spec, loaded, tokens)
            outputs.append(calibration)
            report, pruned = _prune(spec, loaded, calibration_ids, tokens, facts)
            outputs.append(pruned)
            sparsity.check(report.layers)

        if spec.finetune is not None:
            outputs.append(_evaluate(spec, loaded, ppl_seqlen, tokens, stage="before_finetune"))
            finetuned = _finetune(spec, loaded, tokens, report, facts["parameters"])
            outputs.append(finetuned.output)
            prior_peak_gpu = finetuned.prior_peak_gpu
            if finetuned.layers is not None:
                sparsity.check(finetuned.layers)

        if spec.export is not None:  # after fine-tuning: the model that is evaluated is the one written
            outputs.append(_export(spec, loaded, case, facts["parameters"]))

        inject(spec.fault, "eval", case)
        phase = time.perf_counter()
        outputs.append(_evaluate(spec, loaded, ppl_seqlen, tokens))
        if spec.zeroshot:
            outputs.append(_zeroshot(spec, loaded, zeroshot_tasks))
        if spec.efficiency:
            outputs.append(_efficiency(spec, loaded))
        outputs.append(StageOutput(timings={"eval_s": time.perf_counter() - phase}))
        inject(spec.fault, "write", case)
        head["status"] = "ok"
    except Exception as exception:  # recorded, so that the grid goes on
        log.error("case %s failed: %s: %s", case, type(exception).__name__, exception)
        error = {"type": type(exception).__name__, "message": str(exception), "traceback": traceback.format_exc()}
    outputs.append(StageOutput(timings={"total_s": time.perf_counter() - started}))
    document = _assemble(head, outputs, error, _case_peaks(environment.peak_memory(spec.device), prior_peak_gpu), spec.device)
    if not claim.held():  # another process took the case over (this one looked dead): its document wins
        log.error("case %s: the claim was taken over while it ran; this run's %s document is not written", case, document["status"])
        return document
    write_document(path, document)
    log.info("result: %s (%s)", path, document["status"])
    document = tracking.mirror(spec.tracker, document, path)  # after the local write: a mirror never loses a result
    return document


def _assemble(head: dict, outputs: list[StageOutput], error: dict | None, memory: dict, device: str) -> dict:
    """The result document, once: the head, every stage's sections in order, the error if any, then timings,
    memory, notes and the environment."""
    document, timings, notes = dict(head), {}, {}
    for output in outputs:
        document = merged(document, output.sections)
        timings = merged(timings, output.timings)
        notes = merged(notes, output.notes)
    if error is not None:
        document["error"] = error
    tail = {"timings": timings, "memory": memory, "notes": notes, "environment": environment.describe(device), "finished_at": _now()}
    return {**document, **tail}
