// The adaptive rules (skip, threshold, HC, entropy): each fast router against its direct reference
// (routing/adaptive.h) on random logits with ties and extreme values, and their edge cases.
#include "routing/adaptive.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "routing/bh.h"
#include "routing/calibration.h"
#include "routing/router.h"
#include "routing/spec.h"
#include "routing/test_support.h"
#include "util/error.h"

namespace bhmoe::routing {
namespace {

using testing::normal_calibration;
using testing::normal_logits;

struct Decision {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

Decision route_one(const Router& r, const float* logits, int layer = 0) {
  std::vector<int32_t> ids(r.max_count(), -7);
  std::vector<float> weights(r.max_count(), -7.0f);
  const int count = r.route(logits, layer, ids.data(), weights.data());
  EXPECT_GE(count, 1);
  EXPECT_LE(count, r.max_count());
  ids.resize(count);
  weights.resize(count);
  return {ids, weights};
}

std::vector<int32_t> logit_order(const float* r, int n) {
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return r[a] > r[b]; });
  return order;
}

// Random logits that stress the rules: normal rows, rows rounded to quarters (ties), constant
// rows, one dominant expert, a huge spread (exp underflow), +-FLT_MAX-scale values.
std::vector<float> stress_logits(int tokens, int n, uint64_t seed) {
  std::vector<float> x = normal_logits(static_cast<int64_t>(tokens) * n, seed, 0.0f, 1.5f);
  for (int t = 0; t < tokens; ++t) {
    float* row = x.data() + static_cast<size_t>(t) * n;
    switch (t % 7) {
      case 1:
        for (int i = 0; i < n; ++i) row[i] = std::round(row[i] * 4.0f) / 4.0f;
        break;
      case 2:
        for (int i = 0; i < n; ++i) row[i] = 0.25f;
        break;
      case 3:
        row[t % n] += 12.0f;
        break;
      case 4:
        for (int i = 0; i < n; ++i) row[i] *= 150.0f;
        break;
      case 5:
        for (int i = 0; i < n; ++i) row[i] = (i % 3 == 0 ? FLT_MAX : -FLT_MAX) / (1.0f + i);
        break;
      case 6:
        for (int i = 0; i < std::min(n, 8); ++i) row[i] += 2.0f;  // a few clearly preferred
        break;
      default:
        break;
    }
  }
  return x;
}

// Selection prefix by logit, weights = the (renormalised) softmax at the spec's temperature.
void expect_weights(const Decision& d, const float* r, int n, const RouterSpec& spec) {
  auto order = logit_order(r, n);
  EXPECT_EQ(d.ids, std::vector<int32_t>(order.begin(), order.begin() + d.ids.size()));
  const double mx = *std::max_element(r, r + n);
  double sum = 0;
  std::vector<double> p(n);
  for (int i = 0; i < n; ++i) sum += p[i] = std::exp((r[i] - mx) / spec.temperature);
  double selected = 0;
  for (int32_t id : d.ids) selected += p[id] / sum;
  for (size_t j = 0; j < d.ids.size(); ++j) {
    const double expected = spec.renorm ? p[d.ids[j]] / sum / selected : p[d.ids[j]] / sum;
    EXPECT_NEAR(d.weights[j], expected, 2e-6 + 2e-6 * expected);
  }
}

// ---- skip ----

TEST(Skip, MatchesTheReferenceOnRandomLogitsWithTiesAndExtremes) {
  for (int n : {64, 13, 8, 5, 128}) {
    auto logits = stress_logits(210, n, 100 + n);
    for (double beta : {0.05, 0.3, 0.7, 1.0}) {
      for (auto [min_k, max_k] : {std::pair{1, std::min(n, 8)}, std::pair{2, n}}) {
        for (double temperature : {1.0, 0.5, 3.0}) {
          const std::string text = cat("skip:beta=", beta, ",max_k=", max_k, ",min_k=", min_k,
                                       ",temperature=", temperature);
          auto router = make_router(text, n);
          for (int t = 0; t < 210; ++t) {
            const float* r = logits.data() + static_cast<size_t>(t) * n;
            Decision d = route_one(*router, r);
            ASSERT_EQ(d.ids, skip_select_reference(r, n, beta, temperature, min_k, max_k))
                << text << " n " << n << " token " << t;
          }
        }
      }
    }
  }
}

TEST(Skip, KeepsExpertsWithinBetaOfTheTopProbability) {
  const int n = 64;
  auto logits = normal_logits(300 * n, 101, 0.0f, 1.5f);
  auto router = make_router("skip:beta=0.3,max_k=64", n);
  for (int t = 0; t < 300; ++t) {
    const float* r = logits.data() + t * n;
    Decision d = route_one(*router, r);
    expect_weights(d, r, n, parse_router_spec("skip:beta=0.3"));
    // Every kept expert has prob >= 0.3 * top; the first left out has less.
    for (size_t j = 0; j < d.ids.size(); ++j)
      EXPECT_GE(d.weights[j], 0.3f * d.weights[0] * 0.9999f);
    auto order = logit_order(r, n);
    if (d.ids.size() < 64) {
      EXPECT_LT(std::exp(r[order[d.ids.size()]] - r[order[0]]), 0.3 * 1.0001);
    }
  }
}

TEST(Skip, DefaultMaxKIsNativeTopEightAndClampsWork) {
  EXPECT_EQ(parse_router_spec("skip:beta=0.3").max_k, 8);
  EXPECT_EQ(make_router("skip:beta=0.3", 64)->max_count(), 8);
  EXPECT_EQ(make_router("skip:beta=0.3", 5)->max_count(), 5);  // min(8, N) when not given
  const int n = 64;
  std::vector<float> flat(n, 1.0f);  // every prob equals the top one
  EXPECT_EQ(route_one(*make_router("skip:beta=1", n), flat.data()).ids,
            (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7}));
  std::vector<float> peaked(n, 0.0f);
  peaked[9] = 30.0f;  // nothing else is within beta of the top
  EXPECT_EQ(route_one(*make_router("skip:beta=0.01", n), peaked.data()).ids,
            (std::vector<int32_t>{9}));
  Decision d = route_one(*make_router("skip:beta=0.01,min_k=3,renorm=true", n), peaked.data());
  EXPECT_EQ(d.ids, (std::vector<int32_t>{9, 0, 1}));
  EXPECT_NEAR(d.weights[0] + d.weights[1] + d.weights[2], 1.0f, 1e-6);
  // Exactly at the bar: e = exp(ln 0.5) may round either side of 0.5, so build e = 0.5 exactly:
  // logits 0 and -ln 2 in float give e within an ulp; the rule compares e >= fl32(beta).
  std::vector<float> two = {0.0f, -0.6931471805599453f};
  const float e1 = std::exp(-0.6931471805599453f);
  const size_t expected = e1 >= 0.5f ? 2 : 1;
  EXPECT_EQ(route_one(*make_router("skip:beta=0.5,max_k=2", 2), two.data()).ids.size(), expected);
}

