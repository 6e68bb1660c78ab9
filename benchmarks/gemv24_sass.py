"""Instructions per weight in the gemv24 kernels' main loops, read from their sm_90 machine code; no GPU needed.

    PYTHONPATH=$PWD python benchmarks/gemv24_sass.py

Compiles ``_one_token_kernel`` and ``_tokens_kernel`` (sparsebench/kernels/gemv24.py) for compute capability
9.0 (H100, H200) with Triton's own ptxas, and counts them with benchmarks/bitmask_kernel_sass.py's
``main_loop`` and ``opcode`` (the longest backward branch; cuobjdump's register count). A weight here is
one position of the dense ``[rows, cols]`` matrix (8 a mask byte, half of them kept), the unit the
bitmask kernel's count uses; a kept weight costs twice the figure. The last line is JSON.
"""

from __future__ import annotations

import argparse
import collections
import json

import triton
from bitmask_kernel_sass import main_loop, opcode  # benchmarks/ is this script's folder, first on sys.path
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sparsebench.kernels import gemv24

ONE_TOKEN = {"x_ptr": "*i64", "values_ptr": "*i64", "bitmask_ptr": "*u8", "bias_ptr": "*fp16", "out_ptr": "*fp16",
             **dict.fromkeys(["rows", "n_bytes", "bytes_per_split", "stride_out_split"], "i32")}
TOKENS = {"x_ptr": "*fp16", "values_ptr": "*i64", "bitmask_ptr": "*u8", "bias_ptr": "*fp16", "out_ptr": "*fp16",
          **dict.fromkeys(["tokens", "rows", "cols", "n_bytes", "bytes_per_split", "stride_x", "stride_out_token", "stride_out_split"], "i32")}
# arguments Triton sees as multiples of 16 at LLaMA-2-7B's shapes (pointers from torch; 4096 / 11008 columns, 512 / 1376 bytes)
MULTIPLES_OF_16 = {"x_ptr", "values_ptr", "bitmask_ptr", "bias_ptr", "out_ptr", "rows", "cols", "n_bytes", "bytes_per_split",
                   "stride_x", "stride_out_token"}
# (tokens, block_rows, block_bytes, warps)
SHAPES = [(1, 1, 64, 2), (1, 2, 64, 4), (1, 4, 64, 4), (1, 8, 32, 4), (1, 4, 128, 4), (16, 16, 32, 4), (16, 16, 64, 4), (16, 32, 64, 4)]


def compile_sm90(tokens: int, block_rows: int, block_bytes: int, warps: int):
    constants = {"HAS_BIAS": False, "DTYPE": triton.language.float16, "BLOCK_ROWS": block_rows, "BLOCK_BYTES": block_bytes, "STEPS": 64}  # a loop, not unrolled
    if tokens == 1:
        function, signature = gemv24._one_token_kernel, ONE_TOKEN
    else:
        function, signature = gemv24._tokens_kernel, TOKENS
        constants["BLOCK_TOKENS"] = tokens
    attrs = {(index,): [["tt.divisibility", 16]] for index, name in enumerate(signature) if name in MULTIPLES_OF_16}
    source = ASTSource(fn=function, signature={**signature, **dict.fromkeys(constants, "constexpr")}, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    rows = []
    for tokens, block_rows, block_bytes, warps in SHAPES:
        loop, registers = main_loop(compile_sm90(tokens, block_rows, block_bytes, warps).asm["cubin"])
        weights_per_thread = block_rows * block_bytes * 8 / (32 * warps)
        counts = collections.Counter(opcode(instruction) for instruction in loop)
        row = {"tokens_per_program": tokens, "block_rows": block_rows, "block_bytes": block_bytes, "warps": warps,
               "loop_instructions": len(loop), "instructions_per_weight": len(loop) / weights_per_thread, "registers": registers,
               "shared_memory_round_trips": {name: counts[name] for name in ("STS", "LDS", "BAR")}, "top_opcodes": dict(counts.most_common(8))}
        rows.append(row)
        print(f"T/program {tokens:2d} rows {block_rows:2d} bytes {block_bytes:3d} warps {warps}: {row['instructions_per_weight']:5.2f} instructions "
              f"a weight ({len(loop)} in the loop), {registers} registers, STS/LDS/BAR {counts['STS']}/{counts['LDS']}/{counts['BAR']}; "
              f"{dict(counts.most_common(8))}", flush=True)
    print(json.dumps({"triton": triton.__version__, "target": "sm_90", "kernels": rows}))


if __name__ == "__main__":
    main()
