"""GPU behaviour (run on a CUDA machine: ``pytest -m gpu``); skipped where no GPU is visible."""

import pytest
import torch

from sparsebench.testing.reference_impls import sparsegpt_column_by_column
from sparsebench.allocators.uniform import uniform
from sparsebench.blockwalk import Execution
from sparsebench.evaluate.perplexity import perplexity
from sparsebench.masks import SparsityTarget
from sparsebench.metrics import METRICS
from sparsebench.models.adapters import adapter_for
from sparsebench.layers import prunable_layers
from sparsebench.prune import PrunePlan, prune_model
from sparsebench.stats import HESSIAN, LayerStats
from sparsebench.testing.tiny_models import TINY_CONFIGS, tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _prune(model, metric, offload, ids, pattern=None):
    adapter = adapter_for("auto", model.config.model_type)
    ratios = uniform(prunable_layers(model, adapter), 0.5)
    return prune_model(model, adapter, PrunePlan(METRICS.get(metric), {}, ratios, pattern), ids, Execution("cuda", offload, 2))


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
    first = perplexity(on_gpu, adapter, ids, Execution("cuda", False, 2)).ppl
    second = perplexity(offloaded, adapter, ids, Execution("cuda", True, 2)).ppl
    assert first == pytest.approx(second, rel=1e-6)


@pytest.mark.parametrize("factor", ["reference", "float64"])
def test_sparsegpt_on_the_gpu_agrees_with_the_float64_reference(factor):
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(4096, 24, generator=g, dtype=torch.float64) @ torch.randn(24, 256, generator=g, dtype=torch.float64)
    inputs += 0.1 * torch.randn(4096, 256, generator=g, dtype=torch.float64)
    weight = torch.randn(128, 256, generator=g, dtype=torch.float64)
    hessian = inputs.T @ inputs
    reference = sparsegpt_column_by_column(weight, hessian, 0.5)
    ours = METRICS.get("sparsegpt").prune(weight.float().cuda(), LayerStats(4096, sums={HESSIAN: hessian.float().cuda()}), SparsityTarget(0.5), factor=factor).double().cpu()
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
    graphed = module.sparsegpt_solve(weight.float().cuda(), factor, target, kernel="torch")
    again = module.sparsegpt_solve(weight.float().cuda(), factor, target, kernel="torch")  # replays the cached graphs
    eager = module.sparsegpt_solve(weight.float().cuda(), factor, target, cuda_graphs=False, kernel="torch")
    assert torch.equal(graphed, again)
    # the same kernels, but cuBLAS may pick other algorithms under capture: equal to float32 rounding
    assert ((graphed == 0) != (eager == 0)).float().mean() < 1e-3
    assert torch.linalg.norm(graphed - eager) / torch.linalg.norm(eager) < 1e-5
    reference = sparsegpt_column_by_column(weight, hessian, n / m, n, m)
    assert ((graphed.double().cpu() == 0) != (reference == 0)).float().mean() < 2e-3
    assert torch.linalg.norm(graphed.double().cpu() - reference) / torch.linalg.norm(reference) < 1e-3


def _correlated_layer(rows, cols, seed):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(4096, 32, generator=g, dtype=torch.float64) @ torch.randn(32, cols, generator=g, dtype=torch.float64)
    inputs += 0.1 * torch.randn(4096, cols, generator=g, dtype=torch.float64)
    return torch.randn(rows, cols, generator=g, dtype=torch.float64), inputs.T @ inputs


