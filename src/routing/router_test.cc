#include "routing/router.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <filesystem>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "routing/bh.h"
#include "routing/calibration.h"
#include "routing/spec.h"
#include "routing/test_support.h"
#include "util/error.h"
#include "util/simd.h"

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

// softmax(r / T) in double.
std::vector<double> softmax(const float* r, int n, double t = 1.0) {
  double mx = *std::max_element(r, r + n);
  std::vector<double> p(n);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += p[i] = std::exp((r[i] - mx) / t);
  for (double& v : p) v /= sum;
  return p;
}

// The ids sorted by logit descending, ties lower id first.
std::vector<int32_t> logit_order(const float* r, int n) {
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return r[a] > r[b]; });
  return order;
}

void expect_valid(const Decision& d, const float* r, int n, bool renorm, double t = 1.0) {
  std::set<int32_t> unique(d.ids.begin(), d.ids.end());
  EXPECT_EQ(unique.size(), d.ids.size()) << "duplicate expert";
  for (int32_t id : d.ids) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, n);
  }
  // Highest probability first; equal logits lower id first.
  for (size_t j = 1; j < d.ids.size(); ++j) {
    const float a = r[d.ids[j - 1]], b = r[d.ids[j]];
    EXPECT_TRUE(a > b || (a == b && d.ids[j - 1] < d.ids[j])) << "order at " << j;
  }
  auto p = softmax(r, n, t);
  double sum = 0;
  double selected_prob = 0;
  for (size_t j = 0; j < d.ids.size(); ++j) {
    EXPECT_GE(d.weights[j], 0.0f);
    EXPECT_TRUE(std::isfinite(d.weights[j]));
    sum += d.weights[j];
    selected_prob += p[d.ids[j]];
  }
  for (size_t j = 0; j < d.ids.size(); ++j) {
    const double expected = renorm ? p[d.ids[j]] / selected_prob : p[d.ids[j]];
    EXPECT_NEAR(d.weights[j], expected, 2e-6 + 2e-6 * expected);
  }
  if (renorm) {
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
}

TEST(TopK, SelectsTheKLargestWithSoftmaxWeights) {
  const int n = 64;
  auto logits = normal_logits(50 * n, 1);
  for (bool renorm : {false, true}) {
    auto router = make_router(renorm ? "topk:k=8,renorm=true" : "topk:k=8", n);
    EXPECT_EQ(router->max_count(), 8);
    EXPECT_EQ(router->num_experts(), n);
    EXPECT_FALSE(router->uses_calibration());
    for (int t = 0; t < 50; ++t) {
      const float* r = logits.data() + t * n;
      Decision d = route_one(*router, r);
      ASSERT_EQ(d.ids.size(), 8u);
      auto order = logit_order(r, n);
      EXPECT_EQ(d.ids, std::vector<int32_t>(order.begin(), order.begin() + 8));
      expect_valid(d, r, n, renorm);
    }
  }
}

TEST(TopK, LargestLogitsAllInOneStrideGroupAndOddSizes) {
  // The fast path bounds the k-th largest by eight strided groups' maxima; put every winner in one
  // group, and try sizes that are not multiples of 8.
  std::vector<float> r(64);
  for (int i = 0; i < 64; ++i) r[i] = i % 8 == 3 ? 10.0f + i : -static_cast<float>(i);
  Decision d = route_one(*make_router("topk:k=8", 64), r.data());
  EXPECT_EQ(d.ids, (std::vector<int32_t>{59, 51, 43, 35, 27, 19, 11, 3}));
  for (int n : {1, 5, 8, 9, 15, 33, 100}) {
    auto logits = normal_logits(20 * n, 30 + n);
    for (int k : {1, std::min(n, 3), std::min(n, 8), std::min(n, 12)}) {
      auto router = make_router(cat("topk:k=", k), n);
      for (int t = 0; t < 20; ++t) {
        const float* x = logits.data() + t * n;
        auto order = logit_order(x, n);
        EXPECT_EQ(route_one(*router, x).ids, std::vector<int32_t>(order.begin(), order.begin() + k))
            << "n " << n << " k " << k;
      }
    }
  }
}

