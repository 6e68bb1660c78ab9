"""What 2:4 and unstructured sparsity buy on a GPU, measured the way a server runs, and the size of a compressed export.

    python benchmarks/bench_efficiency.py gpu --layers 32 --out figures.json   # a CUDA GPU of compute capability >= 8.0
    python benchmarks/bench_efficiency.py ppl --model DIR ... --tokens T.pt    # perplexity through each sparse path
    python benchmarks/bench_efficiency.py export                               # anywhere (needs compressed-tensors)

``gpu`` (only torch and transformers needed; no Hydra), LLaMA-2-7B shapes, fp16, random weights pruned by
magnitude (honest for time and memory, never for quality), sparse paths against the same weights stored dense:

1. per linear: each 7B linear shape at 1, 16, 2,048 and 8,192 tokens, for each path (``cusparselt``:
   cuSPARSELt called directly; ``semi_structured``: torch.sparse's tensor subclass; ``cusparselt_gemv24``: the
   sparse-24-bitmask Triton kernel up to 16 tokens, cuSPARSELt above; ``gemv24``: that kernel at every token
   count; ``bitmask``: the Triton kernel, where present), eager (back-to-back calls) and replayed as a CUDA graph; medians of CUDA-event times
   and the output's relative difference from the dense product;
2. per block: one decoder block (attention, MLP, norms) at 1, 16 and 2,048 tokens (``--block-tokens``), dense and
   through each path (``--block-paths``), eager and as a graph (with ``--modes ... compiled_graph``: also compiled by ``torch.compile``, then graphed), beside
   the sum of its seven linears: the share of a block's time the linears take;
3. whole model (``--layers`` of 32 blocks) through the case stage itself (``evaluate_efficiency``) in the
   modes of ``--modes`` (eager, static_eager, cuda_graph, compiled_graph): prefill 1 x 2,048 and greedy decode at
   batch 1 and 16; weights in memory; then what an eager decode step spends between kernels (static_eager against
   cuda_graph: launch gaps) and what compiling saves (cuda_graph against compiled_graph: the fused small operators).

``ppl`` loads each exported (``export=hf``) pruned model in fp16 and computes the project's perplexity on the given
token segments stored dense and through each sparse path of its pattern (2:4 if every pruned linear is 2:4, else
unstructured).

``export`` writes a LLaMA-2-7B-shaped 2:4 model of ``--layers`` blocks with ``export=compressed``'s code
(``sparsebench.export.export_model``, float16) and with ``export=hf``'s, measures the bytes of each, and scales
the per-block bytes to 32 blocks against the dense fp16 checkpoint (parameters x 2).
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

from sparsebench.blockwalk import Execution
from sparsebench.evaluate.compiled import compiled_forward
from sparsebench.evaluate.cuda_graphs import graphed
from sparsebench.evaluate.efficiency import MODES
from sparsebench.kernels.paths import PATHS, converter, paths_for, swapped
from sparsebench.sparse_layout import is_2of4

LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
LLAMA2_7B_LINEARS = {"q/k/v/o_proj": (4096, 4096), "gate/up_proj": (11008, 4096), "down_proj": (4096, 11008)}
BLOCK_LINEARS = {"q/k/v/o_proj": 4, "gate/up_proj": 2, "down_proj": 1}  # how many of each shape one block holds
TOKENS = (1, 16, 2048, 8192)
BLOCK_TOKENS = (1, 16, 2048)
FEATURES_MAJOR_PATHS = ("cusparselt", "cusparselt_gemv24")  # the paths whose MLP input projections can hand on features-major
FEATURES_MAJOR_LABEL = "mlp_features_major"  # per-block rows: "<path>+mlp_features_major"


def prune_2of4(weight: torch.Tensor) -> torch.Tensor:
    """Zero the two smallest-magnitude weights of every group of four consecutive inputs (in place)."""
    groups = weight.view(weight.shape[0], -1, 4)
    groups.scatter_(-1, groups.abs().topk(2, dim=-1, largest=False).indices, 0)
    return weight


def packed_case(rows: int, cols: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random fp16 2:4 weight ``[rows, cols]`` (seed 0), an input ``[tokens, cols]`` and cuSPARSELt's packed weight (the probes' operands)."""
    torch.manual_seed(0)
    weight = prune_2of4(torch.randn(rows, cols, device="cuda", dtype=torch.float16) * 0.02)
    x = torch.randn(tokens, cols, device="cuda", dtype=torch.float16)
    return weight, x, torch._cslt_compress(weight)


