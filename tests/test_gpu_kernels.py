"""The efficiency stage's GPU kernels and CUDA-graph modes (``pytest -m gpu``); skipped where no GPU is visible.

Every sparse path must compute the dense-stored model's function: the same logits within fp16 rounding, the
same greedy tokens eagerly and replayed as CUDA graphs.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from sparsebench.blockwalk import Execution
from sparsebench.evaluate.compiled import compiled_forward
from sparsebench.evaluate.cuda_graphs import StaticDecoder, graphed
from sparsebench.evaluate.efficiency import EfficiencySpec, evaluate_efficiency
from sparsebench.kernels.paths import PATHS, converter, paths_for, swapped
from sparsebench.kernels.semi_sparse import SemiSparseLinear
from sparsebench.masks import NMPattern
from sparsebench.testing.tiny_models import tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _prune_2of4(weight: torch.Tensor) -> torch.Tensor:
    groups = weight.view(weight.shape[0], -1, 4)
    groups.scatter_(-1, groups.abs().topk(2, dim=-1, largest=False).indices, 0)
    return weight


def _prune_unstructured(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    threshold = weight.abs().flatten().float().kthvalue(int(ratio * weight.numel())).values
    return weight.masked_fill_(weight.abs() <= threshold, 0)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a.float() - b.float()) / torch.linalg.norm(b.float()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(128, 256), (4096, 11008)])
def test_semi_sparse_linear_computes_the_dense_product(dtype, shape):
    g = torch.Generator(device="cuda").manual_seed(0)
    linear = torch.nn.Linear(shape[1], shape[0], device="cuda", dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(_prune_2of4(torch.randn(shape, device="cuda", generator=g, dtype=dtype) * 0.02))
    sparse = SemiSparseLinear.from_linear(linear)
    assert sparse.weight_bytes() < 0.6 * linear.weight.numel() * linear.weight.element_size() + linear.bias.numel() * 2
    tolerance = 2e-3 if dtype == torch.float16 else 1e-2
    for tokens in (1, 5, 16, 64, 300):
        x = torch.randn(2, tokens, shape[1], device="cuda", generator=g, dtype=dtype)
        with torch.no_grad():
            reference = F.linear(x.float(), linear.weight.float(), linear.bias.float())
            out = sparse(x)
        assert out.shape == (2, tokens, shape[0]) and out.dtype == dtype
        assert out.is_contiguous(), "a strided output sends the attention that follows to a slower kernel (semi_sparse.py)"
        assert _relative(out, reference) < tolerance, tokens


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tokens", [16, 2048])
def test_a_features_major_mlp_computes_the_dense_one(dtype, tokens):
    """LLaMA-2-7B's MLP shapes: gate and up hand on cuSPARSELt's [out, tokens] product as its transposed view, down reads
    their product row-major (its own searched algorithm id); the output equals the dense MLP's within rounding."""
    g = torch.Generator(device="cuda").manual_seed(4)
    weights = {name: _prune_2of4(torch.randn(shape, device="cuda", generator=g, dtype=dtype) * 0.02)
               for name, shape in (("gate", (11008, 4096)), ("up", (11008, 4096)), ("down", (4096, 11008)))}
    modules = {}
    for name, weight in weights.items():
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="cuda", dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
        modules[name] = SemiSparseLinear.from_linear(linear)
    modules["gate"].hand_on_features_major()
    modules["up"].hand_on_features_major()
    x = torch.randn(1, tokens, 4096, device="cuda", generator=g, dtype=dtype)
    with torch.no_grad():
        gate, up = modules["gate"](x), modules["up"](x)
        assert gate[0].stride() == (1, tokens) and up[0].stride() == (1, tokens)  # views of [out, tokens]: no copies
        hidden = F.silu(gate) * up
        assert hidden[0].stride() == (1, tokens)  # PyTorch's elementwise operations keep the layout
        out = modules["down"](hidden)
        xf = x.float()
        reference = F.linear(F.silu(F.linear(xf, weights["gate"].float())) * F.linear(xf, weights["up"].float()), weights["down"].float())
    assert out.is_contiguous() and out.shape == (1, tokens, 4096)
    assert _relative(out, reference) < (3e-3 if dtype == torch.float16 else 1.5e-2)


def _mlp_inputs(model) -> list:
    return [module for name, module in model.named_modules() if name.endswith(("gate_proj", "up_proj"))]


def _input_groups(model) -> list[tuple]:
    from sparsebench.models.adapters import adapter_for

    return adapter_for("auto", "llama").grouped_linears(model)


@pytest.mark.parametrize("shape", [(4096, 2048), (11008, 2048), (4096, 16), (11008, 8192), (100, 37)])
def test_the_triton_transpose_equals_the_transposed_copy(shape):
    from sparsebench.kernels.transpose import transposed_copy

    source = torch.randn(shape, device="cuda", dtype=torch.float16)
    out = transposed_copy(source)
    assert out.is_contiguous() and torch.equal(out, source.t())