TEST(TopK, NativeWeightsDoNotSumToOne) {
  const int n = 64;
  auto logits = normal_logits(n, 2);
  Decision d = route_one(*make_router("topk:k=8", n), logits.data());
  float sum = std::accumulate(d.weights.begin(), d.weights.end(), 0.0f);
  EXPECT_LT(sum, 0.99f);
  EXPECT_GT(sum, 0.0f);
}

TEST(TopK, TemperatureFlattensWeightsButKeepsTheSelection) {
  const int n = 32;
  auto logits = normal_logits(n, 3);
  Decision cold = route_one(*make_router("topk:k=4,temperature=0.5", n), logits.data());
  Decision base = route_one(*make_router("topk:k=4", n), logits.data());
  Decision hot = route_one(*make_router("topk:k=4,temperature=4", n), logits.data());
  EXPECT_EQ(cold.ids, base.ids);
  EXPECT_EQ(hot.ids, base.ids);
  EXPECT_GT(cold.weights[0], base.weights[0]);
  EXPECT_LT(hot.weights[0], base.weights[0]);
  expect_valid(cold, logits.data(), n, false, 0.5);
  expect_valid(hot, logits.data(), n, false, 4.0);
}

TEST(TopK, EqualLogitsLowerIdWins) {
  std::vector<float> r(16, 0.25f);
  Decision d = route_one(*make_router("topk:k=4", 16), r.data());
  EXPECT_EQ(d.ids, (std::vector<int32_t>{0, 1, 2, 3}));
  for (float w : d.weights) EXPECT_NEAR(w, 1.0f / 16, 1e-7);
  r[9] = 1.0f;
  r[3] = 1.0f;
  d = route_one(*make_router("topk:k=3", 16), r.data());
  EXPECT_EQ(d.ids, (std::vector<int32_t>{3, 9, 0}));
}

// Logits on a coarse grid (many exact ties, +0 and -0 mixed) and N = 64, 256: the vectorised
// ranking sees ties inside and across its 16-candidate blocks; the result must be the stable-sort
// prefix.
TEST(TopK, ManyTiesAcrossBlocksMatchStableSort) {
  for (int n : {64, 256}) {
    auto logits = normal_logits(40 * n, 11);
    for (size_t i = 0; i < logits.size(); ++i) {
      logits[i] = std::round(logits[i] * 2.0f) / 2.0f;
      if (logits[i] == 0.0f && i % 2 == 1) logits[i] = -0.0f;
    }
    for (int k : {1, 8, 24}) {
      auto router = make_router("topk:k=" + std::to_string(k), n);
      for (int t = 0; t < 40; ++t) {
        const float* r = logits.data() + t * n;
        Decision d = route_one(*router, r);
        auto order = logit_order(r, n);
        order.resize(k);
        EXPECT_EQ(d.ids, order) << "n " << n << " k " << k << " token " << t;
      }
    }
  }
}

TEST(TopK, ExtremeLogitsStayFinite) {
  const int n = 64;
  std::vector<float> r(n, -FLT_MAX);
  r[5] = FLT_MAX;
  r[6] = 1e30f;
  Decision d = route_one(*make_router("topk:k=8,renorm=true", n), r.data());
  EXPECT_EQ(d.ids[0], 5);
  EXPECT_EQ(d.ids[1], 6);
  EXPECT_FLOAT_EQ(d.weights[0], 1.0f);
  for (float w : d.weights) EXPECT_TRUE(std::isfinite(w));
  for (int j = 1; j < 8; ++j) EXPECT_EQ(d.weights[j], 0.0f);
  // Large but ordinary spread: exp underflows for most experts.
  auto big = normal_logits(n, 4, 0.0f, 200.0f);
  Decision b = route_one(*make_router("topk:k=8", n), big.data());
  expect_valid(b, big.data(), n, false);
}