def prune_unstructured(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero the ``ratio`` smallest-magnitude weights of each row (in place)."""
    drop = int(round(ratio * weight.shape[1]))
    weight.scatter_(1, weight.abs().topk(drop, dim=1, largest=False).indices, 0)
    return weight


def prune(weight: torch.Tensor, sparsity: str) -> torch.Tensor:
    return prune_2of4(weight) if sparsity == "2:4" else prune_unstructured(weight, float(sparsity))


def paths_of(sparsity: str, everything: bool = False) -> list[str]:
    """The sparse paths of ``sparsity`` (``"2:4"`` or a ratio) measured by default, or with ``everything`` all of them."""
    return [path.name for path in paths_for("2:4" if sparsity == "2:4" else "unstructured", list(PATHS) if everything else None)]


def _event_median(call, calls: int, repeats: int) -> tuple[float, list[float]]:
    """Median over ``repeats`` of the mean time of ``calls`` back-to-back calls (CUDA events), in seconds, and all of them."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000 / calls)
    return statistics.median(times), times


def _eager_and_graph(fn, calls: int, repeats: int) -> dict:
    """``fn`` timed eagerly (``calls`` back to back) and as one CUDA graph of ``calls`` calls; milliseconds per call."""
    eager, eager_all = _event_median(fn, calls, repeats)
    row = {"eager_ms": eager * 1e3, "eager_all_ms": [t * 1e3 for t in eager_all]}
    try:
        graph = graphed(lambda: [fn() for _ in range(calls)])
        replayed, replayed_all = _event_median(graph.replay, 1, repeats)
        row.update({"graph_ms": replayed / calls * 1e3, "graph_all_ms": [t / calls * 1e3 for t in replayed_all]})
        del graph
    except RuntimeError as error:  # reported, not hidden
        row["graph_error"] = f"{type(error).__name__}: {str(error)[:300]}"
    return row


def _compiled_graph(block, call, calls: int, repeats: int) -> dict:
    """``call(compiled block)`` (``sparsebench.evaluate.compiled``, one shape), ``calls`` calls replayed as one CUDA graph."""
    try:
        with compiled_forward(block, shapes=1) as compiled:
            started = time.perf_counter()
            call(compiled)  # compiled before the capture; the graph replays inside, while the compiled kernels live
            compile_seconds = time.perf_counter() - started
            graph = graphed(lambda: [call(compiled) for _ in range(calls)])
            replayed, replayed_all = _event_median(graph.replay, 1, repeats)
            del graph
    except RuntimeError as error:  # reported, not hidden
        return {"compiled_graph_error": f"{type(error).__name__}: {str(error)[:300]}"}
    return {"compiled_graph_ms": replayed / calls * 1e3, "compiled_graph_all_ms": [t / calls * 1e3 for t in replayed_all], "compile_seconds": compile_seconds}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a.float() - b.float()) / torch.linalg.norm(b.float()))


def _converter_or_reason(name: str):
    try:
        return converter(PATHS[name]), None
    except (ImportError, AttributeError) as error:
        return None, f"{PATHS[name].module} is not available here: {type(error).__name__}: {error}"


