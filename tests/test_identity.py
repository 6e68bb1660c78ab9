"""Identity from the schema: every config field is marked defining, run-only or a label, and
``identity`` derives the case id's hashed part and every cache key from those marks.

The ids themselves are pinned in tests/test_case_ids.py; here: the marks say what the release's
hand-kept lists said, run-only keys never move an id while defining ones always do (on every
preset), method keys are all hashed, and the cache keys are those the release computed.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest

import sparsebench
from conftest import compose_config
from sparsebench import schema
from sparsebench.allocators import ALLOCATORS
from sparsebench.config import validate
from sparsebench.data.corpora import corpus_named, resolve_source
from sparsebench.disk_cache import key_digest
from sparsebench.identity import Facts, identity
from sparsebench.metrics import METRICS

CONF = Path(sparsebench.__file__).parent / "conf"
PRESETS = {
    **{f"experiment={path.stem}": [f"+experiment={path.stem}"] for path in sorted((CONF / "experiment").glob("*.yaml"))},
    **{f"metric={name}": [f"metric={name}"] for name in METRICS.names()},
    **{f"allocator={name}": ["metric=wanda", f"allocator={name}"] for name in ALLOCATORS.names()},
    "eval=full": ["eval=full", "eval.zeroshot.tasks=[boolq]", "eval.efficiency.enabled=true"],
    "export=compressed": ["export=compressed"],
    "finetune=lora": ["finetune=lora"],
    "bos": ["model.bos_per_segment=true", f"data.boolq={Path(__file__)}"],  # a task's local copy: in the id only when set
}

# What the release's hand-kept lists left out of the id (results.defining_config at 351d88d), as leaf paths
RUN_ONLY = {
    "model.trust_remote_code", "calibration.batch_size", "eval.ppl.batch_size", "eval.zeroshot.batch_size",
    "eval.zeroshot.max_batch_size", "eval.zeroshot.scoring", "eval.zeroshot.batch_tokens", "export.dir",
    "finetune.gradient_checkpointing", "finetune.log_every", "paths", "device", "offload", "results_dir", "cache_dir",
    "rerun", "progress", "experiment_name", "tracker", "debug", "claims",
}


def _leaves(schema_class: type, prefix: str = ""):
    """``(dotted path, field)`` of every field whose value is hashed or dropped whole (not a nested group)."""
    for field in dataclasses.fields(schema_class):
        path = prefix + field.name
        nested = field.default_factory if dataclasses.is_dataclass(field.default_factory) else None
        if nested is not None and field.metadata[schema.IDENTITY] == schema.DEFINING:
            yield from _leaves(nested, path + ".")
        else:
            yield path, field


def _get(config: dict, path: str):
    for part in path.split("."):
        config = config[part]
    return config


def _changed(config: dict, path: str) -> dict:
    """``config`` with the value at ``path`` replaced by another of its kind (the function does not validate)."""
    changed = copy.deepcopy(config)
    *parents, last = path.split(".")
    node = _get(changed, ".".join(parents)) if parents else changed
    value = node[last]
    if isinstance(value, bool):
        node[last] = not value
    elif isinstance(value, (int, float)):
        node[last] = value * 2 + 1
    elif isinstance(value, list):
        node[last] = [*value, "other"]
    elif isinstance(value, dict):
        node[last] = {**value, "other": 1}
    else:
        node[last] = f"{value}-other"
    return changed


def test_every_schema_field_is_marked():
    classes = [value for value in vars(schema).values() if dataclasses.is_dataclass(value)]
    assert len(classes) == 17
    for schema_class in classes:
        for field in dataclasses.fields(schema_class):
            role = field.metadata.get(schema.IDENTITY)
            assert role in (schema.DEFINING, schema.RUN, schema.LABEL), f"{schema_class.__name__}.{field.name}"


def test_the_marks_leave_out_what_the_release_left_out():
    assert {path for path, field in _leaves(schema.Config) if field.metadata[schema.IDENTITY] == schema.RUN} == RUN_ONLY
    assert [path for path, field in _leaves(schema.Config) if field.metadata[schema.IDENTITY] == schema.LABEL] == ["model.name"]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_run_only_keys_leave_the_id_and_defining_keys_move_it(preset):
    spec = validate(compose_config([*PRESETS[preset], "device=cpu"]))  # the GPU presets validate here too
    config, facts = spec.resolved, Facts(spec.device_type)
    defining = identity("case", config, facts)
    for path, field in _leaves(schema.Config):
        if field.metadata[schema.IDENTITY] != schema.DEFINING:
            assert identity("case", _changed(config, path), facts) == defining, path
        else:
            try:
                _get(defining, path)
            except KeyError:  # off: a group (zero-shot without tasks, finetune=none...), the dense model's, or unset
                continue
            else:
                assert identity("case", _changed(config, path), facts) != defining, path
    assert identity("case", config, Facts("cuda")) != defining


def test_groups_enter_the_id_only_when_on():
    plain = compose_config(["metric=wanda"])
    assert set(identity("case", plain, Facts("cpu"))) == {"model", "metric", "eval", "data", "device_type", "sparsity", "allocator", "calibration"}
    assert set(identity("case", plain, Facts("cpu"))["eval"]) == {"ppl"}
    dense = identity("case", compose_config(["metric=none"]), Facts("cpu"))
    assert not {"sparsity", "allocator", "calibration"} & set(dense)
    full = identity("case", compose_config(["eval=full", "eval.zeroshot.tasks=[boolq]", "eval.efficiency.enabled=true"]), Facts("cpu"))
    assert set(full["eval"]) == {"ppl", "zeroshot", "efficiency"} and "scoring" not in full["eval"]["zeroshot"]


def test_a_document_without_the_later_keys_has_the_id_of_their_defaults():
    """A document of an earlier release lacks the groups and keys added since: its case is the same case."""
    current = compose_config(["metric=wanda"])
    earlier = copy.deepcopy(current)
    for group in ("export", "finetune", "decomposition", "paths", "claims", "tracker", "debug"):
        del earlier[group]
    for task in ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "piqa"):
        del earlier["data"][task]
    del earlier["eval"]["zeroshot"], earlier["eval"]["efficiency"], earlier["model"]["bos_per_segment"]
    assert identity("case", earlier, Facts("cpu")) == identity("case", current, Facts("cpu"))


@pytest.mark.parametrize("registry", [METRICS, ALLOCATORS], ids=["metric", "allocator"])
def test_method_keys_are_all_hashed(registry):
    """The store hashes a method group whole: a key marked run-only must say why it is hashed all the same."""
    marked = {}
    for name in registry.names():
        entry = registry.get(name)
        for field in dataclasses.fields(getattr(entry, "params", None) or entry.Params):
            role = field.metadata.get(schema.IDENTITY, schema.DEFINING)
            assert role == schema.DEFINING or field.metadata.get("hashed"), f"{name}.{field.name}"
            if role == schema.RUN:
                marked[f"{name}.{field.name}"] = field.metadata["hashed"]
    expected = {"swiftprune.ewma_alpha", "swiftprune.refine_passes"} if registry is METRICS else set()
    assert set(marked) == expected
    for path in marked:
        name, key = path.split(".")
        config = compose_config([f"metric={name}"])
        assert identity("case", _changed(config, f"metric.{key}"), Facts("cpu")) != identity("case", config, Facts("cpu"))


# key_digest of the dense-pass and weight-pass keys as runner._dense_work_key and allocation._DATA_KEYS built them at
# 351d88d (tokenizer fingerprint "f" * 24, release 0.1.0), and of the token keys data/tokens.py built there
RECORDED_PASSES = {
    "owl_70": (["metric=wanda", "allocator=owl", "sparsity.ratio=0.7"], None, "e0f7a0347b6eb50738da4d93", "9cfd53e92c9179c77277bfc1"),
    "owl_bos": (["metric=wanda", "allocator=owl", "sparsity.ratio=0.7", "model.bos_per_segment=true", "calibration.batch_size=2"], 1,
                "2899a3996a397c22af1fafb4", "9cfd53e92c9179c77277bfc1"),
    "alpha_eps": (["metric=sparsegpt", "allocator=alpha", "allocator.epsilon=0.3"], None, "505b6d7615a536264202f17a", "6ba7d77c5ed7b7d528e5ff8a"),
    "neuroal_70": (["metric=wanda", "allocator=neuroal", "sparsity.ratio=0.7", "calibration.nsamples=32"], None,
                   "3578145e9f90d7fb7104e0db", "a8120f4cd52cd8f043f7a457"),
    "trim_owl": (["metric=wanda", "allocator=trim", "allocator.layerwise=owl", "sparsity.ratio=0.7", "calibration.dataset=ptb"], None,
                 "de1e85d7cb58d95f8485a45d", "bb00f0e12e37a6d05fcc6613"),
    "dsnot_alpha": (["metric=wanda", "allocator=dsnot", "allocator.layerwise=alpha", "model=gemma3-270m-q4"], None,
                    "1d445784ee0e341be1239538", "e16e29a6d941e8b62d72a277"),
}


def _as_recorded(key: dict) -> str:
    assert key["version"] == sparsebench.__version__
    return key_digest({**key, "version": "0.1.0"})


@pytest.mark.parametrize("name", list(RECORDED_PASSES))
def test_the_dense_and_weight_pass_keys_are_the_release_s(name):
    overrides, bos, dense, weights = RECORDED_PASSES[name]
    spec = validate(compose_config(overrides))
    facts = Facts(spec.device_type, "f" * 24, bos)
    assert _as_recorded(identity("dense", spec.resolved, facts)) == dense
    assert _as_recorded(identity("weights", spec.resolved, facts)) == weights


def test_the_token_keys_are_the_release_s(monkeypatch):
    from sparsebench.data import tokens

    keys = []
    monkeypatch.setattr(tokens, "cached", lambda cache_dir, folder, kind, key, build: (keys.append((kind, key_digest(key))), (None, False))[1])
    c4_train = resolve_source(corpus_named("c4", "x"), "train", None)
    tokens.calibration_tokens(c4_train, None, 128, 2048, 0, Path("/c"), "f" * 24)
    tokens.calibration_tokens(c4_train, None, 16, 512, 3, Path("/c"), "f" * 24, 1)
    tokens.evaluation_tokens(resolve_source(corpus_named("wikitext2", "x"), "test", None), None, Path("/c"), "f" * 24)
    tokens.evaluation_tokens(resolve_source(corpus_named("c4", "x"), "validation", None), None, Path("/c"), "f" * 24, 2)
    assert keys == [
        ("calib", "0d1f4fd6d6f2e4560c7015b4"), ("calib", "0bc514deb0910de7c9c29f0a"),
        ("eval", "6e5a20366f34c922e377e30c"), ("eval", "1ef19e603e76fde6a1202310"),
    ]


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="allowed values are case, dense, weights, tokens"):
        identity("cases", compose_config([]))
