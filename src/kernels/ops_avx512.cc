// The Avx512 and Avx512Bf16 levels: AVX-512F/BW/VL/DQ with FMA (16 fp32 lanes), plus vdpbf16ps
// (AVX512-BF16) and vpdpbusd (AVX512-VNNI) where the CPU has them. Every function carries its
// target attribute, so the file builds for baseline x86-64 and runs only after the dispatcher
// checked the CPU. GCC 12 warns inside its own AVX-512 reduction/conversion intrinsics (their
// _mm*_undefined_*() placeholders); the warnings are false positives.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/kernels_impl.h"
#include "kernels/quant.h"

#define BHMOE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define BHMOE_AVX512BF16                                                          \
  __attribute__((                                                                 \
      target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx512vnni,avx2,fma," \
             "f16c")))

namespace bhmoe::kernels::detail::avx512 {

int64_t g_matvec_rows_at_once = 1;    // cold 2048x1024 bf16: 1 stream ~2x faster than 4
int64_t g_bf16_col_block = 0;         // 512 and 1024 measured slower than whole rows
int64_t g_matvec_prefetch_bytes = 0;  // no measurable gain over the hardware prefetchers
int64_t g_matmul_prefetch_next = 1;   // row groups ahead (0: off; 1, 2, 4 measured alike)

namespace {

constexpr int kLanes = 16;

// Per-thread scratch that grows to the largest size seen and is then reused: no allocation per call
// once a sequence has run a first token.
template <typename T>
T* scratch(std::vector<T>& buffer, size_t n) {
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

// Lanes [0, remaining) of 16 (none if remaining <= 0).
BHMOE_AVX512 inline __mmask16 tail_mask16(int64_t remaining) {
  if (remaining <= 0) return 0;
  return remaining >= 16 ? __mmask16(0xffff) : __mmask16((1u << remaining) - 1);
}

// 16 weights of one row from column k, in fp32 (exact for every dtype; Q8 scaled by its block).
// Masked lanes read nothing and are zero.
template <DType D>
BHMOE_AVX512 inline __m512 load16(const void* row, const float* row_scales, int64_t k,
                                  __mmask16 mask) {
  if constexpr (D == DType::F32) {
    return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(row) + k);
  } else if constexpr (D == DType::F16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(row) + k));
  } else if constexpr (D == DType::BF16) {
    __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(row) + k);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    __m128i q = _mm_maskz_loadu_epi8(mask, static_cast<const int8_t*>(row) + k);
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)),
                         _mm512_set1_ps(row_scales[k / kQ8Block]));
  }
}

template <DType D>
BHMOE_AVX512 inline __m512 load16(const void* row, const float* row_scales, int64_t k) {
  if constexpr (D == DType::F32) {
    return _mm512_loadu_ps(static_cast<const float*>(row) + k);
  } else if constexpr (D == DType::F16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + k)));
  } else if constexpr (D == DType::BF16) {
    __m256i h =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + k));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    __m128i q =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const int8_t*>(row) + k));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)),
                         _mm512_set1_ps(row_scales[k / kQ8Block]));
  }
}

// The horizontal sums of four vectors, as one 4-lane vector (a transposing reduction: ~13 shuffles
// and adds for four sums, against ~8 per sum for _mm512_reduce_add_ps).
BHMOE_AVX512 inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] and the same for c, d.
  __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  // Per 128-bit lane: [sum a, sum b, sum c, sum d] of that lane.
  __m512 abcd = _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xee));
  // Sum the four 128-bit lanes.
  abcd = _mm512_add_ps(abcd, _mm512_shuffle_f32x4(abcd, abcd, 0x4e));
  abcd = _mm512_add_ps(abcd, _mm512_shuffle_f32x4(abcd, abcd, 0xb1));
  return _mm512_castps512_ps128(abcd);
}

// Stores the R x T accumulator sums to y[t * y_stride + i].
// Stores (or with accumulate, adds) the R x T accumulator sums to y[t * y_stride + i].
template <int R, int T>
BHMOE_AVX512 inline void store_sums(__m512 (&acc)[R][T], float* y, int64_t y_stride,
                                    bool accumulate = false) {
  if constexpr (R == 4) {
    for (int t = 0; t < T; ++t) {
      __m128 sums = reduce4(acc[0][t], acc[1][t], acc[2][t], acc[3][t]);
      if (accumulate) sums = _mm_add_ps(sums, _mm_loadu_ps(y + t * y_stride));
      _mm_storeu_ps(y + t * y_stride, sums);
    }
  } else {
    for (int i = 0; i < R; ++i) {
      for (int t = 0; t < T; ++t) {
        const float sum = _mm512_reduce_add_ps(acc[i][t]);
        y[t * y_stride + i] = accumulate ? y[t * y_stride + i] + sum : sum;
      }
    }
  }
}

struct RowPointers {
  const void* data;
  const float* scales;
};

template <DType D>
BHMOE_AVX512 inline RowPointers row_pointers(const Matrix& w, int64_t r) {
  RowPointers p;
  p.data = static_cast<const uint8_t*>(w.data) + r * w.cols * static_cast<int64_t>(dtype_size(D));
  p.scales = D == DType::Q8 ? w.scales + r * (w.cols / kQ8Block) : nullptr;
  return p;
}

// ---- fp32-accumulate path (exact products) -------------------------------------------------

// Y[t, i] = dot(W[r0 + i], X[t]) for i < R, t < T: each weight vector loaded (and converted) once
// is used for T tokens.
// With accumulate, adds the sums to y instead of storing them.
template <DType D, int R, int T>
BHMOE_AVX512 void tile_f32(const Matrix& w, int64_t r0, const float* x, int64_t x_stride, float* y,
                           int64_t y_stride, bool accumulate = false) {
  const int64_t cols = w.cols;
  const int64_t vec_end = cols & ~int64_t{kLanes - 1};
  RowPointers rows[R];
  for (int i = 0; i < R; ++i) rows[i] = row_pointers<D>(w, r0 + i);
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();
  for (int64_t k = 0; k < vec_end; k += kLanes) {
    __m512 wv[R];
    for (int i = 0; i < R; ++i) wv[i] = load16<D>(rows[i].data, rows[i].scales, k);
    for (int t = 0; t < T; ++t) {
      __m512 xv = _mm512_loadu_ps(x + t * x_stride + k);
      for (int i = 0; i < R; ++i) acc[i][t] = _mm512_fmadd_ps(wv[i], xv, acc[i][t]);
    }
  }
  if (vec_end < cols) {
    const __mmask16 mask = tail_mask16(cols - vec_end);
    __m512 wv[R];
    for (int i = 0; i < R; ++i) wv[i] = load16<D>(rows[i].data, rows[i].scales, vec_end, mask);
    for (int t = 0; t < T; ++t) {
      __m512 xv = _mm512_maskz_loadu_ps(mask, x + t * x_stride + vec_end);
      for (int i = 0; i < R; ++i) acc[i][t] = _mm512_fmadd_ps(wv[i], xv, acc[i][t]);
    }
  }
  store_sums<R, T>(acc, y, y_stride, accumulate);
}

constexpr int kRows = 4;
constexpr int kTokens = 6;

