// Reading a kernel's operands for a host run (tests/test_kernels_on_the_host.py writes them): raw little-endian arrays,
// each in a heap buffer of exactly its file's size, so that AddressSanitizer reports any access outside them.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

inline std::vector<unsigned char> read_file(const std::string& path) {
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

// a heap buffer of exactly the file's size (at least one element), 16-byte aligned as a CUDA allocation is
template <class T>
T* exact_buffer(const std::string& path, size_t* count = nullptr) {
  const std::vector<unsigned char> bytes = read_file(path);
  T* buffer = static_cast<T*>(std::malloc(bytes.empty() ? sizeof(T) : bytes.size()));
  if (reinterpret_cast<uintptr_t>(buffer) % 16) { std::fprintf(stderr, "malloc gave an address that is not 16-byte aligned\n"); std::exit(2); }
  std::memcpy(buffer, bytes.data(), bytes.size());
  if (count != nullptr) *count = bytes.size() / sizeof(T);
  return buffer;
}

inline void write_file(const std::string& path, const void* data, size_t bytes) {
  FILE* file = std::fopen(path.c_str(), "wb");
  std::fwrite(data, 1, bytes, file);
  std::fclose(file);
}

// a one-token kernel's operands on the sparse-bitmask layout, read from FOLDER/{x,values,words,offsets,bias}.bin, and
// its output buffer of `rows` values
struct BitmaskOperands {
  const unsigned short* x;
  const unsigned short* values;
  size_t n_values;
  const unsigned int* words;
  const int* offsets;
  const unsigned short* bias;  // x when there is no bias (never read then)
  unsigned short* out;
};

inline BitmaskOperands read_operands(const std::string& folder, int rows, int has_bias) {
  BitmaskOperands operands{};
  operands.x = exact_buffer<unsigned short>(folder + "/x.bin");
  operands.values = exact_buffer<unsigned short>(folder + "/values.bin", &operands.n_values);
  operands.words = exact_buffer<unsigned int>(folder + "/words.bin");
  operands.offsets = exact_buffer<int>(folder + "/offsets.bin");
  operands.bias = has_bias ? exact_buffer<unsigned short>(folder + "/bias.bin") : operands.x;
  operands.out = static_cast<unsigned short*>(std::malloc(sizeof(unsigned short) * rows));
  return operands;
}
