"""The configuration's validation into a plain ``CaseSpec``.

The schema's dataclasses (``sparsebench.schema``) are registered with Hydra, so a misspelt key
fails at composition. The values are then checked by ``validate`` before any model is loaded; each problem is one
``ConfigError`` line naming the key and the allowed values. Nothing below the CLI sees Hydra or
OmegaConf: it gets a ``CaseSpec`` of plain values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsebench.allocators import ALLOCATORS, Allocator
from sparsebench.blockwalk import Execution
from sparsebench.data.corpora import CORPORA, Corpus, corpus_named, resolve_source
from sparsebench.errors import ConfigError, DataError
from sparsebench.evaluate.efficiency import EfficiencySpec, validate_efficiency
from sparsebench.evaluate.zeroshot import ZeroShotSpec, validate_zeroshot
from sparsebench.export import ExportSpec, validate_export
from sparsebench.evaluate.zeroshot_tasks import TASKS as ZERO_SHOT_TASKS
from sparsebench.faults import NO_FAULT, FaultSpec, validate_fault
from sparsebench.finetune import FinetuneSpec, validate_finetune
from sparsebench.masks import NMPattern, parse_pattern
from sparsebench.metrics import METRICS, MetricSpec
from sparsebench.models.adapters import supported_families
from sparsebench.models.loading import DTYPES
from sparsebench.models.sources import check_path, parse_pypi
from sparsebench.schema import Config
from sparsebench.tracking import LOCAL_TRACKER, TrackerSpec, validate_tracker

def log_root(results_dir: str) -> str:
    """Where Hydra writes a run's logs: ``results_dir``, or a temporary folder if that cannot be written.

    Hydra creates its log folder before sparsebench sees the configuration; a read-only results
    folder would end in Hydra's traceback. With this stand-in Hydra starts, and the CLI then stops
    with one line naming ``results_dir`` (``results.check_results_dir``) before any case runs.
    """
    folder = Path(results_dir).expanduser()
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        return results_dir
    import tempfile

    return str(Path(tempfile.gettempdir()) / f"sparsebench-logs-{os.getuid()}")


def register_schema() -> None:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name="sparsebench_schema", node=Config)
    if not OmegaConf.has_resolver("sparsebench_log_root"):
        OmegaConf.register_new_resolver("sparsebench_log_root", log_root)


# ----------------------------------------------------------------------------- validated spec


@dataclass(frozen=True)
class CalibrationSpec:
    corpus: Corpus
    split: str
    nsamples: int
    seqlen: int
    seed: int
    batch_size: int


@dataclass(frozen=True)
class PerplexitySpec:
    corpora: tuple[Corpus, ...]
    seqlen: int | None
    max_seqlen: int
    max_segments: int | None
    batch_size: int


@dataclass(frozen=True)
class ClaimsSpec:
    heartbeat_s: float = 30.0
    stale_after_s: float = 300.0


@dataclass(frozen=True)
class CaseSpec:
    model_path: str
    model_name: str
    family: str
    dtype: str
    revision: str | None
    trust_remote_code: bool
    ratio: float  # 0 for the dense model
    pattern: NMPattern | None
    metric: MetricSpec
    metric_params: dict
    allocator: Allocator  # bound to this case's metric
    allocator_params: dict
    calibration: CalibrationSpec
    perplexity: PerplexitySpec
    data_paths: dict[str, str]
    device: str
    offload: bool
    results_dir: Path
    cache_dir: Path
    rerun: bool
    progress: bool
    resolved: dict  # the full resolved configuration, recorded in the result document
    tracker: TrackerSpec = LOCAL_TRACKER
    fault: FaultSpec = NO_FAULT
    zeroshot: ZeroShotSpec | None = None  # None: no zero-shot evaluation
    claims: ClaimsSpec = ClaimsSpec()
    export: ExportSpec | None = None  # None: export=none
    efficiency: EfficiencySpec | None = None  # None: no efficiency evaluation
    finetune: FinetuneSpec | None = None  # None: no fine-tuning after pruning
    bos_per_segment: bool | None = None  # None: the family adapter's default

    @property
    def device_type(self) -> str:
        """``cpu`` or ``cuda``: in the case id and the cache keys (the device's index is not)."""
        return self.device.split(":")[0]

    @property
    def is_dense(self) -> bool:
        return self.metric.prune is None

    def execution(self, batch_size: int) -> Execution:
        """How this case runs the blocks, in micro-batches of ``batch_size`` sequences."""
        return Execution(self.device, self.offload, batch_size, self.progress)

    @property
    def reads_calibration(self) -> bool:
        """Whether the metric or the allocator reads calibration data."""
        return self.metric.needs_calibration or self.allocator.reads.calibration


def _choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: allowed values are {', '.join(map(str, allowed))}")


def _positive(key: str, value: Any, minimum: int = 1) -> None:
    if not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}={value!r}: must be an integer >= {minimum}")


