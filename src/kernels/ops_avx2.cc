// The Avx2 level: AVX2 + FMA + F16C, 8 fp32 lanes. Every function carries the target attribute, so
// the file builds without -mavx2 and runs only after the dispatcher checked the CPU.
// GCC 12 warns inside its own AVX-512 reduction/conversion intrinsics (their _mm*_undefined_*()
// placeholders); the warnings are false positives.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/kernels_impl.h"
#include "kernels/quant.h"

#define BHMOE_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace bhmoe::kernels::detail::avx2 {
namespace {

constexpr int kLanes = 8;

BHMOE_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// Eight weights of one row from column k, in fp32 (exact for every dtype; Q8 scaled by its block).
template <DType D>
BHMOE_AVX2 inline __m256 load8(const void* row, const float* row_scales, int64_t k) {
  if constexpr (D == DType::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(row) + k);
  } else if constexpr (D == DType::F16) {
    return _mm256_cvtph_ps(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + k)));
  } else if constexpr (D == DType::BF16) {
    __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + k));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    __m128i q =
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(static_cast<const int8_t*>(row) + k));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)),
                         _mm256_set1_ps(row_scales[k / kQ8Block]));
  }
}

// Y[t, r - row_begin] for R rows from r0 and T tokens from x: each weight vector loaded once is
// used for T tokens (register blocking R x T). Columns past the last multiple of 8 run scalar.
// With accumulate, adds the sums to y instead of storing them.
template <DType D, int R, int T>
BHMOE_AVX2 void tile(const Matrix& w, int64_t r0, const float* x, int64_t x_stride, float* y,
                     int64_t y_stride, bool accumulate = false) {
  const int64_t cols = w.cols;
  const int64_t vec_end = cols & ~int64_t{kLanes - 1};
  const size_t esize = dtype_size(D);
  const void* rows[R];
  const float* scales[R];
  for (int i = 0; i < R; ++i) {
    rows[i] = static_cast<const uint8_t*>(w.data) + (r0 + i) * cols * esize;
    scales[i] = D == DType::Q8 ? w.scales + (r0 + i) * (cols / kQ8Block) : nullptr;
  }
  __m256 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc[i][t] = _mm256_setzero_ps();
  for (int64_t k = 0; k < vec_end; k += kLanes) {
    __m256 wv[R];
    for (int i = 0; i < R; ++i) wv[i] = load8<D>(rows[i], scales[i], k);
    for (int t = 0; t < T; ++t) {
      __m256 xv = _mm256_loadu_ps(x + t * x_stride + k);
      for (int i = 0; i < R; ++i) acc[i][t] = _mm256_fmadd_ps(wv[i], xv, acc[i][t]);
    }
  }
  for (int i = 0; i < R; ++i) {
    for (int t = 0; t < T; ++t) {
      float sum = hsum(acc[i][t]);
      for (int64_t c = vec_end; c < cols; ++c)
        sum += load_weight(w, r0 + i, c) * x[t * x_stride + c];
      y[t * y_stride + i] = accumulate ? y[t * y_stride + i] + sum : sum;
    }
  }
}

constexpr int kRows = 4;
constexpr int kTokens = 2;

template <DType D, int R>
BHMOE_AVX2 void row_group(const Matrix& w, int64_t r0, const float* x, int64_t x_stride,
                          int64_t num_tokens, float* y, int64_t y_stride, bool accumulate = false) {
  int64_t t = 0;
  for (; t + kTokens <= num_tokens; t += kTokens) {
    tile<D, R, kTokens>(w, r0, x + t * x_stride, x_stride, y + t * y_stride, y_stride, accumulate);
  }
  if (t < num_tokens) {
    tile<D, R, 1>(w, r0, x + t * x_stride, x_stride, y + t * y_stride, y_stride, accumulate);
  }
}

