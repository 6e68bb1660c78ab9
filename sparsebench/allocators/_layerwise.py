"""The layer-wise base under an allocator that refines each linear at prune time (TRIM, DSnoT).

``layerwise=uniform|owl|alpha`` picks the ratio every linear starts from: the target itself, OWL's
block ratios (``sparsebench.allocators.owl``: keys ``m``, ``lam``) or AlphaPruning's
(``sparsebench.allocators.alpha``: key ``epsilon``). A key that belongs to another base must stay
null; a null key takes the refining allocator's default (TRIM and DSnoT use different OWL values).
"""

from __future__ import annotations

from typing import Callable

from sparsebench.allocators import Allocation, Reads
from sparsebench.allocators.alpha import DEFAULT_EPSILON, alpha_plan, check_alpha_keys
from sparsebench.allocators.owl import OWL_NEEDS, OWLParams, owl_plan
from sparsebench.errors import ConfigError
from sparsebench.metrics import METRICS, MetricSpec

LAYERWISE = ("uniform", "owl", "alpha")
_KEYS = {"uniform": (), "owl": ("m", "lam"), "alpha": ("epsilon",)}


def base_keys(layerwise: str, owl_defaults: dict, m=None, lam=None, epsilon=None) -> dict:
    """The keys of the chosen base, nulls replaced by the defaults."""
    if layerwise == "owl":
        return {"m": owl_defaults["m"] if m is None else m, "lam": owl_defaults["lam"] if lam is None else lam}
    if layerwise == "alpha":
        return {"epsilon": DEFAULT_EPSILON if epsilon is None else epsilon}
    return {}


def check_base(key: str, layerwise: str, owl_defaults: dict, m=None, lam=None, epsilon=None) -> None:
    if layerwise not in LAYERWISE:
        raise ConfigError(f"{key}.layerwise={layerwise!r}: allowed values are {', '.join(LAYERWISE)}")
    given = {"m": m, "lam": lam, "epsilon": epsilon}
    for name, value in given.items():
        if value is not None and name not in _KEYS[layerwise]:
            owner = next(base for base, names in _KEYS.items() if name in names)
            raise ConfigError(f"{key}.{name}={value!r}: only for {key}.layerwise={owner}")
    keys = base_keys(layerwise, owl_defaults, m, lam, epsilon)
    if layerwise == "owl":
        OWLParams(**keys).check(key)
    elif layerwise == "alpha":
        check_alpha_keys(key, keys["epsilon"], "xmin_peak", "block")


def base_reads(layerwise: str, refine: frozenset[str]) -> Reads:
    """What a refining allocator reads: its base's dense pass (OWL: Wanda statistics; AlphaPruning reads
    the weights alone) and its refiner's statistics."""
    return Reads(dense=OWL_NEEDS if layerwise == "owl" else frozenset(), refine=refine)


def require_metric(allocator: str, metric: MetricSpec, usable: Callable[[MetricSpec], bool], reason: str) -> None:
    """Reject a case's metric that lacks what the refining ``allocator`` reads of it (the dense model passes),
    naming the metrics that have it."""
    if metric.prune is not None and not usable(metric):
        names = sorted(name for name in METRICS.names() if usable(METRICS.get(name)))
        raise ConfigError(f"allocator={allocator} cannot refine metric={metric.name!r}: {reason}: {', '.join(names)}")


def layerwise_plan(ctx, params: dict, owl_defaults: dict) -> Allocation:
    """The ratios of the base chosen by a refining allocator's keys (``layerwise``, ``m``, ``lam``, ``epsilon``)."""
    layerwise = params["layerwise"]
    return base_plan(ctx, layerwise, base_keys(layerwise, owl_defaults, params["m"], params["lam"], params["epsilon"]))


def base_plan(ctx, layerwise: str, keys: dict) -> Allocation:
    """The base's ratios (after its dense or weight pass); details under the base's name."""
    if layerwise == "owl":
        return Allocation(owl_plan(ctx, **keys), {"owl": keys})
    if layerwise == "alpha":
        allocation = alpha_plan(ctx, keys["epsilon"], "xmin_peak", "block")
        return Allocation(allocation.ratios, {"alpha": allocation.details})
    return Allocation({layer.name: ctx.sparsity for layer in ctx.layers}, {})
