"""What 2:4 sparsity buys on a GPU, and the size of a compressed export.

    python benchmarks/bench_efficiency.py gpu --out figures.json     # on a CUDA GPU of compute capability >= 8.0
    python benchmarks/bench_efficiency.py export                      # anywhere

``gpu`` (only torch and transformers needed; no Hydra) prints, for 2:4 against dense fp16:

1. each LLaMA-2-7B linear shape's speedup at 1, 16 and 2048 tokens with
   ``torch.sparse.to_sparse_semi_structured``, timed two ways: eager ``F.linear`` calls, and the
   same calls replayed as a CUDA graph (which hides the per-call host work); medians of CUDA-event
   times after warm-up, and the largest output difference against dense;
2. end-to-end prefill and decode speedups and peak memory on a LLaMA-2-7B-shaped model with random
   fp16 weights (``--layers`` of the 32 blocks; timing is honest with random weights, quality is
   not), measured by the case stage itself (``sparsebench.evaluate.efficiency.evaluate_efficiency``,
   eager, the path ``eval=efficiency`` takes);
3. that the perplexity of a 2:4 model with SmolLM2-135M's shapes (random fp16 weights, WikiText-2
   tokens from ``--tokens``) is the same with the sparse kernels as stored dense, within fp16
   tolerance (the project's ``perplexity`` on both).

``export`` writes a LLaMA-2-7B-shaped 2:4 model of ``--layers`` blocks with ``export=compressed``'s
code (``sparsebench.export.export_model``, float16) and with ``export=hf``'s, measures the bytes
of each, and scales the per-block bytes to 32 blocks against the dense fp16 checkpoint (parameters x 2).
Every block has the same shapes, so each block's compressed bytes are the same (2:4 stores exactly half
the values and one bit per weight).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


LLAMA2_7B_LINEARS = {"q/k/v/o_proj": (4096, 4096), "gate/up_proj": (11008, 4096), "down_proj": (4096, 11008)}
TOKENS = (1, 16, 2048)


def prune_2of4(weight: torch.Tensor) -> torch.Tensor:
    """Zero the two smallest-magnitude weights of every group of four consecutive inputs (in place)."""
    groups = weight.view(weight.shape[0], -1, 4)
    groups.scatter_(-1, groups.abs().topk(2, dim=-1, largest=False).indices, 0)
    return weight


def _event_median(call, calls: int, repeats: int) -> float:
    """Median over ``repeats`` of the mean time of ``calls`` back-to-back calls (CUDA events), in seconds."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000 / calls)
    return statistics.median(times)


