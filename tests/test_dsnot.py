"""DSnoT: masks against a direct transcription of the reference (zyxxmu/DSnoT at dd4e2ee and NeuroAL's
``lib/prune.py`` ``prune_DSnoT``, unstructured branch, with ``lib/layerwrapper.py``'s WrappedGPT
statistics), the row-count invariant (hypothesis), the statistics, and cases end to end."""

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import compose_config, tiny_case_overrides
from test_neuroal import one_thread  # noqa: F401 (a fixture)
from sparsebench.testing.tiny_models import block_linear_inputs, tiny_model
from sparsebench.allocators.dsnot import dsnot_mask, refine_mask, sign_reorder
from sparsebench.config import validate
from sparsebench.errors import ConfigError
from sparsebench.masks import select_per_row
from sparsebench.metrics import METRICS
from sparsebench.metrics.multiflow import multiflow_scores
from sparsebench.metrics.wanda import wanda_scores
from sparsebench.runner import run_case
from sparsebench.stats import HESSIAN, INPUT_SQ_NORMS, INPUT_SUMS, SEQUENCE_VARIANCES, StatsAccumulator

# ---------------------------------------------------------------- the reference, transcribed


class RefWrappedGPT:
    """lib/layerwrapper.py: running statistics over ``add_batch`` calls of one sequence each."""

    def __init__(self, columns):
        self.nsamples = 0
        self.ntokens = 0
        self.scaler_row = torch.zeros(columns)
        self.sum_metric_row = torch.zeros(columns)
        self.mean = torch.zeros((columns, 1))
        self.var = torch.zeros((columns, 1))

    def add_batch(self, inp):
        tmp = inp.shape[0]
        inp = inp.reshape((-1, inp.shape[-1])).t().type(torch.float32)
        mean_inp = torch.mean(inp, dim=1, keepdim=True)
        var_inp = torch.var(inp, dim=1, unbiased=False, keepdim=True)
        num_inp = inp.shape[1]
        self.var = var_inp if self.ntokens == 0 else (self.var * self.ntokens + var_inp * num_inp) / (self.ntokens + num_inp)
        self.mean = mean_inp if self.ntokens == 0 else (self.mean * self.ntokens + mean_inp * num_inp) / (self.ntokens + num_inp)
        self.ntokens += num_inp
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.sum_metric_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples
        self.sum_metric_row += torch.sum(inp, dim=1) / self.nsamples


def ref_return_reorder_indice(input_tensor):
    positive_tensor = input_tensor.clone()
    negative_tensor = input_tensor.clone()
    positive_mask = positive_tensor > 0
    negative_mask = negative_tensor < 0
    positive_indices = torch.arange(0, input_tensor.shape[1]).to(torch.float64).repeat(input_tensor.shape[0], 1)
    negative_indices = torch.arange(0, input_tensor.shape[1]).to(torch.float64).repeat(input_tensor.shape[0], 1)
    positive_indices[~positive_mask] = float("inf")
    negative_indices[~negative_mask] = float("inf")
    positive_value, _ = torch.sort(positive_indices, dim=1)
    negative_value, _ = torch.sort(negative_indices, dim=1)
    positive_value = torch.flip(positive_value, dims=[1])
    negative_value[negative_value == float("inf")] = 0
    positive_value[positive_value == float("inf")] = 0
    return (positive_value + negative_value).to(torch.int64)


