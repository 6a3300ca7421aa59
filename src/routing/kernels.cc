#include "routing/kernels.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

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

// Both loops keep kLanes independent accumulators (a fixed summation order, so every clone gives
// the same result) and let the compiler turn each group of kLanes into vector instructions.
constexpr int kLanes = 8;

BHMOE_MULTIVERSION
float max_logit(const float* logits, int n, bool* finite) {
  float mx[kLanes];
  float probe[kLanes];  // x - x is 0 for finite x and NaN otherwise: a branch-free finiteness test
  for (int l = 0; l < kLanes; ++l) {
    mx[l] = logits[0];
    probe[l] = 0.0f;
  }
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      float v = logits[i + l];
      mx[l] = v > mx[l] ? v : mx[l];
      probe[l] += v - v;
    }
  }
  for (; i < n; ++i) {
    float v = logits[i];
    mx[0] = v > mx[0] ? v : mx[0];
    probe[0] += v - v;
  }
  float result = mx[0];
  float probe_sum = probe[0];
  for (int l = 1; l < kLanes; ++l) {
    result = mx[l] > result ? mx[l] : result;
    probe_sum += probe[l];
  }
  *finite = probe_sum == 0.0f;
  return result;
}

namespace {

// Cephes expf for x <= 0: 2^n * exp(r) with r = x - n ln2 in [-ln2/2, ln2/2]; 0 below -87.33654.
inline float exp_nonpositive(float x) {
  const float lo = -87.33654f;
  float xc = x < lo ? lo : x;
  float t = xc * 1.44269504088896341f;
  float nf = (t + 12582912.0f) - 12582912.0f;  // round to nearest, exact for |t| < 2^22
  float r = xc - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  float z = r * r;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(nf) + 127) << 23;
  float value = y * std::bit_cast<float>(bits);
  return x < lo ? 0.0f : value;
}

}  // namespace

BHMOE_MULTIVERSION
float softmax_numerators(const float* logits, int n, float max, float temperature, float* e) {
  float acc[kLanes] = {};
  int i = 0;
  if (temperature == 1.0f) {
    for (; i + kLanes <= n; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        float v = exp_nonpositive(logits[i + l] - max);
        e[i + l] = v;
        acc[l] += v;
      }
    }
  } else {
    for (; i + kLanes <= n; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        float v = exp_nonpositive((logits[i + l] - max) / temperature);
        e[i + l] = v;
        acc[l] += v;
      }
    }
  }
  for (; i < n; ++i) {
    float x = logits[i] - max;
    float v = exp_nonpositive(temperature == 1.0f ? x : x / temperature);
    e[i] = v;
    acc[0] += v;
  }
  float sum = acc[0];
  for (int l = 1; l < kLanes; ++l) sum += acc[l];
  return sum;
}

int collect_at_least(const float* logits, int n, float cutoff, int32_t* out) {
  int m = 0;
  int i = 0;
#if defined(__SSE2__)
  const __m128 c = _mm_set1_ps(cutoff);
  for (; i + 4 <= n; i += 4) {
    unsigned mask =
        static_cast<unsigned>(_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(logits + i), c)));
    while (mask) {
      out[m++] = i + std::countr_zero(mask);
      mask &= mask - 1;
    }
  }
#endif
  for (; i < n; ++i) {
    out[m] = i;
    m += logits[i] >= cutoff ? 1 : 0;
  }
  return m;
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
