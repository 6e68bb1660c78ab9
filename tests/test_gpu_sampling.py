"""The GPU sampler of the efficiency stage (sparsebench/evaluate/gpu_sampling.py), on the CPU with a stand-in nvidia-smi."""

from __future__ import annotations

import os
import stat
import time

import pytest

from sparsebench.evaluate import gpu_sampling
from sparsebench.evaluate.gpu_sampling import GpuSampler, parse_samples, parse_timestamp, per_repeat, reason_names
from sparsebench.evaluate.measure import PeakMemory, timed

FAKE_SMI = """#!/bin/sh
# a stand-in for nvidia-smi: the reasons' field (the current name only) once, or a sample every 20 ms
case "$*" in
  *clocks_throttle_reasons*) echo 'Field "clocks_throttle_reasons.active" is not a valid field to query.' >&2; exit 2;;
  *-lms*) echo "$*" > "$(dirname "$0")/arguments.txt"
          clock=1980
          while true; do
            echo "$(date +'%Y/%m/%d %H:%M:%S.%3N'), $clock, 412.50, 51, 0x0000000000000004"
            clock=$((clock - 15)); sleep 0.02
          done;;
  *clocks_event_reasons*) echo "0x0000000000000001";;
esac
"""


@pytest.fixture
def fake_smi(tmp_path, monkeypatch):
    script = tmp_path / "nvidia-smi"
    script.write_text(FAKE_SMI)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(gpu_sampling, "_reason_field_found", {})
    monkeypatch.setattr(gpu_sampling, "gpu_uuid", lambda device: "GPU-0000-test")
    return tmp_path


def test_reason_names_name_each_bit_and_keep_unknown_ones_in_hex():
    assert reason_names(0) == []
    assert reason_names(0x4) == ["sw_power_cap"]
    assert reason_names(0x1 | 0x4 | 0x40) == ["gpu_idle", "sw_power_cap", "hw_thermal_slowdown"]
    assert reason_names(0x800) == ["0x800"]


def test_samples_parse_and_fall_into_the_repeat_whose_span_holds_them():
    text = ("2026/12/06 05:49:20.000, 1980, 300.00, 40, 0x0000000000000000\n"
            "2026/12/06 05:49:20.100, 1755, 690.10, 55, 0x0000000000000004\n"
            "2026/12/06 05:49:20.200, [N/A], 690.10, 55, 0x0000000000000004\n"  # skipped
            "2026/12/06 05:49:20.300, 1600, 700.00, 60, 0x0000000000000024\n"
            "2026/12/06 05:49:20.40")  # a line cut off when the sampler stopped
    samples = parse_samples(text, with_reasons=True)
    assert [sample["sm_clock_mhz"] for sample in samples] == [1980, 1755, 1600]
    t0 = parse_timestamp("2026/12/06 05:49:20.000")
    assert parse_timestamp("2026/12/06 05:49:20.300") - t0 == pytest.approx(0.3)
    first, second, empty = per_repeat(samples, [(t0, t0 + 0.15), (t0 + 0.25, t0 + 0.35), (t0 + 1, t0 + 2)])
    assert first["samples"] == 2 and first["sm_clock_mhz_min"] == 1755 and first["sm_clock_mhz_max"] == 1980
    assert first["power_w_max"] == pytest.approx(690.1) and first["clock_event_reasons"] == ["sw_power_cap"]
    assert second["samples"] == 1 and second["clock_event_reasons"] == ["sw_power_cap", "sw_thermal_slowdown"]
    assert empty == {"samples": 0}
    without = parse_samples("2026/12/06 05:49:20.000, 1980, 300.00, 40\n", with_reasons=False)
    assert "reasons" not in without[0] and "clock_event_reasons" not in per_repeat(without, [(t0 - 1, t0 + 1)])[0]


def test_the_sampler_runs_nvidia_smi_for_the_gpu_and_gives_each_repeat_its_samples(fake_smi):
    sampler = GpuSampler("cuda:0", interval_ms=20)
    sampler.start()
    for _ in range(2):
        start = time.time()
        time.sleep(0.15)
        sampler.mark(start, time.time())
    found = sampler.stop()
    assert found["source"] == "nvidia-smi every 20 ms" and len(found["per_repeat"]) == 2
    for summary in found["per_repeat"]:
        assert summary["samples"] >= 2
        assert summary["sm_clock_mhz_min"] < summary["sm_clock_mhz_max"] <= 1980
        assert summary["clock_event_reasons"] == ["sw_power_cap"]
    arguments = (fake_smi / "arguments.txt").read_text()
    assert "-i GPU-0000-test" in arguments and "clocks_event_reasons.active" in arguments and "-lms 20" in arguments
    assert not list(fake_smi.glob("sparsebench_gpu_samples_*"))  # its temporary file is gone


def test_an_nvidia_smi_that_knows_neither_reasons_field_still_gives_clocks(fake_smi, monkeypatch):
    monkeypatch.setattr(gpu_sampling, "REASON_FIELDS", ("clocks_throttle_reasons.active",))
    (fake_smi / "nvidia-smi").write_text(FAKE_SMI.replace(", 0x0000000000000004", ""))
    sampler = GpuSampler("cuda:0")
    sampler.start()
    start = time.time()
    time.sleep(0.1)
    sampler.mark(start, time.time())
    found = sampler.stop()
    assert found["per_repeat"][0]["samples"] >= 1 and "clock_event_reasons" not in found["per_repeat"][0]
    assert "knows none of clocks_throttle_reasons.active" in found["clock_event_reasons"]


def test_without_nvidia_smi_the_sampler_says_why_it_has_no_samples(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(gpu_sampling, "_reason_field_found", {})
    monkeypatch.setattr(gpu_sampling, "gpu_uuid", lambda device: "GPU-0000-test")
    sampler = GpuSampler("cuda:0")
    sampler.start()
    assert "nvidia-smi could not start" in sampler.stop()["unreadable"]


def test_without_a_uuid_the_sampler_does_not_guess_the_gpu(fake_smi, monkeypatch):
    monkeypatch.setattr(gpu_sampling, "gpu_uuid", lambda device: None)
    sampler = GpuSampler("cuda:1")
    sampler.start()
    assert "no UUID for cuda:1" in sampler.stop()["unreadable"]


def test_cpu_timings_take_no_gpu_samples():
    result = timed(lambda: None, "cpu", warmup=0, repeats=2, memory=PeakMemory("cpu"))
    assert len(result["seconds"]) == 2 and "gpu_during_repeats" not in result
