"""Instructions per weight in the bitmask kernel's main loop, read from its sm_90 machine code; no GPU needed.

    PYTHONPATH=$PWD python benchmarks/bitmask_kernel_sass.py

Compiles the one-token kernels ``_chunk_kernel`` (``Launch.one_token="chunks"``, the default) and
``_one_token_kernel`` (``"bytes"``, the first one) and ``_tokens_kernel`` (sparsebench/kernels/bitmask_linear.py) for
compute capability 9.0 (H100, H200) with Triton's own ptxas, disassembles them with the cuobjdump that
Triton ships, finds the main loop (the longest backward branch) and divides its instruction count by
the weights one thread covers in one step (``block_rows * block_bytes * 8 / (32 * warps)``). Where NVRTC is
installed (``nvidia-cuda-nvrtc``, a dev dependency) it also compiles the CUDA C++ kernels (kept:
sparsebench/kernels/bitmask_kept.py, walk: bitmask_walk.py) and prints their basic blocks that find kept bits
(instructions a bit, ``FLO``) and that multiply (instructions a product, ``FFMA``).
At batch-1 decode a kernel that issues more instructions per weight than the GPU can issue while its
bytes stream is bound by issue, not by memory: ``weights * instructions / (SMs * 4 * 32 * clock)``.
Also prints the opcodes the loop spends most on, the shared-memory round trips (``STS``/``LDS``/
``BAR``, which a layout conversion costs) and the registers a thread takes. The last line is JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sparsebench.kernels import bitmask_linear as kernels

POINTERS = {"x_ptr": "*fp16", "values_ptr": "*fp16", "bitmask_ptr": "*u8", "offsets_ptr": "*i32", "bias_ptr": "*fp16", "out_ptr": "*fp16"}
ONE_TOKEN = {**POINTERS, **dict.fromkeys(["cols", "n_bytes", "n_index", "stride_out_split", "bytes_per_split"], "i32")}
CHUNKS = {**POINTERS, **dict.fromkeys(["rows", "cols", "n_bytes", "n_index", "stride_out_split"], "i32")}
TOKENS = {**POINTERS, **dict.fromkeys(["tokens", "rows", "cols", "n_bytes", "n_index", "stride_x", "stride_out_token",
                                       "stride_out_split", "bytes_per_split"], "i32")}
# arguments Triton sees as multiples of 16 at LLaMA-2-7B's shapes (pointers from torch, 4096 / 11008 columns)
MULTIPLES_OF_16 = {"x_ptr", "values_ptr", "bitmask_ptr", "offsets_ptr", "bias_ptr", "out_ptr", "rows", "cols", "n_bytes",
                   "stride_x", "stride_out_token", "bytes_per_split"}
# (one-token kernel, tokens a program, block_rows, block_bytes, warps, prefetch); "chunks" walks 1,024 columns a
# step without bounds masks (one split: every chunk but a partial last one), "chunks-masked" with them (several
# splits that do not cover the row's chunks exactly)
SHAPES = [("chunks", 1, 2, 128, 1, False), ("chunks", 1, 1, 128, 1, False), ("chunks-masked", 1, 2, 128, 1, False),
          ("chunks-masked", 1, 1, 128, 1, False),
          ("bytes", 1, 1, 32, 1, False), ("bytes", 1, 1, 32, 1, True), ("bytes", 1, 1, 64, 2, True), ("bytes", 1, 1, 128, 4, True),
          ("bytes", 16, 16, 32, 4, False), ("bytes", 16, 16, 32, 4, True), ("bytes", 16, 32, 32, 4, True), ("bytes", 64, 32, 32, 4, True)]


def _cuobjdump() -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def compile_sm90(one_token: str, tokens: int, block_rows: int, block_bytes: int, warps: int, prefetch: bool):
    constants = {"HAS_BIAS": False, "BLOCK_BYTES": block_bytes, "INDEX_BYTES": kernels.INDEX_BYTES, "STEPS": 4, "PREFETCH": prefetch}
    if tokens == 1 and one_token.startswith("chunks"):  # four chunks a split, as at 4,096 columns
        function, signature = kernels._chunk_kernel, CHUNKS
        constants = {"HAS_BIAS": False, "TWO_ROWS": block_rows == 2, "INDEX_BYTES": kernels.INDEX_BYTES, "CHUNKS": 4,
                     "MASKED": one_token == "chunks-masked", "MASKED_TAIL": False}
    elif tokens == 1:
        function, signature = kernels._one_token_kernel, ONE_TOKEN
    else:
        function, signature = kernels._tokens_kernel, TOKENS
        constants.update(BLOCK_ROWS=block_rows, BLOCK_TOKENS=tokens)
    attrs = {(index,): [["tt.divisibility", 16]] for index, name in enumerate(signature) if name in MULTIPLES_OF_16}
    source = ASTSource(fn=function, signature={**signature, **dict.fromkeys(constants, "constexpr")}, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


def main_loop(cubin: bytes) -> tuple[list[str], int]:
    """The instructions of the longest loop of ``cubin``, and the registers a thread takes."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([_cuobjdump(), "-sass", str(path)], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([_cuobjdump(), "-res-usage", str(path)], capture_output=True, text=True, check=True).stdout
    instructions = [(int(found.group(1), 16), found.group(2)) for found in
                    (re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line) for line in sass.splitlines()) if found]
    loops = []
    for address, text in instructions:
        branch = re.search(r"BRA.*?0x([0-9a-f]+)", text)
        if branch and int(branch.group(1), 16) < address:
            loops.append((int(branch.group(1), 16), address))
    if not loops:
        raise RuntimeError("no backward branch in the kernel's machine code: no loop found")
    start, stop = max(loops, key=lambda loop: loop[1] - loop[0])
    registers = re.search(r"REG:(\d+)", usage)
    return [text for address, text in instructions if start <= address <= stop], int(registers.group(1)) if registers else -1


