// Native tests of the core, run plain and under AddressSanitizer + UBSan (make sanitize). The
// Python suite checks the same behaviour against the reference packages; this program exists so
// the sanitizers see the threads, the pool and the cipher without an interpreter in the way.
#include <openssl/evp.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cipher.hpp"
#include "crc64.hpp"
#include "hash.hpp"
#include "pipeline.hpp"
#include "check.hpp"

using namespace pyengine;

int g_failures = 0;
int g_checks = 0;

static std::vector<uint8_t> pattern(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i % 251);  // BLAKE3 test-vector input
  return v;
}

static std::string write_temp(const std::vector<uint8_t>& data) {
  char name[] = "/tmp/pyengine-test-XXXXXX";
  int fd = mkstemp(name);
  if (fd < 0) std::abort();
  size_t done = 0;
  while (done < data.size()) {
    ssize_t w = write(fd, data.data() + done, data.size() - done);
    if (w <= 0) std::abort();
    done += static_cast<size_t>(w);
  }
  close(fd);
  return name;
}

static void test_crc64() {
  const char* nine = "123456789";
  CHECK(crc64(0, nine, 9) == 0xAE8B14860A799888ULL);  // azure-storage-extensions' value
  CHECK(crc64(0, nullptr, 0) == 0);
  std::mt19937_64 rng(7);
  for (size_t n : {0, 1, 15, 16, 63, 64, 255, 256, 257, 1000, 4096, 65537}) {
    std::vector<uint8_t> d(n);
    for (auto& b : d) b = static_cast<uint8_t>(rng());
    const uint64_t expect = crc64_portable(0, d.data(), n);
    CHECK(crc64(0, d.data(), n) == expect);
    // streaming in two parts gives the same value
    const size_t cut = n / 3;
    CHECK(crc64(crc64(0, d.data(), cut), d.data() + cut, n - cut) == expect);
  }
}

static std::vector<uint8_t> gcm_decrypt(const ContentKey& key, const uint8_t* frame, size_t n) {
  std::vector<uint8_t> out(n);
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  int len = 0;
  bool ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, key.data(), frame) == 1 &&
            EVP_DecryptUpdate(ctx, out.data(), &len, frame + kNonceBytes, static_cast<int>(n)) == 1 &&
            EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16,
                                const_cast<uint8_t*>(frame + kNonceBytes + n)) == 1 &&
            EVP_DecryptFinal_ex(ctx, out.data() + len, &len) == 1;
  EVP_CIPHER_CTX_free(ctx);
  CHECK(ok);
  return out;
}

// Every wait on the pipeline has a deadline: a lost completion must fail its check, not hang
// the suite (CI kills a hung job only after its own timeout, with no line saying which test).
// 20 s total is ~100 times the slowest drain measured here under the sanitizers.
constexpr double kDrainBudgetS = 20.0;

class Deadline {
 public:
  explicit Deadline(double budget_s)
      : end_(std::chrono::steady_clock::now() +
             std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                 std::chrono::duration<double>(budget_s))) {}
  bool expired() const { return std::chrono::steady_clock::now() >= end_; }
  // What is left, for one pipeline wait (never more than 1 s, so expiry is seen promptly).
  double slice_s() const {
    const double left =
        std::chrono::duration<double>(end_ - std::chrono::steady_clock::now()).count();
    return left < 0 ? 0 : (left < 1.0 ? left : 1.0);
  }

 private:
  std::chrono::steady_clock::time_point end_;
};

// One wait for completions within the deadline; false (and a failed check) once it has passed.
#define WAIT_OR_FAIL(pipeline, deadline)                                                    \
  ([&]() {                                                                                  \
    if ((deadline).expired()) {                                                             \
      ++g_checks;                                                                           \
      ++g_failures;                                                                         \
      std::fprintf(stderr, "%s:%d: no completion before the deadline\n", __FILE__, __LINE__); \
      return false;                                                                         \
    }                                                                                       \
    (pipeline).wait((deadline).slice_s());                                                  \
    return true;                                                                            \
  }())

