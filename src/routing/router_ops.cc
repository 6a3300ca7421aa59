#include "routing/router_ops.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "routing/router.h"

#include "util/simd.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
// Each eight-lane kernel is compiled twice, for the baseline and for AVX2, and the sixteen-lane
// kernels once for AVX-512 (F, VL, BW, DQ); every call picks by bhmoe's one SIMD level
// (util/simd.h), so tests can run each variant on a wide CPU. The routing layer is compiled with
// -ffp-contract=off so all variants round identically, and the sixteen-lane kernels do the same
// lane-wise operations in the same order as the eight-lane ones.
#define BHMOE_AVX2 __attribute__((target("avx2")))
#define BHMOE_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq")))
#define BHMOE_HAVE_X86 1
#else
#define BHMOE_HAVE_X86 0
#endif

namespace bhmoe::routing::detail {

// Eight lanes as a GCC/Clang vector type: one AVX register in the AVX2 clone, two SSE registers in
// the baseline one. Lane-wise accumulation fixes the summation order, so every clone gives the same
// result.
constexpr int kLanes = 8;
typedef float Floats __attribute__((vector_size(32)));
typedef int32_t Ints __attribute__((vector_size(32)));

// Sixteen lanes: one AVX-512 register in that clone, two or four narrower ones elsewhere. Used
// where a 16-lane step is split back into two 8-lane halves in a fixed order, so results do not
// depend on the clone.
typedef float Floats16 __attribute__((vector_size(64)));
typedef int32_t Ints16 __attribute__((vector_size(64)));

__attribute__((always_inline)) inline Floats16 load16(const float* p) {
  Floats16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
__attribute__((always_inline)) inline void store16(float* p, Floats16 v) {
  std::memcpy(p, &v, sizeof v);
}
__attribute__((always_inline)) inline Floats low_half(Floats16 v) {
  return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
}
__attribute__((always_inline)) inline Floats high_half(Floats16 v) {
  return __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
}

__attribute__((always_inline)) inline Floats load(const float* p) {
  Floats v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
__attribute__((always_inline)) inline void store(float* p, Floats v) {
  std::memcpy(p, &v, sizeof v);
}
__attribute__((always_inline)) inline Floats splat(float x) {
  return Floats{} + x;
}

template <bool kWide>
__attribute__((always_inline)) inline float max_logit_impl(const float* logits, int n, bool* finite,
                                                           float* floor8) {
  // Lane l holds the maximum of logits l, l + 8, l + 16, ...: eight disjoint groups when n >= 8.
  Floats mx = n >= kLanes ? load(logits) : splat(logits[0]);
  Floats probe = {};  // x - x is 0 for finite x and NaN otherwise: a branch-free finiteness test
  int i = 0;
  if (kWide && n >= 2 * kLanes) {
    // Two groups' worth per step; lane l of either half covers logits = l (mod 8), so folding the
    // halves keeps the same eight groups. Max is exact, and a sum of zeros stays zero in any order.
    Floats16 mx16 = load16(logits);
    Floats16 probe16 = {};
    for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
      Floats16 v = load16(logits + i);
      mx16 = v > mx16 ? v : mx16;
      probe16 += v - v;
    }
    const Floats lo = low_half(mx16), hi = high_half(mx16);
    mx = hi > lo ? hi : lo;
    probe = low_half(probe16) + high_half(probe16);
  }
  for (; i + kLanes <= n; i += kLanes) {
    Floats v = load(logits + i);
    mx = v > mx ? v : mx;
    probe += v - v;
  }
  // Lane reductions by halving (max and min are exact in any order; see probe above).
  Floats hi = mx, lo = mx;
  hi = hi > __builtin_shufflevector(hi, hi, 4, 5, 6, 7, 0, 1, 2, 3)
           ? hi
           : __builtin_shufflevector(hi, hi, 4, 5, 6, 7, 0, 1, 2, 3);
  hi = hi > __builtin_shufflevector(hi, hi, 2, 3, 0, 1, 6, 7, 4, 5)
           ? hi
           : __builtin_shufflevector(hi, hi, 2, 3, 0, 1, 6, 7, 4, 5);
  float result = hi[0] > hi[1] ? hi[0] : hi[1];
  probe += __builtin_shufflevector(probe, probe, 4, 5, 6, 7, 0, 1, 2, 3);
  probe += __builtin_shufflevector(probe, probe, 2, 3, 0, 1, 6, 7, 4, 5);
  float probe_sum = probe[0] + probe[1];
  if (floor8) {
    lo = lo < __builtin_shufflevector(lo, lo, 4, 5, 6, 7, 0, 1, 2, 3)
             ? lo
             : __builtin_shufflevector(lo, lo, 4, 5, 6, 7, 0, 1, 2, 3);
    lo = lo < __builtin_shufflevector(lo, lo, 2, 3, 0, 1, 6, 7, 4, 5)
             ? lo
             : __builtin_shufflevector(lo, lo, 2, 3, 0, 1, 6, 7, 4, 5);
    *floor8 = lo[0] < lo[1] ? lo[0] : lo[1];
  }
  for (; i < n; ++i) {
    float v = logits[i];
    result = v > result ? v : result;
    probe_sum += v - v;
  }
  *finite = probe_sum == 0.0f;
  return result;
}

namespace {

inline Floats reinterpret_vector(Ints bits) {
  return (Floats)bits;
}
inline Floats16 reinterpret_vector(Ints16 bits) {
  return (Floats16)bits;
}

// Cephes expf for x <= 0: 2^n * exp(r) with r = x - n ln2 in [-ln2/2, ln2/2]; 0 below -87.33654.
// T is float or Floats; the same operations in the same order either way.
template <typename T, typename I>
__attribute__((always_inline)) inline T exp_nonpositive(T x) {
  const T lo = T{} + -87.33654f;
  T xc = x < lo ? lo : x;
  T t = xc * 1.44269504088896341f;
  T nf = (t + 12582912.0f) - 12582912.0f;  // round to nearest, exact for |t| < 2^22
  T r = xc - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  T z = r * r;
  // Cephes' degree-5 polynomial, evaluated in Estrin's form (shorter dependency chains).
  T a = (T{} + 1.9875691500e-4f) * r + 1.3981999507e-3f;
  T b = (T{} + 8.3334519073e-3f) * r + 4.1665795894e-2f;
  T c = (T{} + 1.6666665459e-1f) * r + 5.0000001201e-1f;
  T y = (a * z + b) * z + c;
  y = y * z + r + 1.0f;
  if constexpr (std::is_same_v<T, float>) {
    I bits = (static_cast<int32_t>(nf) + 127) << 23;
    T value = y * std::bit_cast<float>(bits);
    return x < lo ? 0.0f : value;
  } else {
    I bits = (__builtin_convertvector(nf, I) + 127) << 23;
    // A cast between same-size GCC vector types reinterprets the bits; std::bit_cast on vector
    // types trips a false "load of null pointer" in GCC 12's UBSan.
    T value = y * reinterpret_vector(bits);
    return x < lo ? T{} : value;
  }
}

}  // namespace

template <bool kWide>
__attribute__((always_inline)) inline float softmax_impl(const float* logits, int n, float max,
                                                         float temperature, float* e) {
  Floats acc = {};
  int i = 0;
  const Floats mx = splat(max);
  // Sixteen exponentials per step, added to the eight-lane accumulator low half first: the same
  // additions in the same order as the eight-lane loop below.
  if (temperature == 1.0f) {
    const Floats16 mx16 = Floats16{} + max;
    for (; kWide && i + 2 * kLanes <= n; i += 2 * kLanes) {
      Floats16 v = exp_nonpositive<Floats16, Ints16>(load16(logits + i) - mx16);
      store16(e + i, v);
      acc += low_half(v);
      acc += high_half(v);
    }
    for (; i + kLanes <= n; i += kLanes) {
      Floats v = exp_nonpositive<Floats, Ints>(load(logits + i) - mx);
      store(e + i, v);
      acc += v;
    }
  } else {
    const Floats t = splat(temperature);
    const Floats16 mx16 = Floats16{} + max;
    const Floats16 t16 = Floats16{} + temperature;
    for (; kWide && i + 2 * kLanes <= n; i += 2 * kLanes) {
      Floats16 v = exp_nonpositive<Floats16, Ints16>((load16(logits + i) - mx16) / t16);
      store16(e + i, v);
      acc += low_half(v);
      acc += high_half(v);
    }
    for (; i + kLanes <= n; i += kLanes) {
      Floats v = exp_nonpositive<Floats, Ints>((load(logits + i) - mx) / t);
      store(e + i, v);
      acc += v;
    }
  }
  float sum = acc[0];
  for (int l = 1; l < kLanes; ++l) sum += acc[l];
  for (; i < n; ++i) {
    float x = logits[i] - max;
    float v = exp_nonpositive<float, int32_t>(temperature == 1.0f ? x : x / temperature);
    e[i] = v;
    sum += v;
  }
  return sum;
}

static int collect_narrow(const float* logits, int n, float cutoff, int32_t* out,
                          float* out_logits) {
  int m = 0;
  int i = 0;
#if defined(__SSE2__)
  // A 64-bit mask per 64 logits first, then one pass over its set bits: the only unpredictable
  // branch is the end of that pass.
  const __m128 c = _mm_set1_ps(cutoff);
  for (; i + 64 <= n; i += 64) {
    uint64_t mask = 0;
    for (int j = 0; j < 64; j += 4) {
      const __m128 v = _mm_loadu_ps(logits + i + j);
      mask |= static_cast<uint64_t>(_mm_movemask_ps(_mm_cmpge_ps(v, c))) << j;
    }
    while (mask) {
      const int idx = i + std::countr_zero(mask);
      out[m] = idx;
      out_logits[m++] = logits[idx];
      mask &= mask - 1;
    }
  }
#endif
  for (; i < n; ++i) {
    out[m] = i;
    out_logits[m] = logits[i];
    m += logits[i] >= cutoff ? 1 : 0;
  }
  const float pad = -std::numeric_limits<float>::infinity();
  for (int j = m; j < (m + 15) / 16 * 16; ++j) out_logits[j] = pad;
  return m;
}

// F/I: Floats/Ints or Floats16/Ints16.
template <typename F, typename I>
__attribute__((always_inline)) inline int step_up_impl(const float* candidate_logits, int m,
                                                       const float* cut) {
  // For a block of W consecutive k at once: passing(k) = #{j : logit_j >= cut[k-1]}, accumulated
  // over the candidates, so no per-candidate horizontal sum, histogram or branch is needed; each
  // lane keeps its largest qualifying k, reduced once at the end.
  constexpr int W = sizeof(F) / sizeof(float);
  I lane_k;
  for (int l = 0; l < W; ++l) lane_k[l] = l + 1;
  I best = {};
  for (int k0 = 0; k0 < m; k0 += W) {
    F c;
    std::memcpy(&c, cut + k0, sizeof c);
    I passing = {};
    for (int j = 0; j < m; ++j) passing -= (F{} + candidate_logits[j]) >= c;  // true lanes are -1
    const I k = lane_k + k0;
    // Vector operands throughout: GCC scalarises a comparison with a scalar operand.
    const I qualifying = k & ((k <= (I{} + m)) & (passing >= k));
    best = qualifying > best ? qualifying : best;
  }
  Ints b8;
  if constexpr (W == 16) {
    b8 = __builtin_shufflevector(best, best, 0, 1, 2, 3, 4, 5, 6, 7);
    const Ints b8_hi = __builtin_shufflevector(best, best, 8, 9, 10, 11, 12, 13, 14, 15);
    b8 = b8_hi > b8 ? b8_hi : b8;
  } else {
    b8 = best;
  }
  const Ints b4 = __builtin_shufflevector(b8, b8, 4, 5, 6, 7, 0, 1, 2, 3);
  b8 = b4 > b8 ? b4 : b8;
  const Ints b2 = __builtin_shufflevector(b8, b8, 2, 3, 0, 1, 6, 7, 4, 5);
  b8 = b2 > b8 ? b2 : b8;
  return b8[0] > b8[1] ? b8[0] : b8[1];
}

template <typename F, typename I>
__attribute__((always_inline)) inline void rank_order_impl(const float* candidate_logits,
                                                           const int32_t* candidates, int m,
                                                           int32_t* ordered) {
  // rank_j = #{i : logit_i > logit_j, or equal with i < j}, W candidates j at a time; the ranks are
  // a permutation, so scattering by rank sorts (logit descending, ties lower index first).
  constexpr int W = sizeof(F) / sizeof(float);
  I lane;
  for (int l = 0; l < W; ++l) lane[l] = l;
  for (int j0 = 0; j0 < m; j0 += W) {
    F cj;
    std::memcpy(&cj, candidate_logits + j0, sizeof cj);
    const I jj = lane + j0;
    I rank = {};
    for (int i = 0; i < m; ++i) {
      const F ci = F{} + candidate_logits[i];
      rank -= (ci > cj) | ((ci == cj) & (jj > (I{} + i)));  // vector operands: see step_up_impl
    }
    const int lanes = std::min(W, m - j0);
    for (int l = 0; l < lanes; ++l) ordered[rank[l]] = candidates[j0 + l];
  }
}

#if BHMOE_HAVE_X86
// Branch-free: compresses the passing lanes of each 16 logits (same output as collect_narrow).
BHMOE_AVX512 static int collect_wide(const float* logits, int n, float cutoff, int32_t* out,
                                     float* out_logits) {
  const __m512 c = _mm512_set1_ps(cutoff);
  __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  int m = 0;
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(logits + i);
    const __mmask16 pass = _mm512_cmp_ps_mask(v, c, _CMP_GE_OQ);
    // Compress in registers, then a full store (m <= i, so it stays within [0, n)); compressing
    // straight to memory is many times slower on Intel cores.
    _mm512_storeu_ps(out_logits + m, _mm512_maskz_compress_ps(pass, v));
    _mm512_storeu_si512(out + m, _mm512_maskz_compress_epi32(pass, index));
    m += std::popcount(static_cast<unsigned>(pass));
    index = _mm512_add_epi32(index, step);
  }
  for (; i < n; ++i) {
    out[m] = i;
    out_logits[m] = logits[i];
    m += logits[i] >= cutoff ? 1 : 0;
  }
  const int pad = (16 - m % 16) % 16;
  _mm512_mask_storeu_ps(out_logits + m, static_cast<__mmask16>((1u << pad) - 1),
                        _mm512_set1_ps(-std::numeric_limits<float>::infinity()));
  return m;
}
#endif

// The eight-lane kernels, once per target: `narrow` for the baseline, `avx2` with AVX2 enabled.
#define BHMOE_EIGHT_LANE_KERNELS(ATTRIBUTES, SUFFIX)                                             \
  ATTRIBUTES float max_logit_##SUFFIX(const float* logits, int n, bool* finite, float* floor8) { \
    return max_logit_impl<false>(logits, n, finite, floor8);                                     \
  }                                                                                              \
  ATTRIBUTES float softmax_##SUFFIX(const float* logits, int n, float max, float temperature,    \
                                    float* e) {                                                  \
    return softmax_impl<false>(logits, n, max, temperature, e);                                  \
  }                                                                                              \
  ATTRIBUTES float max_softmax_##SUFFIX(const float* logits, int n, float temperature,          \
                                        float* max, bool* finite, float* floor8, float* e) {    \
    *max = max_logit_impl<false>(logits, n, finite, floor8);                                     \
    return *finite ? softmax_impl<false>(logits, n, *max, temperature, e) : 0.0f;                \
  }                                                                                              \
  ATTRIBUTES int step_up_##SUFFIX(const float* candidate_logits, int m, const float* cut) {      \
    return step_up_impl<Floats, Ints>(candidate_logits, m, cut);                                 \
  }                                                                                              \
  ATTRIBUTES void rank_order_##SUFFIX(const float* candidate_logits, const int32_t* candidates,  \
                                      int m, int32_t* ordered) {                                 \
    rank_order_impl<Floats, Ints>(candidate_logits, candidates, m, ordered);                     \
  }

