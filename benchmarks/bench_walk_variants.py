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

from sparsebench.kernels import bitmask_linear, bitmask_walk
from sparsebench.kernels.one_token_cuda import CHUNK_COLUMNS, OneTokenKernel
from sparsebench.kernels.one_token_cuda import WARPS_PER_BLOCK as DEFAULT_WARPS

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


LEAN_HELPERS = r"""
// cp.async's destination as a shared-space byte address on the GPU (computed once a kernel, not a chunk); a pointer on the host
#if defined(__CUDA_ARCH__)
typedef unsigned int SharedAddress;
__device__ __forceinline__ SharedAddress shared_at(SharedAddress base, int halves) { return base + 2u * (unsigned int)halves; }
__device__ __forceinline__ SharedAddress to_shared_address(unsigned short* pointer) { return shared_address(pointer); }
__device__ __forceinline__ void copy_16_bytes_to(SharedAddress destination, const unsigned short* source) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(destination), "l"(source) : "memory");
}
__device__ __forceinline__ void copy_last_bytes_to(SharedAddress destination, const unsigned short* source, int source_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(destination), "l"(source), "r"(source_bytes) : "memory");
}
#else
typedef unsigned short* SharedAddress;
inline SharedAddress shared_at(SharedAddress base, int halves) { return base + halves; }
inline SharedAddress to_shared_address(unsigned short* pointer) { return pointer; }
inline void copy_16_bytes_to(SharedAddress destination, const unsigned short* source) { copy_16_bytes(destination, source); }
inline void copy_last_bytes_to(SharedAddress destination, const unsigned short* source, int source_bytes) {
  copy_last_bytes(destination, source, source_bytes);
}
#endif

// copy_chunk_values to a slot given by its shared address, the loop not unrolled
__device__ __forceinline__ int copy_values_to(SharedAddress slot, const unsigned short* values, int base, int total,
                                              int n_values, int lane) {
  const int first = base & ~7;
  const int stop = base + total;
  int index = first + 8 * lane;
  const unsigned short* source = values + index;
  SharedAddress destination = shared_at(slot, 8 * lane);
#pragma unroll 1
  for (; index < stop; index += 256, source += 256, destination = shared_at(destination, 256)) {
    if (index + 8 <= n_values) copy_16_bytes_to(destination, source);
    else copy_last_bytes_to(destination, source, 2 * (n_values - index));  // the piece that runs past the end of values
  }
  end_copy_group();
  return base - first;
}

extern "C" __global__"""

LEAN_LOOP = """  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  unsigned short* const warp_slots = value_slots;
  const SharedAddress slot_addresses[2] = {to_shared_address(warp_slots), to_shared_address(warp_slots + VALUE_SLOTS)};
  for (int row = blockIdx.x * WARPS_PER_BLOCK + warp; row < rows; row += gridDim.x * WARPS_PER_BLOCK) {
    RowChunks row_chunks(words, chunk_offsets, row, words_per_row, chunks, lane);
    unsigned int next_bits;
    int next_base;
    row_chunks.take(0, next_bits, next_base);
    SharedAddress copy_to = slot_addresses[0], copy_after = slot_addresses[1];
    const unsigned short* read_from = warp_slots;
    const unsigned short* read_after = warp_slots + VALUE_SLOTS;
    int next_lead = copy_values_to(copy_to, values, next_base, (int)__reduce_add_sync(FULL, __popc(next_bits)), n_values, lane);
    const unsigned short* x_word = x_shared + lane * GROUP_SLOTS;
    float sum = 0.0f;
    for (int chunk = 0; chunk < chunks; ++chunk, x_word += 32 * GROUP_SLOTS) {
      unsigned int walking = next_bits;
      const int lead = next_lead;
      const unsigned short* slots = read_from;
      if (chunk + 1 < chunks) {
        row_chunks.take(chunk + 1, next_bits, next_base);
        next_lead = copy_values_to(copy_after, values, next_base, (int)__reduce_add_sync(FULL, __popc(next_bits)), n_values, lane);
        wait_for_copies_but_one();
      } else {
        wait_for_all_copies();
      }
      { const SharedAddress swap = copy_to; copy_to = copy_after; copy_after = swap; }
      { const unsigned short* swap = read_from; read_from = read_after; read_after = swap; }
      const int count = __popc(walking);
      const int end = inclusive_scan(count, lane);
      __syncwarp();
      const unsigned short* value = slots + lead + end - 1;
#pragma unroll 4
      for (int left = count; left > 0; --left, --value) {
        const int bit = 31 - __clz(walking);
        sum += as_float(*value) * as_float(x_word[bit]);
        walking ^= 1u << bit;
      }
      __syncwarp();
    }
    store_row(sum, lane, row, bias, has_bias, out);
  }
}
"""


