"""Inference efficiency of a pruned model: prefill and decode throughput, peak memory, sparse kernels.

Measured on the model in memory, with random token ids (speed does not depend on the text), once for each
*path* and each *mode*:

- paths: ``dense_stored`` (the pruned weights stored dense, zeros included: what every tool loads, and the
  baseline) and each sparse path of ``sparsebench.kernels.paths`` that fits the case's pattern (2:4:
  ``cusparselt``, cuSPARSELt called directly, and ``semi_structured``, PyTorch's tensor subclass;
  unstructured: ``bitmask``, a Triton kernel), swapped into the pruned linears;
- modes (``eval.efficiency.modes``): ``eager`` (HF's forward and ``generate``, one kernel launch at a time);
  ``static_eager`` (decode only: our greedy loop on HF's ``StaticCache``, eager); ``cuda_graph`` (prefill as
  one CUDA graph per shape; decode as that static-cache loop with one step captured once and replayed per
  step, the way serving engines decode). See ``sparsebench.evaluate.cuda_graphs``; ``compiled_graph`` (the
  whole model's forward compiled by ``torch.compile``, which fuses the small operators around the linears, then
  the same graphs as ``cuda_graph``: what a server-like stack gets; see ``sparsebench.evaluate.compiled``).

Prefill: one forward of ``prefill_batch`` x ``prefill_seqlen`` tokens (no KV cache kept, last-position
logits only), tokens/s = batch x seqlen / time. Decode, eager: greedy ``generate`` from a
``decode_prompt``-token prompt at each batch size, tokens/s = batch x (new - 1) / (t(new) - t(1)), so the
prompt and first token cancel; static modes: the prompt is prefilled untimed, then ``decode_tokens - 1``
steps are timed, tokens/s = batch x steps / time. Each timing runs ``warmup`` untimed calls, then
``repeats`` timed ones (synchronised on a GPU) and keeps every time with its median, minimum and quartiles
(``sparsebench.evaluate.measure``); the conditions (threads, load, GPU clocks) are recorded before and
after. Peak memory per measurement: ``torch.cuda.max_memory_allocated`` on a GPU, the process's ``VmHWM``
on a CPU. Speedups are a sparse path over ``dense_stored`` in the same mode. What cannot be measured is
listed in ``skipped`` with the reason, never reported as a number.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from sparsebench.blockwalk import Execution
from sparsebench.errors import ConfigError
from sparsebench.evaluate.compiled import causal_prefill_attention, compile_problem, compiled_forward
from sparsebench.evaluate.cuda_graphs import StaticDecoder, graphed
from sparsebench.evaluate.measure import PeakMemory, conditions, timed
from sparsebench.kernels.fused_inputs import fused_inputs
from sparsebench.kernels.paths import PATHS, converter, paths_for, swapped, weight_bytes_in_memory

log = logging.getLogger(__name__)

SPARSE_KERNEL_MODES = ("auto", "off")
MODES = ("eager", "static_eager", "cuda_graph", "compiled_graph")
GRAPH_MODES = ("cuda_graph", "compiled_graph")  # replayed as CUDA graphs
SERVED_MODES = ("compiled_graph", "cuda_graph")  # the headline speedup's mode: the first measured (compiled and graphed, as vLLM serves)
COMPILATIONS_PER_PREFILL, COMPILATIONS_PER_DECODE_BATCH = 1, 1  # the prefill; the one-token step (the prompt runs eagerly)
SPARSE_KERNEL_DTYPES = (torch.float16, torch.bfloat16)
DENSE_PATH = "dense_stored"
HEADLINE_PATHS = ("cusparselt", "bitmask")  # the paths a table's "speedup" columns show (the labelled semi_structured row is not one)


@dataclass(frozen=True)
class EfficiencySpec:
    prefill_batch: int
    prefill_seqlen: int
    decode_batches: tuple[int, ...]
    decode_prompt: int
    decode_tokens: int
    warmup: int
    repeats: int
    sparse_kernels: str
    modes: tuple[str, ...] = ("eager", "cuda_graph", "compiled_graph")
    fuse_projections: bool = False  # linears reading one input as one product, on every side (sparsebench.kernels.fused_inputs)
    paths: tuple[str, ...] | None = None  # the sparse paths measured (sparsebench.kernels.paths); None: the pattern's default ones
    warmup_seconds: float = 0.0  # after the warm-up calls, more until this many seconds have passed (clocks settled)


def validate_efficiency(config: dict) -> EfficiencySpec | None:
    """The efficiency settings of ``eval.efficiency``; None when not enabled."""
    if not config.get("enabled", False):
        return None
    for key in ("prefill_batch", "prefill_seqlen", "decode_prompt", "repeats"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ConfigError(f"eval.efficiency.{key}={config[key]!r}: must be an integer >= 1")
    if not isinstance(config["decode_tokens"], int) or config["decode_tokens"] < 2:
        raise ConfigError(f"eval.efficiency.decode_tokens={config['decode_tokens']!r}: must be an integer >= 2 (decode speed is t(N) - t(1))")
    if not isinstance(config["warmup"], int) or config["warmup"] < 0:
        raise ConfigError(f"eval.efficiency.warmup={config['warmup']!r}: must be an integer >= 0")
    warmup_seconds = config.get("warmup_seconds")
    if warmup_seconds is not None and (isinstance(warmup_seconds, bool) or not isinstance(warmup_seconds, (int, float)) or warmup_seconds < 0):
        raise ConfigError(f"eval.efficiency.warmup_seconds={warmup_seconds!r}: must be a number of seconds >= 0, or null (none)")
    batches = config["decode_batches"]
    if not batches or any(not isinstance(b, int) or b < 1 for b in batches):
        raise ConfigError(f"eval.efficiency.decode_batches={batches!r}: must be a non-empty list of integers >= 1")
    if config["sparse_kernels"] not in SPARSE_KERNEL_MODES:
        raise ConfigError(f"eval.efficiency.sparse_kernels={config['sparse_kernels']!r}: allowed values are {', '.join(SPARSE_KERNEL_MODES)}")
    modes = list(config.get("modes") or EfficiencySpec.modes)
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or len(set(modes)) != len(modes):
        raise ConfigError(f"eval.efficiency.modes={modes!r}: a list of distinct values from {', '.join(MODES)}")
    fuse = config.get("fuse_projections")
    if fuse is not None and not isinstance(fuse, bool):
        raise ConfigError(f"eval.efficiency.fuse_projections={fuse!r}: must be true, false or null (false)")
    paths = config.get("paths")
    if paths is not None:
        paths = list(paths)
        if not paths or any(name not in PATHS for name in paths) or len(set(paths)) != len(paths):
            raise ConfigError(f"eval.efficiency.paths={paths!r}: null (each pattern's default paths) or a list of distinct values from "
                              f"{', '.join(PATHS)}")
    return EfficiencySpec(
        config["prefill_batch"], config["prefill_seqlen"], tuple(batches), config["decode_prompt"], config["decode_tokens"],
        config["warmup"], config["repeats"], config["sparse_kernels"], tuple(modes), bool(fuse), None if paths is None else tuple(paths),
        float(warmup_seconds or 0.0),
    )


# ----------------------------------------------------------------------------- measurements


def _token_ids(vocab_size: int, batch: int, length: int, device: str, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator).to(device)


def prefill(model: nn.Module, batch: int, seqlen: int, device: str, warmup: int, repeats: int, memory: PeakMemory, graph: bool = False,
            compiled=None, warmup_seconds: float = 0.0) -> dict:
    """One forward of ``batch`` x ``seqlen`` tokens, eager or replayed as one CUDA graph of this shape; through ``compiled``
    (the model compiled, ``sparsebench.evaluate.compiled``) if given."""
    ids = _token_ids(model.config.vocab_size, batch, seqlen, device)
    run = model if compiled is None else compiled

    def forward():
        return run(input_ids=ids, use_cache=False, logits_to_keep=1)

    call = forward
    if graph:
        with torch.inference_mode():
            call = graphed(forward).replay
    result = timed(call, device, warmup, repeats, memory, warmup_seconds=warmup_seconds)
    return {"batch": batch, "seqlen": seqlen, "tokens_per_s": batch * seqlen / result["seconds_median"], **result}


def decode(model: nn.Module, batch: int, prompt: int, new_tokens: int, device: str, warmup: int, repeats: int, memory: PeakMemory,
           warmup_seconds: float = 0.0) -> dict:
    """Greedy ``generate`` with HF's default KV cache; the decode rate is from t(new_tokens) - t(1 token)."""
    ids = _token_ids(model.config.vocab_size, batch, prompt, device, seed=1)
    attention = torch.ones_like(ids)

    def generate(count: int):
        return lambda: model.generate(
            input_ids=ids, attention_mask=attention, max_new_tokens=count, min_new_tokens=count, do_sample=False,
            use_cache=True, pad_token_id=0,
        )

    first = timed(generate(1), device, warmup, repeats, memory, warmup_seconds=warmup_seconds)
    full = timed(generate(new_tokens), device, warmup, repeats, memory, warmup_seconds=warmup_seconds)
    decode_seconds = full["seconds_median"] - first["seconds_median"]
    return {
        "batch": batch, "prompt": prompt, "new_tokens": new_tokens,
        "tokens_per_s": batch * (new_tokens - 1) / decode_seconds if decode_seconds > 0 else None,
        "seconds_per_token": decode_seconds / (new_tokens - 1),
        "first_token": first, "generate": full, "peak_memory_bytes": full["peak_memory_bytes"],
        **({} if decode_seconds > 0 else {"note": "t(new tokens) - t(1 token) was not positive: timing noise exceeds the decode time; raise decode_tokens"}),
    }


