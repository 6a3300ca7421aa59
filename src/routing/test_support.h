// Shared helpers for the routing tests (test-only header).
#pragma once

#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "routing/calibration.h"

namespace bhmoe::routing::testing {

// A calibration whose every layer in [0, layers) is the standard normal CDF on [-6, 6].
inline std::shared_ptr<const Calibration> normal_calibration(int layers = 2, int points = 2001) {
  auto c = std::make_shared<Calibration>();
  std::vector<double> x(points), cdf(points);
  for (int i = 0; i < points; ++i) {
    x[i] = -6.0 + 12.0 * i / (points - 1);
    cdf[i] = 0.5 * std::erfc(-x[i] / std::sqrt(2.0));
  }
  for (int l = 0; l < layers; ++l) c->set_layer(l, x, cdf);
  c->model = "test-normal";
  return c;
}

inline std::vector<float> normal_logits(int64_t count, uint64_t seed, float mean = 0.0f,
                                        float sd = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(mean, sd);
  std::vector<float> out(static_cast<size_t>(count));
  for (float& v : out) v = normal(rng);
  return out;
}

}  // namespace bhmoe::routing::testing
