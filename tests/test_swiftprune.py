"""SwiftPrune: its L-scores and masks against slow, direct references written from the equations
(our reading of arXiv 2501.16376, see sparsebench/metrics/swiftprune.py), its EWMA against the
sequential definition, and its sort-free selection against a stable sort."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import compose_config, tiny_case_overrides
from sparsebench.config import validate
from sparsebench.errors import ConfigError
from sparsebench.masks import NMPattern, SparsityTarget, select_per_row
from sparsebench.metrics import METRICS
from sparsebench.metrics.swiftprune import ewma_last, ewma_threshold, l_scores, select_per_row_ewma
from sparsebench.stats import INPUT_SQ_NORMS, StatsAccumulator


def _layer(rows=24, cols=64, tokens=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    # A few input features carry much of the energy, as outlier features do in LLMs.
    feature_scale = torch.ones(cols)
    feature_scale[: cols // 16] = 12.0
    inputs = torch.randn(tokens, cols, generator=g, dtype=torch.float64) * feature_scale.double()
    weight = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    return weight, inputs


def _stats(inputs):
    acc = StatsAccumulator(frozenset({INPUT_SQ_NORMS}))
    for chunk in inputs.float().split(64):
        acc.add(chunk)
    return acc.stats


def reference_l_scores(weight, inputs):
    """L_ij = w_ij^2 / (1 - x_j^2 / S), x_j^2 = sum_t x_tj^2, S = sum_j x_j^2, element by element."""
    rows, cols = weight.shape
    energy = [sum(float(inputs[t, j]) ** 2 for t in range(inputs.shape[0])) for j in range(cols)]
    total = sum(energy)
    return torch.tensor([[float(weight[i, j]) ** 2 / (1 - energy[j] / total) for j in range(cols)] for i in range(rows)], dtype=torch.float64)


def reference_contribution_scores(weight, inputs):
    """|w_ij| * ||x_j||, ||x_j||^2 = sum_t x_tj^2, element by element."""
    rows, cols = weight.shape
    energy = [sum(float(inputs[t, j]) ** 2 for t in range(inputs.shape[0])) for j in range(cols)]
    return torch.tensor([[abs(float(weight[i, j])) * energy[j] ** 0.5 for j in range(cols)] for i in range(rows)], dtype=torch.float64)


REFERENCE_SCORES = {"obs_rank1": reference_l_scores, "contribution": reference_contribution_scores}


def reference_row_mask(scores, counts):
    """Per row, the ``counts[i]`` lowest scores (ties by position)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for i, row in enumerate(scores.tolist()):
        for j in sorted(range(len(row)), key=lambda j: (row[j], j))[: int(counts[i])]:
            mask[i, j] = True
    return mask


def reference_n_m_mask(scores, n, m):
    mask = torch.zeros_like(scores, dtype=torch.bool)
    for i, row in enumerate(scores.tolist()):
        for start in range(0, len(row), m):
            for j in sorted(range(start, start + m), key=lambda j: (row[j], j))[:n]:
                mask[i, j] = True
    return mask


def test_l_scores_equal_the_direct_formula():
    weight, inputs = _layer()
    ours = l_scores(weight, _stats(inputs).input_sq_norms)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours.double(), reference_l_scores(weight, inputs), rtol=1e-5, atol=0)


def test_l_scores_without_input_energy_are_squared_weights():
    weight, _ = _layer()
    assert torch.equal(l_scores(weight, torch.zeros(weight.shape[1])), weight.float().square())


@pytest.mark.parametrize("score", ["contribution", "obs_rank1"])
@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_unstructured_mask_equals_reference(ratio, score):
    weight, inputs = _layer(seed=1)
    pruned = METRICS.get("swiftprune").prune(weight.float(), _stats(inputs), SparsityTarget(ratio), score=score)
    counts = [int(weight.shape[1] * ratio)] * weight.shape[0]
    assert torch.equal(pruned == 0, reference_row_mask(REFERENCE_SCORES[score](weight, inputs).float(), counts))


@pytest.mark.parametrize("score", ["contribution", "obs_rank1"])
def test_per_row_ratios_mask_equals_reference(score):
    weight, inputs = _layer(seed=2)
    ratios = torch.linspace(0.2, 0.9, weight.shape[0])
    pruned = METRICS.get("swiftprune").prune(weight.float(), _stats(inputs), SparsityTarget(ratios), score=score)
    counts = [int(weight.shape[1] * float(r) + 1e-6) for r in ratios]
    assert torch.equal(pruned == 0, reference_row_mask(REFERENCE_SCORES[score](weight, inputs).float(), counts))


@pytest.mark.parametrize("score", ["contribution", "obs_rank1"])
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_n_m_mask_equals_reference(n, m, score):
    weight, inputs = _layer(seed=3)
    pruned = METRICS.get("swiftprune").prune(weight.float(), _stats(inputs), SparsityTarget(n / m, NMPattern(n, m)), score=score)
    assert torch.equal(pruned == 0, reference_n_m_mask(REFERENCE_SCORES[score](weight, inputs).float(), n, m))


@pytest.mark.parametrize("target", [SparsityTarget(0.5), SparsityTarget(0.7), SparsityTarget(0.5, NMPattern(2, 4))])
def test_the_contribution_reading_prunes_what_wanda_prunes_per_row(target):
    weight, inputs = _layer(seed=5)
    swift = METRICS.get("swiftprune").prune(weight.float(), _stats(inputs), target, score="contribution") == 0
    wanda = METRICS.get("wanda").prune(weight.float(), _stats(inputs), target, comparison="row") == 0
    assert torch.equal(swift, wanda)


