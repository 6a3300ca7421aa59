#include "routing/stats.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "routing/calibration.h"
#include "routing/router.h"
#include "routing/test_support.h"
#include "util/error.h"
#include "util/file.h"
#include "util/npy.h"

namespace bhmoe::routing {
namespace {

TEST(Stats, CountStatsOnAHandComputedExample) {
  std::vector<int32_t> counts = {1, 2, 3, 4, 8};
  CountStats s = count_stats(counts, 8, 1);
  EXPECT_EQ(s.tokens, 5);
  EXPECT_DOUBLE_EQ(s.mean_experts, 3.6);
  EXPECT_NEAR(s.std_experts, std::sqrt(7.3), 1e-12);  // sample std: 29.2 / 4
  EXPECT_EQ(s.min_experts, 1);
  EXPECT_EQ(s.max_experts, 8);
  EXPECT_DOUBLE_EQ(s.pct_at_ceiling, 20.0);
  EXPECT_DOUBLE_EQ(s.pct_at_floor, 20.0);
  // The floor is min_k, not a hard-coded 1.
  CountStats f = count_stats(counts, 4, 2);
  EXPECT_DOUBLE_EQ(f.pct_at_floor, 20.0);
  EXPECT_DOUBLE_EQ(f.pct_at_ceiling, 20.0);
  std::vector<int32_t> one = {5};
  EXPECT_EQ(count_stats(one, 8, 1).std_experts, 0.0);
  CountStats empty = count_stats({}, 8, 1);
  EXPECT_EQ(empty.tokens, 0);
  EXPECT_EQ(empty.mean_experts, 0.0);
}

TEST(Stats, WeightEntropy) {
  std::vector<float> half = {0.5f, 0.5f};
  EXPECT_NEAR(weight_entropy(half), std::log(2.0), 1e-7);
  std::vector<float> quarter = {0.25f, 0.25f, 0.25f, 0.25f, 0.0f};
  EXPECT_NEAR(weight_entropy(quarter), std::log(4.0), 1e-7);
  std::vector<float> single = {1.0f};
  EXPECT_EQ(weight_entropy(single), 0.0);
  std::vector<float> native = {0.2f, 0.1f};  // not renormalised: used as given
  EXPECT_NEAR(weight_entropy(native), -(0.2 * std::log(0.2) + 0.1 * std::log(0.1)), 1e-7);
}

TEST(Stats, Utilisation) {
  Utilisation u = utilisation_from_counts({4, 0, 2, 2});
  EXPECT_EQ(u.used_experts, 3);
  const double mean = 8.0 / 3.0;
  const double sd = std::sqrt(((4 - mean) * (4 - mean) + 2 * (2 - mean) * (2 - mean)) / 3.0);
  EXPECT_NEAR(u.cv, sd / mean, 1e-12);
  EXPECT_DOUBLE_EQ(u.max_min_ratio, 2.0);
  Utilisation even = utilisation_from_counts({3, 3, 3});
  EXPECT_EQ(even.cv, 0.0);
  EXPECT_EQ(even.max_min_ratio, 1.0);
  Utilisation none = utilisation_from_counts({0, 0});
  EXPECT_EQ(none.used_experts, 0);
  EXPECT_EQ(none.cv, 0.0);
}

TEST(Stats, RoutingStatsPerLayerAndOverall) {
  RoutingStats stats(4, 3, 1);
  const int32_t a[] = {0, 1};
  const float wa[] = {0.5f, 0.5f};
  const int32_t b[] = {2};
  const float wb[] = {1.0f};
  const int32_t c[] = {0, 1, 2};
  const float wc[] = {0.2f, 0.2f, 0.2f};
  stats.add(0, a, wa, 2);
  stats.add(0, b, wb, 1);
  stats.add(1, c, wc, 3);
  EXPECT_EQ(stats.layers(), (std::vector<int>{0, 1}));
  EXPECT_DOUBLE_EQ(stats.counts(0).mean_experts, 1.5);
  EXPECT_DOUBLE_EQ(stats.counts(1).mean_experts, 3.0);
  EXPECT_DOUBLE_EQ(stats.counts(1).pct_at_ceiling, 100.0);
  EXPECT_DOUBLE_EQ(stats.counts().mean_experts, 2.0);
  EXPECT_DOUBLE_EQ(stats.counts().pct_at_floor, 100.0 / 3);
  EXPECT_EQ(stats.utilisation().selections, (std::vector<int64_t>{2, 2, 2, 0}));
  EXPECT_EQ(stats.utilisation(0).selections, (std::vector<int64_t>{1, 1, 1, 0}));
  EXPECT_NEAR(stats.mean_weight_entropy(0), std::log(2.0) / 2, 1e-7);
  EXPECT_NEAR(stats.mean_weight_sum(), (1.0 + 1.0 + 0.6) / 3, 1e-7);
  EXPECT_EQ(stats.token_counts(0), (std::vector<int32_t>{2, 1}));
  EXPECT_THROW(stats.counts(7), Error);
  const int32_t bad[] = {4};
  EXPECT_THROW(stats.add(0, bad, wb, 1), Error);
  // add_batch reads rows of a route_batch layout.
  RoutingStats batch(4, 2, 1);
  const int32_t ids[] = {3, -1, 0, 1};
  const float weights[] = {1.0f, 0.0f, 0.5f, 0.5f};
  const int32_t counts[] = {1, 2};
  batch.add_batch(2, ids, weights, counts, 2, 2);
  EXPECT_EQ(batch.utilisation(2).selections, (std::vector<int64_t>{1, 1, 0, 1}));
}

TEST(Stats, MultiKTableColumnsAndValues) {
  auto calibration = testing::normal_calibration(1);
  const int n = 64;
  auto logits = testing::normal_logits(300 * n, 21, 1.0f, 1.5f);
  const std::vector<int> max_ks = {8, 16, 32, 64};
  auto rows = multi_k_table("bh:alpha=0.1,max_k=8", max_ks, logits.data(), 300, n, 0, calibration);
  ASSERT_EQ(rows.size(), 4u);
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].max_k, max_ks[i]);
    EXPECT_LE(rows[i].stats.max_experts, max_ks[i]);
    if (i) {
      EXPECT_GE(rows[i].stats.mean_experts, rows[i - 1].stats.mean_experts);
    }
  }
  // The first row equals routing with max_k = 8 directly.
  auto router = make_router("bh:alpha=0.1,max_k=8", n, calibration);
  std::vector<int32_t> ids(300 * 8), counts(300);
  std::vector<float> weights(ids.size());
  router->route_batch(logits.data(), 300, 0, ids.data(), weights.data(), counts.data());
  EXPECT_DOUBLE_EQ(rows[0].stats.mean_experts, count_stats(counts, 8, 1).mean_experts);

  const std::string csv = multi_k_csv(rows);
  EXPECT_EQ(csv.substr(0, csv.find('\n')),
            "max_k,mean_experts,std_experts,min_experts,max_experts,pct_at_ceiling,pct_at_floor");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 5);
  std::vector<MultiKRow> fixed = {{8, {10, 4.2, 1.5, 1, 8, 20, 10}}};
  EXPECT_EQ(multi_k_csv(fixed), std::string(kMultiKColumns) + "\n8,4.2,1.5,1,8,20,10\n");
  const auto path = std::filesystem::temp_directory_path() / "bhmoe_multik_test.csv";
  write_multi_k_csv(path, fixed);
  EXPECT_EQ(read_file(path), multi_k_csv(fixed));
  std::filesystem::remove(path);
  EXPECT_NE(multi_k_text(fixed).find("max_k"), std::string::npos);
  EXPECT_THROW(multi_k_table("topk:k=8", max_ks, logits.data(), 300, n, 0, calibration), Error);
}

