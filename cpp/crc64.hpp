// Azure Storage CRC64: the value the service checks in x-ms-content-crc64.
// Reflected polynomial 0x9A6C9329AC4BC9B5, initial value and final XOR ~0 (so crc64("") == 0),
// the parameters of azure-storage-extensions' crc64 and the Go/.NET SDKs. Streaming: pass the
// previous result as `crc` to continue over the next bytes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pyengine {

uint64_t crc64(uint64_t crc, const void* data, size_t len_bytes);

// The table-driven kernel alone (the reference the carry-less-multiply kernel is tested against).
uint64_t crc64_portable(uint64_t crc, const void* data, size_t len_bytes);

// Whether crc64() uses the PCLMULQDQ folding kernel on this CPU.
bool crc64_uses_clmul();

// Forces the portable kernel (tests cover both kernels with the same vectors).
void crc64_force_portable(bool force);

namespace detail {
constexpr uint64_t kCrc64PolyReflected = 0x9A6C9329AC4BC9B5ULL;
// Raw register update (no inversions) used by both kernels.
uint64_t crc64_table_raw(uint64_t reg, const uint8_t* data, size_t len_bytes);
// Folds 64-byte groups with carry-less multiplication; returns the raw register after the last
// whole 16-byte block and sets *consumed_bytes. Defined in crc64_clmul.cpp (built with -mpclmul).
uint64_t crc64_clmul_raw(uint64_t reg, const uint8_t* data, size_t len_bytes, size_t* consumed_bytes);
}  // namespace detail

}  // namespace pyengine
