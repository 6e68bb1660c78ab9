"""AlphaPruning: exponents and layer ratios against a direct transcription of the reference
(haiquanlu/AlphaPruning at 541cb9a: ``lib/esd_utils.py`` ``net_esd_estimator``, ``lib/prune.py``
``ww_sparsity``), the mean-ratio invariant (hypothesis), and cases end to end (alpha alone, TRIM over it)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsebench.analysis.tables import method_of
from conftest import compose_config, tiny_case_overrides
from test_neuroal import one_thread  # noqa: F401 (a fixture)
from sparsebench.testing.tiny_models import tiny_model
from sparsebench.allocators.alpha import alpha_allocation, alpha_ratios, esd_eigenvalues, layer_alphas, power_law_alpha
from sparsebench.config import validate
from sparsebench.errors import ConfigError
from sparsebench.models.adapters import adapter_for
from sparsebench.layers import prunable_layers
from sparsebench.runner import run_case

# ---------------------------------------------------------------- the reference, transcribed


def ref_net_esd_estimator(net, EVALS_THRESH=0.00001, bins=100, fix_fingers=None, xmin_pos=2, conv_norm=0.5, filter_zeros=False):
    results = {"alpha": [], "longname": []}
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d) or isinstance(m, nn.Linear):
            matrix = m.weight.data.clone().cpu()
            matrix = matrix.to(torch.float32)
            eigs = torch.square(torch.linalg.svdvals(matrix).flatten())
            eigs, _ = torch.sort(eigs, descending=False)
            if filter_zeros:
                nz_eigs = eigs[eigs > EVALS_THRESH]
                N = len(nz_eigs)
                if N == 0:
                    nz_eigs = eigs
                    N = len(nz_eigs)
            else:
                nz_eigs = eigs
                N = len(nz_eigs)
            log_nz_eigs = torch.log(nz_eigs)
            if fix_fingers == "xmin_mid":
                i = int(len(nz_eigs) / xmin_pos)
                n = float(N - i)
                final_alpha = 1 + n / (torch.sum(log_nz_eigs[i:]) - n * log_nz_eigs[i])
            else:
                alphas = torch.zeros(N - 1)
                Ds = torch.ones(N - 1)
                if fix_fingers == "xmin_peak":
                    hist_nz_eigs = torch.log10(nz_eigs)
                    min_e, max_e = hist_nz_eigs.min(), hist_nz_eigs.max()
                    counts = torch.histc(hist_nz_eigs, bins, min=min_e, max=max_e)
                    boundaries = torch.linspace(min_e, max_e, bins + 1)
                    h = counts, boundaries
                    ih = torch.argmax(h[0])
                    xmin2 = 10 ** h[1][ih]
                    xmin_min = torch.log10(0.95 * xmin2)
                    xmin_max = 1.5 * xmin2
                for i, xmin in enumerate(nz_eigs[:-1]):
                    if fix_fingers == "xmin_peak":
                        if xmin < xmin_min:
                            continue
                        if xmin > xmin_max:
                            break
                    n = float(N - i)
                    seq = torch.arange(n)
                    alpha = 1 + n / (torch.sum(log_nz_eigs[i:]) - n * log_nz_eigs[i])
                    alphas[i] = alpha
                    if alpha > 1:
                        Ds[i] = torch.max(torch.abs(1 - (nz_eigs[i:] / xmin) ** (-alpha + 1) - seq / n))
                min_D_index = torch.argmin(Ds)
                final_alpha = alphas[min_D_index]
            results["alpha"].append(final_alpha.item())
            results["longname"].append(name)
    return results


def ref_ww_sparsity(blocks, metrics, sparsity_ratio, s1, s2, mapping_type="block_wise"):
    def find_layers(module, layers=[nn.Linear], name=""):
        if type(module) in layers:
            return {name: module}
        res = {}
        for name1, child in module.named_children():
            res.update(find_layers(child, layers=layers, name=name + "." + name1 if name != "" else name1))
        return res

    layers = [find_layers(blocks)]
    prunables = []
    for layer in layers:
        for name in layer:
            prunables.append(layer[name].weight.numel())
    layer_num_in_block = int(len(prunables) / len(blocks))
    if mapping_type == "block_wise":
        block_metrics = [np.mean(metrics[i : i + layer_num_in_block]) for i in range(0, len(metrics), layer_num_in_block)]
        metrics = [i for i in block_metrics for j in range(layer_num_in_block)]
    scores = torch.tensor(metrics)
    prunables = torch.tensor(prunables)
    max = torch.max(scores)
    min = torch.min(scores)
    layerwise_pruning_ratios = ((scores - min) / (max - min)) * (s2 - s1) + s1
    scaler = torch.sum(prunables) * sparsity_ratio / (torch.sum(prunables * layerwise_pruning_ratios))
    layerwise_pruning_ratios = layerwise_pruning_ratios * scaler
    return layerwise_pruning_ratios.cpu().numpy().tolist(), find_layers(blocks)


# ---------------------------------------------------------------- against the reference


def _trained_like(model, seed):
    """Give each linear a heavier-tailed spectrum of its own, so that exponents differ between layers and blocks."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            rows, cols = module.weight.shape
            u, _, v = torch.linalg.svd(torch.randn(rows, cols, generator=generator), full_matrices=False)
            tail = float(torch.empty(1).uniform_(0.5, 3.0, generator=generator))
            spectrum = torch.arange(1, min(rows, cols) + 1, dtype=torch.float32) ** (-1 / tail)
            module.weight.data = (u * spectrum) @ v * 0.5
    return model


