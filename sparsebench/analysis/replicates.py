"""Replicates: cases that differ only in a replicate key (``calibration.seed`` by default) are one
cell of a table, summarised as mean ± standard deviation (n), and compared with a baseline by
Welch's t-test.

At high sparsity one number per cell cannot rank two methods: the calibration draw alone moves
perplexity by tens of percent. Welch's unequal-variance t-test (two-sided) asks whether a method's
mean differs from its baseline's by more than the spread of both explains; with fewer than two
replicates on either side there is no test, and the cell says so.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass

from sparsebench.identity import identity

DEFAULT_REPLICATE_KEYS = ("calibration.seed",)
DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class Spread:
    """The values of one cell over its replicates."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / self.n

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n - 1 in the denominator); None for a single value."""
        if self.n < 2:
            return None
        mean = self.mean
        return math.sqrt(math.fsum((value - mean) ** 2 for value in self.values) / (self.n - 1))


@dataclass(frozen=True)
class Comparison:
    """A cell against its baseline's cell: Welch's t-test, two-sided."""

    baseline: str
    difference: float  # method mean - baseline mean
    p_value: float | None  # None: fewer than two replicates on a side
    alpha: float

    @property
    def verdict(self) -> str:
        if self.p_value is None:
            return "untested (n < 2)"
        return "beyond noise" if self.p_value < self.alpha else "within noise"


def _get(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _drop(config: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = config
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(last, None)


def replicate_signature(config: dict, replicate_keys: tuple[str, ...], data_content: dict | None = None) -> str:
    """What defines a case apart from its replicate keys: equal for replicates of one cell.

    With ``data_content`` (a document's ``notes.data_content``: corpus -> split -> ``sha256:HEX``), each
    local ``data.<corpus>`` is compared by the content of the files the case read, not by its path: the
    same files in another folder are the same data, and other files at the same path are not.
    """
    defining = identity("case", config)  # no device type: replicates on any device are one cell
    stripped = copy.deepcopy(defining)
    data = stripped.get("data") or {}
    for corpus, files in (data_content or {}).items():
        if data.get(corpus) is not None:
            data[corpus] = files
    for key in replicate_keys:
        _drop(stripped, key)
    return json.dumps(stripped, sort_keys=True, default=str)


def replicate_values(config: dict, replicate_keys: tuple[str, ...]) -> dict:
    return {key: _get(config, key) for key in replicate_keys}


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularised incomplete beta function I_x(a, b), by its continued fraction (Lentz)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side only
        return 1.0 - _incomplete_beta(1.0 - x, b, a)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * fraction


def student_t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return _incomplete_beta(df / (df + t * t), df / 2.0, 0.5)


def welch_p_value(a: Spread, b: Spread) -> float | None:
    """Two-sided p-value of Welch's t-test for equal means; None with fewer than two values on a side."""
    if a.n < 2 or b.n < 2:
        return None
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    difference = a.mean - b.mean
    if va + vb == 0.0:
        return 1.0 if difference == 0.0 else 0.0
    t = difference / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.n - 1) + vb**2 / (b.n - 1))
    return student_t_two_sided_p(t, df)


def compare(method: Spread, baseline: Spread, baseline_name: str, alpha: float = DEFAULT_ALPHA) -> Comparison:
    return Comparison(baseline_name, method.mean - baseline.mean, welch_p_value(method, baseline), alpha)
