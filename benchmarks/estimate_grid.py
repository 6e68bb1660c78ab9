"""GPU-hours of a grid preset, from measured per-case times.

    python benchmarks/estimate_grid.py --preset neuroal_grid --cases DIR [--methods FILE] [--zeroshot FILE]

``--cases`` holds the result documents that ``bench_grid_cases.py`` measured on a GPU for a
LLaMA-2-7B-shaped model (one per metric:allocator, plus the dense case). Every case of the preset
(its ``hydra.sweeper.params`` expanded, plus one dense case per model) is given the measured time
of its metric and allocator, scaled by the model's parameter count relative to the measured model
(pruning and evaluation are both linear in the parameters at a fixed token count). C4's perplexity
(256 x 2048 tokens) is the measured WikiText-2 time per segment x 256. ``--zeroshot`` is the JSON
written by ``bench_zeroshot.py`` on the same GPU for grids with zero-shot (its last line: the
default ``scoring=token_batches``): a task it measured takes its measured scoring time; any other
task is estimated as its request count (documents x choices of the split lm-eval evaluates,
``TASK_REQUESTS``) at the measured scoring rate per request; lm-eval's work around the scoring
(whole call minus scoring: building the requests from the documents, aggregating, its environment
report) is given to every task in proportion to its documents at the measured rate per document
(sparsebench evaluates all of a case's tasks in one call, so the fixed part, about 2 s, is counted
once per task: the upper side). Only PIQA's data exists offline here, so the other six
tasks are such estimates, per request: scoring now runs near the model's forward floor, so a task
with longer requests than PIQA's (~36 tokens; BoolQ's passages, HellaSwag's contexts) costs about
proportionally more per request, and the estimate is the lower side.

``--methods`` is the JSON of ``bench_methods.py`` (allocation and prune time of metric + allocator
pairs measured one after another in one process on the same GPU). A pair of the preset without a
whole-case measurement is composed from one that has it plus measured prune-time differences from
that file: (m, a) = whole(m, uniform) + [t(m, a) - t(m, uniform)], or whole(wanda, a) + [t(m, uniform)
- t(wanda, uniform)], or whole(wanda, uniform) + both differences, where t(m, a) is the measured prune
time, or t(m, uniform) + t(wanda, a) - t(wanda, uniform) where (m, a) itself was not timed. An
allocator's weight pass (AlphaPruning's spectra: its ``allocate_s``) is counted as a dense pass,
once per model with shared work. Composed pairs are listed in the output.

It prints the total with the dense work shared (an allocator's dense pass, e.g. OWL's, once per
model and calibration: what sparsebench does) and without (every case doing its own pass). The
dense baseline is one case per model in both.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path


# Parameter counts (billions) of the presets' models, from their model cards; the measured model is
# LLaMA-2-7B-shaped with SmolLM2's 49k vocabulary.
BILLIONS = {
    "opt-125m": 0.125, "opt-6.7b": 6.7, "opt-13b": 13.0, "phi-2": 2.7, "llama-7b": 6.7, "llama-13b": 13.0, "llama-30b": 32.5,
    "llama-65b": 65.2, "llama-2-7b": 6.7, "llama-2-13b": 13.0, "llama-2-70b": 69.0, "llama-3-8b": 8.0, "llama-3.1-8b": 8.0,
    "mistral-7b": 7.2, "qwen2.5-0.5b": 0.5, "qwen2.5-1.5b": 1.5, "qwen2.5-3b": 3.1, "qwen2.5-7b": 7.6, "qwen2.5-14b": 14.7,
}
C4_SEGMENTS = 256
# Requests lm-eval scores per task, 0-shot: documents of the evaluated split x answer choices
# (docs/zeroshot.md's task table); ARC has 4 choices for almost every question (a few 3 or 5).
TASK_DOCUMENTS = {"boolq": 3270, "rte": 277, "hellaswag": 10042, "winogrande": 1267, "arc_easy": 2376, "arc_challenge": 1172, "openbookqa": 500, "piqa": 1838}
TASK_CHOICES = {"boolq": 2, "rte": 2, "hellaswag": 4, "winogrande": 2, "arc_easy": 4, "arc_challenge": 4, "openbookqa": 4, "piqa": 2}
TASK_REQUESTS = {task: documents * TASK_CHOICES[task] for task, documents in TASK_DOCUMENTS.items()}


def zeroshot_seconds(measured: dict, tasks: list[str]) -> tuple[float, list[str]]:
    """Seconds of zero-shot evaluation per case at the measured size, and the tasks that were estimated."""
    measured_tasks = list(measured["requests"])
    rates = [measured["scoring_seconds_per_task"][t] / measured["requests"][t] for t in measured_tasks]
    around = [(measured["seconds_per_task"][t] - measured["scoring_seconds_per_task"][t]) / TASK_DOCUMENTS[t] for t in measured_tasks]
    per_request, per_document = sum(rates) / len(rates), sum(around) / len(around)
    total, estimated = 0.0, []
    for task in tasks:
        if task in measured["seconds_per_task"]:
            total += measured["seconds_per_task"][task]
        else:
            total += TASK_REQUESTS[task] * per_request + TASK_DOCUMENTS[task] * per_document
            estimated.append(task)
    return total, estimated


def preset_grid(preset: str) -> tuple[list[dict], list[str]]:
    """The preset's cases (its ``hydra.sweeper.params`` expanded) and zero-shot tasks, as Hydra composes it."""
    from hydra import compose, initialize_config_module

    from sparsebench.config import register_schema

    register_schema()
    with initialize_config_module(config_module="sparsebench.conf", version_base=None):
        config = compose(config_name="config", overrides=[f"+experiment={preset}"], return_hydra_config=True)
    params = dict(config.hydra.sweeper.params)
    values = [str(value).split(",") for value in params.values()]
    cases = [dict(zip(params, combination)) for combination in itertools.product(*values)]
    return cases, list((config.eval.get("zeroshot") or {}).get("tasks") or [])


