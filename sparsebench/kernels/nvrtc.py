"""CUDA C++ kernels compiled at run time with NVRTC and launched through the CUDA driver, by ctypes.

Why not ``torch.cuda._compile_kernel``: it is private, it asks ``torch.utils.cpp_extension`` for the CUDA
toolkit's include folder (an error where no toolkit is installed, as on machines that have only pip's CUDA
wheels), and it cannot run without a CUDA build of torch, so a kernel's source could not even be compiled on
a CPU machine. Here the kernels include no headers, so NVRTC needs no toolkit: the library that the CUDA
builds of torch install is enough (torch 2.11.0's Linux wheel on PyPI requires ``cuda-toolkit[...,nvrtc,...]==13.0.2``,
which requires ``nvidia-cuda-nvrtc==13.0.88.*``; both read from their metadata with pip), and on a CPU machine the
same wheel compiles the sources for a test (tests/test_bitmask_kept.py).

- ``nvrtc_library()``: the NVRTC shared library, the one matching torch's CUDA major version first;
- ``compile_cubin(source, arch, defines)``: machine code for one architecture (``"sm_90"``), or
  ``NvrtcError`` with the compiler's log;
- ``CompiledKernel``: one ``extern "C"`` kernel of a cubin, loaded once per device and launched on torch's
  current stream (so a CUDA graph being captured records it), optionally as a programmatic dependent launch
  (``programmatic_launch_config``: the kernel may start while the one before it on the stream ends).
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from functools import lru_cache

import torch

_NVRTC_SUCCESS = 0
_CUDA_SUCCESS = 0
_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
_SHARED_SIZE_BYTES = 1  # CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: the kernel's static shared memory
_DEFAULT_SHARED_LIMIT = 48 * 1024  # static and dynamic shared memory a block may take without asking the driver for more


class NvrtcError(RuntimeError):
    """NVRTC could not be found or could not compile a source; the message carries the compiler's log."""


@lru_cache(maxsize=1)
def nvrtc_library() -> ctypes.CDLL:
    """NVRTC, from the library path or from pip's ``nvidia`` wheels; the major version of torch's CUDA first."""
    majors = ["13", "12"]
    if torch.version.cuda:
        torch_major = torch.version.cuda.split(".")[0]
        majors = [torch_major] + [m for m in majors if m != torch_major]
    names = [f"libnvrtc.so.{major}" for major in majors] + ["libnvrtc.so"]
    wheel_paths = []
    for folder in sys.path:
        for major in majors:
            wheel_paths += sorted(glob.glob(os.path.join(folder, "nvidia", f"cu{major}", "lib", f"libnvrtc.so.{major}")))
            wheel_paths += sorted(glob.glob(os.path.join(folder, "nvidia", "cuda_nvrtc", "lib", f"libnvrtc.so.{major}")))
    tried = []
    for candidate in names + wheel_paths:
        try:
            return ctypes.CDLL(candidate)
        except OSError as error:
            tried.append(f"{candidate}: {error}")
    raise NvrtcError("NVRTC (libnvrtc.so) was not found; the CUDA builds of torch install it (pip package nvidia-cuda-nvrtc). "
                     "Tried:\n  " + "\n  ".join(tried))


