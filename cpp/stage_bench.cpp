#include "stage_bench.hpp"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "cipher.hpp"
#include "crc64.hpp"
#include "hash.hpp"
#include "pipeline.hpp"

namespace pyengine {

double stage_seconds(const std::string& stage, const uint8_t* data, size_t len_bytes, int repeat) {
  const size_t slice = Pipeline::kSliceBytes;
  std::vector<uint8_t> scratch;
  if (stage == "aes_gcm" || stage == "copy") scratch.resize(framed_bytes(len_bytes));
  volatile uint64_t sink = 0;  // keeps the results observable so nothing is optimised away
  const auto start = std::chrono::steady_clock::now();
  for (int rep = 0; rep < repeat; ++rep) {
    if (stage == "xxh3") {
      Xxh3Stream s;
      for (size_t o = 0; o < len_bytes; o += slice)
        s.update(data + o, std::min(slice, len_bytes - o));
      sink = sink + s.digest()[0];
    } else if (stage == "crc64") {
      uint64_t crc = 0;
      for (size_t o = 0; o < len_bytes; o += slice)
        crc = crc64(crc, data + o, std::min(slice, len_bytes - o));
      sink = sink + crc;
    } else if (stage == "blake3") {
      Blake3Piece piece(0);
      for (size_t o = 0; o < len_bytes; o += slice)
        piece.update(data + o, std::min(slice, len_bytes - o));
      sink = sink + piece.state().cv_stack_len;
    } else if (stage == "md5") {
      Md5Stream s;
      for (size_t o = 0; o < len_bytes; o += slice)
        s.update(data + o, std::min(slice, len_bytes - o));
      sink = sink + s.digest()[0];
    } else if (stage == "aes_gcm") {
      RegionCipher cipher;
      ContentKey key{};
      cipher.set_key(key);
      // Encrypting in place is what the pipeline does; the copy into the frame is not timed apart
      // because the pipeline reads straight into it.
      for (size_t r = 0; r * kRegionBytes < len_bytes; ++r) {
        const size_t n = std::min(kRegionBytes, len_bytes - r * kRegionBytes);
        uint8_t* frame = scratch.data() + r * (kRegionBytes + kRegionOverheadBytes);
        cipher.begin_region(r, frame);
        for (size_t o = 0; o < n; o += slice)
          cipher.encrypt_slice(frame + kNonceBytes + o, std::min(slice, n - o));
        cipher.end_region(frame + kNonceBytes + n);
      }
      sink = sink + scratch[kNonceBytes];
    } else if (stage == "copy") {
      for (size_t o = 0; o < len_bytes; o += slice)
        std::memcpy(scratch.data() + o, data + o, std::min(slice, len_bytes - o));
      sink = sink + scratch[0];
    } else {
      throw std::invalid_argument("unknown stage '" + stage +
                                  "' (xxh3, crc64, blake3, md5, aes_gcm, copy)");
    }
  }
  const auto end = std::chrono::steady_clock::now();
  return std::chrono::duration<double>(end - start).count();
}

}  // namespace pyengine

namespace pyengine {
std::vector<std::pair<std::string, bool>> cpu_features() {
  std::vector<std::pair<std::string, bool>> out;
#if defined(__x86_64__)
  __builtin_cpu_init();
  out.emplace_back("sse4.1", __builtin_cpu_supports("sse4.1"));
  out.emplace_back("avx2", __builtin_cpu_supports("avx2"));
  out.emplace_back("avx512f", __builtin_cpu_supports("avx512f"));
  out.emplace_back("vaes", __builtin_cpu_supports("vaes"));
  out.emplace_back("vpclmulqdq", __builtin_cpu_supports("vpclmulqdq"));
  out.emplace_back("aes", __builtin_cpu_supports("aes"));
  out.emplace_back("pclmul", __builtin_cpu_supports("pclmul"));
#endif
  out.emplace_back("crc64_clmul", crc64_uses_clmul());
  return out;
}
}  // namespace pyengine
