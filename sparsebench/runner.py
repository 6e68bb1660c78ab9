"""One case end to end: load, calibrate, prune, check sparsity, evaluate, record.

A case whose document already says ``ok`` is skipped unless ``rerun`` is set. Any error inside
the case is caught and recorded as a ``failed`` document (type, message, traceback), so a grid
goes on; the document is written atomically either way.
"""

from __future__ import annotations

import logging
import time
import traceback
from datetime import datetime, timezone

from torch import Tensor

import sparsebench
from sparsebench import environment, export, lowrank, sparsity, tracking
from sparsebench.allocators import Allocation
from sparsebench.claims import Busy, Claim, claim_case
from sparsebench.config import CaseSpec
from sparsebench.data.corpora import CORPORA, TextSource, resolve_source
from sparsebench.data.hub import hub_unreachable
from sparsebench.data.tokens import calibration_tokens, evaluation_tokens, tokenizer_fingerprint
from sparsebench.disk_cache import cached
from sparsebench.errors import ConfigError, DataError
from sparsebench.faults import inject
from sparsebench.evaluate import efficiency, zeroshot
from sparsebench.finetune.stage import run_finetune
from sparsebench.evaluate.perplexity import perplexity, segment
from sparsebench.models.loading import LoadedModel, load_model
from sparsebench.prune import PruneReport, Refinement, dense_block_summaries, prunable_layers, prune_model, refinement_for, weight_block_summaries
from sparsebench.sparsity import target_mean
from sparsebench.results import SCHEMA_VERSION, case_id, document_path, document_problem, quarantine, read_document, remove_partials, write_document
from sparsebench.trials import BlockTrials

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


def _training_source(spec: CaseSpec, corpus, split: str, stage: str, notes: dict):
    """The text a stage learns from; if it is also evaluated, say so (``notes.<stage>_overlaps_evaluation``)."""
    source = resolve_source(corpus, split, spec.data_paths.get(corpus.name))
    eval_paths = {resolve_source(c, c.eval_split, spec.data_paths.get(c.name)).path for c in spec.perplexity.corpora}
    if source.path is not None and source.path in eval_paths:
        log.warning("%s reads %s, which is also evaluated: the perplexity is not held out", stage, source.path)
        notes[f"{stage}_overlaps_evaluation"] = True
    _record_content(notes, source)
    return source


def _record_content(notes: dict, source: TextSource) -> None:
    """``notes.data_content.<corpus>.<split>``: what the case read, by content (see ``TextSource.content``)."""
    notes.setdefault("data_content", {}).setdefault(source.corpus.name, {})[source.split] = source.content()


def _calibration_ids(spec: CaseSpec, loaded: LoadedModel, timings: dict, notes: dict):
    """The calibration segments, or None when neither the metric nor the allocator reads data."""
    if not spec.reads_calibration:
        return None
    calib = spec.calibration
    source = _training_source(spec, calib.corpus, calib.split, "calibration", notes)
    started = time.perf_counter()
    ids = calibration_tokens(source, loaded.tokenizer, calib.nsamples, calib.seqlen, calib.seed, spec.cache_dir, notes["tokenizer"], notes.get("bos_token_id"))
    timings["calibration_data_s"] = time.perf_counter() - started
    notes["calibration_source"] = source.describe()
    return ids


def _dense_work_key(spec: CaseSpec, notes: dict) -> dict:
    """What a dense pass over the calibration data depends on: shared by every case of that model.

    Not the sparsity, metric or pattern: those only act after the dense pass.
    """
    calibration = spec.calibration
    bos = {"bos_token_id": notes["bos_token_id"]} if notes.get("bos_token_id") is not None else {}
    return {
        "model": {key: spec.resolved["model"].get(key) for key in ("path", "family", "dtype", "revision")},
        "tokenizer": notes["tokenizer"],
        **bos,
        "calibration": calibration.key(spec.data_paths.get(calibration.corpus.name)),
        "allocator": spec.allocator.name,
        "params": spec.allocator_params,
        "device_type": spec.device.split(":")[0],
        "version": sparsebench.__version__,
    }


def _weight_work_key(spec: CaseSpec) -> dict:
    """What a summary of the dense weights alone depends on: the model and the allocator's keys."""
    return {
        "model": {key: spec.resolved["model"].get(key) for key in ("path", "family", "dtype", "revision")},
        "allocator": spec.allocator.name,
        "params": spec.allocator_params,
        "device_type": spec.device.split(":")[0],
        "version": sparsebench.__version__,
    }