def static_decode(model: nn.Module, batch: int, prompt: int, new_tokens: int, device: str, warmup: int, repeats: int, memory: PeakMemory, graph: bool,
                  compiled=None, warmup_seconds: float = 0.0) -> dict:
    """``new_tokens - 1`` greedy steps on a static KV cache after an untimed prefill; one graph per step if ``graph``; the
    steps through ``compiled`` (the model compiled) if given."""
    ids = _token_ids(model.config.vocab_size, batch, prompt, device, seed=1)
    steps = new_tokens - 1
    with torch.inference_mode():
        decoder = StaticDecoder(model, ids, steps, graph, step_model=compiled)
    result = timed(decoder.decode, device, warmup, repeats, memory, setup=decoder.prefill, warmup_seconds=warmup_seconds)
    del decoder
    return {"batch": batch, "prompt": prompt, "new_tokens": new_tokens, "steps": steps,
            "tokens_per_s": batch * steps / result["seconds_median"], "seconds_per_token": result["seconds_median"] / steps, **result}


def check_lengths(spec: EfficiencySpec, context: int | None) -> None:
    """The decode length must fit the model's context (the prefill length is capped at it)."""
    decode_total = spec.decode_prompt + spec.decode_tokens
    if context and decode_total > context:
        raise ConfigError(f"eval.efficiency: decode_prompt + decode_tokens = {decode_total} is longer than the model's context ({context})")


