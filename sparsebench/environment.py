"""Versions, git revision, hardware and peak memory, for the result documents."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

import sparsebench


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_revision() -> dict:
    root = Path(sparsebench.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    if sha.returncode != 0:
        return {"sha": None, "dirty": None}
    return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def describe(device: str) -> dict:
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "sparsebench": sparsebench.__version__,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "hydra_core": _version("hydra-core"),
        "git": git_revision(),
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # the slot of a gpu_pool job
        "pid": os.getpid(),  # tells apart the workers of two slots on one GPU
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: str) -> dict:
    """Peak resident memory of this process (since it started) and peak GPU memory (since the reset)."""
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    memory = {"peak_cpu_rss_bytes": rss_kib * 1024, "peak_gpu_allocated_bytes": None}
    if device.startswith("cuda"):
        memory["peak_gpu_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        memory["peak_gpu_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    return memory
