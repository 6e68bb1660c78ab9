"""Kill soak: a grid that is SIGKILLed at random moments and re-launched until it finishes.

    python benchmarks/soak_kills.py                    # 32 cases x 2 launchers, 12 kills each, W&B offline
    python benchmarks/soak_kills.py --cases 8 --kills 3 --no-wandb   # a quick look

For each launcher (Hydra's basic one, then ``gpu_pool`` with two CPU slots) a multirun of tiny
random LLaMA cases (metrics x sparsities x calibration seeds) on one results folder is started,
and after a random delay either the whole launch (launcher and its workers) or, for ``gpu_pool``,
one worker process is SIGKILLed; the grid is launched again after each launch ends, until the
requested kills have happened and a launch finishes the grid. Then it checks, and prints:

- exactly one ``ok`` document per case, none invalid, no temporary (partial) files, nothing moved
  to ``corrupt/``, no claim left behind;
- no case was run to completion again after its document was recorded (each document's
  ``started_at``, seen after any launch, is the same at the end);
- with W&B (offline): exactly one offline run per case, its id the case's, every document's mirror ok;
- the table built from the store has no missing cell.

It exits 1 if any check fails. Tiny models say nothing about pruning quality; this is about the
store surviving kills.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from sparsebench.testing.config import local_data_dir

ROOT = Path(__file__).resolve().parent.parent

WIKITEXT = local_data_dir() / "wikitext2-tok" / "test.txt"
METRICS = ("magnitude", "wanda", "sparsegpt", "ria")
RATIOS = ("0.3", "0.4", "0.5", "0.6", "0.7", "0.8")


def build_model(folder: Path) -> tuple[Path, Path]:
    """A saved tiny random LLaMA with a tokenizer trained offline, and a WikiText-2 slice."""
    from sparsebench.testing.tiny_models import VOCAB, tiny_model, whitespace_bpe_tokenizer

    corpus = folder / "wikitext2-slice.txt"
    corpus.write_text("".join(WIKITEXT.read_text().splitlines(keepends=True)[:400]))
    model = folder / "tiny-llama"
    tiny_model("llama").save_pretrained(model)
    whitespace_bpe_tokenizer(corpus, VOCAB).save_pretrained(model)
    return model, corpus


def grid_axes(cases: int) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    """``(metrics, ratios, seeds)`` whose product is the smallest grid of at least ``cases`` cases in this shape."""
    seeds = max(1, -(-cases // (len(METRICS) * len(RATIOS))))
    per_seed = -(-cases // seeds)
    metrics = METRICS[: max(1, min(len(METRICS), -(-per_seed // len(RATIOS))))]
    ratios = RATIOS[: -(-per_seed // len(metrics))]
    return metrics, ratios, seeds


def grid_overrides(model: Path, corpus: Path, results: Path, cache: Path, cases: int, wandb_dir: Path | None) -> list[str]:
    metrics, ratios, seeds = grid_axes(cases)
    overrides = [
        "-m", f"model.path={model}", "model.name=tiny-llama", f"data.wikitext2={corpus}", "calibration.dataset=wikitext2",
        "calibration.nsamples=4", "calibration.seqlen=32", "eval.ppl.seqlen=32", "eval.ppl.max_segments=4", "device=cpu",
        "progress=false", f"results_dir={results}", f"cache_dir={cache}", "experiment_name=soak", "claims.heartbeat_s=2", "claims.stale_after_s=30",
        f"metric={','.join(metrics)}", f"sparsity.ratio={','.join(ratios)}", f"calibration.seed={','.join(str(s) for s in range(seeds))}",
    ]
    if wandb_dir is not None:
        overrides += ["tracker=wandb", "tracker.wandb.mode=offline", "tracker.wandb.project=soak", f"tracker.wandb.dir={wandb_dir}"]
    return overrides


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _workers(launcher: int) -> list[int]:
    """The slot workers of a gpu_pool launch (spawned multiprocessing processes)."""
    workers = []
    for child in _children(launcher):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "spawn_main" in command:
            workers.append(child)
    return workers


def _snapshot(results: Path, recorded: dict, problems: list[str]) -> None:
    """Record each ok document's start the first time it is seen; flag any that changed or is invalid."""
    from sparsebench.results import document_problem, read_document

    for path in results.glob("*.json"):
        problem = document_problem(path)
        if problem:
            problems.append(f"invalid document {path.name}: {problem}")
            continue
        document = read_document(path)
        if document is None or document["status"] != "ok":
            continue
        first = recorded.setdefault(document["case_id"], document["started_at"])
        if first != document["started_at"]:
            problems.append(f"{document['case_id']} was run again after it was recorded ({first} -> {document['started_at']})")
            recorded[document["case_id"]] = document["started_at"]