def _run_shapes(model: nn.Module, spec: EfficiencySpec, seqlen: int, device: str, compiled=None) -> None:
    """One untimed call of every shape the modes time: the prefill, and per decode batch the steps after an (eager) prompt.

    The token ids are made outside inference mode, as ``prefill`` and ``static_decode`` make them: a compiled forward
    guards on it (an inference tensor would be another compilation).
    """
    ids = _token_ids(model.config.vocab_size, spec.prefill_batch, seqlen, device)
    prompts = [_token_ids(model.config.vocab_size, batch, spec.decode_prompt, device, seed=1) for batch in spec.decode_batches]
    with torch.inference_mode():
        (model if compiled is None else compiled)(input_ids=ids, use_cache=False, logits_to_keep=1)
        for prompt in prompts:
            decoder = StaticDecoder(model, prompt, spec.decode_tokens - 1, graph=False, step_model=compiled)
            decoder.decode()
            del decoder


@contextmanager
def _compiled_mode(model: nn.Module, spec: EfficiencySpec, seqlen: int, device: str):
    """The model compiled for ``compiled_graph`` (yields the compiled callable, the seconds its compilations took and the
    attention it runs, ``sparsebench.evaluate.compiled.causal_prefill_attention``):
    every shape runs once eagerly first (cuSPARSELt searches its algorithm ids, which cannot happen while the compiler
    traces), then once compiled (all compilation done before any capture), at most one compilation per timed shape."""
    with causal_prefill_attention(model) as attention:  # a compiled prefill's causal mask would send SDPA to a slower kernel (compiled.py)
        _run_shapes(model, spec, seqlen, device)
        with compiled_forward(model, shapes=COMPILATIONS_PER_PREFILL + COMPILATIONS_PER_DECODE_BATCH * len(spec.decode_batches)) as compiled:
            started = time.perf_counter()
            _run_shapes(model, spec, seqlen, device, compiled)
            yield compiled, time.perf_counter() - started, attention


