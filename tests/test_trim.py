"""TRIM: the per-row ratios against a direct transcription of the reference code (flobk/TRIM at
effcd518, ``lib/trim.py`` and the TRIM branch of ``lib/prune.py`` ``prune_wanda``), property tests
of the refinement's invariants, the last-token statistic, and cases end to end on a tiny model."""

from types import SimpleNamespace

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import compose_config, tiny_case_overrides
from test_neuroal import one_thread  # noqa: F401 (a fixture: one thread for tiny tensors)
from sparsebench.allocators.trim import refine_layer, trim_row_ratios
from sparsebench.config import validate
from sparsebench.errors import ConfigError
from sparsebench.masks import select_per_row
from sparsebench.metrics import METRICS
from sparsebench.runner import run_case
from sparsebench.stats import INPUT_SQ_NORMS, LAST_TOKEN_INPUTS, LayerStats, StatsAccumulator

# ---------------------------------------------------------------- the reference, transcribed

REF_ARGS = SimpleNamespace(qmetric="cosim_flat", qmetric_dimwise="cosim", iterations=10, forbid_neg_lr=False)


def ref_prune_matrix(W, sorted_idx, sparsities):
    batch_size, width = W.shape
    mask = torch.ones_like(W, dtype=torch.bool)
    num_prune = (width * sparsities).long()
    row_indices = torch.arange(batch_size).unsqueeze(1).expand(-1, width)
    prune_indices = torch.arange(width).unsqueeze(0).expand(batch_size, -1)
    prune_mask = prune_indices < num_prune.unsqueeze(1)
    mask[row_indices, sorted_idx] = ~prune_mask
    return W * mask


def ref_cosine_similarity(a, b):
    a_norm = a / (torch.norm(a) + 1e-8)
    b_norm = b / (torch.norm(b) + 1e-8)
    return torch.clamp(torch.sum(a_norm * b_norm), -1.0, 1.0)


def ref_cosine_similarity_dimwise(a, b):
    a_norm = a / (torch.norm(a, dim=1, keepdim=True) + 1e-8)
    b_norm = b / (torch.norm(b, dim=1, keepdim=True) + 1e-8)
    return torch.clamp(torch.sum(a_norm * b_norm, dim=1), -1.0, 1.0)


def ref_calc_qmetric(a, b):
    return ref_cosine_similarity(a.to(torch.float64), b.to(torch.float64)).item()


def ref_calc_qmetric_dimwise(a, b):
    return ref_cosine_similarity_dimwise(a.to(torch.float64), b.to(torch.float64))


def ref_get_sparsities_iterative(args, target_sparsity, W, inputs, sorted_idx, learning_rate):
    def update_x(x):
        qm_dimwise = ref_calc_qmetric_dimwise(unpruned_outputs, pruned_outputs)
        x_d = (qm_dimwise - qm_dimwise.min()) / (qm_dimwise.max() - qm_dimwise.min() + 1e-6)
        x_d *= learning_rate * 2
        x_d = x_d - x_d.mean()
        x += x_d
        x[x > 0.95] = 0.95
        x[x < 0] = 0
        x = x - x.mean() + target_sparsity
        return x

    unpruned_outputs = W @ inputs
    x = torch.ones(W.shape[0]) * target_sparsity
    pruned_outputs = ref_prune_matrix(W, sorted_idx, x) @ inputs
    best_metric = ref_calc_qmetric(unpruned_outputs, pruned_outputs)
    best_x = x.clone()
    best_iter = 0
    for i in range(args.iterations):
        x = update_x(x)
        pruned_outputs = ref_prune_matrix(W, sorted_idx, x) @ inputs
        metric_score = ref_calc_qmetric(unpruned_outputs, pruned_outputs)
        if metric_score > best_metric:
            best_metric = metric_score
            best_x = x.clone()
            best_iter = i
    return best_x, best_metric, best_iter