@torch.no_grad()  # not inference mode: torch.sparse's subclass is wrapped in an nn.Parameter
def per_linear(sparsities: list[str], repeats: int) -> list[dict]:
    rows = []
    for sparsity in sparsities:
        for name, (out_features, in_features) in LLAMA2_7B_LINEARS.items():
            torch.manual_seed(0)
            dense = torch.nn.Linear(in_features, out_features, bias=False, device="cuda", dtype=torch.float16)
            prune(dense.weight.data.normal_(0, 0.02), sparsity)
            modules = {}
            for path in paths_of(sparsity):
                convert, reason = _converter_or_reason(path)
                if reason:
                    rows.append({"sparsity": sparsity, "linear": name, "path": path, "skipped": reason})
                    print(f"[linear] {sparsity} {name}: {path} skipped: {reason}", flush=True)
                    continue
                modules[path] = convert(dense)
            for tokens in TOKENS:
                x = torch.randn(tokens, in_features, device="cuda", dtype=torch.float16)
                calls = 50 if tokens <= 16 else (10 if tokens <= 2048 else 4)
                base = _eager_and_graph(lambda: dense(x), calls, repeats)
                reference = dense(x)
                for path, module in modules.items():
                    try:
                        timing = _eager_and_graph(lambda: module(x), calls, repeats)
                        row = {"sparsity": sparsity, "linear": name, "shape": [out_features, in_features], "tokens": tokens, "path": path,
                               "relative_difference": _relative(module(x), reference), "dense": base, "sparse": timing,
                               "eager_speedup": base["eager_ms"] / timing["eager_ms"]}
                        if "graph_ms" in timing and "graph_ms" in base:
                            row["graph_speedup"] = base["graph_ms"] / timing["graph_ms"]
                    except RuntimeError as error:
                        row = {"sparsity": sparsity, "linear": name, "tokens": tokens, "path": path, "error": f"{type(error).__name__}: {str(error)[:300]}"}
                    rows.append(row)
                    if "error" in row:
                        print(f"[linear] {sparsity} {name} {tokens} tokens {path}: {row['error']}", flush=True)
                        continue
                    graph = f"{row['graph_speedup']:.2f}x ({base['graph_ms']:.4f} / {timing['graph_ms']:.4f} ms)" if "graph_speedup" in row else timing.get("graph_error")
                    print(f"[linear] {sparsity:5s} {name:13s} {out_features:5d}x{in_features:<5d} {tokens:5d} tokens {path:15s}: eager {row['eager_speedup']:.2f}x"
                          f" ({base['eager_ms']:.4f} / {timing['eager_ms']:.4f} ms), graph {graph}, rel. diff {row['relative_difference']:.1e}", flush=True)
            del modules, dense
            torch.cuda.empty_cache()
    return rows


def _llama(config_kwargs: dict, layers: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{**config_kwargs, "num_hidden_layers": layers})
    torch.manual_seed(seed)
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.eval()
    model.config.use_cache = False
    return model


def _input_groups(model, family: str = "llama") -> list[tuple]:
    """The linears of every block grouped by the input they read (q/k/v, o, gate/up, down): the adapter's ``input_groups``."""
    from sparsebench.models.adapters import adapter_for

    return adapter_for("auto", family).grouped_linears(model)


def _block_linears(model) -> list:
    return [linear for group in _input_groups(model) for linear in group]


def _mlp_inputs(model, family: str = "llama") -> list:
    """The MLP's input projections of every block: the linears whose outputs a cuSPARSELt path may hand on features-major."""
    from sparsebench.models.adapters import adapter_for

    return adapter_for("auto", family).mlp_input_modules(model)


