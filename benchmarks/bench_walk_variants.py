"""Source variants of the walking kernel (``sparsebench/kernels/bitmask_walk.py``), each a few string replacements of
its ``SOURCE``, timed against it in one run: candidates tried here before any of them changes the kernel
(docs/efficiency.md, "Variants of the walking kernel").

  python benchmarks/bench_walk_variants.py check        # CPU: each variant compiled by NVRTC for sm_90 (registers,
                                                         # instructions, instructions a product)
  python benchmarks/bench_walk_variants.py bench OUT [--variants NAME ...] [--fused]
                                                         # GPU: one token at 70 % and on an empty weight (the fixed
                                                         # part), each LLaMA-2-7B shape (--fused: q/k/v and gate/up as
                                                         # one product each too); prints each variant's largest
                                                         # difference to F.linear, base / variant per case (above 1:
                                                         # the variant is faster) and F.linear / variant at 70 %;
                                                         # writes OUT/walk_variants.json
  python benchmarks/bench_walk_variants.py e2e NAME ARGS...
                                                         # GPU: benchmarks/bench_efficiency.py ARGS with the walking
                                                         # kernel replaced by variant NAME (the whole model)

Variants: ``balanced`` (a block's rows split in equal runs of chunks between its warps, a run crossing rows, instead of
a warp a row: no warp has a row more than another; a block's rows as many as the grid allows; the first loads asked
for before ``x`` is staged), with 16 warps a block, and ``balanced_pdl`` (the same launched as a programmatic
dependent launch on compute capability 9.0: it may start while the kernel before it ends, waiting for it before it
reads ``x``); ``two_ended`` (each lane walks its word from both ends, two bits a step into two sums); ``pairs`` (the values read two a 32-bit load, a lone value first where the lane's last one opens a word and
last where its first one closes one); ``x_floats`` (``x`` staged as float32 with column ``1024 c + 32 w + b`` at
``1024 c + 32 b + w``, so that lane ``w`` always reads bank ``w`` and no product converts ``x``; 4 bytes a column of
shared memory against 2.1), with ``pairs`` and with 16 warps a block; ``small_slots`` (slots of 520 values, so that
more warps fit a multiprocessor: a probe of occupancy, wrong for a chunk of more than 512 values, so timed at 70 %
only; ``bench`` prints its largest difference to F.linear there). ``check`` needs g++ and the NVRTC wheel, ``bench`` a
CUDA GPU. The variants of the kernel before commit 5e0e2df (the unrolled copy loop, two words a lane, ...) and their
H100 timings are in this script at commit ae5a72d and in docs/efficiency.md.
"""
import argparse
import json
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from sparsebench.kernels import bitmask_linear, bitmask_walk
from sparsebench.kernels.one_token_cuda import CHUNK_COLUMNS, OneTokenKernel
from sparsebench.kernels.one_token_cuda import WARPS_PER_BLOCK as DEFAULT_WARPS

BASE = bitmask_walk.SOURCE
PRODUCTS = """      const unsigned short* value = slots + lead + end - 1;
#pragma unroll 4
      for (int left = count; left > 0; --left, --value) {
        const int bit = 31 - __clz(walking);
        sum += as_float(*value) * as_float(x_word[bit]);
        walking ^= 1u << bit;  // that bit cleared
      }"""
PAIRS_PRODUCTS = """      const unsigned short* value = slots + lead + end - 1;
      int left = count;
      if (left > 0 && ((value - slots) & 1) == 0) {  // the last value opens a 4-byte word: taken alone
        const int bit = 31 - __clz(walking);
        sum += as_float(*value) * X_AT(bit);
        walking ^= 1u << bit;
        --left;
        --value;
      }
      const unsigned int* pair = (const unsigned int*)(value - 1);  // values 2 a load, the upper half first
#pragma unroll 2
      for (; left >= 2; left -= 2, --pair) {
        const unsigned int both = *pair;
        int bit = 31 - __clz(walking);
        sum += as_float((unsigned short)(both >> 16)) * X_AT(bit);
        walking ^= 1u << bit;
        bit = 31 - __clz(walking);
        sum += as_float((unsigned short)(both & 0xffffu)) * X_AT(bit);
        walking ^= 1u << bit;
      }
      if (left > 0) {  // the first value, the upper half of its word
        const int bit = 31 - __clz(walking);
        sum += as_float((unsigned short)(*pair >> 16)) * X_AT(bit);
      }"""
