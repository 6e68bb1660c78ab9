// The walking kernel (sparsebench/kernels/bitmask_walk.py, written to kernel.cu) run on the CPU by warp_emulation.h;
// bitmask_stream_main.cpp runs the streaming one (bitmask_stream.py) through this file, with its slot size.
// Usage: bitmask_walk_main FOLDER ROWS WORDS_PER_ROW CHUNKS HAS_BIAS SHARED_BYTES [BLOCKS]
//        bitmask_stream_main FOLDER ROWS WORDS_PER_ROW CHUNKS HAS_BIAS SHARED_BYTES SLOT_VALUES [BLOCKS]
// Reads FOLDER/{x,values,words,offsets,bias}.bin and writes FOLDER/out.bin ([ROWS] 16-bit values). BLOCKS: the grid
// (default: a block every WARPS_PER_BLOCK rows; fewer make each warp take several rows, as on a GPU the grid of
// resident blocks does).
#include "warp_emulation.h"
#include "kernel.cu"
#include "harness_io.h"

#ifndef STAGED_KERNEL
#define STAGED_KERNEL bitmask_walk_gemv
#define SLOT_ARGUMENTS 0
#endif

int main(int argc, char** argv) {
  const int fixed = 7 + SLOT_ARGUMENTS;
  if (argc != fixed && argc != fixed + 1) {
    std::fprintf(stderr, "usage: %s FOLDER ROWS WORDS_PER_ROW CHUNKS HAS_BIAS SHARED_BYTES%s [BLOCKS]\n", argv[0],
                 SLOT_ARGUMENTS ? " SLOT_VALUES" : "");
    return 2;
  }
  const std::string folder = argv[1];
  const int rows = std::atoi(argv[2]), words_per_row = std::atoi(argv[3]), chunks = std::atoi(argv[4]), has_bias = std::atoi(argv[5]);
  const size_t shared_bytes = static_cast<size_t>(std::atol(argv[6]));
  const BitmaskOperands in = read_operands(folder, rows, has_bias);
  const int blocks = argc == fixed + 1 ? std::atoi(argv[fixed]) : (rows + WARPS_PER_BLOCK - 1) / WARPS_PER_BLOCK;
  const dim3 grid{static_cast<unsigned int>(blocks), 1, 1};
  emu::launch(grid, dim3{32 * WARPS_PER_BLOCK, 1, 1}, shared_bytes, [&] {
#if SLOT_ARGUMENTS
    STAGED_KERNEL(in.x, in.values, in.words, in.offsets, in.bias, in.out, rows, words_per_row, chunks, has_bias,
                  static_cast<int>(in.n_values), std::atoi(argv[7]));
#else
    STAGED_KERNEL(in.x, in.values, in.words, in.offsets, in.bias, in.out, rows, words_per_row, chunks, has_bias,
                  static_cast<int>(in.n_values));
#endif
  });
  write_file(folder + "/out.bin", in.out, sizeof(unsigned short) * rows);
  return 0;
}
