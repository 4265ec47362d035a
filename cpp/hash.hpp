// Per-chunk xxh3-128 and whole-file BLAKE3 assembled from pieces hashed in parallel.
//
// BLAKE3 is a binary tree over 1 KiB chunks, so a file piece that starts on a multiple of its own
// power-of-two length is a complete subtree: readers hash their pieces independently and the file's
// hash is assembled at the end from one chaining value per piece plus the state of the last piece
// (one parent compression per piece). No reader waits for another: whole-file hashing scales with
// the readers instead of running at one core's speed.
#pragma once

#include <blake3.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace pyengine {

using Digest16 = std::array<uint8_t, 16>;
using Digest32 = std::array<uint8_t, 32>;

// Canonical (big-endian) XXH3-128, equal to xxhash.xxh3_128(data).digest().
Digest16 xxh3_128(const void* data, size_t len_bytes);

class Xxh3Stream {
 public:
  Xxh3Stream();
  void reset();
  void update(const void* data, size_t len_bytes);
  Digest16 digest() const;

 private:
  alignas(64) unsigned char state_[640];  // XXH3_state_t, kept opaque (xxhash.h is private to hash.cpp)
};

Digest32 blake3(const void* data, size_t len_bytes);

// Hashes the bytes of one piece of a file. The piece must start at a multiple of 1 KiB and, unless
// it is the file's last piece, be a power-of-two number of bytes (>= 2 KiB) aligned to its length.
class Blake3Piece {
 public:
  explicit Blake3Piece(uint64_t offset_bytes);
  void update(const void* data, size_t len_bytes);
  // Chaining value of a complete, non-final piece.
  Digest32 subtree_cv() const;
  const blake3_hasher& state() const { return hasher_; }

 private:
  blake3_hasher hasher_;
  uint8_t placeholder_cvs_;  // stack slots standing for the pieces before this one
};

// Whole-blob MD5 (OpenSSL EVP), for x-ms-blob-content-md5 on Put Block List: the digest that
// AzCopy --check-md5, rclone check and Storage Explorer compare. MD5 is a serial chain, so the
// pipeline feeds it chunk by chunk in file order (pipeline.cpp says how).
class Md5Stream {
 public:
  Md5Stream();
  ~Md5Stream();
  Md5Stream(const Md5Stream&) = delete;
  Md5Stream& operator=(const Md5Stream&) = delete;
  void update(const void* data, size_t len_bytes);
  Digest16 digest();  // once; the stream is spent afterwards

 private:
  void* ctx_;  // EVP_MD_CTX, kept opaque so OpenSSL headers stay in hash.cpp
};

// Root hash of a file from the chaining values of its complete pieces (in order) and the state of
// its last piece.
Digest32 blake3_assemble(const std::vector<Digest32>& complete_piece_cvs,
                         const blake3_hasher& last_piece_state);

}  // namespace pyengine
