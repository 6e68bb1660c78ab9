"""The configuration schema (Hydra structured configs), each field marked as defining a case or not.

A misspelt key fails at composition against these dataclasses; ``sparsebench.config.validate``
then checks the values. Every field carries its part in a case's identity as metadata, read by
``sparsebench.identity.identity`` (the case id and the cache keys):

- ``defining``: it changes the case's numbers, so it is hashed into the case id. ``when`` says
  when it enters: ``always``; ``set`` (only when not None: a key added after ids were first
  recorded, so earlier ids stay); ``pruned`` (only for a case that prunes: the dense model does
  not depend on sparsity, allocator or calibration); ``on:<key>`` (a group that enters only when
  its ``<key>`` is on: set, and not false, empty or ``none``). ``weights=True``: it identifies the
  model's weights, so it is also in the keys of the cached passes over the dense model.
- ``run``: how the case runs (speed, memory, folders, logs); never in the id. ``hashed`` gives the
  reason a run-only key is hashed all the same (method keys: see ``sparsebench.identity``).
- ``label``: shown in the id's readable part, not hashed.

This module imports nothing heavy: the result store derives ids from it without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

IDENTITY = "identity"  # the metadata key
DEFINING, RUN, LABEL = "defining", "run", "label"
WHEN = ("always", "set", "pruned")  # or "on:<key>"


def defining(when: str = "always", weights: bool = False) -> dict:
    """Metadata of a field that changes the case's numbers (see the module's docstring for ``when``)."""
    if when not in WHEN and not when.startswith("on:"):
        raise ValueError(f"when={when!r}: allowed values are {', '.join(WHEN)} or on:<key>")
    return {IDENTITY: DEFINING, "when": when, "weights": weights}


def run_only(hashed: str | None = None) -> dict:
    """Metadata of a field that changes how a case runs, not its numbers; ``hashed``: why it is in the id anyway."""
    return {IDENTITY: RUN, "hashed": hashed}


def label() -> dict:
    return {IDENTITY: LABEL}


@dataclass
class ModelConfig:
    path: str = field(default="???", metadata=defining(weights=True))
    name: Optional[str] = field(default=None, metadata=label())  # shown in case ids and tables; default: derived from path
    family: str = field(default="auto", metadata=defining(weights=True))
    dtype: str = field(default="auto", metadata=defining(weights=True))
    revision: Optional[str] = field(default=None, metadata=defining(weights=True))
    trust_remote_code: bool = field(default=False, metadata=run_only())  # lets the hub's code load; the path names the weights
    # a BOS token starts every calibration and evaluation segment; None: the family's default
    # (gemma3: true; the others false, the papers' protocol of plain windows of the token stream)
    bos_per_segment: Optional[bool] = field(default=None, metadata=defining("set"))


@dataclass
class SparsityConfig:
    ratio: float = field(default=0.5, metadata=defining())
    pattern: str = field(default="unstructured", metadata=defining())


@dataclass
class CalibrationConfig:
    dataset: str = field(default="c4", metadata=defining())
    split: str = field(default="train", metadata=defining())
    nsamples: int = field(default=128, metadata=defining())
    seqlen: int = field(default=2048, metadata=defining())
    seed: int = field(default=0, metadata=defining())
    batch_size: int = field(default=8, metadata=run_only())  # sequences per block forward; changes speed and memory, not results


@dataclass
class PerplexityConfig:
    datasets: List[str] = field(default_factory=lambda: ["wikitext2"], metadata=defining())
    seqlen: Optional[int] = field(default=None, metadata=defining())  # default: the model's context length, capped at max_seqlen
    max_seqlen: int = field(default=4096, metadata=defining())
    max_segments: Optional[int] = field(default=None, metadata=defining())  # for quick runs; None evaluates every segment
    batch_size: int = field(default=4, metadata=run_only())


@dataclass
class ZeroShotConfig:
    tasks: List[str] = field(default_factory=list, metadata=defining())  # lm-eval task names; empty: no zero-shot evaluation
    limit: Optional[int] = field(default=None, metadata=defining())  # the first N documents of each task, for quick runs
    # how the forwards are batched and run changes speed, not scores (lm-eval's arithmetic either way)
    batch_size: Any = field(default="auto", metadata=run_only())  # "auto" (lm-eval's detection on a GPU, 8 on a CPU) or an integer
    max_batch_size: int = field(default=64, metadata=run_only())  # the ceiling of "auto"
    scoring: str = field(default="token_batches", metadata=run_only())  # token_batches (batches of a padded-token budget) or hflm (lm-eval's own loop)
    batch_tokens: Any = field(default="auto", metadata=run_only())  # token_batches: padded tokens per forward; "auto" (8192 on a GPU, 512 on a CPU) or an integer


@dataclass
class EfficiencyConfig:
    """Inference speed and memory of the pruned model (``eval=efficiency``, or ``eval.efficiency.enabled=true``).

    Speed is what it measures, so every key defines the case."""

    enabled: bool = field(default=False, metadata=defining())
    prefill_batch: int = field(default=1, metadata=defining())
    prefill_seqlen: int = field(default=2048, metadata=defining())  # capped at the model's context length
    decode_batches: List[int] = field(default_factory=lambda: [1, 16], metadata=defining())
    decode_prompt: int = field(default=128, metadata=defining())  # prompt tokens before greedy decoding
    decode_tokens: int = field(default=128, metadata=defining())  # new tokens generated (KV cache)
    warmup: int = field(default=1, metadata=defining())  # untimed calls before each measurement
    # then more untimed calls until this many seconds have passed, so that a GPU's clocks settle under its power limit;
    # null: none, the protocol before this key (and the case ids it gave)
    warmup_seconds: Optional[float] = field(default=2.0, metadata=defining("set"))
    repeats: int = field(default=5, metadata=defining())  # timed calls; the median is reported
    sparse_kernels: str = field(default="auto", metadata=defining())  # auto: the sparse paths of the case's pattern on a CUDA GPU; off
    # eager, static_eager, cuda_graph, compiled_graph (conf/eval/efficiency.yaml sets eager, cuda_graph, compiled_graph)
    modes: List[str] = field(default_factory=lambda: ["eager", "cuda_graph", "compiled_graph"], metadata=defining())
    # true: the linears that read one input (q/k/v, gate/up) run as one product on every side; null: false (earlier ids stay)
    fuse_projections: Optional[bool] = field(default=None, metadata=defining("set"))
    # the sparse paths measured (sparsebench/kernels/paths.py): null, each pattern's default paths; a list names them,
    # paths measured only where named (bitmask_kept) included
    paths: Optional[List[str]] = field(default=None, metadata=defining("set"))


@dataclass
class EvalConfig:
    ppl: PerplexityConfig = field(default_factory=PerplexityConfig, metadata=defining())
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig, metadata=defining("on:tasks"))
    efficiency: EfficiencyConfig = field(default_factory=EfficiencyConfig, metadata=defining("on:enabled"))


@dataclass
class DataConfig:
    """Local copies: ``data.<name>=PATH`` for a corpus (a file, or a folder with one file per split)
    or a zero-shot task (its evaluated split; see ``sparsebench.evaluate.zeroshot_tasks``).

    The three corpora were in every id from the start; the tasks' copies enter only when set."""

    wikitext2: Optional[str] = field(default=None, metadata=defining())
    c4: Optional[str] = field(default=None, metadata=defining())
    ptb: Optional[str] = field(default=None, metadata=defining())
    boolq: Optional[str] = field(default=None, metadata=defining("set"))
    rte: Optional[str] = field(default=None, metadata=defining("set"))
    hellaswag: Optional[str] = field(default=None, metadata=defining("set"))
    winogrande: Optional[str] = field(default=None, metadata=defining("set"))
    arc_easy: Optional[str] = field(default=None, metadata=defining("set"))
    arc_challenge: Optional[str] = field(default=None, metadata=defining("set"))
    openbookqa: Optional[str] = field(default=None, metadata=defining("set"))
    piqa: Optional[str] = field(default=None, metadata=defining("set"))