TWO_ENDED_PRODUCTS = """      const unsigned short* high = slots + lead + end - 1;  // the run's last value, for the word's highest bit
      const unsigned short* low = high - count + 1;  // its first, for the lowest bit
      float low_sum = 0.0f;
#pragma unroll 2
      for (int pairs = count >> 1; pairs > 0; --pairs, --high, ++low) {  // two bits a step, one from each end
        const int top = 31 - __clz(walking);
        const int bottom = __ffs(walking) - 1;
        sum += as_float(*high) * as_float(x_word[top]);
        low_sum += as_float(*low) * as_float(x_word[bottom]);
        walking = (walking & (walking - 1u)) ^ (1u << top);  // both cleared
      }
      if (count & 1) sum += as_float(*high) * as_float(x_word[31 - __clz(walking)]);
      sum += low_sum;"""
X_STAGING = """  unsigned short* value_slots = x_shared + ((words_per_row * GROUP_SLOTS + 7) & ~7) + (threadIdx.x >> 5) * 2 * VALUE_SLOTS;
  // x to shared memory, two columns (4 bytes) a copy, by the whole block
  const unsigned int* x_pairs = (const unsigned int*)x;
  for (int pair = threadIdx.x; pair < words_per_row * 16; pair += WARPS_PER_BLOCK * 32)
    *(unsigned int*)(x_shared + x_slot(2 * pair)) = __ldg(x_pairs + pair);"""
X_FLOATS_STAGING = """  // x as float32, column 1024 c + 32 w + b at 1024 c + 32 b + w: lane w reads bank w whatever its bit; a warp
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
PDL_HELPERS = r"""// programmatic dependent launch (compute capability 9.0; no-ops in a plain launch): the next kernel on the stream may
// start now (it waits for this one before it touches what this one writes), and this one waits for the kernel before
// it to end (and its writes to be seen) before it reads x or writes anything; what comes before reads only the weight
__device__ __forceinline__ void let_next_kernel_start() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void wait_for_kernel_before() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

"""
BALANCED_KERNEL = r"""@PDL_HELPERS@// the mask words (one a lane) and chunk_offsets entries of a warp's run of items (a row's chunk each, row after row),
// one item a call: each is asked for two items before its values are multiplied
struct ItemLoads {
  const unsigned int* word;  // this lane's word of the next item
  const int* offset;  // the next item's chunk_offsets entry
  int words_per_row, chunks, chunk, left, lane;

  __device__ __forceinline__ ItemLoads(const unsigned int* words, const int* chunk_offsets, int row, int chunk_, int items,
                                       int words_per_row_, int chunks_, int lane_)
      : word(words + (size_t)row * words_per_row_ + 32 * chunk_ + lane_), offset(chunk_offsets + (size_t)row * chunks_ + chunk_),
        words_per_row(words_per_row_), chunks(chunks_), chunk(chunk_), left(items), lane(lane_) {}

  // the next item's mask word of this lane and the index in values of its first kept weight (0 and 0 past the run)
  __device__ __forceinline__ void load(unsigned int& bits, int& base) {
    if (left <= 0) { bits = 0u; base = 0; return; }
    bits = 32 * chunk + lane < words_per_row ? __ldg(word) : 0u;
    base = __ldg(offset);
    --left;
    ++offset;  // chunk_offsets is [rows, chunks]: an item's entry follows the one before
    if (++chunk == chunks) { chunk = 0; word += words_per_row - 32 * (chunks - 1); }
    else word += 32;
  }
};

// the warp's float32 sum (every lane gets it)
__device__ __forceinline__ float warp_total(float sum) {
#pragma unroll
  for (int step = 16; step > 0; step >>= 1) sum += __shfl_xor_sync(FULL, sum, step);
  return sum;
}

__device__ __forceinline__ void write_row(float total, int row, const unsigned short* __restrict__ bias, int has_bias,
                                          unsigned short* __restrict__ out) {
  if (has_bias) total += as_float(bias[row]);
  out[row] = from_float(total);
}