TEST(Routers, EveryRuleRejectsNonFiniteLogits) {
  const int n = 16;
  auto calibration = normal_calibration();
  for (const char* spec : {"topk:k=2", "topp:p=0.5", "bh:alpha=0.1,max_k=4",
                           "bh:alpha=0.1,max_k=4,pvalues=one-minus-prob"}) {
    auto router = make_router(spec, n, calibration);
    for (float bad :
         {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
          -std::numeric_limits<float>::infinity()}) {
      std::vector<float> r(n, 0.0f);
      r[11] = bad;
      int32_t ids[16];
      float weights[16];
      try {
        router->route(r.data(), 0, ids, weights);
        ADD_FAILURE() << spec << " accepted " << bad;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("expert 11"), std::string::npos) << e.what();
      }
      std::vector<float> batch(3 * n, 0.5f);
      batch[2 * n + 11] = bad;
      std::vector<int32_t> bids(3 * router->max_count()), counts(3);
      std::vector<float> bweights(bids.size());
      try {
        router->route_batch(batch.data(), 3, 0, bids.data(), bweights.data(), counts.data());
        ADD_FAILURE() << spec << " batch accepted " << bad;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("token 2"), std::string::npos) << e.what();
      }
    }
  }
}

TEST(Routers, BatchPadsRowsAndMatchesSingleCalls) {
  const int n = 64;
  const int64_t tokens = 37;
  auto logits = normal_logits(tokens * n, 5);
  auto calibration = normal_calibration();
  for (const char* spec : {"topk:k=8", "topp:p=0.6,max_k=12", "bh:alpha=0.2,max_k=16",
                           "bh:alpha=0.2,max_k=16,pvalues=one-minus-prob,min_k=2"}) {
    auto router = make_router(spec, n, calibration);
    const int stride = router->max_count();
    std::vector<int32_t> ids(tokens * stride, 99), counts(tokens, 0);
    std::vector<float> weights(ids.size(), 99.0f);
    router->route_batch(logits.data(), tokens, 1, ids.data(), weights.data(), counts.data());
    for (int64_t t = 0; t < tokens; ++t) {
      Decision d = route_one(*router, logits.data() + t * n, 1);
      ASSERT_EQ(counts[t], static_cast<int32_t>(d.ids.size())) << spec;
      for (int j = 0; j < stride; ++j) {
        if (j < counts[t]) {
          EXPECT_EQ(ids[t * stride + j], d.ids[j]);
          EXPECT_EQ(weights[t * stride + j], d.weights[j]);
        } else {
          EXPECT_EQ(ids[t * stride + j], -1) << spec;
          EXPECT_EQ(weights[t * stride + j], 0.0f) << spec;
        }
      }
    }
  }
}

TEST(Routers, SpecRoundTripsThroughMakeRouter) {
  auto calibration = normal_calibration();
  for (const char* spec : {"topk:k=8", "topk:k=2,renorm=true,temperature=0.7", "topp:p=0.9",
                           "bh:alpha=0.05,max_k=16", "bh:alpha=0.01,max_k=64,min_k=2,renorm=true",
                           "bh:alpha=0.3,max_k=4,pvalues=one-minus-prob"}) {
    auto router = make_router(spec, 64, calibration);
    EXPECT_EQ(make_router(router->spec(), 64, calibration)->spec(), router->spec());
    EXPECT_EQ(router->spec(), canonical_spec(parse_router_spec(spec)));
  }
}

TEST(Routers, SmallAndLargeExpertCounts) {
  auto calibration = normal_calibration();
  float one = 0.3f;
  int32_t id = -1;
  float w = 0;
  EXPECT_EQ(make_router("topk:k=1", 1)->route(&one, 0, &id, &w), 1);
  EXPECT_EQ(id, 0);
  EXPECT_FLOAT_EQ(w, 1.0f);
  EXPECT_EQ(make_router("bh:alpha=0.5,max_k=1", 1, calibration)->route(&one, 0, &id, &w), 1);
  auto logits = normal_logits(kMaxExperts, 6);
  auto router = make_router("bh:alpha=0.05,max_k=1024", kMaxExperts, calibration);
  Decision d = route_one(*router, logits.data());
  auto ref = bh_select_reference(logits.data(), kMaxExperts, calibration->grid(0), 0.05, 1, 1024);
  EXPECT_EQ(d.ids, ref);
  expect_valid(d, logits.data(), kMaxExperts, false);
  EXPECT_THROW(make_router("topk:k=1", kMaxExperts + 1), Error);
}

// ---- Benjamini-Hochberg ----