// ---- threshold ----

TEST(Threshold, MatchesTheReferenceOnRandomLogitsWithTiesAndExtremes) {
  for (int n : {64, 13, 8, 5, 128}) {
    auto logits = stress_logits(210, n, 200 + n);
    for (double tau : {0.01, 0.05, 0.2, 1.0}) {
      for (auto [min_k, max_k] : {std::pair{1, std::min(n, 16)}, std::pair{3, n}}) {
        for (double temperature : {1.0, 0.7}) {
          if (min_k > n) continue;
          const std::string text = cat("threshold:tau=", tau, ",max_k=", max_k, ",min_k=", min_k,
                                       ",temperature=", temperature);
          auto router = make_router(text, n);
          for (int t = 0; t < 210; ++t) {
            const float* r = logits.data() + static_cast<size_t>(t) * n;
            Decision d = route_one(*router, r);
            ASSERT_EQ(d.ids, threshold_select_reference(r, n, tau, temperature, min_k, max_k))
                << text << " n " << n << " token " << t;
          }
        }
      }
    }
  }
}

TEST(Threshold, SelectsEveryExpertAboveTau) {
  const int n = 64;
  auto logits = normal_logits(300 * n, 201, 0.0f, 2.0f);
  auto router = make_router("threshold:tau=0.05,max_k=64", n);
  const RouterSpec spec = parse_router_spec("threshold:tau=0.05,max_k=64");
  for (int t = 0; t < 300; ++t) {
    const float* r = logits.data() + t * n;
    Decision d = route_one(*router, r);
    expect_weights(d, r, n, spec);
    // Weights are the probabilities: all but a forced first one reach tau; the next one does not.
    for (size_t j = 1; j < d.ids.size(); ++j) EXPECT_GE(d.weights[j], 0.05f);
  }
  std::vector<float> flat(n, 0.0f);  // every prob 1/64 < 0.05: min_k
  EXPECT_EQ(route_one(*make_router("threshold:tau=0.05,min_k=2", n), flat.data()).ids.size(), 2u);
  EXPECT_EQ(route_one(*make_router("threshold:tau=0.015", n), flat.data()).ids.size(), 16u);
  EXPECT_EQ(route_one(*make_router("threshold:tau=0.015,max_k=64", n), flat.data()).ids.size(),
            64u);
  EXPECT_EQ(make_router("threshold:tau=0.2", 10)->max_count(), 10);  // min(16, N)
}

