"""A grid across GPUs through the real command: ``sparsebench -m ... hydra/launcher=gpu_pool``.

    python benchmarks/bench_grid_gpus.py                         # every GPU of this machine, 1 slot each (2 on a single GPU)
    python benchmarks/bench_grid_gpus.py --gpus 0 1 2 3 --slots-per-gpu 1
    python benchmarks/bench_grid_gpus.py --cpu-smoke             # tiny shapes, 2 CPU slots: the machinery, no figures

What it runs. A model with LLaMA-2-7B's shapes (32 blocks, 4096 / 11008, vocabulary 32,000) and
RANDOM fp16 weights (N(0, 0.02), norms 1; as benchmarks/bench_case.py builds it), saved once as a
Hugging Face folder named ``random-llama-2-7b-shapes`` (so every result document's ``model.name``
and case id say "random"), with a word-level tokenizer of 32,000 made-up words ``w0 w1 ...`` and a
corpus of those words drawn uniformly at random (seeded), given to the cases as
``data.wikitext2=<folder>`` (the result documents name that folder). Random weights and random
text: the perplexities are meaningless; only times, the sharing of dense work and the fault
handling are measured. Every case runs as a user runs it, through ``python -m sparsebench.cli``
(the ``sparsebench`` command) with ``hydra/launcher=gpu_pool hydra.launcher.slots=[...]``.

1. The grid: ``metric=wanda,magnitude allocator=uniform,owl sparsity.ratio=0.5,0.7`` (8 cases),
   calibration ``--nsamples`` x 2048 tokens, perplexity on ``--eval-segments`` x 2048 tokens. While
   it runs, each GPU's utilisation is sampled at 10 Hz (NVML through nvidia-ml-py, else
   ``nvidia-smi``). Printed: wall time of the launch (Hydra's start and the workers' start included),
   the sum of the per-case times (``timings.total_s`` of the result documents), their ratio, and
   the GPU-idle fraction (share of samples at 0 % utilisation) per GPU.
2. When several slots share a GPU, the per-case times of the pool include the slowdown of sharing,
   so their sum over the wall time overstates the gain. The same grid is then also run on one slot
   (``--serial``, the default there; its own results and cache folders): the speedup printed is the
   sum of the per-case times measured alone divided by the pool's wall time, next to the ratio of the
   two walls.
3. OWL's dense pass: how many cases computed it (``notes.dense_summaries`` of the documents) and how
   many files ``cache_dir/dense`` holds; parallel cases wait for the one computing it.
4. A killed worker: a second grid (4 cases or more, enough for every slot) in the same folders,
   where one case SIGKILLs its own process after pruning, before evaluating
   (``debug.fail_at=eval debug.fail_mode=kill debug.fail_cases=GLOB``: no document is written, as
   after an OOM kill). Printed: the other cases' documents (all ``ok``, with the pid of the worker
   that ran each), then a re-launch of the same grid without the fault, which runs only the missing
   case and skips the others.

Needs hydra-core, omegaconf (and cloudpickle, nvidia-ml-py, in most GPU images) besides torch and
transformers. Exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# LLaMA-2-7B's shapes; "tiny" is for --cpu-smoke (seconds per case on a CPU).
SHAPES = {
    "llama-2-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                   "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256},
}
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
GRID = ["metric=wanda,magnitude", "allocator=uniform,owl", "sparsity.ratio=0.5,0.7"]
FAULT_VICTIM = "wanda_uniform_s0.6"  # the case of the fault grid that kills its own process


# --- the model and the text (random, labelled so) ---------------------------------------------

def random_words_tokenizer(vocab_size: int):
    """A word-level tokenizer over ``vocab_size`` entries: 3 special tokens and words ``w0 w1 ...``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": len(SPECIAL_TOKENS) + i for i in range(vocab_size - len(SPECIAL_TOKENS))})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def write_random_corpus(folder: Path, vocab_size: int, train_words: int, test_words: int, seed: int = 0) -> Path:
    """``train.txt`` and ``test.txt`` of words drawn uniformly from the tokenizer's words (100 a line)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    words = vocab_size - len(SPECIAL_TOKENS)
    for split, count in (("train", train_words), ("test", test_words)):
        lines = [" ".join(f"w{rng.randrange(words)}" for _ in range(min(100, count - start))) for start in range(0, count, 100)]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return folder


def build_model_folder(folder: str, shape: str, device: str, layers: int, seed: int = 0) -> None:
    """A LLaMA of ``shape`` (``layers`` blocks) with random weights (fp16 on a GPU), saved with the random-words tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = {**SHAPES[shape], "num_hidden_layers": layers}
    dtype = torch.float16 if device == "cuda" else torch.float32
    config = LlamaConfig(**dims, dtype=str(dtype).removeprefix("torch."))
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():  # the default init is slow per module; this is its scale
            parameter.normal_(0, 0.02, generator=generator) if parameter.dim() > 1 else parameter.fill_(1.0)
    partial = Path(f"{folder}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    random_words_tokenizer(dims["vocab_size"]).save_pretrained(partial)
    (partial / "RANDOM_WEIGHTS.txt").write_text(f"Random weights N(0, 0.02) with {shape} shapes ({layers} blocks), seed {seed}: for timing only.\n")
    os.replace(partial, folder)


def ensure_model(folder: Path, shape: str, device: str, layers: int) -> float:
    """Build the model folder once (in a spawned process, so that this one holds no GPU memory); seconds spent."""
    if (folder / "config.json").exists():
        return 0.0
    started = time.perf_counter()
    process = multiprocessing.get_context("spawn").Process(target=build_model_folder, args=(str(folder), shape, device, layers))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise SystemExit(f"building the random {shape} model failed (exit code {process.exitcode})")
    return time.perf_counter() - started


# --- GPU utilisation -----------------------------------------------------------------------------

class UtilisationSampler:
    """Samples each listed GPU's utilisation (percent of the last sample period with a kernel running)."""

    def __init__(self, gpus: list[int], hz: float = 10.0):
        self.gpus, self.period = gpus, 1.0 / hz
        self.samples: dict[int, list[int]] = {gpu: [] for gpu in gpus}
        self.source = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen | None = None

    def start(self) -> UtilisationSampler:
        if not self.gpus:
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = {gpu: pynvml.nvmlDeviceGetHandleByIndex(gpu) for gpu in self.gpus}
            self.source = "NVML (nvidia-ml-py)"
            self._thread = threading.Thread(target=self._nvml_loop, args=(pynvml, handles), daemon=True)
        except Exception as error:  # no nvidia-ml-py: nvidia-smi's loop mode
            if shutil.which("nvidia-smi") is None:
                raise SystemExit(f"cannot sample GPU utilisation: nvidia-ml-py failed ({error}) and nvidia-smi is not on PATH")
            self.source = f"nvidia-smi (nvidia-ml-py: {error})"
            command = ["nvidia-smi", f"--id={','.join(map(str, self.gpus))}", "--query-gpu=index,utilization.gpu",
                       "--format=csv,noheader,nounits", f"-lms={int(self.period * 1000)}"]
            self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._smi_loop, daemon=True)
        self._thread.start()
        return self

    def _nvml_loop(self, pynvml, handles) -> None:
        while not self._stop.is_set():
            for gpu, handle in handles.items():
                self.samples[gpu].append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            self._stop.wait(self.period)

    def _smi_loop(self) -> None:
        for line in self._process.stdout:
            index, utilisation = (part.strip() for part in line.split(","))
            if int(index) in self.samples:
                self.samples[int(index)].append(int(utilisation))

    def stop(self) -> dict[int, list[int]]:
        self._stop.set()
        if self._process is not None:
            self._process.terminate()
            self._process.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.samples


