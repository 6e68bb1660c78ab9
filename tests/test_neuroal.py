"""NeuroAL: the ratios against a direct transcription of the reference code (eliacunegatti/NeuroAL,
``lib/neuroal.py``, ``sparsity_distribution.py``, ``lib/utils.py``), property tests of the
allocator's invariants, and the case end to end on a tiny model."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from transformers import AutoModelForCausalLM

from conftest import compose_config, tiny_case_overrides
from sparsebench.allocators import Allocation, PrunableLayer
from sparsebench.allocators.neuroal import (
    REFERENCE_ROW_LAMBDAS,
    block_sparsities,
    neuroal,
    neuron_rounding,
    reference_block_lambdas,
    row_sparsities,
)
from sparsebench.blockwalk import Execution
from sparsebench.config import validate
from sparsebench.errors import ConfigError
from sparsebench.masks import select_per_row
from sparsebench.metrics import METRICS
from sparsebench.models.adapters import adapter_for
from sparsebench.layers import prunable_layers
from sparsebench.runner import run_case
from sparsebench.prune import PrunePlan
from sparsebench.trials import BlockTrials, InputNorms
from sparsebench.testing.tiny_models import TINY_CONFIGS

# ---------------------------------------------------------------- the reference, transcribed


def _ref_ramp_density(num_blocks, sparsity_ratio, l):
    group_sparsity = np.array(list(range(1, num_blocks + 1)))
    group_sparsity = (group_sparsity - group_sparsity.min()) * (1 / (group_sparsity.max() - group_sparsity.min()) * l * 2)
    return group_sparsity - np.mean(group_sparsity) + (1 - sparsity_ratio)


def ref_distribution_block(num_blocks, layer_names, sparsity_ratio, l):
    """``get_distribution_block``: the ramp 1..B min-max scaled, shifted, sorted decreasing, clipped."""
    group_sparsity = np.array(list(range(1, num_blocks + 1)))
    group_sparsity = (group_sparsity - group_sparsity.min()) * (1 / (group_sparsity.max() - group_sparsity.min()) * l * 2)
    group_sparsity = group_sparsity - np.mean(group_sparsity) + (1 - sparsity_ratio)
    group_sparsity = sorted(group_sparsity, reverse=True)
    dist = {}
    for key in layer_names:
        dist[key] = 1 - group_sparsity[int(key.split("-")[1])]
        if dist[key] <= 0:
            dist[key] = 0.01
        elif dist[key] >= 1:
            dist[key] = 0.99
    return dist


def ref_row_values(alignment_values, base, l):
    """The per-layer body of ``get_distribution_row``."""
    if alignment_values.sum() == 0:
        return [base] * len(alignment_values)
    group_sparsity = np.array(alignment_values.tolist(), dtype=float)
    lo, hi = group_sparsity.min(), group_sparsity.max()
    group_sparsity = ((group_sparsity - lo) / (hi - lo)) * l * 2
    group_sparsity -= np.mean(group_sparsity) - (1 - base)
    return np.clip(1 - group_sparsity, 0.01, 0.99)


def ref_distribution_row(subsets, dist_base, l, alignment):
    """``get_distribution_row`` for LLaMA (q, k, v, o, gate, up, down), blocks given as lists of linear names."""
    new_alignment = {}
    for i in range(len(subsets) - 1):
        names = subsets[i]
        for idx_s, name in enumerate(names):
            if idx_s <= 2:
                continue
            if idx_s == 3:
                for k in range(3):
                    new_alignment[f"{names[k]}-{i}"] = alignment[f"{names[3]}-{i}"]
            elif idx_s == 4:
                new_alignment[f"{names[idx_s - 1]}-{i}"] = alignment[f"{names[idx_s]}-{i}"]
            elif idx_s == len(names) - 1:
                new_alignment[f"{names[idx_s - 1]}-{i}"] = alignment[f"{names[idx_s]}-{i}"]
                new_alignment[f"{names[idx_s - 2]}-{i}"] = alignment[f"{names[idx_s]}-{i}"]
        new_alignment[f"{names[-1]}-{i}"] = alignment[f"{subsets[i + 1][0]}-{i + 1}"]
    dist_final = {}
    for i, names in enumerate(subsets):
        for name in names:
            key = f"{name}-{i}"
            if i == len(subsets) - 1:
                dist_final[key] = None  # the last block keeps its base ratio on every row
            else:
                dist_final[key] = ref_row_values(new_alignment[key].cpu().double().numpy(), dist_base[key], l)
    return dist_final


def ref_compute_mask(metric, granularity, sparsity):
    """``compute_mask``: 'row' prunes int(cols * s) per row; 'neuron' keeps int((1 - s_r) * cols) per row (BESA kernel)."""
    if granularity == "row":
        mask = torch.zeros_like(metric, dtype=torch.bool)
        mask.scatter_(1, torch.sort(metric, dim=-1, stable=True)[1][:, : int(metric.shape[1] * sparsity)], True)
        return mask
    order = torch.sort(metric, dim=-1, stable=True, descending=True)[1]
    keep = (torch.tensor([1 - x for x in sparsity], dtype=torch.float64) * metric.shape[1]).to(torch.long)
    mask = torch.ones_like(metric, dtype=torch.bool)
    for row in range(metric.shape[0]):
        mask[row, order[row, : keep[row]]] = False
    return mask


def _find_linears(module, prefix=""):
    if isinstance(module, nn.Linear):
        return {prefix: module}
    found = {}
    for name, child in module.named_children():
        found.update(_find_linears(child, f"{prefix}.{name}" if prefix else name))
    return found


def _capture_first_block(model, ids):
    """The reference's ``Catcher``: the first block's inputs of each sequence and its keyword arguments."""
    captured, kwargs = [], {}

    class Stop(Exception):
        pass

    def hook(module, args, kw):
        captured.append(args[0] if args else kw["hidden_states"])
        kwargs.update({k: v for k, v in kw.items() if k != "hidden_states"})
        raise Stop

    handle = model.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    for j in range(ids.shape[0]):
        try:
            model(ids[j : j + 1], use_cache=False)
        except Stop:
            pass
    handle.remove()
    kwargs["use_cache"] = False
    kwargs.pop("past_key_values", None)
    return torch.cat(captured), kwargs


def ref_get_forward(layer, subset, inps, kwargs):
    """``get_forward``: per-sample forward, hooks keep WrappedGPT's scaler_row; returns sqrt(scaler_row) and the outputs."""
    scaler = {name: [torch.zeros(linear.weight.shape[1]), 0] for name, linear in subset.items()}

    def add_batch(name):
        def hook(module, inp, out):
            x = inp[0]
            tmp = x.shape[0]
            x = x.reshape(-1, x.shape[-1]).t().float()
            state = scaler[name]
            state[0] *= state[1] / (state[1] + tmp)
            state[1] += tmp
            state[0] += torch.norm(x, p=2, dim=1) ** 2 / state[1]

        return hook

    handles = [subset[name].register_forward_hook(add_batch(name)) for name in subset]
    outs = torch.zeros_like(inps)
    for j in range(inps.shape[0]):
        out = layer(inps[j : j + 1], **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        outs[j] = out[0]
    for handle in handles:
        handle.remove()
    return {name: torch.sqrt(state[0]) for name, state in scaler.items()}, outs


def ref_neuroal_walk(model, ids, dist, granularity):
    """``get_neuroal_block`` (granularity 'row') / ``get_neuroal_row`` ('neuron') with Wanda: total misalignment and alignments."""
    inps, kwargs = _capture_first_block(model, ids)
    per_linear, alignment = {}, {}
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            subset = _find_linears(layer)
            dense, _ = ref_get_forward(layer, subset, inps, kwargs)
            weights = {name: subset[name].weight.data.clone() for name in subset}
            for name, weight in weights.items():
                metric = torch.abs(weight) * dense[name].reshape((1, -1))
                subset[name].weight.data[ref_compute_mask(metric, granularity, dist[f"{name}-{i}"])] = 0.0
            sparse, inps = ref_get_forward(layer, subset, inps, kwargs)
            for name in subset:
                subset[name].weight.data = weights[name]
                d, s = dense[name], sparse[name]
                per_linear[f"{name}-{i}"] = torch.norm(d / d.sum() - s / s.sum(), p=2).item() / d.numel()
                alignment[f"{name}-{i}"] = d - s
    return sum(per_linear.values()), alignment


def ref_neuroal(model, ids, sparsity):
    """``get_neuroal_sparsity_distribution`` with ``--neuroal_step both`` and Wanda."""
    subsets = [list(_find_linears(layer)) for layer in model.model.layers]
    names = [f"{name}-{i}" for i, subset in enumerate(subsets) for name in subset]
    lambdas = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.12, 0.15, 0.2, 0.25]
    if sparsity >= 0.8:
        lambdas = lambdas[:-1]
    results = [ref_neuroal_walk(model, ids, ref_distribution_block(len(subsets), names, sparsity, l), "row") for l in lambdas]
    scores = [score for score, _ in results]
    best_block = scores.index(min(scores))
    dist = ref_distribution_block(len(subsets), names, sparsity, lambdas[best_block])
    alignment = results[best_block][1]
    row_lambdas = [0.00, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.12, 0.15, 0.2, 0.25]
    candidates = []
    for l in row_lambdas:
        rows = ref_distribution_row(subsets, dist, l, alignment)
        for i, subset in enumerate(subsets):
            for name in subset:
                if rows[f"{name}-{i}"] is None:
                    out_rows = model.model.layers[i].get_submodule(name).weight.shape[0]
                    rows[f"{name}-{i}"] = [dist[f"{name}-{i}"] for _ in range(out_rows)]
        candidates.append(rows)
    row_scores = [ref_neuroal_walk(model, ids, rows, "neuron")[0] for rows in candidates]
    best_row = row_scores.index(min(row_scores))
    return lambdas[best_block], scores, row_lambdas[best_row], row_scores, candidates[best_row]