@pytest.mark.parametrize("family", ["llama", "opt", "phi", "gpt_neox", "qwen2"])
def test_exponents_and_ratios_match_the_reference(family, one_thread):
    model = _trained_like(tiny_model(family), seed=3)
    adapter = adapter_for("auto", model.config.model_type)
    blocks = adapter.get_blocks(model)
    summaries = [layer_alphas({name: block.get_submodule(name).weight.data for name in adapter.linear_names}) for block in blocks]
    for fix_fingers in ("xmin_peak", "xmin_mid"):
        reference = ref_net_esd_estimator(blocks, fix_fingers=fix_fingers)
        weights = {longname: blocks.get_submodule(longname).weight.data for longname in reference["longname"]}
        ours = layer_alphas(weights, fix_fingers=fix_fingers)
        assert list(ours.values()) == pytest.approx(reference["alpha"], rel=1e-4), fix_fingers
    reference = ref_net_esd_estimator(blocks, fix_fingers="xmin_peak")["alpha"]
    layers = prunable_layers(model, adapter)
    for sparsity, epsilon in ((0.5, 0.3), (0.7, 0.2), (0.6, 0.1)):
        ref_ratios, ref_layers = ref_ww_sparsity(blocks, reference, sparsity, 1 - epsilon, 1 + epsilon)
        ref_by_name = dict(zip(ref_layers, ref_ratios))
        ours = alpha_allocation(layers, sparsity, summaries, epsilon).ratios
        assert len(set(ours.values())) == len(blocks) > 1
        for layer in layers:
            assert ours[layer.name] == pytest.approx(ref_by_name[layer.name], abs=1e-5), layer.name
    with pytest.raises(ConfigError, match=r"allocator.epsilon=0.5: AlphaPruning's ratios reach .* outside \(0, 1\) at sparsity 0.8; use allocator.epsilon <= 0.2"):
        alpha_allocation(layers, 0.8, summaries, 0.5)