def _reprune(model, linears, sparsity: str, seed: int = 0) -> None:
    """Fresh random weights at the default scale (much faster than HF's init), then the sparsity's magnitude mask."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.02) if parameter.dim() > 1 else parameter.fill_(1.0)
        for linear in linears:
            prune(linear.weight.data, sparsity)


@torch.no_grad()
def per_block(model, sparsity: str, repeats: int, per_linear_rows: list[dict], compiled: bool, paths: list[str], token_counts: list[int],
              layouts: list[str]) -> list[dict]:
    """One decoder block at each of ``token_counts`` (no KV cache), dense and through each of ``paths`` that fits the sparsity,
    beside its seven linears' sum; ``compiled``: also the block compiled and graphed. ``layouts``: ``token_major`` and/or
    ``features_major`` (the MLP's input projections hand their outputs on in cuSPARSELt's layout; cuSPARSELt paths only)."""
    block = model.model.layers[0]
    linears = _block_linears(model)[:7]
    mlp_inputs = [linear for linear in _mlp_inputs(model) if any(linear is mine for mine in linears)]
    rows = []
    for tokens in token_counts:
        hidden = torch.randn(1, tokens, 4096, device="cuda", dtype=torch.float16)
        position_embeddings = model.model.rotary_emb(hidden, torch.arange(tokens, device="cuda").unsqueeze(0))
        calls = 20 if tokens <= 16 else 5

        def forward(run=block):
            return run(hidden, attention_mask=None, position_embeddings=position_embeddings)

        def timing():  # eager first: cuSPARSELt searches its algorithm ids there, before any capture or tracing
            row = _eager_and_graph(forward, calls, repeats)
            return {**row, **_compiled_graph(block, forward, calls, repeats)} if compiled else row

        timings = {"dense_stored": timing()}
        for path in (path for path in paths_of(sparsity, everything=True) if path in paths):
            convert, reason = _converter_or_reason(path)
            if reason:
                continue
            for layout in layouts:
                if layout == "features_major" and path not in FEATURES_MAJOR_PATHS:
                    continue
                with swapped(block, linears, convert, mlp_inputs if layout == "features_major" else ()):
                    timings[path if layout == "token_major" else f"{path}+{FEATURES_MAJOR_LABEL}"] = timing()
        for path, timing in timings.items():
            linear_sum = _linears_sum(per_linear_rows, sparsity, tokens, path.split("+")[0])
            row = {"sparsity": sparsity, "tokens": tokens, "path": path, **timing, "linears_graph_ms_sum": linear_sum}
            if linear_sum is not None and "graph_ms" in timing:
                row["linears_share_of_block"] = linear_sum / timing["graph_ms"]
            rows.append(row)
            share = f", its 7 linears {linear_sum:.4f} ms = {row['linears_share_of_block']:.0%} of the graphed block" if "linears_share_of_block" in row else ""
            compiled_figure = f", compiled+graph {timing['compiled_graph_ms']:.4f} ms (compiled in {timing['compile_seconds']:.0f} s)" if "compiled_graph_ms" in timing else ""
            print(f"[block] {sparsity} {tokens:5d} tokens {path:15s}: eager {timing['eager_ms']:.4f} ms, graph {timing.get('graph_ms', float('nan')):.4f} ms"
                  f"{compiled_figure}{share}", flush=True)
            for failed in ("graph_error", "compiled_graph_error"):
                if failed in timing:
                    print(f"[block] {sparsity} {tokens:5d} tokens {path:15s}: {failed} {timing[failed]}", flush=True)
        dense = timings["dense_stored"]
        for path in timings:
            if path != "dense_stored" and "graph_ms" in timings[path] and "graph_ms" in dense:
                compiled_ratio = (f", compiled+graph {dense['compiled_graph_ms'] / timings[path]['compiled_graph_ms']:.2f}x"
                                  if "compiled_graph_ms" in timings[path] and "compiled_graph_ms" in dense else "")
                print(f"[block] {sparsity} {tokens:5d} tokens {path:15s}: speedup eager {dense['eager_ms'] / timings[path]['eager_ms']:.2f}x, "
                      f"graph {dense['graph_ms'] / timings[path]['graph_ms']:.2f}x{compiled_ratio}", flush=True)
    return rows


def _linears_sum(rows: list[dict], sparsity: str, tokens: int, path: str) -> float | None:
    """Sum of one block's seven linears as graphs (ms), from the per-linear rows; dense_stored from their dense side."""
    total = 0.0
    for name, count in BLOCK_LINEARS.items():
        match = [r for r in rows if r.get("sparsity") == sparsity and r.get("linear") == name and r.get("tokens") == tokens and "graph_speedup" in r
                 and (r["path"] == path or path == "dense_stored")]
        if not match:
            return None
        total += count * (match[0]["dense"]["graph_ms"] if path == "dense_stored" else match[0]["sparse"]["graph_ms"])
    return total


def end_to_end(model, linears, sparsity: str, args) -> dict:
    from sparsebench.evaluate.efficiency import EfficiencySpec, evaluate_efficiency
    from sparsebench.masks import NMPattern

    only = tuple(path for path in paths_of(sparsity, everything=True) if path in args.e2e_paths)
    spec = EfficiencySpec(prefill_batch=1, prefill_seqlen=2048, decode_batches=tuple(args.decode_batches), decode_prompt=128, decode_tokens=args.decode_tokens,
                          warmup=1, repeats=args.e2e_repeats, sparse_kernels="auto", modes=tuple(args.modes), fuse_projections=args.fuse_projections,
                          paths=only, warmup_seconds=args.warmup_seconds)
    started = time.perf_counter()
    pattern = NMPattern(2, 4) if sparsity == "2:4" else None
    features_major = _mlp_inputs(model) if args.features_major == "on" else []
    result = evaluate_efficiency(model, linears, spec, Execution("cuda"), pattern, 4096, features_major=features_major,
                                 groups=_input_groups(model))
    result.update({"layers": args.layers, "sparsity": sparsity, "seconds": time.perf_counter() - started, "features_major": args.features_major})
    _print_end_to_end(result)
    return result