template <DType D, int R>
BHMOE_AVX512 void row_group_f32(const Matrix& w, int64_t r0, const float* x, int64_t x_stride,
                                int64_t num_tokens, float* y, int64_t y_stride,
                                bool accumulate = false) {
  int64_t t = 0;
  for (; t + kTokens <= num_tokens; t += kTokens) {
    tile_f32<D, R, kTokens>(w, r0, x + t * x_stride, x_stride, y + t * y_stride, y_stride,
                            accumulate);
  }
  const float* xt = x + t * x_stride;
  float* yt = y + t * y_stride;
  switch (num_tokens - t) {
    case 1:
      return tile_f32<D, R, 1>(w, r0, xt, x_stride, yt, y_stride, accumulate);
    case 2:
      return tile_f32<D, R, 2>(w, r0, xt, x_stride, yt, y_stride, accumulate);
    case 3:
      return tile_f32<D, R, 3>(w, r0, xt, x_stride, yt, y_stride, accumulate);
    case 4:
      return tile_f32<D, R, 4>(w, r0, xt, x_stride, yt, y_stride, accumulate);
    case 5:
      return tile_f32<D, R, 5>(w, r0, xt, x_stride, yt, y_stride, accumulate);
    default:
      return;
  }
}

template <DType D>
BHMOE_AVX512 void matmul_f32(const Matrix& w, const float* x, int64_t x_stride, int64_t num_tokens,
                             float* y, int64_t y_stride, int64_t row_begin, int64_t row_end) {
  int64_t r = row_begin;
  for (; r + kRows <= row_end; r += kRows) {
    row_group_f32<D, kRows>(w, r, x, x_stride, num_tokens, y + (r - row_begin), y_stride);
  }
  for (; r < row_end; ++r) {
    row_group_f32<D, 1>(w, r, x, x_stride, num_tokens, y + (r - row_begin), y_stride);
  }
}

// ---- matvec (decode: memory-bound) ------------------------------------------------------------

// R rows at once (g_matvec_rows_at_once), 32 columns per step (two accumulators per row), with an
// optional software prefetch g_matvec_prefetch_bytes ahead in every row stream.
template <DType D, int R>
BHMOE_AVX512 void matvec_rows(const Matrix& w, int64_t r0, const float* x, float* y) {
  const int64_t cols = w.cols;
  const int64_t step_end = cols & ~int64_t{2 * kLanes - 1};
  const int64_t esize = static_cast<int64_t>(dtype_size(D));
  const int64_t prefetch = g_matvec_prefetch_bytes;
  RowPointers rows[R];
  for (int i = 0; i < R; ++i) rows[i] = row_pointers<D>(w, r0 + i);
  __m512 acc0[R], acc1[R];
  for (int i = 0; i < R; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < step_end; k += 2 * kLanes) {
    if (prefetch > 0) {
      for (int i = 0; i < R; ++i) {
        const char* p = static_cast<const char*>(rows[i].data) + k * esize + prefetch;
        _mm_prefetch(p, _MM_HINT_T0);
        if (esize == 4) _mm_prefetch(p + 64, _MM_HINT_T0);
      }
    }
    const __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + kLanes);
    for (int i = 0; i < R; ++i) {
      acc0[i] = _mm512_fmadd_ps(load16<D>(rows[i].data, rows[i].scales, k), x0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(load16<D>(rows[i].data, rows[i].scales, k + kLanes), x1, acc1[i]);
    }
  }
  for (int64_t k = step_end; k < cols; k += kLanes) {
    const __mmask16 mask = tail_mask16(cols - k);
    const __m512 xv = _mm512_maskz_loadu_ps(mask, x + k);
    for (int i = 0; i < R; ++i) {
      acc0[i] = _mm512_fmadd_ps(load16<D>(rows[i].data, rows[i].scales, k, mask), xv, acc0[i]);
    }
  }
  if constexpr (R == 4) {
    _mm_storeu_ps(y, reduce4(_mm512_add_ps(acc0[0], acc1[0]), _mm512_add_ps(acc0[1], acc1[1]),
                             _mm512_add_ps(acc0[2], acc1[2]), _mm512_add_ps(acc0[3], acc1[3])));
  } else {
    for (int i = 0; i < R; ++i) y[i] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[i], acc1[i]));
  }
}

template <DType D>
BHMOE_AVX512 void matvec_typed(const Matrix& w, const float* x, float* y, int64_t row_begin,
                               int64_t row_end) {
  int64_t r = row_begin;
  if (g_matvec_rows_at_once == 4) {
    for (; r + 4 <= row_end; r += 4) matvec_rows<D, 4>(w, r, x, y + (r - row_begin));
  } else if (g_matvec_rows_at_once == 2) {
    for (; r + 2 <= row_end; r += 2) matvec_rows<D, 2>(w, r, x, y + (r - row_begin));
  }
  for (; r < row_end; ++r) matvec_rows<D, 1>(w, r, x, y + (r - row_begin));
}

BHMOE_AVX512 void matvec_exact(const Matrix& w, const float* x, float* y, int64_t row_begin,
                               int64_t row_end) {
  switch (w.dtype) {
    case DType::F32:
      return matvec_typed<DType::F32>(w, x, y, row_begin, row_end);
    case DType::F16:
      return matvec_typed<DType::F16>(w, x, y, row_begin, row_end);
    case DType::BF16:
      return matvec_typed<DType::BF16>(w, x, y, row_begin, row_end);
    case DType::Q8:
      return matvec_typed<DType::Q8>(w, x, y, row_begin, row_end);
    default:
      return;  // block types never come here (matvec and matmul route them)
  }
}

// ---- GGUF block types ------------------------------------------------------------------------

// Block-type matmuls dequantise each group of rows, kBlockPanel columns at a time, into stack
// buffers (exactly to fp32 with avx2::dequantize_range, then to bf16 for vdpbf16ps) that the tiles
// then use for every token.
constexpr int64_t kBlockPanel = 2048;

BHMOE_AVX512 void matmul_blocks_f32(const Matrix& w, const float* x, int64_t x_stride,
                                    int64_t num_tokens, float* y, int64_t y_stride,
                                    int64_t row_begin, int64_t row_end) {
  alignas(64) float panel[kRows * kBlockPanel];  // 32 KiB
  for (int64_t r = row_begin; r < row_end;) {
    const int64_t group = row_end - r >= kRows ? kRows : 1;
    for (int64_t k0 = 0; k0 < w.cols; k0 += kBlockPanel) {
      const int64_t width = std::min(w.cols - k0, kBlockPanel);
      for (int64_t i = 0; i < group; ++i) {
        avx2::dequantize_range(w, r + i, k0, k0 + width, panel + i * width);
      }
      const Matrix block{panel, DType::F32, group, width, nullptr};
      float* yr = y + (r - row_begin);
      if (group == kRows) {
        row_group_f32<DType::F32, kRows>(block, 0, x + k0, x_stride, num_tokens, yr, y_stride,
                                         k0 > 0);
      } else {
        row_group_f32<DType::F32, 1>(block, 0, x + k0, x_stride, num_tokens, yr, y_stride, k0 > 0);
      }
    }
    r += group;
  }
}

BHMOE_AVX512 void matmul_exact(const Matrix& w, const float* x, int64_t x_stride,
                               int64_t num_tokens, float* y, int64_t y_stride, int64_t row_begin,
                               int64_t row_end) {
  switch (w.dtype) {
    case DType::F32:
      return matmul_f32<DType::F32>(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end);
    case DType::F16:
      return matmul_f32<DType::F16>(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end);
    case DType::BF16:
      return matmul_f32<DType::BF16>(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end);
    case DType::Q8:
      return matmul_f32<DType::Q8>(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end);
    default:
      return matmul_blocks_f32(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end);
  }
}