def measured_times(folder: Path) -> tuple[dict, float]:
    """{(metric, allocator): {"warm": s, "dense_pass": s}}, and the measured model's size in billions.

    ``warm`` is the case's time without an allocator's dense pass; ``dense_pass`` that pass's time
    where the case computed it (0 where it reused the cached one).
    """
    times: dict = {}
    billions = None
    for path in sorted(Path(folder).glob("*.json")):
        document = json.loads(path.read_text())
        if document["status"] != "ok":
            continue
        config = document["config"]
        timings = document["timings"]
        ppl = document["metrics"]["ppl"]
        per_segment = timings["eval_ppl_wikitext2_s"] / ppl["wikitext2"]["segments"]
        total = timings["total_s"] + per_segment * C4_SEGMENTS
        computed = document.get("notes", {}).get("dense_summaries") == "computed"
        dense_pass = timings.get("allocate_s", 0.0) if computed else 0.0
        key = (config["metric"]["name"], config["allocator"]["name"])
        times[key] = {"warm": total - dense_pass, "dense_pass": dense_pass}
        billions = document["model"]["parameters"] / 1e9
    return times, billions


def method_times(path: Path) -> dict:
    """{(metric, allocator): {"prune": s, "pass": s}} from bench_methods.py's JSON (pairs with extra keys are left out)."""
    measured = json.loads(Path(path).read_text())["methods"]
    times = {}
    for label, result in measured.items():
        parts = label.split(":")
        if len(parts) == 2:
            times[tuple(parts)] = {"prune": result["prune_s"], "pass": 0.0 if result.get("weight_pass_reused") else result["allocate_s"]}
    return times