def _print_end_to_end(result: dict) -> None:
    sparsity, runs = result["sparsity"], result["runs"]
    print(f"[e2e] LLaMA-2-7B shapes, {result['layers']} of 32 blocks, fp16, {sparsity}, MLP features-major {result['features_major']}, "
          f"fused products {result.get('fused_projections', 0)}; skipped: {result['skipped']}", flush=True)
    dense = runs["dense_stored"]["modes"]
    for path, by_mode in result["speedup"].items():
        for mode, entry in by_mode.items():
            measured = runs[path]["modes"][mode]
            if "prefill" in entry:
                print(f"[e2e] {sparsity} {path} {mode:14s} prefill 1x2048: dense {dense[mode]['prefill']['tokens_per_s']:.0f} tok/s, sparse "
                      f"{measured['prefill']['tokens_per_s']:.0f} tok/s, speedup {entry['prefill']:.2f}x", flush=True)
            for batch, ratio in entry["decode"].items():
                print(f"[e2e] {sparsity} {path} {mode:14s} decode batch {batch:>2s}: dense {dense[mode]['decode'][batch]['tokens_per_s']:.1f} tok/s, sparse "
                      f"{measured['decode'][batch]['tokens_per_s']:.1f} tok/s, speedup {ratio:.2f}x" if ratio else f"[e2e] {path} {mode} decode {batch}: no rate", flush=True)
    for path, run in runs.items():
        for mode, measured in run["modes"].items():
            _print_clocks(f"{sparsity} {path} {mode} prefill", measured.get("prefill", {}))
            for batch, entry in measured.get("decode", {}).items():
                _print_clocks(f"{sparsity} {path} {mode} decode batch {batch:>2s}", entry)
    for path, run in runs.items():
        modes = run["modes"]
        print(f"[e2e] {sparsity} {path}: weights in memory {run['weight_bytes_in_memory'] / 2**30:.2f} GiB"
              f" ({result['weight_memory_vs_dense'].get(path, 1.0):.3f} of dense-stored)", flush=True)
        if "eager" in modes and "cuda_graph" in modes:
            eager, graph = modes["eager"]["prefill"]["seconds_median"], modes["cuda_graph"]["prefill"]["seconds_median"]
            print(f"[e2e] {sparsity} {path} prefill: {eager * 1e3:.2f} ms eager, {graph * 1e3:.2f} ms as a graph ({(eager - graph) * 1e3:.2f} ms host work and gaps)", flush=True)
            for batch in modes["cuda_graph"]["decode"]:
                eager, graph = modes["eager"]["decode"][batch]["seconds_per_token"], modes["cuda_graph"]["decode"][batch]["seconds_per_token"]
                print(f"[e2e] {sparsity} {path} decode batch {batch:>2s}: {eager * 1e3:.2f} ms a token eager (generate), {graph * 1e3:.2f} ms a step as a graph", flush=True)
        _print_step_saving(f"{sparsity} {path}", modes, ("static_eager", "eager"), ("cuda_graph", "as a graph"), "of launch gaps and host work")
        if "cuda_graph" in modes and "compiled_graph" in modes:
            graph, compiled = modes["cuda_graph"]["prefill"]["seconds_median"], modes["compiled_graph"]["prefill"]["seconds_median"]
            print(f"[e2e] {sparsity} {path} prefill: {graph * 1e3:.2f} ms as a graph, {compiled * 1e3:.2f} ms compiled and graphed "
                  f"(compiling every shape took {modes['compiled_graph'].get('compile_seconds', float('nan')):.0f} s)", flush=True)
        _print_step_saving(f"{sparsity} {path}", modes, ("cuda_graph", "as a graph"), ("compiled_graph", "compiled and graphed"), "saved by fusing")