BHMOE_EIGHT_LANE_KERNELS(, narrow)
#if BHMOE_HAVE_X86
BHMOE_EIGHT_LANE_KERNELS(BHMOE_AVX2, avx2)
#endif

#if BHMOE_HAVE_X86
BHMOE_AVX512 float max_logit_wide(const float* logits, int n, bool* finite, float* floor8) {
  return max_logit_impl<true>(logits, n, finite, floor8);
}
BHMOE_AVX512 float softmax_wide(const float* logits, int n, float max, float temperature,
                                float* e) {
  return softmax_impl<true>(logits, n, max, temperature, e);
}
// Intrinsics here: GCC 12 scalarises the generic-vector forms of these integer/mask loops under
// AVX-512. Same predicates as the generic code (ordered comparisons: false for NaN).
BHMOE_AVX512 float max_softmax_wide(const float* logits, int n, float temperature, float* max,
                                    bool* finite, float* floor8, float* e) {
  *max = max_logit_impl<true>(logits, n, finite, floor8);
  return *finite ? softmax_impl<true>(logits, n, *max, temperature, e) : 0.0f;
}
BHMOE_AVX512 int step_up_wide(const float* candidate_logits, int m, const float* cut) {
  const __m512i lane_k = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16);
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i count = _mm512_set1_epi32(m);
  __m512i best = _mm512_setzero_si512();
  for (int k0 = 0; k0 < m; k0 += 16) {
    const __m512 c = _mm512_loadu_ps(cut + k0);
    __m512i passing = _mm512_setzero_si512();
    for (int j = 0; j < m; ++j) {
      const __mmask16 at_least =
          _mm512_cmp_ps_mask(_mm512_set1_ps(candidate_logits[j]), c, _CMP_GE_OQ);
      passing = _mm512_mask_add_epi32(passing, at_least, passing, one);
    }
    const __m512i k = _mm512_add_epi32(lane_k, _mm512_set1_epi32(k0));
    const __mmask16 qualifying =
        _mm512_cmple_epi32_mask(k, count) & _mm512_cmpge_epi32_mask(passing, k);
    best = _mm512_mask_max_epi32(best, qualifying, best, k);
  }
  // (_mm512_reduce_max_epi32 trips a false -Wuninitialized inside GCC 12's header.)
  alignas(64) int32_t lanes[16];
  _mm512_store_si512(lanes, best);
  int kstar = 0;
  for (int l = 0; l < 16; ++l) kstar = lanes[l] > kstar ? lanes[l] : kstar;
  return kstar;
}

