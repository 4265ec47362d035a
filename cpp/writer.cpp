#include "writer.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <system_error>

#include "crc64.hpp"

namespace pyengine {

namespace {

bool is_power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// Writes all of [p, p+n) at offset; returns 0 or the errno.
int pwrite_all(int fd, const uint8_t* p, size_t n, uint64_t offset) {
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  return 0;
}

std::string write_failure(int err) { return std::string("write failed: ") + std::strerror(err); }

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};

}  // namespace

Writer::Writer(unsigned threads) {
  if (threads == 0) throw std::invalid_argument("threads must be at least 1");
  workers_.reserve(threads);
  for (unsigned i = 0; i < threads; ++i) workers_.emplace_back([this] { worker_main(); });
}

Writer::~Writer() { close(); }

void Writer::close() {
  {
    std::lock_guard<std::mutex> lock(tasks_mu_);
    if (stopping_ && workers_.empty()) return;
    stopping_ = true;
  }
  tasks_cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void Writer::submit(const WriteRange& range) {
  if (range.fd < -1) throw std::invalid_argument("fd must be an open descriptor, or -1");
  if (range.hash) {
    if (range.offset_bytes % BLAKE3_CHUNK_LEN != 0)
      throw std::invalid_argument("offset_bytes must be a multiple of 1 KiB when hashing");
    if (!range.last && (!is_power_of_two(range.plain_bytes) || range.plain_bytes < 2048 ||
                        range.offset_bytes % range.plain_bytes != 0))
      throw std::invalid_argument(
          "a range that is not the last must be a power of two >= 2 KiB aligned to its length");
  }
  if (range.content_key && range.offset_bytes % kRegionBytes != 0)
    throw std::invalid_argument("an encrypted range must start on a 4 MiB region");
  {
    std::lock_guard<std::mutex> lock(tasks_mu_);
    if (stopping_) throw std::invalid_argument("writer is closed");
    pending_.push_back(range);
  }
  tasks_cv_.notify_one();
}

void Writer::worker_main() {
  RegionCipher cipher;  // one EVP context per thread
  std::unique_ptr<uint8_t, FreeDeleter> scratch(
      static_cast<uint8_t*>(std::aligned_alloc(4096, kScratchBytes)));
  if (!scratch) throw std::bad_alloc();
  for (;;) {
    WriteRange range;
    {
      std::unique_lock<std::mutex> lock(tasks_mu_);
      tasks_cv_.wait(lock, [this] { return stopping_ || !pending_.empty(); });
      if (pending_.empty()) return;  // stopping, nothing left: queued ranges still finish
      range = pending_.front();
      pending_.pop_front();
    }
    RangeDoneEvent ev;
    try {
      ev = process(range, cipher, scratch.get());
    } catch (const std::exception& e) {
      ev = RangeDoneEvent{range.token, range.file_id, range.index, false, e.what(), std::nullopt};
    }
    events_.push(std::move(ev));
  }
}

RangeDoneEvent Writer::process(const WriteRange& r, RegionCipher& cipher, uint8_t* scratch) {
  RangeDoneEvent ev{r.token, r.file_id, r.index, false, {}, std::nullopt};
  const bool encrypted = r.content_key.has_value();
  const size_t expected = encrypted ? framed_bytes(r.plain_bytes) : r.plain_bytes;
  if (r.data_bytes != expected) {
    ev.reason = "range " + std::to_string(r.index) + ": received " + std::to_string(r.data_bytes) +
                " of " + std::to_string(expected) + " bytes";
    return ev;
  }
  // The service's CRC64 is folded into the one pass below, slice by slice while the slice is in
  // cache, instead of a pass of its own over the whole range first (bench: writer CPU-s/GB).
  // Bytes are therefore hashed and written before the CRC64 is known; like the GCM tag below,
  // that only reaches the temporary file, and a failing range is never recorded as done.
  const bool check_crc = r.expected_crc64.has_value();
  uint64_t crc = 0;
  auto crc_failed = [&](size_t consumed_bytes) {
    if (!check_crc) return false;
    // finish the CRC64 over what the pass did not reach, so a transport error is named as such
    crc = crc64(crc, r.data + consumed_bytes, r.data_bytes - consumed_bytes);
    if (crc == *r.expected_crc64) return false;
    ev.reason = "range " + std::to_string(r.index) + ": CRC64 differs from the service's";
    return true;
  };
  auto write_failed = [&](int err, size_t consumed_bytes) {
    if (!crc_failed(consumed_bytes)) ev.reason = write_failure(err);
    return ev;
  };
  std::optional<Blake3Piece> piece;
  if (r.hash) piece.emplace(r.offset_bytes);

  if (!encrypted) {
    for (size_t s = 0; s < r.plain_bytes; s += kScratchBytes) {
      const size_t n = std::min(kScratchBytes, r.plain_bytes - s);
      if (check_crc) crc = crc64(crc, r.data + s, n);
      if (piece) piece->update(r.data + s, n);
      if (int err = r.fd < 0 ? 0 : pwrite_all(r.fd, r.data + s, n, r.offset_bytes + s))
        return write_failed(err, s + n);
    }
    if (crc_failed(r.data_bytes)) return ev;
  } else {
    cipher.set_decrypt_key(*r.content_key);
    const uint64_t first_region = r.offset_bytes / kRegionBytes;
    for (size_t k = 0; k * kRegionBytes < r.plain_bytes; ++k) {
      const size_t region_plain = std::min(kRegionBytes, r.plain_bytes - k * kRegionBytes);
      const uint8_t* frame = r.data + k * (kRegionBytes + kRegionOverheadBytes);
      // The nonce must be this region's index (the Python SDK's and our encoding): a region moved
      // to another position, with its own valid tag, is refused rather than written there.
      const uint64_t region = first_region + k;
      bool nonce_ok = true;
      for (size_t i = 0; i < kNonceBytes; ++i) {
        const size_t shift = 8 * (kNonceBytes - 1 - i);
        const uint8_t want = i < kNonceBytes - 8 ? 0 : static_cast<uint8_t>(region >> shift);
        nonce_ok &= frame[i] == want;
      }
      const size_t frame_offset = static_cast<size_t>(frame - r.data);
      if (!nonce_ok) {
        if (crc_failed(frame_offset)) return ev;
        ev.reason =
            "region " + std::to_string(region) + ": its nonce is not its index (altered bytes)";
        return ev;
      }
      if (check_crc) crc = crc64(crc, frame, kNonceBytes);
      cipher.begin_decrypt_region(frame);
      const uint64_t region_offset = r.offset_bytes + k * kRegionBytes;
      for (size_t s = 0; s < region_plain; s += kScratchBytes) {
        const size_t n = std::min(kScratchBytes, region_plain - s);
        if (check_crc) crc = crc64(crc, frame + kNonceBytes + s, n);
        cipher.decrypt_slice(frame + kNonceBytes + s, scratch, n);
        if (piece) piece->update(scratch, n);
        // Written before the tag is checked: the bytes go to the temporary file only, which is
        // never renamed into place unless every tag and the whole-file digest check out.
        if (int err = r.fd < 0 ? 0 : pwrite_all(r.fd, scratch, n, region_offset + s))
          return write_failed(err, frame_offset + kNonceBytes + s + n);
      }
      const uint8_t* tag = frame + kNonceBytes + region_plain;
      if (check_crc) crc = crc64(crc, tag, kTagBytes);
      if (!cipher.end_decrypt_region(tag)) {
        if (crc_failed(static_cast<size_t>(tag - r.data) + kTagBytes))
          return ev;
        ev.reason =
            "region " + std::to_string(region) + ": AES-GCM tag does not match (altered bytes)";
        return ev;
      }
    }
    if (crc_failed(r.data_bytes)) return ev;
  }
#ifdef __linux__
  // Start writeback of what this range wrote now (asynchronous, errors surface at fsync): the
  // file's fsync before its rename then waits for little instead of the whole file, measured
  // 0.5 s of 1.9 s for 1 GiB on this machine's disk without it.
  if (r.fd >= 0)
    ::sync_file_range(r.fd, static_cast<off_t>(r.offset_bytes),
                      static_cast<off_t>(r.plain_bytes), SYNC_FILE_RANGE_WRITE);
#endif
  if (piece) {
    if (r.last) {
      std::lock_guard<std::mutex> lock(states_mu_);
      last_states_[r.file_id] = std::make_unique<blake3_hasher>(piece->state());
    } else {
      ev.cv = piece->subtree_cv();
    }
  }
  ev.ok = true;
  return ev;
}

Digest32 Writer::digest(uint64_t file_id, const std::vector<Digest32>& range_cvs) {
  std::unique_ptr<blake3_hasher> state;
  {
    std::lock_guard<std::mutex> lock(states_mu_);
    auto it = last_states_.find(file_id);
    if (it == last_states_.end())
      throw std::logic_error("no hashed last range for this file");
    state = std::move(it->second);
    last_states_.erase(it);
  }
  return blake3_assemble(range_cvs, *state);
}

void Writer::discard(uint64_t file_id) {
  std::lock_guard<std::mutex> lock(states_mu_);
  last_states_.erase(file_id);
}

}  // namespace pyengine
