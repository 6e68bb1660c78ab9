"""GPU behaviour (run on a CUDA machine: ``pytest -m gpu``); skipped where no GPU is visible."""

import pytest
import torch

from reference_impls import sparsegpt_column_by_column
from sparsebench.allocators import ALLOCATORS
from sparsebench.evaluate.perplexity import perplexity
from sparsebench.masks import SparsityTarget
from sparsebench.metrics import METRICS
from sparsebench.models.adapters import adapter_for
from sparsebench.prune import prunable_layers, prune_model
from sparsebench.stats import HESSIAN, LayerStats
from tiny_models import TINY_CONFIGS, tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _prune(model, metric, offload, ids, pattern=None):
    adapter = adapter_for("auto", model.config.model_type)
    ratios = ALLOCATORS.get("uniform").allocate(prunable_layers(model, adapter), 0.5)
    return prune_model(model, adapter, METRICS.get(metric), {}, ratios, pattern, ids, "cuda", offload, 2, progress=False)


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("metric", ["wanda", "sparsegpt"])
def test_offload_gives_the_same_model_as_pruning_on_the_gpu(family, metric):
    ids = torch.randint(0, 300, (6, 64), generator=torch.Generator().manual_seed(0))
    on_gpu = tiny_model(family, dtype=torch.float16).cuda()
    offloaded = tiny_model(family, dtype=torch.float16)  # stays on the CPU
    _prune(on_gpu, metric, False, ids)
    report = _prune(offloaded, metric, True, ids)
    for (name, a), (_, b) in zip(on_gpu.named_parameters(), offloaded.named_parameters()):
        assert torch.equal(a.cpu(), b.cpu()), name
    assert all(abs(layer.achieved - 0.5) <= layer.tolerance for layer in report.layers)
    adapter = adapter_for("auto", on_gpu.config.model_type)
    first = perplexity(on_gpu, adapter, ids, "cuda", False, 2, progress=False).ppl
    second = perplexity(offloaded, adapter, ids, "cuda", True, 2, progress=False).ppl
    assert first == pytest.approx(second, rel=1e-6)


def test_sparsegpt_on_the_gpu_agrees_with_the_float64_reference():
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(4096, 24, generator=g, dtype=torch.float64) @ torch.randn(24, 256, generator=g, dtype=torch.float64)
    inputs += 0.1 * torch.randn(4096, 256, generator=g, dtype=torch.float64)
    weight = torch.randn(128, 256, generator=g, dtype=torch.float64)
    hessian = inputs.T @ inputs
    reference = sparsegpt_column_by_column(weight, hessian, 0.5)
    ours = METRICS.get("sparsegpt").prune(weight.float().cuda(), LayerStats(4096, sums={HESSIAN: hessian.float().cuda()}), SparsityTarget(0.5)).double().cpu()
    assert ((ours == 0) != (reference == 0)).float().mean() < 2e-3
    assert torch.linalg.norm(ours - reference) / torch.linalg.norm(reference) < 1e-3


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8)])
def test_sparsegpt_n_m_cuda_graph_equals_the_eager_loop_and_the_float64_reference(n, m):
    from sparsebench.masks import NMPattern
    from sparsebench.metrics import sparsegpt as module

    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(4096, 32, generator=g, dtype=torch.float64) @ torch.randn(32, 384, generator=g, dtype=torch.float64)
    inputs += 0.1 * torch.randn(4096, 384, generator=g, dtype=torch.float64)
    weight = torch.randn(96, 384, generator=g, dtype=torch.float64)
    hessian = inputs.T @ inputs
    factor = module.inverse_hessian_factor(hessian.float().cuda(), 0.01)
    target = SparsityTarget(n / m, NMPattern(n, m))
    graphed = module.sparsegpt_solve(weight.float().cuda(), factor, target)
    again = module.sparsegpt_solve(weight.float().cuda(), factor, target)  # replays the cached graphs
    eager = module.sparsegpt_solve(weight.float().cuda(), factor, target, cuda_graphs=False)
    assert torch.equal(graphed, again)
    # the same kernels, but cuBLAS may pick other algorithms under capture: equal to float32 rounding
    assert ((graphed == 0) != (eager == 0)).float().mean() < 1e-3
    assert torch.linalg.norm(graphed - eager) / torch.linalg.norm(eager) < 1e-5
    reference = sparsegpt_column_by_column(weight, hessian, n / m, n, m)
    assert ((graphed.double().cpu() == 0) != (reference == 0)).float().mean() < 2e-3
    assert torch.linalg.norm(graphed.double().cpu() - reference) / torch.linalg.norm(reference) < 1e-3


def test_half_precision_hessian_on_tensor_cores_equals_float64():
    from sparsebench.stats import StatsAccumulator

    x = torch.randn(4096, 512, device="cuda").half()
    accumulator = StatsAccumulator(frozenset({HESSIAN}))
    accumulator.add(x[:2048])
    accumulator.add(x[2048:])
    exact = x.double().T @ x.double()
    # float32 accumulation of exact products: ~1e-6 relative (TF32-truncated inputs would give ~1e-3)
    assert torch.linalg.norm(accumulator.stats.hessian.double() - exact) / torch.linalg.norm(exact) < 5e-5