BHMOE_AVX512 void rank_order_wide(const float* candidate_logits, const int32_t* candidates, int m,
                                  int32_t* ordered) {
  // "i before j" is logit_i > logit_j, or equal with i < j: for i left of the block that is >=, for
  // i right of it >, and inside it the tie part holds in the lanes right of i (a constant mask).
  const __m512i one = _mm512_set1_epi32(1);
  for (int j0 = 0; j0 < m; j0 += 16) {
    const __m512 cj = _mm512_loadu_ps(candidate_logits + j0);
    const int block_end = std::min(j0 + 16, m);
    __m512i rank = _mm512_setzero_si512();
    int i = 0;
    for (; i < j0; ++i) {
      const __mmask16 before =
          _mm512_cmp_ps_mask(_mm512_set1_ps(candidate_logits[i]), cj, _CMP_GE_OQ);
      rank = _mm512_mask_add_epi32(rank, before, rank, one);
    }
    for (; i < block_end; ++i) {
      const __m512 ci = _mm512_set1_ps(candidate_logits[i]);
      const auto right_of_i = static_cast<__mmask16>(0xfffeu << (i - j0));
      const __mmask16 before = _mm512_cmp_ps_mask(ci, cj, _CMP_GT_OQ) |
                               _mm512_mask_cmp_ps_mask(right_of_i, ci, cj, _CMP_EQ_OQ);
      rank = _mm512_mask_add_epi32(rank, before, rank, one);
    }
    for (; i < m; ++i) {
      const __mmask16 before =
          _mm512_cmp_ps_mask(_mm512_set1_ps(candidate_logits[i]), cj, _CMP_GT_OQ);
      rank = _mm512_mask_add_epi32(rank, before, rank, one);
    }
    alignas(64) int32_t ranks[16];
    _mm512_store_si512(ranks, rank);
    const int lanes = block_end - j0;
    for (int l = 0; l < lanes; ++l) ordered[ranks[l]] = candidates[j0 + l];
  }
}

