#include "hash.hpp"

#define XXH_INLINE_ALL  // keeps xxHash's symbols private to this extension
#include <xxhash.h>

#include <openssl/evp.h>

#include <cstring>
#include <stdexcept>

extern "C" void pyengine_blake3_parent_cv(const uint8_t block[BLAKE3_BLOCK_LEN],
                                          uint8_t out[BLAKE3_OUT_LEN]);

namespace pyengine {

static_assert(sizeof(XXH3_state_t) <= 640, "Xxh3Stream storage too small");

Digest16 xxh3_128(const void* data, size_t len_bytes) {
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, XXH3_128bits(data, len_bytes));
  Digest16 out;
  std::memcpy(out.data(), canonical.digest, out.size());
  return out;
}

static XXH3_state_t* as_state(unsigned char* p) { return reinterpret_cast<XXH3_state_t*>(p); }

Xxh3Stream::Xxh3Stream() { reset(); }
void Xxh3Stream::reset() { XXH3_128bits_reset(as_state(state_)); }
void Xxh3Stream::update(const void* data, size_t len_bytes) {
  XXH3_128bits_update(as_state(state_), data, len_bytes);
}
Digest16 Xxh3Stream::digest() const {
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical,
                           XXH3_128bits_digest(reinterpret_cast<const XXH3_state_t*>(state_)));
  Digest16 out;
  std::memcpy(out.data(), canonical.digest, out.size());
  return out;
}

Md5Stream::Md5Stream() : ctx_(EVP_MD_CTX_new()) {
  if (ctx_ == nullptr || EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_md5(), nullptr) != 1) {
    EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_));
    throw std::runtime_error("OpenSSL: MD5 unavailable (FIPS mode?)");
  }
}
Md5Stream::~Md5Stream() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }
void Md5Stream::update(const void* data, size_t len_bytes) {
  if (len_bytes != 0) EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data, len_bytes);
}
Digest16 Md5Stream::digest() {
  Digest16 out{};
  unsigned int n = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), out.data(), &n);
  return out;
}

Digest32 blake3(const void* data, size_t len_bytes) {
  blake3_hasher hasher;
  blake3_hasher_init(&hasher);
  blake3_hasher_update(&hasher, data, len_bytes);
  Digest32 out;
  blake3_hasher_finalize(&hasher, out.data(), out.size());
  return out;
}

namespace {

int popcount64(uint64_t v) { return __builtin_popcountll(v); }

// Joins the two entries on top of a CV stack into their parent (non-root).
void merge_top(uint8_t* stack, uint8_t& len) {
  uint8_t* pair = stack + (len - 2) * BLAKE3_OUT_LEN;
  uint8_t parent[BLAKE3_OUT_LEN];
  pyengine_blake3_parent_cv(pair, parent);
  std::memcpy(pair, parent, BLAKE3_OUT_LEN);
  --len;
}

}  // namespace

Blake3Piece::Blake3Piece(uint64_t offset_bytes) {
  if (offset_bytes % BLAKE3_CHUNK_LEN != 0)
    throw std::invalid_argument("BLAKE3 piece offset must be a multiple of 1 KiB");
  blake3_hasher_init(&hasher_);
  hasher_.chunk.chunk_counter = offset_bytes / BLAKE3_CHUNK_LEN;
  // The hasher merges its stack down to popcount(chunks so far) entries. Starting mid-file, the
  // entries for earlier pieces are not ours, so placeholders hold their slots; the subtrees of this
  // piece then merge exactly as they would in one serial pass.
  placeholder_cvs_ = static_cast<uint8_t>(popcount64(hasher_.chunk.chunk_counter));
  hasher_.cv_stack_len = placeholder_cvs_;
  std::memset(hasher_.cv_stack, 0, sizeof(hasher_.cv_stack));
}

void Blake3Piece::update(const void* data, size_t len_bytes) {
  blake3_hasher_update(&hasher_, data, len_bytes);
}

Digest32 Blake3Piece::subtree_cv() const {
  if (hasher_.chunk.buf_len != 0 || hasher_.chunk.blocks_compressed != 0 ||
      hasher_.cv_stack_len < placeholder_cvs_ + 2)
    throw std::logic_error("BLAKE3 piece is not a complete subtree of at least 2 KiB");
  uint8_t stack[sizeof(hasher_.cv_stack)];
  std::memcpy(stack, hasher_.cv_stack + placeholder_cvs_ * BLAKE3_OUT_LEN,
              (hasher_.cv_stack_len - placeholder_cvs_) * BLAKE3_OUT_LEN);
  uint8_t len = static_cast<uint8_t>(hasher_.cv_stack_len - placeholder_cvs_);
  while (len > 1) merge_top(stack, len);
  Digest32 out;
  std::memcpy(out.data(), stack, out.size());
  return out;
}

Digest32 blake3_assemble(const std::vector<Digest32>& complete_piece_cvs,
                         const blake3_hasher& last_piece_state) {
  // Push the pieces' CVs with the hasher's own lazy-merge rule (merge down to popcount(count)).
  uint8_t stack[(BLAKE3_MAX_DEPTH + 1) * BLAKE3_OUT_LEN];
  uint8_t len = 0;
  uint64_t count = 0;
  for (const Digest32& cv : complete_piece_cvs) {
    while (len > popcount64(count)) merge_top(stack, len);
    std::memcpy(stack + len * BLAKE3_OUT_LEN, cv.data(), BLAKE3_OUT_LEN);
    ++len;
    ++count;
  }
  while (len > popcount64(count)) merge_top(stack, len);

  blake3_hasher final_state = last_piece_state;
  // The last piece was hashed with `len` placeholder slots at the bottom of its stack.
  std::memcpy(final_state.cv_stack, stack, len * BLAKE3_OUT_LEN);
  Digest32 out;
  blake3_hasher_finalize(&final_state, out.data(), out.size());
  return out;
}

}  // namespace pyengine