def _allocate(spec: CaseSpec, loaded: LoadedModel, calibration_ids, timings: dict, notes: dict, document: dict) -> dict:
    """Each layer's target ratio from the allocator (after its dense pass or its trial prunes, if it has them)."""
    layers = prunable_layers(loaded.model, loaded.adapter)
    started = time.perf_counter()
    summaries = None
    if spec.allocator.needs:
        summaries, shared = cached(
            spec.cache_dir, "dense", f"summaries-{spec.allocator.name}", _dense_work_key(spec, notes),
            lambda: dense_block_summaries(
                loaded.model, loaded.adapter, calibration_ids, spec.allocator.needs, spec.allocator.summarize_block,
                spec.allocator_params, spec.device, spec.offload, spec.calibration.batch_size, spec.progress,
            ),
            spec.claims.heartbeat_s, spec.claims.stale_after_s,  # cases running at once wait for the one computing it
        )
        notes["dense_summaries"] = "reused from the cache" if shared else "computed"
    elif spec.allocator.summarize_block is not None:  # the weights alone (AlphaPruning's spectra)
        summaries, shared = cached(
            spec.cache_dir, "dense", f"weight-summaries-{spec.allocator.name}", _weight_work_key(spec),
            lambda: weight_block_summaries(
                loaded.model, loaded.adapter, spec.allocator.summarize_block, spec.allocator_params, spec.device, spec.progress,
            ),
            spec.claims.heartbeat_s, spec.claims.stale_after_s,
        )
        notes["dense_summaries"] = "reused from the cache" if shared else "computed"
    trials = {}
    if spec.allocator.uses_trials:
        trials["trials"] = BlockTrials(
            loaded.model, loaded.adapter, spec.metric, spec.metric_params, spec.pattern, calibration_ids,
            spec.device, spec.offload, spec.calibration.batch_size, spec.progress,
        )
    allocation = spec.allocator.allocate(layers, spec.ratio, summaries, **trials, **spec.allocator_params)
    if not isinstance(allocation, Allocation):
        allocation = Allocation(allocation)
    timings["allocate_s"] = time.perf_counter() - started
    document["allocation"] = {
        "allocator": spec.allocator.name, "block_summaries": summaries, "block_ratios": _block_ratios(layers, allocation.ratios),
        "layer_ratios": _layer_ratios(allocation.ratios), **allocation.details,
    }
    return allocation.ratios


def _refinement(spec: CaseSpec, loaded: LoadedModel) -> Refinement | None:
    return refinement_for(spec.allocator, spec.allocator_params, spec.metric, spec.metric_params, loaded.adapter)


def _prune(spec: CaseSpec, loaded: LoadedModel, timings: dict, notes: dict, document: dict) -> PruneReport:
    calibration_ids = _calibration_ids(spec, loaded, timings, notes)
    ratios = _allocate(spec, loaded, calibration_ids, timings, notes, document)
    started = time.perf_counter()
    report = prune_model(
        loaded.model, loaded.adapter, spec.metric, spec.metric_params, ratios, spec.pattern, calibration_ids,
        spec.device, spec.offload, spec.calibration.batch_size, spec.progress, _refinement(spec, loaded),
    )
    timings["prune_s"] = time.perf_counter() - started
    timings.update({f"prune_{name}": value for name, value in report.timings.items()})
    if report.refined:  # the ratios pruned are the refined ones; the allocator's own stay as "layerwise_ratios"
        allocation = document["allocation"]
        allocation["layerwise_ratios"] = allocation["layer_ratios"]
        allocation["layer_ratios"] = _layer_ratios({name: ratio for name, (ratio, _) in report.refined.items()})
        allocation["refinement"] = {name: details for name, (_, details) in report.refined.items()}
    return report


def _block_ratios(layers, ratios) -> list[float]:
    """Mean target ratio of each block (per-row ratios averaged), for the result document."""
    per_block: dict[int, list[float]] = {}
    for layer in layers:
        per_block.setdefault(layer.block, []).append(target_mean(ratios[layer.name]))
    return [sum(values) / len(values) for _, values in sorted(per_block.items())]


def _layer_ratios(ratios) -> dict:
    """Each layer's target ratio; per-row ratios as their mean, min and max."""
    summary = {}
    for name, ratio in ratios.items():
        if isinstance(ratio, Tensor):
            summary[name] = {"mean": target_mean(ratio), "min": float(ratio.min()), "max": float(ratio.max())}
        else:
            summary[name] = float(ratio)
    return summary