def cuda_kernel_blocks(kernel: str) -> list[dict]:
    """A CUDA C++ one-token kernel (``kept``: sparsebench/kernels/bitmask_kept.py, ``walk``: bitmask_walk.py; fp16, sm_90,
    compiled by NVRTC): its basic blocks that multiply (``FFMA``: instructions a product; in ``walk`` the bit is found in
    the same block) or only find kept bits (``FLO``, ``kept``'s step 3: instructions a bit)."""
    from sparsebench.kernels import bitmask_kept, bitmask_walk
    from sparsebench.kernels.nvrtc import compile_cubin

    module = {"kept": bitmask_kept, "walk": bitmask_walk}[kernel]
    cubin = compile_cubin(module.SOURCE, "sm_90", module.defines(torch.float16))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{kernel}.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([_cuobjdump(), "-sass", str(path)], capture_output=True, text=True, check=True).stdout
    instructions = [(int(found.group(1), 16), found.group(2)) for found in
                    (re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line) for line in sass.splitlines()) if found]
    targets = {int(found.group(1), 16) for _, text in instructions if (found := re.search(r"BRA.*?0x([0-9a-f]+)", text))}
    blocks, current = [], []
    for address, text in instructions:  # a block ends at a branch and before a branch target
        if address in targets and current:
            blocks.append(current)
            current = []
        current.append((address, text))
        if "BRA" in text or "EXIT" in text:
            blocks.append(current)
            current = []
    rows = []
    for block in blocks:
        counts = collections.Counter(opcode(text) for _, text in block)
        if counts["FFMA"] >= 4:
            marker, what = "FFMA", "instructions a product" + (" (bits found in the same block)" if counts["FLO"] else " (step 4)")
        elif counts["FLO"] >= 4:
            marker, what = "FLO", "instructions a kept bit found (step 3)"
        else:
            continue
        rows.append({"kernel": kernel, "start": f"{block[0][0]:04x}", "instructions": len(block), marker: counts[marker],
                     "per": len(block) / counts[marker], "what": what})
    return rows


def opcode(instruction: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split()[0].split(".")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    rows = []
    for one_token, tokens, block_rows, block_bytes, warps, prefetch in SHAPES:
        loop, registers = main_loop(compile_sm90(one_token, tokens, block_rows, block_bytes, warps, prefetch).asm["cubin"])
        weights_per_thread = block_rows * block_bytes * 8 / (32 * warps)
        counts = collections.Counter(opcode(instruction) for instruction in loop)
        kernel = one_token if tokens == 1 else "tokens"
        row = {"kernel": kernel, "tokens_per_program": tokens, "block_rows": block_rows, "block_bytes": block_bytes, "warps": warps, "prefetch": prefetch,
               "loop_instructions": len(loop), "instructions_per_weight": len(loop) / weights_per_thread, "registers": registers,
               "shared_memory_round_trips": {name: counts[name] for name in ("STS", "LDS", "BAR")},
               "top_opcodes": dict(counts.most_common(8))}
        rows.append(row)
        print(f"{kernel:13s} T/program {tokens:2d} rows {block_rows:2d} bytes {block_bytes:3d} warps {warps} prefetch {prefetch!s:5s}: "
              f"{row['instructions_per_weight']:5.2f} instructions a weight ({len(loop)} in the loop), {registers} registers, "
              f"STS/LDS/BAR {counts['STS']}/{counts['LDS']}/{counts['BAR']}; {dict(counts.most_common(6))}", flush=True)
    cuda_blocks = []
    for kernel in ("kept", "walk"):
        try:
            cuda_blocks += cuda_kernel_blocks(kernel)
        except RuntimeError as error:  # NVRTC missing (pip install nvidia-cuda-nvrtc) or refusing the source
            print(f"{kernel} kernel not compiled: {str(error).splitlines()[0]}")
    for row in cuda_blocks:
        print(f"{row['kernel']:13s} block at {row['start']}: {row['instructions']} instructions, {row['per']:.2f} {row['what']}", flush=True)
    print(json.dumps({"triton": triton.__version__, "target": "sm_90", "kernels": rows, "cuda_kernel_blocks": cuda_blocks}))


if __name__ == "__main__":
    main()