TEST(Stats, MultiKOnTheOriginalTestInput) {
  const auto dir = std::filesystem::path(BHMOE_SHARED_DIR);
  if (!std::filesystem::exists(dir / "routing-cases/boosted_seed42.logits.npy")) GTEST_SKIP();
  auto calibration = std::make_shared<const Calibration>(
      Calibration::load(dir / "calibration/olmoe-1b-7b-0924.kde.json"));
  NpyArray x = read_npy(dir / "routing-cases/boosted_seed42.logits.npy");
  const std::vector<int> max_ks = {8, 16, 32, 64};
  auto rows =
      multi_k_table("bh:alpha=0.05,max_k=8", max_ks, x.data.data(), x.dim(0), 64, 0, calibration);
  EXPECT_NEAR(rows[0].stats.mean_experts, 7.02, 1e-9);
  EXPECT_DOUBLE_EQ(rows[0].stats.pct_at_ceiling, 56.0);
  auto strict =
      multi_k_table("bh:alpha=0.01,max_k=8", max_ks, x.data.data(), x.dim(0), 64, 0, calibration);
  EXPECT_NEAR(strict[0].stats.mean_experts, 4.20, 1e-9);
}

TEST(Stats, FormatStat) {
  EXPECT_EQ(format_stat(7.02), "7.02");
  EXPECT_EQ(format_stat(8.0), "8");
  EXPECT_EQ(format_stat(1.0 / 3), "0.333333");
  EXPECT_EQ(format_stat(-0.0000001), "0");
}

}  // namespace
}  // namespace bhmoe::routing
