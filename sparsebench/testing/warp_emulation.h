// CUDA C++ kernels run on the CPU, one host thread a GPU thread, so that a kernel's own source is checked without a GPU
// (sparsebench/testing/host_cuda.py builds them; tests/test_kernels_on_the_host.py uses it).
//
// What it gives a kernel source (what the project's kernels use): threadIdx, blockIdx and gridDim; __shared__ arrays
// (one copy, shared by the block's threads: the launcher runs one block at a time) and dynamic shared memory
// (emu::dynamic_shared(), the launch's shared_bytes, 16-byte aligned); __syncthreads; the warp collectives __shfl_sync,
// __shfl_up_sync, __shfl_xor_sync, __reduce_max_sync, __reduce_add_sync and __syncwarp, for the full warp only (any
// other mask aborts with a message); __popc, __clz, __ffs, __ldg and __uint_as_float; and host versions of the
// conversions that kernels write in PTX (emu_half_to_float, emu_float_to_half, emu_float_to_bf16: round to nearest even).
//
// Each collective is two barrier phases of the warp's 32 threads (publish, then read), so lanes that a kernel lets run
// ahead or fall behind meet there, as on a GPU since Volta; lanes of a warp that take part in different numbers of
// collectives (one exits while the others wait) end the run with a message instead of hanging. Shared memory written by
// one lane and read by another with no barrier between is a data race, which a build with ThreadSanitizer reports;
// reads and writes outside the caller's buffers are reported by AddressSanitizer (the test harness allocates each
// buffer at its exact size). Limits: here every collective also orders memory, which on a GPU only __syncwarp and
// __syncthreads do, so a missing __syncwarp is reported only where no shuffle stands between the write and the read;
// cp.async copies (written by a kernel's host branch as plain copies) complete at once.
#pragma once

#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

struct uint3 {
  unsigned int x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

namespace emu {

constexpr unsigned int kFullWarp = 0xffffffffu;

struct Warp {
  std::barrier<> phase{32};
  uint64_t slots[32] = {};
  long phases_of_lane[32] = {};  // barrier phases each lane took part in, written as it exits
};

inline thread_local Warp* current_warp = nullptr;
inline thread_local unsigned int current_lane = 0;
inline thread_local long phases_taken = 0;
inline thread_local uint3 thread_index;
inline thread_local uint3 block_index;
inline thread_local dim3 grid_size;
inline thread_local std::barrier<>* current_block = nullptr;
inline thread_local unsigned char* current_dynamic_shared = nullptr;
inline thread_local long block_phases_taken = 0;

inline void* dynamic_shared() { return current_dynamic_shared; }

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "warp emulation: %s (block %u, thread %u)\n", what, block_index.x, thread_index.x);
  std::fflush(stderr);
  std::abort();
}

inline void wait_for_warp() {
  current_warp->phase.arrive_and_wait();
  ++phases_taken;
}

inline void check_mask(unsigned int mask) {
  if (mask != kFullWarp) fail("only full-warp collectives (mask 0xffffffff) are emulated");
}

// every lane publishes `value`; returns all 32 published values
template <class T>
inline void publish_and_read(T value, T (&all)[32]) {
  static_assert(sizeof(T) <= 8, "warp collectives of values up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  current_warp->slots[current_lane] = bits;
  wait_for_warp();
  for (int lane = 0; lane < 32; ++lane) std::memcpy(&all[lane], &current_warp->slots[lane], sizeof(T));
  wait_for_warp();
}

template <class T>
inline T value_of_lane(T value, int source) {
  T all[32];
  publish_and_read(value, all);
  return all[source];
}

inline float half_to_float(unsigned short bits) {
  _Float16 half;
  std::memcpy(&half, &bits, 2);
  return static_cast<float>(half);
}

inline unsigned short float_to_half(float value) {
  const _Float16 half = static_cast<_Float16>(value);  // round to nearest even, as cvt.rn.f16.f32
  unsigned short bits;
  std::memcpy(&bits, &half, 2);
  return bits;
}

inline unsigned short float_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<unsigned short>((bits >> 16) | 0x40u);  // NaN stays NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);  // round to nearest even, as cvt.rn.bf16.f32
  return static_cast<unsigned short>(bits >> 16);
}

