"""Zero-shot accuracy with lm-evaluation-harness on the model in memory.

lm-eval is the engine, so the numbers are the ones ``lm_eval --tasks ...`` gives: the pruned
model object is wrapped in lm-eval's ``HFLM`` (never saved and reloaded), each task is lm-eval's
own definition (``zeroshot_tasks``), and ``simple_evaluate`` runs it 0-shot and scores it
(``acc`` = argmax of the choices' log-likelihoods; ``acc_norm`` = argmax of log-likelihood per
character of the choice; standard errors in closed form). One ``simple_evaluate`` call runs
every task (each task's metrics come from its own requests; its time is its share of the call).
By default the requests' forwards are run by ``zeroshot_scoring.score_requests`` (``scoring=
token_batches``: lm-eval's requests, sharing and arithmetic in batches of a padded-token budget,
with lm-eval's scores); ``scoring=hflm`` runs lm-eval's own loop.

Offline runs never wait on the network: local copies are read without ``datasets.load_dataset``;
a task read from the hub is loaded before the model (so a missing copy fails at once), after a
5-second check that the hub answers, unless the hub is switched off (``HF_HUB_OFFLINE=1`` or
``HF_DATASETS_OFFLINE=1``), where ``datasets`` reads its cache or fails at once.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import time
from dataclasses import dataclass, field

from sparsebench.data.hub import hub_unreachable
from sparsebench.errors import ConfigError, DataError
from sparsebench.evaluate.zeroshot_means import paper_means
from sparsebench.evaluate.zeroshot_tasks import LM_EVAL_VERSION, TASKS, ZeroShotTask, definition_path, local_task_config, read_local_copy

log = logging.getLogger(__name__)

# On a CPU, lm-eval's "auto" batch size always ends at max_batch_size (it halves only on CUDA
# out-of-memory errors) after five trial forwards of that many longest requests; a fixed batch
# is used there instead.
CPU_AUTO_BATCH_SIZE = 8
# How the requests' forwards are run: "token_batches" (sparsebench's ``score_requests``: lm-eval's
# requests, sharing and arithmetic, in batches of a padded-token budget) or "hflm" (lm-eval's own
# loop, batch_size requests per forward). Both give lm-eval's scores (docs/zeroshot.md).
SCORING = ("token_batches", "hflm")
# Padded tokens per forward for batch_tokens=auto. On an H200 with a LLaMA-2-7B-shaped model and
# PIQA, 8192 was the fastest of 8192, 16384 and 32768 (1.30x, 1.51x and 1.47x the forward floor):
# larger batches of requests sorted by length hold more padding (8.6 %, 15.6 %, 25 %), and 8192
# tokens already keep the GPU compute-bound (docs/zeroshot.md). On a CPU larger batches only add memory.
AUTO_BATCH_TOKENS = {"cuda": 8192, "cpu": 512}


@dataclass(frozen=True)
class ZeroShotSpec:
    tasks: tuple[ZeroShotTask, ...]
    local_copies: dict = field(default_factory=dict)  # task name -> data.<task> path
    limit: int | None = None  # documents per task (the first ones), for quick runs
    batch_size: int | str = "auto"  # scoring=hflm: requests per forward
    max_batch_size: int = 64
    scoring: str = "token_batches"
    batch_tokens: int | str = "auto"  # scoring=token_batches: padded tokens per forward


def _positive_int(key: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r}: must be an integer >= {minimum}")


def validate_zeroshot(config: dict, data_paths: dict) -> ZeroShotSpec | None:
    """Check ``eval.zeroshot`` and the local copies it reads; None when no task is asked for."""
    names = list(config.get("tasks") or [])
    if not names:
        return None
    for name in names:
        if name not in TASKS:
            raise ConfigError(f"eval.zeroshot.tasks: {name!r} is not supported; allowed values are {', '.join(TASKS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"eval.zeroshot.tasks={names}: a task is listed twice")
    limit = config.get("limit")
    if limit is not None:
        _positive_int("eval.zeroshot.limit", limit)
    batch_size = config.get("batch_size", "auto")
    if batch_size != "auto":
        _positive_int("eval.zeroshot.batch_size", batch_size)
    max_batch_size = config.get("max_batch_size", 64)
    _positive_int("eval.zeroshot.max_batch_size", max_batch_size)
    scoring = config.get("scoring", "token_batches")
    if scoring not in SCORING:
        raise ConfigError(f"eval.zeroshot.scoring={scoring!r}: allowed values are {', '.join(SCORING)}")
    batch_tokens = config.get("batch_tokens", "auto")
    if batch_tokens != "auto":
        _positive_int("eval.zeroshot.batch_tokens", batch_tokens)
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(f"eval.zeroshot.tasks needs lm-eval: pip install 'sparsebench[zeroshot]' (lm-eval=={LM_EVAL_VERSION})")
    installed = importlib.metadata.version("lm_eval")
    if installed != LM_EVAL_VERSION:
        log.warning("lm-eval %s is installed; sparsebench is written and tested against %s", installed, LM_EVAL_VERSION)
    local = {name: data_paths[name] for name in names if data_paths.get(name) is not None}
    for name, path in local.items():
        read_local_copy(TASKS[name], path)  # columns and types, before any model loads
    return ZeroShotSpec(tuple(TASKS[name] for name in names), local, limit, batch_size, max_batch_size, scoring, batch_tokens)


# ----------------------------------------------------------------------------- loading the tasks


@dataclass
class LoadedTask:
    task: ZeroShotTask
    lm_eval_task: object  # lm_eval.api.task.ConfigurableTask
    source: str


def _missing_copies(tasks: list[ZeroShotTask], why: str, local_names: list[str]) -> DataError:
    """One line per task that has no local copy and cannot come from the hub, and what else can run."""
    lines = [
        f"zero-shot task {task.name}: could not load {task.hub} from the hub: {why}; "
        f"offline, give a local copy with data.{task.name}=PATH ({task.expected_copy()})"
        for task in tasks
    ]
    if local_names:
        lines.append(f"or evaluate only the tasks that have local copies: eval.zeroshot.tasks=[{','.join(local_names)}]")
    return DataError("\n".join(lines))


def load_tasks(spec: ZeroShotSpec) -> dict[str, LoadedTask]:
    """lm-eval's task objects with their documents, local or from the hub (before the model loads)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=False)  # no scan of lm-eval's ~15k YAMLs: tasks are given by path or config
    from_hub = [task for task in spec.tasks if task.name not in spec.local_copies]
    hub_problem = hub_unreachable() if from_hub else None
    if hub_problem:  # every task that would need the hub, named at once
        raise _missing_copies(from_hub, hub_problem, [task.name for task in spec.tasks if task.name in spec.local_copies])
    loaded = {}
    for task in spec.tasks:
        path = spec.local_copies.get(task.name)
        if path is not None:
            config = local_task_config(task, read_local_copy(task, path))
            loaded[task.name] = LoadedTask(task, manager.load([config])["tasks"][task.name], str(path))
            continue
        try:
            lm_eval_task = manager.load([str(definition_path(task))])["tasks"][task.name]
        except Exception as error:  # datasets raises many types (ConnectionError offline)
            raise _missing_copies([task], f"{type(error).__name__}: {error}", []) from error
        loaded[task.name] = LoadedTask(task, lm_eval_task, f"hub:{task.hub}[{task.split}]")
    return loaded


