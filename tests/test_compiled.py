"""The ``compiled_graph`` efficiency mode on the CPU: the compiled forward (sparsebench/evaluate/compiled.py) and
the sparse linears' custom operators. CUDA graphs need a GPU: tests/test_gpu_kernels.py runs the mode itself."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from torch._subclasses.fake_tensor import FakeTensorMode
from transformers import LlamaConfig, LlamaForCausalLM

from sparsebench.evaluate.compiled import compile_problem, compiled_forward
from sparsebench.evaluate.cuda_graphs import StaticDecoder
from sparsebench.kernels import semi_sparse
from sparsebench.kernels.semi_sparse import SemiSparseLinear
from sparsebench.testing.compiled_ops import RecordingBackend
from sparsebench.testing.tiny_models import tiny_model

pytest.importorskip("triton")
from sparsebench.kernels import bitmask_linear, gemv24  # noqa: E402,F401  (register sparsebench::bitmask_matmul, ::gemv24_matmul)


def _llama(layers: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


def _prefill_and_decode(model, ids, compiled=None):
    """Prefill logits and greedy tokens; through ``compiled`` (prefill, decode steps) if given, the decode prompt eagerly as the mode runs it."""
    with torch.inference_mode():
        logits = (model if compiled is None else compiled)(input_ids=ids, use_cache=False, logits_to_keep=1).logits
        decoder = StaticDecoder(model, ids[:, :9], 5, graph=False, step_model=compiled)
        decoder.decode(keep=True)
        decoder.prefill()  # the rewound cache, as each timed repeat starts: no compilation
        decoder.decode()
    return logits, decoder.tokens()


@pytest.mark.parametrize("layers", [4, pytest.param(32, marks=pytest.mark.slow)])  # 32: about 18 s of tracing here
def test_the_whole_forward_compiles_once_per_shape_whatever_the_layers_and_leaves_the_model_eager(layers):
    model = _llama(layers)
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(1))
    expected_logits, expected_tokens = _prefill_and_decode(model, ids)
    counters.clear()
    with compiled_forward(model, shapes=2, backend="eager") as compiled:
        logits, tokens = _prefill_and_decode(model, ids, compiled)
    # prefill and one-token step: 2 graphs for any number of layers (per-layer compilation would recompile per layer_idx)
    assert counters["stats"]["unique_graphs"] == 2
    assert torch.equal(logits, expected_logits) and torch.equal(tokens, expected_tokens)
    counters.clear()
    _prefill_and_decode(model, ids)
    assert counters["stats"]["unique_graphs"] == 0  # eager again


def test_a_compilation_beyond_the_expected_shapes_raises_instead_of_running_eagerly():
    model = _llama(2)
    with compiled_forward(model, shapes=1, backend="eager") as compiled, torch.inference_mode():
        compiled(input_ids=torch.zeros(1, 8, dtype=torch.long), use_cache=False)
        with pytest.raises(RuntimeError, match="more than 1 compilations"):
            compiled(input_ids=torch.zeros(1, 9, dtype=torch.long), use_cache=False)


@pytest.mark.slow
def test_inductor_gives_the_eager_logits_and_tokens():
    if compile_problem("cpu") is not None:
        pytest.skip(compile_problem("cpu"))
    model = tiny_model("llama")
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(2))
    expected_logits, expected_tokens = _prefill_and_decode(model, ids)
    counters.clear()
    with compiled_forward(model, shapes=2) as compiled:
        logits, tokens = _prefill_and_decode(model, ids, compiled)
    assert counters["stats"]["unique_graphs"] == 2
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-5)
    assert torch.equal(tokens, expected_tokens)


def test_fake_implementations_give_the_output_shapes():
    with FakeTensorMode():
        rows = torch.empty(32, 256, dtype=torch.float16)
        product = torch.ops.sparsebench.cusparselt_mm.default(torch.empty(50000, dtype=torch.float16), rows, 3, 128)
        assert product.shape == (32, 128) and product.dtype == torch.float16 and product.is_contiguous()
        x = torch.empty(5, 300, dtype=torch.bfloat16)
        out = torch.ops.sparsebench.bitmask_matmul.default(
            x, torch.empty(1000, dtype=torch.bfloat16), torch.empty(40, 38, dtype=torch.uint8), torch.empty(41, dtype=torch.int64),
            torch.empty(40, 1, dtype=torch.int32), None, 300, None)
        assert out.shape == (5, 40) and out.dtype == torch.bfloat16
        x = torch.empty(3, 264, dtype=torch.float16)
        out = torch.ops.sparsebench.gemv24_matmul.default(x, torch.empty(40, 132, dtype=torch.float16), torch.empty(40, 33, dtype=torch.uint8), None, [4, 64, 4, 1])
        assert out.shape == (3, 40) and out.dtype == torch.float16


def _semi_sparse(out_features=32, in_features=64) -> SemiSparseLinear:
    """A module with a stand-in packed buffer: tracing never runs the product."""
    return SemiSparseLinear(torch.zeros(out_features * in_features // 2, dtype=torch.float16), out_features, in_features, None, torch.float16)


class _Traced(Exception):
    pass


def test_semi_sparse_traces_to_the_opaque_operator_with_the_searched_algorithm(monkeypatch):
    monkeypatch.setattr(semi_sparse, "_ALGORITHM_IDS", {(32, 64, torch.float16, 16, False): 7})
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)

        def run(*args):
            raise _Traced  # the product needs cuSPARSELt on a GPU
        return run

    torch._dynamo.reset()
    with pytest.raises(_Traced):
        torch.compile(_semi_sparse(), fullgraph=True, dynamic=False, backend=backend)(torch.zeros(1, 5, 64, dtype=torch.float16))
    calls = [node for node in graphs[0].graph.nodes if node.target is torch.ops.sparsebench.cusparselt_mm.default]
    assert len(calls) == 1 and calls[0].args[2:] == (7, 32)  # the searched id for 16 padded tokens, out_features


def test_semi_sparse_tracing_a_shape_without_a_searched_algorithm_raises(monkeypatch):
    monkeypatch.setattr(semi_sparse, "_ALGORITHM_IDS", {})
    torch._dynamo.reset()
    with pytest.raises(RuntimeError, match=r"no algorithm id for 16 tokens \(column-major\) yet; run the same shapes once eagerly before torch.compile traces"):
        torch.compile(_semi_sparse(), fullgraph=True, dynamic=False, backend="eager")(torch.zeros(1, 5, 64, dtype=torch.float16))


def test_the_mode_is_a_configured_value_and_is_skipped_with_its_reason_on_the_cpu():
    from sparsebench.evaluate.efficiency import measure_modes, validate_efficiency
    from sparsebench.evaluate.measure import PeakMemory

    config = {"enabled": True, "prefill_batch": 1, "prefill_seqlen": 8, "decode_batches": [1], "decode_prompt": 4, "decode_tokens": 3,
              "warmup": 0, "repeats": 1, "sparse_kernels": "auto", "modes": ["eager", "compiled_graph"]}
    spec = validate_efficiency(config)
    assert spec.modes == ("eager", "compiled_graph")
    measured, skipped = measure_modes(tiny_model("llama"), spec, "cpu", 64, PeakMemory("cpu"), False, "dense_stored")
    assert set(measured) == {"eager"}
    assert skipped == [{"what": "dense_stored: mode compiled_graph", "why": "CUDA graphs need a CUDA GPU; this case ran on the CPU"}]


def test_what_the_mode_runs_compiles_exactly_the_counted_times():
    from sparsebench.evaluate.efficiency import (COMPILATIONS_PER_DECODE_BATCH, COMPILATIONS_PER_PREFILL, EfficiencySpec, _run_shapes,
                                                 prefill, static_decode)
    from sparsebench.evaluate.measure import PeakMemory

    model, memory = tiny_model("llama"), PeakMemory("cpu")
    spec = EfficiencySpec(1, 16, (1, 2), 8, 6, 1, 2, "auto", ("compiled_graph",))
    shapes = COMPILATIONS_PER_PREFILL + COMPILATIONS_PER_DECODE_BATCH * len(spec.decode_batches)
    counters.clear()
    with compiled_forward(model, shapes=shapes, backend="eager") as compiled:
        _run_shapes(model, spec, 16, "cpu", compiled)
        assert counters["stats"]["unique_graphs"] == shapes
        prefill(model, 1, 16, "cpu", 1, 2, memory, False, compiled)  # the timed calls (graph=False: the same calls a graph would capture)
        for batch in spec.decode_batches:
            static_decode(model, batch, 8, 6, "cpu", 1, 2, memory, False, compiled)
    assert counters["stats"]["unique_graphs"] == shapes


def _sdpa_calls(gm) -> list:
    return [node for node in gm.graph.nodes if node.target is torch._C._nn.scaled_dot_product_attention
            or getattr(node.target, "__name__", "") == "scaled_dot_product_attention"]


def test_a_compiled_prefill_runs_causal_sdpa_without_a_mask_tensor_and_the_same_logits():
    """transformers materialises the causal mask while Dynamo traces (torch < 2.14); causal_prefill_attention drops it
    for an unpadded prefill, on both sides of the measurement, so SDPA can take its causal FlashAttention kernel."""
    from sparsebench.evaluate.compiled import CAUSAL_PREFILL_ATTENTION, causal_prefill_attention

    model = _llama(2)
    assert model.config._attn_implementation == "sdpa"
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    backend = RecordingBackend()
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits
        with causal_prefill_attention(model) as attention:
            assert attention == CAUSAL_PREFILL_ATTENTION and model.config._attn_implementation == attention
            eager = model(input_ids=ids, use_cache=False).logits
            torch._dynamo.reset()
            compiled = torch.compile(model, fullgraph=True, dynamic=False, backend=backend)(input_ids=ids, use_cache=False).logits
        assert model.config._attn_implementation == "sdpa"  # put back
        torch._dynamo.reset()
        plain = torch.compile(model, fullgraph=True, dynamic=False, backend=backend)(input_ids=ids, use_cache=False).logits
        torch._dynamo.reset()
    torch.testing.assert_close(eager, expected)
    torch.testing.assert_close(compiled, expected)
    torch.testing.assert_close(plain, expected)
    ours, theirs = _sdpa_calls(backend.graphs[0]), _sdpa_calls(backend.graphs[1])
    assert len(ours) == len(theirs) == 2
    assert all(node.kwargs.get("attn_mask") is None and node.kwargs.get("is_causal") is True for node in ours)
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) < (2, 14):
        assert all(node.kwargs.get("attn_mask") is not None for node in theirs)  # why the function exists


def test_causal_prefill_attention_keeps_the_mask_of_decode_steps_and_of_prompts_into_a_cache():
    from sparsebench.evaluate.compiled import causal_prefill_attention

    model = _llama(2)
    prompt = torch.randint(0, 320, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        plain = StaticDecoder(model, prompt, 6, graph=False)
        plain.decode(keep=True)
        with causal_prefill_attention(model):
            ours = StaticDecoder(model, prompt, 6, graph=False)
            ours.decode(keep=True)
    assert torch.equal(ours.tokens(), plain.tokens())