def compose(times: dict, methods: dict, metric: str, allocator: str) -> dict | None:
    """A whole-case time for (metric, allocator) from measured whole cases and measured prune-time differences."""
    def prune(m, a):
        if (m, a) in methods:
            return methods[(m, a)]["prune"]
        if (m, "uniform") in methods and ("wanda", a) in methods and ("wanda", "uniform") in methods:
            return methods[(m, "uniform")]["prune"] + methods[("wanda", a)]["prune"] - methods[("wanda", "uniform")]["prune"]
        return None

    def weight_pass(a):
        return max([0.0] + [value["pass"] for (_, allocator_name), value in methods.items() if allocator_name == a])

    def metric_difference():  # t(m, uniform) - t(wanda, uniform): the metric's own cost, where (m, a) was not timed
        if (metric, "uniform") in methods and ("wanda", "uniform") in methods:
            return methods[(metric, "uniform")]["prune"] - methods[("wanda", "uniform")]["prune"]
        return None

    for base in ((metric, "uniform"), ("wanda", allocator), ("wanda", "uniform")):
        if base not in times:
            continue
        here, there = prune(metric, allocator), prune(*base)
        if here is None and base == ("wanda", allocator) and metric_difference() is not None:
            here, there = metric_difference(), 0.0  # whole(wanda, a) + [t(m, uniform) - t(wanda, uniform)]
        if here is None or there is None:
            continue
        dense_pass = times[base]["dense_pass"] if base[1] == allocator else weight_pass(allocator)
        return {"warm": times[base]["warm"] + here - there, "dense_pass": dense_pass}
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--cases", type=Path, required=True)
    parser.add_argument("--zeroshot", type=Path, help="bench_zeroshot.py's JSON: seconds per task at the measured size")
    parser.add_argument("--methods", type=Path, help="bench_methods.py's JSON: prune times of pairs without a whole-case measurement")
    args = parser.parse_args()
    cases, tasks = preset_grid(args.preset)
    times, measured_billions = measured_times(args.cases)
    composed = []
    if args.methods:
        methods = method_times(args.methods)
        for case in cases:
            pair = (case.get("metric", "wanda"), case.get("allocator", "uniform"))
            if pair not in times:
                estimate = compose(times, methods, *pair)
                if estimate is not None:
                    times[pair] = estimate
                    composed.append(":".join(pair))
    zeroshot = json.loads(args.zeroshot.read_text()) if args.zeroshot else None

    dense_pass = {}  # allocator -> its dense pass's time at the measured size
    for (metric, allocator), measured in times.items():
        dense_pass[allocator] = max(dense_pass.get(allocator, 0.0), measured["dense_pass"])
    shared = unshared = 0.0
    models_seen_dense: set = set()
    passes_done: set = set()
    missing = set()
    for case in cases:
        model = case.get("model", "?")
        metric, allocator = case.get("metric", "wanda"), case.get("allocator", "uniform")
        measured = times.get((metric, allocator))
        if measured is None:
            missing.add(f"{metric}:{allocator}")
            continue
        scale = BILLIONS[model] / measured_billions
        zeroshot_s = zeroshot_seconds(zeroshot, tasks)[0] if zeroshot and tasks else 0.0
        base = measured["warm"] + zeroshot_s
        own_pass = dense_pass.get(allocator, 0.0)
        unshared += (base + own_pass) * scale
        first = (model, allocator) not in passes_done  # sparsebench: once per model and calibration
        passes_done.add((model, allocator))
        shared += (base + (own_pass if first else 0.0)) * scale
        models_seen_dense.add(model)
    dense = times.get(("none", "uniform"))
    if dense is None:
        missing.add("none:uniform")
    else:  # one dense baseline per model, whatever the grid's sparsities and methods (its case id says so)
        for model in sorted(models_seen_dense):
            dense_case = (dense["warm"] + zeroshot_s) * BILLIONS[model] / measured_billions
            shared += dense_case
            unshared += dense_case
    print(f"{args.preset}: {len(cases)} pruned cases + {len(models_seen_dense)} dense baselines; measured model {measured_billions:.2f} B parameters")
    if tasks:
        if zeroshot:
            seconds, estimated = zeroshot_seconds(zeroshot, tasks)
            print(f"  zero-shot ({len(tasks)} tasks): {seconds:.0f} s per case at the measured size"
                  + (f"; estimated from request counts: {', '.join(estimated)}" if estimated else ""))
        else:
            print(f"  zero-shot tasks {', '.join(tasks)} left out of the totals: pass --zeroshot")
    if composed:
        print(f"  composed from measured prune-time differences (--methods): {', '.join(sorted(composed))}")
    if missing:
        print(f"  no measurement for: {', '.join(sorted(missing))} (left out of the totals)")
    print(f"  with shared dense work (sparsebench): {shared / 3600:.1f} GPU-hours")
    print(f"  without (each case its own dense pass): {unshared / 3600:.1f} GPU-hours, "
          f"so sharing saves {(unshared - shared) / 3600:.1f} GPU-hours ({(unshared - shared) / unshared:.0%})")


if __name__ == "__main__":
    main()