TEST(BH, MissingLayerIsAnError) {
  auto router = make_router("bh:alpha=0.05,max_k=8", 64, normal_calibration(2));
  auto logits = normal_logits(64, 7);
  int32_t ids[8];
  float weights[8];
  for (int layer : {2, -1, 100}) {
    try {
      router->route(logits.data(), layer, ids, weights);
      ADD_FAILURE() << "layer " << layer << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(cat("no layer ", layer)), std::string::npos) << e.what();
    }
  }
}

TEST(BH, MatchesTheReferenceOnRandomLogits) {
  auto calibration = normal_calibration();
  for (int n : {64, 13, 60, 8, 128}) {
    auto logits = normal_logits(200 * n, 8 + n, 0.5f, 1.3f);
    for (double alpha : {0.01, 0.05, 0.2, 0.5}) {
      for (auto [min_k, max_k] : {std::pair{1, n}, std::pair{2, std::min(n, 6)}}) {
        auto router = make_router(cat("bh:alpha=", alpha, ",max_k=", max_k, ",min_k=", min_k), n,
                                  calibration);
        for (int t = 0; t < 200; ++t) {
          const float* r = logits.data() + t * n;
          Decision d = route_one(*router, r);
          auto ref = bh_select_reference(r, n, calibration->grid(0), alpha, min_k, max_k);
          ASSERT_EQ(d.ids, ref) << "n " << n << " alpha " << alpha << " token " << t;
          expect_valid(d, r, n, false);
        }
      }
    }
  }
}

TEST(BH, SelectionIsAPrefixOfTheLogitOrder) {
  auto calibration = normal_calibration();
  const int n = 64;
  auto logits = normal_logits(300 * n, 9, 1.0f, 1.5f);
  auto router = make_router("bh:alpha=0.1,max_k=32", n, calibration);
  for (int t = 0; t < 300; ++t) {
    const float* r = logits.data() + t * n;
    Decision d = route_one(*router, r);
    auto order = logit_order(r, n);
    EXPECT_EQ(d.ids, std::vector<int32_t>(order.begin(), order.begin() + d.ids.size()));
  }
}

TEST(BH, CountIsNonDecreasingInAlphaAndMaxK) {
  auto calibration = normal_calibration();
  const int n = 64;
  const int tokens = 200;
  auto logits = normal_logits(tokens * n, 10, 0.8f, 1.2f);
  const double alphas[] = {0.001, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8};
  const int max_ks[] = {1, 4, 8, 16, 32, 64};
  std::vector<std::vector<std::unique_ptr<Router>>> routers;  // [alpha][max_k]
  for (double alpha : alphas) {
    routers.emplace_back();
    for (int max_k : max_ks) {
      routers.back().push_back(
          make_router(cat("bh:alpha=", alpha, ",max_k=", max_k), n, calibration));
    }
  }
  for (int t = 0; t < tokens; ++t) {
    const float* r = logits.data() + t * n;
    std::vector<int> previous_alpha(std::size(max_ks), 0);
    for (size_t a = 0; a < std::size(alphas); ++a) {
      int previous_k = 0;
      for (size_t k = 0; k < std::size(max_ks); ++k) {
        const int c = static_cast<int>(route_one(*routers[a][k], r).ids.size());
        EXPECT_GE(c, previous_k) << "max_k " << max_ks[k] << " token " << t;
        EXPECT_GE(c, previous_alpha[k]) << "alpha " << alphas[a] << " token " << t;
        EXPECT_LE(c, max_ks[k]);
        previous_k = c;
        previous_alpha[k] = c;
      }
    }
  }
}

TEST(BH, MinAndMaxAreEnforced) {
  auto calibration = normal_calibration();
  const int n = 64;
  // Nothing passes at a tiny alpha on null logits: exactly min_k.
  auto null = normal_logits(100 * n, 11);
  for (int min_k : {1, 3}) {
    auto router = make_router(cat("bh:alpha=0.000001,max_k=16,min_k=", min_k), n, calibration);
    for (int t = 0; t < 100; ++t)
      EXPECT_EQ(route_one(*router, null.data() + t * n).ids.size(), size_t(min_k));
  }
  // Everything passes when every logit is far above the grid: exactly max_k.
  std::vector<float> high(n);
  for (int i = 0; i < n; ++i) high[i] = 10.0f + 0.01f * i;
  Decision d = route_one(*make_router("bh:alpha=0.05,max_k=12", n, calibration), high.data());
  ASSERT_EQ(d.ids.size(), 12u);
  EXPECT_EQ(d.ids[0], 63);
  EXPECT_EQ(d.ids[11], 52);
  EXPECT_EQ(
      route_one(*make_router("bh:alpha=0.05,max_k=64", n, calibration), high.data()).ids.size(),
      64u);
}