def ref_dsnot_unstructured(args, weight, wrapped, initial_metric):
    """The unstructured branch of ``prune_DSnoT`` for one linear (not skipped); returns the mask."""
    DSnoT_metric = weight * wrapped.sum_metric_row.reshape((1, -1))
    weight_mask = torch.zeros_like(initial_metric) == 1
    _, sorted_initial_indice = torch.sort(initial_metric, dim=-1, stable=True)
    sparsity_num = int(initial_metric.shape[1] * args.sparsity_ratio)
    res_sparsity_num = sorted_initial_indice.shape[1] - sparsity_num
    initial_prune_indices, initial_res_indices = torch.split(sorted_initial_indice, split_size_or_sections=[sparsity_num, res_sparsity_num], dim=1)
    weight_mask.scatter_(1, initial_prune_indices, True)
    metric_for_regrowing = DSnoT_metric.clone()
    wanda_metric = torch.abs(weight) * torch.sqrt(wrapped.scaler_row.reshape((1, -1)))
    metric_for_regrowing.scatter_(1, initial_res_indices, 0)
    reconstruction_error = torch.sum(metric_for_regrowing, dim=1, keepdim=True)
    initialize_error_sign = torch.sign(reconstruction_error)
    if args.pow_of_var_regrowing:
        metric_for_regrowing /= torch.pow(wrapped.var.reshape((1, -1)), args.pow_of_var_regrowing)
    _, regrowing_indices_block = torch.sort(metric_for_regrowing, dim=1, stable=True)
    wanda_metric.scatter_(1, initial_prune_indices, float("inf"))
    wanda_res_indices, _ = torch.split(torch.sort(wanda_metric, dim=1, stable=True)[1], split_size_or_sections=[res_sparsity_num, sparsity_num], dim=1)
    reorder_indice_of_pruning_indice = ref_return_reorder_indice(torch.gather(DSnoT_metric, 1, wanda_res_indices))
    pruning_indices_block = torch.gather(wanda_res_indices, 1, reorder_indice_of_pruning_indice)
    indice_indice_list_for_regrowing = torch.zeros((reconstruction_error.shape[0], 2), dtype=torch.long)
    indice_indice_list_for_regrowing[:, 1] = regrowing_indices_block.shape[-1] - 1
    update_num_for_regrowing = torch.ones((reconstruction_error.shape[0], 2), dtype=torch.long)
    update_num_for_regrowing[:, 1] = -1
    indice_indice_list_for_pruning = torch.zeros((reconstruction_error.shape[0], 2), dtype=torch.long)
    indice_indice_list_for_pruning[:, 1] = pruning_indices_block.shape[-1] - 1
    update_num_for_pruning = torch.ones((reconstruction_error.shape[0], 2), dtype=torch.long)
    update_num_for_pruning[:, 1] = -1
    update_mask = torch.ones_like(reconstruction_error, dtype=torch.bool)
    cycle_time = 0
    while not (torch.all(update_mask == False) or cycle_time >= args.max_cycle_time):  # noqa: E712
        cycle_time += 1
        indice_of_indice_indice_list_for_regrowing = (reconstruction_error > 0).int().to(torch.int64)
        indice_indice_for_regrowing = torch.gather(indice_indice_list_for_regrowing, 1, indice_of_indice_indice_list_for_regrowing)
        regrowing_indice = torch.gather(regrowing_indices_block, 1, indice_indice_for_regrowing.to(torch.int64))
        regrowing_metric = DSnoT_metric.gather(1, regrowing_indice.to(torch.int64))
        indice_indice_list_for_regrowing.scatter_(
            1, indice_of_indice_indice_list_for_regrowing,
            indice_indice_for_regrowing + update_num_for_regrowing.gather(1, indice_of_indice_indice_list_for_regrowing),
        )
        indice_of_indice_indice_list_for_pruning = (reconstruction_error < 0).int().to(torch.int64)
        indice_indice_for_pruning = torch.gather(indice_indice_list_for_pruning, 1, indice_of_indice_indice_list_for_pruning)
        pruning_indice = torch.gather(pruning_indices_block, 1, indice_indice_for_pruning.to(torch.int64))
        pruning_metric = DSnoT_metric.gather(1, pruning_indice.to(torch.int64))
        indice_indice_list_for_pruning.scatter_(
            1, indice_of_indice_indice_list_for_pruning,
            indice_indice_for_pruning + update_num_for_pruning.gather(1, indice_of_indice_indice_list_for_pruning),
        )
        reconstruction_error_after = reconstruction_error + pruning_metric - regrowing_metric
        if args.without_same_sign:
            update_mask = update_mask & (abs(reconstruction_error) > args.update_threshold)
        else:
            update_mask = update_mask & (abs(reconstruction_error) > args.update_threshold) & (initialize_error_sign == torch.sign(reconstruction_error_after))
        weight_mask.scatter_(1, pruning_indice, update_mask)
        weight_mask.scatter_(1, regrowing_indice, ~update_mask)
        reconstruction_error += torch.where(update_mask, pruning_metric, torch.zeros_like(pruning_metric))
        reconstruction_error -= torch.where(update_mask, regrowing_metric, torch.zeros_like(regrowing_metric))
    return weight_mask


def ref_initial_metric(method, weight, wrapped):
    if method == "sparsegpt":
        W = weight.clone().float()
        H = wrapped.H.clone()
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        percdamp = 0.01
        damp = percdamp * torch.mean(torch.diag(H))
        diag = torch.arange(H.shape[0])
        H[diag, diag] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        H = torch.linalg.cholesky(H, upper=True)
        Hinv = H
        return W**2 / (torch.diag(Hinv).reshape((1, -1))) ** 2
    if method == "wanda":
        return torch.abs(weight) * torch.sqrt(wrapped.scaler_row.reshape((1, -1)))
    actn_norm = torch.sqrt(wrapped.scaler_row.reshape((1, -1)))  # NeuroAL's "multiflow" initial metric
    importance_per_output = (torch.abs(weight) * actn_norm).mean(dim=1)
    importance_per_input = (torch.abs(weight) * actn_norm).mean(dim=0)
    return torch.abs(weight) * torch.ger(importance_per_output, importance_per_input)


