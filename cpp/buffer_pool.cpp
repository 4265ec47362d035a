#include "buffer_pool.hpp"

#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>

namespace pyengine {

Lease::~Lease() { pool_->give_back(data_, capacity_bytes_); }

std::shared_ptr<BufferPool> BufferPool::create(size_t cap_bytes) {
  return std::shared_ptr<BufferPool>(new BufferPool(cap_bytes));
}

BufferPool::~BufferPool() {
  for (auto& [capacity, data] : idle_) std::free(data);
}

static size_t round_up(size_t value, size_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

std::unique_ptr<Lease> BufferPool::acquire(size_t bytes) {
  const size_t capacity = round_up(bytes == 0 ? 1 : bytes, kAlignBytes);
  if (capacity > cap_bytes_) {
    throw std::invalid_argument("chunk of " + std::to_string(capacity) +
                                " bytes exceeds the memory cap of " + std::to_string(cap_bytes_) +
                                " bytes");
  }
  std::unique_lock<std::mutex> lock(mu_);
  bool counted_wait = false;
  for (;;) {
    if (closed_) throw PoolClosed();
    auto same = idle_.find(capacity);
    if (same != idle_.end()) {
      uint8_t* data = same->second;
      idle_.erase(same);
      in_use_bytes_ += capacity;
      ++in_use_buffers_;
      return std::make_unique<Lease>(shared_from_this(), data, capacity);
    }
    // Idle buffers of another size are dropped to make room: the cap counts everything allocated.
    while (allocated_bytes_ + capacity > cap_bytes_ && !idle_.empty()) {
      auto victim = idle_.begin();
      allocated_bytes_ -= victim->first;
      std::free(victim->second);
      idle_.erase(victim);
    }
    if (allocated_bytes_ + capacity <= cap_bytes_) {
      void* data = nullptr;
      if (posix_memalign(&data, kAlignBytes, capacity) != 0) throw std::bad_alloc();
      allocated_bytes_ += capacity;
      in_use_bytes_ += capacity;
      ++in_use_buffers_;
      return std::make_unique<Lease>(shared_from_this(), static_cast<uint8_t*>(data), capacity);
    }
    if (!counted_wait) {
      ++waits_;
      counted_wait = true;
    }
    freed_.wait(lock);
  }
}

void BufferPool::give_back(uint8_t* data, size_t capacity_bytes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    in_use_bytes_ -= capacity_bytes;
    --in_use_buffers_;
    idle_.emplace(capacity_bytes, data);
  }
  freed_.notify_all();
}

void BufferPool::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
  }
  freed_.notify_all();
}

PoolStats BufferPool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  PoolStats s;
  s.cap_bytes = cap_bytes_;
  s.allocated_bytes = allocated_bytes_;
  s.in_use_bytes = in_use_bytes_;
  s.in_use_buffers = in_use_buffers_;
  s.waits = waits_;
  return s;
}

}  // namespace pyengine
