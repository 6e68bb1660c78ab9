"""``metric=none``: no pruning; the case evaluates the dense model."""

from dataclasses import dataclass

from sparsebench.metrics import METRICS, MetricSpec


@dataclass
class NoParams:
    pass


METRICS.add("none", MetricSpec("none", None, NoParams, paper="dense baseline"))