struct Collected {
  std::map<uint64_t, std::vector<uint8_t>> payloads;  // index -> payload
  std::map<uint64_t, Digest16> xxh3;
  std::map<uint64_t, uint64_t> crc;
  std::vector<FileDoneEvent> done;
  std::vector<FileFailedEvent> failed;
  bool timed_out = false;  // the budget ran out before `files` files ended
};

// Collects events until `files` files ended (done or failed) or `budget_s` passed; the caller
// checks `timed_out` (drain itself fails nothing, so its own deadline can be tested).
static Collected drain(Pipeline& p, size_t files, double budget_s = kDrainBudgetS) {
  Collected c;
  const Deadline deadline(budget_s);
  while (c.done.size() + c.failed.size() < files) {
    if (deadline.expired()) {
      c.timed_out = true;
      break;
    }
    p.wait(deadline.slice_s());
    for (Event& e : p.poll(64)) {
      if (auto* ch = std::get_if<ChunkEvent>(&e)) {
        c.payloads[ch->index].assign(ch->lease->data(), ch->lease->data() + ch->payload_bytes);
        c.xxh3[ch->index] = ch->xxh3_128;
        c.crc[ch->index] = ch->crc64;
      } else if (auto* d = std::get_if<FileDoneEvent>(&e)) {
        c.done.push_back(*d);
      } else {
        c.failed.push_back(std::get<FileFailedEvent>(e));
      }
    }
  }
  return c;
}

// A drain waiting for a file that was never submitted returns at its deadline, timed out,
// instead of waiting forever (the hang every loop here had before it had a deadline).
static void test_drain_gives_up_at_its_deadline() {
  auto data = pattern(1000);
  std::string path = write_temp(data);
  Pipeline p(1, 1 << 20, false);
  SubmitRequest r;
  r.path = path;
  r.size_bytes = data.size();
  r.chunk_bytes = 64 * 1024;
  p.submit(r);
  const auto start = std::chrono::steady_clock::now();
  Collected c = drain(p, 2, 0.3);  // one file submitted, two awaited
  const double took_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(c.timed_out);
  CHECK(c.done.size() == 1);
  CHECK(took_s >= 0.3 && took_s < 3.0);
  Collected ok = drain(p, 0, 0.3);  // nothing awaited: returns at once, not timed out
  CHECK(!ok.timed_out);
  unlink(path.c_str());
}

static void test_pipeline_plain() {
  const size_t chunk = 64 * 1024;
  for (size_t n : {size_t(0), size_t(1), size_t(1024), chunk - 1, chunk, chunk + 1, 5 * chunk + 7,
                   8 * chunk}) {
    auto data = pattern(n);
    std::string path = write_temp(data);
    Pipeline p(2, 1 << 20, false);
    SubmitRequest r;
    r.path = path;
    r.size_bytes = n;
    r.chunk_bytes = chunk;
    p.submit(r);
    Collected c = drain(p, 1);
    CHECK(!c.timed_out);
    CHECK(c.failed.empty());
    CHECK(c.done.size() == 1 && c.done[0].blake3.has_value());
    if (!c.done.empty() && c.done[0].blake3) CHECK(*c.done[0].blake3 == blake3(data.data(), n));
    CHECK(c.payloads.size() == (n + chunk - 1) / chunk);
    for (auto& [i, payload] : c.payloads) {
      const uint8_t* src = data.data() + i * chunk;
      CHECK(payload.size() == std::min(chunk, n - i * chunk));
      CHECK(std::memcmp(payload.data(), src, payload.size()) == 0);
      CHECK(c.xxh3[i] == xxh3_128(src, payload.size()));
      CHECK(c.crc[i] == crc64_portable(0, src, payload.size()));
    }
    unlink(path.c_str());
  }
}

