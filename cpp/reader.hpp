// Opening and reading source files: identity checks (size, mtime, inode, device), pread at 64-bit
// offsets, sequential read-ahead advice and optional O_DIRECT.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pyengine {

struct FileIdentity {
  uint64_t size_bytes = 0;
  int64_t mtime_ns = 0;
  uint64_t inode = 0;
  uint64_t device = 0;
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
  // Throws SourceError(Changed) if size or mtime differ from what was seen at open.
  void check_unchanged() const;

 private:
  std::string path_;
  int fd_ = -1;
  bool direct_io_ = false;
  FileIdentity identity_;
};

}  // namespace pyengine