def ref_args(**overrides):
    args = dict(sparsity_ratio=0.5, max_cycle_time=50, update_threshold=0.1, pow_of_var_regrowing=1.0, without_same_sign=True)
    return SimpleNamespace(**{**args, **overrides})


# ---------------------------------------------------------------- against the reference


def _stats_of(inputs, hessian=False):
    accumulator = StatsAccumulator(frozenset({INPUT_SQ_NORMS, INPUT_SUMS, SEQUENCE_VARIANCES} | ({HESSIAN} if hessian else set())))
    accumulator.add(inputs)
    return accumulator.stats


def _ref_wrapped(inputs):
    wrapped = RefWrappedGPT(inputs.shape[-1])
    for sequence in inputs:  # the reference calls the block once per calibration sequence
        wrapped.add_batch(sequence.unsqueeze(0))
    flat = inputs.reshape(-1, inputs.shape[-1]).double()  # SparseGPT's H: 2/n sum x x^T, a scale that leaves the saliency order alone
    wrapped.H = (2 * flat.T @ flat / inputs.shape[0]).float()
    return wrapped


def test_statistics_equal_the_reference_wrapper():
    inputs = torch.randn(5, 17, 12, generator=torch.Generator().manual_seed(0)) * 3 + 1
    stats, wrapped = _stats_of(inputs[:2]), _ref_wrapped(inputs)
    accumulator = StatsAccumulator(frozenset({INPUT_SQ_NORMS, INPUT_SUMS, SEQUENCE_VARIANCES}))
    for batch in (inputs[:2], inputs[2:]):  # micro-batches of 2 and 3 sequences
        accumulator.add(batch)
    stats = accumulator.stats
    assert stats.num_sequences == 5 and stats.num_tokens == 85
    torch.testing.assert_close(stats.input_sums / 5, wrapped.sum_metric_row, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.sequence_variances / 5, wrapped.var.flatten(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.input_sq_norms / 5, wrapped.scaler_row, rtol=1e-5, atol=1e-4)


def test_sign_reorder_equals_the_reference():
    values = torch.tensor([[1.0, -2.0, 3.0], [-2, 2.0, -4], [5.0, 6.0, -7], [-6, -7, -4], [0.0, 1.0, -1.0]])
    assert torch.equal(sign_reorder(values), ref_return_reorder_indice(values))
    values = torch.randn(50, 40, generator=torch.Generator().manual_seed(1)).round()
    assert torch.equal(sign_reorder(values), ref_return_reorder_indice(values))


def _compare(family, method, ratio, threshold, same_sign, seed=0, cycles=12):
    """Masks of every linear of block 0: ours and the reference's; rows where the reference kept its count must agree.

    The tiny layers have 64-128 inputs: with 50 cycles the reference's candidate lists run past their
    ends (its gather then fails), so the comparisons use fewer cycles."""
    model = tiny_model(family, seed)
    _, linears = block_linear_inputs(model, sequences=6, tokens=32, seed=seed)
    compared = rows = 0
    for name, (weight, inputs) in linears.items():
        inputs = inputs * 4  # wider activations: more rows above the update threshold, more cycles
        wrapped, stats = _ref_wrapped(inputs), _stats_of(inputs, hessian=method == "sparsegpt")
        args = ref_args(sparsity_ratio=ratio, update_threshold=threshold, without_same_sign=not same_sign, max_cycle_time=cycles)
        ref_mask = ref_dsnot_unstructured(args, weight, wrapped, ref_initial_metric(method, weight, wrapped))
        if method == "sparsegpt":
            saliency = METRICS.get("sparsegpt").ranking(weight, stats)  # the saliency SparseGPT offers (no scores)
            mask, details = refine_mask(weight, saliency, stats, ratio, "attention", max_cycles=cycles, update_threshold=threshold, same_sign=same_sign, skip="none")
        else:
            scores = (wanda_scores if method == "wanda" else multiflow_scores)(weight, stats.input_sq_norms)
            mask, details = refine_mask(weight, scores, stats, ratio, "attention", cycles, threshold, same_sign=same_sign, skip="none")
        expected = int(weight.shape[1] * ratio)
        assert (mask.sum(1) == expected).all(), name
        kept_count = ref_mask.sum(1) == expected
        assert torch.equal(mask[kept_count], ref_mask[kept_count]), f"{family} {name}"
        compared += int(kept_count.sum())
        rows += weight.shape[0]
        assert details["swaps"] > 0 or name.endswith(("o_proj", "dense", "out_proj", "down_proj", "fc2", "dense_4h_to_h")), name
    return compared, rows


@pytest.mark.parametrize("family", ["llama", "opt", "phi", "gpt_neox"])
def test_masks_match_the_reference_on_tiny_models(family, one_thread):
    compared, rows = _compare(family, "wanda", 0.5, 0.01, same_sign=False)
    assert compared >= 0.9 * rows  # the rest: rows whose reference count changed (a candidate list ran out)


@pytest.mark.parametrize("method,ratio,threshold,same_sign", [("multiflow", 0.7, 0.005, False), ("wanda", 0.6, 0.01, True), ("sparsegpt", 0.5, 0.01, False)])
def test_masks_match_the_reference_for_other_settings(method, ratio, threshold, same_sign, one_thread):
    compared, rows = _compare("llama", method, ratio, threshold, same_sign, seed=1)
    assert compared >= 0.9 * rows


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000), rows=st.integers(1, 12), cols=st.integers(2, 40), ratio=st.floats(0.05, 0.95),
    cycles=st.integers(0, 80), threshold=st.sampled_from([0.0, 0.01, 0.1]), same_sign=st.booleans(), power=st.sampled_from([0.0, 1.0, 2.0]),
)
def test_every_row_keeps_its_count(seed, rows, cols, ratio, cycles, threshold, same_sign, power):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator)
    scores = torch.rand(rows, cols, generator=generator)
    means = torch.randn(cols, generator=generator)
    variances = torch.rand(cols, generator=generator) + 0.1
    norms = torch.rand(cols, generator=generator)
    mask, _ = dsnot_mask(weight, scores, norms, means, variances, ratio, cycles, threshold, power, same_sign)
    expected = int(cols * ratio + 1e-6)
    assert (mask.sum(1) == expected).all()
    if cycles == 0:  # no cycles: the base metric's own per-row mask
        assert torch.equal(mask, select_per_row(scores, ratio))