// ---- vdpbf16ps path (BF16 weights, activations rounded to bf16) ------------------------------

constexpr int kBf16Step = 32;  // bf16 elements per zmm

thread_local std::vector<uint16_t> t_x_bf16;

// X rounded to bf16 (RNE), each token padded with zeros to a multiple of 32 columns.
BHMOE_AVX512BF16 const uint16_t* activations_to_bf16(const float* x, int64_t x_stride,
                                                     int64_t num_tokens, int64_t cols,
                                                     int64_t padded) {
  uint16_t* out = scratch(t_x_bf16, static_cast<size_t>(num_tokens * padded));
  for (int64_t t = 0; t < num_tokens; ++t) {
    const float* xt = x + t * x_stride;
    uint16_t* ot = out + t * padded;
    for (int64_t k = 0; k < padded; k += kBf16Step) {
      __m512 lo = _mm512_maskz_loadu_ps(tail_mask16(cols - k), xt + k);
      __m512 hi = _mm512_maskz_loadu_ps(tail_mask16(cols - k - 16), xt + k + 16);
      _mm512_storeu_si512(ot + k, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
  return out;
}

// Rows to pull into the cache while a tile computes: row i at base + i * row_bytes, column k at
// byte k * element_bytes. The matmuls pass the next row group, so its weights stream in from memory
// while this group's dot products run (prefill reads each weight row once per chunk, so it is
// bound by compute and memory at once). Measured on the full OLMoE shape, bf16: prefill-64 faster
// in 7 of 7 alternating pairs (+3% to +15%, median +6%); q8: no difference.
struct PrefetchRows {
  const char* base = nullptr;
  int64_t row_bytes = 0;
  int64_t element_bytes = 0;
};

// Rows [r, r + count) of w as a PrefetchRows, or none past row_end or when disabled.
BHMOE_AVX512BF16 inline PrefetchRows prefetch_rows(const Matrix& w, int64_t r, int64_t count,
                                                   int64_t row_end) {
  if (g_matmul_prefetch_next <= 0 || r + count > row_end) return {};
  const int64_t element_bytes = static_cast<int64_t>(dtype_size(w.dtype));
  return {static_cast<const char*>(w.data) + r * w.cols * element_bytes, w.cols * element_bytes,
          element_bytes};
}

// Y[t, i] (+)= the dot over columns [k0, k1) of W[r0 + i] and X[t] for i < R, t < T.
template <int R, int T>
BHMOE_AVX512BF16 void tile_bf16(const Matrix& w, int64_t r0, const uint16_t* xb, int64_t padded,
                                float* y, int64_t y_stride, int64_t k0, int64_t k1, bool accumulate,
                                const PrefetchRows& next = {}) {
  const int64_t cols = w.cols;
  const int64_t full_end = std::min(k1, cols & ~int64_t{kBf16Step - 1});
  const uint16_t* rows[R];
  for (int i = 0; i < R; ++i) rows[i] = static_cast<const uint16_t*>(w.data) + (r0 + i) * cols;
  __m512 acc[R][T];
  for (int i = 0; i < R; ++i)
    for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();
  for (int64_t k = k0; k < full_end; k += kBf16Step) {
    __m512i wv[R];
    for (int i = 0; i < R; ++i) wv[i] = _mm512_loadu_si512(rows[i] + k);
    if (next.base != nullptr) {
      for (int i = 0; i < R; ++i) {
        _mm_prefetch(next.base + i * next.row_bytes + ((k * next.element_bytes) & ~int64_t{63}),
                     _MM_HINT_T0);
      }
    }
    for (int t = 0; t < T; ++t) {
      __m512i xv = _mm512_loadu_si512(xb + t * padded + k);
      for (int i = 0; i < R; ++i) {
        acc[i][t] = _mm512_dpbf16_ps(acc[i][t], (__m512bh)wv[i], (__m512bh)xv);
      }
    }
  }
  if (full_end < std::min(k1, cols)) {
    const __mmask32 mask = (__mmask32)((uint64_t{1} << (cols - full_end)) - 1);
    __m512i wv[R];
    for (int i = 0; i < R; ++i) wv[i] = _mm512_maskz_loadu_epi16(mask, rows[i] + full_end);
    for (int t = 0; t < T; ++t) {
      __m512i xv = _mm512_loadu_si512(xb + t * padded + full_end);
      for (int i = 0; i < R; ++i) {
        acc[i][t] = _mm512_dpbf16_ps(acc[i][t], (__m512bh)wv[i], (__m512bh)xv);
      }
    }
  }
  store_sums<R, T>(acc, y, y_stride, accumulate);
}

// Adds to y for columns after the first (k0 > 0) or with accumulate.
template <int R>
BHMOE_AVX512BF16 void row_group_bf16(const Matrix& w, int64_t r0, const uint16_t* xb,
                                     int64_t padded, int64_t num_tokens, float* y, int64_t y_stride,
                                     int64_t k0, int64_t k1, const PrefetchRows& next = {},
                                     bool accumulate = false) {
  const bool acc = k0 > 0 || accumulate;
  int64_t t = 0;
  for (; t + kTokens <= num_tokens; t += kTokens) {
    tile_bf16<R, kTokens>(w, r0, xb + t * padded, padded, y + t * y_stride, y_stride, k0, k1, acc,
                          t == 0 ? next : PrefetchRows{});
  }
  const PrefetchRows next_rest = t == 0 ? next : PrefetchRows{};
  const uint16_t* xt = xb + t * padded;
  float* yt = y + t * y_stride;
  switch (num_tokens - t) {
    case 1:
      return tile_bf16<R, 1>(w, r0, xt, padded, yt, y_stride, k0, k1, acc, next_rest);
    case 2:
      return tile_bf16<R, 2>(w, r0, xt, padded, yt, y_stride, k0, k1, acc, next_rest);
    case 3:
      return tile_bf16<R, 3>(w, r0, xt, padded, yt, y_stride, k0, k1, acc, next_rest);
    case 4:
      return tile_bf16<R, 4>(w, r0, xt, padded, yt, y_stride, k0, k1, acc, next_rest);
    case 5:
      return tile_bf16<R, 5>(w, r0, xt, padded, yt, y_stride, k0, k1, acc, next_rest);
    default:
      return;
  }
}

// Tokens per pass over the weight rows: X for a chunk (48 x 2048 bf16 = 192 KiB) stays in L2
// while each row group (in L1) meets all its tokens.
constexpr int64_t kTokenChunk = 8 * kTokens;

BHMOE_AVX512BF16 void matmul_bf16(const Matrix& w, const float* x, int64_t x_stride,
                                  int64_t num_tokens, float* y, int64_t y_stride, int64_t row_begin,
                                  int64_t row_end) {
  const int64_t padded = (w.cols + kBf16Step - 1) / kBf16Step * kBf16Step;
  const uint16_t* xb = activations_to_bf16(x, x_stride, num_tokens, w.cols, padded);
  for (int64_t t0 = 0; t0 < num_tokens; t0 += kTokenChunk) {
    const int64_t chunk = std::min(kTokenChunk, num_tokens - t0);
    const uint16_t* xc = xb + t0 * padded;
    float* yc = y + t0 * y_stride;
    const int64_t col_block = g_bf16_col_block > 0 ? g_bf16_col_block : w.cols;
    for (int64_t k0 = 0; k0 < w.cols; k0 += col_block) {
      const int64_t k1 = std::min(w.cols, k0 + col_block);
      int64_t r = row_begin;
      for (; r + kRows <= row_end; r += kRows) {
        row_group_bf16<kRows>(w, r, xc, padded, chunk, yc + (r - row_begin), y_stride, k0, k1,
                              prefetch_rows(w, r + g_matmul_prefetch_next * kRows, kRows, row_end));
      }
      for (; r < row_end; ++r) {
        row_group_bf16<1>(w, r, xc, padded, chunk, yc + (r - row_begin), y_stride, k0, k1);
      }
    }
  }
}

// Q8 weights over several tokens: each group of rows is dequantised to bf16 once per token chunk
// (w * scale rounded to bf16, relative error <= 2^-9) into L1-resident scratch and fed to the
// vdpbf16ps tiles: twice the throughput of converting to fp32 for every FMA.
thread_local std::vector<uint16_t> t_w_bf16;

BHMOE_AVX512BF16 void dequantize_rows_bf16(const Matrix& w, int64_t r0, int64_t num_rows,
                                           uint16_t* out) {
  const int64_t cols = w.cols;
  for (int64_t i = 0; i < num_rows; ++i) {
    const RowPointers row = row_pointers<DType::Q8>(w, r0 + i);
    for (int64_t k = 0; k < cols; k += kLanes) {
      const __mmask16 mask = tail_mask16(cols - k);
      __m512 v = load16<DType::Q8>(row.data, row.scales, k, mask);
      _mm256_mask_storeu_epi16(out + i * cols + k, mask, (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

BHMOE_AVX512BF16 void matmul_q8_bf16(const Matrix& w, const float* x, int64_t x_stride,
                                     int64_t num_tokens, float* y, int64_t y_stride,
                                     int64_t row_begin, int64_t row_end) {
  const int64_t padded = (w.cols + kBf16Step - 1) / kBf16Step * kBf16Step;
  const uint16_t* xb = activations_to_bf16(x, x_stride, num_tokens, w.cols, padded);
  uint16_t* rows_bf16 = scratch(t_w_bf16, static_cast<size_t>(kRows * w.cols));
  const Matrix block{rows_bf16, DType::BF16, kRows, w.cols, nullptr};
  for (int64_t t0 = 0; t0 < num_tokens; t0 += kTokenChunk) {
    const int64_t chunk = std::min(kTokenChunk, num_tokens - t0);
    const uint16_t* xc = xb + t0 * padded;
    float* yc = y + t0 * y_stride;
    int64_t r = row_begin;
    const int64_t col_block = g_bf16_col_block > 0 ? g_bf16_col_block : w.cols;
    for (; r + kRows <= row_end; r += kRows) {
      dequantize_rows_bf16(w, r, kRows, rows_bf16);
      const PrefetchRows next =
          prefetch_rows(w, r + g_matmul_prefetch_next * kRows, kRows, row_end);
      for (int64_t k0 = 0; k0 < w.cols; k0 += col_block) {
        row_group_bf16<kRows>(block, 0, xc, padded, chunk, yc + (r - row_begin), y_stride, k0,
                              std::min(w.cols, k0 + col_block), next);
      }
    }
    for (; r < row_end; ++r) {
      dequantize_rows_bf16(w, r, 1, rows_bf16);
      for (int64_t k0 = 0; k0 < w.cols; k0 += col_block) {
        row_group_bf16<1>(block, 0, xc, padded, chunk, yc + (r - row_begin), y_stride, k0,
                          std::min(w.cols, k0 + col_block));
      }
    }
  }
}

// Block types over several tokens, activations rounded to bf16: as matmul_q8_bf16, with the rows
// dequantised exactly to fp32 and rounded to bf16 (RNE, relative error <= 2^-9) in a stack panel.
BHMOE_AVX512BF16 void matmul_blocks_bf16(const Matrix& w, const float* x, int64_t x_stride,
                                         int64_t num_tokens, float* y, int64_t y_stride,
                                         int64_t row_begin, int64_t row_end) {
  const int64_t padded = (w.cols + kBf16Step - 1) / kBf16Step * kBf16Step;  // == cols
  const uint16_t* xb = activations_to_bf16(x, x_stride, num_tokens, w.cols, padded);
  alignas(64) float row_f32[kBlockPanel];           // 8 KiB
  alignas(64) uint16_t panel[kRows * kBlockPanel];  // 16 KiB
  for (int64_t t0 = 0; t0 < num_tokens; t0 += kTokenChunk) {
    const int64_t chunk = std::min(kTokenChunk, num_tokens - t0);
    const uint16_t* xc = xb + t0 * padded;
    float* yc = y + t0 * y_stride;
    for (int64_t r = row_begin; r < row_end;) {
      const int64_t group = row_end - r >= kRows ? kRows : 1;
      for (int64_t k0 = 0; k0 < w.cols; k0 += kBlockPanel) {
        const int64_t width = std::min(w.cols - k0, kBlockPanel);
        for (int64_t i = 0; i < group; ++i) {
          avx2::dequantize_range(w, r + i, k0, k0 + width, row_f32);
          for (int64_t k = 0; k < width; k += kLanes) {
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(panel + i * width + k),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(row_f32 + k)));
          }
        }
        const Matrix block{panel, DType::BF16, group, width, nullptr};
        float* yr = yc + (r - row_begin);
        if (group == kRows) {
          row_group_bf16<kRows>(block, 0, xc + k0, padded, chunk, yr, y_stride, 0, width, {},
                                k0 > 0);
        } else {
          row_group_bf16<1>(block, 0, xc + k0, padded, chunk, yr, y_stride, 0, width, {}, k0 > 0);
        }
      }
      r += group;
    }
  }
}

// Block-type matvec with vpdpbusd on ymm registers (quant_simd_impl.h).
BHMOE_AVX512BF16 inline __m256i dot_u8s8(__m256i u, __m256i s) {
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
}

#define BHMOE_QUANT_TARGET BHMOE_AVX512BF16
#include "kernels/quant_simd_impl.h"
#undef BHMOE_QUANT_TARGET

// Q4_K and Q6_K on zmm registers: the 256-bit kernel spends most of its time on per-sub-block
// scalar work (scale unpacking, broadcasts); these take 64 values per vpdpbusd and build each
// vector of lane scales with one permute. Same arithmetic as the 256-bit kernel (ops.h contract).

// Lane l of a 16-lane vector taken from lane first + l / per.
BHMOE_AVX512BF16 inline __m512i lane_index(int first, int per) {
  alignas(64) int32_t idx[16];
  for (int l = 0; l < 16; ++l) idx[l] = first + l / per;
  return _mm512_load_si512(idx);
}

BHMOE_AVX512BF16 float q4k_row_dot_zmm(const uint8_t* row, int64_t blocks, const int8_t* xq,
                                       const float* xscale, const float* xsum) {
  const __m512i nibble = _mm512_set1_epi8(0x0f), zero = _mm512_setzero_si512();
  // Chunk c of 64 values: lanes 0-7 sub-block 2c, lanes 8-15 sub-block 2c + 1.
  const __m512i chunk_scale[4] = {lane_index(0, 8), lane_index(2, 8), lane_index(4, 8),
                                  lane_index(6, 8)};
  __m512 acc = _mm512_setzero_ps();
  __m256 min_acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* blk = row + 144 * b;
    uint64_t sc, m;
    q4k_unpack(blk + q4_k::kScales, &sc, &m);
    const __m256 dx = _mm256_loadu_ps(xscale + 8 * b);
    // d * sc_j * dx_j per sub-block; dmin * m_j * (dx_j * sum q(x)_j) for the mins.
    const __m512 scale = _mm512_castps256_ps512(
        _mm256_mul_ps(bytes_to_f32(sc), _mm256_mul_ps(_mm256_set1_ps(f16_value(blk)), dx)));
    min_acc = _mm256_fmadd_ps(_mm256_mul_ps(bytes_to_f32(m), _mm256_set1_ps(f16_value(blk + 2))),
                              _mm256_loadu_ps(xsum + 8 * b), min_acc);
    for (int c = 0; c < 4; ++c) {
      const __m256i v =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + q4_k::kQs + 32 * c));
      const __m512i q = _mm512_and_si512(
          _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1), nibble);
      const __m512i dot = _mm512_dpbusd_epi32(zero, q, _mm512_loadu_si512(xq + 256 * b + 64 * c));
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(chunk_scale[c], scale),
                            acc);
    }
  }
  return _mm512_reduce_add_ps(acc) - hsum8(min_acc);
}

// minus32: per 4 columns, -32 * the sum of their q(x) (Q6_K's offset, applied in int32).
BHMOE_AVX512BF16 float q6k_row_dot_zmm(const uint8_t* row, int64_t blocks, const int8_t* xq,
                                       const float* xscale, const int32_t* minus32) {
  const __m512i nibble = _mm512_set1_epi8(0x0f), two_bits = _mm512_set1_epi8(0x03);
  // ql bytes 0-31 take qh bits 0-1 (low nibbles) or 4-5 (high), bytes 32-63 bits 2-3 or 6-7.
  const __m512i shift_low = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2);
  const __m512i shift_high = _mm512_setr_epi64(4, 4, 4, 4, 6, 6, 6, 6);
  const __m512i group_of_32 = lane_index(0, 2);  // scale group g uses x block g / 2
  // 64 values j (0..3) of the block: lanes 4i..4i+3 are group 4j + i.
  const __m512i quarter_scale[4] = {lane_index(0, 4), lane_index(4, 4), lane_index(8, 4),
                                    lane_index(12, 4)};
  __m512 acc = _mm512_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* blk = row + 210 * b;
    const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + q6_k::kScales))));
    const __m512 dx =
        _mm512_permutexvar_ps(group_of_32, _mm512_castps256_ps512(_mm256_loadu_ps(xscale + 8 * b)));
    const __m512 scale =
        _mm512_mul_ps(_mm512_mul_ps(sc, _mm512_set1_ps(f16_value(blk + q6_k::kD))), dx);
    for (int n = 0; n < 2; ++n) {
      const __m512i a = _mm512_loadu_si512(blk + q6_k::kQl + 64 * n);
      const __m512i h = _mm512_broadcast_i64x4(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + q6_k::kQh + 32 * n)));
      const __m512i q[2] = {
          _mm512_or_si512(
              _mm512_and_si512(a, nibble),
              _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi64(h, shift_low), two_bits), 4)),
          _mm512_or_si512(
              _mm512_and_si512(_mm512_srli_epi16(a, 4), nibble),
              _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi64(h, shift_high), two_bits), 4))};
      for (int k = 0; k < 2; ++k) {
        const int64_t col = 256 * b + 128 * n + 64 * k;
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_loadu_si512(minus32 + col / 4), q[k],
                                                _mm512_loadu_si512(xq + col));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
                              _mm512_permutexvar_ps(quarter_scale[2 * n + k], scale), acc);
      }
    }
  }
  return _mm512_reduce_add_ps(acc);
}