// the first of a block's items (rows row0.. times chunks) that warp `warp` takes
__device__ __forceinline__ int first_item_of(int warp, int items) { return warp * items / WARPS_PER_BLOCK; }

@SIGNATURE@
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  // after x (rounded up to 16 bytes), each warp's slots for two chunks' values, then a float a warp (first_partial)
  unsigned short* const all_slots = x_shared + ((words_per_row * GROUP_SLOTS + 7) & ~7);
  unsigned short* const value_slots = all_slots + warp * 2 * VALUE_SLOTS;
  float* const first_partial = (float*)(all_slots + WARPS_PER_BLOCK * 2 * VALUE_SLOTS);
  // the block's rows, row0 to row1, as equal as the grid allows; their chunks ("items", row after row) split between the
  // warps in equal runs, so that no warp has a row more than another (a warp's run may start or end inside a row)
  const int row0 = (int)((long long)blockIdx.x * rows / gridDim.x);
  const int row1 = (int)((long long)(blockIdx.x + 1) * rows / gridDim.x);
  const int items = (row1 - row0) * chunks;
  const int first_item = first_item_of(warp, items), end_item = first_item_of(warp + 1, items);
  int row = row0 + first_item / chunks, chunk = first_item % chunks;
  let_next_kernel_start();
  // the first two items' mask words and the first's values are asked for before x is staged, so that their loads overlap
  ItemLoads loads(words, chunk_offsets, row, chunk, end_item - first_item, words_per_row, chunks, lane);
  unsigned int walking_next, next_bits;
  int next_base;
  loads.load(walking_next, next_base);
  SharedAddress copy_to = to_shared_address(value_slots), copy_next = to_shared_address(value_slots + VALUE_SLOTS);
  const unsigned short* read_from = value_slots;
  const unsigned short* read_next = value_slots + VALUE_SLOTS;
  const int first_base = next_base;
  loads.load(next_bits, next_base);
  wait_for_kernel_before();
  // x to shared memory, two columns (4 bytes) a copy, by the whole block
  const unsigned int* x_pairs = (const unsigned int*)x;
  for (int pair = threadIdx.x; pair < words_per_row * 16; pair += WARPS_PER_BLOCK * 32)
    *(unsigned int*)(x_shared + x_slot(2 * pair)) = __ldg(x_pairs + pair);
  int next_lead = copy_chunk_values(copy_to, values, first_base, (int)__reduce_add_sync(FULL, __popc(walking_next)), n_values, lane);
  __syncthreads();
  const unsigned short* x_word = x_shared + lane * GROUP_SLOTS + chunk * 32 * GROUP_SLOTS;  // this lane's 32 columns of the chunk
  bool owns_row = chunk == 0;  // the row's first chunk is the warp's: the warp writes it (its other warps' sums added)
  bool row_pending = false;  // the warp's last row goes on in the next warps' runs: written after the barrier below
  float sum = 0.0f, pending = 0.0f;
  for (int item = first_item; item < end_item; ++item) {
    unsigned int walking = walking_next;
    const int lead = next_lead;
    const unsigned short* slots = read_from;
    if (item + 1 < end_item) {  // the next item's values are copied (its mask words came an item ago), and the one after's words asked for
      walking_next = next_bits;
      next_lead = copy_chunk_values(copy_next, values, next_base, (int)__reduce_add_sync(FULL, __popc(next_bits)), n_values, lane);
      loads.load(next_bits, next_base);
      wait_for_copies_but_one();
    } else {
      wait_for_all_copies();
    }
@CHUNK_WALK@
    const bool row_ends = chunk == chunks - 1;
    if (row_ends || item + 1 == end_item) {  // the warp's share of the row is done
      const float total = warp_total(sum);
      sum = 0.0f;
      if (!owns_row) {
        if (lane == 0) first_partial[warp] = total;  // added by the row's owner after the barrier
      } else if (row_ends) {
        if (lane == 0) write_row(total, row, bias, has_bias, out);
      } else {
        pending = total;
        row_pending = true;
      }
    }
    if (row_ends) {
      ++row;
      chunk = 0;
      x_word = x_shared + lane * GROUP_SLOTS;
      owns_row = true;
    } else {
      ++chunk;
      x_word += 32 * GROUP_SLOTS;
    }
  }
  __syncthreads();  // every warp's first_partial written
  if (row_pending) {  // the runs of the next warps that start inside this row, in order
    const int row_end_item = (row - row0 + 1) * chunks;
    for (int next = warp + 1; next < WARPS_PER_BLOCK; ++next) {
      const int start = first_item_of(next, items);
      if (start >= row_end_item) break;
      if (start < first_item_of(next + 1, items)) pending += first_partial[next];
    }
    if (lane == 0) write_row(pending, row, bias, has_bias, out);
  }
}
"""
SMALL_SLOTS = 520  # halves a slot in the small_slots variants: chunks of at most 512 values (a timing probe, not a kernel)


def _replacing(*pairs: tuple[str, str]):
    """A variant: each ``old`` (found exactly once) replaced by ``new``."""
    def apply(text: str) -> str:
        for old, new in pairs:
            assert text.count(old) == 1, old[:60]
            text = text.replace(old, new)
        return text
    return apply


def _pairs(text: str) -> str:
    """``pairs``: the product loop on values read two a load (``PAIRS_PRODUCTS``), ``x`` as the kernel reads it."""
    return _replacing((PRODUCTS, PAIRS_PRODUCTS.replace("X_AT(bit)", "as_float(x_word[bit])")))(text)


def _x_floats(text: str) -> str:
    """``x_floats``: ``x`` staged as float32 in a bank-conflict-free order (``X_FLOATS_STAGING``), read without a conversion."""
    return _replacing((X_STAGING, X_FLOATS_STAGING),
                      ("    const unsigned short* x_word = x_shared + lane * GROUP_SLOTS;  // this lane's 32 columns of the chunk\n",
                       "    const float* x_word = x_float + lane;\n"),
                      ("for (int chunk = 0; chunk < chunks; ++chunk, x_word += 32 * GROUP_SLOTS)",
                       "for (int chunk = 0; chunk < chunks; ++chunk, x_word += CHUNK_COLUMNS)"),
                      ("sum += as_float(*value) * as_float(x_word[bit]);", "sum += as_float(*value) * x_word[bit << 5];"))(text)


def _x_floats_pairs(text: str) -> str:
    return _replacing((PRODUCTS.replace("as_float(x_word[bit])", "x_word[bit << 5]"),
                       PAIRS_PRODUCTS.replace("X_AT(bit)", "x_word[bit << 5]")))(_x_floats(text))


def _small_slots(text: str) -> str:
    """Slots of ``SMALL_SLOTS`` halves, and at least 48 warps a multiprocessor asked of the compiler."""
    return _replacing(("#define VALUE_SLOTS (CHUNK_COLUMNS + 8)", f"#define VALUE_SLOTS {SMALL_SLOTS}"),
                      ("__launch_bounds__(WARPS_PER_BLOCK * 32)", "__launch_bounds__(WARPS_PER_BLOCK * 32, 48 / WARPS_PER_BLOCK)"))(text)


def _balanced(text: str) -> str:
    """``balanced``: the kernel of ``BALANCED_KERNEL`` (a block's rows split in equal runs of chunks between its warps;
    the first loads asked for before ``x`` is staged) in place of the base's row walk, a chunk walked as the base walks
    it (its lines from the slots' swap to the fence after the products, one level less indented), under the base's
    signature."""
    first = "      { const SharedAddress swap = copy_to;"
    last = "      __syncwarp();  // these slots take the chunk after next\n"
    walk = text[text.index(first):text.index(last) + len(last)]
    walk = "\n".join(line[2:] if line.startswith("  ") else line for line in walk.splitlines()).replace("take the chunk after next", "take the item after next")
    signature = 'extern "C"', "  unsigned short* x_shared = static_cast<unsigned short*>(emu::dynamic_shared());\n#endif\n"
    head = text[text.index(signature[0]):text.index(signature[1]) + len(signature[1])]  # its signature and x_shared
    start, end = text.index("// a row's mask words"), text.index("// where column `column` of x sits")
    text = text[:start] + text[end:]
    return text[:text.index('extern "C"')] + BALANCED_KERNEL.replace("@PDL_HELPERS@", PDL_HELPERS).replace("@SIGNATURE@\n", head).replace("@CHUNK_WALK@", walk)


def _base_pdl(text: str) -> str:
    """``base_pdl``: the base kernel written for a programmatic dependent launch: the next kernel may start at once,
    and this one waits for the one before it before it stages ``x``."""
    return _replacing(('extern "C"', PDL_HELPERS + 'extern "C"'),
                      ("  const unsigned int* x_pairs = (const unsigned int*)x;\n",
                       "  wait_for_kernel_before();\n  const unsigned int* x_pairs = (const unsigned int*)x;\n"),
                      ("  unsigned short* value_slots = x_shared +", "  let_next_kernel_start();\n  unsigned short* value_slots = x_shared +"))(text)


def balanced_shared_bytes(cols: int, warps_per_block: int = DEFAULT_WARPS) -> int:
    """``shared_bytes`` of ``balanced``: the base's, then a float a warp (its first row's share, when another warp owns it)."""
    return BASE_SHARED_BYTES(cols, warps_per_block) + 4 * warps_per_block


def balanced_grid_blocks(rows: int, chunks: int, warps_per_block: int, resident: int) -> int:
    """``balanced``'s grid: the resident blocks, or fewer where the weight has less than a chunk a warp."""
    return max(1, min(resident, -(-rows * chunks // warps_per_block)))


def x_floats_shared_bytes(cols: int, warps_per_block: int = DEFAULT_WARPS) -> int:
    """``shared_bytes`` of the ``x_floats`` variants: ``x`` as float32 in whole chunks, then the warps' slots."""
    return 4 * CHUNK_COLUMNS * -(-cols // CHUNK_COLUMNS) + 2 * warps_per_block * 2 * bitmask_walk.VALUE_SLOTS


VARIANTS = {
    "base": _replacing(),
    "pairs": _pairs,
    "small_slots": _small_slots,
    "pairs_small_slots": lambda text: _small_slots(_pairs(text)),
    "x_floats": _x_floats,
    "x_floats_pairs": _x_floats_pairs,
    "x_floats_16_warps": _x_floats,
    "two_ended": _replacing((PRODUCTS, TWO_ENDED_PRODUCTS)),
    "balanced": _balanced,
    "balanced_16_warps": _balanced,
    "balanced_pdl": _balanced,
    "base_pdl": _base_pdl,
}
SLOTS = {"small_slots": SMALL_SLOTS, "pairs_small_slots": SMALL_SLOTS}  # value slots other than a chunk's (halves)
X_FLOATS = {"x_floats", "x_floats_pairs", "x_floats_16_warps"}  # variants whose x is float32 (x_floats_shared_bytes)
WARPS = {"x_floats_16_warps": 16, "balanced_16_warps": 16}  # variants launched with other than the default eight warps a block
BASE_SHARED_BYTES = bitmask_walk.shared_bytes
BASE_GRID_BLOCKS = bitmask_walk.grid_blocks
PROGRAMMATIC = {"balanced_pdl", "base_pdl"}  # variants launched as programmatic dependent launches (compute capability 9.0)
BALANCED = {"balanced", "balanced_16_warps", "balanced_pdl"}  # variants with balanced_shared_bytes and balanced_grid_blocks


def use(name: str) -> None:
    """Make ``bitmask_walk`` (and so ``Launch.one_token="walk"``, the default at one token from 55 %) run variant ``name``:
    its kernel, source and slot size replaced in the module, which its launch reads at each call."""
    base = bitmask_walk.KERNEL
    bitmask_walk.KERNEL = OneTokenKernel(base.name, VARIANTS[name](BASE), base.launch_name, base.what, base.min_capability,
                                         base.capability_reason, base.fixed_defines)
    bitmask_walk.SOURCE = bitmask_walk.KERNEL.source
    bitmask_walk.VALUE_SLOTS = SLOTS.get(name, CHUNK_COLUMNS + 8)  # shared_bytes reads it
    bitmask_walk.shared_bytes = x_floats_shared_bytes if name in X_FLOATS else balanced_shared_bytes if name in BALANCED else BASE_SHARED_BYTES
    bitmask_walk.grid_blocks = balanced_grid_blocks if name in BALANCED else BASE_GRID_BLOCKS
    bitmask_walk.PROGRAMMATIC_LAUNCH = name in PROGRAMMATIC
    bitmask_linear.CUDA_WARPS_PER_BLOCK = WARPS.get(name, DEFAULT_WARPS)  # one_token_launch reads it


def check() -> None:
    """Per variant: registers, instructions and instructions a product in its sm_90 code (NVRTC, no GPU needed)."""
    import bitmask_kernel_sass as sass  # a sibling in benchmarks/, the script's folder and so the first entry of sys.path
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


FUSED_SHAPES = {"q/k/v_fused": (3 * 4096, 4096), "gate/up_fused": (2 * 11008, 4096)}  # --fused: as fuse_projections runs them


def bench(out: Path, names: list[str], fused: bool = False) -> None:
    import bench_bitmask_kernel as module  # a sibling, as above
    module.ONE_TOKEN_LABELS = {"walk": "walk (CUDA)"}
    shapes = {**module.SHAPES, **(FUSED_SHAPES if fused else {})}
    figures, dense = {}, {}
    for name in names:
        use(name)
        results = []
        try:
            for shape_name, shape in shapes.items():
                results += module.measure(shape_name, shape, [0.7, 1.0], [1], 256 * 2**20, 20, {})
        except Exception as error:  # noqa: BLE001 - a variant that fails is reported, the others still run
            print(name, "failed:", repr(error)[:500], flush=True)
            continue
        walk = [r for r in results if r["launch_label"] == "walk (CUDA)"]
        figures[name] = {f"{r['linear']} {r['sparsity']:.0%}": r["sparse_us"] for r in walk}
        dense[name] = {f"{r['linear']} {r['sparsity']:.0%}": r["dense_us"] for r in walk}
        # the default launch, this variant at every case here, against F.linear on one copy
        print(name, "largest difference to F.linear:", max(r["max_abs_difference"] for r in walk), flush=True)
        print(name, json.dumps({k: round(v, 2) for k, v in figures[name].items()}), flush=True)
    (out / "walk_variants.json").write_text(json.dumps({"sparse_us": figures, "dense_us": dense}) + "\n")
    for name in figures:
        print(f"{name:22s}", " ".join(f"{key}: {figures['base'][key] / value:.3f}" for key, value in figures[name].items()), "(base/variant)")
    for name in figures:  # F.linear timed in the same variant's pass, against the variant
        print(f"{name:22s}", " ".join(f"{key}: {dense[name][key] / value:.3f}" for key, value in figures[name].items() if key.endswith("70%")),
              "(F.linear/variant)")


def whole_model(name: str, arguments: list[str]) -> None:
    """``benchmarks/bench_efficiency.py`` with ``arguments``, the walking kernel replaced by variant ``name`` (``use``)."""
    use(name)
    print("variant", name, flush=True)
    sys.argv = ["bench_efficiency.py", *arguments]
    runpy.run_path(str(Path(__file__).with_name("bench_efficiency.py")), run_name="__main__")


def main() -> None:
    if sys.argv[1:2] == ["e2e"]:  # e2e NAME ARGS...: bench_efficiency's own arguments follow, unparsed here
        if len(sys.argv) < 3 or sys.argv[2] not in VARIANTS:
            raise SystemExit(f"usage: bench_walk_variants.py e2e NAME ARGS... with NAME one of {', '.join(VARIANTS)}")
        whole_model(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["check", "bench"])
    parser.add_argument("out", type=Path, nargs="?", help="bench: the folder for walk_variants.json")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="bench: the variants timed (base always)")
    parser.add_argument("--fused", action="store_true", help="bench: also q/k/v and gate/up as one product each (FUSED_SHAPES)")
    args = parser.parse_args()
    if args.what == "check":
        check()
    elif args.out is None:
        parser.error("bench needs OUT, the folder for walk_variants.json")
    else:
        bench(args.out, ["base"] + [name for name in args.variants if name != "base"], args.fused)


if __name__ == "__main__":
    main()