// runs `kernel` for every thread of `grid` x `block` (x dimensions only), one block at a time, a host thread a GPU thread,
// with `shared_bytes` of dynamic shared memory
template <class Kernel>
void launch(dim3 grid, dim3 block, size_t shared_bytes, Kernel kernel) {
  if (grid.y != 1 || grid.z != 1 || block.y != 1 || block.z != 1 || block.x % 32 != 0 || block.x == 0)
    fail("launch: one-dimensional grids of whole warps only");
  for (unsigned int b = 0; b < grid.x; ++b) {
    const unsigned int warps = block.x / 32;
    std::unique_ptr<Warp[]> block_warps(new Warp[warps]);
    std::barrier<> block_barrier(static_cast<std::ptrdiff_t>(block.x));
    std::unique_ptr<long[]> block_phases(new long[block.x]);
    // exactly the bytes asked for (so that AddressSanitizer reports an access past them), 16-byte aligned
    void* shared = shared_bytes ? std::malloc(shared_bytes) : nullptr;
    if (reinterpret_cast<uintptr_t>(shared) % 16) fail("malloc gave dynamic shared memory that is not 16-byte aligned");
    std::vector<std::thread> threads;
    threads.reserve(block.x);
    for (unsigned int t = 0; t < block.x; ++t) {
      threads.emplace_back([&, t] {
        current_warp = &block_warps[t / 32];
        current_lane = t % 32;
        phases_taken = 0;
        block_phases_taken = 0;
        current_block = &block_barrier;
        current_dynamic_shared = static_cast<unsigned char*>(shared);
        thread_index = {t, 0, 0};
        block_index = {b, 0, 0};
        grid_size = grid;
        kernel();
        current_warp->phases_of_lane[current_lane] = phases_taken;
        block_phases[t] = block_phases_taken;
        current_warp->phase.arrive_and_drop();  // lanes still in a collective go on (and are caught below)
        block_barrier.arrive_and_drop();
      });
    }
    for (auto& thread : threads) thread.join();
    std::free(shared);
    for (unsigned int t = 1; t < block.x; ++t)
      if (block_phases[t] != block_phases[0]) {
        block_index = {b, 0, 0};
        thread_index = {t, 0, 0};
        fail("the threads of a block reached different numbers of __syncthreads (one exited before one)");
      }
    for (unsigned int w = 0; w < warps; ++w)
      for (int lane = 1; lane < 32; ++lane)
        if (block_warps[w].phases_of_lane[lane] != block_warps[w].phases_of_lane[0]) {
          block_index = {b, 0, 0};
          thread_index = {w * 32 + lane, 0, 0};
          fail("the lanes of a warp took part in different numbers of collectives (one exited or skipped one while others waited)");
        }
  }
}

template <class Kernel>
void launch(dim3 grid, dim3 block, Kernel kernel) {
  launch(grid, block, 0, kernel);
}

}  // namespace emu

#define threadIdx emu::thread_index
#define blockIdx emu::block_index
#define gridDim emu::grid_size
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

inline float emu_half_to_float(unsigned short bits) { return emu::half_to_float(bits); }
inline unsigned short emu_float_to_half(float value) { return emu::float_to_half(value); }
inline unsigned short emu_float_to_bf16(float value) { return emu::float_to_bf16(value); }

template <class T>
inline T __shfl_sync(unsigned int mask, T value, int source, int width = 32) {
  emu::check_mask(mask);
  if (width != 32) emu::fail("__shfl_sync: only width 32 is emulated");
  return emu::value_of_lane(value, source & 31);
}

template <class T>
inline T __shfl_up_sync(unsigned int mask, T value, unsigned int delta, int width = 32) {
  emu::check_mask(mask);
  if (width != 32) emu::fail("__shfl_up_sync: only width 32 is emulated");
  const int source = static_cast<int>(emu::current_lane) - static_cast<int>(delta);
  return emu::value_of_lane(value, source < 0 ? static_cast<int>(emu::current_lane) : source);
}

template <class T>
inline T __shfl_xor_sync(unsigned int mask, T value, int lane_mask, int width = 32) {
  emu::check_mask(mask);
  if (width != 32) emu::fail("__shfl_xor_sync: only width 32 is emulated");
  return emu::value_of_lane(value, static_cast<int>(emu::current_lane ^ static_cast<unsigned int>(lane_mask)) & 31);
}

inline unsigned int __reduce_max_sync(unsigned int mask, unsigned int value) {
  emu::check_mask(mask);
  unsigned int all[32];
  emu::publish_and_read(value, all);
  unsigned int most = 0;
  for (unsigned int v : all) most = v > most ? v : most;
  return most;
}

inline unsigned int __reduce_add_sync(unsigned int mask, unsigned int value) {
  emu::check_mask(mask);
  unsigned int all[32];
  emu::publish_and_read(value, all);
  unsigned int total = 0;
  for (unsigned int v : all) total += v;
  return total;
}

inline void __syncthreads() {
  emu::current_block->arrive_and_wait();
  ++emu::block_phases_taken;
}

inline void __syncwarp(unsigned int mask = emu::kFullWarp) {
  emu::check_mask(mask);
  emu::wait_for_warp();
}

inline int __popc(unsigned int value) { return __builtin_popcount(value); }
inline int __clz(unsigned int value) { return value == 0 ? 32 : __builtin_clz(value); }
inline int __ffs(int value) { return __builtin_ffs(value); }  // 1 + the lowest set bit's position, 0 for none

template <class T>
inline T __ldg(const T* pointer) { return *pointer; }

inline float __uint_as_float(unsigned int bits) {
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}