def _graphed(fn, calls: int):
    """``fn`` captured ``calls`` times in one CUDA graph; returns the replay (or raises what capture raised)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph.replay


@torch.inference_mode()
def per_linear(repeats: int) -> list[dict]:
    from torch.sparse import to_sparse_semi_structured

    rows = []
    for name, (out_features, in_features) in LLAMA2_7B_LINEARS.items():
        torch.manual_seed(0)
        weight = prune_2of4(torch.randn(out_features, in_features, device="cuda", dtype=torch.float16) * 0.02)
        sparse = to_sparse_semi_structured(weight)
        for tokens in TOKENS:
            x = torch.randn(tokens, in_features, device="cuda", dtype=torch.float16)
            difference = (F.linear(x, sparse) - F.linear(x, weight)).abs().max().item()
            row = {"linear": name, "shape": [out_features, in_features], "tokens": tokens, "max_abs_difference": difference}
            calls = 50 if tokens < 2048 else 10
            for _ in range(5):
                F.linear(x, weight), F.linear(x, sparse)
            dense_s = _event_median(lambda: F.linear(x, weight), calls, repeats)
            sparse_s = _event_median(lambda: F.linear(x, sparse), calls, repeats)
            row["eager"] = {"dense_ms": dense_s * 1e3, "sparse_ms": sparse_s * 1e3, "speedup": dense_s / sparse_s}
            try:
                dense_graph = _graphed(lambda: F.linear(x, weight), calls)
                sparse_graph = _graphed(lambda: F.linear(x, sparse), calls)
                dense_s = _event_median(dense_graph, 1, repeats) / calls
                sparse_s = _event_median(sparse_graph, 1, repeats) / calls
                row["cuda_graph"] = {"dense_ms": dense_s * 1e3, "sparse_ms": sparse_s * 1e3, "speedup": dense_s / sparse_s}
            except RuntimeError as error:  # reported, not hidden
                row["cuda_graph"] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
            rows.append(row)
            graph = row["cuda_graph"].get("speedup")
            print(f"[linear] {name:13s} {out_features:5d}x{in_features:<5d} {tokens:5d} tokens: eager {row['eager']['speedup']:.2f}x"
                  f" ({row['eager']['dense_ms']:.3f} / {row['eager']['sparse_ms']:.3f} ms), cuda graph "
                  f"{f'{graph:.2f}x' if graph else row['cuda_graph']['error']}, max |diff| {difference:.2e}", flush=True)
    return rows


def _llama(config_kwargs: dict, layers: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**config_kwargs, "num_hidden_layers": layers})
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.float16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    with torch.no_grad():
        for parameter in model.parameters():  # the same scale as the default init, much faster
            parameter.normal_(0, 0.02) if parameter.dim() > 1 else parameter.fill_(1.0)
    model.eval()
    model.config.use_cache = False
    return model


def _block_linears(model) -> list:
    from sparsebench.models.adapters import adapter_for

    adapter = adapter_for("auto", "llama")
    return [linear for block in adapter.get_blocks(model) for linear in adapter.get_linears(block).values()]


LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)


def end_to_end(layers: int, decode_tokens: int, repeats: int) -> dict:
    from sparsebench.evaluate.efficiency import EfficiencySpec, evaluate_efficiency
    from sparsebench.masks import NMPattern

    model = _llama(LLAMA2_7B, layers)
    linears = _block_linears(model)
    with torch.no_grad():
        for linear in linears:
            prune_2of4(linear.weight.data)
    spec = EfficiencySpec(prefill_batch=1, prefill_seqlen=2048, decode_batches=(1, 16), decode_prompt=128, decode_tokens=decode_tokens, warmup=1, repeats=repeats, sparse_kernels="auto")
    started = time.perf_counter()
    result = evaluate_efficiency(model, linears, spec, "cuda", NMPattern(2, 4), torch.float16, 4096, progress=False)
    result["layers"] = layers
    result["seconds"] = time.perf_counter() - started
    result["prefill_cuda_graph"] = graph_prefill(model, linears, repeats)
    dense, sparse = result["dense_weights"], result["sparse_kernels"]
    print(f"[e2e] LLaMA-2-7B shapes, {layers} of 32 blocks, fp16, eager: skipped={result['skipped']}", flush=True)
    if sparse:
        print(f"[e2e] prefill 1x2048: dense {dense['prefill']['tokens_per_s']:.0f} tok/s, 2:4 {sparse['prefill']['tokens_per_s']:.0f} tok/s,"
              f" speedup {result['speedup']['prefill']:.2f}x; peak {dense['prefill']['peak_memory_bytes'] / 2**30:.2f} / {sparse['prefill']['peak_memory_bytes'] / 2**30:.2f} GiB")
        for batch in dense["decode"]:
            d, s = dense["decode"][batch], sparse["decode"][batch]
            print(f"[e2e] decode batch {batch}: dense {d['tokens_per_s']:.1f} tok/s, 2:4 {s['tokens_per_s']:.1f} tok/s, speedup "
                  f"{result['speedup']['decode'][batch]:.2f}x; peak {d['peak_memory_bytes'] / 2**30:.2f} / {s['peak_memory_bytes'] / 2**30:.2f} GiB")
        print(f"[e2e] weights in memory: dense {dense['weight_bytes_in_memory'] / 2**30:.2f} GiB, 2:4 {sparse['weight_bytes_in_memory'] / 2**30:.2f} GiB", flush=True)
    del model
    torch.cuda.empty_cache()
    return result


@torch.inference_mode()
def graph_prefill(model, linears, repeats: int) -> dict:
    """Prefill 1 x 2048 replayed as one CUDA graph (no per-call host work), dense-stored and with the 2:4 kernels."""
    from sparsebench.evaluate.efficiency import semi_structured

    ids = torch.randint(0, model.config.vocab_size, (1, 2048), device="cuda")

    def seconds() -> float:
        replay = _graphed(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1), 1)
        return _event_median(replay, 1, max(repeats, 5))

    try:
        dense = seconds()
        with semi_structured(linears):
            sparse = seconds()
    except Exception as error:  # capture refused: reported, not hidden
        print(f"[e2e] prefill as a CUDA graph: {type(error).__name__}: {str(error)[:200]}", flush=True)
        return {"error": f"{type(error).__name__}: {str(error)[:300]}"}
    result = {"dense_tokens_per_s": 2048 / dense, "sparse_tokens_per_s": 2048 / sparse, "speedup": dense / sparse}
    print(f"[e2e] prefill 1x2048 as a CUDA graph: dense {result['dense_tokens_per_s']:.0f} tok/s, 2:4 {result['sparse_tokens_per_s']:.0f} tok/s, speedup {result['speedup']:.2f}x", flush=True)
    return result


@torch.inference_mode()
def perplexity_check(config_path: Path, tokens_path: Path) -> dict:
    from sparsebench.evaluate.efficiency import semi_structured
    from sparsebench.blockwalk import Execution
    from sparsebench.evaluate.perplexity import perplexity
    from sparsebench.models.adapters import adapter_for

    config = json.loads(config_path.read_text())
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_parameters", "tie_word_embeddings")
    model = _llama({k: config[k] for k in keys if config.get(k) is not None}, config["num_hidden_layers"], seed=1)
    linears = _block_linears(model)
    for linear in linears:
        prune_2of4(linear.weight.data)
    segments = torch.load(tokens_path)
    adapter = adapter_for("auto", "llama")
    dense = perplexity(model, adapter, segments, Execution("cuda", False, 4)).ppl
    with semi_structured(linears):
        sparse = perplexity(model, adapter, segments, Execution("cuda", False, 4)).ppl
    relative = abs(sparse - dense) / dense
    result = {"shapes": "SmolLM2-135M", "segments": list(segments.shape), "ppl_dense_stored": dense, "ppl_sparse_kernels": sparse, "relative_difference": relative, "within_fp16_tolerance": relative < 1e-3}
    print(f"[ppl] SmolLM2-135M shapes, random fp16 weights, 2:4, {segments.shape[0]} x {segments.shape[1]} WikiText-2 tokens: dense-stored {dense:.4f}, "
          f"sparse kernels {sparse:.4f}, relative difference {relative:.2e} ({'within' if relative < 1e-3 else 'NOT within'} 1e-3)", flush=True)
    return result


def gpu(args) -> None:
    capability = torch.cuda.get_device_capability()
    figures = {"gpu": torch.cuda.get_device_name(), "capability": list(capability), "torch": torch.__version__}
    print(f"[gpu] {figures['gpu']} (sm{capability[0]}{capability[1]}), torch {torch.__version__}", flush=True)
    if not args.skip_linear:
        figures["per_linear"] = per_linear(args.repeats)
    if args.tokens:
        figures["perplexity"] = perplexity_check(args.config, args.tokens)
    figures["end_to_end"] = end_to_end(args.layers, args.decode_tokens, args.e2e_repeats)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1, default=str))


def export_sizes(args) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from sparsebench.export import ExportSpec, export_model
    from sparsebench.masks import NMPattern

    config = LlamaConfig(**{**LLAMA2_7B, "num_hidden_layers": args.layers})
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float16).eval()
    linears = [f"model.layers.{i}.{name}" for i in range(args.layers) for name in
               ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    with torch.no_grad():
        for name in linears:
            prune_2of4(model.get_submodule(name).weight.data)
    parameters = sum(p.numel() for p in model.parameters())
    block_parameters = sum(p.numel() for p in model.model.layers[0].parameters())
    outer_parameters = parameters - args.layers * block_parameters
    sizes = {}
    with tempfile.TemporaryDirectory() as folder:
        for fmt in ("hf", "compressed"):
            section = export_model(model, None, ExportSpec(fmt, "float16", Path(folder)), fmt, linears, NMPattern(2, 4), parameters)
            per_block = (section["weight_bytes"] - _outer_bytes(section["path"], args.layers)) / args.layers
            sizes[fmt] = {"weight_bytes": section["weight_bytes"], "per_block_bytes": per_block,
                          "llama_2_7b_bytes": section["weight_bytes"] + (32 - args.layers) * per_block}
    dense_7b = (outer_parameters + 32 * block_parameters) * 2
    for fmt, size in sizes.items():
        print(f"[export] {fmt:10s} {args.layers}-block model: {size['weight_bytes'] / 1e9:.3f} GB; per block {size['per_block_bytes'] / 1e6:.1f} MB; "
              f"LLaMA-2-7B (32 blocks): {size['llama_2_7b_bytes'] / 1e9:.2f} GB = {size['llama_2_7b_bytes'] / dense_7b:.3f} of the dense fp16 checkpoint ({dense_7b / 1e9:.2f} GB)")
    print(json.dumps({"dense_fp16_bytes_7b": dense_7b, "sizes": sizes, "layers_written": args.layers}))


def _outer_bytes(folder: str, layers: int) -> int:
    """Bytes of the tensors outside the blocks in a written safetensors file (embeddings, final norm, head) and its header."""
    from safetensors import safe_open

    path = Path(folder) / "model.safetensors"
    inside = 0
    with safe_open(str(path), "pt") as stored:
        for key in stored.keys():
            if ".layers." in key:
                tensor = stored.get_tensor(key)
                inside += tensor.numel() * tensor.element_size()
    return path.stat().st_size - inside  # the header counts as outside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    g = sub.add_parser("gpu")
    g.add_argument("--layers", type=int, default=8, help="blocks of the 7B-shaped model for the end-to-end figures (of 32)")
    g.add_argument("--decode-tokens", type=int, default=64)
    g.add_argument("--e2e-repeats", type=int, default=3)
    g.add_argument("--repeats", type=int, default=7, help="per-linear timing repeats")
    g.add_argument("--config", type=Path, help="SmolLM2-135M's config.json, for the perplexity check")
    g.add_argument("--tokens", type=Path, help="a [segments, seqlen] tensor of WikiText-2 token ids (torch.save) for the perplexity check")
    g.add_argument("--skip-linear", action="store_true", help="leave out the per-linear figures")
    g.add_argument("--out", type=Path)
    e = sub.add_parser("export")
    e.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    gpu(args) if args.mode == "gpu" else export_sizes(args)


if __name__ == "__main__":
    main()