// Q8_0 and Q4_0 on zmm registers, 16 blocks per step: the 16 f16 block scales are converted by
// one vcvtph2ps and multiplied by the 16 x scales in one vmulps (the same fp32 product d * dx as
// the 256-bit kernel), and each vpdpbusd takes 64 values. The weights enter vpdpbusd unsigned,
// Q8_0 as w + 128 (w ^ 0x80), Q4_0 as its nibble q = w + 8; the bias is removed in int32 by
// starting each vpdpbusd from -bias * (sum of the q(x) that meet that lane), precomputed per x
// panel (`bias` below). The int32 dots are exact, so only the fp32 summation order differs from the
// 256-bit kernel. Blocks after the last full 16 of a panel go through the 256-bit kernel.
// Measured on this Zen 4 host (kernels_bench, 1024 x 2048): a vpgatherdd for the 16 scales made the
// kernel ~1.4x (Q8_0) to ~1.9x (Q4_0) slower hot than these 16 word inserts, and two rows per pass
// (sharing the x loads) ~3x slower cold.
constexpr int64_t kZmmGroup = 16;  // blocks per step

// d * dx for the 16 blocks of Bytes bytes starting at blk (f16 d at byte 0 of each block).
template <int Bytes>
BHMOE_AVX512BF16 inline __m512 group_scales(const uint8_t* blk, const float* dx) {
  __m128i lo = _mm_cvtsi32_si128(load_u16(blk));
  __m128i hi = _mm_cvtsi32_si128(load_u16(blk + 8 * Bytes));
  lo = _mm_insert_epi16(lo, load_u16(blk + 1 * Bytes), 1);
  hi = _mm_insert_epi16(hi, load_u16(blk + 9 * Bytes), 1);
  lo = _mm_insert_epi16(lo, load_u16(blk + 2 * Bytes), 2);
  hi = _mm_insert_epi16(hi, load_u16(blk + 10 * Bytes), 2);
  lo = _mm_insert_epi16(lo, load_u16(blk + 3 * Bytes), 3);
  hi = _mm_insert_epi16(hi, load_u16(blk + 11 * Bytes), 3);
  lo = _mm_insert_epi16(lo, load_u16(blk + 4 * Bytes), 4);
  hi = _mm_insert_epi16(hi, load_u16(blk + 12 * Bytes), 4);
  lo = _mm_insert_epi16(lo, load_u16(blk + 5 * Bytes), 5);
  hi = _mm_insert_epi16(hi, load_u16(blk + 13 * Bytes), 5);
  lo = _mm_insert_epi16(lo, load_u16(blk + 6 * Bytes), 6);
  hi = _mm_insert_epi16(hi, load_u16(blk + 14 * Bytes), 6);
  lo = _mm_insert_epi16(lo, load_u16(blk + 7 * Bytes), 7);
  hi = _mm_insert_epi16(hi, load_u16(blk + 15 * Bytes), 7);
  return _mm512_mul_ps(_mm512_cvtph_ps(_mm256_set_m128i(hi, lo)), _mm512_loadu_ps(dx));
}