#endif

float max_logit(const float* logits, int n, bool* finite, float* floor8) {
#if BHMOE_HAVE_X86
  const SimdLevel level = simd_level();
  if (level >= SimdLevel::Avx512) return max_logit_wide(logits, n, finite, floor8);
  if (level >= SimdLevel::Avx2) return max_logit_avx2(logits, n, finite, floor8);
#endif
  return max_logit_narrow(logits, n, finite, floor8);
}

float softmax_numerators(const float* logits, int n, float max, float temperature, float* e) {
#if BHMOE_HAVE_X86
  const SimdLevel level = simd_level();
  if (level >= SimdLevel::Avx512) return softmax_wide(logits, n, max, temperature, e);
  if (level >= SimdLevel::Avx2) return softmax_avx2(logits, n, max, temperature, e);
#endif
  return softmax_narrow(logits, n, max, temperature, e);
}

float max_and_softmax(const float* logits, int n, float temperature, float* max, bool* finite,
                      float* floor8, float* e) {
#if BHMOE_HAVE_X86
  const SimdLevel level = simd_level();
  if (level >= SimdLevel::Avx512)
    return max_softmax_wide(logits, n, temperature, max, finite, floor8, e);
  if (level >= SimdLevel::Avx2)
    return max_softmax_avx2(logits, n, temperature, max, finite, floor8, e);
#endif
  return max_softmax_narrow(logits, n, temperature, max, finite, floor8, e);
}

