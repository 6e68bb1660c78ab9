"""The GPU's SM clock, power and clock-event reasons while a timing runs, sampled by ``nvidia-smi`` in a process of its own.

Why: the same CUDA graph replayed three times can take 36, 38 and 38.5 ms (docs/efficiency.md, "Every whole-model
target on one H100 lease"); a clock lowered under the power limit would explain such a drift, and the clocks read
before and after a run (``measure.conditions``) cannot show it. ``GpuSampler`` starts ``nvidia-smi --query-gpu ...
-lms N`` writing to a temporary file, waits for its first sample, and after the timing assigns each sample to the
repeat whose wall-clock span holds its timestamp. No thread runs in this process, so the timed host work is not
slowed; the sampler takes a CPU core of its own.

A sample's reasons are NVML's clock-event reasons (``nvmlClocksEventReasons``, NVML API reference R550): the mask's
bits are named below; a bit not named is kept as its hex value. Where ``nvidia-smi`` is missing, fails or sends no
sample within ``START_TIMEOUT_S``, the timing runs all the same and the result says why it has no samples.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

DEFAULT_INTERVAL_MS = 20
START_TIMEOUT_S = 5.0
# the reasons' bits (NVML nvmlClocksEventReasons, API reference R550)
REASON_BITS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x10: "sync_boost",
    0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting",
}
# nvidia-smi's name of the reasons' mask: the current one, then the older one (asked for in this order)
REASON_FIELDS = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")
_reason_field_found: dict[str, str | None] = {}


def reason_names(mask: int) -> list[str]:
    """The names of the bits set in a clock-event reasons mask (hex for a bit not named in ``REASON_BITS``)."""
    names, bit = [], 1
    while bit <= mask:
        if mask & bit:
            names.append(REASON_BITS.get(bit, hex(bit)))
        bit <<= 1
    return names


def parse_timestamp(text: str) -> float:
    """nvidia-smi's ``timestamp`` (local time, ``2026/12/06 05:49:20.123``) as seconds since the epoch."""
    whole, _, fraction = text.strip().partition(".")
    return time.mktime(time.strptime(whole, "%Y/%m/%d %H:%M:%S")) + (float("0." + fraction) if fraction else 0.0)


def parse_samples(text: str, with_reasons: bool) -> list[dict]:
    """``nvidia-smi --format=csv,noheader,nounits`` lines of timestamp, SM clock (MHz), power (W), temperature (C)
    and, ``with_reasons``, the reasons' mask; a line that does not parse (``[N/A]``, a cut-off last line) is skipped."""
    samples = []
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != (5 if with_reasons else 4):
            continue
        try:
            sample = {"time": parse_timestamp(fields[0]), "sm_clock_mhz": float(fields[1]), "power_w": float(fields[2]),
                      "temperature_c": float(fields[3])}
            if with_reasons:
                sample["reasons"] = int(fields[4], 16)
        except ValueError:
            continue
        samples.append(sample)
    return samples


def per_repeat(samples: list[dict], spans: list[tuple[float, float]]) -> list[dict]:
    """For each repeat's wall-clock span (start, end), what its samples show: their count, the SM clock's least,
    median and largest value, the largest power and temperature, and every clock-event reason seen."""
    summaries = []
    for start, end in spans:
        inside = [sample for sample in samples if start <= sample["time"] <= end]
        if not inside:
            summaries.append({"samples": 0})
            continue
        clocks = [sample["sm_clock_mhz"] for sample in inside]
        summary = {"samples": len(inside), "sm_clock_mhz_min": min(clocks), "sm_clock_mhz_median": statistics.median(clocks),
                   "sm_clock_mhz_max": max(clocks), "power_w_max": max(sample["power_w"] for sample in inside),
                   "temperature_c_max": max(sample["temperature_c"] for sample in inside)}
        if "reasons" in inside[0]:
            mask = 0
            for sample in inside:
                mask |= sample["reasons"]
            summary["clock_event_reasons"] = reason_names(mask)
        summaries.append(summary)
    return summaries


