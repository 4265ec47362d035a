// The restore write path: worker threads that take ranges of a blob as downloaded, check them
// (service CRC64, AES-256-GCM tags), decrypt them, hash the plaintext as pieces of the file's
// BLAKE3 tree and pwrite it; completions go to a queue the asyncio loop drains (eventfd).
//
// The caller owns the downloaded bytes and keeps them alive until the range's event arrives; the
// writer never copies a plain range (pwrite from the caller's buffer) and decrypts an encrypted
// one through a 1 MiB per-thread scratch buffer, so hashing and writing touch it while in cache.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cipher.hpp"
#include "completion_queue.hpp"
#include "hash.hpp"

namespace pyengine {

struct WriteRange {
  uint64_t token = 0;    // the caller's handle for this range (echoed in its event)
  uint64_t file_id = 0;  // ranges of one file share it (BLAKE3 assembly)
  uint64_t index = 0;    // range index within the file
  int fd = -1;           // destination opened for writing by the caller; -1: check and hash only
  uint64_t offset_bytes = 0;  // plaintext offset in the file
  uint64_t plain_bytes = 0;   // plaintext bytes this range must yield
  const uint8_t* data = nullptr;  // stored bytes (ciphertext frames when encrypted)
  size_t data_bytes = 0;
  std::optional<ContentKey> content_key;
  // BLAKE3: a range that is not the file's last must be a power of two >= 2 KiB aligned to its
  // length (a complete subtree); the last range's hasher state is kept for digest().
  bool hash = true;
  bool last = false;
  std::optional<uint64_t> expected_crc64;  // the service's CRC64 of the stored bytes, if sent
};

struct RangeDoneEvent {
  uint64_t token = 0;
  uint64_t file_id = 0;
  uint64_t index = 0;
  bool ok = false;
  std::string reason;             // why it failed (one line, no secrets)
  std::optional<Digest32> cv;     // subtree chaining value of a checked non-last range
};

class Writer {
 public:
  static constexpr size_t kScratchBytes = 1024 * 1024;

  explicit Writer(unsigned threads);
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // Validates and queues; throws std::invalid_argument on a malformed request.
  void submit(const WriteRange& range);
  int fileno() const { return events_.fileno(); }
  std::vector<RangeDoneEvent> poll(size_t max_events) { return events_.poll(max_events); }
  bool wait(double timeout_s) { return events_.wait(timeout_s); }
  // Whole-file BLAKE3 from the CVs of ranges 0..n-2 (in order) and the kept state of the last
  // range, which is then forgotten. Throws std::logic_error when that state is missing.
  Digest32 digest(uint64_t file_id, const std::vector<Digest32>& range_cvs);
  void discard(uint64_t file_id);
  void close();

 private:
  void worker_main();
  RangeDoneEvent process(const WriteRange& r, RegionCipher& cipher, uint8_t* scratch);

  CompletionQueue<RangeDoneEvent> events_;
  std::mutex tasks_mu_;
  std::condition_variable tasks_cv_;
  std::deque<WriteRange> pending_;
  bool stopping_ = false;

  std::mutex states_mu_;
  std::map<uint64_t, std::unique_ptr<blake3_hasher>> last_states_;

  std::vector<std::thread> workers_;
};

}  // namespace pyengine