def ref_calculate_row_wise_sparsities(args, target_sparsity, W, inputs, sorted_idx):
    best_sparsities = torch.ones(W.shape[0]) * target_sparsity
    unpruned_output = W @ inputs
    pruned_output = ref_prune_matrix(W, sorted_idx, best_sparsities) @ inputs
    baseline_metric = ref_calc_qmetric(unpruned_output, pruned_output)
    best = {"metric": baseline_metric, "sparsities": best_sparsities, "learning_rate": None}

    def sweep(learning_rates):  # the reference writes this loop out twice, for positive then negative lrs
        best_this_method = float("-inf")
        for learning_rate in learning_rates:
            sparsities, metric_score, _ = ref_get_sparsities_iterative(args, target_sparsity, W, inputs, sorted_idx, learning_rate)
            if metric_score > best["metric"]:
                best.update(metric=metric_score, sparsities=sparsities, learning_rate=learning_rate)
            if metric_score > best_this_method:
                best_this_method = metric_score
            else:
                break

    sweep([0.01, 0.02, 0.04, 0.08, 0.12, 0.16])
    if best["learning_rate"] is None and args.forbid_neg_lr is not True:
        sweep([-0.01, -0.02, -0.04])
    best_sparsities, best_metric, best_learning_rate = best["sparsities"], best["metric"], best["learning_rate"]
    return best_sparsities, {"baseline_metric": baseline_metric, "best_metric": best_metric, "learning_rate": best_learning_rate}


def ref_trim_mask(W, W_metric, inputs, layer_sparsity_ratio, args=REF_ARGS):
    """``prune_wanda`` with ``trim=True`` for one linear: True where pruned."""
    sorted_idx = torch.sort(W_metric, dim=-1, stable=True)[1]
    sparsity_list, info = ref_calculate_row_wise_sparsities(args, layer_sparsity_ratio, W, inputs, sorted_idx)
    sparsity_list[sparsity_list > 0.95] = 0.95
    sparsity_list[sparsity_list < 0] = 0
    sparsity_list = sparsity_list - sparsity_list.mean() + layer_sparsity_ratio
    W_mask = ~ref_prune_matrix(torch.ones_like(W_metric), sorted_idx, sparsity_list).bool()
    return W_mask, sparsity_list, info


# ---------------------------------------------------------------- helpers