def nvrtc_version() -> tuple[int, int]:
    """NVRTC's (major, minor) version."""
    library = nvrtc_library()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check_nvrtc(library, library.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def _check_nvrtc(library: ctypes.CDLL, result: int, call: str) -> None:
    if result != _NVRTC_SUCCESS:
        library.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise NvrtcError(f"{call} failed: {library.nvrtcGetErrorString(result).decode()}")


def compile_cubin(source: str, arch: str, defines: dict[str, int] | None = None, name: str = "kernel.cu") -> bytes:
    """``source`` compiled by NVRTC for ``arch`` (e.g. ``"sm_90"``): a cubin. ``defines``: ``-D`` macros."""
    if not arch.startswith("sm_"):
        raise ValueError(f"arch must name a real architecture such as 'sm_90' (a cubin, not PTX), got {arch!r}")
    library = nvrtc_library()
    program = ctypes.c_void_p()
    _check_nvrtc(library, library.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(), 0, None, None),
                 "nvrtcCreateProgram")
    options = [f"--gpu-architecture={arch}", "--std=c++17"] + [f"-D{key}={value}" for key, value in (defines or {}).items()]
    option_array = (ctypes.c_char_p * len(options))(*[option.encode() for option in options])
    try:
        result = library.nvrtcCompileProgram(program, len(options), option_array)
        if result != _NVRTC_SUCCESS:
            size = ctypes.c_size_t()
            library.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            library.nvrtcGetProgramLog(program, log)
            raise NvrtcError(f"NVRTC could not compile {name} for {arch} with {options[2:]}:\n{log.value.decode(errors='replace')}")
        size = ctypes.c_size_t()
        _check_nvrtc(library, library.nvrtcGetCUBINSize(program, ctypes.byref(size)), "nvrtcGetCUBINSize")
        cubin = ctypes.create_string_buffer(size.value)
        _check_nvrtc(library, library.nvrtcGetCUBIN(program, cubin), "nvrtcGetCUBIN")
        return cubin.raw
    finally:
        library.nvrtcDestroyProgram(ctypes.byref(program))


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@lru_cache(maxsize=1)
def _driver() -> ctypes.CDLL:
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError as error:
        raise RuntimeError(f"the CUDA driver (libcuda.so.1) could not be loaded: {error}") from error


def _check_driver(result: int, call: str) -> None:
    if result != _CUDA_SUCCESS:
        message = ctypes.c_char_p()
        _driver().cuGetErrorString(result, ctypes.byref(message))
        raise RuntimeError(f"{call} failed: CUDA error {result} ({(message.value or b'unknown').decode()})")


_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION


class _LaunchAttribute(ctypes.Structure):  # CUlaunchAttribute: an id, padding to 8 bytes, a 64-byte union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_char * 64)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig (cuLaunchKernelEx)
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared_bytes", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_LaunchAttribute)), ("num_attrs", ctypes.c_uint)]


def programmatic_launch_config(grid, block, shared_bytes: int, stream: int) -> tuple[_LaunchConfig, _LaunchAttribute]:
    """A launch whose kernel may start before the one before it on the stream ends (programmatic dependent launch,
    compute capability 9.0): the kernel must wait (``griddepcontrol.wait``) before it reads what that one wrote or
    writes anything. Returns the attribute too, which must outlive the call."""
    attribute = _LaunchAttribute(id=_PROGRAMMATIC_STREAM_SERIALIZATION)
    ctypes.memmove(ctypes.addressof(attribute) + _LaunchAttribute.value.offset, ctypes.byref(ctypes.c_int(1)), 4)
    config = _LaunchConfig((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), shared_bytes, ctypes.c_void_p(stream),
                           ctypes.pointer(attribute), 1)
    return config, attribute