def _sparse_model(pattern: str, dtype=torch.float16):
    model = tiny_model("llama", dtype=dtype).cuda()
    linears = [module for name, module in model.named_modules() if name.endswith("proj")]
    with torch.no_grad():
        for linear in linears:
            _prune_2of4(linear.weight.data) if pattern == "2:4" else _prune_unstructured(linear.weight.data, 0.7)
    return model, linears


def _available(pattern):
    """Every path of the pattern, those measured only where named included."""
    return [path for path in paths_for(pattern, list(PATHS)) if not path.name.startswith("bitmask") or _bitmask_module()]


def _bitmask_module() -> bool:
    try:
        converter(PATHS["bitmask"])
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("pattern", ["2:4", "unstructured"])
@pytest.mark.parametrize("features_major", [False, True])
@pytest.mark.parametrize("shape", [(2, 40), (1, 1)])  # 80 tokens, unpadded; one token (the one-token kernels)
def test_every_sparse_path_gives_the_dense_stored_logits(pattern, features_major, shape):
    model, linears = _sparse_model(pattern)
    paths = _available(pattern)
    if not paths:
        pytest.skip("sparsebench.kernels.bitmask_linear is not in this checkout")
    ids = torch.randint(0, 320, shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
        for path in paths:
            with swapped(model, linears, converter(path), _mlp_inputs(model) if features_major else ()):
                assert not any(module is linear for module in model.modules() for linear in linears)
                sparse = model(input_ids=ids).logits
            assert _relative(sparse, dense) < 3e-3, path.name
        assert torch.equal(model(input_ids=ids).logits, dense)  # put back


@pytest.mark.parametrize("path_name", [None, "cusparselt", "cusparselt_gemv24"])
def test_cuda_graph_decoding_gives_the_eager_tokens(path_name):
    """Dense-stored in float32 (so HF's generate, another attention path, picks the same tokens); the sparse paths in float16."""
    model, linears = _sparse_model("2:4", torch.float32 if path_name is None else torch.float16)
    prompt = torch.randint(0, 320, (3, 9), device="cuda", generator=torch.Generator(device="cuda").manual_seed(2))

    def tokens():
        with torch.inference_mode():
            eager = StaticDecoder(model, prompt, 12, graph=False)
            eager.decode(keep=True)
            graph = StaticDecoder(model, prompt, 12, graph=True)
            graph.decode(keep=True)
            first = graph.tokens()
            graph.prefill()
            graph.decode(keep=True)  # the replays rewind with the cache
            return eager.tokens(), first, graph.tokens()

    if path_name is None:
        eager, graphed, again = tokens()
        with torch.inference_mode():
            expected = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=13, min_new_tokens=13, do_sample=False, pad_token_id=0)
        assert torch.equal(eager, expected[:, 9:])
    else:
        with swapped(model, linears, converter(PATHS[path_name])):
            eager, graphed, again = tokens()
    assert torch.equal(graphed, eager) and torch.equal(again, eager)


@pytest.mark.parametrize("path_name", [None, "cusparselt", "cusparselt+features_major", "cusparselt_gemv24+features_major", "bitmask", "bitmask_kept",
                                       "gemv24"])
def test_compiled_graph_gives_the_eager_logits_and_tokens(path_name):
    """The compiled forward replayed as CUDA graphs: prefill logits within rounding of the eager ones; greedy tokens equal to
    the compiled forward's run without graphs (the same kernels) and, dense-stored in float32, to the eager tokens (fused
    float16 kernels round differently from HF's, which may flip a near tie of a random model)."""
    if path_name in ("bitmask", "bitmask_kept") and not _bitmask_module():
        pytest.skip("sparsebench.kernels.bitmask_linear is not in this checkout")
    model, linears = _sparse_model("unstructured" if path_name in ("bitmask", "bitmask_kept") else "2:4", torch.float32 if path_name is None else torch.float16)
    ids = torch.randint(0, 320, (2, 32), device="cuda", generator=torch.Generator(device="cuda").manual_seed(3))
    prompt = ids[:, :9].clone()
    captured = {}

    def forward(run):
        captured["logits"] = run(input_ids=ids, use_cache=False, logits_to_keep=1).logits

    def run():
        with torch.inference_mode():
            forward(model)  # eager: cuSPARSELt searches its algorithm ids here, before tracing
            eager_logits = captured["logits"].clone()
            eager = StaticDecoder(model, prompt, 10, graph=False)
            eager.decode(keep=True)
            with compiled_forward(model, shapes=2) as compiled:  # the prefill; the one-token step (prompts run eagerly)
                forward(compiled)
                graph = graphed(lambda: forward(compiled))
                graph.replay()
                graph_logits = captured["logits"].clone()
                plain = StaticDecoder(model, prompt, 10, graph=False, step_model=compiled)
                plain.decode(keep=True)
                replayed = StaticDecoder(model, prompt, 10, graph=True, step_model=compiled)
                replayed.prefill()  # the capture's warm-up steps advanced the cache
                replayed.decode(keep=True)
        return eager_logits, graph_logits, eager.tokens(), plain.tokens(), replayed.tokens()

    if path_name is None:
        eager_logits, graph_logits, eager, plain, replayed = run()
    else:
        name, _, layout = path_name.partition("+")
        with swapped(model, linears, converter(PATHS[name]), _mlp_inputs(model) if layout else ()):
            eager_logits, graph_logits, eager, plain, replayed = run()
    assert _relative(graph_logits, eager_logits) < (1e-5 if path_name is None else 3e-3)
    assert torch.equal(replayed, plain)
    if path_name is None:
        assert torch.equal(replayed, eager)