def _mode_problem(mode: str, device: str) -> str | None:
    if mode in GRAPH_MODES and not device.startswith("cuda"):
        return "CUDA graphs need a CUDA GPU; this case ran on the CPU"
    return compile_problem(device) if mode == "compiled_graph" else None


def measure_modes(model: nn.Module, spec: EfficiencySpec, device: str, context: int | None, memory: PeakMemory, progress: bool, desc: str) -> tuple[dict, list]:
    """Prefill and decode of the model as it is now, in each mode of ``spec.modes``: ``(modes, skipped)``."""
    seqlen = min(spec.prefill_seqlen, context) if context else spec.prefill_seqlen
    check_lengths(spec, context)
    measured, skipped = {}, []
    for mode in spec.modes:
        problem = _mode_problem(mode, device)
        if problem is not None:
            skipped.append({"what": f"{desc}: mode {mode}", "why": problem})
            continue
        graph = mode in GRAPH_MODES
        result: dict = {"decode": {}}
        try:
            with _compiled_mode(model, spec, seqlen, device) if mode == "compiled_graph" else nullcontext((None, None, None)) as (compiled, compile_seconds, attention):
                if compile_seconds is not None:
                    result["compile_seconds"] = compile_seconds  # every shape's compilation and one untimed run of each
                    result["attention"] = attention or getattr(getattr(model, "config", None), "_attn_implementation", None)
                for batch in tqdm([None, *spec.decode_batches], desc=f"{desc}, {mode}", disable=not progress):
                    if batch is None:
                        if mode != "static_eager":  # prefill has no cache: static_eager is eager there
                            result["prefill"] = prefill(model, spec.prefill_batch, seqlen, device, spec.warmup, spec.repeats, memory, graph, compiled,
                                                        spec.warmup_seconds)
                    elif mode == "eager":
                        result["decode"][str(batch)] = decode(model, batch, spec.decode_prompt, spec.decode_tokens, device, spec.warmup, spec.repeats, memory,
                                                                  spec.warmup_seconds)
                    else:
                        result["decode"][str(batch)] = static_decode(model, batch, spec.decode_prompt, spec.decode_tokens, device, spec.warmup, spec.repeats,
                                                                         memory, graph, compiled, spec.warmup_seconds)
        except RuntimeError as error:  # a capture, a compilation or a kernel that refuses: reported, never a number
            skipped.append({"what": f"{desc}: mode {mode}", "why": f"{type(error).__name__}: {str(error)[:400]}"})
            continue
        finally:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        measured[mode] = result
    return measured, skipped


