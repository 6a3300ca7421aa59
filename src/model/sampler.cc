#include "model/sampler.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace bhmoe::model {

int32_t argmax(const float* logits, int32_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; ++i) {
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

Sampler::Sampler(int32_t vocab_limit, float temperature, float top_p, uint64_t seed)
    : vocab_limit_(vocab_limit), temperature_(temperature), top_p_(top_p), rng_(seed) {
  if (vocab_limit <= 0) fail("sampler: vocabulary size ", vocab_limit, " must be positive");
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    fail("sampler: temperature ", temperature, " must be a finite value >= 0");
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("sampler: top_p ", top_p, " must be in (0, 1]");
  if (temperature_ > 0.0f) {
    probs_.resize(static_cast<size_t>(vocab_limit));
    order_.resize(static_cast<size_t>(vocab_limit));
  }
}

double Sampler::uniform() {
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

int32_t Sampler::sample(const float* logits) {
  if (temperature_ == 0.0f) return argmax(logits, vocab_limit_);

  const int32_t n = vocab_limit_;
  const float max_logit = logits[argmax(logits, n)];
  double total = 0;
  for (int32_t i = 0; i < n; ++i) {
    probs_[i] = std::exp((logits[i] - max_logit) / temperature_);
    total += probs_[i];
  }

  if (top_p_ >= 1.0f) {
    const double target = uniform() * total;
    double cumulative = 0;
    for (int32_t i = 0; i < n; ++i) {
      cumulative += probs_[i];
      if (cumulative > target) return i;
    }
    return argmax(logits, n);  // rounding left target at the very end: the mode is the safe pick
  }

  // Nucleus: the smallest prefix by descending probability (ties: lower id) whose mass reaches
  // top_p. Usually it is short, so sort a partial prefix first and fall back to a full sort.
  auto by_prob = [this](int32_t a, int32_t b) {
    return probs_[a] > probs_[b] || (probs_[a] == probs_[b] && a < b);
  };
  for (int32_t i = 0; i < n; ++i) order_[i] = i;
  const double needed = static_cast<double>(top_p_) * total;
  int32_t sorted = std::min<int32_t>(n, 256);
  std::partial_sort(order_.begin(), order_.begin() + sorted, order_.end(), by_prob);
  int32_t keep = 0;
  double kept_mass = 0;
  for (; keep < sorted; ++keep) {
    kept_mass += probs_[order_[keep]];
    if (kept_mass >= needed) break;
  }
  if (keep == sorted && sorted < n) {
    std::sort(order_.begin(), order_.end(), by_prob);
    for (; keep < n; ++keep) {
      kept_mass += probs_[order_[keep]];
      if (kept_mass >= needed) break;
    }
  }
  keep = std::min(keep + 1, n);
  kept_mass = 0;
  for (int32_t i = 0; i < keep; ++i) kept_mass += probs_[order_[i]];
  const double target = uniform() * kept_mass;
  double cumulative = 0;
  for (int32_t i = 0; i < keep; ++i) {
    cumulative += probs_[order_[i]];
    if (cumulative > target) return order_[i];
  }
  return order_[0];
}

}  // namespace bhmoe::model
