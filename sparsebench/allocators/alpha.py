"""AlphaPruning (Lu et al., NeurIPS 2024, arXiv 2410.10912; github haiquanlu/AlphaPruning at 541cb9a,
``lib/esd_utils.py`` ``net_esd_estimator`` and ``lib/prune.py`` ``ww_sparsity``; the same code is
NeuroAL's ``get_alpha_sparsity_distribution`` and TRIM's ``wanda_alpha``).

Heavy-tailed self-regularisation: a layer whose weight spectrum has a heavier tail (a smaller
power-law exponent alpha) is better trained and is pruned less. For each prunable linear W:

1. ESD: the eigenvalues lambda_1 <= ... <= lambda_N of W^T W (the squared singular values of W,
   N = min(rows, cols)).
2. Power-law fit (``fix_fingers=xmin_peak``, the reference's ``alpha_peak`` metric): for each
   candidate xmin = lambda_i, the maximum-likelihood exponent
       alpha_i = 1 + n / (sum_{k >= i} ln lambda_k - n ln lambda_i),   n = N - i,
   and the Kolmogorov-Smirnov distance D_i = max_{k >= i} |1 - (lambda_k / lambda_i)^(1 - alpha_i) - (k - i) / n|
   (D_i = 1 where alpha_i <= 1); alpha = alpha_i of the least D_i (the first on ties). The
   candidates are limited around the peak of a 100-bin histogram of log10(lambda): with
   xmin2 = 10^(left edge of the fullest bin), candidates with lambda_i < log10(0.95 xmin2) are
   skipped and the scan stops at the first lambda_i > 1.5 xmin2. The lower bound compares an
   eigenvalue with a log10, as the reference does (so in practice it rarely skips anything); we
   keep it so that the exponents are the reference's. ``fix_fingers=xmin_mid`` fits once at
   xmin = lambda_{floor(N/2)}. Zero eigenvalues are not filtered (the reference's default).
3. Mapping (``mapping=block``, the reference's ``block_wise``): each block's metric is the mean
   alpha of its linears; with a_min, a_max over all layers,
       r_l = (a_l - a_min) / (a_max - a_min) * 2 epsilon + (1 - epsilon)
   and every ratio is scaled by S sum_l numel_l / sum_l numel_l r_l, so the parameter-weighted
   mean sparsity is exactly S and the ratios span S' (1 - epsilon) .. S' (1 + epsilon).
   ``mapping=layer`` maps each linear's own alpha.

Where every layer has the same metric (a_max = a_min) the reference divides by zero; here every
layer gets S. The reference does not clip: a ratio outside (0, 1) (e.g. S = 0.8 with
epsilon = 0.3) is a configuration error here, naming the largest epsilon that fits.

Numerics: the reference takes ``torch.linalg.svdvals`` of the float32 weight on the CPU and
fits in float32; we take the eigenvalues of the smaller Gram matrix (W W^T or W^T W) in float64
on the weight's device, clamped at 0, and fit in float64 (faster on a GPU, and at least as exact;
alphas agree to ~1e-5, tests/test_alpha.py). ``epsilon`` defaults to 0.2, what the reference's
scripts use for Wanda and SparseGPT (``scripts/llama_7b.sh``, the paper's Table 2); its argparse
default and README example use 0.3 (its magnitude runs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sparsebench.allocators import Allocation, Allocator, PrunableLayer, register_allocator
from sparsebench.errors import ConfigError

FIX_FINGERS = ("xmin_peak", "xmin_mid")
MAPPINGS = ("block", "layer")
DEFAULT_EPSILON = 0.2
_HISTOGRAM_BINS = 100
_CANDIDATE_CHUNK = 256  # candidates whose KS distances are computed at once ([chunk, N] elements)


@dataclass
class AlphaParams:
    epsilon: float = DEFAULT_EPSILON  # half-width of the ratio range, relative: S (1 - epsilon) .. S (1 + epsilon)
    fix_fingers: str = "xmin_peak"
    mapping: str = "block"

    def check(self, key: str) -> None:
        check_alpha_keys(key, self.epsilon, self.fix_fingers, self.mapping)


def check_alpha_keys(key: str, epsilon, fix_fingers: str, mapping: str) -> None:
    if not isinstance(epsilon, (int, float)) or not 0 <= epsilon < 1:
        raise ConfigError(f"{key}.epsilon={epsilon!r}: must be a number in [0, 1)")
    if fix_fingers not in FIX_FINGERS:
        raise ConfigError(f"{key}.fix_fingers={fix_fingers!r}: allowed values are {', '.join(FIX_FINGERS)}")
    if mapping not in MAPPINGS:
        raise ConfigError(f"{key}.mapping={mapping!r}: allowed values are {', '.join(MAPPINGS)}")


# ---------------------------------------------------------------- the ESD power-law exponent


def esd_eigenvalues(weight: Tensor) -> Tensor:
    """Eigenvalues of W^T W in ascending order (float64): the squared singular values of W."""
    w = weight.to(torch.float64)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return torch.linalg.eigvalsh(gram).clamp_(min=0)


def _ks_distances(eigs: Tensor, logs: Tensor, start: int, alphas: Tensor) -> Tensor:
    """D_i for the candidates start, start + 1, ... (one per alpha), where alpha_i > 1; 1 elsewhere."""
    count, size = alphas.shape[0], eigs.shape[0]
    index = torch.arange(start, start + count, device=eigs.device).unsqueeze(1)
    k = torch.arange(size, device=eigs.device).unsqueeze(0)
    n = (size - index).to(eigs.dtype)
    exponent = (1 - alphas).unsqueeze(1)
    ratio_power = torch.exp(exponent * (logs.unsqueeze(0) - logs[index]))  # (lambda_k / lambda_i)^(1 - alpha)
    gaps = (1 - ratio_power - (k - index).to(eigs.dtype) / n).abs()
    gaps = torch.where(k >= index, gaps, torch.zeros_like(gaps))
    distances = gaps.amax(dim=1)
    return torch.where(alphas > 1, distances, torch.ones_like(distances))


def power_law_alpha(eigs: Tensor, fix_fingers: str = "xmin_peak", bins: int = _HISTOGRAM_BINS) -> float:
    """The reference's ``net_esd_estimator`` alpha of one ascending eigenvalue vector."""
    size = eigs.shape[0]
    logs = torch.log(eigs)
    suffix = torch.flip(torch.cumsum(torch.flip(logs, [0]), 0), [0])  # sum_{k >= i} ln lambda_k
    if fix_fingers == "xmin_mid":
        i = int(size / 2)
        n = size - i
        return float(1 + n / (suffix[i] - n * logs[i]))
    log10 = torch.log10(eigs).float().cpu()
    low, high = log10.min(), log10.max()
    counts = torch.histc(log10, bins, min=float(low), max=float(high))
    edges = torch.linspace(float(low), float(high), bins + 1)
    xmin2 = 10 ** edges[int(torch.argmax(counts))].double()
    lower, upper = math.log10(0.95 * float(xmin2)), 1.5 * float(xmin2)  # sic: an eigenvalue against a log10
    candidates = eigs[:-1]
    first = int((candidates < lower).sum()) if lower > float(candidates[0]) else 0
    above = torch.nonzero(candidates > upper)
    stop = int(above[0]) if above.numel() else size - 1
    alphas = torch.zeros(size - 1, dtype=torch.float64, device=eigs.device)
    distances = torch.ones(size - 1, dtype=torch.float64, device=eigs.device)
    if stop > first:
        index = torch.arange(first, stop, device=eigs.device)
        n = (size - index).to(torch.float64)
        alphas[first:stop] = 1 + n / (suffix[first:stop] - n * logs[first:stop])
        for start in range(first, stop, _CANDIDATE_CHUNK):
            end = min(stop, start + _CANDIDATE_CHUNK)
            distances[start:end] = _ks_distances(eigs, logs, start, alphas[start:end])
    return float(alphas[int(torch.argmin(distances))])