# ----------------------------------------------------------------------------- placement


def _model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def check_fits(model, device: str, offload: bool) -> None:
    """With ``offload=true`` zero-shot runs the whole model on the GPU: fail before pruning if it cannot fit."""
    if not offload:
        return
    import torch

    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    needed = _model_bytes(model)
    if needed > 0.9 * total:
        raise ConfigError(
            f"eval.zeroshot with offload=true moves the whole model to {device} (lm-eval runs full forwards): "
            f"it needs {needed / 2**30:.1f} GiB and the GPU has {total / 2**30:.1f} GiB; use eval=ppl, or a GPU that holds the model"
        )


def place(model, device: str, offload: bool) -> None:
    """Put the whole model on ``device`` (an offloaded model lives on the CPU, parts of it elsewhere)."""
    if offload:
        log.info("zero-shot: moving the whole model (%.1f GiB) to %s", _model_bytes(model) / 2**30, device)
        model.to(device)


# ----------------------------------------------------------------------------- evaluation


def _batch_size(spec: ZeroShotSpec, device: str) -> int | str:
    if spec.batch_size == "auto" and not device.startswith("cuda"):
        return min(CPU_AUTO_BATCH_SIZE, spec.max_batch_size)
    return spec.batch_size


def batch_tokens(spec: ZeroShotSpec, device: str) -> int:
    """The padded-token budget per forward of ``scoring=token_batches``."""
    if spec.batch_tokens != "auto":
        return spec.batch_tokens
    return AUTO_BATCH_TOKENS["cuda" if device.startswith("cuda") else "cpu"]