# ----------------------------------------------------------------------------- sparse paths


def pattern_name(pattern) -> str:
    return "unstructured" if pattern is None else f"{pattern.n}:{pattern.m}"


def sparse_path_problem(device: str, pattern, dtype: torch.dtype, linears: list) -> str | None:
    """Why no sparse path can run for this case (None: the paths of its pattern may)."""
    if not linears:
        return "no pruned linears in this case"
    if not paths_for(pattern_name(pattern)):
        return f"no sparse kernel for {pattern_name(pattern)} sparsity (kernels exist for 2:4 and unstructured)"
    if not device.startswith("cuda"):
        return "the sparse kernels (cuSPARSELt 2:4, the bitmask kernels) need a CUDA GPU; this case ran on the CPU"
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 0):
        return f"the sparse kernels need compute capability 8.0 or more; this GPU has {capability[0]}.{capability[1]}"
    if dtype not in SPARSE_KERNEL_DTYPES:
        return f"the sparse kernels are measured in float16/bfloat16; this case ran in {str(dtype).removeprefix('torch.')}"
    return None


def _path_run(model, linears, features_major, path, spec, device, context, memory, progress) -> tuple[dict | None, list]:
    try:
        convert = converter(path)
    except (ImportError, AttributeError) as error:
        return None, [{"what": f"sparse path {path.name}", "why": f"{path.module} is not available here: {type(error).__name__}: {error}"}]
    try:
        with swapped(model, linears, convert, features_major):
            modes, skipped = measure_modes(model, spec, device, context, memory, progress, path.name)
            held = weight_bytes_in_memory(model)
            handed_on = sum(bool(getattr(module, "features_major_output", False)) for module in model.modules())
            one_token = one_token_kernels(model)
    except (RuntimeError, ValueError, NotImplementedError) as error:  # a weight or a backend the kernel refuses
        return None, [{"what": f"sparse path {path.name}", "why": f"{type(error).__name__}: {str(error)[:400]}"}]
    run = {"path": path.description, "weight_bytes_in_memory": held, "modes": modes}
    if handed_on:
        run["features_major_outputs"] = handed_on  # linears handing their output on in [out, tokens] layout (see swapped)
    if one_token:
        run["one_token_kernels"] = one_token
    return run, skipped


def one_token_kernels(model: nn.Module) -> dict[str, int]:
    """How many of the model's swapped-in linears run each one-token kernel (``BitmaskLinear.one_token_kernel``:
    ``walk`` or ``chunks`` by the weight's density by default); empty where no module says."""
    counts: dict[str, int] = {}
    for module in model.modules():
        kernel = getattr(module, "one_token_kernel", None)
        if kernel is not None:
            counts[kernel] = counts.get(kernel, 0) + 1
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------------------- the evaluation


def evaluate_efficiency(
    model: nn.Module, linears: list[nn.Linear], spec: EfficiencySpec, execution: Execution, pattern, context: int | None,
    features_major: list[nn.Linear] = (), groups: list[tuple[nn.Linear, ...]] = (),
) -> dict:
    """The result document's ``metrics.efficiency`` section for a model already on ``execution.device``, in the
    dtype of its parameters.

    The sparse paths measured are the pattern's default ones, or those of ``spec.paths`` (a named path of another
    pattern is listed in ``skipped``). ``features_major``: those of ``linears`` whose outputs a path may hand on in its product's own layout (the MLP's input
    projections; ``sparsebench.kernels.paths.swapped``). ``groups``: the linears that read one input, block by block (the
    adapter's ``input_groups``), run as one product each when ``spec.fuse_projections`` (``sparsebench.kernels.fused_inputs``).
    """
    with fused_inputs(model, list(groups) if spec.fuse_projections else []) as computing:
        measured = _unique([computing.get(id(linear), linear) for linear in linears])
        handed_on = _unique([computing.get(id(linear), linear) for linear in features_major])
        result = _evaluate(model, measured, spec, execution, pattern, context, handed_on)
    result["fused_projections"] = sum(len(group) > 1 for group in groups) if spec.fuse_projections else 0
    return result