// ---- Higher Criticism ----

TEST(HC, HigherCriticismFormulaAndGuards) {
  // HC(i) = sqrt(N) (i/N - p) / sqrt(p (1 - p)).
  EXPECT_DOUBLE_EQ(
      higher_criticism(0.01f, 3, 64),
      8.0 * (3.0 / 64 - double(0.01f)) / std::sqrt(double(0.01f) * (1 - double(0.01f))));
  EXPECT_TRUE(std::isfinite(higher_criticism(0.0f, 1, 64)));
  EXPECT_EQ(higher_criticism(1.0f, 64, 64), -INFINITY);
  EXPECT_EQ(higher_criticism(1.0f, 3, 64), -INFINITY);
  EXPECT_TRUE(std::isfinite(higher_criticism(std::nextafter(1.0f, 0.0f), 64, 64)));
  EXPECT_GT(higher_criticism(0.0f, 2, 64), higher_criticism(0.0f, 1, 64));  // a p = 0 run grows
  EXPECT_EQ(hc_search_length(0.5, 64), 32);
  EXPECT_EQ(hc_search_length(0.5, 1), 1);
  EXPECT_EQ(hc_search_length(1.0, 7), 7);
  EXPECT_EQ(hc_search_length(0.01, 64), 1);
  // Ties: the first maximum wins.
  std::vector<float> p = {0.5f, 0.5f, 0.5f};
  EXPECT_EQ(hc_argmax(p.data(), 3, 3), 3);  // HC grows with i for equal p
  std::vector<float> zeros(10, 0.0f);
  EXPECT_EQ(hc_argmax(zeros.data(), 10, 64), 10);
  std::vector<float> ones(10, 1.0f);
  EXPECT_EQ(hc_argmax(ones.data(), 10, 64), 1);  // all -inf: the first
  // A clear signal: three tiny p-values, then null ones: HC peaks at 3.
  std::vector<float> signal = {1e-6f, 2e-6f, 3e-6f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f};
  EXPECT_EQ(hc_argmax(signal.data(), 8, 16), 3);
}

TEST(HC, MatchesTheReferenceOnRandomLogitsWithTiesAndExtremes) {
  auto calibration = normal_calibration();
  for (int n : {64, 13, 8, 1, 128}) {
    auto logits = stress_logits(210, n, 300 + n);
    for (double alpha0 : {0.5, 0.1, 1.0}) {
      for (auto [min_k, max_k] : {std::pair{1, n}, std::pair{std::min(n, 2), std::min(n, 6)}}) {
        const std::string text =
            cat("hc:max_k=", max_k, ",min_k=", min_k, ",alpha0=", alpha0, ",renorm=true");
        auto router = make_router(text, n, calibration);
        EXPECT_TRUE(router->uses_calibration());
        for (int t = 0; t < 210; ++t) {
          const float* r = logits.data() + static_cast<size_t>(t) * n;
          Decision d = route_one(*router, r, 1);
          ASSERT_EQ(d.ids, hc_select_reference(r, n, calibration->grid(1), alpha0, min_k, max_k))
              << text << " n " << n << " token " << t;
        }
      }
    }
  }
}