def layer_alphas(weights: dict[str, Tensor], fix_fingers: str = "xmin_peak") -> dict[str, float]:
    """The block summary: alpha of each prunable linear of one block (reads the weights only)."""
    return {name: power_law_alpha(esd_eigenvalues(weight), fix_fingers) for name, weight in weights.items()}


# ---------------------------------------------------------------- alphas to layer ratios


def alpha_ratios(metrics: Tensor, numels: Tensor, sparsity: float, epsilon: float) -> Tensor:
    """The reference's ``ww_sparsity`` linear mapping, parameter-weighted mean exactly ``sparsity``."""
    metrics, numels = metrics.to(torch.float64), numels.to(torch.float64)
    spread = metrics.max() - metrics.min()
    if spread == 0:
        return torch.full_like(metrics, sparsity)
    mapped = (metrics - metrics.min()) / spread * (2 * epsilon) + (1 - epsilon)
    return mapped * (numels.sum() * sparsity / (numels * mapped).sum())


def layer_metrics(layers: list[PrunableLayer], block_summaries: list[dict[str, float]], mapping: str) -> Tensor:
    """Each layer's alpha, or (``mapping=block``) the mean alpha of its block."""
    own = [block_summaries[layer.block][layer.name.split(".", 1)[1]] for layer in layers]
    if mapping == "layer":
        return torch.tensor(own, dtype=torch.float64)
    block_means = {b: sum(values.values()) / len(values) for b, values in enumerate(block_summaries)}
    return torch.tensor([block_means[layer.block] for layer in layers], dtype=torch.float64)