// Q8_0: per step, 8 vectors of two blocks (lanes 0-7 the first, 8-15 the second); bias holds
// -128 * the sum of q(x) per 4 columns.
BHMOE_AVX512BF16 float q8_0_row_dot_zmm(const uint8_t* row, int64_t groups, const int8_t* xq,
                                        const float* xscale, const int32_t* bias) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i pair_scale[8];
  for (int j = 0; j < 8; ++j) pair_scale[j] = lane_index(2 * j, 8);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* blk = row + 34 * kZmmGroup * g;
    const __m512 scale = group_scales<34>(blk + q8_0::kD, xscale + kZmmGroup * g);
    for (int j = 0; j < 8; ++j) {
      const uint8_t* b0 = blk + 68 * j + q8_0::kQs;
      const __m512i w = _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0))),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 34)), 1);
      const int64_t col = 512 * g + 64 * j;
      const __m512i dot =
          _mm512_dpbusd_epi32(_mm512_loadu_si512(bias + col / 4), _mm512_xor_si512(w, flip),
                              _mm512_loadu_si512(xq + col));
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(pair_scale[j], scale),
                            acc);
    }
  }
  return _mm512_reduce_add_ps(acc);
}

// Q4_0: per step, 4 vectors of four blocks' 16 packed bytes (block i in bytes 16i..16i+15), whose
// low nibbles meet x reordered (q4_0_reorder_x) as the first 64 bytes of each 128 columns and
// whose high nibbles the next 64; lanes 4i..4i+3 are block i. bias holds -8 * the sum of the q(x)
// that meet a lane, per 8 reordered columns.
BHMOE_AVX512BF16 float q4_0_row_dot_zmm(const uint8_t* row, int64_t groups, const int8_t* xq,
                                        const float* xscale, const int32_t* bias) {
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  __m512i quad_scale[4];
  for (int k = 0; k < 4; ++k) quad_scale[k] = lane_index(4 * k, 4);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* blk = row + 18 * kZmmGroup * g;
    const __m512 scale = group_scales<18>(blk + q4_0::kD, xscale + kZmmGroup * g);
    for (int k = 0; k < 4; ++k) {
      const uint8_t* b0 = blk + 72 * k + q4_0::kQs;
      __m512i v = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0)));
      v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 18)), 1);
      v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 36)), 2);
      v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 54)), 3);
      const int64_t col = 512 * g + 128 * k;
      __m512i dot = _mm512_dpbusd_epi32(_mm512_loadu_si512(bias + col / 8),
                                        _mm512_and_si512(v, nibble), _mm512_loadu_si512(xq + col));
      dot = _mm512_dpbusd_epi32(dot, _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble),
                                _mm512_loadu_si512(xq + col + 64));
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(quad_scale[k], scale),
                            acc);
    }
  }
  return _mm512_reduce_add_ps(acc);
}