TEST(BH, ExtremeAndEqualLogits) {
  auto calibration = normal_calibration();
  const int n = 64;
  std::vector<float> equal(n, 7.0f);  // all p = 0 (above the grid), ties everywhere
  Decision d = route_one(*make_router("bh:alpha=0.05,max_k=5", n, calibration), equal.data());
  EXPECT_EQ(d.ids, (std::vector<int32_t>{0, 1, 2, 3, 4}));
  for (float w : d.weights) EXPECT_NEAR(w, 1.0f / n, 1e-7);
  std::vector<float> low(n, -50.0f);  // all p = 1
  d = route_one(*make_router("bh:alpha=0.5,max_k=5,min_k=2", n, calibration), low.data());
  EXPECT_EQ(d.ids, (std::vector<int32_t>{0, 1}));
  std::vector<float> wild(n);
  for (int i = 0; i < n; ++i) wild[i] = (i % 2 ? 1.0f : -1.0f) * 3e38f / (i + 1);
  d = route_one(*make_router("bh:alpha=0.05,max_k=64,renorm=true", n, calibration), wild.data());
  expect_valid(d, wild.data(), n, true);
}

TEST(BH, WeightsAreTheRestrictedSoftmax) {
  auto calibration = normal_calibration();
  const int n = 64;
  auto logits = normal_logits(50 * n, 12, 1.0f, 1.5f);
  for (const char* spec : {"bh:alpha=0.2,max_k=16", "bh:alpha=0.2,max_k=16,renorm=true",
                           "bh:alpha=0.2,max_k=16,temperature=2"}) {
    auto router = make_router(spec, n, calibration);
    RouterSpec s = parse_router_spec(spec);
    for (int t = 0; t < 50; ++t) {
      expect_valid(route_one(*router, logits.data() + t * n), logits.data() + t * n, n, s.renorm,
                   s.temperature);
    }
  }
}

TEST(BH, TemperatureDoesNotChangeTheCount) {
  auto calibration = normal_calibration();
  const int n = 64;
  auto logits = normal_logits(50 * n, 13, 1.0f, 1.5f);
  auto base = make_router("bh:alpha=0.1,max_k=16", n, calibration);
  auto hot = make_router("bh:alpha=0.1,max_k=16,temperature=5", n, calibration);
  for (int t = 0; t < 50; ++t) {
    EXPECT_EQ(route_one(*base, logits.data() + t * n).ids,
              route_one(*hot, logits.data() + t * n).ids);
  }
}

TEST(BH, IsSparseOnNullLogits) {
  // Logits drawn from the calibration's own null: few experts pass.
  auto calibration = normal_calibration();
  const int n = 64;
  const int tokens = 500;
  auto logits = normal_logits(tokens * n, 14);
  auto router = make_router("bh:alpha=0.05,max_k=64", n, calibration);
  double total = 0;
  for (int t = 0; t < tokens; ++t) total += route_one(*router, logits.data() + t * n).ids.size();
  EXPECT_LT(total / tokens, 1.5);
}

TEST(BH, OneMinusProbAlwaysSelectsMinK) {
  // The original's first p-value: degenerate, kept to reproduce it. Needs no calibration.
  const int n = 64;
  auto logits = normal_logits(100 * n, 15, 0.0f, 2.0f);
  for (int min_k : {1, 4}) {
    auto router =
        make_router(cat("bh:alpha=0.05,max_k=16,min_k=", min_k, ",pvalues=one-minus-prob"), n);
    EXPECT_FALSE(router->uses_calibration());
    for (int t = 0; t < 100; ++t) {
      Decision d = route_one(*router, logits.data() + t * n);
      EXPECT_EQ(d.ids.size(), size_t(min_k));
      auto order = logit_order(logits.data() + t * n, n);
      EXPECT_EQ(d.ids, std::vector<int32_t>(order.begin(), order.begin() + min_k));
    }
  }
  // With few experts and a dominant one, 1 - p can pass.
  std::vector<float> r = {10.0f, 0.0f};
  auto router = make_router("bh:alpha=0.5,max_k=2,pvalues=one-minus-prob", 2);
  EXPECT_EQ(route_one(*router, r.data()).ids, (std::vector<int32_t>{0}));
}