template <DType D>
BHMOE_AVX2 void matmul_typed(const Matrix& w, const float* x, int64_t x_stride, int64_t num_tokens,
                             float* y, int64_t y_stride, int64_t row_begin, int64_t row_end) {
  int64_t r = row_begin;
  for (; r + kRows <= row_end; r += kRows) {
    row_group<D, kRows>(w, r, x, x_stride, num_tokens, y + (r - row_begin), y_stride);
  }
  for (; r < row_end; ++r) {
    row_group<D, 1>(w, r, x, x_stride, num_tokens, y + (r - row_begin), y_stride);
  }
}

// ---- GGUF block types ------------------------------------------------------------------------

BHMOE_AVX2 inline __m256i dot_u8s8(__m256i u, __m256i s) {
  // vpmaddubsw adds pairs into int16 (saturating; no pair here exceeds 2 * 128 * 127 < 2^15).
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

#define BHMOE_QUANT_TARGET BHMOE_AVX2
#include "kernels/quant_simd_impl.h"
#undef BHMOE_QUANT_TARGET

// out[i] = q[i] * s - sub for 32 int8 values q, s = s_first for the first 16 and s_last for the
// rest; one rounding (fmsub), so Q4_K's d * sc * q - dmin * m matches the scalar reference bits.
BHMOE_AVX2 inline void store_scaled32(float* out, __m256i q, float s_first, float s_last,
                                      float sub) {
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  const __m256 vs_first = _mm256_set1_ps(s_first), vs_last = _mm256_set1_ps(s_last);
  const __m256 vsub = _mm256_set1_ps(sub);
  _mm256_storeu_ps(out,
                   _mm256_fmsub_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), vs_first, vsub));
  _mm256_storeu_ps(out + 8,
                   _mm256_fmsub_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))),
                                   vs_first, vsub));
  _mm256_storeu_ps(out + 16,
                   _mm256_fmsub_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), vs_last, vsub));
  _mm256_storeu_ps(out + 24,
                   _mm256_fmsub_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))),
                                   vs_last, vsub));
}

// `blocks` blocks of one row from `row`, dequantised to fp32 (bit-identical to dequantize_row).
template <DType D>
BHMOE_AVX2 void dequantize_blocks(const uint8_t* row, int64_t blocks, float* out) {
  if constexpr (D == DType::Q8_0) {
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = row + 34 * b;
      const float d = f16_value(blk + q8_0::kD);
      store_scaled32(out + 32 * b,
                     _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + q8_0::kQs)), d, d,
                     0.0f);
    }
  } else if constexpr (D == DType::Q4_0) {
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = row + 18 * b;
      const float d = f16_value(blk + q4_0::kD);
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + q4_0::kQs));
      const __m256i q = _mm256_sub_epi8(low_nibbles(_mm256_set_m128i(_mm_srli_epi16(v, 4), v)),
                                        _mm256_set1_epi8(8));
      store_scaled32(out + 32 * b, q, d, d, 0.0f);
    }
  } else if constexpr (D == DType::Q4_K) {
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = row + 144 * b;
      const float d = f16_value(blk + q4_k::kD), dmin = f16_value(blk + q4_k::kDmin);
      for (int c = 0; c < 4; ++c) {
        int sc_lo, m_lo, sc_hi, m_hi;
        q4k_scale_min(blk + q4_k::kScales, 2 * c, &sc_lo, &m_lo);
        q4k_scale_min(blk + q4_k::kScales, 2 * c + 1, &sc_hi, &m_hi);
        const __m256i v =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + q4_k::kQs + 32 * c));
        const float s_lo = d * static_cast<float>(sc_lo), s_hi = d * static_cast<float>(sc_hi);
        store_scaled32(out + 256 * b + 64 * c, low_nibbles(v), s_lo, s_lo,
                       dmin * static_cast<float>(m_lo));
        store_scaled32(out + 256 * b + 64 * c + 32, high_nibbles(v), s_hi, s_hi,
                       dmin * static_cast<float>(m_hi));
      }
    }
  } else {
    static_assert(D == DType::Q6_K);
    const __m256i offset = _mm256_set1_epi8(32);
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* blk = row + 210 * b;
      const float d = f16_value(blk + q6_k::kD);
      const auto* scales = reinterpret_cast<const int8_t*>(blk + q6_k::kScales);
      for (int n = 0; n < 2; ++n) {
        __m256i q[4];
        q6k_half(blk, n, q);
        for (int k = 0; k < 4; ++k) {
          store_scaled32(out + 256 * b + 128 * n + 32 * k, _mm256_sub_epi8(q[k], offset),
                         d * static_cast<float>(scales[8 * n + 2 * k]),
                         d * static_cast<float>(scales[8 * n + 2 * k + 1]), 0.0f);
        }
      }
    }
  }
}

