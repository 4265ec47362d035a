#include "cipher.hpp"

#include <openssl/evp.h>

#include <stdexcept>

namespace pyengine {

static EVP_CIPHER_CTX* ctx_of(void* p) { return static_cast<EVP_CIPHER_CTX*>(p); }

static void check(int ok, const char* what) {
  if (ok != 1) throw std::runtime_error(std::string("AES-256-GCM: ") + what + " failed");
}

RegionCipher::RegionCipher() : ctx_(EVP_CIPHER_CTX_new()) {
  if (!ctx_) throw std::bad_alloc();
}

RegionCipher::~RegionCipher() { EVP_CIPHER_CTX_free(ctx_of(ctx_)); }

void RegionCipher::set_key(const ContentKey& key) {
  // The key schedule is set once per chunk; each region then only changes the IV.
  check(EVP_EncryptInit_ex(ctx_of(ctx_), EVP_aes_256_gcm(), nullptr, key.data(), nullptr),
        "key set-up");
}

void RegionCipher::begin_region(uint64_t region_index, uint8_t* frame) {
  for (size_t i = 0; i < kNonceBytes; ++i) frame[i] = 0;
  for (size_t i = 0; i < 8; ++i)
    frame[kNonceBytes - 1 - i] = static_cast<uint8_t>(region_index >> (8 * i));
  check(EVP_EncryptInit_ex(ctx_of(ctx_), nullptr, nullptr, nullptr, frame), "nonce set-up");
}

void RegionCipher::encrypt_slice(uint8_t* data, size_t len_bytes) {
  int out_len = 0;
  check(EVP_EncryptUpdate(ctx_of(ctx_), data, &out_len, data, static_cast<int>(len_bytes)),
        "encryption");
}

void RegionCipher::end_region(uint8_t* tag_out) {
  int out_len = 0;
  check(EVP_EncryptFinal_ex(ctx_of(ctx_), tag_out, &out_len), "finalisation");
  check(EVP_CIPHER_CTX_ctrl(ctx_of(ctx_), EVP_CTRL_GCM_GET_TAG, static_cast<int>(kTagBytes),
                            tag_out),
        "tag");
}

void RegionCipher::encrypt_region(uint64_t region_index, uint8_t* frame, size_t plain_bytes) {
  begin_region(region_index, frame);
  if (plain_bytes > 0) encrypt_slice(frame + kNonceBytes, plain_bytes);
  end_region(frame + kNonceBytes + plain_bytes);
}

void RegionCipher::set_decrypt_key(const ContentKey& key) {
  check(EVP_DecryptInit_ex(ctx_of(ctx_), EVP_aes_256_gcm(), nullptr, key.data(), nullptr),
        "key set-up");
}

void RegionCipher::begin_decrypt_region(const uint8_t* nonce) {
  check(EVP_DecryptInit_ex(ctx_of(ctx_), nullptr, nullptr, nullptr, nonce), "nonce set-up");
}

void RegionCipher::decrypt_slice(const uint8_t* in, uint8_t* out, size_t len_bytes) {
  int out_len = 0;
  check(EVP_DecryptUpdate(ctx_of(ctx_), out, &out_len, in, static_cast<int>(len_bytes)),
        "decryption");
}

bool RegionCipher::end_decrypt_region(const uint8_t* tag) {
  // OpenSSL takes a non-const pointer for SET_TAG but only reads it.
  check(EVP_CIPHER_CTX_ctrl(ctx_of(ctx_), EVP_CTRL_GCM_SET_TAG, static_cast<int>(kTagBytes),
                            const_cast<uint8_t*>(tag)),
        "tag");
  uint8_t sink[16];
  int out_len = 0;
  return EVP_DecryptFinal_ex(ctx_of(ctx_), sink, &out_len) == 1;
}

}  // namespace pyengine
