"""The layer-wise base under an allocator that refines each linear at prune time (TRIM, DSnoT).

``layerwise=uniform|owl|alpha`` picks the ratio every linear starts from: the target itself, OWL's
block ratios (``sparsebench.allocators.owl``: keys ``m``, ``lam``) or AlphaPruning's
(``sparsebench.allocators.alpha``: key ``epsilon``). A key that belongs to another base must stay
null; a null key takes the refining allocator's default (TRIM and DSnoT use different OWL values).
"""

from __future__ import annotations

import dataclasses

from sparsebench.allocators import Allocation, AllocatorSpec, PrunableLayer
from sparsebench.allocators.alpha import DEFAULT_EPSILON, alpha_allocation, check_alpha_keys, layer_alphas
from sparsebench.allocators.owl import OWLParams, outlier_ratio, owl
from sparsebench.errors import ConfigError
from sparsebench.stats import INPUT_SQ_NORMS

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


def bind_base(spec: AllocatorSpec, layerwise: str, keys: dict) -> AllocatorSpec:
    """The spec with the base's dense pass (OWL: Wanda statistics) or weight pass (AlphaPruning)."""
    if layerwise == "owl":
        return dataclasses.replace(spec, needs=frozenset({INPUT_SQ_NORMS}), summarize_block=lambda weights, stats, **_: outlier_ratio(weights, stats, **keys))
    if layerwise == "alpha":
        return dataclasses.replace(spec, needs=frozenset(), summarize_block=lambda weights, stats, **_: layer_alphas(weights))
    return spec


def base_allocation(layers: list[PrunableLayer], sparsity: float, block_summaries, layerwise: str, keys: dict) -> Allocation:
    if layerwise == "owl":
        return Allocation(owl(layers, sparsity, block_summaries, **keys), {"owl": keys})
    if layerwise == "alpha":
        allocation = alpha_allocation(layers, sparsity, block_summaries, **keys)
        return Allocation(allocation.ratios, {"alpha": allocation.details})
    return Allocation({layer.name: sparsity for layer in layers}, {})