// Reorders xq[0, n) (n a multiple of 128) per 128 columns: first columns 0-15 of each of the four
// 32-column blocks, then columns 16-31 of each.
BHMOE_AVX512BF16 void q4_0_reorder_x(int8_t* xq, int64_t n) {
  for (int64_t c = 0; c < n; c += 128) {
    alignas(16) int8_t tmp[128];
    for (int b = 0; b < 4; ++b) {
      std::memcpy(tmp + 16 * b, xq + c + 32 * b, 16);
      std::memcpy(tmp + 64 + 16 * b, xq + c + 32 * b + 16, 16);
    }
    std::memcpy(xq + c, tmp, 128);
  }
}

BHMOE_AVX512BF16 void quant_matvec_vnni_32(const Matrix& w, const float* x, float* y,
                                           int64_t row_begin, int64_t row_end) {
  alignas(64) int8_t xq[kQuantXPanel];
  alignas(64) int32_t bias[kQuantXPanel / 4];
  float xscale[kQuantXPanel / 32], xsum[kQuantXPanel / 32];
  const bool q8 = w.dtype == DType::Q8_0;
  const int64_t stride = static_cast<int64_t>(row_bytes(w.dtype, w.cols));
  const int64_t bytes = static_cast<int64_t>(block_bytes(w.dtype));
  const auto* base = static_cast<const uint8_t*>(w.data);
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t k0 = 0; k0 < w.cols; k0 += kQuantXPanel) {
    const int64_t k1 = std::min(w.cols, k0 + kQuantXPanel);
    quantize_x32(x + k0, k1 - k0, xq, xscale, xsum);
    const int64_t blocks = (k1 - k0) / 32, groups = blocks / kZmmGroup;
    const int64_t tail = kZmmGroup * groups;  // first block of the 256-bit tail
    const int64_t zmm_cols = 32 * tail;       // xq past this stays in column order
    if (q8) {
      const __m512i b128 = _mm512_set1_epi8(static_cast<char>(0x80));  // 128 unsigned
      for (int64_t k = 0; k < zmm_cols; k += 64) {
        const __m512i sum = _mm512_dpbusd_epi32(zero, b128, _mm512_loadu_si512(xq + k));
        _mm512_storeu_si512(bias + k / 4, _mm512_sub_epi32(zero, sum));
      }
    } else {
      q4_0_reorder_x(xq, zmm_cols);
      const __m512i eight = _mm512_set1_epi8(8);
      for (int64_t k = 0; k < zmm_cols; k += 128) {
        __m512i sum = _mm512_dpbusd_epi32(zero, eight, _mm512_loadu_si512(xq + k));
        sum = _mm512_dpbusd_epi32(sum, eight, _mm512_loadu_si512(xq + k + 64));
        _mm512_storeu_si512(bias + k / 8, _mm512_sub_epi32(zero, sum));
      }
    }
    const int64_t first_block = k0 / 32;
    for (int64_t r = row_begin; r < row_end; ++r) {
      const uint8_t* row = base + r * stride + first_block * bytes;
      float dot = q8 ? q8_0_row_dot_zmm(row, groups, xq, xscale, bias)
                     : q4_0_row_dot_zmm(row, groups, xq, xscale, bias);
      if (tail < blocks) {
        const uint8_t* t = row + tail * bytes;
        dot += q8 ? row_dot_blocks<DType::Q8_0>(t, blocks - tail, xq + zmm_cols, xscale + tail,
                                                xsum + tail)
                  : row_dot_blocks<DType::Q4_0>(t, blocks - tail, xq + zmm_cols, xscale + tail,
                                                xsum + tail);
      }
      y[r - row_begin] = k0 == 0 ? dot : y[r - row_begin] + dot;
    }
  }
}