TEST(HC, MatchesTheReferenceOnTheRealCalibration) {
  const auto path =
      std::filesystem::path(BHMOE_SHARED_DIR) / "calibration/olmoe-1b-7b-0924.kde.json";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  auto calibration = std::make_shared<const Calibration>(Calibration::load(path));
  const int n = 64;
  auto logits = stress_logits(700, n, 310);
  auto router = make_router("hc:max_k=16", n, calibration);
  double total = 0;
  for (int layer : {0, 7, 15}) {
    for (int t = 0; t < 700; ++t) {
      const float* r = logits.data() + static_cast<size_t>(t) * n;
      Decision d = route_one(*router, r, layer);
      ASSERT_EQ(d.ids, hc_select_reference(r, n, calibration->grid(layer), 0.5, 1, 16))
          << "layer " << layer << " token " << t;
      expect_weights(d, r, n, parse_router_spec("hc:max_k=16"));
      total += d.ids.size();
    }
  }
  // Adaptive: neither always 1 nor always 16.
  EXPECT_GT(total / 2100, 1.2);
  EXPECT_LT(total / 2100, 15.0);
}

TEST(HC, EdgeCases) {
  auto calibration = normal_calibration();
  const int n = 64;
  // Every logit far above the grid: all p = 0, HC grows along the run: the whole search range.
  std::vector<float> high(n);
  for (int i = 0; i < n; ++i) high[i] = 10.0f + 0.01f * i;
  EXPECT_EQ(route_one(*make_router("hc:max_k=64", n, calibration), high.data()).ids.size(), 32u);
  EXPECT_EQ(route_one(*make_router("hc:max_k=64,alpha0=1", n, calibration), high.data()).ids.size(),
            64u);
  EXPECT_EQ(route_one(*make_router("hc:max_k=8", n, calibration), high.data()).ids.size(), 8u);
  // Every logit far below it: all p = 1, HC falls with i: i* = 1 (or min_k).
  std::vector<float> low(n, -50.0f);
  EXPECT_EQ(route_one(*make_router("hc:max_k=16", n, calibration), low.data()).ids,
            (std::vector<int32_t>{0}));
  EXPECT_EQ(route_one(*make_router("hc:max_k=16,min_k=3", n, calibration), low.data()).ids,
            (std::vector<int32_t>{0, 1, 2}));
}

TEST(HC, SpecErrorsAndMissingLayer) {
  auto calibration = normal_calibration(2);
  EXPECT_THROW(make_router("hc:max_k=16", 64), Error);  // no calibration
  auto router = make_router("hc:max_k=8", 64, calibration);
  auto logits = normal_logits(64, 320);
  int32_t ids[8];
  float weights[8];
  try {
    router->route(logits.data(), 5, ids, weights);
    ADD_FAILURE() << "layer 5 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no layer 5"), std::string::npos) << e.what();
  }
}

// ---- entropy ----

// A calibration with entropy quantiles fitted on `tokens` rows of normal logits with sd `sd`.
std::shared_ptr<const Calibration> entropy_calibration(int n, float sd, uint64_t seed) {
  std::map<int, std::vector<float>> samples;
  samples[0] = normal_logits(2000 * n, seed, 0.0f, sd);
  samples[1] = normal_logits(2000 * n, seed + 1, 0.0f, 2.0f * sd);
  return std::make_shared<const Calibration>(fit_calibration(samples, FitMethod::kEcdf, 500, n));
}

TEST(Entropy, RouterEntropyIsTheSoftmaxEntropy) {
  for (int n : {64, 13, 1, 8, 1024}) {
    auto logits = stress_logits(140, n, 400 + n);
    for (int t = 0; t < 140; ++t) {
      const float* r = logits.data() + static_cast<size_t>(t) * n;
      const double expected = router_entropy_reference(r, n);
      EXPECT_NEAR(router_entropy(r, n), expected, 2e-6 * (1.0 + expected)) << n << " " << t;
    }
  }
  std::vector<float> flat(64, 0.3f);
  EXPECT_NEAR(router_entropy(flat.data(), 64), std::log(64.0), 1e-6);
  for (float x : {1.0f, 1.5f, 2.0f, 3.0f, 64.0f, 1000.0f, 1e30f}) {
    EXPECT_NEAR(entropy_log(x), std::log(double(x)), 2e-7 * std::max(1.0, std::log(double(x))));
  }
}

