// Typed errors of the native core. They carry the path and errno so the bindings can build the
// one-line message "<path>: <reason>" the CLI prints; nothing here knows about Python.
#pragma once

#include <stdexcept>
#include <string>

namespace pyengine {

enum class FailureKind { Missing, NotRegular, Permission, Io, Changed, TooLarge };

const char* failure_kind_name(FailureKind kind);

class SourceError : public std::runtime_error {
 public:
  SourceError(FailureKind kind, std::string path, int errno_value, const std::string& reason)
      : std::runtime_error(path + ": " + reason),
        kind_(kind),
        path_(std::move(path)),
        errno_(errno_value),
        reason_(reason) {}
  FailureKind kind() const { return kind_; }
  const std::string& path() const { return path_; }
  int errno_value() const { return errno_; }
  const std::string& reason() const { return reason_; }

 private:
  FailureKind kind_;
  std::string path_;
  int errno_;
  std::string reason_;
};

// Maps an errno from open/pread/fstat to a kind and a short reason ("no such file or directory").
SourceError error_from_errno(const std::string& path, int errno_value, const char* during);

}  // namespace pyengine
