#include "pipeline.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include "crc64.hpp"

namespace pyengine {

struct Pipeline::FileJob {
  SubmitRequest request;
  uint64_t range_offset_bytes = 0;
  uint64_t range_bytes = 0;
  bool whole_file = true;
  uint64_t chunks = 0;
  uint64_t tasks = 0;  // max(1, chunks): an empty file still needs its open and checks
  uint64_t next_task = 0;  // guarded by tasks_mu_
  std::atomic<uint64_t> finished_tasks{0};

  std::mutex mu;  // guards everything below
  bool open_attempted = false;
  bool failed = false;
  std::unique_ptr<SourceFile> file;
  std::vector<Digest32> piece_cvs;  // one per chunk but the last (BLAKE3 assembly)
  std::string head;                 // leading plaintext, set by the chunk at file offset 0
  std::unique_ptr<blake3_hasher> last_piece_state;
  // kStageMd5: MD5 is one serial chain over the payloads in chunk order (acquire_in_order and
  // md5_in_order say how the readers take turns without a deadlock under the memory cap).
  std::unique_ptr<Md5Stream> md5;
  uint64_t leased_chunks = 0;  // chunks 0..n-1 hold (or held) their buffer
  uint64_t md5_chunks = 0;     // chunks 0..n-1 are in the MD5
  bool pool_closed = false;    // a reader of this file met the closed pool: the others stop too
  std::condition_variable order_cv;  // with mu: leased_chunks, md5_chunks, failed, pool_closed
};

Pipeline::Pipeline(unsigned threads, size_t memory_cap_bytes, bool direct_io)
    : pool_(BufferPool::create(memory_cap_bytes)), direct_io_(direct_io) {
  if (threads == 0) throw std::invalid_argument("threads must be at least 1");
  workers_.reserve(threads);
  for (unsigned i = 0; i < threads; ++i) workers_.emplace_back([this] { worker_main(); });
}

Pipeline::~Pipeline() { close(); }

void Pipeline::close() {
  {
    std::lock_guard<std::mutex> lock(tasks_mu_);
    if (stopping_ && workers_.empty()) return;
    stopping_ = true;
  }
  tasks_cv_.notify_all();
  pool_->close();  // wakes readers blocked on a full pool
  for (auto& t : workers_) t.join();
  workers_.clear();
}

static bool is_power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

void Pipeline::submit(SubmitRequest request) {
  if (!is_power_of_two(request.chunk_bytes) || request.chunk_bytes < kMinChunkBytes)
    throw std::invalid_argument("chunk_bytes must be a power of two of at least 64 KiB");
  if (request.content_key && request.chunk_bytes % kRegionBytes != 0)
    throw std::invalid_argument("chunk_bytes must be a multiple of 4 MiB when encrypting");
  if (request.offset_bytes % request.chunk_bytes != 0)
    throw std::invalid_argument("offset_bytes must be a multiple of chunk_bytes");
  if (request.offset_bytes > request.size_bytes)
    throw std::invalid_argument("offset_bytes is past the end of the file");
  const uint64_t rest = request.size_bytes - request.offset_bytes;
  if (request.length_bytes < -1 ||
      (request.length_bytes >= 0 && static_cast<uint64_t>(request.length_bytes) > rest))
    throw std::invalid_argument("length_bytes is past the end of the file");
  // A chunk's payload must fit the pool or its reader would wait forever.
  const uint64_t payload =
      request.content_key ? framed_bytes(request.chunk_bytes) : request.chunk_bytes;
  if (payload > pool_->stats().cap_bytes)
    throw std::invalid_argument("chunk_bytes does not fit in memory_cap_bytes");

  auto job = std::make_shared<FileJob>();
  job->range_offset_bytes = request.offset_bytes;
  job->range_bytes = request.length_bytes < 0 ? rest : static_cast<uint64_t>(request.length_bytes);
  job->whole_file = request.offset_bytes == 0 && job->range_bytes == request.size_bytes;
  job->chunks = (job->range_bytes + request.chunk_bytes - 1) / request.chunk_bytes;
  job->tasks = std::max<uint64_t>(1, job->chunks);
  if (job->whole_file && (request.stages & kStageBlake3) && job->chunks > 1)
    job->piece_cvs.resize(job->chunks - 1);
  if (job->whole_file && (request.stages & kStageMd5)) job->md5 = std::make_unique<Md5Stream>();
  job->request = std::move(request);
  // A file of one chunk (every small file) is one task: waking every idle worker for it only
  // has all but one find nothing and sleep again, on the cores the event loop needs.
  const bool one_task = job->tasks == 1;
  {
    std::lock_guard<std::mutex> lock(tasks_mu_);
    if (stopping_) throw std::invalid_argument("pipeline is closed");
    pending_.push_back(std::move(job));
  }
  ++files_in_flight_;
  if (one_task) {
    tasks_cv_.notify_one();
  } else {
    tasks_cv_.notify_all();
  }
}

void Pipeline::worker_main() {
  RegionCipher cipher;  // one EVP context per thread, reused across chunks
  for (;;) {
    std::shared_ptr<FileJob> job;
    uint64_t task = 0;
    {
      std::unique_lock<std::mutex> lock(tasks_mu_);
      tasks_cv_.wait(lock, [this] { return stopping_ || !pending_.empty(); });
      if (stopping_) return;
      job = pending_.front();
      task = job->next_task++;
      if (job->next_task == job->tasks) pending_.pop_front();
    }
    try {
      process_task(*job, task, cipher);
    } catch (const PoolClosed&) {
      return;
    }
  }
}

void Pipeline::process_task(FileJob& job, uint64_t task, RegionCipher& cipher) {
  bool failed;
  {
    std::lock_guard<std::mutex> lock(job.mu);
    if (!job.open_attempted) {
      job.open_attempted = true;
      try {
        job.file = std::make_unique<SourceFile>(job.request.path, job.request.size_bytes,
                                                direct_io_ && !job.request.content_key);
      } catch (const SourceError& e) {
        job.failed = true;
        job.order_cv.notify_all();
        push(FileFailedEvent{job.request.file_id, job.request.path, e.kind(), e.errno_value(),
                             e.reason()});
      }
    }
    failed = job.failed;
  }
  if (!failed && job.chunks > 0) {
    try {
      read_chunk(job, task, cipher);
    } catch (const SourceError& e) {
      fail_file(job, e.kind(), e.errno_value(), e.reason());
    } catch (const PoolClosed&) {
      throw;
    } catch (const std::exception& e) {
      fail_file(job, FailureKind::Io, 0, e.what());
    }
  }
  if (job.finished_tasks.fetch_add(1, std::memory_order_acq_rel) + 1 == job.tasks) finish_file(job);
}

void Pipeline::read_chunk(FileJob& job, uint64_t index, RegionCipher& cipher) {
  const SubmitRequest& req = job.request;
  const uint64_t rel_offset = index * req.chunk_bytes;
  const uint64_t offset = job.range_offset_bytes + rel_offset;
  const size_t plain = static_cast<size_t>(std::min<uint64_t>(req.chunk_bytes, job.range_bytes - rel_offset));
  const bool encrypt = req.content_key.has_value();
  const size_t payload = encrypt ? framed_bytes(plain) : plain;
  const bool want_xxh3 = req.stages & kStageXxh3;
  const bool want_crc = req.stages & kStageCrc64;
  const bool want_blake3 = (req.stages & kStageBlake3) && job.whole_file;
  const bool last_chunk = index + 1 == job.chunks;
  const bool want_md5 = job.md5 != nullptr;

  // blocks while the cap is reached
  std::unique_ptr<Lease> lease =
      want_md5 ? acquire_in_order(job, index, payload) : pool_->acquire(payload);
  if (!lease) return;  // the file failed while this chunk waited for its turn
  uint8_t* base = lease->data();
  Xxh3Stream xxh3;
  std::optional<Blake3Piece> piece;
  if (want_blake3) piece.emplace(offset);
  uint64_t crc = 0;
  const SourceFile& file = *job.file;
  // Slices arrive in file order, so the head is the prefix of what this chunk reads; it is
  // copied before encryption overwrites the slice in place.
  std::string head;
  const uint64_t head_end = offset == 0 ? std::min<uint64_t>(req.head_bytes, plain) : 0;

  auto plain_slice = [&](uint8_t* p, size_t n, uint64_t file_offset) {
    file.read_exact(p, n, file_offset);
    if (file_offset < head_end)
      head.append(reinterpret_cast<const char*>(p),
                  static_cast<size_t>(std::min<uint64_t>(n, head_end - file_offset)));
    if (want_xxh3) xxh3.update(p, n);
    if (piece) piece->update(p, n);
  };

  if (!encrypt) {
    for (size_t s = 0; s < plain; s += kSliceBytes) {
      const size_t n = std::min(kSliceBytes, plain - s);
      plain_slice(base + s, n, offset + s);
      if (want_crc) crc = crc64(crc, base + s, n);
    }
  } else {
    cipher.set_key(*req.content_key);
    const uint64_t first_region = offset / kRegionBytes;
    for (size_t r = 0; r * kRegionBytes < plain; ++r) {
      const size_t region_plain = std::min(kRegionBytes, plain - r * kRegionBytes);
      uint8_t* frame = base + r * (kRegionBytes + kRegionOverheadBytes);
      cipher.begin_region(first_region + r, frame);
      if (want_crc) crc = crc64(crc, frame, kNonceBytes);
      for (size_t s = 0; s < region_plain; s += kSliceBytes) {
        const size_t n = std::min(kSliceBytes, region_plain - s);
        uint8_t* p = frame + kNonceBytes + s;
        plain_slice(p, n, offset + r * kRegionBytes + s);
        cipher.encrypt_slice(p, n);
        if (want_crc) crc = crc64(crc, p, n);
      }
      uint8_t* tag = frame + kNonceBytes + region_plain;
      cipher.end_region(tag);
      if (want_crc) crc = crc64(crc, tag, kTagBytes);
    }
  }

  if (piece) {
    if (last_chunk) {
      job.last_piece_state = std::make_unique<blake3_hasher>(piece->state());
    } else {
      job.piece_cvs[index] = piece->subtree_cv();
    }
  }

  if (want_md5 && !md5_in_order(job, index, base, payload)) return;

  ChunkEvent ev;
  ev.file_id = req.file_id;
  ev.index = index;
  ev.offset_bytes = offset;
  ev.plain_bytes = plain;
  ev.payload_bytes = payload;
  if (want_xxh3) ev.xxh3_128 = xxh3.digest();
  ev.crc64 = crc;
  ev.lease = std::move(lease);
  std::lock_guard<std::mutex> lock(job.mu);
  if (!head.empty()) {
    job.head = head;
    ev.head = std::move(head);
  }
  if (!job.failed) push(std::move(ev));  // nothing of a failed file reaches Python after its failure
}

void Pipeline::finish_file(FileJob& job) {
  std::lock_guard<std::mutex> lock(job.mu);
  if (!job.failed) {
    try {
      job.file->check_unchanged();
      FileDoneEvent done;
      done.file_id = job.request.file_id;
      done.path = job.request.path;
      done.size_bytes = job.range_bytes;
      done.identity = job.file->identity();
      done.chunks = job.chunks;
      done.head = std::move(job.head);
      if (job.whole_file && (job.request.stages & kStageBlake3)) {
        if (job.chunks == 0) {
          done.blake3 = blake3(nullptr, 0);
        } else {
          done.blake3 = blake3_assemble(job.piece_cvs, *job.last_piece_state);
        }
      }
      if (job.md5) done.md5 = job.md5->digest();
      push(std::move(done));
    } catch (const SourceError& e) {
      job.failed = true;
      push(FileFailedEvent{job.request.file_id, job.request.path, e.kind(), e.errno_value(),
                           e.reason()});
    }
  }
  job.file.reset();  // closes the descriptor as soon as the file is done
  --files_in_flight_;
}

void Pipeline::fail_file(FileJob& job, FailureKind kind, int errno_value,
                         const std::string& reason) {
  std::lock_guard<std::mutex> lock(job.mu);
  if (job.failed) return;  // the first failure is the one reported
  job.failed = true;
  job.order_cv.notify_all();
  push(FileFailedEvent{job.request.file_id, job.request.path, kind, errno_value, reason});
}

// MD5 needs the payloads in file order, but a chunk's buffer goes back to the pool once Python
// has sent it, so each chunk joins the MD5 before its event is pushed: the reader of chunk i
// waits until chunk i-1 is in. That wait holds a buffer, so with a full pool the reader of i-1
// could wait for memory that only i's event would free. Buffers are therefore also taken in
// chunk order: whenever chunk i holds one, chunks 0..i-1 hold (or held) theirs and can finish
// without more memory, so the lowest chunk not yet in the MD5 always progresses. Chunks are
// handed to readers in order (worker_main), so the reader of i-1 is already running.
std::unique_ptr<Lease> Pipeline::acquire_in_order(FileJob& job, uint64_t index,
                                                  size_t payload_bytes) {
  {
    std::unique_lock<std::mutex> lock(job.mu);
    job.order_cv.wait(lock, [&] { return job.failed || job.pool_closed || job.leased_chunks == index; });
    if (job.pool_closed) throw PoolClosed();
    if (job.failed) return nullptr;
  }
  std::unique_ptr<Lease> lease;
  try {
    lease = pool_->acquire(payload_bytes);
  } catch (const PoolClosed&) {
    std::lock_guard<std::mutex> lock(job.mu);
    job.pool_closed = true;
    job.order_cv.notify_all();
    throw;
  }
  std::lock_guard<std::mutex> lock(job.mu);
  ++job.leased_chunks;
  job.order_cv.notify_all();
  return lease;
}

// Adds chunk `index`'s payload to the file's MD5 once chunks 0..index-1 are in; false when the
// file failed meanwhile (nothing of it is pushed then).
bool Pipeline::md5_in_order(FileJob& job, uint64_t index, const uint8_t* payload,
                            size_t payload_bytes) {
  {
    std::unique_lock<std::mutex> lock(job.mu);
    job.order_cv.wait(lock, [&] { return job.failed || job.pool_closed || job.md5_chunks == index; });
    if (job.failed || job.pool_closed) return false;
  }
  job.md5->update(payload, payload_bytes);  // only the reader whose turn it is touches it
  std::lock_guard<std::mutex> lock(job.mu);
  ++job.md5_chunks;
  job.order_cv.notify_all();
  return true;
}

void Pipeline::push(Event event) { events_.push(std::move(event)); }

}  // namespace pyengine