static void test_pipeline_encrypted() {
  const size_t chunk = 2 * kRegionBytes;
  const size_t n = 2 * chunk + kRegionBytes + 5;  // 3 chunks, the last one 1 region + 5 bytes
  auto data = pattern(n);
  std::string path = write_temp(data);
  ContentKey key;
  for (size_t i = 0; i < key.size(); ++i) key[i] = static_cast<uint8_t>(i * 7 + 1);
  Pipeline p(2, 64 << 20, false);
  SubmitRequest r;
  r.path = path;
  r.size_bytes = n;
  r.chunk_bytes = chunk;
  r.content_key = key;
  p.submit(r);
  Collected c = drain(p, 1);
  CHECK(!c.timed_out);
  CHECK(c.failed.empty() && c.done.size() == 1);
  if (!c.done.empty()) CHECK(*c.done[0].blake3 == blake3(data.data(), n));
  size_t region = 0;
  for (auto& [i, payload] : c.payloads) {
    CHECK(c.crc[i] == crc64_portable(0, payload.data(), payload.size()));
    size_t plain_left = std::min(chunk, n - i * chunk);
    CHECK(payload.size() == framed_bytes(plain_left));
    for (size_t off = 0; plain_left > 0; ++region) {
      const size_t m = std::min(kRegionBytes, plain_left);
      const uint8_t* frame = payload.data() + off;
      uint64_t nonce_index = 0;
      for (size_t b = 4; b < 12; ++b) nonce_index = nonce_index << 8 | frame[b];
      CHECK(nonce_index == region);
      auto plain = gcm_decrypt(key, frame, m);
      CHECK(std::memcmp(plain.data(), data.data() + region * kRegionBytes, m) == 0);
      off += m + kRegionOverheadBytes;
      plain_left -= m;
    }
  }
  unlink(path.c_str());
}

static void test_errors_and_backpressure() {
  Pipeline p(2, 256 * 1024, false);
  SubmitRequest missing;
  missing.path = "/nonexistent/pyengine/file";
  missing.chunk_bytes = 64 * 1024;
  p.submit(missing);
  Collected c = drain(p, 1);
  CHECK(!c.timed_out);
  CHECK(c.failed.size() == 1 && c.failed[0].kind == FailureKind::Missing);

  auto data = pattern(16 * 64 * 1024);
  std::string path = write_temp(data);
  SubmitRequest big;
  big.file_id = 2;
  big.path = path;
  big.size_bytes = data.size();
  big.chunk_bytes = 64 * 1024;
  p.submit(big);
  // Hold every chunk: the pool (4 chunks) fills and readers must wait, not allocate.
  std::vector<ChunkEvent> held;
  const Deadline filled(kDrainBudgetS);
  while (held.size() < 4) {
    if (!WAIT_OR_FAIL(p, filled)) break;
    for (Event& e : p.poll(64))
      if (auto* ch = std::get_if<ChunkEvent>(&e)) held.push_back(std::move(*ch));
  }
  usleep(50 * 1000);
  CHECK(p.pool_stats().allocated_bytes <= 256 * 1024);
  CHECK(p.poll(64).empty());
  held.clear();  // releasing lets the readers finish the file
  size_t chunks = 4;
  bool done = false;
  const Deadline finished(kDrainBudgetS);
  while (!done) {
    if (!WAIT_OR_FAIL(p, finished)) break;
    for (Event& e : p.poll(64)) {
      if (std::holds_alternative<ChunkEvent>(e)) ++chunks;
      if (std::holds_alternative<FileDoneEvent>(e)) done = true;
    }
  }
  CHECK(chunks == 16);
  CHECK(p.pool_stats().waits > 0);
  unlink(path.c_str());
}

static int64_t ns_of(const struct timespec& t) {
  return static_cast<int64_t>(t.tv_sec) * 1000000000LL + t.tv_nsec;
}