def _zeroshot(spec: CaseSpec, loaded: LoadedModel, tasks: dict, timings: dict) -> dict:
    zeroshot.place(loaded.model, spec.device, spec.offload)
    lm = zeroshot.wrap_model(loaded.model, loaded.tokenizer, spec.zeroshot, spec.device, spec.progress)
    results = zeroshot.evaluate_zeroshot(lm, tasks, spec.zeroshot)
    timings.update({f"eval_zeroshot_{task.name}_s": results[task.name]["seconds"] for task in spec.zeroshot.tasks})
    return results


def _evaluate(spec: CaseSpec, loaded: LoadedModel, seqlen: int, timings: dict, notes: dict, stage: str = "") -> dict:
    """Perplexity on every configured corpus; ``stage`` (e.g. ``before_finetune``) names the timings."""
    results = {}
    for corpus in spec.perplexity.corpora:
        started = time.perf_counter()
        source = resolve_source(corpus, corpus.eval_split, spec.data_paths.get(corpus.name))
        tokens = evaluation_tokens(source, loaded.tokenizer, spec.cache_dir, notes["tokenizer"], notes.get("bos_token_id"))
        limits = [n for n in (spec.perplexity.max_segments, corpus.eval_max_segments) if n is not None]
        segments = segment(tokens, seqlen, min(limits) if limits else None, notes.get("bos_token_id"))
        result = perplexity(loaded.model, loaded.adapter, segments, spec.device, spec.offload, spec.perplexity.batch_size, spec.progress, desc=f"ppl {corpus.name}")
        results[corpus.name] = {**result.as_dict(), "source": source.describe()}
        _record_content(notes, source)
        timings[f"eval_ppl_{stage + '_' if stage else ''}{corpus.name}_s"] = time.perf_counter() - started
        log.info("%s perplexity on %s%s: %.3f (%d segments of %d tokens)", spec.model_name, corpus.name, f" ({stage})" if stage else "", result.ppl, result.segments, seqlen)
    return results


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


def _export(spec: CaseSpec, loaded: LoadedModel, case: str, dense_parameters: int, timings: dict) -> dict:
    started = time.perf_counter()
    section = export.export_model(
        loaded.model, loaded.tokenizer, spec.export, case, list(_pruned_linears(loaded)), spec.pattern, dense_parameters
    )
    timings["export_s"] = time.perf_counter() - started
    return section


def _efficiency(spec: CaseSpec, loaded: LoadedModel, timings: dict) -> dict:
    started = time.perf_counter()
    zeroshot.place(loaded.model, spec.device, spec.offload)
    result = efficiency.evaluate_efficiency(
        loaded.model, list(_pruned_linears(loaded).values()), spec.efficiency, spec.device, spec.pattern, loaded.dtype,
        loaded.context_length, spec.progress,
    )
    timings["eval_efficiency_s"] = time.perf_counter() - started
    return result