def _reason_field() -> str | None:
    """The reasons' field this nvidia-smi knows (asked once a process), or None."""
    if "field" not in _reason_field_found:
        _reason_field_found["field"] = None
        for field in REASON_FIELDS:
            try:
                done = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True,
                                      text=True, timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                break
            if done.returncode == 0 and done.stdout.strip().startswith("0x"):
                _reason_field_found["field"] = field
                break
    return _reason_field_found["field"]


def gpu_uuid(device: str) -> str | None:
    """nvidia-smi's name (``GPU-...``) of the torch device's GPU, whatever CUDA_VISIBLE_DEVICES renumbers, or None
    where torch gives no UUID."""
    import torch

    try:
        uuid = torch.cuda.get_device_properties(torch.device(device)).uuid
    except (AttributeError, RuntimeError, AssertionError):
        return None
    text = str(uuid)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


class GpuSampler:
    """Samples the GPU of ``device`` every ``interval_ms`` between ``start()`` and ``stop()``; ``mark(start, end)``
    records a repeat's wall-clock span (``time.time()``); ``stop()`` returns the samples per repeat, or why there are
    none. One use a timing."""

    def __init__(self, device: str, interval_ms: int = DEFAULT_INTERVAL_MS):
        self.device, self.interval_ms = device, interval_ms
        self.spans: list[tuple[float, float]] = []
        self.problem: str | None = None
        self._process: subprocess.Popen | None = None
        self._output: Path | None = None
        self._reason_field: str | None = None

    def start(self) -> None:
        """Start nvidia-smi and wait (at most ``START_TIMEOUT_S``) for its first sample."""
        uuid = gpu_uuid(self.device)
        if uuid is None:
            self.problem = f"torch gives no UUID for {self.device}, so nvidia-smi's GPU is not known"
            return
        self._reason_field = _reason_field()
        fields = ",".join(["timestamp", "clocks.sm", "power.draw", "temperature.gpu"] + ([self._reason_field] if self._reason_field else []))
        handle, name = tempfile.mkstemp(prefix="sparsebench_gpu_samples_", suffix=".csv")
        os.close(handle)
        self._output = Path(name)
        command = ["nvidia-smi", "-i", uuid, f"--query-gpu={fields}", "--format=csv,noheader,nounits",
                   "-lms", str(self.interval_ms)]
        try:
            with self._output.open("w") as sink:
                self._process = subprocess.Popen(command, stdout=sink, stderr=subprocess.PIPE, text=True)
        except OSError as error:
            self.problem = f"nvidia-smi could not start: {type(error).__name__}: {error}"
            return
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._output.stat().st_size > 0:
                return
            if self._process.poll() is not None:
                self.problem = f"nvidia-smi exited {self._process.returncode}: {self._process.stderr.read().strip()[:200]}"
                return
            time.sleep(0.005)
        self.problem = f"nvidia-smi sent no sample within {START_TIMEOUT_S:.0f} s"

    def mark(self, start: float, end: float) -> None:
        self.spans.append((start, end))

    def stop(self) -> dict:
        """End the sampling; the samples of each marked repeat (``per_repeat``), or ``{"unreadable": why}``."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        text = ""
        if self._output is not None:
            text = self._output.read_text(errors="replace")
            self._output.unlink(missing_ok=True)
        if self.problem is not None:
            return {"unreadable": self.problem}
        samples = parse_samples(text, with_reasons=self._reason_field is not None)
        if not samples:
            return {"unreadable": "nvidia-smi's output had no sample that parsed"}
        found = {"source": f"nvidia-smi every {self.interval_ms} ms", "per_repeat": per_repeat(samples, self.spans)}
        if self._reason_field is None:
            found["clock_event_reasons"] = f"not read: this nvidia-smi knows none of {', '.join(REASON_FIELDS)}"
        return found