TEST(BH, StepUpCountEqualsTheSortedDefinition) {
  std::mt19937_64 rng(16);
  for (int n : {1, 2, 7, 64, 300}) {
    std::vector<float> crit(n);
    for (double alpha : {0.01, 0.05, 0.5}) {
      bh_critical_values(alpha, n, crit.data());
      for (int trial = 0; trial < 200; ++trial) {
        std::vector<float> p(n);
        std::uniform_real_distribution<float> u(0.0f, trial % 2 ? 1.0f : 0.2f);
        for (float& v : p) v = u(rng);
        // Exact critical values and ties stress the threshold correction.
        if (n > 3) {
          p[0] = crit[n / 2];
          p[1] = crit[n / 2];
          p[2] = crit[0];
          p[3] = std::nextafter(crit[1], 1.0f);
        }
        ASSERT_EQ(bh_step_up_count(p.data(), n, crit.data()),
                  bh_step_up_count_sorted(p.data(), n, crit.data()));
      }
    }
  }
  std::vector<float> crit(4);
  bh_critical_values(0.2, 4, crit.data());  // 0.05, 0.1, 0.15, 0.2
  std::vector<float> p = {0.04f, 0.3f, 0.12f, 0.14f};
  EXPECT_EQ(bh_step_up_count(p.data(), 4, crit.data()),
            3);  // 0.04, 0.12, 0.14 <= 0.05, 0.1, 0.15? 0.12 > 0.1 but 0.14 <= 0.15
  p = {0.06f, 0.5f, 0.9f, 0.7f};
  EXPECT_EQ(bh_step_up_count(p.data(), 4, crit.data()), 0);
}

TEST(BH, CutoffsAgreeWithPValuesAtTheBoundary) {
  // The fast router decides "passes at k" by logit >= cut[k-1]; at the cutoff and the float just
  // below it, that must equal the p-value comparison, on the real calibration when present.
  const auto path =
      std::filesystem::path(BHMOE_SHARED_DIR) / "calibration/olmoe-1b-7b-0924.kde.json";
  std::shared_ptr<const Calibration> calibration =
      std::filesystem::exists(path) ? std::make_shared<const Calibration>(Calibration::load(path))
                                    : normal_calibration();
  const int n = 64;
  for (double alpha : {0.01, 0.05, 0.2}) {
    std::vector<float> crit(n);
    bh_critical_values(alpha, n, crit.data());
    for (int layer : calibration->layers()) {
      const auto& grid = calibration->grid(layer);
      auto cut = bh_logit_cutoffs(grid, crit.data(), n);
      for (int k = 0; k < n; ++k) {
        if (k) {
          EXPECT_LE(cut[k], cut[k - 1]);
        }
        ASSERT_TRUE(std::isfinite(cut[k]));
        EXPECT_LE(calibrated_pvalue(grid, cut[k]), crit[k]);
        EXPECT_GT(calibrated_pvalue(grid, std::nextafter(cut[k], -INFINITY)), crit[k]);
      }
    }
  }
}

// ---- top-p ----

TEST(TopP, ReachesItsMassWithTheSmallestPrefix) {
  const int n = 64;
  auto logits = normal_logits(200 * n, 17, 0.0f, 2.0f);
  for (double p : {0.3, 0.7, 0.95}) {
    auto router = make_router(cat("topp:p=", p, ",max_k=64"), n);
    for (int t = 0; t < 200; ++t) {
      const float* r = logits.data() + t * n;
      Decision d = route_one(*router, r);
      auto order = logit_order(r, n);
      EXPECT_EQ(d.ids, std::vector<int32_t>(order.begin(), order.begin() + d.ids.size()));
      double mass = std::accumulate(d.weights.begin(), d.weights.end(), 0.0);
      EXPECT_GE(mass, p - 1e-5);
      EXPECT_LT(mass - d.weights.back(), p + 1e-5);
      expect_valid(d, r, n, false);
    }
  }
}

