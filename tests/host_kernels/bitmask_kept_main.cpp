// The kept-weights kernel (sparsebench/kernels/bitmask_kept.py, written to kernel.cu) run on the CPU by warp_emulation.h.
// Usage: bitmask_kept_main FOLDER ROWS WORDS_PER_ROW CHUNKS HAS_BIAS
// Reads FOLDER/{x,values,words,offsets,bias}.bin (raw little-endian arrays, each in a buffer of its exact size, so that
// AddressSanitizer reports any access outside them) and writes FOLDER/out.bin ([ROWS] 16-bit values).
#include "warp_emulation.h"
#include "kernel.cu"

#include <string>

static std::vector<unsigned char> read_file(const std::string& path) {
  FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) { std::fprintf(stderr, "cannot open %s\n", path.c_str()); std::exit(2); }
  std::fseek(file, 0, SEEK_END);
  const long size = std::ftell(file);
  std::fseek(file, 0, SEEK_SET);
  std::vector<unsigned char> bytes(static_cast<size_t>(size));
  if (size > 0 && std::fread(bytes.data(), 1, bytes.size(), file) != bytes.size()) { std::fprintf(stderr, "short read of %s\n", path.c_str()); std::exit(2); }
  std::fclose(file);
  return bytes;
}

template <class T>
static T* exact_buffer(const std::string& path) {  // a heap buffer of exactly the file's size (at least one element)
  const std::vector<unsigned char> bytes = read_file(path);
  T* buffer = static_cast<T*>(std::malloc(bytes.empty() ? sizeof(T) : bytes.size()));
  std::memcpy(buffer, bytes.data(), bytes.size());
  return buffer;
}

int main(int argc, char** argv) {
  if (argc != 6) { std::fprintf(stderr, "usage: %s FOLDER ROWS WORDS_PER_ROW CHUNKS HAS_BIAS\n", argv[0]); return 2; }
  const std::string folder = argv[1];
  const int rows = std::atoi(argv[2]), words_per_row = std::atoi(argv[3]), chunks = std::atoi(argv[4]), has_bias = std::atoi(argv[5]);
  const auto* x = exact_buffer<unsigned short>(folder + "/x.bin");
  const auto* values = exact_buffer<unsigned short>(folder + "/values.bin");
  const auto* words = exact_buffer<unsigned int>(folder + "/words.bin");
  const auto* offsets = exact_buffer<int>(folder + "/offsets.bin");
  const auto* bias = has_bias ? exact_buffer<unsigned short>(folder + "/bias.bin") : x;
  auto* out = static_cast<unsigned short*>(std::malloc(sizeof(unsigned short) * rows));
  const dim3 grid{static_cast<unsigned int>((rows + WARPS_PER_BLOCK - 1) / WARPS_PER_BLOCK), 1, 1};
  const dim3 block{32 * WARPS_PER_BLOCK, 1, 1};
  emu::launch(grid, block, [&] { bitmask_kept_gemv(x, values, words, offsets, bias, out, rows, words_per_row, chunks, has_bias); });
  FILE* file = std::fopen((folder + "/out.bin").c_str(), "wb");
  std::fwrite(out, sizeof(unsigned short), rows, file);
  std::fclose(file);
  return 0;
}