def _lean(text: str) -> str:
    """The ``lean`` variant: the slots' shared addresses computed once a kernel and swapped a chunk (not recomputed from
    the chunk's parity), the copy loop not unrolled, the product loop on a running value pointer."""
    start = text.index("  const int lane = threadIdx.x & 31;\n  const int warp = threadIdx.x >> 5;")
    text = text[:start] + LEAN_LOOP
    return text.replace('\nextern "C" __global__', LEAN_HELPERS, 1)


X_STAGING = """  unsigned short* value_slots = x_shared + ((words_per_row * GROUP_SLOTS + 7) & ~7) + (threadIdx.x >> 5) * 2 * VALUE_SLOTS;
  // x to shared memory, two columns (4 bytes) a copy, by the whole block
  const unsigned int* x_pairs = (const unsigned int*)x;
  for (int pair = threadIdx.x; pair < words_per_row * 16; pair += WARPS_PER_BLOCK * 32)
    *(unsigned int*)(x_shared + x_slot(2 * pair)) = __ldg(x_pairs + pair);"""
X_FLOATS_STAGING = """  // x as float32, column 1024 c + 32 w + b at 1024 c + 32 b + w: lane w reads bank w whatever its bit
  float* const x_float = (float*)x_shared;
  unsigned short* value_slots = x_shared + 2 * CHUNK_COLUMNS * chunks + (threadIdx.x >> 5) * 2 * VALUE_SLOTS;
  const unsigned int* x_pairs = (const unsigned int*)x;
  for (int pair = threadIdx.x; pair < words_per_row * 16; pair += WARPS_PER_BLOCK * 32) {
    const unsigned int both = __ldg(x_pairs + pair);
    const int column = 2 * pair;
    const int slot = (column & ~(CHUNK_COLUMNS - 1)) | ((column & 31) << 5) | ((column >> 5) & 31);
    x_float[slot] = as_float((unsigned short)(both & 0xffffu));
    x_float[slot + 32] = as_float((unsigned short)(both >> 16));
  }"""


X_FLOATS_STAGING_BY_WORD = """  // x as float32, column 1024 c + 32 w + b at 1024 c + 32 b + w: lane w reads bank w whatever its bit; a warp
  // stages one pair of columns of 32 words at a time, so that its stores take 32 banks
  float* const x_float = (float*)x_shared;
  unsigned short* value_slots = x_shared + 2 * CHUNK_COLUMNS * chunks + (threadIdx.x >> 5) * 2 * VALUE_SLOTS;
  const unsigned int* x_pairs = (const unsigned int*)x;
  for (int index = threadIdx.x; index < chunks * (CHUNK_COLUMNS / 2); index += WARPS_PER_BLOCK * 32) {
    const int chunk = index / (CHUNK_COLUMNS / 2), w = index & 31, pair_in_word = (index >> 5) & 15;
    const int column = chunk * CHUNK_COLUMNS + 32 * w + 2 * pair_in_word;
    if (column < 32 * words_per_row) {
      const unsigned int both = __ldg(x_pairs + (column >> 1));
      const int slot = chunk * CHUNK_COLUMNS + (2 * pair_in_word << 5) + w;
      x_float[slot] = as_float((unsigned short)(both & 0xffffu));
      x_float[slot + 32] = as_float((unsigned short)(both >> 16));
    }
  }"""


