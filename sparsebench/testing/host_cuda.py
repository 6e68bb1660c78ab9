"""CUDA C++ kernel sources built for the CPU with the host's C++ compiler and ``warp_emulation.h``, to test a kernel's
own source where no GPU is (tests/test_kernels_on_the_host.py).

``build_host_program(kernel_source, main_source, defines, sanitizer, folder)`` writes the kernel to ``kernel.cu`` in
``folder`` and compiles ``main_source`` (a C++ file that includes ``warp_emulation.h``, then ``kernel.cu``, and
launches it with ``emu::launch``) with AddressSanitizer (reads and writes outside buffers) or ThreadSanitizer (lanes
that share memory without a ``__syncwarp``). ``run_host_program`` runs it and raises ``HostKernelError`` with the
sanitizer's report. The emulation runs a host thread per GPU thread: small shapes only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

EMULATION_HEADER = Path(__file__).with_name("warp_emulation.h")
SANITIZERS = ("address", "thread")


class HostKernelError(RuntimeError):
    """A host build of a kernel failed to compile, or its run failed (the sanitizer's or the emulation's report)."""


def host_compiler() -> str | None:
    """The C++ compiler to build with (``$CXX``, else g++ or clang++ on the PATH), or None."""
    for candidate in (os.environ.get("CXX"), "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def build_host_program(kernel_source: str, main_source: Path, defines: dict[str, int], sanitizer: str, folder: Path) -> Path:
    """The executable of ``main_source`` with ``kernel_source`` as ``kernel.cu`` and ``-D`` ``defines``, under ``sanitizer``."""
    if sanitizer not in SANITIZERS:
        raise ValueError(f"sanitizer must be one of {SANITIZERS}, got {sanitizer!r}")
    compiler = host_compiler()
    if compiler is None:
        raise HostKernelError("no C++ compiler found (set CXX, or install g++ or clang++)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.cu").write_text(kernel_source)
    executable = folder / f"{main_source.stem}_{sanitizer}"
    command = [compiler, "-std=c++20", "-O1", "-g", "-pthread", f"-fsanitize={sanitizer}", "-fno-omit-frame-pointer",
               "-I", str(EMULATION_HEADER.parent), "-I", str(folder), *[f"-D{key}={value}" for key, value in defines.items()],
               str(main_source), "-o", str(executable)]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0:
        raise HostKernelError(f"{' '.join(command)} failed:\n{built.stderr[-4000:]}")
    return executable


def run_host_program(executable: Path, arguments: list[str], timeout_s: float = 300.0) -> str:
    """Run ``executable``; its standard output, or ``HostKernelError`` with the sanitizer's or emulation's report."""
    environment = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0", TSAN_OPTIONS="halt_on_error=1")
    done = subprocess.run([str(executable), *arguments], capture_output=True, text=True, timeout=timeout_s, env=environment)
    if done.returncode != 0 or "WARNING: ThreadSanitizer" in done.stderr:
        raise HostKernelError(f"{executable.name} {' '.join(arguments)} exited with {done.returncode}:\n{done.stderr[-6000:]}")
    return done.stdout