// Rewrites path in place with other bytes of the same length, then restores its mtime, the way
// archivers and some PACS exports do. Only ctime still shows the write: wait until it moved (the
// kernel's timestamp clock is coarse, a few ms) so the test cannot pass or fail by timing.
static void rewrite_in_place_keeping_mtime(const std::string& path, size_t n) {
  struct stat before;
  if (stat(path.c_str(), &before) != 0) std::abort();
  std::vector<uint8_t> other(n, 0xA5);
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0 || pwrite(fd, other.data(), n, 0) != static_cast<ssize_t>(n)) std::abort();
  close(fd);
  struct stat now;
  do {
    const struct timespec times[2] = {before.st_atim, before.st_mtim};
    if (utimensat(AT_FDCWD, path.c_str(), times, 0) != 0) std::abort();
    if (stat(path.c_str(), &now) != 0) std::abort();
    if (ns_of(now.st_ctim) == ns_of(before.st_ctim)) usleep(2000);
  } while (ns_of(now.st_ctim) == ns_of(before.st_ctim));
  CHECK(ns_of(now.st_mtim) == ns_of(before.st_mtim) && now.st_size == before.st_size);
}

static void test_done_reports_identity_seen_at_open() {
  auto data = pattern(3 * 64 * 1024 + 5);
  std::string path = write_temp(data);
  struct stat st;
  if (stat(path.c_str(), &st) != 0) std::abort();
  Pipeline p(2, 1 << 20, false);
  SubmitRequest r;
  r.path = path;
  r.size_bytes = data.size();
  r.chunk_bytes = 64 * 1024;
  p.submit(r);
  Collected c = drain(p, 1);
  CHECK(!c.timed_out);
  CHECK(c.failed.empty() && c.done.size() == 1);
  if (c.done.size() == 1) {
    const FileIdentity& id = c.done[0].identity;
    CHECK(id.size_bytes == data.size());
    CHECK(id.mtime_ns == ns_of(st.st_mtim));
    CHECK(id.ctime_ns == ns_of(st.st_ctim));
    CHECK(id.inode == st.st_ino && id.device == st.st_dev);
  }
  unlink(path.c_str());
}

static void test_rewrite_in_place_with_mtime_restored_is_changed() {
  const size_t chunk = 64 * 1024;
  auto data = pattern(16 * chunk);
  std::string path = write_temp(data);
  // One reader, a pool of two chunks: holding the first chunk stops the reader long before the
  // end of the file, so the rewrite lands between the first read and the last.
  Pipeline p(1, 2 * chunk, false);
  SubmitRequest r;
  r.file_id = 9;
  r.path = path;
  r.size_bytes = data.size();
  r.chunk_bytes = chunk;
  p.submit(r);
  std::vector<ChunkEvent> held;
  const Deadline first(kDrainBudgetS);
  while (held.empty()) {
    if (!WAIT_OR_FAIL(p, first)) break;
    for (Event& e : p.poll(64))
      if (auto* ch = std::get_if<ChunkEvent>(&e)) held.push_back(std::move(*ch));
  }
  std::thread writer([&] { rewrite_in_place_keeping_mtime(path, data.size()); });
  writer.join();
  held.clear();
  std::vector<FileFailedEvent> failed;
  size_t done = 0;
  const Deadline ended(kDrainBudgetS);
  while (failed.empty() && done == 0) {
    if (!WAIT_OR_FAIL(p, ended)) break;
    for (Event& e : p.poll(64)) {
      if (auto* f = std::get_if<FileFailedEvent>(&e)) failed.push_back(*f);
      if (std::holds_alternative<FileDoneEvent>(e)) ++done;
    }
  }
  CHECK(done == 0);
  CHECK(failed.size() == 1);
  if (failed.size() == 1) {
    CHECK(failed[0].kind == FailureKind::Changed);
    CHECK(failed[0].file_id == 9);
    CHECK(failed[0].reason.find("changed while being read") != std::string::npos);
    CHECK(failed[0].reason.find("ctime") != std::string::npos);
    CHECK(failed[0].reason.find("mtime") == std::string::npos);  // it was restored
  }
  unlink(path.c_str());
}

int main() {
  test_drain_gives_up_at_its_deadline();
  test_crc64();
  crc64_force_portable(true);
  test_crc64();
  crc64_force_portable(false);
  test_pipeline_plain();
  test_pipeline_encrypted();
  test_errors_and_backpressure();
  test_done_reports_identity_seen_at_open();
  test_rewrite_in_place_with_mtime_restored_is_changed();
  test_listing_pages();
  test_body_sender();
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