def _x_floats(text: str, staging: str = X_FLOATS_STAGING) -> str:
    """``x`` staged as float32 in a bank-conflict-free order (``X_FLOATS_STAGING``): no conversion a product, and the
    lanes' reads of ``x`` in one wavefront (random columns of the padded float16 layout take about 2.4)."""
    text = _replacing((X_STAGING, staging))(text)
    return _replacing(("    const unsigned short* x_word = x_shared + lane * GROUP_SLOTS;\n", "    const float* x_word = x_float + lane;\n"),
                      ("for (int chunk = 0; chunk < chunks; ++chunk, x_word += 32 * GROUP_SLOTS)",
                       "for (int chunk = 0; chunk < chunks; ++chunk, x_word += CHUNK_COLUMNS)"),
                      ("sum += as_float(*value) * as_float(x_word[bit]);", "sum += as_float(*value) * x_word[bit << 5];"))(text)


def x_floats_shared_bytes(cols: int, warps_per_block: int = 8) -> int:
    """``shared_bytes`` of an ``x_floats`` variant: ``x`` as float32, whole chunks, then the warps' slots."""
    return 4 * CHUNK_COLUMNS * -(-cols // CHUNK_COLUMNS) + 2 * warps_per_block * 2 * bitmask_walk.VALUE_SLOTS


X_FLOATS_PRODUCTS = """      const unsigned short* value = slots + lead + end - 1;
#pragma unroll 4
      for (int left = count; left > 0; --left, --value) {
        const int bit = 31 - __clz(walking);
        sum += as_float(*value) * x_word[bit << 5];
        walking ^= 1u << bit;
      }"""
PAIRS_PRODUCTS = """      const unsigned short* value = slots + lead + end - 1;
      int left = count;
      if (left > 0 && ((value - slots) & 1) == 0) {  // the last value opens a 4-byte word: taken alone
        const int bit = 31 - __clz(walking);
        sum += as_float(*value) * x_word[bit << 5];
        walking ^= 1u << bit;
        --left;
        --value;
      }
      const unsigned int* pair = (const unsigned int*)(value - 1);  // values 2 a load, the upper half first
#pragma unroll 2
      for (; left >= 2; left -= 2, --pair) {
        const unsigned int both = *pair;
        int bit = 31 - __clz(walking);
        sum += as_float((unsigned short)(both >> 16)) * x_word[bit << 5];
        walking ^= 1u << bit;
        bit = 31 - __clz(walking);
        sum += as_float((unsigned short)(both & 0xffffu)) * x_word[bit << 5];
        walking ^= 1u << bit;
      }
      if (left > 0) {  // the first value, the upper half of its word
        const int bit = 31 - __clz(walking);
        sum += as_float((unsigned short)(*pair >> 16)) * x_word[bit << 5];
      }"""


LEAN_PRODUCTS = """      const unsigned short* value = slots + lead + end - 1;
#pragma unroll 4
      for (int left = count; left > 0; --left, --value) {
        const int bit = 31 - __clz(walking);
        sum += as_float(*value) * as_float(x_word[bit]);
        walking ^= 1u << bit;
      }"""
SMALL_SLOTS = 520  # halves a slot in the small_slots variants: chunks of at most 512 values (a timing probe, not a kernel)


def _small_slots(text: str) -> str:
    """Slots of ``SMALL_SLOTS`` halves and at least 48 warps a multiprocessor asked of the compiler: whether more resident
    warps (shared memory allowing) make the kernel faster. Wrong for a chunk of more than 512 values: for timing at
    70 % only (about 307 values a chunk)."""
    return _replacing(("#define VALUE_SLOTS (CHUNK_COLUMNS + 8)", f"#define VALUE_SLOTS {SMALL_SLOTS}"),
                      ("__launch_bounds__(WARPS_PER_BLOCK * 32)", "__launch_bounds__(WARPS_PER_BLOCK * 32, 48 / WARPS_PER_BLOCK)"))(text)


def _pairs(products: str, x_read: str):
    """The product loop ``products`` replaced by ``PAIRS_PRODUCTS`` with ``x`` read as ``x_read``."""
    return _replacing((products, PAIRS_PRODUCTS.replace("x_word[bit << 5]", x_read)))


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
    "lean": (_lean, 1),
    "lean_x_floats": (lambda text: _x_floats(_lean(text)), 1),
    "lean_x_floats_16_warps": (lambda text: _x_floats(_lean(text)), 1),
    "lean_x_floats_pairs": (lambda text: _pairs(X_FLOATS_PRODUCTS, "x_word[bit << 5]")(_x_floats(_lean(text))), 1),
    "lean_x_floats_by_word": (lambda text: _x_floats(_lean(text), X_FLOATS_STAGING_BY_WORD), 1),
    "lean_x_floats_by_word_pairs": (lambda text: _pairs(X_FLOATS_PRODUCTS, "x_word[bit << 5]")(_x_floats(_lean(text), X_FLOATS_STAGING_BY_WORD)), 1),
    "lean_pairs": (lambda text: _pairs(LEAN_PRODUCTS, "as_float(x_word[bit])")(_lean(text)), 1),
    "lean_small_slots": (lambda text: _small_slots(_lean(text)), 1),
    "lean_pairs_small_slots": (lambda text: _small_slots(_pairs(LEAN_PRODUCTS, "as_float(x_word[bit])")(_lean(text))), 1),
}
SLOTS = {"lean_small_slots": SMALL_SLOTS, "lean_pairs_small_slots": SMALL_SLOTS}  # value slots other than a chunk's (halves)
X_FLOATS = {"lean_x_floats", "lean_x_floats_16_warps", "lean_x_floats_pairs", "lean_x_floats_by_word", "lean_x_floats_by_word_pairs"}  # variants whose x is float32 (x_floats_shared_bytes)
WARPS = {"lean_x_floats_16_warps": 16}  # variants launched with other than the default eight warps a block
BASE_SHARED_BYTES = bitmask_walk.shared_bytes


