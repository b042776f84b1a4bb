// A caching allocator for CPU tensors, installed when set_cpu_memory_cache first gives it a
// capacity: freed blocks of 1 MiB or more are kept, by exact size, and handed out again. Why: glibc
// serves blocks of 32 MiB and more with mmap and unmaps them when freed, so each step of a training
// loop faulted the pages of every activation in again (a third of a CPU candidate's time). A
// training step allocates the same sizes every step, so exact sizes suffice.
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <pthread.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <iterator>
#include <list>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace nasfast {
namespace {

constexpr size_t kSmallest = size_t(1) << 20;  // glibc reuses smaller blocks well by itself
constexpr double kSlack = 0.25;  // what is kept may raise the peak of memory in use by this share

// Blocks of kSmallest bytes or more allocated while the cache is on are remembered by address;
// the others are plain c10 blocks. One deleter for all (oneDNN frees through raw_deleter, even
// blocks c10's allocator made before this one was installed): an address it does not know is
// freed as c10's allocator frees it.
class CachingCPUAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    void* data = nullptr;
    if (bytes > 0) {
      data = bytes < kSmallest ? c10::alloc_cpu(bytes) : large(bytes);
      c10::profiledCPUMemoryReporter().New(data, bytes);
    }
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
    std::vector<void*> evicted;
    int64_t before;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      before = capacity_;
      capacity_ = capacity;
      evicted = evict(cached_);
      peak_ = live_;
    }
    free_all(evicted);
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
  using Kept = std::list<std::pair<size_t, void*>>;  // (bytes, block), oldest first

  CachingCPUAllocator() {
    // A forked child (a DataLoader worker) must not inherit the lock held, nor cache its own sizes;
    // the kept blocks it inherits are the parent's pages, left untouched.
    pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                   [] {
                     CachingCPUAllocator& child = instance();
                     for (const auto& block : child.kept_) {
                       child.sizes_.erase(block.second);
                     }
                     child.kept_.clear();
                     child.by_size_.clear();
                     child.capacity_ = child.cached_ = 0;
                     child.mutex_.unlock();
                   });
  }

  // A kept block of `bytes`, else a fresh one (tracked while caching). Before a fresh block, the
  // oldest kept blocks are freed as needed to keep the tracked blocks (in use and kept) within
  // kSlack of the most bytes in use at once since the capacity was set: sizes that do not recur
  // (images of many sizes) do not pile up, and a training step's, which recur, stay kept.
  void* large(size_t bytes) {
    const int64_t size = static_cast<int64_t>(bytes);
    std::vector<void*> evicted;
    bool caching;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      caching = capacity_ > 0;
      auto same = by_size_.find(bytes);
      if (same != by_size_.end()) {
        const Kept::iterator newest = same->second.back();
        void* data = newest->second;
        same->second.pop_back();
        if (same->second.empty()) {
          by_size_.erase(same);
        }
        kept_.erase(newest);
        cached_ -= size;
        live_ += size;
        return data;
      }
      if (caching) {
        peak_ = std::max(peak_, live_ + size);
        evicted = evict(live_ + size + cached_ - (peak_ + static_cast<int64_t>(kSlack * peak_)));
      }
    }
    free_all(evicted);
    void* data = fresh(bytes);
    if (caching) {
      std::lock_guard<std::mutex> lock(mutex_);
      sizes_[data] = bytes;
      live_ += size;
    }
    return data;
  }

  void* fresh(size_t bytes) {
    try {
      return c10::alloc_cpu(bytes);
    } catch (const c10::Error&) {  // out of memory: the kept blocks may make the room
      std::vector<void*> evicted;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        evicted = evict(cached_);
      }
      if (evicted.empty()) {
        throw;
      }
      free_all(evicted);
    }
    return c10::alloc_cpu(bytes);
  }

  static void release(void* data) {
    if (data == nullptr) {
      return;
    }
    c10::profiledCPUMemoryReporter().Delete(data);
    CachingCPUAllocator& self = instance();
    std::vector<void*> evicted;
    {
      std::lock_guard<std::mutex> lock(self.mutex_);
      auto size = self.sizes_.find(data);
      if (size != self.sizes_.end()) {
        const int64_t bytes = static_cast<int64_t>(size->second);
        self.live_ -= bytes;
        if (bytes <= self.capacity_) {
          evicted = self.evict(self.cached_ + bytes - self.capacity_);
          self.keep(data, size->second);
          data = nullptr;
        } else {
          self.sizes_.erase(size);
        }
      }
    }
    free_all(evicted);
    if (data != nullptr) {
      c10::free_cpu(data);
    }
  }

  void keep(void* data, size_t bytes) {
    kept_.emplace_back(bytes, data);
    by_size_[bytes].push_back(std::prev(kept_.end()));
    cached_ += static_cast<int64_t>(bytes);
  }

  // Forgets the oldest kept blocks, at least `bytes` of them (all when fewer); the caller frees
  // them outside the lock.
  std::vector<void*> evict(int64_t bytes) {
    std::vector<void*> evicted;
    for (int64_t freed = 0; freed < bytes && !kept_.empty(); kept_.pop_front()) {
      const size_t size = kept_.front().first;
      void* data = kept_.front().second;
      auto same = by_size_.find(size);
      same->second.pop_front();  // the oldest of its size too
      if (same->second.empty()) {
        by_size_.erase(same);
      }
      sizes_.erase(data);
      cached_ -= static_cast<int64_t>(size);
      freed += static_cast<int64_t>(size);
      evicted.push_back(data);
    }
    return evicted;
  }

  static void free_all(const std::vector<void*>& blocks) {
    for (void* data : blocks) {
      c10::free_cpu(data);
    }
  }

  std::mutex mutex_;
  int64_t capacity_ = 0;
  int64_t cached_ = 0;
  int64_t live_ = 0;  // tracked blocks in use
  int64_t peak_ = 0;  // the most of them at once since the capacity was set
  Kept kept_;
  std::unordered_map<size_t, std::deque<Kept::iterator>> by_size_;  // kept_'s entries by size, oldest first
  std::unordered_map<void*, size_t> sizes_;  // tracked blocks, in use or kept
};

// Installs the allocator the first time a capacity is given: until then torch's own allocates.
int64_t set_cpu_memory_cache(int64_t capacity) {
  TORCH_CHECK(capacity >= 0, "set_cpu_memory_cache: the capacity must be >= 0 bytes, got ", capacity);
  CachingCPUAllocator& allocator = CachingCPUAllocator::instance();
  if (capacity > 0) {
    static std::once_flag installed;
    std::call_once(installed, [&] { c10::SetCPUAllocator(&allocator, /*priority=*/1); });
    TORCH_CHECK(c10::GetCPUAllocator() == &allocator,
                "set_cpu_memory_cache: another CPU allocator of higher priority is installed");
  }
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
