// One stage of the data path timed alone over an in-memory buffer: the per-stage limits the
// benchmarks compare the combined pipeline against (limit = threads / sum of seconds per byte).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace pyengine {

// stage: "xxh3", "crc64", "blake3", "aes_gcm" or "copy" (memcpy, a memory-bandwidth reference).
// Processes the data in the pipeline's slice size, `repeat` times; returns seconds on one thread.
double stage_seconds(const std::string& stage, const uint8_t* data, size_t len_bytes, int repeat);

}  // namespace pyengine

#include <utility>
#include <vector>

namespace pyengine {
// CPU features that decide which kernels run (for bench reports).
std::vector<std::pair<std::string, bool>> cpu_features();
}  // namespace pyengine
