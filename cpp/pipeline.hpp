// Worker threads that read, hash and encrypt chunks of submitted files, and the completion queue
// the asyncio loop drains (an eventfd becomes readable when it has something).
//
// Each chunk is processed in 256 KiB slices: read, xxh3, BLAKE3, encrypt and CRC64 touch a slice
// while it is still in L2, instead of streaming the whole chunk through memory once per stage.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "buffer_pool.hpp"
#include "completion_queue.hpp"
#include "cipher.hpp"
#include "errors.hpp"
#include "hash.hpp"
#include "reader.hpp"

namespace pyengine {

enum Stage : unsigned {
  kStageRead = 0,
  kStageXxh3 = 1u << 0,
  kStageCrc64 = 1u << 1,
  kStageBlake3 = 1u << 2,
  kStageAll = kStageXxh3 | kStageCrc64 | kStageBlake3,
  // Whole-blob MD5 of the payload (the stored bytes: ciphertext frames when encrypting), for
  // --put-md5. Off by default, not in kStageAll: MD5 is serial per file (see pipeline.cpp).
  kStageMd5 = 1u << 3,
};

struct SubmitRequest {
  uint64_t file_id = 0;
  std::string path;
  uint64_t size_bytes = 0;   // as scanned; a different size at open fails as "changed"
  uint64_t chunk_bytes = 0;  // power of two >= 64 KiB (a multiple of 4 MiB when encrypting)
  uint64_t offset_bytes = 0;
  int64_t length_bytes = -1;  // -1: to the end of the file
  std::optional<ContentKey> content_key;
  unsigned stages = kStageAll;
  // Leading plaintext bytes to hand back (the first chunk's event and the file's done event
  // carry them): file-type sniffing and DICOM headers read from the one read, never a second
  // open, and in clear even when the chunk itself is encrypted.
  uint32_t head_bytes = 0;
};

struct ChunkEvent {
  uint64_t file_id = 0;
  uint64_t index = 0;
  uint64_t offset_bytes = 0;
  uint64_t plain_bytes = 0;
  uint64_t payload_bytes = 0;
  Digest16 xxh3_128{};
  uint64_t crc64 = 0;
  std::unique_ptr<Lease> lease;
  std::string head;  // the first head_bytes of plaintext: only on the chunk at file offset 0
};

struct FileDoneEvent {
  uint64_t file_id = 0;
  std::string path;
  uint64_t size_bytes = 0;
  FileIdentity identity;
  uint64_t chunks = 0;
  std::optional<Digest32> blake3;
  std::optional<Digest16> md5;  // kStageMd5 on a whole-file read: MD5 of every payload byte
  std::string head;  // as on the chunk at file offset 0 (empty when not asked or not read)
};

struct FileFailedEvent {
  uint64_t file_id = 0;
  std::string path;
  FailureKind kind = FailureKind::Io;
  int errno_value = 0;
  std::string reason;
};

using Event = std::variant<ChunkEvent, FileDoneEvent, FileFailedEvent>;

class Pipeline {
 public:
  static constexpr size_t kSliceBytes = 256 * 1024;
  static constexpr uint64_t kMinChunkBytes = 64 * 1024;

  Pipeline(unsigned threads, size_t memory_cap_bytes, bool direct_io);
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  // Validates and queues; never blocks on I/O. Throws std::invalid_argument on a bad request.
  void submit(SubmitRequest request);
  int fileno() const { return events_.fileno(); }
  std::vector<Event> poll(size_t max_events) { return events_.poll(max_events); }
  bool wait(double timeout_s) { return events_.wait(timeout_s); }
  size_t files_in_flight() const { return files_in_flight_.load(); }
  PoolStats pool_stats() const { return pool_->stats(); }
  void close();

 private:
  struct FileJob;
  void worker_main();
  void process_task(FileJob& job, uint64_t task, RegionCipher& cipher);
  void read_chunk(FileJob& job, uint64_t index, RegionCipher& cipher);
  std::unique_ptr<Lease> acquire_in_order(FileJob& job, uint64_t index, size_t payload_bytes);
  bool md5_in_order(FileJob& job, uint64_t index, const uint8_t* payload, size_t payload_bytes);
  void finish_file(FileJob& job);
  void fail_file(FileJob& job, FailureKind kind, int errno_value, const std::string& reason);
  void push(Event event);

  std::shared_ptr<BufferPool> pool_;
  const bool direct_io_;
  CompletionQueue<Event> events_;

  std::mutex tasks_mu_;
  std::condition_variable tasks_cv_;
  std::deque<std::shared_ptr<FileJob>> pending_;
  bool stopping_ = false;

  std::atomic<size_t> files_in_flight_{0};
  std::vector<std::thread> workers_;
};

}  // namespace pyengine