def _unique(modules: list[nn.Module]) -> list[nn.Module]:
    return list({id(module): module for module in modules}.values())


def _evaluate(model, linears, spec, execution, pattern, context, features_major) -> dict:
    device, progress = execution.device, execution.progress
    dtype = next(model.parameters()).dtype
    memory = PeakMemory(device)
    skipped = []
    if memory.reason_unavailable is not None:
        skipped.append({"what": "peak memory per measurement", "why": memory.reason_unavailable})
    result = {
        "device": device,
        "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
        "dtype": str(dtype).removeprefix("torch."),
        "pattern": pattern_name(pattern),  # whose sparse paths are measured
        "cpu_threads": torch.get_num_threads(),
        "warmup": spec.warmup,
        "warmup_seconds": spec.warmup_seconds,
        "repeats": spec.repeats,
        "modes": list(spec.modes),
        "memory_source": memory.source,
        "conditions": {"before": conditions(device)},
        "runs": {},
    }
    log.info("efficiency: weights stored dense")
    modes, mode_skips = measure_modes(model, spec, device, context, memory, progress, DENSE_PATH)
    result["runs"][DENSE_PATH] = {"path": "the pruned weights stored dense (nn.Linear, cuBLAS on a GPU)", "weight_bytes_in_memory": weight_bytes_in_memory(model), "modes": modes}
    skipped += mode_skips
    paths = paths_for(pattern_name(pattern), spec.paths)
    for name in spec.paths or ():
        if name not in {path.name for path in paths}:
            skipped.append({"what": f"sparse path {name}", "why": f"a path for {', '.join(PATHS[name].patterns)} sparsity; this case is "
                                                                  f"{pattern_name(pattern)}"})
    problem = "eval.efficiency.sparse_kernels=off" if spec.sparse_kernels == "off" else sparse_path_problem(device, pattern, dtype, linears)
    if problem is not None:
        skipped.append({"what": "sparse kernels", "why": problem})
    else:
        for path in paths:
            log.info("efficiency: sparse path %s in %d linears", path.name, len(linears))
            run, path_skips = _path_run(model, linears, tuple(features_major), path, spec, device, context, memory, progress)
            skipped += path_skips
            if run is not None:
                result["runs"][path.name] = run
    result["speedup"] = speedups(result["runs"])
    result["weight_memory_vs_dense"] = {
        name: run["weight_bytes_in_memory"] / result["runs"][DENSE_PATH]["weight_bytes_in_memory"] for name, run in result["runs"].items() if name != DENSE_PATH
    }
    result["conditions"]["after"] = conditions(device)
    result["skipped"] = skipped
    return result


def speedups(runs: dict) -> dict:
    """Each sparse path's throughput over ``dense_stored``'s, mode by mode, for prefill and each decode batch."""

    def ratio(a, b):
        return None if a is None or b is None else a / b

    dense = runs[DENSE_PATH]["modes"]
    table: dict = {}
    for name, run in runs.items():
        if name == DENSE_PATH:
            continue
        for mode, measured in run["modes"].items():
            if mode not in dense:
                continue
            entry = {"decode": {batch: ratio(measured["decode"][batch]["tokens_per_s"], dense[mode]["decode"][batch]["tokens_per_s"]) for batch in measured["decode"]}}
            if "prefill" in measured:
                entry["prefill"] = ratio(measured["prefill"]["tokens_per_s"], dense[mode]["prefill"]["tokens_per_s"])
            table.setdefault(name, {})[mode] = entry
    return table


# ----------------------------------------------------------------------------- flat fields (tables, W&B)


