// PCLMULQDQ folding for the reflected CRC64 (Intel, "Fast CRC Computation for Generic Polynomials
// Using PCLMULQDQ", 2009). Built with -mpclmul -msse4.1 on this file only; crc64.cpp calls it only
// when the CPU has those instructions.
//
// Why the constants are x^(d+63) and x^(d-1) mod P for a fold over d bits: a 128-bit lane holds
// A = H*x^64 + L (H in the low qword: reflected order puts the highest degree first). Moving A
// forward by d bits needs H*x^(d+64) + L*x^d mod P; a carry-less product of two reflected 64-bit
// values lands one degree low, which supplies one factor x, hence d+63 and d-1.
#include <immintrin.h>

#include <array>

#include "crc64.hpp"

namespace pyengine {
namespace detail {

namespace {

uint64_t reflect64(uint64_t v) {
  uint64_t r = 0;
  for (int i = 0; i < 64; ++i) r |= ((v >> i) & 1ULL) << (63 - i);
  return r;
}

// x^n mod P, in reflected bit order.
uint64_t xpow_mod_reflected(unsigned n) {
  const uint64_t poly_normal = reflect64(kCrc64PolyReflected);  // P without its x^64 term
  uint64_t r = 1;                                              // x^0
  for (unsigned i = 0; i < n; ++i) {
    const bool carry = r >> 63;
    r <<= 1;
    if (carry) r ^= poly_normal;
  }
  return reflect64(r);
}

struct FoldConstants {
  __m128i by128;  // fold one lane over the next 16 bytes
  __m128i by512;  // fold each of four lanes over the next 64 bytes
  FoldConstants() {
    by128 = _mm_set_epi64x(static_cast<long long>(xpow_mod_reflected(128 - 1)),
                           static_cast<long long>(xpow_mod_reflected(128 + 63)));
    by512 = _mm_set_epi64x(static_cast<long long>(xpow_mod_reflected(512 - 1)),
                           static_cast<long long>(xpow_mod_reflected(512 + 63)));
  }
};

const FoldConstants& constants() {
  static const FoldConstants instance;
  return instance;
}

inline __m128i fold(__m128i acc, __m128i k) {
  // low qword (higher degrees) times k.lo, high qword times k.hi
  return _mm_xor_si128(_mm_clmulepi64_si128(acc, k, 0x00), _mm_clmulepi64_si128(acc, k, 0x11));
}

inline __m128i load(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }

}  // namespace

uint64_t crc64_clmul_raw(uint64_t reg, const uint8_t* p, size_t n, size_t* consumed_bytes) {
  const FoldConstants& k = constants();
  const uint8_t* start = p;
  // The register enters as an XOR into the first 8 message bytes (reflected CRC property).
  __m128i a0 = _mm_xor_si128(load(p), _mm_cvtsi64_si128(static_cast<long long>(reg)));
  __m128i a1 = load(p + 16);
  __m128i a2 = load(p + 32);
  __m128i a3 = load(p + 48);
  p += 64;
  n -= 64;
  while (n >= 64) {
    a0 = _mm_xor_si128(fold(a0, k.by512), load(p));
    a1 = _mm_xor_si128(fold(a1, k.by512), load(p + 16));
    a2 = _mm_xor_si128(fold(a2, k.by512), load(p + 32));
    a3 = _mm_xor_si128(fold(a3, k.by512), load(p + 48));
    p += 64;
    n -= 64;
  }
  __m128i acc = _mm_xor_si128(fold(a0, k.by128), a1);
  acc = _mm_xor_si128(fold(acc, k.by128), a2);
  acc = _mm_xor_si128(fold(acc, k.by128), a3);
  while (n >= 16) {
    acc = _mm_xor_si128(fold(acc, k.by128), load(p));
    p += 16;
    n -= 16;
  }
  // The 16 folded bytes are congruent to everything consumed; the table kernel reduces them.
  alignas(16) std::array<uint8_t, 16> tail{};
  _mm_store_si128(reinterpret_cast<__m128i*>(tail.data()), acc);
  *consumed_bytes = static_cast<size_t>(p - start);
  return crc64_table_raw(0, tail.data(), tail.size());
}

}  // namespace detail
}  // namespace pyengine