// Block-type matmul: each group of rows is dequantised exactly to fp32, kBlockPanel columns at a
// time, into a stack buffer (32 KiB) that the fp32 tiles then use for every token.
constexpr int64_t kBlockPanel = 2048;

template <DType D>
BHMOE_AVX2 void matmul_blocks(const Matrix& w, const float* x, int64_t x_stride, int64_t num_tokens,
                              float* y, int64_t y_stride, int64_t row_begin, int64_t row_end) {
  alignas(32) float panel[kRows * kBlockPanel];
  const int64_t values = block_values(D);
  const int64_t stride = static_cast<int64_t>(row_bytes(D, w.cols));
  const int64_t bytes = static_cast<int64_t>(block_bytes(D));
  const auto* base = static_cast<const uint8_t*>(w.data);
  for (int64_t r = row_begin; r < row_end;) {
    const int64_t group = row_end - r >= kRows ? kRows : 1;
    for (int64_t k0 = 0; k0 < w.cols; k0 += kBlockPanel) {
      const int64_t width = std::min(w.cols - k0, kBlockPanel);
      for (int64_t i = 0; i < group; ++i) {
        dequantize_blocks<D>(base + (r + i) * stride + k0 / values * bytes, width / values,
                             panel + i * width);
      }
      const Matrix block{panel, DType::F32, group, width, nullptr};
      float* yr = y + (r - row_begin);
      if (group == kRows) {
        row_group<DType::F32, kRows>(block, 0, x + k0, x_stride, num_tokens, yr, y_stride, k0 > 0);
      } else {
        row_group<DType::F32, 1>(block, 0, x + k0, x_stride, num_tokens, yr, y_stride, k0 > 0);
      }
    }
    r += group;
  }
}

// exp(x) within ~2 ulp (Cody-Waite reduction, cephes-style polynomial) for x in [-87.3, 88.3];
// below that 0 (the true value is under 2^-126, so exp(-inf) = 0), above it saturates near 2^127.
// NaN stays NaN.
BHMOE_AVX2 inline __m256 exp8(__m256 x) {
  const __m256 low = _mm256_set1_ps(-87.3365478515625f);
  const __m256 keep = _mm256_cmp_ps(x, low, _CMP_NLT_UQ);  // false only for x < low
  x = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x);
  x = _mm256_max_ps(low, x);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

}  // namespace

BHMOE_AVX2 void matmul(const Matrix& w, const float* x, int64_t x_stride, int64_t num_tokens,
                       float* y, int64_t y_stride, int64_t row_begin, int64_t row_end) {
  switch (w.dtype) {
    case DType::F32:
      return matmul_typed<DType::F32>(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end);
    case DType::F16:
      return matmul_typed<DType::F16>(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end);
    case DType::BF16:
      return matmul_typed<DType::BF16>(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end);
    case DType::Q8:
      return matmul_typed<DType::Q8>(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end);
    case DType::Q8_0:
      return matmul_blocks<DType::Q8_0>(w, x, x_stride, num_tokens, y, y_stride, row_begin,
                                        row_end);
    case DType::Q4_0:
      return matmul_blocks<DType::Q4_0>(w, x, x_stride, num_tokens, y, y_stride, row_begin,
                                        row_end);
    case DType::Q4_K:
      return matmul_blocks<DType::Q4_K>(w, x, x_stride, num_tokens, y, y_stride, row_begin,
                                        row_end);
    case DType::Q6_K:
      return matmul_blocks<DType::Q6_K>(w, x, x_stride, num_tokens, y, y_stride, row_begin,
                                        row_end);
  }
}