def idle_fraction(samples: list[int]) -> float:
    """Share of the samples at 0 % utilisation."""
    if not samples:
        raise ValueError("no utilisation samples")
    return sum(1 for value in samples if value == 0) / len(samples)


# --- launches and result documents ---------------------------------------------------------------

def slot_list(gpus: list[str], per_gpu: int) -> list[str]:
    """``hydra.launcher.slots``: each GPU ``per_gpu`` times, interleaved so the first slots are on different GPUs."""
    if per_gpu < 1 or not gpus:
        raise ValueError("needs at least one GPU and one slot per GPU")
    return [gpu for _ in range(per_gpu) for gpu in gpus]


def fault_ratios(slots: int) -> list[float]:
    """Sparsities of the fault grid: 4 cases per ratio, enough cases for every slot and one more."""
    candidates = [0.6, 0.55, 0.65, 0.45, 0.75, 0.4, 0.8, 0.35]
    return candidates[: max(1, math.ceil((slots + 1) / 4))]


@dataclass
class Launch:
    label: str
    wall_s: float
    returncode: int
    output: str
    utilisation: dict[int, list[int]] = field(default_factory=dict)
    sampled_by: str | None = None


def launch(label: str, overrides: list[str], log_dir: Path, sampler_gpus: list[int]) -> Launch:
    """One ``sparsebench -m`` launch (its own process), the GPUs sampled meanwhile; its output goes to ``log_dir``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "PYTHONUNBUFFERED": "1"}  # PCI order: a slot's index is NVML's index
    command = [sys.executable, "-m", "sparsebench.cli", "-m", *overrides]
    sampler = UtilisationSampler(sampler_gpus).start()
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    samples = sampler.stop()
    output = done.stdout + done.stderr
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"{label}.log").write_text(" ".join(command) + "\n\n" + output)
    return Launch(label, wall, done.returncode, output, samples, sampler.source)


def documents(results: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(results.glob("*.json"))}


def case_seconds(document: dict) -> float:
    return float(document["timings"]["total_s"])


def dense_pass_counts(docs: dict[str, dict]) -> dict[str, int]:
    """How the OWL cases got the dense pass: ``{"computed": n, "reused": m}``."""
    owl = [d for d in docs.values() if d["config"]["allocator"]["name"] == "owl" and d["status"] == "ok"]
    notes = [d.get("notes", {}).get("dense_summaries") for d in owl]
    return {"computed": notes.count("computed"), "reused": notes.count("reused from the cache"), "owl_cases": len(owl)}


def case_table(docs: dict[str, dict]) -> str:
    lines = [f"    {'case':<64} {'slot':>4} {'pid':>8} {'total':>7} {'load':>6} {'alloc':>6} {'prune':>6} {'eval':>6}  peak GPU"]
    for case, d in sorted(docs.items(), key=lambda item: item[1].get("started_at", "")):
        t, env = d["timings"], d["environment"]
        peak = d.get("memory", {}).get("peak_gpu_allocated_bytes")
        lines.append(
            f"    {case:<64} {env.get('visible_devices') or '-':>4} {env.get('pid', '-'):>8} {t.get('total_s', 0):7.1f} {t.get('load_s', 0):6.1f} "
            f"{t.get('allocate_s', 0):6.1f} {t.get('prune_s', 0):6.1f} {t.get('eval_s', 0):6.1f}  {f'{peak / 2**30:.1f} GiB' if peak else '-'}"
        )
    return "\n".join(lines)


def utilisation_line(run: Launch) -> str:
    if not run.utilisation:
        return "not sampled (no GPU)"
    parts_source = f"(sampled at 10 Hz by {run.sampled_by}): "
    parts = []
    for gpu, values in run.utilisation.items():
        if values:
            parts.append(f"GPU {gpu}: idle {idle_fraction(values):.1%} of {len(values)} samples, mean utilisation {sum(values) / len(values):.0f} %")
        else:
            parts.append(f"GPU {gpu}: no samples")
    return parts_source + "; ".join(parts)


class Checks:
    def __init__(self):
        self.failed: list[str] = []

    def __call__(self, condition: bool, what: str) -> None:
        print(f"  [{'ok' if condition else 'FAILED'}] {what}")
        if not condition:
            self.failed.append(what)


# --- the benchmark -------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", nargs="+", default=None, help="GPU indices (default: every GPU NVML sees)")
    parser.add_argument("--slots-per-gpu", type=int, default=None, help="cases at once per GPU (default: 2 on a single GPU, else 1)")
    parser.add_argument("--serial", action=argparse.BooleanOptionalAction, default=None,
                        help="also run the grid on one slot (default: when slots share a GPU)")
    parser.add_argument("--nsamples", type=int, default=None, help="calibration sequences (default 32 on GPUs)")
    parser.add_argument("--eval-segments", type=int, default=None, help="perplexity segments (default 16 on GPUs)")
    parser.add_argument("--layers", type=int, default=None, help="blocks of the model (default: the shape's, 32 for LLaMA-2-7B)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_grid_gpus"), help="model, corpus, results, caches, logs")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny random model on the CPU, 2 slots: checks the machinery")
    args = parser.parse_args()

    if args.cpu_smoke:
        shape, device, seqlen = "tiny", "cpu", 64
        gpus, per_gpu, sampler_gpus = ["0"], args.slots_per_gpu or 2, []
        nsamples, segments = args.nsamples or 4, args.eval_segments or 4
        train_words, test_words = 20_000, 2_000
    else:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        shape, device, seqlen = "llama-2-7b", "cuda", 2048
        gpus = args.gpus or [str(index) for index in range(count)]
        per_gpu = args.slots_per_gpu or (2 if len(gpus) == 1 else 1)
        sampler_gpus = [int(gpu) for gpu in gpus]
        nsamples, segments = args.nsamples or 32, args.eval_segments or 16
        train_words, test_words = 300_000, segments * seqlen + 1000
    slots = slot_list(gpus, per_gpu)
    serial = args.serial if args.serial is not None else per_gpu > 1
    work = args.work
    layers = args.layers or SHAPES[shape]["num_hidden_layers"]
    name = f"random-{shape}-shapes" + (f"-{layers}-blocks" if layers != SHAPES[shape]["num_hidden_layers"] else "")
    model_dir, corpus_dir, logs = work / name, work / "random-words", work / "logs"
    for stale in ("results", "results-serial", "cache", "cache-serial", "logs"):
        shutil.rmtree(work / stale, ignore_errors=True)

    build_s = ensure_model(model_dir, shape, device, layers)
    write_random_corpus(corpus_dir, SHAPES[shape]["vocab_size"], train_words, test_words)
    print(f"model: {model_dir} ({shape} shapes, {layers} blocks, RANDOM weights{', built in %.0f s' % build_s if build_s else ', built earlier'}); "
          f"text: random words {corpus_dir}; perplexities are meaningless, only times count")
    print(f"slots: {len(gpus)} GPU(s) {gpus} x {per_gpu} = hydra.launcher.slots=[{','.join(slots)}]; device={device}; "
          f"calibration {nsamples} x {seqlen}, perplexity {segments} x {seqlen}")

    def overrides(results: str, cache: str, run_slots: list[str], grid: list[str], sweep: str, extra=()) -> list[str]:
        return [
            "hydra/launcher=gpu_pool", f"hydra.launcher.slots=[{','.join(run_slots)}]", f"hydra.sweep.dir={logs / 'hydra' / sweep}",
            f"model.path={model_dir}", f"model.name={name}", f"data.wikitext2={corpus_dir}",
            "calibration.dataset=wikitext2", "calibration.split=train", f"calibration.nsamples={nsamples}", f"calibration.seqlen={seqlen}",
            f"eval.ppl.seqlen={seqlen}", f"eval.ppl.max_segments={segments}", f"device={device}", "progress=false",
            f"results_dir={work / results}", f"cache_dir={work / cache}", "experiment_name=bench_grid_gpus", *grid, *extra,
        ]

    check = Checks()
    figures: dict = {"slots": slots, "gpus": gpus, "slots_per_gpu": per_gpu, "shape": shape, "layers": layers, "nsamples": nsamples, "eval_segments": segments}

    # 1. the grid on the pool
    pool = launch("grid", overrides("results", "cache", slots, GRID, "grid"), logs, sampler_gpus)
    pool_docs = documents(work / "results")
    pool_sum = sum(case_seconds(d) for d in pool_docs.values())
    print(f"\n[grid] {len(pool_docs)} cases on {len(slots)} slot(s): wall {pool.wall_s:.1f} s (exit {pool.returncode}); "
          f"sum of per-case times {pool_sum:.1f} s; sum / wall {pool_sum / pool.wall_s:.2f}")
    print(case_table(pool_docs))
    print(f"  GPU utilisation {utilisation_line(pool)}")
    check(pool.returncode == 0 and len(pool_docs) == 8 and all(d["status"] == "ok" for d in pool_docs.values()), "the grid: 8 ok documents, exit 0")
    dense = dense_pass_counts(pool_docs)
    dense_files = sorted((work / "cache" / "dense").glob("summaries-owl-*.pt"))
    allocate_s = {note: [f"{d['timings']['allocate_s']:.1f}" for d in pool_docs.values() if d.get("notes", {}).get("dense_summaries") == note]
                  for note in ("computed", "reused from the cache")}
    print(f"  OWL's dense pass: computed by {dense['computed']} case (allocation {', '.join(allocate_s['computed'])} s), "
          f"reused by {dense['reused']} of the {dense['owl_cases']} OWL cases (allocation {', '.join(allocate_s['reused from the cache'])} s, "
          f"a wait for the pass included); {len(dense_files)} file(s) in cache_dir/dense")
    check(dense == {"computed": 1, "reused": 3, "owl_cases": 4} and len(dense_files) == 1, "OWL's dense pass computed once, reused by the 3 other OWL cases")
    figures["grid"] = {"wall_s": pool.wall_s, "sum_case_s": pool_sum, "cases": len(pool_docs), "dense": dense,
                       "idle_fraction": {gpu: idle_fraction(v) for gpu, v in pool.utilisation.items() if v}}

    # 2. the same grid on one slot
    if serial:
        alone = launch("serial", overrides("results-serial", "cache-serial", slots[:1], GRID, "serial"), logs, sampler_gpus[:1])
        alone_docs = documents(work / "results-serial")
        alone_sum = sum(case_seconds(d) for d in alone_docs.values())
        print(f"\n[serial] the same {len(alone_docs)} cases on 1 slot: wall {alone.wall_s:.1f} s (exit {alone.returncode}); sum of per-case times {alone_sum:.1f} s")
        print(f"  GPU utilisation {utilisation_line(alone)}")
        check(alone.returncode == 0 and len(alone_docs) == 8 and all(d["status"] == "ok" for d in alone_docs.values()), "serial grid: 8 ok documents")
        print(f"  speedup: per-case times measured alone, summed, / pool wall = {alone_sum:.1f} / {pool.wall_s:.1f} = {alone_sum / pool.wall_s:.2f}; "
              f"serial wall / pool wall = {alone.wall_s / pool.wall_s:.2f}")
        figures["serial"] = {"wall_s": alone.wall_s, "sum_case_s": alone_sum, "speedup_sum_alone_over_pool_wall": alone_sum / pool.wall_s,
                             "wall_ratio": alone.wall_s / pool.wall_s, "idle_fraction": {gpu: idle_fraction(v) for gpu, v in alone.utilisation.items() if v}}
    else:
        shared = " (slots share a GPU, so the per-case times include the slowdown of sharing; --serial measures them alone)" if per_gpu > 1 else ""
        print(f"  speedup: sum of per-case times / wall = {pool_sum / pool.wall_s:.2f}{shared}")

    # 3. a worker killed mid-case, then a re-launch
    ratios = fault_ratios(len(slots))
    fault_grid = ["metric=wanda,magnitude", "allocator=uniform,owl", f"sparsity.ratio={','.join(map(str, ratios))}"]
    before = set(pool_docs)
    killed = launch("fault", overrides("results", "cache", slots, fault_grid, "fault",
                                       ["debug.fail_at=eval", "debug.fail_mode=kill", f"debug.fail_cases=*_{FAULT_VICTIM}_*"]), logs, [])
    first = {case: d for case, d in documents(work / "results").items() if case not in before}
    victim_claims = sorted((work / "results" / ".claims").glob(f"*_{FAULT_VICTIM}_*.claim"))
    victim_pid = json.loads(victim_claims[0].read_text())["pid"] if victim_claims else None
    expected = 4 * len(ratios)
    print(f"\n[fault] {expected} cases, {FAULT_VICTIM} SIGKILLs its own worker after pruning: wall {killed.wall_s:.1f} s, exit {killed.returncode}, "
          f"'SlotCrashed' in Hydra's report: {'SlotCrashed' in killed.output}")
    print(f"  the killed case's claim is left behind by pid {victim_pid}; the documents written:")
    print(case_table(first))
    workers = {}
    for d in first.values():
        workers[d["environment"]["pid"]] = workers.get(d["environment"]["pid"], 0) + 1
    print(f"  cases finished per worker pid: {workers}; the killed worker: pid {victim_pid}")
    check(killed.returncode != 0 and "SlotCrashed" in killed.output, "the launch reports the crashed job")
    check(len(first) == expected - 1 and not any(FAULT_VICTIM in case for case in first) and all(d["status"] == "ok" for d in first.values()),
          f"the other {expected - 1} cases finished ok, the killed one left no document")
    check(victim_pid is not None, "the killed case's claim names its dead worker (the re-launch takes it over)")
    resumed = launch("relaunch", overrides("results", "cache", slots, fault_grid, "relaunch"), logs, [])
    second = {case: d for case, d in documents(work / "results").items() if case not in before}
    rerun = sorted(case for case, d in second.items() if case not in first or d["started_at"] != first[case]["started_at"])
    print(f"[relaunch] the same {expected} cases without the fault: wall {resumed.wall_s:.1f} s, exit {resumed.returncode}; "
          f"ran {len(rerun)} case(s): {', '.join(rerun)}; skipped as already done: {resumed.output.count('already done')}")
    check(resumed.returncode == 0 and len(second) == expected and all(d["status"] == "ok" for d in second.values()), f"all {expected} cases ok")
    check(len(rerun) == 1 and FAULT_VICTIM in rerun[0], "only the killed case ran again")
    all_docs = documents(work / "results")
    dense_all = dense_pass_counts(all_docs)
    print(f"  OWL's dense pass over both grids ({dense_all['owl_cases']} OWL cases): computed {dense_all['computed']}, reused {dense_all['reused']}")
    check(dense_all["computed"] == 1, "the fault grid's OWL cases reused the grid's dense pass")
    figures["fault"] = {"cases": expected, "first_launch_ok": len(first), "rerun": rerun, "relaunch_wall_s": resumed.wall_s, "dense_over_both": dense_all}

    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    print(f"\nlogs: {logs}; {len(check.failed)} check(s) failed" + (f": {check.failed}" if check.failed else ""))
    sys.exit(1 if check.failed else 0)


if __name__ == "__main__":
    main()
