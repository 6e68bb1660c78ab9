"""HASSLE-free against a direct transcription of its equations, its monotone objective, and SparseGPT alone."""

import pytest
import torch

from sparsebench.testing.reference_impls import sparsegpt_column_by_column
from sparsebench.errors import ConfigError
from sparsebench.masks import NMPattern, SparsityTarget
from sparsebench.metrics import METRICS
from sparsebench.metrics.hassle_free import best_low_rank
from sparsebench.stats import HESSIAN, LayerStats


def _layer(rows=24, cols=64, tokens=400, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(cols, cols, generator=g, dtype=dtype) / cols**0.5
    inputs = torch.randn(tokens, cols, generator=g, dtype=dtype) @ mixing + 0.1 * torch.randn(tokens, cols, generator=g, dtype=dtype)
    # a weight with a strong low-rank part, as the decomposition assumes
    weight = torch.randn(rows, cols, generator=g, dtype=dtype) + 2 * torch.randn(rows, 3, generator=g, dtype=dtype) @ torch.randn(3, cols, generator=g, dtype=dtype)
    return weight, inputs


def _stats(inputs):
    return LayerStats(inputs.shape[0], sums={HESSIAN: inputs.T @ inputs})


def _reference(weight, hessian, ratio, pattern, rank, iterations, damp):
    """The paper's alternating minimisation, written directly: S by SparseGPT's column loop, L = [M H^1/2]_r H^-1/2."""
    damped = hessian.clone()
    damped.diagonal()[damped.diagonal() == 0] = 1
    damped.diagonal().add_(damp * damped.diagonal().mean())
    values, vectors = torch.linalg.eigh(damped)
    root = vectors @ torch.diag(values.sqrt()) @ vectors.T
    inverse_root = vectors @ torch.diag(values.rsqrt()) @ vectors.T
    n, m = (pattern.n, pattern.m) if pattern else (0, 0)

    def sparse_step(target):  # percdamp=0: ``damped`` is already damped
        return sparsegpt_column_by_column(target, damped, ratio, n, m, blocksize=32, percdamp=0.0)

    def low_rank_step(residual):
        u, s, vh = torch.linalg.svd(residual @ root)
        return u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank] @ inverse_root

    def objective(sparse, low_rank):
        error = weight - sparse - low_rank
        return torch.trace(error @ damped @ error.T)

    sparse, low_rank = sparse_step(weight), torch.zeros_like(weight)
    trace = [objective(sparse, low_rank)]
    for iteration in range(iterations):
        candidate = sparse if iteration == 0 else sparse_step(weight - low_rank)
        candidate_low_rank = low_rank_step(weight - candidate)
        if not objective(candidate, candidate_low_rank) < trace[-1]:
            break
        sparse, low_rank = candidate, candidate_low_rank
        trace.append(objective(sparse, low_rank))
    dense = torch.trace(weight @ damped @ weight.T)
    return sparse, low_rank, [float(value / dense) for value in trace]


@pytest.mark.parametrize("pattern,ratio", [(None, 0.6), (NMPattern(2, 4), 0.5)])
def test_matches_direct_transcription_of_the_equations_in_float64(pattern, ratio):
    weight, inputs = _layer()
    hessian = inputs.T @ inputs
    result = METRICS.get("hassle_free").prune(weight, _stats(inputs), SparsityTarget(ratio, pattern), rank=4, iterations=5, blocksize=32)
    sparse, low_rank, trace = _reference(weight, hessian, ratio, pattern, rank=4, iterations=5, damp=0.01)
    assert result.info["iterations"] == len(trace) - 1 > 1
    assert torch.equal(result.sparse == 0, sparse == 0)
    assert torch.allclose(result.sparse, sparse, rtol=0, atol=1e-9)
    assert torch.allclose(result.low_rank_up @ result.low_rank_down, low_rank, rtol=0, atol=1e-9)
    assert result.info["objective_trace"] == pytest.approx(trace, rel=1e-9)
    residual = inputs @ (weight - sparse - low_rank).T
    assert result.info["relative_error"] == pytest.approx(float(residual.square().sum() / (inputs @ weight.T).square().sum()), rel=1e-9)


@pytest.mark.parametrize("pattern,ratio", [(None, 0.7), (NMPattern(2, 4), 0.5)])
def test_objective_falls_at_every_iteration_and_beats_sparsegpt_alone(pattern, ratio):
    weight, inputs = _layer(rows=48, cols=96, tokens=600, seed=1, dtype=torch.float32)
    stats, target = _stats(inputs), SparsityTarget(ratio, pattern)
    result = METRICS.get("hassle_free").prune(weight, stats, target, rank=4, iterations=8)
    trace = result.info["objective_trace"]
    assert len(trace) == result.info["iterations"] + 1 >= 4
    assert all(later < earlier for earlier, later in zip(trace, trace[1:]))
    sparsegpt = METRICS.get("sparsegpt").prune(weight, stats, target)
    assert int((result.sparse == 0).sum()) == int((sparsegpt == 0).sum())  # equal sparsity

    def error(approximation):
        return float((inputs @ (weight - approximation).T).square().sum() / (inputs @ weight.T).square().sum())

    assert result.info["relative_error_sparse_only"] == pytest.approx(error(sparsegpt), rel=1e-4)  # S_0 is SparseGPT's
    decomposed = error(result.sparse + result.low_rank_up @ result.low_rank_down)
    assert decomposed == pytest.approx(result.info["relative_error"], rel=1e-3)
    assert decomposed < 0.5 * error(sparsegpt)