TEST(TopP, ClampsToMinAndMax) {
  const int n = 64;
  std::vector<float> flat(n, 0.0f);  // p = 0.7 needs 45 experts
  EXPECT_EQ(route_one(*make_router("topp:p=0.7,max_k=16", n), flat.data()).ids.size(), 16u);
  EXPECT_EQ(route_one(*make_router("topp:p=0.7,max_k=64", n), flat.data()).ids.size(), 45u);
  std::vector<float> peaked(n, 0.0f);
  peaked[9] = 20.0f;  // one expert holds almost all the mass
  EXPECT_EQ(route_one(*make_router("topp:p=0.7", n), peaked.data()).ids, (std::vector<int32_t>{9}));
  Decision d = route_one(*make_router("topp:p=0.7,min_k=3,renorm=true", n), peaked.data());
  EXPECT_EQ(d.ids, (std::vector<int32_t>{9, 0, 1}));
  expect_valid(d, peaked.data(), n, true);
}

}  // namespace
}  // namespace bhmoe::routing

namespace bhmoe::routing {
namespace {

// Every SIMD level this CPU has (util/simd.h) routes bit for bit alike: the eight-lane kernels run
// at the baseline and AVX2 levels, the sixteen-lane ones at AVX-512, and the routing layer fixes the
// rounding so they must agree exactly, single calls and batches, for every rule.
TEST(RouterSimdLevels, EveryLevelRoutesBitForBitAlike) {
  const SimdLevel best = detected_simd_level();
  auto calibration = normal_calibration();
  const int n = 64, tokens = 97;
  std::vector<float> logits = normal_logits(int64_t{tokens} * n, 11);
  // Ties and a spread of scales, so ranking ties and the small-count paths are exercised.
  for (int i = 0; i < 8; ++i) logits[static_cast<size_t>(5 * n + i)] = 1.5f;
  for (int i = 0; i < n; ++i) logits[static_cast<size_t>(9 * n + i)] *= 6.0f;
  for (const char* spec :
       {"topk:k=8", "topk:k=24", "bh:alpha=0.05,max_k=16", "bh:alpha=0.5,max_k=64,min_k=2",
        "topp:p=0.7", "skip:beta=0.3", "threshold:tau=0.05", "hc:max_k=16",
        "topk:k=8,renorm=true,temperature=2"}) {
    SCOPED_TRACE(spec);
    std::unique_ptr<Router> router = make_router(spec, n, calibration);
    const int stride = router->max_count();
    auto run = [&](std::vector<int32_t>& ids, std::vector<float>& weights,
                   std::vector<int32_t>& counts) {
      ids.assign(static_cast<size_t>(tokens) * stride, -1);
      weights.assign(ids.size(), 0.0f);
      counts.assign(tokens, 0);
      router->route_batch(logits.data(), tokens, 0, ids.data(), weights.data(), counts.data());
      // Single calls must equal the batch.
      for (int t = 0; t < tokens; ++t) {
        std::vector<int32_t> one_ids(stride);
        std::vector<float> one_weights(stride);
        const int count = router->route(logits.data() + int64_t{t} * n, 0, one_ids.data(),
                                        one_weights.data());
        ASSERT_EQ(count, counts[t]) << "token " << t;
        for (int j = 0; j < count; ++j) {
          ASSERT_EQ(one_ids[j], ids[static_cast<size_t>(t) * stride + j]);
          ASSERT_EQ(one_weights[j], weights[static_cast<size_t>(t) * stride + j]);
        }
      }
    };
    set_simd_level(best);
    std::vector<int32_t> want_ids, want_counts;
    std::vector<float> want_weights;
    run(want_ids, want_weights, want_counts);
    for (int level = 0; level < static_cast<int>(best); ++level) {
      SCOPED_TRACE(simd_level_name(static_cast<SimdLevel>(level)));
      set_simd_level(static_cast<SimdLevel>(level));
      std::vector<int32_t> ids, counts;
      std::vector<float> weights;
      run(ids, weights, counts);
      EXPECT_EQ(counts, want_counts);
      EXPECT_EQ(ids, want_ids);
      EXPECT_EQ(weights, want_weights);  // bit for bit, not within a tolerance
    }
    set_simd_level(best);
  }
}

}  // namespace
}  // namespace bhmoe::routing