def soak(launcher: str, workdir: Path, cases: int, kills: int, rng: random.Random, wandb: bool, max_delay_s: float) -> dict:
    model, corpus = build_model(workdir)
    results, cache = workdir / "results", workdir / "cache"
    wandb_dir = workdir / "wandb-runs" if wandb else None
    command = [sys.executable, "-m", "sparsebench.cli", *grid_overrides(model, corpus, results, cache, cases, wandb_dir)]
    if launcher == "gpu_pool":
        command += ["hydra/launcher=gpu_pool", "hydra.launcher.slots=[0,1]"]
    env = {
        **os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "WANDB_MODE": "offline",
        "WANDB_BASE_URL": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
        "WANDB_CONFIG_DIR": str(workdir / "wandb-config"), "WANDB_SILENT": "true",
    }
    recorded: dict[str, str] = {}
    problems: list[str] = []
    counts = Counter({"launches": 0, "kills": 0, "launch_kills": 0, "worker_kills": 0, "completions": 0})
    started = time.perf_counter()
    while True:
        log = workdir / f"launch-{counts['launches']:03d}.log"
        with log.open("w") as stream:
            launch = subprocess.Popen(command, cwd=workdir, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)
        counts["launches"] += 1
        while launch.poll() is None:
            if counts["kills"] >= kills:
                launch.wait()
                break
            kill_worker = launcher == "gpu_pool" and rng.random() < 0.5
            if kill_worker:  # the slot workers start only after Hydra's and the launcher's start-up: wait for them
                waited = time.monotonic() + 120
                while launch.poll() is None and not _workers(launch.pid) and time.monotonic() < waited:
                    time.sleep(0.1)
            deadline = time.monotonic() + rng.uniform(0.5, max_delay_s)
            while launch.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if launch.poll() is not None:
                break
            workers = _workers(launch.pid) if kill_worker else []
            if workers:
                os.kill(rng.choice(workers), signal.SIGKILL)  # one slot's worker dies mid-case; the launch goes on
                counts["worker_kills"] += 1
            else:
                os.killpg(launch.pid, signal.SIGKILL)  # the launch and everything it started
                launch.wait()
                counts["launch_kills"] += 1
            counts["kills"] += 1
        counts["completions"] += sum(line.count("][INFO] - result: ") for line in log.read_text().splitlines() if line.endswith("(ok)"))
        _snapshot(results, recorded, problems)
        if launch.returncode == 0 and counts["kills"] >= kills:
            break
        if counts["launches"] > 10 * kills + 20:
            problems.append(f"gave up after {counts['launches']} launches")
            break
    report = {"launcher": launcher, "cases_requested": cases, **counts, "seconds": round(time.perf_counter() - started, 1)}
    report.update(_final_checks(results, wandb_dir, recorded, problems))
    return report