BHMOE_AVX512BF16 void quant_matvec_vnni(const Matrix& w, const float* x, float* y,
                                        int64_t row_begin, int64_t row_end) {
  if (w.dtype == DType::Q8_0 || w.dtype == DType::Q4_0) {
    return quant_matvec_vnni_32(w, x, y, row_begin, row_end);
  }
  if (w.dtype != DType::Q4_K && w.dtype != DType::Q6_K) {
    return quant_matvec(w, x, y, row_begin, row_end);
  }
  alignas(64) int8_t xq[kQuantXPanel];
  alignas(64) int32_t minus32[kQuantXPanel / 4];
  float xscale[kQuantXPanel / 32], xsum[kQuantXPanel / 32];
  const int64_t stride = static_cast<int64_t>(row_bytes(w.dtype, w.cols));
  const int64_t bytes = static_cast<int64_t>(block_bytes(w.dtype));
  const auto* base = static_cast<const uint8_t*>(w.data);
  for (int64_t k0 = 0; k0 < w.cols; k0 += kQuantXPanel) {
    const int64_t k1 = std::min(w.cols, k0 + kQuantXPanel);
    quantize_x32(x + k0, k1 - k0, xq, xscale, xsum);
    if (w.dtype == DType::Q6_K) {
      const __m512i thirty_two = _mm512_set1_epi8(32);
      for (int64_t k = 0; k < k1 - k0; k += 64) {
        const __m512i sum =
            _mm512_dpbusd_epi32(_mm512_setzero_si512(), thirty_two, _mm512_loadu_si512(xq + k));
        _mm512_storeu_si512(minus32 + k / 4, _mm512_sub_epi32(_mm512_setzero_si512(), sum));
      }
    }
    const int64_t first_block = k0 / 256, blocks = (k1 - k0) / 256;
    for (int64_t r = row_begin; r < row_end; ++r) {
      const uint8_t* row = base + r * stride + first_block * bytes;
      const float dot = w.dtype == DType::Q4_K ? q4k_row_dot_zmm(row, blocks, xq, xscale, xsum)
                                               : q6k_row_dot_zmm(row, blocks, xq, xscale, minus32);
      y[r - row_begin] = k0 == 0 ? dot : y[r - row_begin] + dot;
    }
  }
}

// ---- Q8 matvec with vpdpbusd (activations quantised per block) -------------------------------

thread_local std::vector<uint8_t> t_xq_abs;   // |q(x)| per element, zero padded to 64
thread_local std::vector<uint64_t> t_xq_neg;  // per 64 elements: bit set where q(x) < 0
thread_local std::vector<float> t_xq_scales;  // per 64 elements: 16 lane scales (8 per block)

constexpr int64_t kQ8Chunk = 64;

BHMOE_AVX512BF16 void quantize_activations(const float* x, int64_t cols, uint8_t* abs_q,
                                           uint64_t* negative, float* lane_scales) {
  const int64_t chunks = (cols + kQ8Chunk - 1) / kQ8Chunk;
  for (int64_t c = 0; c < chunks; ++c) {
    uint64_t neg = 0;
    for (int half = 0; half < 2; ++half) {
      const int64_t k = c * kQ8Chunk + half * kQ8Block;
      __m512 a = _mm512_maskz_loadu_ps(tail_mask16(cols - k), x + k);
      __m512 b = _mm512_maskz_loadu_ps(tail_mask16(cols - k - 16), x + k + 16);
      float absmax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
      float scale = absmax / 127.0f;
      __m512 inverse = _mm512_set1_ps(scale > 0.0f ? 127.0f / absmax : 0.0f);
      __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inverse));
      __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inverse));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(abs_q + k),
                       _mm512_cvtepi32_epi8(_mm512_abs_epi32(qa)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(abs_q + k + 16),
                       _mm512_cvtepi32_epi8(_mm512_abs_epi32(qb)));
      uint64_t bits = static_cast<uint64_t>(_mm512_cmplt_epi32_mask(qa, _mm512_setzero_si512())) |
                      static_cast<uint64_t>(_mm512_cmplt_epi32_mask(qb, _mm512_setzero_si512()))
                          << 16;
      neg |= bits << (half * 32);
      for (int l = 0; l < 8; ++l) lane_scales[c * 16 + half * 8 + l] = scale;
    }
    negative[c] = neg;
  }
}

// One row's dot with the quantised x: per 64 columns, vpdpbusd(|q(x)|, sign(q(x)) * w) gives 16
// int32 lanes, lanes 0-7 from the first 32-column block and 8-15 from the second, scaled in fp32.
template <int R>
BHMOE_AVX512BF16 void q8_rows_vnni(const Matrix& w, int64_t r0, const uint8_t* abs_q,
                                   const uint64_t* negative, const float* lane_scales, float* y) {
  const int64_t cols = w.cols;
  const int64_t blocks = cols / kQ8Block;
  const int64_t chunks = (cols + kQ8Chunk - 1) / kQ8Chunk;
  const int8_t* rows[R];
  const float* scales[R];
  for (int i = 0; i < R; ++i) {
    rows[i] = static_cast<const int8_t*>(w.data) + (r0 + i) * cols;
    scales[i] = w.scales + (r0 + i) * blocks;
  }
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  const __m512i zero = _mm512_setzero_si512();
  const int64_t full_chunks = cols / kQ8Chunk;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t k = c * kQ8Chunk;
    const __m512i xa = _mm512_loadu_si512(abs_q + k);
    const __mmask64 neg = negative[c];
    const __m512 xs = _mm512_loadu_ps(lane_scales + c * 16);
    const bool full = c < full_chunks;
    if (g_matvec_prefetch_bytes > 0) {
      for (int i = 0; i < R; ++i)
        _mm_prefetch(reinterpret_cast<const char*>(rows[i] + k) + g_matvec_prefetch_bytes,
                     _MM_HINT_T0);
    }
    for (int i = 0; i < R; ++i) {
      __m512i wq = full ? _mm512_loadu_si512(rows[i] + k)
                        : _mm512_maskz_loadu_epi8(__mmask64(0xffffffffu), rows[i] + k);
      __m512i signed_w = _mm512_mask_sub_epi8(wq, neg, zero, wq);
      __m512i dot = _mm512_dpbusd_epi32(zero, xa, signed_w);
      const float s0 = scales[i][2 * c];
      const float s1 = full ? scales[i][2 * c + 1] : 0.0f;
      __m512 ws = _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(s0), _mm512_set1_ps(s1));
      acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(ws, xs), acc[i]);
    }
  }
  for (int i = 0; i < R; ++i) y[i] = _mm512_reduce_add_ps(acc[i]);
}

BHMOE_AVX512BF16 void matvec_q8_vnni(const Matrix& w, const float* x, float* y, int64_t row_begin,
                                     int64_t row_end) {
  const int64_t chunks = (w.cols + kQ8Chunk - 1) / kQ8Chunk;
  uint8_t* abs_q = scratch(t_xq_abs, static_cast<size_t>(chunks * kQ8Chunk));
  uint64_t* negative = scratch(t_xq_neg, static_cast<size_t>(chunks));
  float* lane_scales = scratch(t_xq_scales, static_cast<size_t>(chunks * 16));
  quantize_activations(x, w.cols, abs_q, negative, lane_scales);
  int64_t r = row_begin;
  if (g_matvec_rows_at_once == 4) {
    for (; r + kRows <= row_end; r += kRows) {
      q8_rows_vnni<kRows>(w, r, abs_q, negative, lane_scales, y + (r - row_begin));
    }
  }
  for (; r < row_end; ++r) q8_rows_vnni<1>(w, r, abs_q, negative, lane_scales, y + (r - row_begin));
}

// exp(x) within ~2 ulp; overflow gives inf (vscalefps); below -87.3 gives 0 (the true value is
// under 2^-126, so exp(-inf) = 0 exactly, as in the AVX2 level). NaN stays NaN.
BHMOE_AVX512 inline __m512 exp16(__m512 x) {
  const __m512 low = _mm512_set1_ps(-87.3365478515625f);
  const __mmask16 keep = _mm512_cmp_ps_mask(x, low, _CMP_NLT_UQ);
  x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
  x = _mm512_max_ps(low, x);
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(p, n));
}

}  // namespace