def _print_clocks(label: str, entry: dict) -> None:
    """The GPU's SM clock (least and largest sample) and clock-event reasons in each timed repeat of ``entry``."""
    during = entry.get("gpu_during_repeats")
    if during is None:
        return
    if "unreadable" in during:
        print(f"[clock] {label}: no samples ({during['unreadable']})", flush=True)
        return
    repeats = []
    for summary in during["per_repeat"]:
        if not summary["samples"]:
            repeats.append("no sample")
            continue
        reasons = [name for name in summary.get("clock_event_reasons", []) if name != "gpu_idle"]
        repeats.append(f"{summary['sm_clock_mhz_min']:.0f}-{summary['sm_clock_mhz_max']:.0f} MHz, {summary['power_w_max']:.0f} W"
                       + (f" ({', '.join(reasons)})" if reasons else ""))
    print(f"[clock] {label}, each repeat: {'; '.join(repeats)}", flush=True)


def _print_step_saving(label: str, modes: dict, slower: tuple[str, str], faster: tuple[str, str], what: str) -> None:
    """Per decode batch, a step's time in mode ``slower`` against ``faster`` (each ``(mode, how it is described)``) and the difference."""
    (slow_mode, slow_words), (fast_mode, fast_words) = slower, faster
    if slow_mode not in modes or fast_mode not in modes:
        return
    for batch in modes[fast_mode]["decode"]:
        slow, fast = modes[slow_mode]["decode"][batch]["seconds_per_token"], modes[fast_mode]["decode"][batch]["seconds_per_token"]
        print(f"[e2e] {label} decode batch {batch:>2s}: step {slow * 1e3:.2f} ms {slow_words}, {fast * 1e3:.2f} ms {fast_words}: "
              f"{(slow - fast) * 1e3:.2f} ms {what} per step ({(slow - fast) / slow:.0%})", flush=True)


def gpu(args) -> None:
    from sparsebench.evaluate.measure import conditions

    capability = torch.cuda.get_device_capability()
    figures = {"gpu": torch.cuda.get_device_name(), "capability": list(capability), "torch": torch.__version__, "conditions_before": conditions("cuda"),
               "arguments": {key: value for key, value in vars(args).items() if key != "out"}}
    print(f"[gpu] {figures['gpu']} (sm{capability[0]}{capability[1]}), torch {torch.__version__}, cuSPARSELt {figures['conditions_before'].get('cusparselt')}; "
          f"state {figures['conditions_before'].get('gpu_state')}", flush=True)

    def save():
        if args.out:
            args.out.write_text(json.dumps(figures, indent=1, default=str))

    figures["per_linear"] = [] if args.skip_linear else per_linear(args.sparsity, args.repeats)
    save()
    if args.skip_block and args.skip_e2e:
        figures["conditions_after"] = conditions("cuda")
        save()
        return
    model = _llama(LLAMA2_7B, args.layers)
    linears = _block_linears(model)
    figures["per_block"], figures["end_to_end"] = [], []
    for sparsity in args.sparsity:
        _reprune(model, linears, sparsity)
        if not args.skip_block:
            figures["per_block"] += per_block(model, sparsity, args.repeats, figures["per_linear"], "compiled_graph" in args.modes, args.block_paths, args.block_tokens,
                                            args.block_layouts)
        save()
        if not args.skip_e2e:
            figures["end_to_end"].append(end_to_end(model, linears, sparsity, args))
            save()
    figures["conditions_after"] = conditions("cuda")
    save()


