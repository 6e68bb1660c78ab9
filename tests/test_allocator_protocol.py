"""The allocator protocol (sparsebench.allocators): a new allocator is its own class and its keys, nothing else.

The example below is written as a newcomer would write ``sparsebench/allocators/norm_ramp.py``
(its YAML would be ``conf/allocator/norm_ramp.yaml``: ``name: norm_ramp`` and ``spread: 0.1``); here
it is registered for the test only, and a case runs with it end to end through ``run_case``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from conftest import compose_config, tiny_case_overrides
from sparsebench.allocators import ALLOCATORS, Allocation, Allocator, Reads
from sparsebench.config import validate
from sparsebench.errors import ConfigError
from sparsebench.runner import run_case
from sparsebench.stats import INPUT_SQ_NORMS


ENERGY_NEEDS = frozenset({INPUT_SQ_NORMS})  # what its dense pass gathers


@dataclass
class NormRampParams:
    spread: float = 0.1  # block ratios span S - spread .. S + spread

    def check(self, key: str) -> None:
        if not 0 <= self.spread < 0.5:
            raise ConfigError(f"{key}.spread={self.spread}: must be in [0, 0.5)")


class NormRamp(Allocator):
    """Blocks whose inputs carry more energy (mean ||X_j||^2 of the dense model) are pruned less; mean ratio exactly S."""

    name = "norm_ramp"
    Params = NormRampParams
    reads = Reads(dense=ENERGY_NEEDS)

    def plan(self, ctx) -> Allocation:
        energy = ctx.dense_summaries(ENERGY_NEEDS, lambda weights, stats: float(sum(s.input_sq_norms.mean() for s in stats.values())))
        order = sorted(range(len(energy)), key=lambda block: energy[block])  # least energy first: pruned most
        blocks = len(energy)
        step = 0.0 if blocks == 1 else 2 * self.params["spread"] / (blocks - 1)
        ratio = {block: ctx.sparsity + self.params["spread"] - rank * step for rank, block in enumerate(order)}
        return Allocation({layer.name: ratio[layer.block] for layer in ctx.layers}, {"energy": energy})


@pytest.fixture
def norm_ramp(monkeypatch):
    monkeypatch.setitem(ALLOCATORS._entries, NormRamp.name, NormRamp)  # what @register_allocator does, undone after the test


def _spec(tiny_model_dirs, tmp_path, cache_dir, metric, keys):
    config = compose_config(tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, metric, ["sparsity.ratio=0.6"]))
    config["allocator"] = {"name": "norm_ramp", **keys}  # what conf/allocator/norm_ramp.yaml plus overrides compose to
    return validate(config)


def test_a_new_allocator_runs_a_case_end_to_end(norm_ramp, tiny_model_dirs, tmp_path, cache_dir):
    spec = _spec(tiny_model_dirs, tmp_path, cache_dir, "magnitude", {"spread": 0.1})
    assert spec.reads_calibration  # its dense pass reads calibration data although magnitude does not
    document = run_case(spec)
    assert document["status"] == "ok", document.get("error")
    allocation = document["allocation"]
    assert allocation["allocator"] == "norm_ramp" and allocation["block_summaries"] == allocation["energy"]
    assert document["notes"]["dense_summaries"] == "computed"
    ratios = allocation["block_ratios"]
    assert sum(ratios) / len(ratios) == pytest.approx(0.6) and max(ratios) - min(ratios) == pytest.approx(0.2)
    assert document["sparsity"]["achieved"] == pytest.approx(0.6, abs=0.01)


def test_a_new_allocator_gets_its_keys_checked(norm_ramp, tiny_model_dirs, tmp_path, cache_dir):
    with pytest.raises(ConfigError, match="allocator.spread=0.7: must be in"):
        _spec(tiny_model_dirs, tmp_path, cache_dir, "wanda", {"spread": 0.7})
    with pytest.raises(ConfigError, match="allocator.width: not a key of allocator 'norm_ramp'; allowed: spread"):
        _spec(tiny_model_dirs, tmp_path, cache_dir, "wanda", {"width": 0.1})


def test_an_allocator_may_not_read_what_it_did_not_declare(tiny_model_dirs, tmp_path, cache_dir, monkeypatch):
    class Undeclared(NormRamp):
        name = "undeclared"
        reads = Reads()  # says it reads nothing, then asks for a dense pass

    monkeypatch.setitem(ALLOCATORS._entries, Undeclared.name, Undeclared)
    config = compose_config(tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, "wanda", []))
    config["allocator"] = {"name": "undeclared", "spread": 0.1}
    document = run_case(validate(config))
    assert document["status"] == "failed" and "declared only [] in its reads" in document["error"]["message"]