def efficiency_fields(document: dict) -> dict:
    """The export and efficiency figures of a result document as flat scalars.

    The W&B mirror logs exactly these (as ``efficiency/<field>``) and ``sparsebench-tables --also
    efficiency`` reads exactly these, from a local document or from a W&B run. Per path and mode:
    ``<path>_<mode>_prefill_tokens_per_s``, ``<path>_<mode>_decode_b<B>_tokens_per_s``,
    ``speedup_<path>_<mode>_prefill``, ``speedup_<path>_<mode>_decode_b<B>``, ``<path>_weight_bytes_in_memory``,
    ``<path>_peak_memory_bytes``; and the earlier names (``prefill_tokens_per_s``, ``speedup_prefill``, ...)
    for dense-stored eager and for the headline path (cuSPARSELt or bitmask) in its fastest-to-serve mode
    (the first of ``SERVED_MODES`` measured, else the first mode), so tables of earlier documents keep their columns.
    """
    fields: dict = {}
    export = document.get("export") or {}
    if export:
        fields.update(
            {
                "export_format": export.get("format"), "export_path": export.get("path"), "export_dtype": export.get("dtype"),
                "export_weight_bytes": export.get("weight_bytes"), "export_bytes_on_disk": export.get("bytes_on_disk"),
                "export_dense_weight_bytes": export.get("dense_weight_bytes"), "export_vs_dense": export.get("weight_bytes_vs_dense"),
            }
        )
    efficiency = (document.get("metrics") or {}).get("efficiency") or {}
    if "runs" in efficiency:
        fields.update(_run_fields(efficiency))
    else:
        fields.update(_legacy_fields(efficiency))
    if efficiency.get("skipped"):
        fields["skipped"] = "; ".join(f"{skip['what']}: {skip['why']}" for skip in efficiency["skipped"])
    return {key: value for key, value in fields.items() if value is not None}


def rate_range(measured: dict) -> tuple[float, float] | None:
    """The tokens/s that the interquartile range of the repeat times gives, ``(low, high)``; None without spread.

    A prefill or static-cache decode did ``tokens_per_s x seconds_median`` tokens in each repeat; an eager decode's
    rate is from ``t(N) - t(1)``, so its range pairs the slow quartile of one with the fast quartile of the other.
    """
    rate = measured.get("tokens_per_s")
    if rate is None:
        return None
    if "generate" in measured:  # eager decode: batch x (N - 1) / (t(N) - t(1))
        full, first = measured["generate"], measured["first_token"]
        if "seconds_q1" not in full:
            return None
        work = rate * (full["seconds_median"] - first["seconds_median"])
        slowest, fastest = full["seconds_q3"] - first["seconds_q1"], full["seconds_q1"] - first["seconds_q3"]
        return (work / slowest if slowest > 0 else 0.0), (work / fastest if fastest > 0 else math.inf)
    if "seconds_q1" not in measured:
        return None
    work = rate * measured["seconds_median"]
    return work / measured["seconds_q3"], work / measured["seconds_q1"]


def _with_range(key: str, measured: dict) -> dict:
    fields = {key: measured["tokens_per_s"]}
    bounds = rate_range(measured)
    if bounds is not None:
        fields[f"{key}_low"], fields[f"{key}_high"] = bounds
    return fields


def _throughputs(prefix: str, measured: dict) -> dict:
    fields = _with_range(f"{prefix}prefill_tokens_per_s", measured["prefill"]) if "prefill" in measured else {}
    for batch, result in measured["decode"].items():
        fields.update(_with_range(f"{prefix}decode_b{batch}_tokens_per_s", result))
    return fields


def _speedup_ranges(prefix: str, sparse: dict, dense: dict) -> dict:
    """``<speedup>_low`` / ``_high``: the speedup that the interquartile ranges of both sides allow."""
    fields = {}
    pairs = ([("prefill", sparse["prefill"], dense["prefill"])] if "prefill" in sparse and "prefill" in dense else [])
    pairs += [(f"decode_b{batch}", result, dense["decode"][batch]) for batch, result in sparse["decode"].items() if batch in dense["decode"]]
    for name, sparse_measured, dense_measured in pairs:
        sparse_range, dense_range = rate_range(sparse_measured), rate_range(dense_measured)
        if sparse_range is None or dense_range is None or not dense_range[0] > 0:
            continue
        fields[f"{prefix}{name}_low"] = sparse_range[0] / dense_range[1]
        fields[f"{prefix}{name}_high"] = sparse_range[1] / dense_range[0]
    return fields