int step_up_count(const float* candidate_logits, int m, const float* cut) {
#if BHMOE_HAVE_X86
  const SimdLevel level = simd_level();
  if (level >= SimdLevel::Avx512) return step_up_wide(candidate_logits, m, cut);
  if (level >= SimdLevel::Avx2) return step_up_avx2(candidate_logits, m, cut);
#endif
  return step_up_narrow(candidate_logits, m, cut);
}

void rank_order(const float* candidate_logits, const int32_t* candidates, int m, int32_t* ordered) {
#if BHMOE_HAVE_X86
  const SimdLevel level = simd_level();
  if (level >= SimdLevel::Avx512) {
    rank_order_wide(candidate_logits, candidates, m, ordered);
    return;
  }
  if (level >= SimdLevel::Avx2) {
    rank_order_avx2(candidate_logits, candidates, m, ordered);
    return;
  }
#endif
  rank_order_narrow(candidate_logits, candidates, m, ordered);
}

int collect_at_least(const float* logits, int n, float cutoff, int32_t* out, float* out_logits) {
#if BHMOE_HAVE_X86
  if (simd_level() >= SimdLevel::Avx512) return collect_wide(logits, n, cutoff, out, out_logits);
#endif
  return collect_narrow(logits, n, cutoff, out, out_logits);
}

