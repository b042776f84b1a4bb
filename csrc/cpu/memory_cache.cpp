// A caching allocator for CPU tensors, off until set_cpu_memory_cache gives it a capacity: freed
// blocks of 1 MiB or more are kept, by exact size, and handed out again. Why: glibc serves blocks
// of 32 MiB and more with mmap and unmaps them when freed, so each step of a training loop faulted
// the pages of every activation in again (a third of a CPU candidate's time). A training step
// allocates the same sizes every step, so exact sizes suffice.
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <pthread.h>

#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace nasfast {
namespace {

constexpr size_t kSmallest = size_t(1) << 20;  // glibc reuses smaller blocks well by itself

// Each block starts with a header holding its size, before the 64-byte-aligned data: mkldnn frees
// through raw_deleter, so every block, cached or not, has the same deleter.
class CachingCPUAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    if (bytes == 0) {
      return {nullptr, nullptr, &release, c10::Device(c10::DeviceType::CPU)};  // as c10's allocator
    }
    void* data = bytes < kSmallest ? nullptr : take(bytes);
    if (data == nullptr) {
      data = fresh_or_after_dropping_kept(bytes);
    }
    c10::profiledCPUMemoryReporter().New(data, bytes);
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override {
    return &release;
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Frees the blocks kept, keeps up to `capacity` bytes of freed blocks from now on (0: none), and
  // returns the capacity before.
  int64_t set_capacity(int64_t capacity) {
    int64_t before;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      before = capacity_;
      capacity_ = capacity;
    }
    drop_kept();
    return before;
  }

  int64_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

  static CachingCPUAllocator& instance() {
    static CachingCPUAllocator* allocator = new CachingCPUAllocator();  // never destroyed: tensors may outlive exit
    return *allocator;
  }

 private:
  static constexpr size_t kHeader = 64;  // c10's alignment

  CachingCPUAllocator() {
    // A forked child (a DataLoader worker) must not inherit the lock held, nor cache its own sizes;
    // the kept blocks it inherits are the parent's pages, left untouched.
    pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                   [] {
                     CachingCPUAllocator& child = instance();
                     child.capacity_ = child.cached_ = 0;
                     child.free_.clear();
                     child.mutex_.unlock();
                   });
  }

  static size_t* header(void* data) {
    return reinterpret_cast<size_t*>(static_cast<char*>(data) - kHeader);
  }

  static void* fresh(size_t bytes) {
    char* block = static_cast<char*>(c10::alloc_cpu(bytes + kHeader));
    *reinterpret_cast<size_t*>(block) = bytes;
    return block + kHeader;
  }

  // Frees the blocks kept; returns how many.
  size_t drop_kept() {
    std::vector<void*> dropped;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto& kept : free_) {
        dropped.insert(dropped.end(), kept.second.begin(), kept.second.end());
      }
      free_.clear();
      cached_ = 0;
    }
    for (void* data : dropped) {
      c10::free_cpu(header(data));
    }
    return dropped.size();
  }

  void* fresh_or_after_dropping_kept(size_t bytes) {
    try {
      return fresh(bytes);
    } catch (const c10::Error&) {  // out of memory: the kept blocks may make the room
      if (drop_kept() == 0) {
        throw;
      }
    }
    return fresh(bytes);
  }

  // A kept block of `bytes`, or nullptr.
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto kept = free_.find(bytes);
    if (kept == free_.end() || kept->second.empty()) {
      return nullptr;
    }
    void* data = kept->second.back();
    kept->second.pop_back();
    cached_ -= static_cast<int64_t>(bytes);
    return data;
  }

  static void release(void* data) {
    if (data == nullptr) {
      return;
    }
    c10::profiledCPUMemoryReporter().Delete(data);
    const size_t bytes = *header(data);
    if (bytes >= kSmallest) {
      CachingCPUAllocator& self = instance();
      std::lock_guard<std::mutex> lock(self.mutex_);
      if (self.cached_ + static_cast<int64_t>(bytes) <= self.capacity_) {
        self.free_[bytes].push_back(data);
        self.cached_ += static_cast<int64_t>(bytes);
        return;
      }
    }
    c10::free_cpu(header(data));
  }

  std::mutex mutex_;
  int64_t capacity_ = 0;
  int64_t cached_ = 0;
  std::unordered_map<size_t, std::vector<void*>> free_;  // kept blocks by size
};

// Installs the allocator the first time (the blocks torch allocated before keep their deleter).
int64_t set_cpu_memory_cache(int64_t capacity) {
  TORCH_CHECK(capacity >= 0, "set_cpu_memory_cache: the capacity must be >= 0 bytes, got ", capacity);
  CachingCPUAllocator& allocator = CachingCPUAllocator::instance();
  static std::once_flag installed;
  std::call_once(installed, [&] { c10::SetCPUAllocator(&allocator, /*priority=*/1); });
  TORCH_CHECK(capacity == 0 || c10::GetCPUAllocator() == &allocator,
              "set_cpu_memory_cache: another CPU allocator of higher priority is installed");
  return allocator.set_capacity(capacity);
}

int64_t cpu_memory_cached() {
  return CachingCPUAllocator::instance().cached_bytes();
}

}  // namespace

TORCH_LIBRARY_IMPL(nasfast, CompositeImplicitAutograd, m) {
  m.impl("set_cpu_memory_cache", &set_cpu_memory_cache);
  m.impl("cpu_memory_cached", &cpu_memory_cached);
}

}  // namespace nasfast
