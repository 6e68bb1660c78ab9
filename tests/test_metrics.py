import pytest
import torch

from sparsebench.testing.reference_impls import ria_mask, sparsegpt_column_by_column, wanda_mask, wanda_nm_mask
from sparsebench.masks import NMPattern, SparsityTarget
from sparsebench.metrics import METRICS
from sparsebench.stats import HESSIAN, INPUT_SQ_NORMS, StatsAccumulator


def _layer(rows=48, cols=96, tokens=600, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(cols, cols, generator=g, dtype=dtype) / cols**0.5
    inputs = torch.randn(tokens, cols, generator=g, dtype=dtype) @ mixing + 0.1 * torch.randn(tokens, cols, generator=g, dtype=dtype)
    weight = torch.randn(rows, cols, generator=g, dtype=dtype)
    return weight, inputs


def _stats(inputs, needs):
    acc = StatsAccumulator(frozenset(needs))
    for chunk in inputs.split(128):
        acc.add(chunk)
    if HESSIAN in needs:  # accumulate in float64 for the float64 comparison
        acc.stats.sums[HESSIAN] = inputs.T @ inputs
    return acc.stats


def test_metric_registry_lists_the_core_metrics():
    assert {"none", "magnitude", "wanda", "sparsegpt", "ria"} <= set(METRICS.names())


@pytest.mark.parametrize("comparison,per_outneuron", [("layer", False), ("row", True)])
def test_ria_mask_equals_reference(comparison, per_outneuron):
    weight, inputs = _layer(dtype=torch.float32)
    pruned = METRICS.get("ria").prune(weight, _stats(inputs, {INPUT_SQ_NORMS}), SparsityTarget(0.6), a=0.5, comparison=comparison)
    assert torch.equal(pruned == 0, ria_mask(weight, inputs, 0.6, 0.5, per_outneuron))


@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_wanda_mask_equals_reference(ratio):
    weight, inputs = _layer(dtype=torch.float32)
    pruned = METRICS.get("wanda").prune(weight, _stats(inputs, {INPUT_SQ_NORMS}), SparsityTarget(ratio))
    assert torch.equal(pruned == 0, wanda_mask(weight, inputs, ratio))


def test_wanda_n_m_mask_equals_reference():
    weight, inputs = _layer(dtype=torch.float32)
    pruned = METRICS.get("wanda").prune(weight, _stats(inputs, {INPUT_SQ_NORMS}), SparsityTarget(0.5, NMPattern(2, 4)))
    assert torch.equal(pruned == 0, wanda_nm_mask(weight, inputs, 2, 4))


def test_magnitude_per_layer_prunes_globally_smallest():
    weight, _ = _layer(dtype=torch.float32)
    pruned = METRICS.get("magnitude").prune(weight, None, SparsityTarget(0.6), comparison="layer")
    k = int(weight.numel() * 0.6)
    threshold = weight.abs().flatten().sort().values[k - 1]
    assert torch.equal(pruned == 0, weight.abs() <= threshold)
    row_pruned = METRICS.get("magnitude").prune(weight, None, SparsityTarget(0.6), comparison="row")
    assert ((row_pruned == 0).sum(1) == int(weight.shape[1] * 0.6)).all()


@pytest.mark.parametrize("pattern,blocksize", [(None, 32), (None, 128), (NMPattern(2, 4), 32), (NMPattern(4, 8), 64)])
def test_sparsegpt_matches_column_by_column_reference_in_float64(pattern, blocksize):
    weight, inputs = _layer()
    ratio = pattern.ratio if pattern else 0.6
    ours = METRICS.get("sparsegpt").prune(weight, _stats(inputs, {HESSIAN}), SparsityTarget(ratio, pattern), blocksize=blocksize)
    reference = sparsegpt_column_by_column(weight, inputs.T @ inputs, ratio, *((pattern.n, pattern.m) if pattern else (0, 0)), blocksize=blocksize)
    assert torch.equal(ours == 0, reference == 0)
    assert torch.allclose(ours, reference, rtol=0, atol=1e-10)


def test_sparsegpt_reconstructs_better_than_wanda():
    # Correlated input features (as in real activations) are where the OBS update pays off.
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(800, 24, generator=g) @ torch.randn(24, 96, generator=g) + 0.05 * torch.randn(800, 96, generator=g)
    weight = torch.randn(48, 96, generator=g)
    target = SparsityTarget(0.5)
    wanda = METRICS.get("wanda").prune(weight, _stats(inputs, {INPUT_SQ_NORMS}), target)
    sparsegpt = METRICS.get("sparsegpt").prune(weight, _stats(inputs, {HESSIAN}), target)
    assert (sparsegpt == 0).sum() == (wanda == 0).sum()
    error = lambda pruned: torch.linalg.norm(inputs.float() @ (weight - pruned).T)
    assert error(sparsegpt) < 0.5 * error(wanda)


def test_sparsegpt_keeps_dtype_and_rejects_row_ratios():
    weight, inputs = _layer(dtype=torch.float32)
    stats = _stats(inputs.float(), {HESSIAN})
    stats.sums[HESSIAN] = stats.sums[HESSIAN].float()
    assert METRICS.get("sparsegpt").prune(weight.half(), stats, SparsityTarget(0.5)).dtype == torch.float16
    with pytest.raises(ValueError, match="per-row"):
        METRICS.get("sparsegpt").prune(weight, stats, SparsityTarget(torch.full((weight.shape[0],), 0.5)))


def test_sparsegpt_group_solve_is_the_same_in_one_solve_or_in_sub_blocks():
    from sparsebench.metrics.sparsegpt import inverse_hessian_factor, solve_fixed_mask_group

    weight, inputs = _layer(rows=32, cols=64)
    factor = inverse_hessian_factor(inputs.T @ inputs, 0.01)
    mask = torch.rand(32, 64, generator=torch.Generator().manual_seed(3)) < 0.5
    one = solve_fixed_mask_group(weight, factor, mask)
    blocked = solve_fixed_mask_group(weight, factor, mask, sub_block=16)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(one, blocked))
