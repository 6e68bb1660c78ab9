"""The ``finetune`` config group checked into a plain ``FinetuneSpec`` (before any model loads).

``finetune=none`` (the default) gives no spec; ``finetune=lora`` gives one. Every problem is one
``ConfigError`` line naming the key and its allowed values.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from typing import Any

from sparsebench.data.corpora import Corpus, corpus_named
from sparsebench.errors import ConfigError
from sparsebench.models.adapters import ADAPTERS
from sparsebench.schema import FinetuneConfig

METHODS = ("none", "lora")
SCHEDULES = ("constant", "linear", "cosine")
AUTOCASTS = ("auto", "none", "bfloat16", "float16")
SPLITS = ("train", "validation", "test")
PEFT_VERSION = "0.21.2"


@dataclass(frozen=True)
class FinetuneSpec:
    rank: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...] | None  # None: every pruned linear of the family
    steps: int
    learning_rate: float
    schedule: str
    warmup_steps: int
    weight_decay: float
    max_grad_norm: float | None
    batch_size: int
    grad_accum: int
    seqlen: int
    seed: int
    corpus: Corpus
    split: str
    autocast: str
    gradient_checkpointing: bool
    merge: bool
    log_every: int
    method: str = "lora"

    @property
    def sequences(self) -> int:
        """Training sequences drawn: one per micro-batch row of every step."""
        return self.steps * self.grad_accum * self.batch_size


def _integer(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"finetune.{key}={value!r}: must be an integer >= {minimum}")
    return value


def _number(key: str, value: Any, low: float, high: float | None = None, low_inclusive: bool = False) -> float:
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if not bad:
        bad = value < low if low_inclusive else value <= low
        bad = bad or (high is not None and value >= high)
    if bad:
        bounds = f"{'[' if low_inclusive else '('}{low:g}, {'inf' if high is None else f'{high:g}'})"
        raise ConfigError(f"finetune.{key}={value!r}: must be a number in {bounds}")
    return float(value)


def _choice(key: str, value: Any, allowed) -> str:
    if value not in allowed:
        raise ConfigError(f"finetune.{key}={value!r}: allowed values are {', '.join(allowed)}")
    return value


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"finetune.{key}={value!r}: must be true or false")
    return value


def linear_names_for(family: str) -> tuple[str, ...]:
    """The pruned linears a target may name: the family's, or any family's when it is 'auto'."""
    adapters = [ADAPTERS[family]] if family in ADAPTERS else list(ADAPTERS.values())
    names: list[str] = []
    for adapter in adapters:
        names.extend(name for name in adapter.linear_names if name not in names)
    return tuple(names)


def matches(target: str, linear_name: str) -> bool:
    """A target names a linear by its full name in the block (``self_attn.q_proj``) or its last part (``q_proj``)."""
    return target == linear_name or linear_name.rsplit(".", 1)[-1] == target


def _targets(value: Any, family: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(name, str) for name in value):
        raise ConfigError(f"finetune.target_modules={value!r}: must be null (every pruned linear) or a non-empty list of linear names")
    allowed = linear_names_for(family)
    for name in value:
        if not any(matches(name, linear) for linear in allowed):
            where = f"family {family!r}" if family in ADAPTERS else "the supported families"
            raise ConfigError(f"finetune.target_modules: {name!r} is not a pruned linear of {where}; allowed: {', '.join(allowed)}")
    return tuple(value)


def validate_finetune(config: dict | None, family: str = "auto") -> FinetuneSpec | None:
    """Check the ``finetune`` keys of a resolved configuration; None for ``finetune=none``."""
    defaults = asdict(FinetuneConfig())
    config = dict(config or {})
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ConfigError(f"finetune.{unknown[0]}: not a finetune key; allowed keys are {', '.join(defaults)}")
    values = {**defaults, **config}
    if _choice("name", values["name"], METHODS) == "none":
        return None
    if importlib.util.find_spec("peft") is None:
        raise ConfigError(f"finetune=lora needs the peft package, which is not installed: pip install 'sparsebench[finetune]' (peft=={PEFT_VERSION})")
    steps = _integer("steps", values["steps"], 1)
    warmup = _integer("warmup_steps", values["warmup_steps"], 0)
    if warmup >= steps:
        raise ConfigError(f"finetune.warmup_steps={warmup}: must be smaller than finetune.steps={steps}")
    max_grad_norm = values["max_grad_norm"]
    if max_grad_norm is not None:
        max_grad_norm = _number("max_grad_norm", max_grad_norm, 0.0)
    if isinstance(values["seed"], bool) or not isinstance(values["seed"], int):
        raise ConfigError(f"finetune.seed={values['seed']!r}: must be an integer")
    return FinetuneSpec(
        rank=_integer("rank", values["rank"], 1),
        alpha=_number("alpha", values["alpha"], 0.0),
        dropout=_number("dropout", values["dropout"], 0.0, 1.0, low_inclusive=True),
        target_modules=_targets(values["target_modules"], family),
        steps=steps,
        learning_rate=_number("learning_rate", values["learning_rate"], 0.0),
        schedule=_choice("schedule", values["schedule"], SCHEDULES),
        warmup_steps=warmup,
        weight_decay=_number("weight_decay", values["weight_decay"], 0.0, low_inclusive=True),
        max_grad_norm=max_grad_norm,
        batch_size=_integer("batch_size", values["batch_size"], 1),
        grad_accum=_integer("grad_accum", values["grad_accum"], 1),
        seqlen=_integer("seqlen", values["seqlen"], 2),
        seed=values["seed"],
        corpus=corpus_named(values["dataset"], "finetune.dataset"),
        split=_choice("split", values["split"], SPLITS),
        autocast=_choice("autocast", values["autocast"], AUTOCASTS),
        gradient_checkpointing=_boolean("gradient_checkpointing", values["gradient_checkpointing"]),
        merge=_boolean("merge", values["merge"]),
        log_every=_integer("log_every", values["log_every"], 1),
    )
