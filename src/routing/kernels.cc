#include "routing/kernels.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "routing/router.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
// One AVX2 clone and one baseline clone, picked at load time; the routing layer is compiled with
// -ffp-contract=off so both round identically.
#define BHMOE_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define BHMOE_MULTIVERSION
#endif

namespace bhmoe::routing::detail {

// Eight lanes as a GCC/Clang vector type: one AVX register in the AVX2 clone, two SSE registers in
// the baseline one. Lane-wise accumulation fixes the summation order, so every clone gives the same
// result.
constexpr int kLanes = 8;
typedef float Floats __attribute__((vector_size(32)));
typedef int32_t Ints __attribute__((vector_size(32)));

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

BHMOE_MULTIVERSION
float max_logit(const float* logits, int n, bool* finite, float* floor8) {
  // Lane l holds the maximum of logits l, l + 8, l + 16, ...: eight disjoint groups when n >= 8.
  Floats mx = n >= kLanes ? load(logits) : splat(logits[0]);
  Floats probe = {};  // x - x is 0 for finite x and NaN otherwise: a branch-free finiteness test
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Floats v = load(logits + i);
    mx = v > mx ? v : mx;
    probe += v - v;
  }
  float result = mx[0];
  float lane_floor = mx[0];
  float probe_sum = 0.0f;
  for (int l = 0; l < kLanes; ++l) {
    result = mx[l] > result ? mx[l] : result;
    lane_floor = mx[l] < lane_floor ? mx[l] : lane_floor;
    probe_sum += probe[l];
  }
  if (floor8) *floor8 = lane_floor;
  for (; i < n; ++i) {
    float v = logits[i];
    result = v > result ? v : result;
    probe_sum += v - v;
  }
  *finite = probe_sum == 0.0f;
  return result;
}

namespace {

inline Floats reinterpret_vector(Ints bits) { return (Floats)bits; }

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
    I bits = (__builtin_convertvector(nf, Ints) + 127) << 23;
    // A cast between same-size GCC vector types reinterprets the bits; std::bit_cast on vector
    // types trips a false "load of null pointer" in GCC 12's UBSan.
    T value = y * reinterpret_vector(bits);
    return x < lo ? T{} : value;
  }
}

}  // namespace

BHMOE_MULTIVERSION
float softmax_numerators(const float* logits, int n, float max, float temperature, float* e) {
  Floats acc = {};
  int i = 0;
  const Floats mx = splat(max);
  if (temperature == 1.0f) {
    for (; i + kLanes <= n; i += kLanes) {
      Floats v = exp_nonpositive<Floats, Ints>(load(logits + i) - mx);
      store(e + i, v);
      acc += v;
    }
  } else {
    const Floats t = splat(temperature);
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

int collect_at_least(const float* logits, int n, float cutoff, int32_t* out, float* out_logits) {
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
  for (int j = m; j < (m + kLanes - 1) / kLanes * kLanes; ++j) out_logits[j] = pad;
  return m;
}

BHMOE_MULTIVERSION
int step_up_count(const float* candidate_logits, int m, const float* cut) {
  // For a block of 8 consecutive k at once: passing(k) = #{j : logit_j >= cut[k-1]}, accumulated
  // over the candidates, so no per-candidate horizontal sum, histogram or branch is needed.
  int kstar = 0;
  for (int k0 = 0; k0 < m; k0 += kLanes) {
    const Floats c = load(cut + k0);
    Ints passing = {};
    for (int j = 0; j < m; ++j) passing -= splat(candidate_logits[j]) >= c;  // true lanes are -1
    for (int l = 0; l < kLanes; ++l) {
      const int k = k0 + l + 1;
      kstar = (k <= m && passing[l] >= k) ? k : kstar;
    }
  }
  return kstar;
}

BHMOE_MULTIVERSION
void rank_order(const float* candidate_logits, const int32_t* candidates, int m, int32_t* ordered) {
  // rank_j = #{i : logit_i > logit_j, or equal with i < j}, eight candidates j at a time; the ranks
  // are a permutation, so scattering by rank sorts (logit descending, ties lower index first).
  Ints lane = {0, 1, 2, 3, 4, 5, 6, 7};
  for (int j0 = 0; j0 < m; j0 += kLanes) {
    const Floats cj = load(candidate_logits + j0);
    const Ints jj = lane + j0;
    Ints rank = {};
    for (int i = 0; i < m; ++i) {
      const Floats ci = splat(candidate_logits[i]);
      rank -= (ci > cj) | ((ci == cj) & (jj > i));
    }
    const int lanes = std::min(kLanes, m - j0);
    for (int l = 0; l < lanes; ++l) ordered[rank[l]] = candidates[j0 + l];
  }
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