def _decomposition_params(metric: MetricSpec, rank: Any) -> dict:
    """``{"rank": rank}`` for a metric with a low-rank part; nothing (and no rank allowed) for the others."""
    if not metric.low_rank:
        if rank is not None:
            with_rank = [name for name in METRICS.names() if METRICS.get(name).low_rank]
            raise ConfigError(f"decomposition.rank={rank!r}: metric={metric.name!r} has no low-rank part; metrics that do: {', '.join(with_rank)}")
        return {}
    if rank is None:
        raise ConfigError(f"decomposition.rank: required by metric={metric.name!r} (a positive integer, e.g. 64)")
    _positive("decomposition.rank", rank)
    return {"rank": rank}


def nm_problem(allocator: Allocator | type[Allocator], pattern: NMPattern) -> str | None:
    """Why ``allocator`` cannot prune to the N:M ``pattern``, or None (also used by the tables' "not applicable")."""
    if allocator.supports_nm:
        return None
    supporting = [name for name in ALLOCATORS.names() if ALLOCATORS.get(name).supports_nm]
    return (
        f"allocator={allocator.name!r} cannot honour sparsity.pattern={pattern} (N:M fixes every layer's ratio); "
        f"allocators that can: {', '.join(supporting)}"
    )


def combination_problem(metric_name: str, allocator_name: str, pattern: str) -> str | None:
    """Why a (metric, allocator, pattern) combination cannot be run, with default keys; None if it can."""
    try:
        metric = METRICS.get(metric_name)
        allocator = ALLOCATORS.get(allocator_name)
        allocator(allocator.make_params({}), metric, metric.make_params({}))
        parsed = parse_pattern(pattern)
    except (ConfigError, ValueError) as error:
        return str(error)
    return None if parsed is None else nm_problem(allocator, parsed)


def _check_local_copies(data_paths: dict[str, str], splits: list[tuple[Corpus, str]]) -> None:
    """Each local corpus copy has a file for every split the case reads (checked before any model loads)."""
    for corpus, split in splits:
        if corpus.name in data_paths:
            try:
                resolve_source(corpus, split, data_paths[corpus.name])
            except DataError as error:
                raise ConfigError(str(error)) from None


def _positive_number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{key}={value!r}: must be a number > 0")
    return float(value)


def _claims(config: dict) -> ClaimsSpec:
    claims = config.get("claims") or {}
    heartbeat = _positive_number("claims.heartbeat_s", claims.get("heartbeat_s", 30.0))
    stale = _positive_number("claims.stale_after_s", claims.get("stale_after_s", 300.0))
    if stale < 2 * heartbeat:
        raise ConfigError(f"claims.stale_after_s={stale:g}: must be at least twice claims.heartbeat_s={heartbeat:g}, or live claims look stale")
    return ClaimsSpec(heartbeat, stale)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r}: no CUDA GPU is visible to PyTorch; use device=cpu or device=auto")
        return device
    raise ConfigError(f"device={device!r}: allowed values are auto, cpu, cuda, cuda:N")


def model_name_from_path(path: str) -> str:
    pypi = parse_pypi(path)
    tail = pypi.name if pypi is not None else path.split("#", 1)[0].rstrip("/").split("/")[-1]
    return tail.removesuffix(".gguf") or "model"


