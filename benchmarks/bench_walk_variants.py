"""Source variants of the walking kernel (``sparsebench/kernels/bitmask_walk.py``), each a few string replacements of
its ``SOURCE``, timed against it in one run: candidates for fewer instructions a chunk (docs/efficiency.md, "A deeper
pipeline for the walking kernel"), tried here before any of them changes the kernel.

  python benchmarks/bench_walk_variants.py check        # CPU: each variant compiled by NVRTC for sm_90 (registers,
                                                         # instructions, instructions a product)
  python benchmarks/bench_walk_variants.py bench OUT    # GPU: one token at 70 % and on an empty weight (the fixed
                                                         # part), each LLaMA-2-7B shape; prints each variant's largest
                                                         # difference to F.linear and base / variant per case (above 1:
                                                         # the variant is faster); writes OUT/walk_variants.json

Variants: ``copy_unroll1`` (the values' copy loop not unrolled), ``products_unroll2`` / ``products_unroll1`` (the
product loop unrolled twice or not), ``pointer`` (a running value pointer, the bit cleared by xor), ``two_words``
(2,048 columns a step: lane ``i`` walks word ``i`` of two chunks, whose values are copied as one run; two slots of
2,056 values a warp), and combinations. ``check`` needs g++ and the NVRTC wheel, ``bench`` a CUDA GPU.
"""
import argparse
import importlib.util
import json
import subprocess
import tempfile
from pathlib import Path

import torch

from sparsebench.kernels import bitmask_walk
from sparsebench.kernels.one_token_cuda import CHUNK_COLUMNS, OneTokenKernel

BASE = bitmask_walk.SOURCE
COPY_LOOP = "  for (int index = first + 8 * lane; index < stop; index += 256, source += 256, destination += 256) {"
PRODUCT_LOOP = """#pragma unroll 4
      for (int k = 0; k < count; ++k) {
        const int bit = 31 - __clz(walking);
        sum += as_float(value[-k]) * as_float(x_word[bit]);
        walking &= (1u << bit) - 1u;  // the bits below it
      }"""
POINTER_LOOP = """#pragma unroll 4
      for (int left = count; left > 0; --left, --value) {
        const int bit = 31 - __clz(walking);
        sum += as_float(*value) * as_float(x_word[bit]);
        walking ^= 1u << bit;
      }"""

TWO_WORDS_LOOP = """  for (int row = blockIdx.x * WARPS_PER_BLOCK + warp; row < rows; row += gridDim.x * WARPS_PER_BLOCK) {
    // a step: chunks 2s and 2s + 1, lane i holding word i of each; the values of both are one run, copied together
    const unsigned int* row_words = words + (size_t)row * words_per_row;
    const int* row_chunks = chunk_offsets + (size_t)row * chunks;
    const int steps = (chunks + 1) >> 1;
    unsigned int next0 = lane < words_per_row ? __ldg(row_words + lane) : 0u;
    unsigned int next1 = 32 + lane < words_per_row ? __ldg(row_words + 32 + lane) : 0u;
    int next_base = __ldg(row_chunks);
    unsigned int ahead0 = 64 + lane < words_per_row ? __ldg(row_words + 64 + lane) : 0u;
    unsigned int ahead1 = 96 + lane < words_per_row ? __ldg(row_words + 96 + lane) : 0u;
    int ahead_base = 2 < chunks ? __ldg(row_chunks + 2) : 0;
    int next_lead = copy_chunk_values(value_slots, values, next_base, (int)__reduce_add_sync(FULL, __popc(next0) + __popc(next1)),
                                      n_values, lane);
    const unsigned short* x_word = x_shared + lane * GROUP_SLOTS;
    float sum = 0.0f;
    for (int step = 0; step < steps; ++step, x_word += 64 * GROUP_SLOTS) {
      const unsigned int walking0 = next0, walking1 = next1;
      const int lead = next_lead;
      const unsigned short* slots = value_slots + (step & 1) * VALUE_SLOTS;
      if (step + 1 < steps) {
        next0 = ahead0;
        next1 = ahead1;
        next_base = ahead_base;
        const int w = 64 * (step + 2) + lane;
        ahead0 = w < words_per_row ? __ldg(row_words + w) : 0u;
        ahead1 = w + 32 < words_per_row ? __ldg(row_words + w + 32) : 0u;
        ahead_base = 2 * (step + 2) < chunks ? __ldg(row_chunks + 2 * (step + 2)) : 0;
        next_lead = copy_chunk_values(value_slots + ((step + 1) & 1) * VALUE_SLOTS, values, next_base,
                                      (int)__reduce_add_sync(FULL, __popc(next0) + __popc(next1)), n_values, lane);
        wait_for_copies_but_one();
      } else {
        wait_for_all_copies();
      }
      const int ends = inclusive_scan(__popc(walking0) | (__popc(walking1) << 16), lane);  // both words' ends, 16 bits each
      const int first_total = __shfl_sync(FULL, ends, 31) & 0xffff;
      __syncwarp();  // every lane's copies of this step have landed
      sum = walk_word(walking0, slots + lead + (ends & 0xffff) - 1, x_word, sum);
      sum = walk_word(walking1, slots + lead + first_total + (ends >> 16) - 1, x_word + 32 * GROUP_SLOTS, sum);
      __syncwarp();  // these slots take the step after next
    }
    store_row(sum, lane, row, bias, has_bias, out);
  }
}
"""
WALK_WORD = """
__device__ __forceinline__ float walk_word(unsigned int walking, const unsigned short* value, const unsigned short* x_word, float sum) {
  const int count = __popc(walking);
#pragma unroll 4
  for (int k = 0; k < count; ++k) {
    const int bit = 31 - __clz(walking);
    sum += as_float(value[-k]) * as_float(x_word[bit]);
    walking &= (1u << bit) - 1u;
  }
  return sum;
}

extern "C" __global__"""