# ---------------------------------------------------------------- pure mappings against the reference


@settings(max_examples=60, deadline=None)
@given(num_blocks=st.integers(2, 48), sparsity=st.floats(0.05, 0.95), lam=st.sampled_from(REFERENCE_ROW_LAMBDAS[1:]))
def test_block_ramp_matches_the_reference(num_blocks, sparsity, lam):
    names = [f"x-{b}" for b in range(num_blocks)]
    reference = ref_distribution_block(num_blocks, names, sparsity, lam)
    ours = block_sparsities(num_blocks, sparsity, lam, clip="reference")
    expected = np.array([reference[name] for name in names])
    # where S - lambda lands on 0 (or S + lambda on 1) the clip depends on float rounding (numpy vs
    # torch, +-1e-16): either side of the tie is the reference's answer
    unclipped = 1 - np.array(sorted(_ref_ramp_density(num_blocks, sparsity, lam), reverse=True))
    tie = (np.abs(unclipped) < 1e-12) | (np.abs(unclipped - 1) < 1e-12)
    assert np.allclose(ours.numpy()[~tie], expected[~tie], rtol=0, atol=1e-12)
    kept = block_sparsities(num_blocks, sparsity, lam)
    assert abs(kept.mean().item() - sparsity) < 1e-9 and kept.min() >= 0.01 and kept.max() <= 0.99
    assert (kept.diff() >= -1e-12).all()  # sparsity rises with depth
    if ours.min() > 0.01 and ours.max() < 0.99:  # no bound binds: the same ratios
        assert torch.equal(kept, ours)


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=64),
    base=st.floats(0.2, 0.9),
    lam=st.sampled_from(REFERENCE_ROW_LAMBDAS),
)
def test_row_mapping_matches_the_reference(values, base, lam):
    alignment = torch.tensor(values, dtype=torch.float64)
    if alignment.max() == alignment.min():
        rows = row_sparsities(alignment, base, lam)
        assert torch.equal(rows, torch.full_like(alignment, base))  # uniform statistics, uniform rows
        return
    reference = ref_row_values(alignment.numpy(), base, lam)
    assert np.allclose(row_sparsities(alignment, base, lam, clip="reference").numpy(), reference, rtol=0, atol=1e-12)
    kept = row_sparsities(alignment, base, lam)
    assert abs(kept.mean().item() - base) < 1e-9 and kept.min() >= 0.01 and kept.max() <= 0.99
    if alignment.sum() != 0:  # more activation lost downstream -> fewer weights pruned
        assert kept[alignment.argmax()] <= kept[alignment.argmin()]


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_neuron_rounding_prunes_what_the_reference_mask_prunes(rows, cols, seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(rows, cols, generator=generator)
    row_ratios = torch.rand(rows, generator=generator, dtype=torch.float64) * 0.98 + 0.01
    row_ratios[0] = 0.7  # 1 - (1 - 0.7) is not 0.7 in floating point: a boundary the reference rounds its way
    row_ratios = row_ratios.clamp(0, max(0.0, 1 - 1.5 / cols))  # the reference would empty rows near 1 - 1/cols; we keep one weight
    ours = select_per_row(scores, neuron_rounding(row_ratios, cols))
    assert torch.equal(ours, ref_compute_mask(scores, "neuron", row_ratios.numpy()))


def test_reference_lambda_lists():
    assert reference_block_lambdas(0.7)[-1] == 0.25 and reference_block_lambdas(0.8)[-1] == 0.2
    assert 0.0 not in reference_block_lambdas(0.5) and REFERENCE_ROW_LAMBDAS[0] == 0.0 and REFERENCE_ROW_LAMBDAS[-1] == 0.25


# ---------------------------------------------------------------- the allocator on random statistics


class FakeTrials:
    """Trial measurements from a seeded generator. ``statistics``: 'random' (sparse norms lose more where
    ratios are high), 'flat' (every feature has the same norm and loses the same share) or 'lossless'."""

    def __init__(self, groups_per_block, features, seed, statistics="random", row_ratios=True):
        self.groups_per_block = groups_per_block
        self.features = features
        self.generator = torch.Generator().manual_seed(seed)
        self.statistics = statistics
        self.metric_takes_row_ratios = row_ratios
        self.metric = METRICS.get("wanda" if row_ratios else "sparsegpt")
        self.samples = 8
        self.runs = []

    def first(self, count):
        return self

    def run(self, ratios, desc=""):
        self.runs.append(ratios)
        measured = []
        for block, groups in enumerate(self.groups_per_block):
            block_inputs = []
            for group, names in enumerate(groups):
                width = self.features[(block, group)]
                mean_ratio = sum(float(torch.as_tensor(ratios[f"{block}.{n}"]).double().mean()) for n in names) / len(names)
                if self.statistics == "random":
                    dense = torch.rand(width, generator=self.generator, dtype=torch.float64) + 0.5
                    sparse = dense * (1 - mean_ratio * torch.rand(width, generator=self.generator, dtype=torch.float64))
                else:
                    dense = torch.ones(width, dtype=torch.float64)
                    sparse = dense * (1 - 0.3 * mean_ratio) if self.statistics == "flat" else dense.clone()
                block_inputs.append(InputNorms(tuple(f"{block}.{n}" for n in names), dense, sparse))
            measured.append(block_inputs)
        return measured


def _random_model(draw_blocks, hidden, inner):
    """A LLaMA-like layout: q/k/v (k, v narrower), o, gate/up, down."""
    groups = [("q", "k", "v"), ("o",), ("gate", "up"), ("down",)]
    shapes = {"q": (hidden, hidden), "k": (hidden // 2, hidden), "v": (hidden // 2, hidden), "o": (hidden, hidden),
              "gate": (inner, hidden), "up": (inner, hidden), "down": (hidden, inner)}
    layers = [PrunableLayer(f"{b}.{n}", b, *shapes[n]) for b in range(draw_blocks) for group in groups for n in group]
    features = {(b, g): shapes[group[0]][1] for b in range(draw_blocks) for g, group in enumerate(groups)}
    return layers, [groups] * draw_blocks, features


@settings(max_examples=15, deadline=None)
@given(
    blocks=st.integers(1, 5), hidden=st.sampled_from([8, 12, 16]), inner=st.sampled_from([20, 32]),
    sparsity=st.floats(0.3, 0.9), seed=st.integers(0, 2**16), step=st.sampled_from(["both", "block", "row"]),
)
def test_allocator_invariants_on_random_statistics(blocks, hidden, inner, sparsity, seed, step):
    layers, groups, features = _random_model(blocks, hidden, inner)
    trials = FakeTrials(groups, features, seed)
    allocation = neuroal(layers, sparsity, trials, step=step)
    assert isinstance(allocation, Allocation) and set(allocation.ratios) == {layer.name for layer in layers}
    block_step = torch.tensor(allocation.details["block_step_ratios"], dtype=torch.float64)
    numel = sum(layer.numel for layer in layers)
    block_mean = sum(float(block_step[layer.block]) * layer.numel for layer in layers) / numel
    assert abs(block_mean - sparsity) < 1e-9  # block-wise: the parameter-weighted mean is the target
    for layer in layers:
        ratio = allocation.ratios[layer.name]
        values = torch.as_tensor(ratio, dtype=torch.float64)
        assert ((values >= 0) & (values < 1)).all()
        if isinstance(ratio, torch.Tensor):  # row-wise: each layer's mean is its block ratio, to whole weights per row
            assert ratio.shape == (layer.rows,)
            assert abs(float(ratio.mean()) - float(block_step[layer.block])) <= 1 / layer.cols + 1e-12
    expected_runs = {"both": len(reference_block_lambdas(sparsity)) + len(REFERENCE_ROW_LAMBDAS), "block": len(reference_block_lambdas(sparsity)), "row": 1 + len(REFERENCE_ROW_LAMBDAS)}[step]
    assert len(trials.runs) == expected_runs
    if "row_lambda" in allocation.details:
        scores = [c["misalignment"] for c in allocation.details["row_candidates"]]
        assert allocation.details["row_lambda"] == allocation.details["row_candidates"][scores.index(min(scores))]["lambda"]


@pytest.mark.parametrize("statistics", ["flat", "lossless"])
def test_uniform_statistics_give_uniform_rows(statistics):
    layers, groups, features = _random_model(3, 8, 16)
    allocation = neuroal(layers, 0.6, FakeTrials(groups, features, 0, statistics), block_lambdas=[0.0, 0.05])
    block_step = allocation.details["block_step_ratios"]
    for layer in layers:  # the same loss on every feature: every row of a layer keeps its block ratio
        ratio = allocation.ratios[layer.name]
        assert torch.equal(ratio, neuron_rounding(torch.full((layer.rows,), block_step[layer.block], dtype=torch.float64), layer.cols))
    if statistics == "lossless":  # every candidate ties at zero misalignment: the first listed (here uniform) wins
        assert allocation.details["block_lambda"] == 0.0 and allocation.details["row_lambda"] == 0.0
        assert block_step == [0.6, 0.6, 0.6]


def test_row_step_is_skipped_for_metrics_that_take_one_ratio_per_layer():
    layers, groups, features = _random_model(2, 8, 16)
    allocation = neuroal(layers, 0.7, FakeTrials(groups, features, 1, row_ratios=False))
    assert all(isinstance(r, float) for r in allocation.ratios.values())
    assert "sparsegpt" in allocation.details["row_step"] and "row_lambda" not in allocation.details


def test_grouped_query_k_v_keep_the_block_ratio_for_the_whole_group():
    layers, groups, features = _random_model(2, 8, 16)  # k, v have 4 rows; o's input has 8 features
    allocation = neuroal(layers, 0.6, FakeTrials(groups, features, 2), block_lambdas=[0.05], row_lambdas=[0.2])
    for name in ("0.q", "0.k", "0.v"):
        assert allocation.ratios[name].unique().numel() == 1
    assert allocation.ratios["0.o"].unique().numel() > 1  # o takes gate/up's input alignment


# ---------------------------------------------------------------- trial prunes and the whole search on a tiny model


@pytest.fixture
def one_thread():
    """Tiny tensors: on a busy CPU, thread hand-offs in attention cost 20x the work itself."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_llama(blocks=3):
    torch.manual_seed(0)
    config = TINY_CONFIGS["llama"]()
    config.num_hidden_layers = blocks
    config.num_key_value_heads = config.num_attention_heads  # LLaMA-1/2: no grouped-query attention
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    with torch.no_grad():  # heavier-tailed weights so that the candidates differ clearly
        for block in model.model.layers:
            for linear in _find_linears(block).values():
                linear.weight.mul_(1 + 4 * torch.rand_like(linear.weight) ** 4)
    return model


def _trials(model, ids, metric="wanda", params=None):
    adapter = adapter_for("auto", model.config.model_type)
    spec = METRICS.get(metric)
    plan = PrunePlan(spec, spec.make_params({}) if params is None else params, {})
    return BlockTrials(model, adapter, plan, ids, Execution("cpu", False, 3)), adapter


def test_trial_prunes_leave_the_model_unchanged_and_measure_as_the_reference(one_thread):
    model = _tiny_llama()
    ids = torch.randint(0, 300, (5, 24), generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trials, adapter = _trials(model, ids)
    layers = prunable_layers(model, adapter)
    ratios = {layer.name: 0.3 + 0.1 * layer.block for layer in layers}
    measured = trials.run(ratios)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    names = [f"{name}-{b}" for b in range(3) for name in adapter.linear_names]
    ref_score, ref_alignment = ref_neuroal_walk(model, ids, {n: 0.3 + 0.1 * int(n.split("-")[1]) for n in names}, "row")
    from sparsebench.allocators.neuroal import total_misalignment

    assert total_misalignment(measured) == pytest.approx(ref_score, rel=1e-5)
    for block, inputs in enumerate(measured):
        for norms in inputs:
            for layer in norms.layers:  # ours: sqrt(sum x^2); the reference's: sqrt(sum x^2 / nsamples)
                reference = ref_alignment[f"{layer.split('.', 1)[1]}-{block}"] * math.sqrt(ids.shape[0])
                assert torch.allclose((norms.dense - norms.sparse).double(), reference.double(), rtol=1e-4, atol=1e-5)


def test_trial_prunes_with_a_decomposition_restore_the_dense_linears(one_thread):
    model = _tiny_llama()
    ids = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = {name: type(module) for name, module in model.named_modules()}
    hassle_free = METRICS.get("hassle_free")
    trials, adapter = _trials(model, ids, "hassle_free", {**hassle_free.make_params({"iterations": 2}), "rank": 2})
    trials.run({layer.name: 0.5 for layer in prunable_layers(model, adapter)})
    assert {name: type(module) for name, module in model.named_modules()} == modules
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_whole_search_matches_the_reference_on_a_tiny_model(one_thread):
    model = _tiny_llama()
    ids = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(2))
    trials, adapter = _trials(model, ids)
    layers = prunable_layers(model, adapter)
    allocation = neuroal(layers, 0.6, trials, samples=3, clip="reference")
    block_lambda, block_scores, row_lambda, row_scores, row_dist = ref_neuroal(model, ids, 0.6)
    details = allocation.details
    assert np.allclose([c["misalignment"] for c in details["block_candidates"]], block_scores, rtol=1e-5)
    assert np.allclose([c["misalignment"] for c in details["row_candidates"]], row_scores, rtol=1e-5)
    assert (details["block_lambda"], details["row_lambda"]) == (block_lambda, row_lambda)
    assert block_lambda != 0.01 and row_lambda != 0.0  # the search chose something other than its first candidate
    for layer in layers:  # the same count of pruned weights in every row
        block, name = layer.name.split(".", 1)
        ref_kept = (torch.tensor([1 - x for x in row_dist[f"{name}-{block}"]], dtype=torch.float64) * layer.cols).long()
        ours_pruned = torch.floor(allocation.ratios[layer.name] * layer.cols + 1e-6).long()
        assert torch.equal(ours_pruned, layer.cols - ref_kept), layer.name


# ---------------------------------------------------------------- the case end to end


def _run(tiny_model_dirs, tmp_path, cache_dir, metric, extra):
    overrides = tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, metric, ["allocator=neuroal", "allocator.samples=2", *extra])
    return run_case(validate(compose_config(overrides)))


def test_neuroal_cases_end_to_end(tiny_model_dirs, tmp_path, cache_dir, one_thread):
    lambdas = ["allocator.block_lambdas=[0.02,0.1]", "allocator.row_lambdas=[0.0,0.05,0.2]", "sparsity.ratio=0.6"]
    wanda = _run(tiny_model_dirs, tmp_path, cache_dir, "wanda", lambdas)
    assert wanda["status"] == "ok", wanda.get("error")
    allocation = wanda["allocation"]
    assert allocation["block_lambda"] in (0.02, 0.1) and allocation["row_lambda"] in (0.0, 0.05, 0.2)
    assert [c["lambda"] for c in allocation["row_candidates"]] == [0.0, 0.05, 0.2]
    assert wanda["timings"]["allocate_s"] > 0
    for name, layer in wanda["sparsity"]["per_layer"].items():
        assert layer["target"] == pytest.approx(allocation["layer_ratios"][name]["mean"], abs=1e-6)
    assert wanda["sparsity"]["achieved"] == pytest.approx(0.6, abs=0.01)

    sparsegpt = _run(tiny_model_dirs, tmp_path, cache_dir, "sparsegpt", lambdas)
    assert sparsegpt["status"] == "ok", sparsegpt.get("error")
    assert "row_step" in sparsegpt["allocation"] and all(isinstance(r, float) for r in sparsegpt["allocation"]["layer_ratios"].values())

    hassle = _run(tiny_model_dirs, tmp_path, cache_dir, "hassle_free", [*lambdas, "decomposition.rank=2", "metric.iterations=2"])
    assert hassle["status"] == "ok", hassle.get("error")  # trials install decompositions and take them out again
    assert "row_step" in hassle["allocation"] and hassle["decomposition"]["rank"] == 2

    magnitude = _run(tiny_model_dirs, tmp_path, cache_dir, "magnitude", [*lambdas, "allocator.step=block"])
    assert magnitude["status"] == "ok", magnitude.get("error")  # calibration is read for the trials alone

    too_many = _run(tiny_model_dirs, tmp_path, cache_dir, "wanda", ["allocator.samples=9"])
    assert too_many["status"] == "failed" and "allocator.samples=9" in too_many["error"]["message"]


def test_neuroal_rejects_n_m_patterns_and_bad_keys(tiny_model_dirs, tmp_path, cache_dir):
    def overrides(extra):
        return compose_config(tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, "wanda", ["allocator=neuroal", *extra]))

    with pytest.raises(ConfigError, match="allocator='neuroal' cannot honour sparsity.pattern=2:4 .* allocators that can: uniform"):
        validate(overrides(["sparsity=2of4"]))
    with pytest.raises(ConfigError, match="allocator.step='rows': allowed values are both, block, row"):
        validate(overrides(["allocator.step=rows"]))
    with pytest.raises(ConfigError, match=r"allocator.row_lambdas=\[0.7\]"):
        validate(overrides(["allocator.row_lambdas=[0.7]"]))
