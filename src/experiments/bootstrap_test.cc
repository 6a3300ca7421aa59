#include "experiments/bootstrap.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "experiments/analysis.h"
#include "experiments/csv.h"
#include "experiments/plots.h"
#include "experiments/report.h"

namespace bhmoe::experiments {
namespace {

// A score_text row with explicit windows: every window has `tokens` tokens, nll[w] per predicted
// token and experts[w] per token and layer.
ResultRow window_row(const std::string& config, const std::string& rule, const std::string& text,
                     const std::vector<double>& nll_per_token,
                     const std::vector<double>& experts_per_token, int64_t tokens = 65,
                     int layers = 4) {
  ResultRow r;
  r.kind = "score_text";
  r.config_name = config;
  r.router = rule + ":" + config;
  r.rule = rule;
  r.text_name = text;
  r.num_layers = layers;
  r.key = "pareto/" + config + "/" + text;
  for (size_t w = 0; w < nll_per_token.size(); ++w) {
    r.window_tokens.push_back(tokens);
    r.window_nll_sum.push_back(nll_per_token[w] * static_cast<double>(tokens - 1));
    r.window_experts.push_back(
        static_cast<int64_t>(std::llround(experts_per_token[w] * static_cast<double>(tokens * layers))));
  }
  return r;
}

// Top-k at k = 1, 2, 4, 8 on a curve NLL(k) = 3 + 1/k, with per-window difficulty shared by every
// config (as on real text: a hard window is hard for every rule).
std::vector<ResultRow> curve_rows(const std::string& text, const std::vector<double>& difficulty) {
  std::vector<ResultRow> rows;
  for (int k : {1, 2, 4, 8}) {
    std::vector<double> nll, experts;
    for (double d : difficulty) {
      nll.push_back(3.0 + 1.0 / k + d);
      experts.push_back(k);
    }
    rows.push_back(window_row("topk_" + std::to_string(k), "topk", text, nll, experts));
  }
  return rows;
}

std::vector<double> difficulties(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> noise(0.0, 0.5);
  std::vector<double> d;
  for (int i = 0; i < n; ++i) d.push_back(noise(rng));
  return d;
}

const MatchedPoint& find(const std::vector<MatchedPoint>& points, const std::string& scope,
                         const std::string& config) {
  for (const MatchedPoint& p : points) {
    if (p.scope == scope && p.config_name == config) return p;
  }
  ADD_FAILURE() << "no point " << scope << "/" << config;
  return points.front();
}

TEST(Bootstrap, HolmAdjustmentMatchesTheStepDownByHand) {
  const std::vector<double> p = {0.01, 0.04, 0.03, 0.005, kNaN};
  const std::vector<double> holm = holm_adjust(p);
  // Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max.
  EXPECT_DOUBLE_EQ(holm[3], 0.02);
  EXPECT_DOUBLE_EQ(holm[0], 0.03);
  EXPECT_DOUBLE_EQ(holm[2], 0.06);
  EXPECT_DOUBLE_EQ(holm[1], 0.06);
  EXPECT_TRUE(std::isnan(holm[4]));
  EXPECT_DOUBLE_EQ(holm_adjust(std::vector<double>{0.6, 0.9})[1], 1.0);  // capped at 1
}

TEST(Bootstrap, QuantileAndInterpolationFollowNumpy) {
  std::vector<double> v = {4, 1, 3, 2};
  EXPECT_DOUBLE_EQ(quantile(v, 0.25), 1.75);  // numpy.quantile([1,2,3,4], 0.25)
  EXPECT_DOUBLE_EQ(quantile(v, 0.975), 3.925);
  const std::vector<double> xs = {1, 2, 4}, ys = {10, 8, 4};
  EXPECT_DOUBLE_EQ(interpolate(xs, ys, 3), 6);
  EXPECT_DOUBLE_EQ(interpolate(xs, ys, 2), 8);
  EXPECT_TRUE(std::isnan(interpolate(xs, ys, 4.5)));
  EXPECT_TRUE(std::isnan(interpolate(xs, ys, 0.5)));
}

TEST(Bootstrap, MatchedDifferenceFindsBetterWorseAndEqualRules) {
  const std::vector<double> d = difficulties(60, 1);
  std::vector<ResultRow> rows = curve_rows("fiction", d);
  // At 3 experts top-k's curve (linear between k=2 and k=4) reads 3 + (0.5 + 0.25) / 2 = 3.375.
  std::vector<double> better, worse, equal, three(d.size(), 3.0);
  for (double x : d) {
    better.push_back(3.375 - 0.1 + x);
    worse.push_back(3.375 + 0.1 + x);
    // Equal on average: +-0.2 alternating around the curve.
    equal.push_back(3.375 + x + (equal.size() % 2 ? 0.2 : -0.2));
  }
  rows.push_back(window_row("better", "bh", "fiction", better, three));
  rows.push_back(window_row("worse", "bh", "fiction", worse, three));
  rows.push_back(window_row("equal", "topp", "fiction", equal, three));
  const auto points = matched_compute(rows);
  const MatchedPoint& b = find(points, "all", "better");
  EXPECT_NEAR(b.mean_experts.estimate, 3.0, 1e-9);
  EXPECT_NEAR(b.topk_nll_at_match.estimate - b.nll.estimate, b.delta_nll.estimate, 1e-12);
  EXPECT_NEAR(b.delta_nll.estimate, 0.1, 1e-9);
  // Shared difficulty cancels in the paired difference: the interval is tight around 0.1.
  EXPECT_GT(b.delta_nll.lo, 0.09);
  EXPECT_LT(b.delta_nll.hi, 0.11);
  EXPECT_LT(b.p_holm, 0.01);
  const MatchedPoint& w = find(points, "all", "worse");
  EXPECT_LT(w.delta_nll.hi, 0.0);
  EXPECT_LT(w.p_holm, 0.01);
  const MatchedPoint& e = find(points, "all", "equal");
  EXPECT_LT(e.delta_nll.lo, 0.0);
  EXPECT_GT(e.delta_nll.hi, 0.0);
  EXPECT_GT(e.p_value, 0.2);
  // Top-k itself has no matched difference.
  EXPECT_TRUE(std::isnan(find(points, "all", "topk_4").delta_nll.estimate));
  EXPECT_EQ(find(points, "all", "topk_4").tokens, 60 * 64);
}

// The percentile interval of a mean NLL over W equal windows against the normal approximation
// mean +- 1.96 sd / sqrt(W), computed directly from the windows.
TEST(Bootstrap, IntervalOfTheMeanAgreesWithTheNormalApproximation) {
  const std::vector<double> d = difficulties(400, 7);
  std::vector<ResultRow> rows = curve_rows("code", d);
  const auto points = matched_compute(rows, {.replicates = 2000, .seed = 3, .level = 0.95});
  const MatchedPoint& p = find(points, "code", "topk_2");
  double mean = 0, sq = 0;
  for (double x : d) mean += 3.5 + x;
  mean /= static_cast<double>(d.size());
  for (double x : d) sq += (3.5 + x - mean) * (3.5 + x - mean);
  const double se = std::sqrt(sq / static_cast<double>(d.size() - 1) / static_cast<double>(d.size()));
  EXPECT_NEAR(p.nll.estimate, mean, 1e-12);
  EXPECT_NEAR(p.nll.hi - p.nll.lo, 2 * 1.96 * se, 0.1 * 2 * 1.96 * se);
  EXPECT_NEAR((p.nll.hi + p.nll.lo) / 2, mean, 0.2 * se);
}

TEST(Bootstrap, ScopesArePerTextAndPooledAndDeterministic) {
  const std::vector<double> d1 = difficulties(20, 11), d2 = difficulties(30, 12);
  std::vector<ResultRow> rows = curve_rows("bible", d1);
  for (ResultRow& r : curve_rows("code", d2)) rows.push_back(r);
  std::vector<double> nll, experts;
  for (double x : d1) {
    nll.push_back(3.4 + x);
    experts.push_back(3);
  }
  rows.push_back(window_row("only_bible", "bh", "bible", nll, experts));
  const auto points = matched_compute(rows);
  // "all" first, then each text; a config without every text is not pooled.
  EXPECT_EQ(points.front().scope, "all");
  int all = 0, bible = 0, code = 0;
  for (const MatchedPoint& p : points) {
    all += p.scope == "all";
    bible += p.scope == "bible";
    code += p.scope == "code";
  }
  EXPECT_EQ(all, 4);
  EXPECT_EQ(bible, 5);
  EXPECT_EQ(code, 4);
  EXPECT_EQ(find(points, "all", "topk_1").windows, 50);
  // Pooled NLL is token-weighted over both texts.
  double want = 0;
  for (double x : d1) want += 4 + x;
  for (double x : d2) want += 4 + x;
  EXPECT_NEAR(find(points, "all", "topk_1").nll.estimate, want / 50, 1e-12);
  const auto again = matched_compute(rows);
  EXPECT_EQ(again.back().nll.lo, points.back().nll.lo);
  const auto other = matched_compute(rows, {.replicates = 1000, .seed = 99});
  EXPECT_NE(other.back().nll.lo, points.back().nll.lo);
}

// The report leads the text-scoring section with the matched-compute table and states plainly
// which configs beat top-k; the CSV and the delta plot carry the same numbers.
TEST(Bootstrap, ReportCsvAndPlotCarryTheMatchedComparison) {
  const std::vector<double> d = difficulties(40, 5);
  std::vector<ResultRow> rows = curve_rows("fiction", d);
  for (ResultRow& r : curve_rows("code", d)) rows.push_back(r);
  std::vector<double> better, worse, three(d.size(), 3.0);
  for (double x : d) {
    better.push_back(3.375 - 0.2 + x);
    worse.push_back(3.375 + 0.2 + x);
  }
  for (const char* text : {"fiction", "code"}) {
    rows.push_back(window_row("bh_good", "bh", text, better, three));
    rows.push_back(window_row("topp_bad", "topp", text, worse, three));
  }
  for (ResultRow& r : rows) {
    r.experiment = "pareto";
    r.num_scored_tokens = 0;
    for (int64_t n : r.window_tokens) r.num_scored_tokens += n - 1;
    double nll = 0;
    for (double v : r.window_nll_sum) nll += v;
    r.nll_mean = nll / static_cast<double>(r.num_scored_tokens);
    r.perplexity = std::exp(r.nll_mean);
  }
  const Analysis a = analyze(rows);
  ASSERT_FALSE(a.matched.empty());
  const std::string md = report_markdown(a, rows, {});
  EXPECT_NE(md.find("quality at matched compute"), std::string::npos);
  EXPECT_NE(md.find("rule bh against top-k at matched compute (Δ NLL, Holm-adjusted bootstrap p < 0.05): "
                    "better: `bh_good`; worse: none"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("rule topp against top-k at matched compute (Δ NLL, Holm-adjusted bootstrap p < 0.05): "
                    "better: none; worse: `topp_bad`"),
            std::string::npos);
  EXPECT_NE(md.find("| config | code | fiction |"), std::string::npos);  // the per-domain table
  const std::string csv = matched_compute_csv(a);
  EXPECT_EQ(csv.substr(0, csv.find('\n')),
            "scope,config_name,rule,router,tokens,windows,mean_experts,mean_experts_lo,"
            "mean_experts_hi,nll,nll_lo,nll_hi,perplexity,topk_nll_at_match,delta_nll,delta_nll_lo,"
            "delta_nll_hi,p_value,p_holm");
  EXPECT_NE(csv.find("all,bh_good,bh,"), std::string::npos);
  bool plotted = false;
  for (const PlotScript& p : plot_scripts(a, rows)) {
    if (p.file.name != "matched_compute_delta") continue;
    plotted = true;
    EXPECT_NE(p.script.find("xerrorbars"), std::string::npos);
    EXPECT_EQ(std::count(p.data.begin(), p.data.end(), '\n'), 2 + 4);  // 2 points, 2 blocks
  }
  EXPECT_TRUE(plotted);
}

}  // namespace
}  // namespace bhmoe::experiments
