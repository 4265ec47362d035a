// Opening and reading source files: identity checks (device, inode, size, mtime, ctime), pread at
// 64-bit offsets, sequential read-ahead advice and optional O_DIRECT.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pyengine {

// What fstat says about the open file. ctime is part of it because an in-place rewrite can restore
// mtime (utime, archivers, some PACS exports) but never ctime: the kernel sets ctime on every write
// and on the utime call itself.
struct FileIdentity {
  uint64_t size_bytes = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  uint64_t inode = 0;
  uint64_t device = 0;

  bool operator==(const FileIdentity& o) const {
    return size_bytes == o.size_bytes && mtime_ns == o.mtime_ns && ctime_ns == o.ctime_ns &&
           inode == o.inode && device == o.device;
  }
  bool operator!=(const FileIdentity& o) const { return !(*this == o); }
};

class SourceFile {
 public:
  // Throws SourceError: missing, permission, not a regular file (FIFOs are opened non-blocking so
  // they never hang the reader), or size different from `expected_size_bytes` (changed since scan).
  SourceFile(const std::string& path, uint64_t expected_size_bytes, bool direct_io);
  ~SourceFile();
  SourceFile(const SourceFile&) = delete;
  SourceFile& operator=(const SourceFile&) = delete;

  const std::string& path() const { return path_; }
  const FileIdentity& identity() const { return identity_; }
  bool direct_io() const { return direct_io_; }

  // Reads exactly len_bytes at offset or throws SourceError (I/O error, or "shrank" on early EOF).
  void read_exact(uint8_t* dst, size_t len_bytes, uint64_t offset_bytes) const;
  // fstat again after the last read: throws SourceError(Changed) if any field of the identity
  // (device, inode, size, mtime, ctime) differs from what fstat said at open, before the first read.
  void check_unchanged() const;

 private:
  std::string path_;
  int fd_ = -1;
  bool direct_io_ = false;
  FileIdentity identity_;
};

}  // namespace pyengine
