// Internal: the 256-bit integer-dot matvec for the GGUF block types, shared by the Avx2 level
// (vpmaddubsw + vpmaddwd) and the Avx512Bf16 level (vpdpbusd, AVX512-VNNI on ymm registers).
//
// Not a normal header: ops_avx2.cc and ops_avx512.cc each include it inside their own anonymous
// namespace, after <immintrin.h> and after defining
//   BHMOE_QUANT_TARGET  the target attribute every function here carries, and
//   BHMOE_QUANT_TARGET inline __m256i dot_u8s8(__m256i u, __m256i s)
//                       per 32-bit lane, the sum of the four products u8 * s8 of that lane's bytes
//                       (exact for |u * s| pairs up to 2 * 128 * 127, which holds for every use).
// so each level gets its own copy compiled for its instruction set.
//
// Algorithm (the precision contract is in ops.h): x is quantised per 32 columns to int8 (symmetric
// absmax, round to nearest); each weight block is unpacked in registers to int8 (Q8_0, Q4_0 - 8,
// Q6_K - 32: signed, multiplied through |w| and sign(w) * x) or uint8 (Q4_K nibbles, whose mins are
// applied through the per-block sums of quantised x); the int32 dot of every 32 (Q6_K: 16) columns
// is scaled in fp32 by weight scale * x scale and accumulated in fp32. (On Avx512Bf16 all four
// types use zmm versions of the same arithmetic in ops_avx512.cc; Q8_0 and Q4_0 fall back to
// row_dot_blocks here for the blocks after the last full 16 of an x panel.)

// Columns of x quantised at once (a multiple of 256): a matrix with more columns is processed in
// panels, adding each panel's dot to y. 4 KiB of int8 on the stack.
constexpr int64_t kQuantXPanel = 4096;

BHMOE_QUANT_TARGET inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

BHMOE_QUANT_TARGET inline float f16_value(const uint8_t* p) {
  return _cvtsh_ss(load_u16(p));
}

// A Q4_K block's 12 packed bytes as the 8 six-bit scales and the 8 mins, one per byte (sub-block j
// in byte j), with 32-bit word operations equivalent to q4k_scale_min.
BHMOE_QUANT_TARGET inline void q4k_unpack(const uint8_t* packed, uint64_t* scales, uint64_t* mins) {
  uint32_t w0, w1, w2;
  std::memcpy(&w0, packed, 4);
  std::memcpy(&w1, packed + 4, 4);
  std::memcpy(&w2, packed + 8, 4);
  const uint32_t sc_lo = w0 & 0x3f3f3f3fu, m_lo = w1 & 0x3f3f3f3fu;
  const uint32_t sc_hi = (w2 & 0x0f0f0f0fu) | ((w0 >> 2) & 0x30303030u);
  const uint32_t m_hi = ((w2 >> 4) & 0x0f0f0f0fu) | ((w1 >> 2) & 0x30303030u);
  *scales = sc_lo | (static_cast<uint64_t>(sc_hi) << 32);
  *mins = m_lo | (static_cast<uint64_t>(m_hi) << 32);
}

// Eight bytes as eight floats.
BHMOE_QUANT_TARGET inline __m256 bytes_to_f32(uint64_t bytes) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<int64_t>(bytes))));
}

// x[0, n) (n a multiple of 32) as int8 q, with per 32 columns the scale absmax / 127 (q * scale ~=
// x) and scale * sum(q) (for the Q4_K mins).
BHMOE_QUANT_TARGET inline void quantize_x32(const float* x, int64_t n, int8_t* q, float* scale,
                                            float* qsum) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t b = 0; b < n / 32; ++b) {
    const float* xb = x + 32 * b;
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(xb + 8 * i);
    __m256 m =
        _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask)),
                      _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    const float absmax = _mm_cvtss_f32(m4);
    const __m256 inverse = _mm256_set1_ps(absmax > 0.0f ? 127.0f / absmax : 0.0f);
    __m256i i32[4];
    for (int i = 0; i < 4; ++i) {
      i32[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inverse));  // round to nearest even
    }
    const __m256i sum =
        _mm256_add_epi32(_mm256_add_epi32(i32[0], i32[1]), _mm256_add_epi32(i32[2], i32[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    // packs interleave the 128-bit lanes; the permutation restores column order.
    const __m256i i16a = _mm256_packs_epi32(i32[0], i32[1]);
    const __m256i i16b = _mm256_packs_epi32(i32[2], i32[3]);
    const __m256i i8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(i16a, i16b), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 32 * b), i8);
    scale[b] = absmax / 127.0f;
    qsum[b] = scale[b] * static_cast<float>(_mm_cvtsi128_si32(s4));
  }
}

