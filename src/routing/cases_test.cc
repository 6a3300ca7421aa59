// ../shared/routing-cases/cases.json: the original implementation's BH selections with the real
// OLMoE calibration. Every token's count and expert set must be reproduced exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "routing/bh.h"
#include "routing/calibration.h"
#include "routing/router.h"
#include "routing/spec.h"
#include "routing/stats.h"
#include "util/error.h"
#include "util/file.h"
#include "util/npy.h"

namespace bhmoe::routing {
namespace {

const std::filesystem::path kShared = BHMOE_SHARED_DIR;

class RoutingCases : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const auto dir = kShared / "routing-cases";
    if (!std::filesystem::exists(dir / "cases.json")) return;
    doc_ = new nlohmann::json(nlohmann::json::parse(read_file(dir / "cases.json")));
    calibration_ = new std::shared_ptr<const Calibration>(std::make_shared<const Calibration>(
        Calibration::load(kShared / (*doc_)["calibration"].get<std::string>())));
    logits_ = new std::map<std::string, NpyArray>();
    for (const auto& c : (*doc_)["cases"]) {
      std::string file = c["logits"];
      if (!logits_->count(file)) (*logits_)[file] = read_npy(dir / file);
    }
  }
  void SetUp() override {
    if (!doc_) GTEST_SKIP() << "no " << (kShared / "routing-cases/cases.json");
  }
  static std::string spec_of(const nlohmann::json& c) {
    return cat("bh:alpha=", format_number(c["alpha"].get<double>()),
               ",max_k=", c["max_k"].get<int>(), ",min_k=", c["min_k"].get<int>(),
               ",temperature=", format_number(c["temperature"].get<double>()));
  }
  static nlohmann::json* doc_;
  static std::shared_ptr<const Calibration>* calibration_;
  static std::map<std::string, NpyArray>* logits_;
};
nlohmann::json* RoutingCases::doc_ = nullptr;
std::shared_ptr<const Calibration>* RoutingCases::calibration_ = nullptr;
std::map<std::string, NpyArray>* RoutingCases::logits_ = nullptr;

TEST_F(RoutingCases, EveryTokenOfEveryCaseMatchesTheOriginal) {
  int cases = 0;
  for (const auto& c : (*doc_)["cases"]) {
    const NpyArray& x = logits_->at(c["logits"].get<std::string>());
    ASSERT_EQ(x.rank(), 2);
    const int n = static_cast<int>(x.dim(1));
    const int64_t tokens = x.dim(0);
    const int layer = c["layer"];
    auto router = make_router(spec_of(c), n, *calibration_);
    const int stride = router->max_count();
    std::vector<int32_t> ids(tokens * stride), counts(tokens);
    std::vector<float> weights(tokens * stride);
    router->route_batch(x.data.data(), tokens, layer, ids.data(), weights.data(), counts.data());
    ASSERT_EQ(c["counts"].size(), static_cast<size_t>(tokens));
    for (int64_t t = 0; t < tokens; ++t) {
      SCOPED_TRACE(
          cat(spec_of(c), " layer ", layer, " ", c["logits"].get<std::string>(), " token ", t));
      ASSERT_EQ(counts[t], c["counts"][t].get<int>());
      std::set<int> expected = c["experts"][t].get<std::set<int>>();
      std::set<int> got(ids.begin() + t * stride, ids.begin() + t * stride + counts[t]);
      ASSERT_EQ(got, expected);
      // The single-token call agrees with the batch.
      int32_t one_ids[64];
      float one_weights[64];
      ASSERT_EQ(router->route(x.data.data() + t * n, layer, one_ids, one_weights), counts[t]);
      for (int j = 0; j < counts[t]; ++j) ASSERT_EQ(one_ids[j], ids[t * stride + j]);
    }
    double mean = count_stats(counts, stride, 1).mean_experts;
    EXPECT_NEAR(mean, c["mean_count"].get<double>(), 1e-9);
    ++cases;
  }
  EXPECT_EQ(cases, 72);
}

TEST_F(RoutingCases, ReferenceImplementationAlsoMatches) {
  for (const auto& c : (*doc_)["cases"]) {
    const NpyArray& x = logits_->at(c["logits"].get<std::string>());
    const int n = static_cast<int>(x.dim(1));
    const auto& grid = (*calibration_)->grid(c["layer"].get<int>());
    for (int64_t t = 0; t < x.dim(0); ++t) {
      auto sel =
          bh_select_reference(x.data.data() + t * n, n, grid, c["alpha"], c["min_k"], c["max_k"]);
      std::set<int> got(sel.begin(), sel.end());
      ASSERT_EQ(got, c["experts"][t].get<std::set<int>>()) << spec_of(c) << " token " << t;
    }
  }
}

TEST_F(RoutingCases, BoostedSeed42Layer0MaxK8MeanCounts) {
  const NpyArray& x = logits_->at("boosted_seed42.logits.npy");
  const int64_t tokens = x.dim(0);
  const double expected[] = {4.20, 7.02, 7.85, 8.00};
  const double alphas[] = {0.01, 0.05, 0.10, 0.20};
  for (int i = 0; i < 4; ++i) {
    auto router = make_router(cat("bh:alpha=", alphas[i], ",max_k=8"), 64, *calibration_);
    std::vector<int32_t> ids(tokens * 8), counts(tokens);
    std::vector<float> weights(tokens * 8);
    router->route_batch(x.data.data(), tokens, 0, ids.data(), weights.data(), counts.data());
    EXPECT_NEAR(count_stats(counts, 8, 1).mean_experts, expected[i], 1e-9) << "alpha " << alphas[i];
  }
}

}  // namespace
}  // namespace bhmoe::routing