def test_the_stage_measures_every_2of4_path_in_every_mode_on_the_gpu():
    model, linears = _sparse_model("2:4")
    spec = EfficiencySpec(1, 64, (1, 4), 16, 8, 1, 3, "auto", ("eager", "static_eager", "cuda_graph", "compiled_graph"))
    result = evaluate_efficiency(model, linears, spec, Execution("cuda"), NMPattern(2, 4), 256, features_major=_mlp_inputs(model))
    # the one skip: torch.sparse's semi-structured tensor subclass cannot run on the fake tensors torch.compile traces
    # with; gemv24 and cusparselt_gemv24 compile (their products are custom operators, sparsebench.kernels.custom_ops)
    assert [skip["what"] for skip in result["skipped"]] == ["semi_structured: mode compiled_graph"], result["skipped"]
    assert re.search(r"SparseSemiStructuredTensor|FakeTensor", result["skipped"][0]["why"]), result["skipped"][0]["why"]
    assert set(result["runs"]) == {"dense_stored", "cusparselt", "semi_structured", "cusparselt_gemv24", "gemv24"}
    for name, run in result["runs"].items():
        expected = {"eager", "static_eager", "cuda_graph"} | (set() if name == "semi_structured" else {"compiled_graph"})
        assert set(run["modes"]) == expected, name
        assert all(decode["tokens_per_s"] > 0 for mode in run["modes"].values() for decode in mode["decode"].values())
    assert set(result["speedup"]["cusparselt"]["cuda_graph"]) == {"prefill", "decode"}
    assert set(result["speedup"]["cusparselt"]["compiled_graph"]) == {"prefill", "decode"}
    assert result["weight_memory_vs_dense"]["cusparselt"] < 1.0
    layers = model.config.num_hidden_layers
    assert result["runs"]["cusparselt"]["features_major_outputs"] == result["runs"]["cusparselt_gemv24"]["features_major_outputs"] == 2 * layers
    assert "features_major_outputs" not in result["runs"]["gemv24"]
    assert result["conditions"]["before"]["gpu"] == torch.cuda.get_device_name()


@pytest.mark.parametrize("pattern", ["2:4", "unstructured"])
def test_fused_products_through_every_sparse_path_give_the_dense_stored_logits(pattern):
    """q/k/v and gate/up as one product each (sparsebench.kernels.fused_inputs), converted by each path, features-major MLP."""
    from sparsebench.kernels.fused_inputs import fused_inputs

    model, linears = _sparse_model(pattern)
    paths = _available(pattern)
    if not paths:
        pytest.skip("sparsebench.kernels.bitmask_linear is not in this checkout")
    groups = _input_groups(model)
    gate_projections = _mlp_inputs(model)[::2]  # read before fusing: inside, the model holds the fused members
    ids = torch.randint(0, 320, (2, 40), device="cuda", generator=torch.Generator(device="cuda").manual_seed(5))
    with torch.no_grad():
        dense = model(input_ids=ids).logits
        with fused_inputs(model, groups) as computing:
            fused = list({id(module): module for module in (computing[id(linear)] for linear in linears)}.values())
            mlp_inputs = [computing[id(linear)] for linear in gate_projections]  # one fused gate/up a block
            for path in paths:
                with swapped(model, fused, converter(path), mlp_inputs):
                    sparse = model(input_ids=ids).logits
                assert _relative(sparse, dense) < 3e-3, path.name


def test_the_stage_measures_fused_products_compiled_and_graphed_on_the_gpu():
    model, linears = _sparse_model("2:4")
    groups = _input_groups(model)
    spec = EfficiencySpec(1, 64, (1, 16), 16, 8, 1, 3, "auto", ("cuda_graph", "compiled_graph"), fuse_projections=True,
                          paths=("cusparselt", "cusparselt_gemv24"))
    result = evaluate_efficiency(model, linears, spec, Execution("cuda"), NMPattern(2, 4), 256, features_major=_mlp_inputs(model), groups=groups)
    assert result["skipped"] == [] and result["fused_projections"] == 2 * model.config.num_hidden_layers
    assert result["runs"]["cusparselt"]["features_major_outputs"] == model.config.num_hidden_layers  # one fused gate/up a block
    assert set(result["speedup"]["cusparselt"]["compiled_graph"]["decode"]) == {"1", "16"}
