"""What a case is, and what each cached value depends on: one function over the resolved configuration.

``identity(of, config, facts)`` reads the field metadata of ``sparsebench.schema`` (each field
``defining``, ``run`` or ``label``) and gives:

- ``case``: the defining part of a case's configuration, hashed into its case id
  (``sparsebench.results.case_id``): a key that changes how a case runs, not its numbers, leaves
  the id as it was, so a re-launch finds the documents it wrote;
- ``dense``: what a pass of the dense model over the calibration data depends on (OWL's outlier
  ratios, shared by every case of that model): the model's weights, the tokenizer, the BOS token,
  the calibration's defining keys and local copy, the allocator and its keys, the device type and
  this release;
- ``weights``: what a pass over the dense weights alone depends on (AlphaPruning's spectra): the
  same without the tokenizer, the BOS token and the calibration;
- ``tokens``: what a token tensor depends on: the tokenizer, the BOS token and what is read
  (``read``: the text source's identity and how it is sampled or joined).

The method groups (``metric``, ``allocator``) are hashed whole: their keys are the fields of the
method's ``Params``, whose metadata may mark a key ``run_only(hashed=...)``: SwiftPrune's
``ewma_alpha`` and ``refine_passes`` change speed only, yet the ids of the release that first
recorded them hash them, and they stay hashed so that a re-launch finds those documents.

Rules kept so that earlier ids stay (each is metadata, see ``sparsebench.schema``): a key added
later enters only when set (``when="set"``), a group only when on (``when="on:<key>"``), and the
dense model (``metric=none``) hashes no sparsity, allocator or calibration (``when="pruned"``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import sparsebench
from sparsebench.schema import DEFINING, IDENTITY, CalibrationConfig, Config, ModelConfig

KINDS = ("case", "dense", "weights", "tokens")


@dataclass(frozen=True)
class Facts:
    """What a run knows that the configuration does not say."""

    device_type: str = ""  # cpu | cuda (the resolved device, without its index)
    tokenizer: str | None = None  # the tokenizer's fingerprint (``sparsebench.data.tokens.tokenizer_fingerprint``)
    bos_token_id: int | None = None  # the BOS token that starts every segment, if any


def _on(value: Any) -> bool:
    return value is not None and value is not False and value != "none" and value != []


def _enters(when: str, value: Any, pruned: bool) -> bool:
    if when == "set":
        return value is not None
    if when == "pruned":
        return pruned
    if when.startswith("on:"):
        return isinstance(value, Mapping) and _on(value.get(when[3:]))
    return True


def _group(field: dataclasses.Field) -> type | None:
    """The schema dataclass of a group field, or None for a leaf (a value, or a dict hashed whole)."""
    factory = field.default_factory
    return factory if dataclasses.is_dataclass(factory) else None


def _defining(schema: type, values: Mapping, pruned: bool) -> dict:
    """The defining keys of ``values`` (a group of the resolved configuration described by ``schema``).

    A nested group that always defines reads as empty when absent (documents of earlier releases);
    a key the schema does not know is taken to define the case.
    """
    fields = {field.name: field for field in dataclasses.fields(schema)}
    defining = {key: value for key, value in values.items() if key not in fields}
    for name, field in fields.items():
        if field.metadata[IDENTITY] != DEFINING:
            continue
        group, when = _group(field), field.metadata["when"]
        if name not in values and (group is None or when != "always"):
            continue
        value = values.get(name)
        if _enters(when, value, pruned):
            defining[name] = _defining(group, value or {}, pruned) if group is not None else value
    return defining


def _weights(config: Mapping) -> dict:
    model = config["model"]
    return {field.name: model.get(field.name) for field in dataclasses.fields(ModelConfig) if field.metadata.get("weights")}


def _allocator(config: Mapping, facts: Facts) -> dict:
    """The allocator and its keys as the configuration states them (its YAML states every ``Params`` field,
    tests/test_method_defaults.py), the device type and this release: in both passes' keys."""
    allocator = config["allocator"]
    params = {key: value for key, value in allocator.items() if key != "name"}
    return {"allocator": allocator["name"], "params": params, "device_type": facts.device_type, "version": sparsebench.__version__}


def _bos(facts: Facts, key: str) -> dict:
    """The BOS token under ``key``, only when there is one: cache entries written before it existed stay valid."""
    return {} if facts.bos_token_id is None else {key: facts.bos_token_id}


def identity(of: str, config: Mapping | None = None, facts: Facts = Facts(), read: Mapping | None = None) -> dict:
    """What the case (``of="case"``) or a cached value (``dense``, ``weights``, ``tokens``) depends on; see the module."""
    if of == "tokens":
        return {"tokenizer": facts.tokenizer, **(read or {}), **_bos(facts, "bos")}
    if of not in KINDS:
        raise ValueError(f"identity(of={of!r}): allowed values are {', '.join(KINDS)}")
    if config is None:
        raise ValueError(f"identity(of={of!r}) needs the case's resolved configuration")
    if of == "case":
        pruned = config["metric"].get("name") != "none"
        return {**_defining(Config, config, pruned), "device_type": facts.device_type}
    if of == "weights":
        return {"model": _weights(config), **_allocator(config, facts)}
    calibration = _defining(CalibrationConfig, config["calibration"], True)
    calibration["data"] = (config.get("data") or {}).get(calibration["dataset"])  # the local copy it reads, if any
    return {"model": _weights(config), "tokenizer": facts.tokenizer, **_bos(facts, "bos_token_id"), "calibration": calibration, **_allocator(config, facts)}
