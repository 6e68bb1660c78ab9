"""multiflow: scores and masks against a direct transcription of NeuroAL's ``prune_multiflow`` (with its
WrappedGPT ``scaler_row``), on tiny models of several families, and N:M (end to end: tests/test_dsnot.py)."""

import pytest
import torch

from test_dsnot import RefWrappedGPT
from test_neuroal import one_thread  # noqa: F401 (a fixture)
from sparsebench.testing.tiny_models import block_linear_inputs, tiny_model
from sparsebench.masks import NMPattern, SparsityTarget, select_n_m
from sparsebench.metrics import METRICS
from sparsebench.metrics.multiflow import multiflow, multiflow_scores
from sparsebench.stats import INPUT_SQ_NORMS, StatsAccumulator


def ref_multiflow_mask(weight, wrapped, sparsity):
    """``prune_multiflow`` for one linear, granularity 'row' (``compute_mask``)."""
    W_metric = torch.abs(weight)
    actn_norm = torch.sqrt(wrapped.scaler_row.reshape((1, -1)))
    importance_per_output = (W_metric * actn_norm).mean(dim=1)
    importance_per_input = (W_metric * actn_norm).mean(dim=0)
    W_metric *= torch.ger(importance_per_output, importance_per_input)
    W_mask = torch.zeros_like(W_metric) == 1
    sort_res = torch.sort(W_metric, dim=-1, stable=True)
    indices = sort_res[1][:, : int(W_metric.shape[1] * sparsity)]
    W_mask.scatter_(1, indices, True)
    return W_mask, W_metric


@pytest.mark.parametrize("family", ["llama", "opt", "phi", "gpt_neox", "mistral"])
def test_masks_and_scores_match_the_reference(family, one_thread):
    _, linears = block_linear_inputs(tiny_model(family, seed=2), sequences=4, tokens=24, seed=2)
    for name, (weight, inputs) in linears.items():
        wrapped = RefWrappedGPT(inputs.shape[-1])
        for sequence in inputs:
            wrapped.add_batch(sequence.unsqueeze(0))
        accumulator = StatsAccumulator(frozenset({INPUT_SQ_NORMS}))
        accumulator.add(inputs)
        stats = accumulator.stats
        scores = METRICS.get("multiflow").scores(weight, stats)
        for ratio in (0.5, 0.7):
            ref_mask, ref_scores = ref_multiflow_mask(weight.clone(), wrapped, ratio)
            pruned = multiflow(weight, stats, SparsityTarget(ratio), comparison="row")
            assert torch.equal(pruned == 0, ref_mask | (weight == 0)), f"{family} {name} {ratio}"
        # the reference's ||X|| carries 1/sqrt(sequences): its scores are ours / sequences
        torch.testing.assert_close(scores / inputs.shape[0], ref_scores, rtol=1e-4, atol=1e-12)


def test_n_m_prunes_the_lowest_scores_of_each_group():
    generator = torch.Generator().manual_seed(0)
    weight, norms = torch.randn(16, 32, generator=generator), torch.rand(32, generator=generator)
    from sparsebench.stats import LayerStats

    stats = LayerStats(num_tokens=1, sums={INPUT_SQ_NORMS: norms})
    pruned = multiflow(weight, stats, SparsityTarget(0.5, NMPattern(2, 4)))
    assert torch.equal(pruned == 0, select_n_m(multiflow_scores(weight, norms), NMPattern(2, 4)))
    assert ((pruned == 0).reshape(16, 8, 4).sum(-1) == 2).all()

