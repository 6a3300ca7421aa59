#include "routing/adaptive.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "routing/bh.h"
#include "routing/router_ops.h"
#include "routing/router.h"
#include "util/error.h"

namespace bhmoe::routing {
namespace {

// The ids sorted by logit descending, equal logits lower id first.
std::vector<int32_t> logit_order(const float* logits, int n) {
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  return order;
}

// The library's softmax numerators at `temperature` and their sum.
float numerators(const float* logits, int n, double temperature, std::vector<float>& e) {
  e.resize(static_cast<size_t>(n));
  bool finite = true;
  const float mx = detail::max_logit(logits, n, &finite);
  if (!finite) fail("reference: logits must be finite");
  return detail::softmax_numerators(logits, n, mx, static_cast<float>(temperature), e.data());
}

// Keeps the experts of `order` while pass(j) holds, within [min_k, max_k].
template <typename Pass>
std::vector<int32_t> keep_while(std::vector<int32_t> order, int min_k, int max_k, Pass pass) {
  int count = 0;
  while (count < static_cast<int>(order.size()) && pass(order[count])) ++count;
  order.resize(static_cast<size_t>(std::clamp(count, min_k, max_k)));
  return order;
}

}  // namespace

std::vector<int32_t> skip_select_reference(const float* logits, int num_experts, double beta,
                                           double temperature, int min_k, int max_k) {
  std::vector<float> e;
  numerators(logits, num_experts, temperature, e);
  std::vector<int32_t> order = logit_order(logits, num_experts);
  const float top = e[order[0]];
  const float b = static_cast<float>(beta);
  return keep_while(std::move(order), min_k, max_k, [&](int32_t i) { return e[i] >= b * top; });
}

std::vector<int32_t> threshold_select_reference(const float* logits, int num_experts, double tau,
                                                double temperature, int min_k, int max_k) {
  std::vector<float> e;
  const float inv_sum = 1.0f / numerators(logits, num_experts, temperature, e);
  const float t = static_cast<float>(tau);
  return keep_while(logit_order(logits, num_experts), min_k, max_k,
                    [&](int32_t i) { return e[i] * inv_sum >= t; });
}

int hc_search_length(double alpha0, int num_experts) {
  const double length = std::floor(alpha0 * static_cast<double>(num_experts));
  return std::clamp(static_cast<int>(length), 1, num_experts);
}

double higher_criticism(float pvalue, int i, int num_experts) {
  if (pvalue >= 1.0f) return -INFINITY;
  const double p = std::max(static_cast<double>(pvalue), kHCPValueFloor);
  const double n = static_cast<double>(num_experts);
  return std::sqrt(n) * (static_cast<double>(i) / n - p) / std::sqrt(p * (1.0 - p));
}

int hc_argmax(const float* sorted_p, int length, int num_experts) {
  int best = 1;
  double best_value = higher_criticism(sorted_p[0], 1, num_experts);
  for (int i = 2; i <= length; ++i) {
    const double value = higher_criticism(sorted_p[i - 1], i, num_experts);
    if (value > best_value) {
      best = i;
      best_value = value;
    }
  }
  return best;
}

std::vector<int32_t> hc_select_reference(const float* logits, int num_experts,
                                         const CalibrationGrid& grid, double alpha0, int min_k,
                                         int max_k) {
  std::vector<float> p;
  std::vector<int32_t> order = rank_by_pvalue(logits, num_experts, grid, p);
  const int length = hc_search_length(alpha0, num_experts);
  // HC by the formula, written out here rather than through hc_argmax.
  int best = 0;
  double best_value = -INFINITY;
  for (int i = 1; i <= length; ++i) {
    const double value = higher_criticism(p[order[i - 1]], i, num_experts);
    if (best == 0 || value > best_value) {
      best = i;
      best_value = value;
    }
  }
  order.resize(static_cast<size_t>(std::clamp(best, min_k, max_k)));
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  return order;
}

float entropy_log(float x) {
  int exponent = 0;
  float m = std::frexp(x, &exponent);  // m in [0.5, 1)
  if (m < 0.707106781186547524f) {
    exponent -= 1;
    m = m + m - 1.0f;
  } else {
    m = m - 1.0f;
  }
  const float z = m * m;
  float y = 7.0376836292e-2f * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const float fe = static_cast<float>(exponent);
  y = y + -2.12194440e-4f * fe;
  y = y + -0.5f * z;
  float result = m + y;
  result = result + 0.693359375f * fe;
  return result;
}

float router_entropy(const float* logits, int num_experts) {
  const int n = num_experts;
  float e[kMaxExperts];
  bool finite = true;
  const float mx = detail::max_logit(logits, n, &finite);
  const float sum = detail::softmax_numerators(logits, n, mx, 1.0f, e);
  // sum_i e_i x_i in the summation order of softmax_numerators.
  float acc[8] = {};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) {
      const float x = std::max(logits[i + l] - mx, -87.33654f);
      acc[l] = acc[l] + e[i + l] * x;
    }
  }
  float weighted = acc[0];
  for (int l = 1; l < 8; ++l) weighted = weighted + acc[l];
  for (; i < n; ++i) weighted = weighted + e[i] * std::max(logits[i] - mx, -87.33654f);
  return entropy_log(sum) - weighted / sum;
}