@pytest.mark.parametrize("n, m", [(0, 0), (2, 4), (4, 8)])
def test_sparsegpt_triton_kernel_agrees_with_the_torch_path_and_the_float64_reference(n, m):
    """Odd rows, columns not a multiple of the block; float64 on the GPU is exact, float32 to rounding."""
    from sparsebench.masks import NMPattern
    from sparsebench.metrics import sparsegpt as module

    weight, hessian = _correlated_layer(333, 392, 2 + m)
    target = SparsityTarget(0.5, NMPattern(n, m) if m else None)
    reference = sparsegpt_column_by_column(weight, hessian, 0.5, n, m)
    factor = module.inverse_hessian_factor(hessian.cuda(), 0.01)
    exact = module.sparsegpt_solve(weight.cuda(), factor, target, kernel="triton").cpu()
    assert torch.equal(exact == 0, reference == 0)
    assert torch.allclose(exact, reference, rtol=0, atol=1e-9)
    single = module.sparsegpt_solve(weight.float().cuda(), factor.float(), target, kernel="triton")
    torch_path = module.sparsegpt_solve(weight.float().cuda(), factor.float(), target, kernel="torch")
    assert ((single == 0) != (torch_path == 0)).float().mean() < 1e-3
    assert torch.linalg.norm(single - torch_path) / torch.linalg.norm(torch_path) < 1e-5
    single = single.double().cpu()
    assert ((single == 0) != (reference == 0)).float().mean() < 2e-3
    assert torch.linalg.norm(single - reference) / torch.linalg.norm(reference) < 1e-3


@pytest.mark.parametrize("n, m", [(0, 0), (2, 4)])
def test_sparsegpt_triton_kernel_is_faster_than_the_torch_path(n, m):
    """A 4096 x 4096 float32 layer: the kernel's solve at least 2x faster (an H200: about 5-10x)."""
    import time

    from sparsebench.masks import NMPattern
    from sparsebench.metrics import sparsegpt as module

    g = torch.Generator(device="cuda").manual_seed(5)
    inputs = torch.randn(8192, 4096, device="cuda", generator=g)
    factor = module.inverse_hessian_factor(inputs.T @ inputs, 0.01)
    weight = torch.randn(4096, 4096, device="cuda", generator=g)
    target = SparsityTarget(0.5, NMPattern(n, m) if m else None)

    def seconds(kernel):
        module.sparsegpt_solve(weight, factor, target, kernel=kernel)  # compile, capture
        torch.cuda.synchronize()
        start = time.perf_counter()
        module.sparsegpt_solve(weight, factor, target, kernel=kernel)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    assert 2 * seconds("triton") < seconds("torch")


def test_hassle_free_on_the_gpu_uses_the_kernel_and_lowers_the_error():
    from sparsebench.metrics import sparsegpt as module

    weight, hessian = _correlated_layer(96, 256, 9)
    stats = LayerStats(4096, sums={HESSIAN: hessian.float().cuda()})
    result = METRICS.get("hassle_free").prune(weight.float().cuda(), stats, SparsityTarget(0.5), rank=8, iterations=3)
    assert ((result.sparse == 0).float().mean() - 0.5).abs() < 1e-6
    assert result.info["relative_error"] < result.info["relative_error_sparse_only"]
    first = module.sparsegpt_solve(weight.float().cuda(), module.inverse_hessian_factor(hessian.float().cuda(), 0.01), SparsityTarget(0.5))
    sparse_only = torch.linalg.norm((weight.float().cuda() - first) @ torch.linalg.cholesky(hessian.float().cuda()))
    assert result.info["relative_error_sparse_only"] == pytest.approx(
        float(sparse_only**2 / torch.linalg.norm(weight.float().cuda() @ torch.linalg.cholesky(hessian.float().cuda())) ** 2), rel=1e-3)


def test_half_precision_hessian_on_tensor_cores_equals_float64():
    from sparsebench.stats import StatsAccumulator

    x = torch.randn(4096, 512, device="cuda").half()
    accumulator = StatsAccumulator(frozenset({HESSIAN}))
    accumulator.add(x[:2048])
    accumulator.add(x[2048:])
    exact = x.double().T @ x.double()
    # float32 accumulation of exact products: ~1e-6 relative (TF32-truncated inputs would give ~1e-3)
    assert torch.linalg.norm(accumulator.stats.hessian.double() - exact) / torch.linalg.norm(exact) < 5e-5
