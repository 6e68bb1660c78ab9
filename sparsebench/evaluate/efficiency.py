"""Inference efficiency of a pruned model: prefill and decode throughput, peak memory, sparse kernels.

Measured on the model in memory, with random token ids (speed does not depend on the text):

- prefill: one forward of ``prefill_batch`` x ``prefill_seqlen`` tokens (no KV cache kept, the
  logits of the last position only, as a server's prefill), tokens/s = batch x seqlen / time;
- decode: greedy generation with the KV cache from a ``decode_prompt``-token prompt at each
  batch size of ``decode_batches``; decode tokens/s = batch x (new - 1) / (t(new tokens) - t(1
  token)), so the prompt's prefill and the first token are taken out by the difference;
- peak memory of each measurement: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the
  process's peak resident set (``VmHWM``), reset before each measurement through
  ``/proc/self/clear_refs`` (recorded as skipped where that cannot be done).

Each measurement runs ``warmup`` untimed calls, then ``repeats`` timed ones (synchronised on a
GPU); the median is reported with every time. This is done once with the weights stored dense
(the baseline the papers use: a pruned model stored dense runs at the dense model's speed), and,
for 2:4 models on a CUDA GPU of compute capability 8.0 or more in float16/bfloat16, again with
PyTorch's semi-structured sparse kernels (``torch.sparse.to_sparse_semi_structured``) swapped into
the pruned linears; speedups are sparse over dense-stored. What cannot be measured is listed in
``skipped`` with the reason, never reported as a number.
"""

from __future__ import annotations

import logging
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from sparsebench.errors import ConfigError

log = logging.getLogger(__name__)

SPARSE_KERNEL_MODES = ("auto", "off")
SPARSE_KERNEL_DTYPES = (torch.float16, torch.bfloat16)


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
    batches = config["decode_batches"]
    if not batches or any(not isinstance(b, int) or b < 1 for b in batches):
        raise ConfigError(f"eval.efficiency.decode_batches={batches!r}: must be a non-empty list of integers >= 1")
    if config["sparse_kernels"] not in SPARSE_KERNEL_MODES:
        raise ConfigError(f"eval.efficiency.sparse_kernels={config['sparse_kernels']!r}: allowed values are {', '.join(SPARSE_KERNEL_MODES)}")
    return EfficiencySpec(
        config["prefill_batch"], config["prefill_seqlen"], tuple(batches), config["decode_prompt"], config["decode_tokens"],
        config["warmup"], config["repeats"], config["sparse_kernels"],
    )


# ----------------------------------------------------------------------------- memory and timing