class CompiledKernel:
    """The ``extern "C"`` kernel ``name`` of ``cubin``, loaded into each device's context on first use.

    ``launch(grid, block, args, device, shared_bytes)``: ``args`` are tensors (passed as device pointers) and Python
    ints (as C ``int``), in the kernel's order; ``shared_bytes`` of dynamic shared memory (``extern __shared__``); the
    launch goes to torch's current stream on the tensors' device. ``resident_blocks``: how many such blocks the GPU
    runs at once (for kernels that loop over their work in a grid of that size).
    """

    def __init__(self, cubin: bytes, name: str) -> None:
        self.cubin = cubin
        self.name = name
        self._functions: dict[int, ctypes.c_void_p] = {}
        self._dynamic_shared_limit: dict[int, int] = {}
        self._resident: dict[tuple[int, int, int], int] = {}

    def load(self, device: torch.device) -> ctypes.c_void_p:
        """The kernel's handle in ``device``'s context, loading the cubin there the first time."""
        index = _index(device)
        if index not in self._functions:
            with torch.cuda.device(index):
                torch.cuda.init()
                torch.empty(0, device=f"cuda:{index}")  # makes torch's (primary) context current on this thread
                module, function = ctypes.c_void_p(), ctypes.c_void_p()
                _check_driver(_driver().cuModuleLoadData(ctypes.byref(module), self.cubin), "cuModuleLoadData")
                _check_driver(_driver().cuModuleGetFunction(ctypes.byref(function), module, self.name.encode()),
                              f"cuModuleGetFunction({self.name})")
                static = ctypes.c_int()
                _check_driver(_driver().cuFuncGetAttribute(ctypes.byref(static), _SHARED_SIZE_BYTES, function),
                              f"cuFuncGetAttribute({self.name}, SHARED_SIZE_BYTES)")
            self._functions[index] = function
            self._dynamic_shared_limit[index] = _DEFAULT_SHARED_LIMIT - static.value
        return self._functions[index]

    def allow_dynamic_shared(self, device: torch.device, shared_bytes: int) -> None:
        """Let launches on ``device`` take ``shared_bytes`` of dynamic shared memory (above 48 KB with the kernel's static
        shared memory, the driver asks for this)."""
        function = self.load(device)
        index = _index(device)
        if shared_bytes > self._dynamic_shared_limit[index]:
            _check_driver(_driver().cuFuncSetAttribute(function, _MAX_DYNAMIC_SHARED_SIZE_BYTES, ctypes.c_int(shared_bytes)),
                          f"cuFuncSetAttribute({self.name}, MAX_DYNAMIC_SHARED_SIZE_BYTES, {shared_bytes})")
            self._dynamic_shared_limit[index] = shared_bytes

    def resident_blocks(self, device: torch.device, block_threads: int, shared_bytes: int = 0) -> int:
        """How many blocks of ``block_threads`` threads and ``shared_bytes`` of dynamic shared memory the whole GPU runs
        at once (at least one): the driver's occupancy for one multiprocessor (registers, shared memory, warps) times their
        number, asked once per device and block."""
        key = (_index(device), block_threads, shared_bytes)
        if key not in self._resident:
            function = self.load(device)
            self.allow_dynamic_shared(device, shared_bytes)
            blocks = ctypes.c_int()
            _check_driver(_driver().cuOccupancyMaxActiveBlocksPerMultiprocessor(ctypes.byref(blocks), function, ctypes.c_int(block_threads),
                                                                               ctypes.c_size_t(shared_bytes)),
                          f"cuOccupancyMaxActiveBlocksPerMultiprocessor({self.name})")
            self._resident[key] = max(1, blocks.value * torch.cuda.get_device_properties(device).multi_processor_count)
        return self._resident[key]

    def launch(self, grid: tuple[int, int, int], block: tuple[int, int, int], args: list, device: torch.device,
               shared_bytes: int = 0, programmatic: bool = False) -> None:
        """``programmatic``: a programmatic dependent launch (``programmatic_launch_config``), for kernels written for it."""
        function = self.load(device)
        self.allow_dynamic_shared(device, shared_bytes)
        holders = []
        for arg in args:
            if isinstance(arg, torch.Tensor):
                holders.append(ctypes.c_void_p(arg.data_ptr()))
            elif isinstance(arg, int):
                holders.append(ctypes.c_int(arg))
            else:
                raise TypeError(f"kernel arguments are tensors or ints, got {type(arg).__name__}")
        params = (ctypes.c_void_p * len(holders))(*[ctypes.cast(ctypes.byref(holder), ctypes.c_void_p) for holder in holders])
        stream = torch.cuda.current_stream(device).cuda_stream
        if programmatic:
            config, _attribute = programmatic_launch_config(grid, block, shared_bytes, stream)
            _check_driver(_driver().cuLaunchKernelEx(ctypes.byref(config), function, params, None), f"cuLaunchKernelEx({self.name}, programmatic)")
        else:
            _check_driver(_driver().cuLaunchKernel(function, *grid, *block, shared_bytes, ctypes.c_void_p(stream), params, None),
                          f"cuLaunchKernel({self.name})")