def test_low_rank_step_is_the_minimiser_in_the_hessian_metric():
    weight, inputs = _layer(rows=20, cols=30, tokens=200, seed=2)
    hessian = inputs.T @ inputs + 1e-3 * torch.eye(30, dtype=weight.dtype)
    up, down = best_low_rank(weight, torch.linalg.cholesky(hessian), 5)

    def objective(low_rank):
        return float(torch.trace((weight - low_rank) @ hessian @ (weight - low_rank).T))

    best = objective(up @ down)
    g = torch.Generator().manual_seed(3)
    for scale in (1e-4, 1e-2, 1.0):  # any other rank-5 matrix near it or far from it does worse
        for _ in range(10):
            other = (up + scale * torch.randn(up.shape, generator=g, dtype=up.dtype)) @ (down + scale * torch.randn(down.shape, generator=g, dtype=down.dtype))
            assert objective(other) >= best
    plain_up, plain_down = best_low_rank(weight, torch.eye(30, dtype=weight.dtype), 5)  # H = I: the plain truncated SVD
    u, s, vh = torch.linalg.svd(weight)
    assert torch.allclose(plain_up @ plain_down, u[:, :5] @ torch.diag(s[:5]) @ vh[:5], atol=1e-10)


@pytest.mark.parametrize("rows,cols", [(20, 30), (30, 20), (25, 25)])
def test_low_rank_factors_equal_those_of_the_full_svd(rows, cols):
    """The Gram-eigenvector form gives the SVD form's factors (up to each direction's sign), tall or wide."""
    weight, inputs = _layer(rows=rows, cols=cols, tokens=200, seed=4)
    cholesky = torch.linalg.cholesky(inputs.T @ inputs + 1e-3 * torch.eye(cols, dtype=weight.dtype))
    up, down = best_low_rank(weight, cholesky, 5)
    u, s, vh = torch.linalg.svd(weight @ cholesky, full_matrices=False)
    svd_up = u[:, :5] * s[:5].sqrt()
    svd_down = torch.linalg.solve_triangular(cholesky, s[:5].sqrt().unsqueeze(1) * vh[:5], upper=False, left=False)
    signs = torch.sign((up * svd_up).sum(0))
    assert torch.allclose(up * signs, svd_up, atol=1e-9)
    assert torch.allclose(down * signs.unsqueeze(1), svd_down, atol=1e-9)
    exact_rank_two = weight[:, :2] @ weight[:2]  # rank 2 < 5: the three missing directions get zero factors
    up, down = best_low_rank(exact_rank_two, cholesky, 5)
    assert torch.allclose(up @ down, exact_rank_two, atol=1e-9) and bool(torch.isfinite(up).all() and torch.isfinite(down).all())


def test_rejects_ranks_that_do_not_fit_and_per_row_ratios():
    weight, inputs = _layer(dtype=torch.float32)
    prune = METRICS.get("hassle_free").prune
    with pytest.raises(ConfigError, match=r"decomposition.rank=24: .* a 24x64 linear allows at most 23"):
        prune(weight, _stats(inputs), SparsityTarget(0.5), rank=24)
    with pytest.raises(ValueError, match="per-row"):
        prune(weight, _stats(inputs), SparsityTarget(torch.full((24,), 0.5)), rank=4)
    assert prune(weight.half(), _stats(inputs), SparsityTarget(0.5), rank=4, iterations=2).low_rank_up.dtype == torch.float16


def test_an_iteration_that_does_not_lower_the_objective_is_rejected_and_ends_the_loop(monkeypatch):
    import sparsebench.metrics.hassle_free as hassle_free

    solve = hassle_free.sparsegpt_solve
    calls = []

    def worse_after_the_first(weight, factor, target, blocksize=128):
        calls.append(1)
        if len(calls) == 1:
            return solve(weight, factor, target, blocksize)
        return weight.masked_fill(weight.abs() >= weight.abs().median(), 0)  # prunes the largest half

    monkeypatch.setattr(hassle_free, "sparsegpt_solve", worse_after_the_first)
    weight, inputs = _layer()
    result = hassle_free.hassle_free(weight, _stats(inputs), SparsityTarget(0.5), rank=4, iterations=5)
    assert len(calls) == 2 and result.info["iterations"] == 1 and result.info["stopped"] == "no further decrease"
    assert torch.equal(result.sparse, solve(weight, hassle_free.inverse_factor_of_damped(hassle_free.damped_hessian(inputs.T @ inputs, 0.01)), SparsityTarget(0.5)))
    assert result.info["objective_trace"][1] < result.info["objective_trace"][0]