// dot(w, x) per 32-bit lane for signed int8 weights w: |w| (unsigned, 128 for -128) times
// sign(w) * x.
BHMOE_QUANT_TARGET inline __m256i dot_signed(__m256i w, __m256i xq) {
  return dot_u8s8(_mm256_abs_epi8(w), _mm256_sign_epi8(xq, w));
}

BHMOE_QUANT_TARGET inline __m256i low_nibbles(__m256i v) {
  return _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
}
BHMOE_QUANT_TARGET inline __m256i high_nibbles(__m256i v) {
  return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0f));
}

// Half n (0 or 1) of a Q6_K block as four vectors of 32 six-bit q (0..63, before the -32 offset):
// q[k] holds values 128n + 32k .. 128n + 32k + 31 (the layout in quant.h).
BHMOE_QUANT_TARGET inline void q6k_half(const uint8_t* blk, int n, __m256i q[4]) {
  const __m256i low2 = _mm256_set1_epi8(0x03), bits45 = _mm256_set1_epi8(0x30);
  const auto* ql = reinterpret_cast<const __m256i*>(blk + q6_k::kQl + 64 * n);
  const __m256i a = _mm256_loadu_si256(ql), c = _mm256_loadu_si256(ql + 1);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + q6_k::kQh + 32 * n));
  q[0] = _mm256_or_si256(low_nibbles(a), _mm256_slli_epi16(_mm256_and_si256(h, low2), 4));
  q[1] = _mm256_or_si256(low_nibbles(c), _mm256_and_si256(_mm256_slli_epi16(h, 2), bits45));
  q[2] = _mm256_or_si256(high_nibbles(a), _mm256_and_si256(h, bits45));
  q[3] = _mm256_or_si256(high_nibbles(c), _mm256_and_si256(_mm256_srli_epi16(h, 2), bits45));
}