double router_entropy_reference(const float* logits, int num_experts) {
  const double mx = *std::max_element(logits, logits + num_experts);
  double sum = 0.0;
  for (int i = 0; i < num_experts; ++i) sum += std::exp(logits[i] - mx);
  double h = 0.0;
  for (int i = 0; i < num_experts; ++i) {
    const double p = std::exp(logits[i] - mx) / sum;
    if (p > 0.0) h -= p * std::log(p);
  }
  return h;
}

std::vector<double> entropy_quantiles(std::span<const float> pooled, int num_experts) {
  if (num_experts < 1 || num_experts > kMaxExperts) {
    fail("entropy quantiles: N=", num_experts, " is outside [1, ", kMaxExperts, "]");
  }
  const size_t n = static_cast<size_t>(num_experts);
  if (pooled.empty() || pooled.size() % n != 0) {
    fail("entropy quantiles: ", pooled.size(),
         " pooled logits are not a positive multiple of N=", num_experts,
         " (one row of N logits per token)");
  }
  const size_t tokens = pooled.size() / n;
  std::vector<double> h(tokens);
  for (size_t t = 0; t < tokens; ++t) {
    const float* row = pooled.data() + t * n;
    const int bad = detail::first_non_finite(row, num_experts);
    if (bad >= 0) fail("entropy quantiles: token ", t, ": logit of expert ", bad, " is not finite");
    h[t] = router_entropy(row, num_experts);
  }
  std::sort(h.begin(), h.end());
  std::vector<double> q(kEntropyQuantileLevels + 1);
  for (int j = 0; j <= kEntropyQuantileLevels; ++j) {
    const double pos =
        static_cast<double>(j) * static_cast<double>(tokens - 1) / kEntropyQuantileLevels;
    const size_t lo = static_cast<size_t>(pos);
    const double frac = pos - static_cast<double>(lo);
    q[j] = lo + 1 < tokens ? h[lo] + frac * (h[lo + 1] - h[lo]) : h[lo];
  }
  return q;
}

std::vector<float> entropy_thresholds(const std::vector<double>& quantiles, int buckets) {
  std::vector<float> t;
  const int levels = static_cast<int>(quantiles.size()) - 1;
  if (levels < 1 || buckets < 1) return t;
  for (int b = 1; b < buckets; ++b) {
    const double pos = static_cast<double>(b) * levels / buckets;
    const int lo = std::min(static_cast<int>(pos), levels);
    const double frac = pos - lo;
    const double value =
        lo < levels ? quantiles[lo] + frac * (quantiles[lo + 1] - quantiles[lo]) : quantiles[lo];
    t.push_back(static_cast<float>(value));
  }
  return t;
}

int entropy_bucket(float entropy, const float* thresholds, int count) {
  int bucket = 0;
  for (int b = 0; b < count; ++b) bucket += entropy > thresholds[b] ? 1 : 0;
  return bucket;
}

std::vector<int32_t> entropy_select_reference(const float* logits, int num_experts,
                                              const std::vector<float>& thresholds,
                                              const std::vector<int>& ks) {
  const float h = router_entropy(logits, num_experts);
  size_t bucket = 0;
  while (bucket < thresholds.size() && h > thresholds[bucket]) ++bucket;
  std::vector<int32_t> order = logit_order(logits, num_experts);
  order.resize(static_cast<size_t>(ks[std::min(bucket, ks.size() - 1)]));
  return order;
}

}  // namespace bhmoe::routing
