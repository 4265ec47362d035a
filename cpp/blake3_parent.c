/* The one piece of BLAKE3 the public API does not expose: the chaining value of a parent node,
 * needed to join subtrees hashed by different threads. It calls the official compression
 * function (with its runtime SIMD dispatch) from the internal header; nothing is reimplemented. */
#include <string.h>

#include "blake3_impl.h"

void pyengine_blake3_parent_cv(const uint8_t block[BLAKE3_BLOCK_LEN], uint8_t out[BLAKE3_OUT_LEN]) {
  uint32_t cv[8];
  memcpy(cv, IV, sizeof(cv));
  blake3_compress_in_place(cv, block, BLAKE3_BLOCK_LEN, 0, PARENT);
  store_cv_words(out, cv);
}