// The dot of `blocks` consecutive blocks of one row (starting at `row`) with quantised x whose
// per-32 arrays start at the same column.
template <DType D>
BHMOE_QUANT_TARGET inline float row_dot_blocks(const uint8_t* row, int64_t blocks, const int8_t* xq,
                                               const float* xscale, const float* xsum) {
  __m256 acc = _mm256_setzero_ps();
  if constexpr (D == DType::Q8_0) {
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = row + 34 * b;
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + q8_0::kQs));
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * b));
      const __m256 s = _mm256_set1_ps(f16_value(blk + q8_0::kD) * xscale[b]);
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_signed(w, xv)), s, acc);
    }
    return hsum8(acc);
  } else if constexpr (D == DType::Q4_0) {
    const __m256i eight = _mm256_set1_epi8(8);
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = row + 18 * b;
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + q4_0::kQs));
      const __m256i both = _mm256_set_m128i(_mm_srli_epi16(v, 4), v);  // values 16-31 from >> 4
      const __m256i w = _mm256_sub_epi8(low_nibbles(both), eight);
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * b));
      const __m256 s = _mm256_set1_ps(f16_value(blk + q4_0::kD) * xscale[b]);
      acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_signed(w, xv)), s, acc);
    }
    return hsum8(acc);
  } else if constexpr (D == DType::Q4_K) {
    __m256 min_acc = _mm256_setzero_ps();
    alignas(32) float scale[8];
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = row + 144 * b;
      uint64_t sc, m;
      q4k_unpack(blk + q4_k::kScales, &sc, &m);
      // d * sc_j * dx_j per sub-block; the mins: dmin * m_j * (dx_j * sum of q(x) over j).
      const __m256 dx = _mm256_loadu_ps(xscale + 8 * b);
      _mm256_store_ps(scale, _mm256_mul_ps(bytes_to_f32(sc),
                                           _mm256_mul_ps(_mm256_set1_ps(f16_value(blk)), dx)));
      min_acc = _mm256_fmadd_ps(_mm256_mul_ps(bytes_to_f32(m), _mm256_set1_ps(f16_value(blk + 2))),
                                _mm256_loadu_ps(xsum + 8 * b), min_acc);
      const int8_t* xb = xq + 256 * b;
      for (int c = 0; c < 4; ++c) {
        const __m256i v =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + q4_k::kQs + 32 * c));
        const __m256i x_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 64 * c));
        const __m256i x_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + 64 * c + 32));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8s8(low_nibbles(v), x_lo)),
                              _mm256_broadcast_ss(scale + 2 * c), acc);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8s8(high_nibbles(v), x_hi)),
                              _mm256_broadcast_ss(scale + 2 * c + 1), acc);
      }
    }
    return hsum8(acc) - hsum8(min_acc);
  } else {
    static_assert(D == DType::Q6_K);
    const __m256i offset = _mm256_set1_epi8(32);
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = row + 210 * b;
      // d * sc_g * dx_(g / 2) for the 16 groups of 16.
      alignas(32) float scale[16];
      const __m256 d = _mm256_set1_ps(f16_value(blk + q6_k::kD));
      const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + q6_k::kScales));
      const __m256i pairs = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
      const __m256 dx_lo =
          _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(xscale + 8 * b)), pairs);
      const __m256 dx_hi =
          _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(xscale + 8 * b + 4)), pairs);
      _mm256_store_ps(
          scale,
          _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)), d), dx_lo));
      _mm256_store_ps(
          scale + 8,
          _mm256_mul_ps(
              _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8))), d),
              dx_hi));
      for (int n = 0; n < 2; ++n) {
        __m256i q[4];
        q6k_half(blk, n, q);
        for (int k = 0; k < 4; ++k) {
          const int64_t x_block = 8 * b + 4 * n + k;
          const __m256i xv =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * x_block));
          const __m256i dot = dot_signed(_mm256_sub_epi8(q[k], offset), xv);
          // Lanes 0-3 hold group 8n + 2k, lanes 4-7 the next one.
          const float* g = scale + 8 * n + 2 * k;
          const __m256 s = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_broadcast_ss(g)),
                                                _mm_broadcast_ss(g + 1), 1);
          acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc);
        }
      }
    }
    return hsum8(acc);
  }
}

// y[r - row_begin] = dot(W[r], x) for block-type weights, x quantised per 32 columns.
template <DType D>
BHMOE_QUANT_TARGET void quant_matvec_typed(const Matrix& w, const float* x, float* y,
                                           int64_t row_begin, int64_t row_end) {
  alignas(32) int8_t xq[kQuantXPanel];
  float xscale[kQuantXPanel / 32], xsum[kQuantXPanel / 32];
  const int64_t values = block_values(D);
  const int64_t bytes = static_cast<int64_t>(block_bytes(D));
  const int64_t stride = static_cast<int64_t>(row_bytes(D, w.cols));
  const auto* base = static_cast<const uint8_t*>(w.data);
  for (int64_t k0 = 0; k0 < w.cols; k0 += kQuantXPanel) {
    const int64_t k1 = std::min(w.cols, k0 + kQuantXPanel);
    quantize_x32(x + k0, k1 - k0, xq, xscale, xsum);
    const int64_t first_block = k0 / values, blocks = (k1 - k0) / values;
    for (int64_t r = row_begin; r < row_end; ++r) {
      const float dot =
          row_dot_blocks<D>(base + r * stride + first_block * bytes, blocks, xq, xscale, xsum);
      y[r - row_begin] = k0 == 0 ? dot : y[r - row_begin] + dot;
    }
  }
}

BHMOE_QUANT_TARGET void quant_matvec(const Matrix& w, const float* x, float* y, int64_t row_begin,
                                     int64_t row_end) {
  switch (w.dtype) {
    case DType::Q8_0:
      return quant_matvec_typed<DType::Q8_0>(w, x, y, row_begin, row_end);
    case DType::Q4_0:
      return quant_matvec_typed<DType::Q4_0>(w, x, y, row_begin, row_end);
    case DType::Q4_K:
      return quant_matvec_typed<DType::Q4_K>(w, x, y, row_begin, row_end);
    case DType::Q6_K:
      return quant_matvec_typed<DType::Q6_K>(w, x, y, row_begin, row_end);
    default:
      return;
  }
}