TEST(Entropy, QuantilesAndThresholds) {
  std::vector<double> q = {0.0, 1.0, 2.0, 3.0, 4.0};  // levels 0, .25, .5, .75, 1
  EXPECT_EQ(entropy_thresholds(q, 1), std::vector<float>{});
  EXPECT_EQ(entropy_thresholds(q, 2), std::vector<float>{2.0f});
  EXPECT_EQ(entropy_thresholds(q, 4), (std::vector<float>{1.0f, 2.0f, 3.0f}));
  EXPECT_EQ(entropy_thresholds(q, 8)[0], 0.5f);  // between stored levels: linear
  std::vector<float> t = {1.0f, 2.0f, 3.0f};
  EXPECT_EQ(entropy_bucket(0.5f, t.data(), 3), 0);
  EXPECT_EQ(entropy_bucket(1.0f, t.data(), 3), 0);  // at a boundary: the lower bucket
  EXPECT_EQ(entropy_bucket(std::nextafter(1.0f, 2.0f), t.data(), 3), 1);
  EXPECT_EQ(entropy_bucket(9.0f, t.data(), 3), 3);
  // The quantiles of the fitter are those of the tokens' entropies.
  const int n = 16;
  auto pooled = normal_logits(101 * n, 401);
  auto fitted = entropy_quantiles(pooled, n);
  ASSERT_EQ(fitted.size(), size_t(kEntropyQuantileLevels + 1));
  std::vector<double> h;
  for (int tok = 0; tok < 101; ++tok) h.push_back(router_entropy(pooled.data() + tok * n, n));
  std::sort(h.begin(), h.end());
  EXPECT_EQ(fitted.front(), h.front());
  EXPECT_EQ(fitted.back(), h.back());
  EXPECT_EQ(fitted[kEntropyQuantileLevels / 2], h[50]);
  EXPECT_EQ(fitted[kEntropyQuantileLevels / 4], h[25]);
  EXPECT_THROW(entropy_quantiles(std::span<const float>(pooled.data(), 17), n), Error);
}

TEST(Entropy, MatchesTheReferenceOnRandomLogitsWithTiesAndExtremes) {
  for (int n : {64, 13, 8}) {
    auto calibration = entropy_calibration(n, 1.5f, 410 + n);
    auto logits = stress_logits(280, n, 420 + n);
    for (const char* ks : {"1/2/4/8", "2", "1/1/3", "1/2/3/4/5/6/7/8"}) {
      for (const char* extra : {"", ",temperature=0.5,renorm=true"}) {
        const std::string text = cat("entropy:ks=", ks, extra);
        const RouterSpec spec = parse_router_spec(text);
        auto router = make_router(spec, n, calibration);
        EXPECT_TRUE(router->uses_calibration());
        for (int layer : {0, 1}) {
          auto t = entropy_thresholds(calibration->entropy_quantiles(layer),
                                      static_cast<int>(spec.ks.size()));
          for (int tok = 0; tok < 280; ++tok) {
            const float* r = logits.data() + static_cast<size_t>(tok) * n;
            Decision d = route_one(*router, r, layer);
            ASSERT_EQ(d.ids, entropy_select_reference(r, n, t, spec.ks))
                << text << " n " << n << " layer " << layer << " token " << tok;
            expect_weights(d, r, n, spec);
          }
        }
      }
    }
  }
}

TEST(Entropy, BucketsSplitTheCalibrationTokensEvenlyAndLowEntropyGetsFewExperts) {
  const int n = 64;
  auto calibration = entropy_calibration(n, 1.5f, 430);
  // Fresh tokens from the same distribution: about a quarter in each of four buckets.
  auto logits = normal_logits(4000 * n, 431, 0.0f, 1.5f);
  auto router = make_router("entropy:ks=1/2/4/8", n, calibration);
  int per_k[9] = {};
  for (int t = 0; t < 4000; ++t) ++per_k[route_one(*router, logits.data() + t * n).ids.size()];
  for (int k : {1, 2, 4, 8}) {
    EXPECT_NEAR(per_k[k] / 4000.0, 0.25, 0.04) << "k " << k;
  }
  std::vector<float> confident(n, 0.0f);
  confident[3] = 20.0f;
  std::vector<float> flat(n, 0.0f);
  EXPECT_EQ(route_one(*router, confident.data()).ids, (std::vector<int32_t>{3}));
  EXPECT_EQ(route_one(*router, flat.data()).ids.size(), 8u);
  EXPECT_EQ(router->max_count(), 8);
}