def wrap_model(model, tokenizer, spec: ZeroShotSpec, device: str, progress: bool = True):
    """lm-eval's ``HFLM`` around the model object (it uses the model where it is; nothing is reloaded)."""
    from lm_eval.models.huggingface import HFLM

    from sparsebench.evaluate.zeroshot_scoring import encode_all, score_requests

    tokens_per_batch = batch_tokens(spec, device)

    class InMemoryLM(HFLM):
        """HFLM whose request progress bar follows sparsebench's ``progress``, which times its
        scoring (the model's forwards over all requests), apart from lm-eval's work around it, and
        which scores with ``score_requests`` when ``scoring=token_batches``."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.scoring, self.batch_tokens = spec.scoring, tokens_per_batch
            self.scoring_seconds, self.requests_scored = 0.0, 0
            self.scoring_seconds_by_task: dict = {}
            self.forward_counts: dict = {}  # token_batches: forwards, rows, tokens, padded_tokens, summed over calls
            self._encoded: dict = {}  # (string, add_special_tokens) -> tokens, during a loglikelihood call

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            if self.scoring == "hflm" or self.backend != "causal":
                return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
            return score_requests(self, requests, self.batch_tokens, disable_tqdm=disable_tqdm, counts=self.forward_counts)

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **kwargs):
            """lm-eval's encoding, read from ``encode_all``'s batch when it holds the string."""
            encoded = None if kwargs else getattr(self, "_encoded", {}).get((string, add_special_tokens))  # HFLM.__init__ may encode
            if encoded is None:
                return super().tok_encode(string, add_special_tokens=add_special_tokens, left_truncate_len=left_truncate_len, **kwargs)
            return encoded[-left_truncate_len:] if left_truncate_len else list(encoded)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            started = time.perf_counter()
            if self.scoring == "token_batches":
                self._encoded = encode_all(self, [request.args for request in requests])
            try:
                scores = super().loglikelihood(requests, disable_tqdm=disable_tqdm or not progress)
            finally:
                self._encoded = {}
            elapsed = time.perf_counter() - started
            self.scoring_seconds += elapsed
            self.requests_scored += len(requests)
            characters = {}  # one call scores every task's requests: each task's share of the time by its text
            for request in requests:
                characters[request.task_name] = characters.get(request.task_name, 0) + sum(map(len, request.args))
            total = sum(characters.values()) or 1
            for name, count in characters.items():
                self.scoring_seconds_by_task[name] = self.scoring_seconds_by_task.get(name, 0.0) + elapsed * count / total
            return scores

    return InMemoryLM(pretrained=model, tokenizer=tokenizer, batch_size=_batch_size(spec, device), max_batch_size=spec.max_batch_size)


def _task_result(loaded: LoadedTask, output: dict, seconds: float, scoring_seconds: float) -> dict:
    name = loaded.task.name
    raw = output["results"][name]
    result = {}
    for entry in loaded.lm_eval_task.config.metric_list:
        metric = entry["metric"]
        result[metric] = raw[f"{metric},none"]
        result[f"{metric}_stderr"] = raw[f"{metric}_stderr,none"]
    samples = output["n-samples"][name]
    result.update(
        documents=samples["effective"],
        documents_in_split=samples["original"],
        requests=len(loaded.lm_eval_task.instances),
        split=loaded.task.split,
        source=loaded.source,
        version=output["versions"][name],
        num_fewshot=output["n-shot"][name],
        seconds=seconds,  # the task's share of the simple_evaluate call (requests built, scored, aggregated, environment report)
        scoring_seconds=scoring_seconds,  # its share of the scoring (tokenising and the forwards), by its requests' characters
        batch_sizes=output["config"]["batch_sizes"],
    )
    return result


def evaluate_zeroshot(lm, tasks: dict[str, LoadedTask], spec: ZeroShotSpec) -> dict:
    """``metrics.zeroshot``: per task lm-eval's metrics (acc, acc_norm, stderrs), the papers' means, versions."""
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=False)
    started, scored_before, by_task_before = time.perf_counter(), lm.scoring_seconds, dict(lm.scoring_seconds_by_task)
    # one call for every task: lm-eval scores all their requests together (fuller batches) and
    # writes its environment report once; each task's metrics are computed from its own requests
    output = simple_evaluate(model=lm, tasks=[loaded.lm_eval_task for loaded in tasks.values()], num_fewshot=0, limit=spec.limit,
                             log_samples=False, task_manager=manager)
    seconds, scoring = time.perf_counter() - started, lm.scoring_seconds - scored_before
    results = {}
    for name, loaded in tasks.items():
        task_scoring = lm.scoring_seconds_by_task.get(name, 0.0) - by_task_before.get(name, 0.0)
        results[name] = _task_result(loaded, output, seconds * task_scoring / scoring if scoring else seconds / len(tasks), task_scoring)
        shown = ", ".join(f"{metric} {results[name][metric]:.4f}" for metric in ("acc", "acc_norm") if metric in results[name])
        log.info("zero-shot %s: %s (%d documents, about %.1f s)", name, shown, results[name]["documents"], results[name]["seconds"])
    results["mean"] = paper_means(results)
    results["lm_eval"] = {
        "version": importlib.metadata.version("lm_eval"),
        "num_fewshot": 0,
        "limit": spec.limit,
        "batch_size": spec.batch_size,
        "batch_size_used": lm.batch_size,
        "seconds": seconds,  # the one simple_evaluate call for all tasks
        "scoring_seconds": scoring,
        "scoring": spec.scoring,
        **({"batch_tokens": lm.batch_tokens, "forward_counts": dict(lm.forward_counts)} if spec.scoring == "token_batches" else {}),
    }
    return results