BHMOE_AVX2 void matvec(const Matrix& w, const float* x, float* y, int64_t row_begin,
                       int64_t row_end) {
  if (is_block_dtype(w.dtype)) return quant_matvec(w, x, y, row_begin, row_end);
  matmul(w, x, w.cols, 1, y, row_end - row_begin, row_begin, row_end);
}

BHMOE_AVX2 void dequantize_range(const Matrix& w, int64_t r, int64_t k0, int64_t k1, float* out) {
  const int64_t values = block_values(w.dtype);
  const auto* row = static_cast<const uint8_t*>(w.data) + r * row_bytes(w.dtype, w.cols) +
                    k0 / values * block_bytes(w.dtype);
  const int64_t blocks = (k1 - k0) / values;
  switch (w.dtype) {
    case DType::Q8_0:
      return dequantize_blocks<DType::Q8_0>(row, blocks, out);
    case DType::Q4_0:
      return dequantize_blocks<DType::Q4_0>(row, blocks, out);
    case DType::Q4_K:
      return dequantize_blocks<DType::Q4_K>(row, blocks, out);
    case DType::Q6_K:
      return dequantize_blocks<DType::Q6_K>(row, blocks, out);
    default:
      return;
  }
}

BHMOE_AVX2 float sum_squares(const float* x, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
    acc0 = _mm256_fmadd_ps(a, a, acc0);
    acc1 = _mm256_fmadd_ps(b, b, acc1);
  }
  float sum = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += x[i] * x[i];
  return sum;
}

BHMOE_AVX2 void scale_by_weight(const float* x, float scale, const Matrix& weight, int64_t n,
                                float* out) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  const int64_t vec_end = n & ~int64_t{kLanes - 1};
  for (; i < vec_end; i += kLanes) {
    __m256 wv;
    switch (weight.dtype) {
      case DType::F32:
        wv = load8<DType::F32>(weight.data, weight.scales, i);
        break;
      case DType::F16:
        wv = load8<DType::F16>(weight.data, weight.scales, i);
        break;
      case DType::BF16:
        wv = load8<DType::BF16>(weight.data, weight.scales, i);
        break;
      default:
        wv = load8<DType::Q8>(weight.data, weight.scales, i);
        break;
    }
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), s), wv));
  }
  for (; i < n; ++i) out[i] = x[i] * scale * load_weight(weight, 0, i);
}

BHMOE_AVX2 void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  int64_t i = 0;
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + kLanes <= n; i += kLanes) {
    __m256 g = _mm256_loadu_ps(gate + i);
    __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

BHMOE_AVX2 void axpy(float a, const float* x, float* y, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += a * x[i];
}

BHMOE_AVX2 float dot_f32(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  float sum = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

BHMOE_AVX2 float max_f32(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
  alignas(32) float lanes[kLanes];
  _mm256_store_ps(lanes, m);
  float best = lanes[0];
  for (int l = 1; l < kLanes; ++l) best = lanes[l] > best ? lanes[l] : best;
  for (; i < n; ++i) best = x[i] > best ? x[i] : best;
  return best;
}

BHMOE_AVX2 float exp_shift_sum(float* x, float shift, int64_t n) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    _mm256_storeu_ps(x + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum(acc);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

BHMOE_AVX2 void scale_f32(float* x, float s, int64_t n) {
  const __m256 sv = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), sv));
  for (; i < n; ++i) x[i] *= s;
}

}  // namespace bhmoe::kernels::detail::avx2