def alpha_allocation(layers, sparsity, block_summaries, epsilon=DEFAULT_EPSILON, fix_fingers="xmin_peak", mapping="block", key="allocator") -> Allocation:
    metrics = layer_metrics(layers, block_summaries, mapping)
    numels = torch.tensor([layer.numel for layer in layers], dtype=torch.float64)
    ratios = alpha_ratios(metrics, numels, sparsity, epsilon)
    if ratios.min() <= 0 or ratios.max() >= 1:
        fits = _largest_epsilon(metrics, numels, sparsity)
        raise ConfigError(
            f"{key}.epsilon={epsilon}: AlphaPruning's ratios reach {float(ratios.min()):.3f}..{float(ratios.max()):.3f}, "
            f"outside (0, 1) at sparsity {sparsity}; use {key}.epsilon <= {fits:.3f}"
        )
    details = {"epsilon": epsilon, "fix_fingers": fix_fingers, "mapping": mapping, "alphas": [dict(s) for s in block_summaries]}
    return Allocation({layer.name: float(r) for layer, r in zip(layers, ratios)}, details)


def _largest_epsilon(metrics: Tensor, numels: Tensor, sparsity: float) -> float:
    """The largest epsilon (to 1e-3) whose ratios stay inside (0, 1)."""
    low, high = 0.0, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        ratios = alpha_ratios(metrics, numels, sparsity, middle)
        low, high = (middle, high) if 0 < ratios.min() and ratios.max() < 1 else (low, middle)
    return math.floor(low * 1000) / 1000


def alpha_plan(ctx, epsilon: float, fix_fingers: str, mapping: str) -> Allocation:
    """AlphaPruning's ratios after a pass over the weights (one dict of alphas per block)."""
    summaries = ctx.weight_summaries(lambda weights: layer_alphas(weights, fix_fingers=fix_fingers))
    return alpha_allocation(ctx.layers, ctx.sparsity, summaries, epsilon, fix_fingers, mapping)


@register_allocator
class Alpha(Allocator):
    name = "alpha"
    Params = AlphaParams
    paper = "arXiv 2410.10912"

    def plan(self, ctx) -> Allocation:
        return alpha_plan(ctx, **self.params)