def validate(config: dict) -> CaseSpec:
    """Check every value of a resolved configuration; returns the plain spec of one case."""
    model = config["model"]
    if not model.get("path") or model["path"] == "???":
        raise ConfigError("model.path: required (a hub id, a local folder, a .gguf file, or pick a preset with model=NAME)")
    check_path(model["path"])
    _choice("model.family", model["family"], ["auto", *supported_families()])
    _choice("model.dtype", model["dtype"], ["auto", *DTYPES])

    if "name" not in config["metric"]:
        raise ConfigError(f"metric.name: required; allowed values are {', '.join(METRICS.names())}")
    metric = METRICS.get(config["metric"]["name"])
    metric_params = metric.make_params({k: v for k, v in config["metric"].items() if k != "name"})
    metric_params.update(_decomposition_params(metric, (config.get("decomposition") or {}).get("rank")))
    if "name" not in config["allocator"]:
        raise ConfigError(f"allocator.name: required; allowed values are {', '.join(ALLOCATORS.names())}")
    allocator_class = ALLOCATORS.get(config["allocator"]["name"])
    allocator_params = allocator_class.make_params({k: v for k, v in config["allocator"].items() if k != "name"})
    allocator = allocator_class(allocator_params, metric, metric_params)

    sparsity = config["sparsity"]
    try:
        pattern = parse_pattern(str(sparsity["pattern"]))
    except ValueError as error:
        raise ConfigError(f"sparsity.pattern: {error}") from None
    ratio = sparsity["ratio"]
    if not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise ConfigError(f"sparsity.ratio={ratio!r}: must be a number in (0, 1)")
    if pattern is not None:
        if abs(ratio - pattern.ratio) > 1e-9:
            raise ConfigError(
                f"sparsity.ratio={ratio} contradicts sparsity.pattern={pattern} (which prunes {pattern.n} of every "
                f"{pattern.m} = {pattern.ratio:g}); set sparsity.ratio={pattern.ratio:g} or sparsity.pattern=unstructured"
            )
        problem = nm_problem(allocator, pattern)
        if problem:
            raise ConfigError(problem)

    calibration = config["calibration"]
    calibration_corpus = corpus_named(calibration["dataset"], "calibration.dataset")
    _choice("calibration.split", calibration["split"], ["train", "validation", "test"])
    _positive("calibration.nsamples", calibration["nsamples"])
    _positive("calibration.seqlen", calibration["seqlen"], 2)
    _positive("calibration.batch_size", calibration["batch_size"])
    if not isinstance(calibration["seed"], int):
        raise ConfigError(f"calibration.seed={calibration['seed']!r}: must be an integer")

    ppl = config["eval"]["ppl"]
    corpora = tuple(corpus_named(name, "eval.ppl.datasets") for name in ppl["datasets"])
    if ppl["seqlen"] is not None:
        _positive("eval.ppl.seqlen", ppl["seqlen"], 2)
    _positive("eval.ppl.max_seqlen", ppl["max_seqlen"], 2)
    if ppl["max_segments"] is not None:
        _positive("eval.ppl.max_segments", ppl["max_segments"])
    _positive("eval.ppl.batch_size", ppl["batch_size"])

    data_paths = {name: path for name, path in config["data"].items() if path is not None}
    for name, path in data_paths.items():
        if name not in CORPORA and name not in ZERO_SHOT_TASKS:
            raise ConfigError(f"data.{name}: not a known dataset; allowed: {', '.join([*sorted(CORPORA), *ZERO_SHOT_TASKS])}")
        if not Path(path).expanduser().exists():
            raise ConfigError(f"data.{name}={path!r}: no such file or folder")
    zeroshot = validate_zeroshot(config["eval"].get("zeroshot") or {}, data_paths)
    reads = [(corpus, corpus.eval_split) for corpus in corpora]
    if metric.needs_calibration or allocator.reads.calibration:
        reads.append((calibration_corpus, calibration["split"]))
    _check_local_copies(data_paths, reads)
    efficiency = validate_efficiency(config["eval"].get("efficiency") or {})
    export = validate_export(config.get("export"), None if metric.prune is None else pattern, Path(config["results_dir"]).expanduser())

    finetune = validate_finetune(config.get("finetune"), model["family"])

    device = resolve_device(config["device"])
    if config["offload"] and not device.startswith("cuda"):
        raise ConfigError(f"offload=true keeps the model on the CPU and moves blocks to a GPU; it needs device=cuda (device resolved to {device!r})")
    if finetune is not None and config["offload"]:
        raise ConfigError("finetune=lora trains the whole model on the device; it needs offload=false (or finetune=none)")
    if finetune is not None and finetune.autocast in ("bfloat16", "float16") and not device.startswith("cuda"):
        raise ConfigError(f"finetune.autocast={finetune.autocast}: half-precision autocast is for GPUs; on device={device!r} use auto or none")

    return CaseSpec(
        model_path=model["path"],
        model_name=model.get("name") or model_name_from_path(model["path"]),
        family=model["family"],
        dtype=model["dtype"],
        revision=model.get("revision"),
        trust_remote_code=bool(model.get("trust_remote_code", False)),
        bos_per_segment=model.get("bos_per_segment"),
        ratio=0.0 if metric.prune is None else float(ratio),
        pattern=None if metric.prune is None else pattern,
        metric=metric,
        metric_params=metric_params,
        allocator=allocator,
        allocator_params=allocator_params,
        calibration=CalibrationSpec(calibration_corpus, calibration["split"], calibration["nsamples"], calibration["seqlen"], calibration["seed"], calibration["batch_size"]),
        perplexity=PerplexitySpec(corpora, ppl["seqlen"], ppl["max_seqlen"], ppl["max_segments"], ppl["batch_size"]),
        data_paths=data_paths,
        device=device,
        offload=bool(config["offload"]),
        results_dir=Path(config["results_dir"]).expanduser(),
        cache_dir=Path(os.path.expanduser(config["cache_dir"])),
        rerun=bool(config["rerun"]),
        progress=bool(config.get("progress", True)),
        resolved=config,
        tracker=validate_tracker(config.get("tracker") or {}, config.get("experiment_name", "adhoc")),
        fault=validate_fault(config.get("debug")),
        zeroshot=zeroshot,
        claims=_claims(config),
        export=export,
        efficiency=efficiency,
        finetune=finetune,
    )