def _peak(measured_modes: dict) -> int | None:
    peaks = [m["prefill"]["peak_memory_bytes"] for m in measured_modes.values() if "prefill" in m]
    peaks += [d["peak_memory_bytes"] for m in measured_modes.values() for d in m["decode"].values()]
    peaks = [peak for peak in peaks if peak is not None]
    return max(peaks) if peaks else None


def _speedup_fields(prefix: str, entry: dict) -> dict:
    fields = {f"{prefix}prefill": entry["prefill"]} if "prefill" in entry else {}
    fields.update({f"{prefix}decode_b{batch}": value for batch, value in entry["decode"].items()})
    return fields


def _run_fields(efficiency: dict) -> dict:
    fields: dict = {}
    for name, run in efficiency["runs"].items():
        for mode, measured in run["modes"].items():
            fields.update(_throughputs(f"{name}_{mode}_", measured))
        fields[f"{name}_weight_bytes_in_memory"] = run["weight_bytes_in_memory"]
        fields[f"{name}_peak_memory_bytes"] = _peak(run["modes"])
    dense_modes = efficiency["runs"][DENSE_PATH]["modes"]
    for name, by_mode in efficiency.get("speedup", {}).items():
        for mode, entry in by_mode.items():
            fields.update(_speedup_fields(f"speedup_{name}_{mode}_", entry))
            fields.update(_speedup_ranges(f"speedup_{name}_{mode}_", efficiency["runs"][name]["modes"][mode], dense_modes[mode]))
    for name, share in efficiency.get("weight_memory_vs_dense", {}).items():
        fields[f"weight_memory_vs_dense_{name}"] = share
    dense = efficiency["runs"][DENSE_PATH]
    if "eager" in dense["modes"]:
        fields.update(_throughputs("", dense["modes"]["eager"]))
    fields["weight_bytes_in_memory"], fields["peak_memory_bytes"] = dense["weight_bytes_in_memory"], _peak(dense["modes"])
    headline = next((name for name in HEADLINE_PATHS if name in efficiency.get("speedup", {})), None)
    if headline is not None:
        by_mode = efficiency["speedup"][headline]
        mode = next((served for served in SERVED_MODES if served in by_mode), next(iter(by_mode)))
        fields.update(_throughputs("sparse_", efficiency["runs"][headline]["modes"][mode]))
        fields.update(_speedup_fields("speedup_", by_mode[mode]))
        fields.update(_speedup_ranges("speedup_", efficiency["runs"][headline]["modes"][mode], dense_modes[mode]))
        fields["sparse_weight_bytes_in_memory"] = efficiency["runs"][headline]["weight_bytes_in_memory"]
        fields["sparse_peak_memory_bytes"] = _peak(efficiency["runs"][headline]["modes"])
        fields["sparse_path"], fields["sparse_mode"] = headline, mode
    return fields


def _legacy_fields(efficiency: dict) -> dict:
    """Documents written before the paths and modes: ``dense_weights``, ``sparse_kernels`` and ``speedup`` (eager only)."""
    fields: dict = {}
    for prefix, measured in (("", efficiency.get("dense_weights")), ("sparse_", efficiency.get("sparse_kernels"))):
        if not measured:
            continue
        fields.update(_throughputs(prefix, measured))
        fields[f"{prefix}peak_memory_bytes"] = _peak({"eager": measured})
        fields[f"{prefix}weight_bytes_in_memory"] = measured["weight_bytes_in_memory"]
    if efficiency.get("speedup"):
        fields.update(_speedup_fields("speedup_", efficiency["speedup"]))
    return fields