BHMOE_AVX512 void matvec(const Matrix& w, const float* x, float* y, int64_t row_begin,
                         int64_t row_end, bool bf16) {
  if (bf16 && w.dtype == DType::Q8) return matvec_q8_vnni(w, x, y, row_begin, row_end);
  if (is_block_dtype(w.dtype)) {
    // Without VNNI the 256-bit vpmaddubsw kernel of the Avx2 level is the integer path.
    if (bf16) return quant_matvec_vnni(w, x, y, row_begin, row_end);
    return avx2::matvec(w, x, y, row_begin, row_end);
  }
  matvec_exact(w, x, y, row_begin, row_end);
}

BHMOE_AVX512 void matmul(const Matrix& w, const float* x, int64_t x_stride, int64_t num_tokens,
                         float* y, int64_t y_stride, int64_t row_begin, int64_t row_end, bool bf16,
                         Activations activations) {
  if (num_tokens == 1) {
    // One token is memory-bound: the exact path costs nothing extra.
    if (bf16 && w.dtype == DType::Q8 && activations == Activations::RoundToBf16) {
      return matvec_q8_vnni(w, x, y, row_begin, row_end);
    }
    if (bf16 && is_block_dtype(w.dtype) && activations == Activations::RoundToBf16) {
      return quant_matvec_vnni(w, x, y, row_begin, row_end);
    }
    if (is_block_dtype(w.dtype)) {
      return matmul_blocks_f32(w, x, x_stride, 1, y, y_stride, row_begin, row_end);
    }
    return matvec_exact(w, x, y, row_begin, row_end);
  }
  if (bf16 && activations == Activations::RoundToBf16 && w.dtype == DType::BF16) {
    return matmul_bf16(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end);
  }
  if (bf16 && activations == Activations::RoundToBf16 && w.dtype == DType::Q8) {
    return matmul_q8_bf16(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end);
  }
  if (bf16 && activations == Activations::RoundToBf16 && is_block_dtype(w.dtype)) {
    return matmul_blocks_bf16(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end);
  }
  matmul_exact(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end);
}

BHMOE_AVX512 float sum_squares(const float* x, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
    acc0 = _mm512_fmadd_ps(a, a, acc0);
    acc1 = _mm512_fmadd_ps(b, b, acc1);
  }
  for (; i < n; i += kLanes) {
    __m512 a = _mm512_maskz_loadu_ps(tail_mask16(n - i), x + i);
    acc0 = _mm512_fmadd_ps(a, a, acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

namespace {
template <DType D>
BHMOE_AVX512 void scale_by_weight_typed(const float* x, float scale, const Matrix& weight,
                                        int64_t n, float* out) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 mask = tail_mask16(n - i);
    __m512 wv = load16<D>(weight.data, weight.scales, i, mask);
    __m512 xv = _mm512_maskz_loadu_ps(mask, x + i);
    _mm512_mask_storeu_ps(out + i, mask, _mm512_mul_ps(_mm512_mul_ps(xv, s), wv));
  }
}
}  // namespace

BHMOE_AVX512 void scale_by_weight(const float* x, float scale, const Matrix& weight, int64_t n,
                                  float* out) {
  switch (weight.dtype) {
    case DType::F32:
      return scale_by_weight_typed<DType::F32>(x, scale, weight, n, out);
    case DType::F16:
      return scale_by_weight_typed<DType::F16>(x, scale, weight, n, out);
    case DType::BF16:
      return scale_by_weight_typed<DType::BF16>(x, scale, weight, n, out);
    case DType::Q8:
      return scale_by_weight_typed<DType::Q8>(x, scale, weight, n, out);
    default:
      return;  // block types: rmsnorm dequantises them itself
  }
}

BHMOE_AVX512 void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 mask = tail_mask16(n - i);
    __m512 g = _mm512_maskz_loadu_ps(mask, gate + i);
    __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
    __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
    _mm512_mask_storeu_ps(out + i, mask, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(mask, up + i)));
  }
}

BHMOE_AVX512 void axpy(float a, const float* x, float* y, int64_t n) {
  const __m512 av = _mm512_set1_ps(a);
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 mask = tail_mask16(n - i);
    __m512 r =
        _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(mask, x + i), _mm512_maskz_loadu_ps(mask, y + i));
    _mm512_mask_storeu_ps(y + i, mask, r);
  }
}

BHMOE_AVX512 float dot_f32(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i < n; i += kLanes) {
    const __mmask16 mask = tail_mask16(n - i);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + i), _mm512_maskz_loadu_ps(mask, b + i),
                           acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

BHMOE_AVX512 float max_f32(const float* x, int64_t n) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  for (int64_t i = 0; i < n; i += kLanes) {
    m = _mm512_mask_max_ps(m, tail_mask16(n - i), m,
                           _mm512_maskz_loadu_ps(tail_mask16(n - i), x + i));
  }
  return _mm512_reduce_max_ps(m);
}

BHMOE_AVX512 float exp_shift_sum(float* x, float shift, int64_t n) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 mask = tail_mask16(n - i);
    __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, x + i), s));
    _mm512_mask_storeu_ps(x + i, mask, e);
    acc = _mm512_mask_add_ps(acc, mask, acc, e);
  }
  return _mm512_reduce_add_ps(acc);
}

BHMOE_AVX512 void scale_f32(float* x, float s, int64_t n) {
  const __m512 sv = _mm512_set1_ps(s);
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 mask = tail_mask16(n - i);
    _mm512_mask_storeu_ps(x + i, mask, _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, x + i), sv));
  }
}

namespace {
template <DType D>
BHMOE_AVX512 bool quantize_q8_typed(const Matrix& src, int8_t* values, float* scales) {
  const int64_t blocks = src.cols / kQ8Block;
  // Classes: QNaN, +inf, -inf, SNaN.
  constexpr int kNonFinite = 0x01 | 0x08 | 0x10 | 0x80;
  for (int64_t r = 0; r < src.rows; ++r) {
    const RowPointers row = row_pointers<D>(src, r);
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t k = b * kQ8Block;
      __m512 lo = load16<D>(row.data, nullptr, k), hi = load16<D>(row.data, nullptr, k + 16);
      if (_mm512_fpclass_ps_mask(lo, kNonFinite) | _mm512_fpclass_ps_mask(hi, kNonFinite)) {
        return false;
      }
      const float absmax =
          _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
      const float scale = absmax / 127.0f;
      const __m512 inverse = _mm512_set1_ps(scale > 0.0f ? 1.0f / scale : 0.0f);
      // Round to nearest even (the default MXCSR mode, as nearbyint), saturate to int8.
      __m128i qlo = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(lo, inverse)));
      __m128i qhi = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(hi, inverse)));
      int8_t* out = values + r * src.cols + k;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), qlo);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), qhi);
      scales[r * blocks + b] = scale;
    }
  }
  return true;
}
}  // namespace

BHMOE_AVX512 bool quantize_q8(const Matrix& src, int8_t* values, float* scales) {
  switch (src.dtype) {
    case DType::F32:
      return quantize_q8_typed<DType::F32>(src, values, scales);
    case DType::F16:
      return quantize_q8_typed<DType::F16>(src, values, scales);
    case DType::BF16:
      return quantize_q8_typed<DType::BF16>(src, values, scales);
    default:
      break;
  }
  return false;
}

}  // namespace bhmoe::kernels::detail::avx512
