// The walking kernel (sparsebench/kernels/bitmask_walk.py, written to kernel.cu) run on the CPU by warp_emulation.h.
// Usage: bitmask_walk_main FOLDER ROWS WORDS_PER_ROW CHUNKS HAS_BIAS SHARED_BYTES [BLOCKS]
// Reads FOLDER/{x,values,words,offsets,bias}.bin and writes FOLDER/out.bin ([ROWS] 16-bit values). BLOCKS: the grid
// (default: a block every WARPS_PER_BLOCK rows; fewer make each warp take several rows, as on a GPU the grid of
// resident blocks does).
#include "warp_emulation.h"
#include "kernel.cu"
#include "harness_io.h"

int main(int argc, char** argv) {
  if (argc != 7 && argc != 8) { std::fprintf(stderr, "usage: %s FOLDER ROWS WORDS_PER_ROW CHUNKS HAS_BIAS SHARED_BYTES [BLOCKS]\n", argv[0]); return 2; }
  const std::string folder = argv[1];
  const int rows = std::atoi(argv[2]), words_per_row = std::atoi(argv[3]), chunks = std::atoi(argv[4]), has_bias = std::atoi(argv[5]);
  const size_t shared_bytes = static_cast<size_t>(std::atol(argv[6]));
  const BitmaskOperands in = read_operands(folder, rows, has_bias);
  const int blocks = argc == 8 ? std::atoi(argv[7]) : (rows + WARPS_PER_BLOCK - 1) / WARPS_PER_BLOCK;
  const dim3 grid{static_cast<unsigned int>(blocks), 1, 1};
  emu::launch(grid, dim3{32 * WARPS_PER_BLOCK, 1, 1}, shared_bytes, [&] {
    bitmask_walk_gemv(in.x, in.values, in.words, in.offsets, in.bias, in.out, rows, words_per_row, chunks, has_bias,
                      static_cast<int>(in.n_values));
  });
  write_file(folder + "/out.bin", in.out, sizeof(unsigned short) * rows);
  return 0;
}
