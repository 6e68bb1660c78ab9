"""Each method's defaults are stated in its YAML; the ``Params`` dataclass and the metric's functions must agree.

A key whose default differs between the YAML (what a run uses) and a Python signature (what a
direct call or a test uses) makes the two silently compute different things.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

import sparsebench
from sparsebench.allocators import ALLOCATORS
from sparsebench.metrics import METRICS

CONF = Path(sparsebench.__file__).parent / "conf"


def _yaml_defaults(group: str, name: str) -> dict:
    values = yaml.safe_load((CONF / group / f"{name}.yaml").read_text())
    if "name" not in values:  # a global package (HASSLE-free also sets decomposition.rank)
        values = values[group]
    assert values.pop("name") == name
    return values


def _params_defaults(params: type) -> dict:
    defaults = {}
    for f in dataclasses.fields(params):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


def _signature_defaults(function) -> dict:
    return {name: p.default for name, p in inspect.signature(function).parameters.items() if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_defaults_agree_with_its_yaml(name):
    metric = METRICS.get(name)
    stated = _yaml_defaults("metric", name)
    assert _params_defaults(metric.params) == stated
    for function in (metric.prune, metric.scores, metric.saliency):
        if function is not None:
            shared = {key: value for key, value in _signature_defaults(function).items() if key in stated}
            assert shared == {key: stated[key] for key in shared}, function.__name__


@pytest.mark.parametrize("name", ALLOCATORS.names())
def test_allocator_defaults_agree_with_its_yaml(name):
    assert _params_defaults(ALLOCATORS.get(name).Params) == _yaml_defaults("allocator", name)
