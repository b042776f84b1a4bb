// Runs the CUDA kernels of csrc/kernels on the CPU, one OS thread per CUDA thread, so that their
// logic (indices, bands, tiles, barriers, warp votes) is tested where there is no GPU
// (tests/test_cuda_kernels_on_cpu.py). The blocks of a launch run one after another, the threads
// of a block together: __syncthreads() is a barrier of the block's threads, and a warp's
// intrinsics exchange their values through a barrier of its threads. Nothing here models timing
// or the GPU's memory ordering. C++20 (std::atomic_ref); build with -pthread, and with
// -D__CUDA_ARCH__=NNN to pick the kernels' per-architecture paths.
#pragma once
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <thread>
#include <vector>

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // one block runs at a time, so a static is the block's own
#define NASFAST_CUDA_ON_CPU

namespace cuda_on_cpu {

// Thrown in the threads of a block whose barriers were abandoned: a __syncthreads() (or a warp
// intrinsic) that only some threads reached, a deadlock (undefined behaviour on a GPU).
struct Deadlock {};

// No barrier completing for this long while threads wait counts as a deadlock.
inline std::chrono::milliseconds barrier_timeout{10000};
// Barrier rounds completed so far (all barriers): the watchdog's sign of progress.
inline std::atomic<int64_t> rounds{0};

// A reusable barrier on an atomic counter (threads sleep in atomic::wait, a futex, rather than
// queueing on a mutex: a condition variable made the tests ten times slower).
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}

  void wait() {
    const int64_t generation = generation_.load();
    if (arrived_.fetch_add(1) + 1 == count_) {
      arrived_.store(0);
      rounds.fetch_add(1);
      generation_.fetch_add(1);
      generation_.notify_all();
    } else {
      while (generation_.load() == generation && !broken_.load()) generation_.wait(generation);
    }
    if (broken_.load()) throw Deadlock();
  }

  // Releases every waiting thread with Deadlock, now and at every later wait.
  void abandon() {
    broken_.store(true);
    generation_.fetch_add(1);
    generation_.notify_all();
  }

  bool broken() const { return broken_.load(); }

 private:
  const int count_;
  std::atomic<int> arrived_{0};
  std::atomic<int64_t> generation_{0};
  std::atomic<bool> broken_{false};
};

constexpr unsigned int kWarpSize = 32;

struct Warp {
  explicit Warp(int size_) : size(size_), barrier(size_) {}
  const int size;
  Barrier barrier;
  uint64_t slots[kWarpSize] = {};
};

struct Block {
  Block(unsigned int threads, size_t shared_bytes)
      : barrier(static_cast<int>(threads)), dynamic_shared((shared_bytes + sizeof(double) - 1) / sizeof(double)) {
    for (unsigned int first = 0; first < threads; first += kWarpSize) {
      warps.push_back(std::make_unique<Warp>(static_cast<int>(std::min(kWarpSize, threads - first))));
    }
  }
  void abandon() {
    barrier.abandon();
    for (auto& w : warps) w->barrier.abandon();
  }

  Barrier barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<double> dynamic_shared;  // double: aligned as CUDA's
};

inline thread_local dim3 thread_index, block_index;
inline dim3 block_shape, grid_shape;
inline Block* current_block = nullptr;

inline Block& block() { return *current_block; }

inline unsigned int linear_thread() {
  return thread_index.x + block_shape.x * (thread_index.y + block_shape.y * thread_index.z);
}

inline Warp& warp() { return *block().warps[linear_thread() / kWarpSize]; }

inline unsigned int lane() { return linear_thread() % kWarpSize; }

// Every lane publishes `value`, then reads the slots (the second barrier keeps a lane from
// overwriting its slot before the others have read it).
template <typename T, typename Read>
auto exchange(T value, Read read) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "one slot per lane");
  Warp& w = warp();
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  w.slots[lane()] = bits;
  w.barrier.wait();
  const auto result = read(w);
  w.barrier.wait();
  return result;
}

// Abandons the block's barriers when no barrier round completes and no thread finishes within
// barrier_timeout.
inline void watch(Block& running, const std::atomic<unsigned int>& finished, unsigned int count) {
  auto last = std::make_pair(rounds.load(), finished.load());
  auto since = std::chrono::steady_clock::now();
  while (finished.load() < count) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const auto now = std::make_pair(rounds.load(), finished.load());
    if (now != last) {
      last = now;
      since = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - since > barrier_timeout) {
      running.abandon();
      return;
    }
  }
}

// Runs kernel(args...) over the grid; false when a barrier deadlocked. The block's threads are
// started once and run every block in turn, waiting for each other in between (so that no thread
// writes the next block's shared memory while another still reads this block's).
template <typename... Params, typename... Args>
bool launch(void (*kernel)(Params...), dim3 grid, dim3 threads, size_t shared_bytes, Args... args) {
  const unsigned int count = threads.x * threads.y * threads.z;
  Block running(count, shared_bytes);
  current_block = &running;
  grid_shape = grid;
  block_shape = threads;
  const auto run_blocks = [&](unsigned int t) {
    thread_index = dim3(t % threads.x, t / threads.x % threads.y, t / (threads.x * threads.y));
    try {
      for (unsigned int bz = 0; bz < grid.z; ++bz) {
        for (unsigned int by = 0; by < grid.y; ++by) {
          for (unsigned int bx = 0; bx < grid.x; ++bx) {
            block_index = dim3(bx, by, bz);
            kernel(static_cast<Params>(args)...);
            running.barrier.wait();
          }
        }
      }
    } catch (const Deadlock&) {
      running.abandon();
    }
  };
  std::atomic<unsigned int> finished{0};
  std::vector<std::thread> workers;
  for (unsigned int t = 0; t < count; ++t) {
    workers.emplace_back([&, t] {
      run_blocks(t);
      finished.fetch_add(1);
    });
  }
  watch(running, finished, count);
  for (std::thread& worker : workers) worker.join();
  current_block = nullptr;
  return !running.barrier.broken();
}

}  // namespace cuda_on_cpu

#define threadIdx cuda_on_cpu::thread_index
#define blockIdx cuda_on_cpu::block_index
#define blockDim cuda_on_cpu::block_shape
#define gridDim cuda_on_cpu::grid_shape

inline void __syncthreads() { cuda_on_cpu::block().barrier.wait(); }

template <typename T>
T __shfl_down_sync(unsigned int mask, T value, unsigned int delta) {
  (void)mask;
  return cuda_on_cpu::exchange(value, [&](const cuda_on_cpu::Warp& w) {
    T result = value;
    const unsigned int source = cuda_on_cpu::lane() + delta;
    if (source < static_cast<unsigned int>(w.size)) std::memcpy(&result, &w.slots[source], sizeof(T));
    return result;
  });
}

template <typename T>
unsigned int __match_any_sync(unsigned int mask, T value) {
  (void)mask;
  return cuda_on_cpu::exchange(value, [&](const cuda_on_cpu::Warp& w) {
    const uint64_t mine = w.slots[cuda_on_cpu::lane()];
    unsigned int same = 0;
    for (int l = 0; l < w.size; ++l) same |= (w.slots[l] == mine ? 1u : 0u) << l;
    return same;
  });
}

namespace nasfast {
namespace kernels {
template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(cuda_on_cpu::block().dynamic_shared.data());
}
}  // namespace kernels
}  // namespace nasfast

inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }

template <typename T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}

template <typename T>
T atomicOr(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_or(value);
}