@dataclass
class DecompositionConfig:
    """The low-rank part of sparse-plus-low-rank metrics (``metric=hassle_free`` sets ``rank: 64``)."""

    rank: Optional[int] = field(default=None, metadata=defining())  # null: no low-rank part (every other metric)


@dataclass
class FinetuneConfig:
    """The ``finetune`` keys (conf/finetune/lora.yaml documents them; ``sparsebench.finetune.spec`` checks them).

    Read only when ``name`` is ``lora``, so a sweep ``finetune=none,lora finetune.steps=100`` composes.
    """

    name: str = field(default="none", metadata=defining())  # none | lora
    rank: int = field(default=8, metadata=defining())
    alpha: float = field(default=16.0, metadata=defining())
    dropout: float = field(default=0.05, metadata=defining())
    target_modules: Optional[List[str]] = field(default=None, metadata=defining())  # None: every pruned linear of the family
    steps: int = field(default=200, metadata=defining())
    learning_rate: float = field(default=1e-4, metadata=defining())
    schedule: str = field(default="linear", metadata=defining())
    warmup_steps: int = field(default=0, metadata=defining())
    weight_decay: float = field(default=0.0, metadata=defining())
    max_grad_norm: Optional[float] = field(default=1.0, metadata=defining())
    batch_size: int = field(default=4, metadata=defining())
    grad_accum: int = field(default=1, metadata=defining())
    seqlen: int = field(default=512, metadata=defining())
    seed: int = field(default=0, metadata=defining())
    dataset: str = field(default="c4", metadata=defining())
    split: str = field(default="train", metadata=defining())
    autocast: str = field(default="auto", metadata=defining())
    gradient_checkpointing: bool = field(default=False, metadata=run_only())  # recomputes activations: memory, not results
    merge: bool = field(default=False, metadata=defining())
    log_every: int = field(default=10, metadata=run_only())