def _two_words(text: str) -> str:
    """The ``two_words`` variant: the row loop replaced by ``TWO_WORDS_LOOP``, a slot two chunks' values, ``walk_word`` added."""
    start = text.index("  for (int row = blockIdx.x * WARPS_PER_BLOCK + warp;")
    text = text[:start] + TWO_WORDS_LOOP
    text = text.replace("#define VALUE_SLOTS (CHUNK_COLUMNS + 8)", "#define VALUE_SLOTS (2 * CHUNK_COLUMNS + 8)")
    return text.replace('\nextern "C" __global__', WALK_WORD, 1)


def _replacing(*pairs: tuple[str, str]):
    """A variant: each ``old`` (found exactly once) replaced by ``new``."""
    def apply(text: str) -> str:
        for old, new in pairs:
            assert text.count(old) == 1, old[:60]
            text = text.replace(old, new)
        return text
    return apply


COPY_UNROLL1 = _replacing((COPY_LOOP, "#pragma unroll 1\n" + COPY_LOOP))
POINTER = _replacing((PRODUCT_LOOP, POINTER_LOOP))
# name: (the source change, chunks a step, which sizes the warps' value slots)
VARIANTS = {
    "base": (_replacing(), 1),
    "copy_unroll1": (COPY_UNROLL1, 1),
    "products_unroll2": (_replacing((PRODUCT_LOOP, PRODUCT_LOOP.replace("#pragma unroll 4", "#pragma unroll 2"))), 1),
    "products_unroll1": (_replacing((PRODUCT_LOOP, PRODUCT_LOOP.replace("#pragma unroll 4", "#pragma unroll 1"))), 1),
    "pointer": (POINTER, 1),
    "pointer_copy_unroll1": (lambda text: COPY_UNROLL1(POINTER(text)), 1),
    "two_words": (_two_words, 2),
    "two_words_copy_unroll1": (lambda text: COPY_UNROLL1(_two_words(text)), 2),
}


def use(name: str) -> None:
    """Make ``bitmask_walk`` (and so ``Launch.one_token="walk"``, the default at one token from 55 %) run variant ``name``:
    its kernel, source and slot size replaced in the module, which its launch reads at each call."""
    change, chunks_a_step = VARIANTS[name]
    base = bitmask_walk.KERNEL
    bitmask_walk.KERNEL = OneTokenKernel(base.name, change(BASE), base.launch_name, base.what, base.min_capability,
                                         base.capability_reason, base.fixed_defines)
    bitmask_walk.SOURCE = bitmask_walk.KERNEL.source
    bitmask_walk.VALUE_SLOTS = chunks_a_step * CHUNK_COLUMNS + 8  # shared_bytes reads it


def _benchmark_module(name: str):
    """Another script of benchmarks/ as a module (loaded from its file)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check() -> None:
    """Per variant: registers, instructions and instructions a product in its sm_90 code (NVRTC, no GPU needed)."""
    sass = _benchmark_module("bitmask_kernel_sass")
    for name in VARIANTS:
        use(name)
        with tempfile.TemporaryDirectory() as folder:
            cubin = Path(folder) / "walk.cubin"
            cubin.write_bytes(bitmask_walk.KERNEL.cubin("sm_90", torch.float16, 8))
            usage = subprocess.run([sass._cuobjdump(), "-res-usage", str(cubin)], capture_output=True, text=True, check=True).stdout
            listing = subprocess.run([sass._cuobjdump(), "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
        instructions = sum(1 for line in listing.splitlines() if line.strip().startswith("/*") and ";" in line)
        per_product = [f"{block['per']:.2f}" for block in sass.cuda_kernel_blocks("walk")]
        print(f"{name:22s} {usage.split('REG:')[1].split()[0]} registers, {instructions} instructions, {per_product} a product", flush=True)


def bench(out: Path) -> None:
    module = _benchmark_module("bench_bitmask_kernel")
    module.ONE_TOKEN_LABELS = {"kept": "kept (CUDA)", "walk": "walk (CUDA)", "chunks": "chunks (Triton)"}
    figures = {}
    for name in VARIANTS:
        use(name)
        results = []
        try:
            for shape_name, shape in module.SHAPES.items():
                results += module.measure(shape_name, shape, [0.7, 1.0], [1], 256 * 2**20, 20, {})
        except Exception as error:  # noqa: BLE001 - a variant that fails is reported, the others still run
            print(name, "failed:", repr(error)[:500], flush=True)
            continue
        walk = [r for r in results if r["launch_label"] == "walk (CUDA)"]
        figures[name] = {f"{r['linear']} {r['sparsity']:.0%}": r["sparse_us"] for r in walk}
        # the default launch, this variant at every case here, against F.linear on one copy
        print(name, "largest difference to F.linear:", max(r["max_abs_difference"] for r in walk), flush=True)
        print(name, json.dumps({k: round(v, 2) for k, v in figures[name].items()}), flush=True)
    (out / "walk_variants.json").write_text(json.dumps(figures) + "\n")
    for name in figures:
        print(f"{name:22s}", " ".join(f"{key}: {figures['base'][key] / value:.3f}" for key, value in figures[name].items()), "(base/variant)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["check", "bench"])
    parser.add_argument("out", type=Path, nargs="?", help="bench: the folder for walk_variants.json")
    args = parser.parse_args()
    if args.what == "check":
        check()
    elif args.out is None:
        parser.error("bench needs OUT, the folder for walk_variants.json")
    else:
        bench(args.out)


if __name__ == "__main__":
    main()
