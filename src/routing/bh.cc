#include "routing/bh.h"

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <limits>
#include <numeric>

namespace bhmoe::routing {

void bh_critical_values(double alpha, int num_experts, float* crit) {
  const float a = static_cast<float>(alpha);
  const float n = static_cast<float>(num_experts);
  for (int k = 1; k <= num_experts; ++k) crit[k - 1] = static_cast<float>(k) * a / n;
}

float calibrated_pvalue(const CalibrationGrid& grid, float logit) {
  return static_cast<float>(1.0 - interpolate_cdf(grid, static_cast<double>(logit)));
}

int bh_step_up_count(const float* pvalues, int num_experts, const float* crit) {
  const int n = num_experts;
  // passing_at[t] = #{i : t_i == t} for t in 1..n; t_i = n + 1 (never) is not stored.
  int32_t passing_at[1025 + 1];
  int32_t* counts = passing_at;
  std::vector<int32_t> large;
  if (n > 1024) {
    large.assign(static_cast<size_t>(n) + 2, 0);
    counts = large.data();
  } else {
    std::fill(passing_at, passing_at + n + 2, 0);
  }
  const double scale = static_cast<double>(n) / static_cast<double>(crit[n - 1]);
  for (int i = 0; i < n; ++i) {
    const float p = pvalues[i];
    // First estimate from p <= k alpha / N, then correct against the float32 crit exactly.
    double estimate = std::ceil(static_cast<double>(p) * scale);
    int t = estimate < 1.0 ? 1 : (estimate > n + 1.0 ? n + 1 : static_cast<int>(estimate));
    if (!(p == p)) t = n + 1;  // NaN never passes
    while (t > 1 && p <= crit[t - 2]) --t;
    while (t <= n && !(p <= crit[t - 1])) ++t;
    if (t <= n) ++counts[t];
  }
  int kstar = 0;
  int passing = 0;
  for (int k = 1; k <= n; ++k) {
    passing += counts[k];
    if (passing >= k) kstar = k;
  }
  return kstar;
}

int bh_step_up_count_sorted(const float* pvalues, int num_experts, const float* crit) {
  std::vector<float> sorted(pvalues, pvalues + num_experts);
  std::sort(sorted.begin(), sorted.end());
  int kstar = 0;
  for (int k = 1; k <= num_experts; ++k) {
    if (sorted[k - 1] <= crit[k - 1]) kstar = k;
  }
  return kstar;
}

namespace {

// Float32 values in increasing order map to increasing int64 keys (finite values only here).
int64_t order_key(float value) {
  int32_t bits = std::bit_cast<int32_t>(value);
  return bits >= 0 ? static_cast<int64_t>(bits) : -static_cast<int64_t>(bits & 0x7fffffff);
}

float from_order_key(int64_t key) {
  if (key >= 0) return std::bit_cast<float>(static_cast<int32_t>(key));
  return std::bit_cast<float>(static_cast<int32_t>((-key) | 0x80000000LL));
}

}  // namespace

std::vector<float> bh_logit_cutoffs(const CalibrationGrid& grid, const float* crit,
                                    int num_experts) {
  std::vector<float> cut(static_cast<size_t>(num_experts));
  const float inf = std::numeric_limits<float>::infinity();
  for (int k = 0; k < num_experts; ++k) {
    const float c = crit[k];
    if (k > 0 && c == crit[k - 1]) {
      cut[k] = cut[k - 1];
      continue;
    }
    if (!(calibrated_pvalue(grid, FLT_MAX) <= c)) {
      cut[k] = inf;
      continue;
    }
    if (calibrated_pvalue(grid, -FLT_MAX) <= c) {
      cut[k] = -inf;
      continue;
    }
    // Invariant: fails at lo, passes at hi. -0.0 and +0.0 share key 0.
    int64_t lo = order_key(-FLT_MAX);
    int64_t hi = order_key(FLT_MAX);
    while (hi - lo > 1) {
      int64_t mid = lo + (hi - lo) / 2;
      if (calibrated_pvalue(grid, from_order_key(mid)) <= c) {
        hi = mid;
      } else {
        lo = mid;
      }
    }
    cut[k] = from_order_key(hi);
  }
  // Non-increasing by construction when p is non-increasing in the logit; enforced so that the
  // router's counting argument holds even if float64 interpolation rounding ever broke that.
  for (int k = 1; k < num_experts; ++k) cut[k] = std::min(cut[k], cut[k - 1]);
  return cut;
}

std::vector<int32_t> rank_by_pvalue(const float* logits, int num_experts,
                                    const CalibrationGrid& grid, std::vector<float>& p) {
  p.resize(static_cast<size_t>(num_experts));
  for (int i = 0; i < num_experts; ++i) p[i] = calibrated_pvalue(grid, logits[i]);
  std::vector<int32_t> order(static_cast<size_t>(num_experts));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    if (p[a] != p[b]) return p[a] < p[b];
    if (logits[a] != logits[b]) return logits[a] > logits[b];
    return a < b;
  });
  return order;
}

std::vector<int32_t> bh_select_reference(const float* logits, int num_experts,
                                         const CalibrationGrid& grid, double alpha, int min_k,
                                         int max_k) {
  std::vector<float> p;
  std::vector<int32_t> order = rank_by_pvalue(logits, num_experts, grid, p);
  std::vector<float> crit(static_cast<size_t>(num_experts));
  bh_critical_values(alpha, num_experts, crit.data());
  int kstar = 0;
  for (int k = 1; k <= num_experts; ++k) {
    if (p[order[k - 1]] <= crit[k - 1]) kstar = k;
  }
  const int count = std::clamp(kstar, min_k, max_k);
  order.resize(static_cast<size_t>(count));
  return order;
}

}  // namespace bhmoe::routing
