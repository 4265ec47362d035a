#include "crc64.hpp"

#include <array>
#include <atomic>
#include <cstring>

namespace pyengine {
namespace detail {

namespace {

// Slicing-by-8 tables: table[k][b] is the register contribution of byte b seen k bytes earlier.
struct Tables {
  std::array<std::array<uint64_t, 256>, 8> t{};
  Tables() {
    for (uint64_t b = 0; b < 256; ++b) {
      uint64_t r = b;
      for (int bit = 0; bit < 8; ++bit) r = (r & 1) ? (r >> 1) ^ kCrc64PolyReflected : r >> 1;
      t[0][b] = r;
    }
    for (size_t k = 1; k < 8; ++k)
      for (size_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xff];
  }
};

const Tables& tables() {
  static const Tables instance;
  return instance;
}

}  // namespace

uint64_t crc64_table_raw(uint64_t reg, const uint8_t* p, size_t n) {
  const auto& t = tables().t;
  while (n >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);  // little-endian load: x86-64 and aarch64 are LE
    reg ^= word;
    reg = t[7][reg & 0xff] ^ t[6][(reg >> 8) & 0xff] ^ t[5][(reg >> 16) & 0xff] ^
          t[4][(reg >> 24) & 0xff] ^ t[3][(reg >> 32) & 0xff] ^ t[2][(reg >> 40) & 0xff] ^
          t[1][(reg >> 48) & 0xff] ^ t[0][reg >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) reg = t[0][(reg ^ *p++) & 0xff] ^ (reg >> 8);
  return reg;
}

}  // namespace detail

namespace {

bool cpu_has_clmul() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#else
  return false;
#endif
}

std::atomic<bool> g_force_portable{false};
const bool g_has_clmul = cpu_has_clmul();

}  // namespace

uint64_t crc64_portable(uint64_t crc, const void* data, size_t len_bytes) {
  return ~detail::crc64_table_raw(~crc, static_cast<const uint8_t*>(data), len_bytes);
}

uint64_t crc64(uint64_t crc, const void* data, size_t len_bytes) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t reg = ~crc;
  // Below a few cache lines the folding set-up costs more than it saves.
  if (crc64_uses_clmul() && len_bytes >= 256) {
    size_t consumed = 0;
    reg = detail::crc64_clmul_raw(reg, p, len_bytes, &consumed);
    p += consumed;
    len_bytes -= consumed;
  }
  return ~detail::crc64_table_raw(reg, p, len_bytes);
}

bool crc64_uses_clmul() { return g_has_clmul && !g_force_portable.load(std::memory_order_relaxed); }

void crc64_force_portable(bool force) { g_force_portable.store(force); }

}  // namespace pyengine