def _layer(seed, rows=24, cols=40, samples=8, outlier_rows=True):
    """A random linear with Wanda-like scores; some rows get heavy-tailed weights so that row qualities differ."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    if outlier_rows:
        W[: rows // 3] *= torch.rand(rows // 3, cols, generator=g).pow(4) * 6
    scale = torch.rand(cols, 1, generator=g) * 3
    X = torch.randn(cols, samples, generator=g) * scale
    tokens = torch.randn(64, cols, generator=g) * scale.T
    scores = W.abs() * tokens.square().sum(0).sqrt()
    return W, X, scores


def _our_mask(W, X, scores, ratio, **keys):
    stats = LayerStats(num_tokens=X.shape[1], sums={LAST_TOKEN_INPUTS: X.T.contiguous()})
    ratios, details = refine_layer(W, scores, stats, ratio, **keys)
    return select_per_row(scores, ratios), ratios, details


# ---------------------------------------------------------------- against the reference


# (seed, layer ratio, samples, heavy-tailed rows): random layers, plus single-sample layers with alike rows where no
# positive learning rate helps (a negative one, or none, is chosen)
REFERENCE_CASES = [(seed, ratio, 8, True) for seed in range(6) for ratio in (0.3, 0.5, 0.7, 0.8)] + [
    (1, 0.3, 1, False), (3, 0.5, 1, False), (9, 0.5, 1, False), (52, 0.5, 1, False), (12, 0.5, 1, False), (40, 0.8, 1, False),
]


@pytest.mark.parametrize("seed, ratio, samples, outliers", REFERENCE_CASES)
def test_row_ratios_and_masks_match_the_reference(seed, ratio, samples, outliers):
    W, X, scores = _layer(seed, samples=samples, outlier_rows=outliers)
    ref_mask, ref_ratios, ref_info = ref_trim_mask(W.clone(), scores, X, ratio)
    mask, ratios, details = _our_mask(W, X, scores, ratio)
    assert torch.equal(mask, ref_mask)
    cols = W.shape[1]
    assert torch.equal((ratios * cols).round().long(), (cols * ref_ratios).long().clamp(0, cols))
    assert details["learning_rate"] == ref_info["learning_rate"]
    # float32 outputs: the summation order (BLAS threads) moves the qualities by ~1e-10, the masks not at all
    assert details["quality_uniform"] == pytest.approx(ref_info["baseline_metric"], abs=1e-7)
    assert details["quality"] == pytest.approx(ref_info["best_metric"], abs=1e-7)


def test_the_reference_cases_reach_positive_negative_and_no_learning_rate():
    """The transcription comparison above is only as good as the branches it reaches."""
    chosen = set()
    for seed, ratio, samples, outliers in REFERENCE_CASES:
        W, X, scores = _layer(seed, samples=samples, outlier_rows=outliers)
        lr = _our_mask(W, X, scores, ratio)[2]["learning_rate"]
        chosen.add("none" if lr is None else "negative" if lr < 0 else "positive")
    assert chosen == {"none", "negative", "positive"}


def test_forbidding_negative_learning_rates_matches_the_reference_flag():
    args = SimpleNamespace(**{**vars(REF_ARGS), "forbid_neg_lr": True, "iterations": 4})
    for seed in range(6):
        W, X, scores = _layer(seed)
        ref_mask, _, ref_info = ref_trim_mask(W.clone(), scores, X, 0.6, args)
        mask, _, details = _our_mask(W, X, scores, 0.6, iterations=4, negative_learning_rates=[])
        assert torch.equal(mask, ref_mask) and details["learning_rate"] == ref_info["learning_rate"]
        assert details["learning_rate"] is None or details["learning_rate"] > 0


def test_quality_never_falls_below_the_uniform_split():
    for seed in range(4):
        W, X, scores = _layer(seed)
        _, _, details = _our_mask(W, X, scores, 0.7)
        assert details["quality"] >= details["quality_uniform"]
        assert [t["learning_rate"] for t in details["sweep"]][0] == 0.01


# ---------------------------------------------------------------- invariants


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000), rows=st.integers(2, 24), cols=st.integers(8, 64), samples=st.integers(1, 8),
    ratio=st.floats(0.05, 0.9), outliers=st.booleans(),
)
def test_row_ratios_lie_in_unit_interval_and_keep_the_layer_mean(seed, rows, cols, samples, ratio, outliers):
    W, X, scores = _layer(seed, rows, cols, samples, outliers)
    order = torch.sort(scores, dim=1, stable=True).indices
    ratios, _ = trim_row_ratios(W, X, order, ratio)
    assert ratios.min() >= 0 and ratios.max() < 1
    # the re-centred ratios have mean `ratio`; each row rounds down by less than 1/cols, and a row whose re-centred ratio
    # fell below 0 (by less than 1) prunes nothing, as in the reference: that can raise the mean by at most the share
    # of rows pruning nothing
    empty_rows = float((ratios == 0).double().mean())
    mean = float(ratios.mean())
    assert ratio - 1 / cols - 1e-6 <= mean <= ratio + empty_rows + 1e-6


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(2, 16), cols=st.integers(8, 48), ratio=st.floats(0.05, 0.9))
@example(seed=0, rows=7, cols=10, ratio=0.8999999999999999)
@example(seed=0, rows=7, cols=20, ratio=0.1)  # no lr wins, and the re-centring still takes one weight off
@example(seed=0, rows=7, cols=10, ratio=0.1)  # an lr wins, and the re-centring leaves the count whole
def test_identical_rows_give_uniform_ratios(seed, rows, cols, ratio):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(1, cols, generator=g).expand(rows, cols).contiguous()
    X = torch.randn(cols, 4, generator=g)
    scores = W.abs() * torch.rand(cols, generator=g)
    order = torch.sort(scores, dim=1, stable=True).indices
    ratios, details = trim_row_ratios(W, X, order, ratio)
    assert torch.equal(ratios, torch.full_like(ratios, float(ratios[0])))
    count, uniform_count = int(ratios[0] * cols + 0.5), int(cols * torch.tensor(ratio, dtype=torch.float32))
    # identical rows get identical updates (d = 0); the float32 re-centring s - mean(s) + ratio, as in the reference,
    # applied to the chosen ratios and to the kept uniform start alike, can move s one ulp below a whole count: one
    # weight fewer per row (Hypothesis found both outcomes, with and without a winning learning rate)
    assert count in (uniform_count, uniform_count - 1)


# ---------------------------------------------------------------- the last-token statistic


def test_last_token_inputs_keep_the_last_position_of_every_sequence():
    acc = StatsAccumulator(frozenset({LAST_TOKEN_INPUTS, INPUT_SQ_NORMS}))
    batches = [torch.randn(2, 5, 3), torch.randn(3, 5, 3)]
    for batch in batches:
        acc.add(batch)
    expected = torch.cat([b[:, -1] for b in batches])
    assert torch.equal(acc.stats.last_token_inputs, expected)
    assert torch.allclose(acc.stats.input_sq_norms, torch.cat([b.reshape(-1, 3) for b in batches]).square().sum(0))
    expected[0, 0] += 1  # a copy, not a view of the batch
    assert not torch.equal(acc.stats.last_token_inputs, expected)


# ---------------------------------------------------------------- configuration and cases end to end


def _overrides(tiny_model_dirs, tmp_path, cache_dir, metric, extra):
    return tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, metric, ["allocator=trim", *extra])


def test_trim_rejects_n_m_metrics_without_row_order_and_bad_keys(tiny_model_dirs, tmp_path, cache_dir):
    def spec(metric="wanda", extra=()):
        return validate(compose_config(_overrides(tiny_model_dirs, tmp_path, cache_dir, metric, list(extra))))

    with pytest.raises(ConfigError, match="allocator='trim' cannot honour sparsity.pattern=2:4 .* allocators that can: uniform"):
        spec(extra=["sparsity=2of4"])
    with pytest.raises(ConfigError, match="allocator=trim cannot refine metric='sparsegpt'.*: magnitude, multiflow, ria, swiftprune, wanda"):
        spec("sparsegpt")
    with pytest.raises(ConfigError, match="allocator=trim cannot refine metric='hassle_free'"):
        spec("hassle_free", ["decomposition.rank=2"])
    with pytest.raises(ConfigError, match="allocator.layerwise='neuroal': allowed values are uniform, owl, alpha"):
        spec(extra=["allocator.layerwise=neuroal"])
    with pytest.raises(ConfigError, match="allocator.m=5.0: only for allocator.layerwise=owl"):
        spec(extra=["allocator.m=5.0"])
    with pytest.raises(ConfigError, match=r"allocator.learning_rates=\[\]"):
        spec(extra=["allocator.learning_rates=[]"])
    with pytest.raises(ConfigError, match=r"allocator.negative_learning_rates=\[0.01\]"):
        spec(extra=["allocator.negative_learning_rates=[0.01]"])
    with pytest.raises(ConfigError, match="allocator.lam=0.7: must be in"):
        spec(extra=["allocator.layerwise=owl", "allocator.lam=0.7"])
    assert not spec().allocator.reads.dense and spec(extra=["allocator.layerwise=owl"]).allocator.reads.dense == {INPUT_SQ_NORMS}
    assert spec().allocator.reads.refine == {LAST_TOKEN_INPUTS} and spec().allocator.refiner().needs == {LAST_TOKEN_INPUTS}
    assert all(METRICS.get(name).scores is not None for name in ("magnitude", "wanda", "ria", "swiftprune"))


def test_trim_cases_end_to_end(tiny_model_dirs, tmp_path, cache_dir, one_thread):
    def run(metric, extra):
        return run_case(validate(compose_config(_overrides(tiny_model_dirs, tmp_path, cache_dir, metric, ["sparsity.ratio=0.6", *extra]))))

    uniform = run("wanda", [])
    assert uniform["status"] == "ok", uniform.get("error")
    allocation = uniform["allocation"]
    assert allocation["layerwise"] == "uniform" and set(allocation["layerwise_ratios"].values()) == {0.6}
    assert set(allocation["refinement"]) == set(allocation["layer_ratios"]) == set(uniform["sparsity"]["per_layer"])
    for name, layer in uniform["sparsity"]["per_layer"].items():
        summary, details = allocation["layer_ratios"][name], allocation["refinement"][name]
        assert summary["min"] <= summary["mean"] <= summary["max"] < 1
        assert layer["target"] == pytest.approx(summary["mean"], abs=1e-9)
        assert details["quality"] >= details["quality_uniform"] and "sweep" in details
    assert any(allocation["refinement"][name]["learning_rate"] is not None for name in allocation["refinement"])
    assert any(s["max"] > s["min"] for s in allocation["layer_ratios"].values())
    assert uniform["sparsity"]["achieved"] == pytest.approx(0.6, abs=0.02)

    over_owl = run("wanda", ["allocator.layerwise=owl", "allocator.lam=0.1"])
    assert over_owl["status"] == "ok", over_owl.get("error")
    owl_allocation = over_owl["allocation"]
    assert owl_allocation["owl"] == {"m": 7.0, "lam": 0.1} and owl_allocation["block_summaries"] is not None
    block_ratios = owl_allocation["block_ratios"]
    assert max(block_ratios) > min(block_ratios) and sum(block_ratios) / len(block_ratios) == pytest.approx(0.6)
    for name, summary in owl_allocation["layer_ratios"].items():
        assert summary["mean"] == pytest.approx(owl_allocation["layerwise_ratios"][name], abs=1 / 16 + 0.02)

    magnitude = run("magnitude", ["allocator.iterations=2"])  # calibration is read for the refinement alone
    assert magnitude["status"] == "ok", magnitude.get("error")
    assert magnitude["allocation"]["iterations"] == 2


@pytest.mark.slow
def test_real_smollm2_block_matches_the_reference(smollm2_loaded):
    """The first block of SmolLM2 (the shared real-model calibration): every linear's TRIM mask equals the transcription's."""
    from sparsebench.blockwalk import capture_block_inputs
    from sparsebench.data.tokens import tokenizer_fingerprint
    from sparsebench.prune import collect_block_stats
    from sparsebench.runner import CaseTokens, _calibration_ids
    from sparsebench.metrics.wanda import wanda_scores

    spec, loaded = smollm2_loaded
    ids, _ = _calibration_ids(spec, loaded, CaseTokens(tokenizer_fingerprint(loaded.tokenizer), None))
    samples = spec.calibration.nsamples
    block = loaded.adapter.get_blocks(loaded.model)[0]
    inputs = capture_block_inputs(loaded.model, loaded.adapter, ids, "cpu", 4)
    stats = collect_block_stats(block, loaded.adapter, inputs, frozenset({INPUT_SQ_NORMS, LAST_TOKEN_INPUTS}), 4)
    learning_rates = set()
    for group in loaded.adapter.input_groups:
        for name in group:
            W = block.get_submodule(name).weight.data.float()
            scores = wanda_scores(W, stats[group[0]].input_sq_norms)
            X = stats[group[0]].last_token_inputs.T
            assert X.shape == (W.shape[1], samples)
            ref_mask, _, ref_info = ref_trim_mask(W.clone(), scores, X, 0.7)
            ratios, details = refine_layer(W, scores, stats[group[0]], 0.7)
            assert torch.equal(select_per_row(scores, ratios), ref_mask), name
            assert details["learning_rate"] == ref_info["learning_rate"] and details["quality"] == pytest.approx(ref_info["best_metric"], abs=1e-7)
            learning_rates.add(details["learning_rate"])
    print("learning rates chosen in block 0:", learning_rates)