class PeakMemory:
    """Peak memory of one measurement: CUDA's allocator peak, or the process's VmHWM on a CPU."""

    def __init__(self, device: str):
        self.device = device
        self.source = "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "VmHWM (peak resident set of the process)"
        self.reason_unavailable = None if device.startswith("cuda") else _cpu_peak_reset_problem()

    def reset(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.reason_unavailable is None:
            Path("/proc/self/clear_refs").write_text("5")

    def read(self) -> int | None:
        if self.device.startswith("cuda"):
            return torch.cuda.max_memory_allocated(self.device)
        if self.reason_unavailable is not None:
            return None
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None


def _cpu_peak_reset_problem() -> str | None:
    """Why the CPU peak cannot be measured per phase here (None if it can)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        if not any(line.startswith("VmHWM:") for line in Path("/proc/self/status").read_text().splitlines()):
            return "/proc/self/status has no VmHWM"
    except OSError as error:
        return f"the peak resident set cannot be reset (/proc/self/clear_refs: {error}); only the process's lifetime peak exists"
    return None


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(call, device: str, warmup: int, repeats: int, memory: PeakMemory) -> dict:
    """Run ``call`` ``warmup`` times untimed, then ``repeats`` times timed: median seconds, all times, peak memory."""
    with torch.inference_mode():
        for _ in range(warmup):
            call()
        _synchronize(device)
        memory.reset()
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            _synchronize(device)
            seconds.append(time.perf_counter() - started)
    return {"seconds_median": statistics.median(seconds), "seconds": seconds, "peak_memory_bytes": memory.read()}


# ----------------------------------------------------------------------------- measurements


def _token_ids(vocab_size: int, batch: int, length: int, device: str, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator).to(device)


def prefill(model: nn.Module, batch: int, seqlen: int, device: str, warmup: int, repeats: int, memory: PeakMemory) -> dict:
    ids = _token_ids(model.config.vocab_size, batch, seqlen, device)
    result = timed(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1), device, warmup, repeats, memory)
    return {"batch": batch, "seqlen": seqlen, "tokens_per_s": batch * seqlen / result["seconds_median"], **result}


def decode(model: nn.Module, batch: int, prompt: int, new_tokens: int, device: str, warmup: int, repeats: int, memory: PeakMemory) -> dict:
    """Greedy generation with the KV cache; the decode rate is from t(new_tokens) - t(1 token)."""
    ids = _token_ids(model.config.vocab_size, batch, prompt, device, seed=1)
    attention = torch.ones_like(ids)

    def generate(count: int):
        return lambda: model.generate(
            input_ids=ids, attention_mask=attention, max_new_tokens=count, min_new_tokens=count, do_sample=False,
            use_cache=True, pad_token_id=0,
        )

    first = timed(generate(1), device, warmup, repeats, memory)
    full = timed(generate(new_tokens), device, warmup, repeats, memory)
    decode_seconds = full["seconds_median"] - first["seconds_median"]
    return {
        "batch": batch, "prompt": prompt, "new_tokens": new_tokens,
        "tokens_per_s": batch * (new_tokens - 1) / decode_seconds if decode_seconds > 0 else None,
        "seconds_per_token": decode_seconds / (new_tokens - 1),
        "first_token": first, "generate": full, "peak_memory_bytes": full["peak_memory_bytes"],
        **({} if decode_seconds > 0 else {"note": "t(new tokens) - t(1 token) was not positive: timing noise exceeds the decode time; raise decode_tokens"}),
    }


def check_lengths(spec: EfficiencySpec, context: int | None) -> None:
    """The decode length must fit the model's context (the prefill length is capped at it)."""
    decode_total = spec.decode_prompt + spec.decode_tokens
    if context and decode_total > context:
        raise ConfigError(f"eval.efficiency: decode_prompt + decode_tokens = {decode_total} is longer than the model's context ({context})")


def measure_all(model: nn.Module, spec: EfficiencySpec, device: str, context: int | None, memory: PeakMemory, progress: bool = True, desc: str = "efficiency") -> dict:
    seqlen = min(spec.prefill_seqlen, context) if context else spec.prefill_seqlen
    check_lengths(spec, context)
    steps = tqdm([None, *spec.decode_batches], desc=desc, disable=not progress)
    result: dict = {"decode": {}}
    for batch in steps:
        if batch is None:
            result["prefill"] = prefill(model, spec.prefill_batch, seqlen, device, spec.warmup, spec.repeats, memory)
        else:
            result["decode"][str(batch)] = decode(model, batch, spec.decode_prompt, spec.decode_tokens, device, spec.warmup, spec.repeats, memory)
    result["weight_bytes_in_memory"] = tensor_bytes(model)
    return result


# ----------------------------------------------------------------------------- sparse kernels


def sparse_kernel_problem(device: str, pattern, dtype: torch.dtype) -> str | None:
    """Why the semi-structured kernels cannot run for this case (None: they can)."""
    if pattern is None or (pattern.n, pattern.m) != (2, 4):
        return f"semi-structured sparse kernels need 2:4 sparsity (this case: {pattern or 'unstructured or dense'}); no sparse kernel for it in PyTorch"
    if not device.startswith("cuda"):
        return "semi-structured sparse kernels (torch.sparse.to_sparse_semi_structured) need a CUDA GPU of compute capability 8.0 or more; this case ran on the CPU"
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 0):
        return f"semi-structured sparse kernels need compute capability 8.0 or more; this GPU has {capability[0]}.{capability[1]}"
    if dtype not in SPARSE_KERNEL_DTYPES:
        return f"semi-structured sparse kernels are measured in float16/bfloat16; this case ran in {str(dtype).removeprefix('torch.')}"
    return None


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters as stored (a semi-structured weight: its packed values and metadata)."""
    total = 0
    for parameter in model.parameters():
        data = parameter.data
        parts = [getattr(data, name, None) for name in ("packed", "meta", "packed_t", "meta_t")] if data.is_sparse or type(data) is not torch.Tensor else []
        parts = [part for part in parts if isinstance(part, torch.Tensor)]
        total += sum(p.numel() * p.element_size() for p in parts) if parts else data.numel() * data.element_size()
    return total


@contextmanager
def semi_structured(linears: list[nn.Linear]):
    """Swap each linear's weight for ``to_sparse_semi_structured(weight)``; the dense weights wait on the CPU."""
    from torch.sparse import to_sparse_semi_structured

    originals = []
    try:
        for linear in linears:
            dense = linear.weight.data
            linear.weight = nn.Parameter(to_sparse_semi_structured(dense), requires_grad=False)
            originals.append((linear, dense.to("cpu")))
            del dense
        yield
    finally:
        for linear, dense in originals:
            linear.weight = nn.Parameter(dense.to(linear.weight.device), requires_grad=False)


