#include "reader.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "errors.hpp"

namespace pyengine {

const char* failure_kind_name(FailureKind kind) {
  switch (kind) {
    case FailureKind::Missing: return "missing";
    case FailureKind::NotRegular: return "not_regular";
    case FailureKind::Permission: return "permission";
    case FailureKind::Io: return "io";
    case FailureKind::Changed: return "changed";
    case FailureKind::TooLarge: return "too_large";
  }
  return "io";
}

SourceError error_from_errno(const std::string& path, int errno_value, const char* during) {
  switch (errno_value) {
    case ENOENT:
    case ENOTDIR:
      return SourceError(FailureKind::Missing, path, errno_value, "no such file or directory");
    case EACCES:
    case EPERM:
      return SourceError(FailureKind::Permission, path, errno_value, "permission denied");
    case ELOOP:
      return SourceError(FailureKind::NotRegular, path, errno_value, "symlink loop");
    default:
      return SourceError(FailureKind::Io, path, errno_value,
                         std::string("I/O error while ") + during + ": " + std::strerror(errno_value));
  }
}

static FileIdentity identity_of(const struct stat& st) {
  FileIdentity id;
  id.size_bytes = static_cast<uint64_t>(st.st_size);
  id.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000LL + st.st_mtim.tv_nsec;
  id.ctime_ns = static_cast<int64_t>(st.st_ctim.tv_sec) * 1000000000LL + st.st_ctim.tv_nsec;
  id.inode = static_cast<uint64_t>(st.st_ino);
  id.device = static_cast<uint64_t>(st.st_dev);
  return id;
}

static const char* file_type_name(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  return "not a regular file";
}

SourceFile::SourceFile(const std::string& path, uint64_t expected_size_bytes, bool direct_io)
    : path_(path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
  int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
  if (direct_io) {
    fd_ = ::open(path.c_str(), flags | O_DIRECT);
    direct_io_ = fd_ >= 0;  // file systems without O_DIRECT (tmpfs, some NFS) fall back
  }
  if (fd_ < 0) fd_ = ::open(path.c_str(), flags);
  if (fd_ < 0) throw error_from_errno(path, errno, "opening");
  struct stat st;
  if (::fstat(fd_, &st) != 0) {
    int e = errno;
    ::close(fd_);
    throw error_from_errno(path, e, "reading its attributes");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw SourceError(FailureKind::NotRegular, path, 0,
                      std::string("not a regular file (") + file_type_name(st.st_mode) + ")");
  }
  identity_ = identity_of(st);
  if (identity_.size_bytes != expected_size_bytes) {
    ::close(fd_);
    throw SourceError(FailureKind::Changed, path, 0,
                      "changed since it was scanned (size " + std::to_string(expected_size_bytes) +
                          " -> " + std::to_string(identity_.size_bytes) + " bytes)");
  }
  ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) & ~O_NONBLOCK);
  ::posix_fadvise(fd_, 0, 0, POSIX_FADV_SEQUENTIAL);
}

SourceFile::~SourceFile() {
  if (fd_ >= 0) ::close(fd_);
}

void SourceFile::read_exact(uint8_t* dst, size_t len_bytes, uint64_t offset_bytes) const {
  // O_DIRECT needs block-multiple lengths: the last read of a file asks for the rounded-up length
  // (the pooled buffer has room, its capacity is a multiple of 4 KiB) and gets the tail.
  const size_t request_bytes = direct_io_ ? (len_bytes + 4095) / 4096 * 4096 : len_bytes;
  size_t done = 0;
  while (done < len_bytes) {
    ssize_t got =
        ::pread(fd_, dst + done, request_bytes - done, static_cast<off_t>(offset_bytes + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw error_from_errno(path_, errno, "reading");
    }
    if (got == 0) {
      throw SourceError(FailureKind::Changed, path_, 0,
                        "file shrank while being read (ended at " +
                            std::to_string(offset_bytes + done) + " bytes, expected " +
                            std::to_string(identity_.size_bytes) + ")");
    }
    done += static_cast<size_t>(got);
  }
}

void SourceFile::check_unchanged() const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) throw error_from_errno(path_, errno, "reading its attributes");
  FileIdentity now = identity_of(st);
  if (now.size_bytes > identity_.size_bytes)
    throw SourceError(FailureKind::Changed, path_, 0,
                      "file grew while being read (" + std::to_string(identity_.size_bytes) +
                          " -> " + std::to_string(now.size_bytes) + " bytes)");
  if (now.size_bytes < identity_.size_bytes)
    throw SourceError(FailureKind::Changed, path_, 0,
                      "file shrank while being read (" + std::to_string(identity_.size_bytes) +
                          " -> " + std::to_string(now.size_bytes) + " bytes)");
  if (now == identity_) return;
  // Same size: rewritten in place (or replaced). Name what moved; the kind is what callers act on.
  std::string fields;
  auto note = [&fields](bool differs, const char* name) {
    if (!differs) return;
    if (!fields.empty()) fields += ", ";
    fields += name;
  };
  note(now.mtime_ns != identity_.mtime_ns, "mtime");
  note(now.ctime_ns != identity_.ctime_ns, "ctime");
  note(now.inode != identity_.inode, "inode");
  note(now.device != identity_.device, "device");
  throw SourceError(FailureKind::Changed, path_, 0, "changed while being read (" + fields + ")");
}

}  // namespace pyengine