void select_top(const float* logits, const int32_t* candidates, int n, int count, int32_t* out) {
  if (count <= 0) return;
  if (count <= 24) {
    // Insertion into a sorted buffer: most elements fail the first comparison against the current
    // last kept one. Scanning indices in ascending order and inserting only when strictly larger
    // keeps equal logits in ascending index order.
    int filled = 0;
    for (int j = 0; j < n; ++j) {
      const int32_t idx = candidates ? candidates[j] : j;
      const float v = logits[idx];
      int pos;
      if (filled < count) {
        pos = filled++;
      } else {
        if (!(v > logits[out[count - 1]])) continue;
        pos = count - 1;
      }
      while (pos > 0 && v > logits[out[pos - 1]]) {
        out[pos] = out[pos - 1];
        --pos;
      }
      out[pos] = idx;
    }
    return;
  }
  int32_t scratch[kMaxExperts];
  for (int j = 0; j < n; ++j) scratch[j] = candidates ? candidates[j] : j;
  auto before = [logits](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(scratch, scratch + count, scratch + n, before);
  std::memcpy(out, scratch, sizeof(int32_t) * static_cast<size_t>(count));
}

int first_non_finite(const float* logits, int n) {
  for (int i = 0; i < n; ++i) {
    if (!std::isfinite(logits[i])) return i;
  }
  return -1;
}

}  // namespace bhmoe::routing::detail