TEST(Entropy, CalibrationWithoutEntropyDataIsAnErrorNamingTheLayer) {
  const int n = 64;
  // normal_calibration has grids but no entropy quantiles.
  try {
    make_router("entropy:ks=1/8", n, normal_calibration());
    ADD_FAILURE() << "accepted a calibration without entropy quantiles";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no entropy quantiles for any layer"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(make_router("entropy:ks=1/8", n), Error);  // no calibration at all
  auto router = make_router("entropy:ks=1/8", n, entropy_calibration(n, 1.0f, 440));
  auto logits = normal_logits(n, 441);
  int32_t ids[8];
  float weights[8];
  try {
    router->route(logits.data(), 2, ids, weights);
    ADD_FAILURE() << "layer 2 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no entropy quantiles for layer 2"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("layers 0,1"), std::string::npos) << e.what();
  }
}

TEST(Entropy, QuantilesRoundTripThroughTheFileAndOldFilesLoad) {
  const int n = 16;
  auto fitted = entropy_calibration(n, 1.0f, 450);
  Calibration back = Calibration::parse(fitted->to_json(), "round trip");
  EXPECT_EQ(back.entropy_quantiles(0), fitted->entropy_quantiles(0));
  EXPECT_EQ(back.entropy_quantiles(1), fitted->entropy_quantiles(1));
  // The fitter reads each pool as [T, N] rows: a pool of another size is an error naming the layer.
  std::map<int, std::vector<float>> ragged = {{4, normal_logits(10 * n + 3, 451)}};
  try {
    fit_calibration(ragged, FitMethod::kEcdf, 100, n);
    ADD_FAILURE() << "a pool of 163 logits accepted as rows of 16";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("layer 4"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("multiple of N=16"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fit_calibration(ragged, FitMethod::kEcdf, 100).has_entropy_quantiles(4));
  Calibration old = Calibration::parse(normal_calibration()->to_json(), "old");
  EXPECT_FALSE(old.has_entropy_quantiles(0));
  EXPECT_EQ(old.to_json().find("entropy_quantiles"), std::string::npos);
  const std::string base =
      R"({"format":"bh-calibration-grid/1","layers":[{"layer":3,"x":[0,1],"cdf":[0,1],)";
  for (auto [q, why] : {std::pair{"[0.5,0.2]", "decreases at index 1"},
                        std::pair{"[-1,2]", "is negative"}, std::pair{"[1]", "at least 2"},
                        std::pair{"[1,\"a\"]", "not a number"}, std::pair{"3", "not an array"}}) {
    try {
      Calibration::parse(base + R"("entropy_quantiles":)" + q + "}]}", "bad.json");
      ADD_FAILURE() << q << " accepted";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("bad.json"), std::string::npos) << m;
      EXPECT_NE(m.find("layer 3"), std::string::npos) << m;
      EXPECT_NE(m.find(why), std::string::npos) << m;
    }
  }
}

// ---- all four ----

TEST(AdaptiveRules, BatchEqualsSingleCallsAndRejectsNonFiniteLogits) {
  const int n = 64;
  auto calibration = entropy_calibration(n, 1.5f, 460);
  auto logits = stress_logits(70, n, 461);
  for (const char* text : {"skip:beta=0.3", "threshold:tau=0.05,max_k=12", "hc:max_k=16",
                           "entropy:ks=1/2/4/8,renorm=true"}) {
    auto router = make_router(text, n, calibration);
    const int stride = router->max_count();
    std::vector<int32_t> ids(70 * stride, 99), counts(70);
    std::vector<float> weights(ids.size(), 99.0f);
    router->route_batch(logits.data(), 70, 1, ids.data(), weights.data(), counts.data());
    for (int t = 0; t < 70; ++t) {
      Decision d = route_one(*router, logits.data() + t * n, 1);
      ASSERT_EQ(counts[t], static_cast<int32_t>(d.ids.size())) << text;
      for (int j = 0; j < stride; ++j) {
        EXPECT_EQ(ids[t * stride + j], j < counts[t] ? d.ids[j] : -1) << text;
        EXPECT_EQ(weights[t * stride + j], j < counts[t] ? d.weights[j] : 0.0f) << text;
      }
    }
    std::vector<float> bad(n, 0.0f);
    bad[11] = NAN;
    int32_t one_ids[64];
    float one_weights[64];
    try {
      router->route(bad.data(), 0, one_ids, one_weights);
      ADD_FAILURE() << text << " accepted NaN";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("expert 11"), std::string::npos) << e.what();
    }
    EXPECT_EQ(make_router(router->spec(), n, calibration)->spec(), router->spec());
  }
}

}  // namespace
}  // namespace bhmoe::routing