def use(name: str) -> None:
    """Make ``bitmask_walk`` (and so ``Launch.one_token="walk"``, the default at one token from 55 %) run variant ``name``:
    its kernel, source and slot size replaced in the module, which its launch reads at each call."""
    change, chunks_a_step = VARIANTS[name]
    base = bitmask_walk.KERNEL
    bitmask_walk.KERNEL = OneTokenKernel(base.name, change(BASE), base.launch_name, base.what, base.min_capability,
                                         base.capability_reason, base.fixed_defines)
    bitmask_walk.SOURCE = bitmask_walk.KERNEL.source
    bitmask_walk.VALUE_SLOTS = SLOTS.get(name, chunks_a_step * CHUNK_COLUMNS + 8)  # shared_bytes reads it
    bitmask_walk.shared_bytes = x_floats_shared_bytes if name in X_FLOATS else BASE_SHARED_BYTES
    bitmask_linear.CUDA_WARPS_PER_BLOCK = WARPS.get(name, DEFAULT_WARPS)  # one_token_launch reads it


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


def bench(out: Path, names: list[str]) -> None:
    module = _benchmark_module("bench_bitmask_kernel")
    module.ONE_TOKEN_LABELS = {"kept": "kept (CUDA)", "walk": "walk (CUDA)", "chunks": "chunks (Triton)"}
    figures = {}
    for name in names:
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
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="bench: the variants timed (base always)")
    args = parser.parse_args()
    if args.what == "check":
        check()
    elif args.out is None:
        parser.error("bench needs OUT, the folder for walk_variants.json")
    else:
        bench(args.out, ["base"] + [name for name in args.variants if name != "base"])


if __name__ == "__main__":
    main()