@torch.no_grad()
def perplexity_through_paths(args) -> None:
    from transformers import AutoModelForCausalLM

    from sparsebench.evaluate.perplexity import perplexity
    from sparsebench.models.adapters import adapter_for

    segments = torch.load(args.tokens)
    report = []
    for folder in args.model:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float16).cuda().eval()
        adapter = adapter_for("auto", model.config.model_type)
        linears = [linear for block in adapter.get_blocks(model) for linear in adapter.get_linears(block).values()]
        sparsity = "2:4" if all(is_2of4(linear.weight) for linear in linears) else "unstructured"
        zeros = sum(int((linear.weight == 0).sum()) for linear in linears) / sum(linear.weight.numel() for linear in linears)
        dense = perplexity(model, adapter, segments, Execution("cuda", batch_size=4)).ppl
        row = {"model": str(folder), "sparsity": sparsity, "zeros": zeros, "segments": list(segments.shape), "ppl_dense_stored": dense, "paths": {}}
        for path in paths_of(sparsity):
            convert, reason = _converter_or_reason(path)
            if reason:
                row["paths"][path] = {"skipped": reason}
                print(f"[ppl] {folder}: {path} skipped: {reason}", flush=True)
                continue
            with swapped(model, linears, convert, _mlp_inputs(model, model.config.model_type)):  # as the case stage swaps them
                sparse = perplexity(model, adapter, segments, Execution("cuda", batch_size=4)).ppl
            relative = abs(sparse - dense) / dense
            row["paths"][path] = {"ppl": sparse, "relative_difference": relative, "within_1e-3": relative < 1e-3}
            print(f"[ppl] {Path(folder).name} ({sparsity}, {zeros:.1%} zeros of the pruned linears), {segments.shape[0]} x {segments.shape[1]} tokens: "
                  f"dense-stored {dense:.4f}, {path} {sparse:.4f}, relative difference {relative:.2e} ({'within' if relative < 1e-3 else 'NOT within'} 1e-3)", flush=True)
        report.append(row)
        del model
        torch.cuda.empty_cache()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


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

    (path,) = Path(folder).glob("*.safetensors")  # model.safetensors (hf) or sparsebench_model.safetensors (compact)
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
    g.add_argument("--layers", type=int, default=32, help="blocks of the 7B-shaped model for the whole-model figures (of 32)")
    g.add_argument("--sparsity", nargs="+", default=["2:4", "0.7"], help="2:4 and/or unstructured ratios such as 0.5 0.6 0.7 0.8")
    g.add_argument("--modes", nargs="+", default=["eager", "static_eager", "cuda_graph"], choices=MODES,
                   help="whole-model modes; compiled_graph also adds the compiled block to the per-block figures")
    g.add_argument("--e2e-paths", nargs="+", default=["cusparselt", "bitmask"], help="sparse paths measured on the whole model (2:4: cusparselt, semi_structured, cusparselt_gemv24, gemv24; unstructured: bitmask, bitmask_kept)")
    g.add_argument("--block-paths", nargs="+", default=list(PATHS), help="sparse paths measured on one block (default: every path of the sparsity, bitmask_kept included)")
    g.add_argument("--block-tokens", type=int, nargs="+", default=list(BLOCK_TOKENS), help="token counts of the per-block figures")
    g.add_argument("--block-layouts", nargs="+", default=["token_major", "features_major"], choices=["token_major", "features_major"],
                   help="per block, cuSPARSELt paths: every linear's output token-major, and/or the MLP's input projections' features-major")
    g.add_argument("--features-major", choices=["on", "off"], default="on",
                   help="whole model: the MLP's input projections hand their outputs on features-major on cuSPARSELt paths (as the case stage does)")
    g.add_argument("--fuse-projections", action="store_true",
                   help="whole model: q/k/v and gate/up each as one product on every side (eval.efficiency.fuse_projections=true)")
    g.add_argument("--decode-tokens", type=int, default=64)
    g.add_argument("--decode-batches", type=int, nargs="*", default=[1, 16], help="whole model: decode batch sizes (none: prefill only)")
    g.add_argument("--e2e-repeats", type=int, default=5)
    g.add_argument("--warmup-seconds", type=float, default=2.0,
                   help="whole model: untimed calls before each timing until this many seconds have passed (clocks settled under the power limit; 0: one call)")
    g.add_argument("--repeats", type=int, default=7, help="per-linear and per-block timing repeats")
    g.add_argument("--skip-linear", action="store_true", help="leave out the per-linear figures")
    g.add_argument("--skip-block", action="store_true", help="leave out the per-block figures")
    g.add_argument("--skip-e2e", action="store_true", help="leave out the whole-model figures")
    g.add_argument("--out", type=Path)
    q = sub.add_parser("ppl")
    q.add_argument("--model", type=Path, nargs="+", required=True, help="folders written by export=hf")
    q.add_argument("--tokens", type=Path, required=True, help="a [segments, seqlen] tensor of token ids (torch.save)")
    q.add_argument("--out", type=Path)
    e = sub.add_parser("export")
    e.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    {"gpu": gpu, "ppl": perplexity_through_paths, "export": export_sizes}[args.mode](args)


if __name__ == "__main__":
    main()