def test_eigenvalues_are_the_squared_singular_values():
    weight = torch.randn(48, 80, generator=torch.Generator().manual_seed(0))
    expected = torch.sort(torch.linalg.svdvals(weight.double()) ** 2).values
    torch.testing.assert_close(esd_eigenvalues(weight), expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(esd_eigenvalues(weight.T), expected, rtol=1e-9, atol=1e-9)


def test_a_pure_power_law_gives_its_exponent():
    """Eigenvalues drawn as lambda = u^(-1 / (a - 1)) follow a power law of exponent a above xmin = 1."""
    u = torch.linspace(1e-4, 1, 4000, dtype=torch.float64)
    for exponent in (2.0, 3.0, 4.5):
        eigs = torch.sort(u ** (-1 / (exponent - 1))).values
        assert power_law_alpha(eigs, "xmin_mid") == pytest.approx(exponent, rel=0.05)


@settings(max_examples=60, deadline=None)
@given(
    alphas=st.lists(st.floats(1.5, 8.0), min_size=2, max_size=30), sparsity=st.floats(0.1, 0.8), epsilon=st.floats(0.0, 0.3),
    seed=st.integers(0, 1000),
)
def test_the_parameter_weighted_mean_ratio_is_the_target_and_the_order_follows_alpha(alphas, sparsity, epsilon, seed):
    metrics = torch.tensor(alphas, dtype=torch.float64)
    numels = torch.randint(1, 10_000, (len(alphas),), generator=torch.Generator().manual_seed(seed)).double()
    ratios = alpha_ratios(metrics, numels, sparsity, epsilon)
    assert float((ratios * numels).sum() / numels.sum()) == pytest.approx(sparsity, abs=1e-12)
    order = torch.argsort(metrics)
    assert (ratios[order].diff() >= -1e-12).all()
    if metrics.max() > metrics.min():
        assert float(ratios.max() / ratios.min()) == pytest.approx((1 + epsilon) / (1 - epsilon), rel=1e-9)


# ---------------------------------------------------------------- end to end


def test_alpha_and_trim_over_alpha_end_to_end(tiny_model_dirs, tmp_path, cache_dir, one_thread):
    def overrides(extra):
        return tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir, "wanda", ["sparsity.ratio=0.7", *extra])

    with pytest.raises(ConfigError, match="allocator.epsilon=1.5: must be a number in"):
        validate(compose_config(overrides(["allocator=alpha", "allocator.epsilon=1.5"])))
    with pytest.raises(ConfigError, match="allocator='alpha' cannot honour sparsity.pattern=2:4"):
        validate(compose_config(overrides(["allocator=alpha", "sparsity=2of4", "sparsity.ratio=0.5"])))
    spec = validate(compose_config(overrides(["allocator=alpha", "metric=magnitude"])))
    assert not spec.allocator.reads.calibration and not spec.reads_calibration  # the weights alone

    document = run_case(validate(compose_config(overrides(["allocator=alpha", "allocator.epsilon=0.3"]))))
    assert document["status"] == "ok", document.get("error")
    allocation = document["allocation"]
    assert len(allocation["alphas"]) == 2 and allocation["epsilon"] == 0.3
    ratios = list(allocation["layer_ratios"].values())
    assert max(ratios) / min(ratios) == pytest.approx(1.3 / 0.7)
    per_layer = document["sparsity"]["per_layer"]
    mean = sum(layer["target"] * layer["rows"] * layer["cols"] for layer in per_layer.values()) / sum(layer["rows"] * layer["cols"] for layer in per_layer.values())
    assert mean == pytest.approx(0.7, abs=1e-9)
    assert document["notes"]["dense_summaries"] == "computed"

    trim = run_case(validate(compose_config(overrides(["allocator=trim", "allocator.layerwise=alpha", "allocator.epsilon=0.3", "allocator.iterations=2"]))))
    assert trim["status"] == "ok", trim.get("error")
    assert trim["allocation"]["layerwise"] == "alpha" and trim["allocation"]["alpha"]["epsilon"] == 0.3
    assert trim["allocation"]["layerwise_ratios"] == pytest.approx(allocation["layer_ratios"])
    assert method_of(trim["config"]) == "wanda + trim (alpha)" and method_of(document["config"]) == "wanda + alpha"
