// AES-256-GCM in the Azure client-side encryption v2 framing: plaintext split into 4 MiB regions,
// each stored as nonce(12) | ciphertext | tag(16), nonce = region index as 12 big-endian bytes.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace pyengine {

constexpr size_t kRegionBytes = 4 * 1024 * 1024;  // EncryptedRegionInfo.DataLength
constexpr size_t kNonceBytes = 12;
constexpr size_t kTagBytes = 16;
constexpr size_t kRegionOverheadBytes = kNonceBytes + kTagBytes;

using ContentKey = std::array<uint8_t, 32>;

// Encrypted size of a plaintext span made of whole regions plus a shorter last one.
inline size_t framed_bytes(size_t plain_bytes) {
  return plain_bytes + (plain_bytes + kRegionBytes - 1) / kRegionBytes * kRegionOverheadBytes;
}

// Encrypts one region in place. `frame` points at the region's frame: the plaintext must already
// be at frame + kNonceBytes; the nonce and the tag are written around it.
class RegionCipher {
 public:
  RegionCipher();
  ~RegionCipher();
  RegionCipher(const RegionCipher&) = delete;
  RegionCipher& operator=(const RegionCipher&) = delete;

  void set_key(const ContentKey& key);
  void encrypt_region(uint64_t region_index, uint8_t* frame, size_t plain_bytes);

  // Incremental form, so a region can be encrypted slice by slice while it is still in cache.
  void begin_region(uint64_t region_index, uint8_t* frame);
  void encrypt_slice(uint8_t* data, size_t len_bytes);
  void end_region(uint8_t* tag_out);

  // Decryption (restore): set_decrypt_key once per key; per region begin with the stored nonce,
  // decrypt slices (out may equal in), and end_decrypt_region checks the GCM tag (false: the
  // region's bytes or tag were altered, or the key is wrong).
  void set_decrypt_key(const ContentKey& key);
  void begin_decrypt_region(const uint8_t* nonce);
  void decrypt_slice(const uint8_t* in, uint8_t* out, size_t len_bytes);
  bool end_decrypt_region(const uint8_t* tag);

 private:
  void* ctx_;  // EVP_CIPHER_CTX, kept opaque so OpenSSL headers stay in cipher.cpp
};

}  // namespace pyengine