# ----------------------------------------------------------------------------- the evaluation


def evaluate_efficiency(model: nn.Module, linears: list[nn.Linear], spec: EfficiencySpec, device: str, pattern, dtype: torch.dtype, context: int | None, progress: bool = True) -> dict:
    """The result document's ``metrics.efficiency`` section for a model already on ``device``."""
    memory = PeakMemory(device)
    skipped = []
    if memory.reason_unavailable is not None:
        skipped.append({"what": "peak memory per measurement", "why": memory.reason_unavailable})
    log.info("efficiency: weights stored dense")
    result = {
        "device": device,
        "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
        "dtype": str(dtype).removeprefix("torch."),
        "cpu_threads": torch.get_num_threads(),
        "warmup": spec.warmup,
        "repeats": spec.repeats,
        "memory_source": memory.source,
        "dense_weights": measure_all(model, spec, device, context, memory, progress, "efficiency, dense-stored"),
        "sparse_kernels": None,
        "speedup": None,
    }
    problem = "eval.efficiency.sparse_kernels=off" if spec.sparse_kernels == "off" else sparse_kernel_problem(device, pattern, dtype)
    if problem is None:
        log.info("efficiency: semi-structured sparse kernels in %d linears", len(linears))
        try:
            with semi_structured(linears):
                result["sparse_kernels"] = {"path": "torch.sparse.to_sparse_semi_structured, eager F.linear", **measure_all(model, spec, device, context, memory, progress, "efficiency, sparse kernels")}
        except (RuntimeError, ValueError, NotImplementedError) as error:  # shapes or a backend PyTorch refuses
            problem = f"torch.sparse.to_sparse_semi_structured failed: {type(error).__name__}: {error}"
    if problem is not None:
        skipped.append({"what": "sparse kernels", "why": problem})
    else:
        result["speedup"] = speedups(result["dense_weights"], result["sparse_kernels"])
    result["skipped"] = skipped
    return result


def speedups(dense: dict, sparse: dict) -> dict:
    """Sparse-kernel throughput over dense-stored throughput, for prefill and each decode batch."""

    def ratio(a, b):
        return None if a is None or b is None else a / b

    return {
        "prefill": ratio(sparse["prefill"]["tokens_per_s"], dense["prefill"]["tokens_per_s"]),
        "decode": {batch: ratio(sparse["decode"][batch]["tokens_per_s"], dense["decode"][batch]["tokens_per_s"]) for batch in dense["decode"]},
    }


# ----------------------------------------------------------------------------- flat fields (tables, W&B)


def efficiency_fields(document: dict) -> dict:
    """The export and efficiency figures of a result document as flat scalars.

    The W&B mirror logs exactly these (as ``efficiency/<field>``) and ``sparsebench-tables --also
    efficiency`` reads exactly these, from a local document or from a W&B run.
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
    for prefix, measured in (("", efficiency.get("dense_weights")), ("sparse_", efficiency.get("sparse_kernels"))):
        if not measured:
            continue
        fields[f"{prefix}prefill_tokens_per_s"] = measured["prefill"]["tokens_per_s"]
        peaks = [measured["prefill"]["peak_memory_bytes"]]
        for batch, result in measured["decode"].items():
            fields[f"{prefix}decode_b{batch}_tokens_per_s"] = result["tokens_per_s"]
            peaks.append(result["peak_memory_bytes"])
        peaks = [peak for peak in peaks if peak is not None]
        if peaks:
            fields[f"{prefix}peak_memory_bytes"] = max(peaks)
        fields[f"{prefix}weight_bytes_in_memory"] = measured["weight_bytes_in_memory"]
    speedup = efficiency.get("speedup") or {}
    if speedup:
        fields["speedup_prefill"] = speedup["prefill"]
        fields.update({f"speedup_decode_b{batch}": value for batch, value in speedup["decode"].items()})
    if efficiency.get("skipped"):
        fields["skipped"] = "; ".join(f"{skip['what']}: {skip['why']}" for skip in efficiency["skipped"])
    return {key: value for key, value in fields.items() if value is not None}