def _final_checks(results: Path, wandb_dir: Path | None, recorded: dict, problems: list[str]) -> dict:
    from sparsebench.analysis.tables import build_tables
    from sparsebench.results import document_problem, read_document
    from sparsebench.tracking import validate_tracker
    from sparsebench.tracking.wandb_mirror import run_id

    _snapshot(results, recorded, problems)
    paths = sorted(results.glob("*.json"))
    documents = [read_document(path) for path in paths]
    invalid = [path.name for path in paths if document_problem(path)]
    not_ok = [d["case_id"] for d in documents if d is not None and d["status"] != "ok"]
    partials = sorted(p.name for p in results.glob(".*partial"))
    corrupt = sorted(p.name for p in (results / "corrupt").glob("*")) if (results / "corrupt").exists() else []
    claims = sorted(p.name for p in (results / ".claims").glob("*")) if (results / ".claims").exists() else []
    ids = Counter(d["case_id"] for d in documents if d is not None)
    table_missing = [entry for table in build_tables([d for d in documents if d]).values() for entry in table.missing]  # seeds: replicates
    checks = {
        "documents": len(paths), "ok_documents": sum(1 for d in documents if d and d["status"] == "ok"), "invalid_documents": invalid,
        "failed_documents": not_ok, "duplicate_case_ids": [case for case, n in ids.items() if n > 1], "partial_files": partials,
        "moved_to_corrupt": corrupt, "claims_left": claims, "table_missing_cells": table_missing,
    }
    if wandb_dir is not None:
        spec = validate_tracker({"name": "wandb", "wandb": {"mode": "offline", "project": "soak"}}, "soak").wandb
        runs = Counter(folder.name.rsplit("-", 1)[1] for folder in (wandb_dir / "wandb").glob("offline-run-*"))
        expected = {run_id(spec, d["case_id"]).rsplit("-", 1)[1] for d in documents if d}
        checks["wandb_offline_runs"] = sum(runs.values())
        checks["wandb_cases_without_one_run"] = sorted(i for i in expected if runs.get(i) != 1)
        checks["wandb_runs_of_no_case"] = sorted(set(runs) - expected)
        checks["wandb_mirrors_not_ok"] = [d["case_id"] for d in documents if d and d.get("tracking", {}).get("wandb", {}).get("status") != "ok"]
    checks["problems"] = problems
    return checks


def failed_checks(report: dict, cases: int) -> list[str]:
    failures = [f"{key}: {report[key]}" for key in report if isinstance(report[key], list) and report[key]]
    if report["ok_documents"] != cases or report["documents"] != cases:
        failures.append(f"{report['documents']} documents, {report['ok_documents']} ok, for {cases} cases")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=32, help="cases per grid (rounded up to whole metric x ratio x seed products)")
    parser.add_argument("--kills", type=int, default=12, help="kills per launcher")
    parser.add_argument("--launchers", nargs="+", default=["basic", "gpu_pool"], choices=["basic", "gpu_pool"])
    parser.add_argument(
        "--max-delay", type=float, default=20.0,
        help="a kill comes 0.5 s to this many seconds after the launch, the previous kill, or (for a worker) the workers' start",
    )
    parser.add_argument("--no-wandb", action="store_true", help="local store only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder, removed afterwards")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    failures = []
    with tempfile.TemporaryDirectory(prefix="sparsebench-soak-") as temporary:
        root = args.workdir or Path(temporary)
        for launcher in args.launchers:
            workdir = root / launcher
            workdir.mkdir(parents=True, exist_ok=True)
            report = soak(launcher, workdir, args.cases, args.kills, rng, not args.no_wandb, args.max_delay)
            metrics, ratios, seeds = grid_axes(args.cases)
            cases = len(metrics) * len(ratios) * seeds
            print(json.dumps(report))
            failed = failed_checks(report, cases)
            print(f"[{launcher}] {report['kills']} kills ({report['launch_kills']} whole launches, {report['worker_kills']} workers) over "
                  f"{report['launches']} launches, {cases} cases, {report['completions']} completed runs, {report['seconds']} s: "
                  + ("all checks passed" if not failed else "FAILED: " + "; ".join(failed)))
            failures += failed
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
