// Aligned chunk buffers under a hard memory cap. acquire() blocks while the cap is reached: that is
// the backpressure that keeps RSS bounded whatever the number or size of files (AzCopy's soft cap,
// issues #2051/#3174, is what we avoid). Buffers go back to the pool when the last Lease drops.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>

namespace pyengine {

struct PoolStats {
  size_t cap_bytes = 0;
  size_t allocated_bytes = 0;  // in use + kept for reuse
  size_t in_use_bytes = 0;
  size_t in_use_buffers = 0;
  uint64_t waits = 0;  // acquires that had to block
};

class PoolClosed : public std::runtime_error {
 public:
  PoolClosed() : std::runtime_error("buffer pool closed") {}
};

class BufferPool;

// Ownership of one pooled buffer; destroying it returns the memory to the pool.
class Lease {
 public:
  Lease(std::shared_ptr<BufferPool> pool, uint8_t* data, size_t capacity_bytes)
      : pool_(std::move(pool)), data_(data), capacity_bytes_(capacity_bytes) {}
  ~Lease();
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  uint8_t* data() const { return data_; }
  size_t capacity_bytes() const { return capacity_bytes_; }

 private:
  std::shared_ptr<BufferPool> pool_;
  uint8_t* data_;
  size_t capacity_bytes_;
};

class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  static constexpr size_t kAlignBytes = 4096;  // O_DIRECT and page alignment

  static std::shared_ptr<BufferPool> create(size_t cap_bytes);
  ~BufferPool();

  // Blocks until `bytes` fit under the cap. Throws std::invalid_argument if bytes > cap (could
  // never succeed) and PoolClosed once close() was called.
  std::unique_ptr<Lease> acquire(size_t bytes);
  void close();
  PoolStats stats() const;

 private:
  explicit BufferPool(size_t cap_bytes) : cap_bytes_(cap_bytes) {}
  friend class Lease;
  void give_back(uint8_t* data, size_t capacity_bytes);

  const size_t cap_bytes_;
  mutable std::mutex mu_;
  std::condition_variable freed_;
  std::multimap<size_t, uint8_t*> idle_;  // capacity -> buffer kept for reuse
  size_t allocated_bytes_ = 0;
  size_t in_use_bytes_ = 0;
  size_t in_use_buffers_ = 0;
  uint64_t waits_ = 0;
  bool closed_ = false;
};

}  // namespace pyengine
