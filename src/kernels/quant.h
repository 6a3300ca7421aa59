// The GGUF (ggml) block-quantised weight types: their byte layouts, exact dequantisation, and
// quantisers for tests and test checkpoints. Knows no model.
//
// Every type stores a row as cols / block_values(dtype) blocks, one after another, little-endian,
// without padding; "f16" is IEEE half precision. Value i of a block:
//
// Q8_0 (34 bytes per 32 values): f16 d; int8 qs[32].       value i = d * qs[i]
// Q4_0 (18 bytes per 32 values): f16 d; uint8 qs[16].      value j = d * ((qs[j] & 0xF) - 8),
//                                                          value j + 16 = d * ((qs[j] >> 4) - 8)
// Q4_K (144 bytes per 256):      f16 d; f16 dmin; uint8 scales[12]; uint8 qs[128].
//   Eight sub-blocks of 32 values, sub-block j with a 6-bit scale sc_j and 6-bit min m_j packed in
//   scales[] (q4k_scale_min). Chunk c (0..3) of 64 values uses qs[32c, 32c + 32): the low nibbles q
//   are values 64c + l of sub-block 2c, the high nibbles values 64c + 32 + l of sub-block 2c + 1;
//   value = d * sc_j * q - dmin * m_j.
// Q6_K (210 bytes per 256):      uint8 ql[128]; uint8 qh[64]; int8 scales[16]; f16 d.
//   Half n (0, 1) holds values 128n + [0, 128) in ql[64n, 64n + 64), qh[32n, 32n + 32); for
//   l < 32: value 128n + l      = low nibble of ql[64n + l]       | bits 0-1 of qh[32n + l] << 4,
//           value 128n + l + 32 = low nibble of ql[64n + l + 32]  | bits 2-3 of qh[32n + l] << 4,
//           value 128n + l + 64 = high nibble of ql[64n + l]      | bits 4-5 of qh[32n + l] << 4,
//           value 128n + l + 96 = high nibble of ql[64n + l + 32] | bits 6-7 of qh[32n + l] << 4,
//   each a 6-bit q; value v = d * scales[v / 16] * (q - 32) (16 groups of 16 values).
//
// Dequantised values are computed in fp32 as written (d * sc first): every product is exact (at
// most 24 significant bits), so a value is exact except Q4_K's final subtraction, rounded once.
// The SIMD kernels reproduce these values bit for bit.
#pragma once

#include <cstdint>

#include "kernels/matrix.h"

namespace bhmoe::kernels {

// Byte offsets of the fields in a block.
namespace q8_0 {
inline constexpr int kD = 0, kQs = 2;
}
namespace q4_0 {
inline constexpr int kD = 0, kQs = 2;
}
namespace q4_k {
inline constexpr int kD = 0, kDmin = 2, kScales = 4, kQs = 16;
}
namespace q6_k {
inline constexpr int kQl = 0, kQh = 128, kScales = 192, kD = 208;
}

// A little-endian 16-bit field (an f16 bit pattern) at any alignment.
inline uint16_t load_u16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}

// Sub-block j's (0..7) 6-bit scale and min from a Q4_K block's 12 packed bytes: for j < 4 the low 6
// bits of scales[j] and scales[j + 4]; for j >= 4 the nibbles of scales[j + 4] (low: scale, high:
// min) with the top two bits of scales[j - 4] (scale) and scales[j] (min) above them.
inline void q4k_scale_min(const uint8_t* scales, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = scales[j] & 63;
    *m = scales[j + 4] & 63;
  } else {
    *sc = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4);
    *m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
  }
}

// The block_values(dtype) values of one block of a block type, in fp32 (exact as described above).
void dequantize_block(DType dtype, const uint8_t* block, float* out);

// Row `row` of w (any dtype) to fp32: out[0, w.cols). The scalar reference for every dtype.
void dequantize_row(const Matrix& w, int64_t row, float* out);

// Quantises src (F32, F16 or BF16; cols a multiple of block_values(target)) to the block type
// `target`, writing src.rows * row_bytes(target, src.cols) bytes to out. Round to nearest; the
// scales are chosen so that no value clips. Bounds on |dequantised - src| per value, where d, dmin,
// sc are the stored (f16 / 6-bit / int8) scales:
// - Q8_0: d = absmax(block) / 127 rounded up to f16 (so nothing clips): |error| <= d / 2
//   <= absmax / 254 * (1 + 2^-10), or + 2^-25 where d is an f16 subnormal (below 2^-14).
// - Q4_0: d = absmax(block) / 7.5 rounded up to f16, q - 8 = round(x / d) in [-8, 7] (+7.5 clips
//   to 7, half a step): |error| <= d / 2 <= absmax / 15 * (1 + 2^-10) (+ 2^-25, as for Q8_0).
// - Q4_K: per sub-block of 32, the range [min(0, min x), max x] is covered by
//   [-dmin * m, -dmin * m + 15 d sc] with m and then sc rounded up (so nothing clips):
//   |error| <= d * sc / 2 <= ((max x - min(0, min x) + dmin) / 15 + d) / 2.
// - Q6_K: per group of 16, sc rounded up so that d * sc >= absmax(group) / 31.5:
//   |error| <= d * sc / 2 <= absmax(group) / 63 + d / 2.
// All-zero blocks store zero scales. Throws bhmoe::Error if target is not a block type, src is not
// F32/F16/BF16, cols is not a multiple of the block, a value is not finite, or a scale overflows
// f16.
void quantize_rows(const Matrix& src, DType target, uint8_t* out);

// A Matrix view over block-type data [rows, cols].
Matrix block_matrix(const void* data, DType dtype, int64_t rows, int64_t cols);

}  // namespace bhmoe::kernels