# --- tracking, fault injection, claims, folders: how cases run -------------------------------


@dataclass
class WandbConfig:
    mode: str = field(default="online", metadata=run_only())  # online | offline | disabled
    project: str = field(default="sparsebench", metadata=run_only())
    entity: Optional[str] = field(default=None, metadata=run_only())
    group: Optional[str] = field(default=None, metadata=run_only())  # default: experiment_name
    tags: List[str] = field(default_factory=list, metadata=run_only())
    dir: Optional[str] = field(default=None, metadata=run_only())  # default: W&B's own (./wandb)


@dataclass
class TrackerConfig:
    name: str = field(default="local", metadata=run_only())  # local | wandb
    wandb: WandbConfig = field(default_factory=WandbConfig, metadata=run_only())


@dataclass
class DebugConfig:
    fail_at: Optional[str] = field(default=None, metadata=run_only())  # null | load | prune | eval | write
    fail_mode: str = field(default="raise", metadata=run_only())  # raise (failed document) | kill (SIGKILL, no document)
    fail_cases: str = field(default="*", metadata=run_only())  # glob on the case id
    delay_s: float = field(default=0.0, metadata=run_only())  # every case waits this long before loading (tests of concurrent launches)


@dataclass
class ClaimsConfig:
    """Per-case claims that keep two launches on one results folder from running a case twice at once."""

    heartbeat_s: float = field(default=30.0, metadata=run_only())  # how often a running case touches its claim file
    stale_after_s: float = field(default=300.0, metadata=run_only())  # a claim without a heartbeat for this long is taken over


@dataclass
class ExportConfig:
    """``export=none|hf|compressed``: write the pruned model to ``<dir>/<case_id>/`` (see sparsebench/export.py)."""

    format: str = field(default="none", metadata=defining())
    dtype: Optional[str] = field(default=None, metadata=defining())  # null: the case's dtype
    dir: Optional[str] = field(default=None, metadata=run_only())  # null: <results_dir>/models


@dataclass
class PathsConfig:
    data_dir: str = field(default="../shared/data", metadata=run_only())  # conf/paths/default.yaml; the data.<name> paths define


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig, metadata=defining())
    sparsity: SparsityConfig = field(default_factory=SparsityConfig, metadata=defining("pruned"))
    # the method groups are hashed whole: their keys are their Params' fields (see sparsebench.identity)
    metric: Dict[str, Any] = field(default_factory=dict, metadata=defining())
    allocator: Dict[str, Any] = field(default_factory=dict, metadata=defining("pruned"))
    decomposition: DecompositionConfig = field(default_factory=DecompositionConfig, metadata=defining("on:rank"))
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig, metadata=defining("on:name"))  # finetune=none|lora (conf/finetune/)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig, metadata=defining("pruned"))
    eval: EvalConfig = field(default_factory=EvalConfig, metadata=defining())
    export: ExportConfig = field(default_factory=ExportConfig, metadata=defining("on:format"))
    data: DataConfig = field(default_factory=DataConfig, metadata=defining())
    paths: PathsConfig = field(default_factory=PathsConfig, metadata=run_only())  # where local files live (conf/paths/)
    device: str = field(default="auto", metadata=run_only())  # the resolved device's type is in the id (identity's device_type)
    offload: bool = field(default=False, metadata=run_only())
    results_dir: str = field(default="results", metadata=run_only())
    cache_dir: str = field(default="~/.cache/sparsebench", metadata=run_only())
    rerun: bool = field(default=False, metadata=run_only())
    progress: bool = field(default=True, metadata=run_only())
    experiment_name: str = field(default="adhoc", metadata=run_only())  # groups the cases of a grid (W&B group, analysis filter)
    tracker: TrackerConfig = field(default_factory=TrackerConfig, metadata=run_only())
    debug: DebugConfig = field(default_factory=DebugConfig, metadata=run_only())
    claims: ClaimsConfig = field(default_factory=ClaimsConfig, metadata=run_only())
