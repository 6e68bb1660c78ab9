"""How the efficiency stage times a call: repeats with their spread, peak memory, and the machine's conditions.

Every timing keeps all its repeat times with their median, minimum, quartiles and maximum, so a reader can
see whether two figures differ by more than their spread. The conditions (threads, load average, GPU name and
clocks) are recorded beside them because a shared CPU or a throttled GPU changes every number.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

from sparsebench.evaluate.gpu_sampling import GpuSampler

GPU_QUERY = "name,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.draw,temperature.gpu,utilization.gpu"


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


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def spread(seconds: list[float]) -> dict:
    """All repeat times and their median, min, q1, q3 and max (quartiles by the inclusive method)."""
    q1, _, q3 = statistics.quantiles(seconds, n=4, method="inclusive") if len(seconds) > 1 else (seconds[0],) * 3
    return {
        "seconds": list(seconds), "seconds_median": statistics.median(seconds), "seconds_min": min(seconds),
        "seconds_q1": q1, "seconds_q3": q3, "seconds_max": max(seconds),
    }


def timed(call, device: str, warmup: int, repeats: int, memory: PeakMemory, setup=None, warmup_seconds: float = 0.0) -> dict:
    """``call`` run ``warmup`` times untimed, then again untimed until ``warmup_seconds`` have passed since the first
    (a GPU's clocks settle under its power limit), then ``repeats`` times timed (``setup`` before each, untimed). On a CUDA
    device the GPU's clock, power and clock-event reasons during each timed repeat come with the times
    (``gpu_during_repeats``, ``sparsebench.evaluate.gpu_sampling``)."""
    sampler = GpuSampler(device) if device.startswith("cuda") else None
    with torch.inference_mode():
        if sampler is not None:
            sampler.start()
        try:
            warming_since, warmed = time.perf_counter(), 0
            while warmed < warmup or time.perf_counter() - warming_since < warmup_seconds:
                if setup is not None:
                    setup()
                call()
                synchronize(device)
                warmed += 1
            synchronize(device)
            memory.reset()
            seconds = []
            for _ in range(repeats):
                if setup is not None:
                    setup()
                    synchronize(device)
                wall, started = time.time(), time.perf_counter()
                call()
                synchronize(device)
                seconds.append(time.perf_counter() - started)
                if sampler is not None:
                    sampler.mark(wall, time.time())
        finally:
            during = sampler.stop() if sampler is not None else None
    return {**spread(seconds), "warmup_calls": warmed, "peak_memory_bytes": memory.read(),
            **({"gpu_during_repeats": during} if during is not None else {})}


def conditions(device: str) -> dict:
    """What the numbers depend on besides the model: threads, load, versions, the GPU and its clocks now."""
    import transformers

    found = {
        "torch": torch.__version__, "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "loadavg_1_5_15": list(os.getloadavg()), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if device.startswith("cuda"):
        found["gpu"] = torch.cuda.get_device_name(device)
        found["cuda"] = torch.version.cuda
        found["cusparselt"] = torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None
        found["gpu_state"] = _gpu_state()
    return found


def _gpu_state() -> dict:
    """The GPU's clocks, power and temperature from ``nvidia-smi --query-gpu`` (read only), or why they are unreadable."""
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={GPU_QUERY}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"unreadable": f"nvidia-smi: {type(error).__name__}: {error}"}
    if done.returncode != 0 or not done.stdout.strip():
        return {"unreadable": f"nvidia-smi exited {done.returncode}: {done.stderr.strip()[:200]}"}
    return dict(zip(GPU_QUERY.split(","), (value.strip() for value in done.stdout.strip().splitlines()[0].split(","))))