def test_input_energy_protects_weights_of_high_energy_features():
    weight, inputs = _layer(seed=4)
    swift = METRICS.get("swiftprune").prune(weight.float(), _stats(inputs), SparsityTarget(0.5), score="obs_rank1") == 0
    magnitude = METRICS.get("magnitude").prune(weight.float(), None, SparsityTarget(0.5), comparison="row") == 0
    loud = slice(0, weight.shape[1] // 16)
    assert not torch.equal(swift, magnitude)
    assert swift[:, loud].sum() < magnitude[:, loud].sum()


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.125, 0.01])
@pytest.mark.parametrize("cols", [1, 2, 37, 600])
def test_ewma_weighted_sum_equals_the_sequential_recursion(alpha, cols):
    values = torch.rand(5, cols, generator=torch.Generator().manual_seed(cols), dtype=torch.float64)
    expected = values[:, 0].clone()
    for t in range(1, cols):
        expected = (1 - alpha) * expected + alpha * values[:, t]
    assert torch.allclose(ewma_last(values, alpha), expected, rtol=1e-12, atol=0)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 6), cols=st.integers(1, 60), ratio=st.floats(0.0, 0.99), levels=st.sampled_from([2, 5, 1000]),
    alpha=st.sampled_from([1.0, 0.125, 0.01]), passes=st.integers(0, 4), seed=st.integers(0, 1000),
)
def test_sort_free_selection_equals_a_stable_sort(rows, cols, ratio, levels, alpha, passes, seed):
    # few levels: many ties, which must go by position as in the stable sort
    scores = torch.randint(0, levels, (rows, cols), generator=torch.Generator().manual_seed(seed)).float()
    assert torch.equal(select_per_row_ewma(scores, ratio, alpha, passes), select_per_row(scores, ratio))


def test_selection_calls_no_sort(monkeypatch):
    scores = torch.randn(32, 500, generator=torch.Generator().manual_seed(5)).square()
    expected = select_per_row(scores, 0.7)

    def forbidden(*args, **kwargs):
        raise AssertionError("sorted")

    for name in ("sort", "argsort", "msort", "kthvalue"):
        monkeypatch.setattr(torch, name, forbidden)
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    assert torch.equal(select_per_row_ewma(scores, 0.7), expected)


def test_ewma_threshold_lands_near_the_target_count():
    # Gaussian weights: the EWMA estimate alone misses by several %, three counting passes by < 1 %.
    scores = torch.randn(128, 2048, generator=torch.Generator().manual_seed(6)).square()
    counts = torch.full((128,), int(2048 * 0.7))
    miss = lambda passes: int(((scores < ewma_threshold(scores, counts, 0.125, passes).unsqueeze(1)).sum(1) - counts).abs().max())
    assert miss(0) > 0.05 * 2048
    assert miss(3) < 0.01 * 2048


@pytest.mark.parametrize("key,value,message", [
    ("ewma_alpha", 0.0, "metric.ewma_alpha=0.0: must be a number in \\(0, 1\\]"),
    ("ewma_alpha", 1.5, "metric.ewma_alpha=1.5"),
    ("refine_passes", -1, "metric.refine_passes=-1: must be an integer >= 0"),
    ("refine_passes", 1.5, "metric.refine_passes=1.5"),
    ("score", "hessian", "metric.score='hessian': allowed values are contribution, obs_rank1"),
])
def test_bad_parameters_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        METRICS.get("swiftprune").make_params({key: value})


@pytest.mark.parametrize("sparsity", ["sparsity.ratio=0.7", "sparsity=2of4"])
def test_tiny_model_case_meets_its_sparsity(sparsity, tiny_model_dirs, tmp_path, cache_dir):
    from sparsebench.runner import run_case

    spec = validate(compose_config(tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, "swiftprune", [sparsity])))
    document = run_case(spec)
    assert document["status"] == "ok", document.get("error")
    assert document["config"]["metric"] == {"name": "swiftprune", "score": "contribution", "ewma_alpha": 0.125, "refine_passes": 4}
    # status ok: every layer passed the runner's check of achieved against target sparsity
    assert document["sparsity"]["target"] == pytest.approx(0.5 if sparsity.endswith("2of4") else 0.7)


@pytest.mark.slow
def test_sort_free_selection_equals_a_sort_on_every_smollm2_weight(smollm2_loaded):
    # Real Q4-quantised weights: lumpy, with many tied magnitudes, unlike the Gaussian tests above.
    from sparsebench.layers import prunable_layers

    _, loaded = smollm2_loaded
    blocks = loaded.adapter.get_blocks(loaded.model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: on a shared 2-core CPU two threads spend longer handing off than computing
    try:
        for layer in prunable_layers(loaded.model, loaded.adapter):
            scores = l_scores(blocks[layer.block].get_submodule(layer.name.split(".", 1)[1]).weight.data, torch.ones(layer.cols))
            for ratio in (0.5, 0.7):
                assert torch.equal(select_per_row_ewma(scores, ratio), select_per_row(scores, ratio)), (layer.name, ratio)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", [(4096, 4096), (11008, 4096), (4096, 11008)])
def test_sort_free_selection_on_the_gpu_equals_the_cpu_sort(shape):
    g = torch.Generator().manual_seed(7)
    scores = torch.randn(*shape, generator=g).square()
    scores[:, :64] = scores[:, 64:128]  # some ties
    ratios = torch.rand(shape[0], generator=g) * 0.9
    for ratio in (0.5, 0.7, ratios):
        gpu = select_per_row_ewma(scores.cuda(), ratio.cuda() if isinstance(ratio, torch.Tensor) else ratio)
        assert torch.equal(gpu.cpu(), select_per_row(scores, ratio))