def _finetune(spec: CaseSpec, loaded: LoadedModel, timings: dict, notes: dict, document: dict, report: PruneReport | None) -> dict:
    """Recovery fine-tuning (its own document section); the pruned layers' sparsity is checked again after it.

    Returns the GPU peaks of the case before the training loop reset them.
    """
    finetune = spec.finetune
    source = _training_source(spec, finetune.corpus, finetune.split, "finetune", notes)
    started = time.perf_counter()
    outcome = run_finetune(finetune, loaded.model, loaded.tokenizer, loaded.adapter, source, spec.device, spec.cache_dir, notes["tokenizer"], spec.progress)
    timings["finetune_s"] = time.perf_counter() - started
    document["finetune"] = outcome.section
    if report is not None:  # the evaluated weights: recount and check against the targets again
        for layer in report.layers:
            layer.zeros = outcome.zeros_after[layer.name]
        document["sparsity"] = {**document["sparsity"], **sparsity.summarize(report.layers, document["model"]["parameters"])}
        sparsity.check(report.layers)
    else:  # metric=none: measured again on the evaluated weights
        shapes = {name: (layer["rows"], layer["cols"]) for name, layer in document["sparsity"]["per_layer"].items()}
        document["sparsity"] = {**document["sparsity"], **sparsity.measure(outcome.zeros_after, shapes, document["model"]["parameters"])}
    return outcome.prior_peak_gpu


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
    case = case_id(spec.resolved, spec.model_name, spec.device.split(":")[0])
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
    document = {"schema_version": SCHEMA_VERSION, "case_id": case, "status": "failed", "config": spec.resolved, "started_at": _now()}
    timings: dict[str, float] = {}
    environment.reset_peak_memory(spec.device)
    prior_peak_gpu: dict = {}
    started = time.perf_counter()
    try:
        inject(spec.fault, "load", case)
        _check_hub(spec)
        zeroshot_tasks = None
        if spec.zeroshot:  # before the model: a task whose documents cannot be had fails at once
            phase = time.perf_counter()
            zeroshot_tasks = zeroshot.load_tasks(spec.zeroshot)
            timings["zeroshot_tasks_s"] = time.perf_counter() - phase
        phase = time.perf_counter()
        loaded = load_model(spec.model_path, spec.cache_dir, spec.family, spec.dtype, spec.device, spec.offload, spec.revision, spec.trust_remote_code)
        timings["load_s"] = time.perf_counter() - phase
        facts = loaded.facts()
        document["model"] = {"name": spec.model_name, "path": spec.model_path, "location": loaded.source.location, **facts}
        notes["tokenizer"] = tokenizer_fingerprint(loaded.tokenizer)
        bos_token_id = _bos_token_id(spec, loaded)
        document["model"]["bos_per_segment"] = bos_token_id is not None
        if bos_token_id is not None:
            notes["bos_token_id"] = bos_token_id
        ppl_seqlen = _check_lengths(spec, loaded)
        if spec.efficiency:  # before pruning: a decode longer than the context fails at once
            efficiency.check_lengths(spec.efficiency, loaded.context_length)
        if spec.zeroshot:
            zeroshot.check_fits(loaded.model, spec.device, spec.offload)

        report = None
        if spec.is_dense:  # nothing pruned here; the loaded weights may be (an export): their zeros, measured
            weights = _linear_weights(loaded)
            document["sparsity"] = {
                "target": 0.0, "pattern": "dense",
                **sparsity.measure({name: sparsity.count_zeros(w) for name, w in weights.items()}, {name: tuple(w.shape) for name, w in weights.items()}, facts["parameters"]),
            }
        else:
            inject(spec.fault, "prune", case)
            report = _prune(spec, loaded, timings, notes, document)
            summary = sparsity.summarize(report.layers, facts["parameters"])
            document["sparsity"] = {"pattern": str(spec.pattern or "unstructured"), **summary}
            if report.decompositions:
                document["decomposition"] = lowrank.summarize(report.decompositions, facts["parameters"], facts["prunable_parameters"])
            sparsity.check(report.layers)

        if spec.finetune is not None:
            document["metrics"] = {}
            document["metrics"]["ppl_before_finetune"] = _evaluate(spec, loaded, ppl_seqlen, timings, notes, stage="before_finetune")
            prior_peak_gpu = _finetune(spec, loaded, timings, notes, document, report)

        if spec.export is not None:  # after fine-tuning: the model that is evaluated is the one written
            document["export"] = _export(spec, loaded, case, facts["parameters"], timings)

        inject(spec.fault, "eval", case)
        phase = time.perf_counter()
        document.setdefault("metrics", {})["ppl"] = _evaluate(spec, loaded, ppl_seqlen, timings, notes)
        if spec.zeroshot:
            document["metrics"]["zeroshot"] = _zeroshot(spec, loaded, zeroshot_tasks, timings)
        if spec.efficiency:
            document["metrics"]["efficiency"] = _efficiency(spec, loaded, timings)
        timings["eval_s"] = time.perf_counter() - phase
        inject(spec.fault, "write", case)
        document["status"] = "ok"
    except Exception as error:  # recorded, so that the grid goes on
        log.error("case %s failed: %s: %s", case, type(error).__name__, error)
        document["error"] = {"type": type(error).__name__, "message": str(error), "traceback": traceback.format_exc()}
    timings["total_s"] = time.perf_counter() - started
    document.update(
        {
            "timings": timings,
            "memory": _case_peaks(environment.peak_memory(spec.device), prior_peak_gpu),
            "notes": notes,
            "environment": environment.describe(spec.device),
            "finished_at": _now(),
        }
    )
    if not claim.held():  # another process took the case over (this one looked dead): its document wins
        log.error("case %s: the claim was taken over while it ran; this run's %s document is not written", case, document["status"])
        return document
    write_document(path, document)
    log.info("result: %s (%s)", path, document["status"])
    document = tracking.mirror(spec.tracker, document, path)  # after the local write: a mirror never loses a result
    return document