# ---------------------------------------------------------------- end to end


def _overrides(tiny_model_dirs, tmp_path, cache_dir, metric, extra):
    return tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, metric, ["allocator=dsnot", *extra])


def test_dsnot_rejects_solvers_n_m_and_bad_keys(tiny_model_dirs, tmp_path, cache_dir):
    def spec(metric="wanda", extra=()):
        return validate(compose_config(_overrides(tiny_model_dirs, tmp_path, cache_dir, metric, list(extra))))

    with pytest.raises(ConfigError, match="allocator='dsnot' cannot honour sparsity.pattern=2:4"):
        spec(extra=["sparsity=2of4"])
    with pytest.raises(ConfigError, match="allocator=dsnot cannot refine metric='hassle_free'.*: magnitude, multiflow, ria, sparsegpt, swiftprune, wanda"):
        spec("hassle_free", ["decomposition.rank=2"])
    assert spec("sparsegpt").allocator.refiner().needs == {INPUT_SQ_NORMS, INPUT_SUMS, SEQUENCE_VARIANCES, HESSIAN}
    with pytest.raises(ConfigError, match="allocator.skip='ffn': allowed values are mlp, attention, none"):
        spec(extra=["allocator.skip=ffn"])
    with pytest.raises(ConfigError, match="allocator.epsilon=0.1: only for allocator.layerwise=alpha"):
        spec(extra=["allocator.epsilon=0.1"])
    with pytest.raises(ConfigError, match="allocator.max_cycles=-1"):
        spec(extra=["allocator.max_cycles=-1"])
    assert spec().allocator.reads.refine == {INPUT_SQ_NORMS, INPUT_SUMS, SEQUENCE_VARIANCES}
    assert spec(extra=["allocator.layerwise=owl"]).allocator.reads.dense == {INPUT_SQ_NORMS}


def test_dsnot_cases_end_to_end(tiny_model_dirs, tmp_path, cache_dir, one_thread):
    def run(metric, extra):
        return run_case(validate(compose_config(_overrides(tiny_model_dirs, tmp_path, cache_dir, metric, ["sparsity.ratio=0.6", *extra]))))

    document = run("wanda", ["allocator.update_threshold=0.001"])
    assert document["status"] == "ok", document.get("error")
    refinement = document["allocation"]["refinement"]
    assert {name for name, details in refinement.items() if details.get("skipped")} == {n for n in refinement if ".mlp." in n}
    assert sum(details.get("swaps", 0) for details in refinement.values()) > 0
    for layer in document["sparsity"]["per_layer"].values():
        assert layer["zeros"] - layer["dense_zeros"] <= int(layer["cols"] * 0.6) * layer["rows"] <= layer["zeros"]
    over_alpha = run("multiflow", ["allocator.layerwise=alpha", "allocator.epsilon=0.3"])
    assert over_alpha["status"] == "ok", over_alpha.get("error")
    assert over_alpha["allocation"]["alpha"]["epsilon"] == 0.3 and len(set(over_alpha["allocation"]["layerwise_ratios"].values())) == 2
