// The analysis side on synthetic rows: statistics, t-tests, CSV, JSON, plots and the report.
#include <gtest/gtest.h>

#include <unistd.h>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "experiments/analysis.h"
#include "experiments/csv.h"
#include "experiments/plots.h"
#include "experiments/report.h"
#include "experiments/results.h"
#include "experiments/significance.h"
#include "experiments/synthetic_rows_for_tests.h"
#include "util/error.h"
#include "util/file.h"

namespace bhmoe::experiments {
namespace {

namespace fs = std::filesystem;
using testing::synthetic_pareto_rows;
using testing::synthetic_seed_rows;

fs::path temp_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() /
                 ("bhmoe_analysis_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// ---- Student's t and the paired test, against closed forms independent of Boost. ----

TEST(StudentsT, TwoSidedPAtKnownQuantiles) {
  // t_{0.975} quantiles from standard tables: two-sided p = 0.05.
  EXPECT_NEAR(students_t_two_sided_p(2.228138851986, 10), 0.05, 1e-9);
  EXPECT_NEAR(students_t_two_sided_p(2.570581835636, 5), 0.05, 1e-9);
  EXPECT_NEAR(students_t_two_sided_p(-2.570581835636, 5), 0.05, 1e-9);
  // df = 1 is the Cauchy distribution: P(|T| > 1) = 1/2.
  EXPECT_NEAR(students_t_two_sided_p(1.0, 1), 0.5, 1e-12);
  EXPECT_DOUBLE_EQ(students_t_two_sided_p(0.0, 7), 1.0);
  EXPECT_EQ(students_t_two_sided_p(INFINITY, 3), 0.0);
}

TEST(PairedTTest, MatchesHandComputation) {
  // Differences 1, 2, 3, 4, 6: mean 3.2, sd sqrt(3.7); df = 4, where the two-sided p has the closed
  // form 1 − sin θ (1 + cos² θ / 2), θ = atan(t / 2).
  std::vector<double> a = {11, 12, 13, 14, 16}, b = {10, 10, 10, 10, 10};
  PairedTTest t = paired_t_test(a, b);
  EXPECT_TRUE(t.defined);
  EXPECT_EQ(t.n, 5);
  EXPECT_NEAR(t.mean_diff, 3.2, 1e-12);
  EXPECT_NEAR(t.sd_diff, 1.9235384061671346, 1e-12);
  EXPECT_NEAR(t.t, 3.7199244398022175, 1e-10);
  EXPECT_DOUBLE_EQ(t.df, 4);
  EXPECT_NEAR(t.p_value, 0.0204758744209107, 1e-10);
  EXPECT_NEAR(t.cohens_d, 1.6636007837121163, 1e-10);
  // df = 2: p = 1 − t / sqrt(2 + t²). Differences 1, 2, 4; b − a flips the signs only.
  PairedTTest u = paired_t_test(std::vector<double>{0, 0, 0}, std::vector<double>{1, 2, 4});
  EXPECT_NEAR(u.t, -2.6457513110645907, 1e-10);
  EXPECT_NEAR(u.p_value, 0.11808289631180313, 1e-10);
  EXPECT_LT(u.cohens_d, 0);
}

TEST(PairedTTest, DegenerateCases) {
  std::vector<double> same = {1, 2, 3};
  PairedTTest identical = paired_t_test(same, same);
  EXPECT_EQ(identical.t, 0);
  EXPECT_EQ(identical.p_value, 1);
  EXPECT_EQ(identical.cohens_d, 0);
  PairedTTest shift = paired_t_test(std::vector<double>{2, 3, 4}, same);
  EXPECT_TRUE(std::isinf(shift.t) && shift.t > 0);
  EXPECT_EQ(shift.p_value, 0);
  PairedTTest one = paired_t_test(std::vector<double>{2}, std::vector<double>{1});
  EXPECT_FALSE(one.defined);
  EXPECT_TRUE(std::isnan(one.p_value));
  EXPECT_THROW(paired_t_test(std::vector<double>{1, 2}, std::vector<double>{1}), Error);
  EXPECT_THROW(paired_t_test(std::vector<double>{1, NAN}, std::vector<double>{1, 2}), Error);
}

// ---- Rows: JSON round trip, JSONL loading, torn tails. ----

TEST(Results, JsonRoundTripKeepsEveryField) {
  ResultRow row = synthetic_seed_rows()[30];
  row.error = "x";
  row.calibration = {{"fingerprint", "f"}};
  row.top_p = 0.7;
  ResultRow back = row_from_json(nlohmann::json::parse(to_jsonl_line(row)), "test");
  EXPECT_EQ(to_json(back), to_json(row));
  EXPECT_TRUE(std::isnan(back.nll_mean));  // null in JSON, NaN in memory
  EXPECT_EQ(back.count_histogram, row.count_histogram);
}

TEST(Results, RowFromJsonNamesTheBadKey) {
  nlohmann::json j = to_json(synthetic_seed_rows()[0]);
  j["avg_experts_per_token"] = "eight";
  try {
    row_from_json(j, "results.jsonl line 3");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("avg_experts_per_token"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("line 3"), std::string::npos) << e.what();
  }
  j = to_json(synthetic_seed_rows()[0]);
  j["schema"] = "something-else/9";
  EXPECT_THROW(row_from_json(j, "x"), Error);
}

TEST(Results, LoadIgnoresTornTailAndKeepsLastRowPerKey) {
  fs::path dir = temp_dir("load");
  auto rows = synthetic_seed_rows();
  std::string text = to_jsonl_line(rows[0]) + "\n" + to_jsonl_line(rows[1]) + "\n";
  ResultRow replaced = rows[0];
  replaced.status = "error";
  replaced.error = "boom";
  text += to_jsonl_line(replaced) + "\n";
  size_t complete = text.size();
  std::string torn = to_jsonl_line(rows[2]);
  text += torn.substr(0, torn.size() / 2);
  write_file_atomic(dir / "results.jsonl", text);
  LoadedResults loaded = load_results(dir / "results.jsonl");
  EXPECT_TRUE(loaded.torn_tail);
  EXPECT_EQ(loaded.valid_bytes, complete);
  ASSERT_EQ(loaded.rows.size(), 2u);
  EXPECT_EQ(loaded.rows[0].key, rows[0].key);
  EXPECT_EQ(loaded.rows[0].status, "error");  // the later row for the key wins
  EXPECT_EQ(loaded.rows[1].key, rows[1].key);

  // A whole last line without its newline is still treated as torn (never trusted).
  write_file_atomic(dir / "results.jsonl", to_jsonl_line(rows[0]) + "\n" + to_jsonl_line(rows[1]));
  loaded = load_results(dir / "results.jsonl");
  EXPECT_TRUE(loaded.torn_tail);
  EXPECT_EQ(loaded.rows.size(), 1u);

  // Garbage in the middle is an error naming the line.
  write_file_atomic(dir / "results.jsonl",
                    to_jsonl_line(rows[0]) + "\n{oops\n" + to_jsonl_line(rows[1]) + "\n");
  try {
    load_results(dir / "results.jsonl");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(load_results(dir / "missing.jsonl").rows.empty());
  fs::remove_all(dir);
}

// ---- Analysis. ----

TEST(Box, HistogramQuantilesMatchValues) {
  std::vector<int64_t> histogram = {0, 3, 0, 5, 2};  // 1,1,1,3,3,3,3,3,4,4
  std::vector<double> values = {1, 1, 1, 3, 3, 3, 3, 3, 4, 4};
  BoxStats h = box_from_histogram(histogram), v = box_from_values(values);
  EXPECT_EQ(h.n, 10);
  EXPECT_DOUBLE_EQ(h.min, 1);
  EXPECT_DOUBLE_EQ(h.max, 4);
  EXPECT_DOUBLE_EQ(h.q1, v.q1);
  EXPECT_DOUBLE_EQ(h.median, v.median);
  EXPECT_DOUBLE_EQ(h.q3, v.q3);
  EXPECT_DOUBLE_EQ(h.mean, 2.6);
  EXPECT_DOUBLE_EQ(v.q1, 1.5);  // numpy: np.percentile(values, 25) == 1.5
  EXPECT_EQ(box_from_histogram({}).n, 0);
}

TEST(Analysis, SeedGridByConfigMaxKAndCategory) {
  auto rows = synthetic_seed_rows();
  Analysis a = analyze(rows);
  EXPECT_EQ(a.total_rows, 192);
  EXPECT_EQ(a.configs.size(), 16u);
  EXPECT_EQ(a.prompts.size(), 12u);
  EXPECT_EQ(a.categories.size(), 4u);
  EXPECT_EQ(a.baseline, "topk_8");
  EXPECT_EQ(a.num_layers, 4);
  const ConfigSummary& top8 = a.configs[0];
  EXPECT_EQ(top8.config_name, "topk_8");
  EXPECT_DOUBLE_EQ(top8.mean_experts, 8);
  EXPECT_DOUBLE_EQ(top8.reduction_pct, 0);
  EXPECT_DOUBLE_EQ(top8.pct_at_ceiling, 100);
  EXPECT_DOUBLE_EQ(top8.per_layer_mean_experts[0], 8.5);
  // bh_k16_a005: mean over prompts of 16 * 0.3 + 0.1 * (p % 3) = 4.8 + 0.1 = 4.9.
  const ConfigSummary* bh = nullptr;
  for (const auto& s : a.configs) {
    if (s.config_name == "bh_k16_a005") bh = &s;
  }
  ASSERT_NE(bh, nullptr);
  EXPECT_NEAR(bh->mean_experts, 4.9, 1e-3);
  EXPECT_NEAR(bh->reduction_pct, (8 - bh->mean_experts) / 8 * 100, 1e-9);
  EXPECT_GT(bh->sd_experts_across_prompts, 0);

  ASSERT_EQ(a.max_k.size(), 4u);
  EXPECT_EQ(a.max_k[1].max_k, 16);
  EXPECT_DOUBLE_EQ(a.max_k[1].baseline_experts, 16);
  double expected_bh16 = 0;
  for (double alpha : {0.01, 0.05, 0.10}) expected_bh16 += 16 * (0.2 + 2 * alpha) + 0.1;
  expected_bh16 /= 3;
  EXPECT_NEAR(a.max_k[1].bh_mean_experts, expected_bh16, 2e-3);
  EXPECT_NEAR(a.max_k[1].reduction_pct, (16 - a.max_k[1].bh_mean_experts) / 16 * 100, 1e-9);
  EXPECT_EQ(a.max_k_alpha.size(), 12u);

  // 15 configs × 3 metrics against topk_8.
  EXPECT_EQ(a.ttests.size(), 45u);
  for (const auto& t : a.ttests) {
    EXPECT_EQ(t.test.n, 12);
    if (t.config_name == "topk_16" && t.metric == "avg_experts_per_token") {
      EXPECT_TRUE(std::isinf(t.test.t));  // a constant +8 shift
    }
    if (t.config_name == "bh_k8_a001" && t.metric == "avg_experts_per_token") {
      EXPECT_LT(t.test.p_value, 1e-6);
      EXPECT_LT(t.test.cohens_d, 0);
    }
  }
  // Category "simple" = prompts 1..3 (p % 3 = 0, 1, 2).
  for (const auto& c : a.by_category) {
    if (c.category == "simple" && c.config_name == "bh_k16_a005") {
      EXPECT_NEAR(c.mean_experts, 4.9, 3e-3);
    }
  }
  EXPECT_EQ(a.by_category.size(), 64u);
}

TEST(Analysis, ErrorsAndMissingBaseline) {
  auto rows = synthetic_seed_rows();
  rows[5].status = "error";
  rows[5].error = "engine exploded";
  Analysis a = analyze(rows);
  EXPECT_EQ(a.error_rows, 1);
  EXPECT_EQ(a.configs[0].errors, 1);
  ASSERT_EQ(a.errors.size(), 1u);
  EXPECT_EQ(a.errors[0].second, "engine exploded");

  std::vector<ResultRow> no_base;
  for (auto& r : rows) {
    if (r.config_name != "topk_8") no_base.push_back(r);
  }
  Analysis b = analyze(no_base);
  EXPECT_EQ(b.baseline, "");
  EXPECT_TRUE(b.ttests.empty());
  EXPECT_TRUE(std::isnan(b.configs[0].reduction_pct));
}

TEST(Analysis, ParetoIsTokenWeighted) {
  Analysis a = analyze(synthetic_pareto_rows());
  ASSERT_EQ(a.pareto.size(), 7u);
  const ParetoPoint& p = a.pareto[0];
  EXPECT_EQ(p.config_name, "topk_1");
  EXPECT_EQ(p.tokens, 300);
  EXPECT_EQ(p.texts, 2);
  // nll = (100 (ln 30 + 0.1) + 200 (ln 30 − 0.05)) / 300 = ln 30.
  EXPECT_NEAR(p.perplexity, 30.0, 1e-9);
  EXPECT_DOUBLE_EQ(p.mean_experts, 1);
  EXPECT_TRUE(std::isnan(p.topk_perplexity_at_match));  // top-k is the reference itself
  EXPECT_TRUE(a.configs.empty());
  // Matched comparison: top-k's perplexity (30 / k) interpolated at the adaptive point's mean
  // experts.
  for (const ParetoPoint& q : a.pareto) {
    if (q.config_name == "topp_050") {
      EXPECT_NEAR(q.topk_perplexity_at_match, 30 + (15 - 30) * 0.7, 1e-9);
    }
    if (q.config_name == "bh_a005") {
      EXPECT_NEAR(q.topk_perplexity_at_match, 15 + (10 - 15) * 0.2, 1e-9);
    }
  }
}

TEST(Analysis, SummaryJsonParses) {
  auto rows = synthetic_seed_rows();
  auto pareto = synthetic_pareto_rows();
  rows.insert(rows.end(), pareto.begin(), pareto.end());
  std::string text = analysis_to_json(analyze(rows)).dump(2);
  nlohmann::json j = nlohmann::json::parse(text);
  EXPECT_EQ(j["counts"]["rows"], 206);
  EXPECT_EQ(j["configs"].size(), 16u);
  EXPECT_EQ(j["max_k_comparison"].size(), 4u);
  EXPECT_EQ(j["pareto"].size(), 7u);
  EXPECT_EQ(j["baseline"], "topk_8");
}

// ---- CSV. ----

// Minimal RFC 4180 reader for the test: records of fields.
std::vector<std::vector<std::string>> parse_csv(const std::string& text) {
  std::vector<std::vector<std::string>> records(1, std::vector<std::string>(1));
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        records.back().back() += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        records.back().back() += c;
      }
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      records.back().emplace_back();
    } else if (c == '\n') {
      records.emplace_back(1);
    } else {
      records.back().back() += c;
    }
  }
  if (records.back().size() == 1 && records.back()[0].empty()) records.pop_back();
  return records;
}

TEST(Csv, QuotingAndShape) {
  EXPECT_EQ(csv_field("plain"), "plain");
  EXPECT_EQ(csv_field("a,b"), "\"a,b\"");
  EXPECT_EQ(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
  EXPECT_EQ(csv_field("two\nlines"), "\"two\nlines\"");
  EXPECT_EQ(csv_number(NAN), "");
  EXPECT_EQ(csv_number(0.25), "0.25");

  auto rows = synthetic_seed_rows();
  auto records = parse_csv(results_csv(rows));
  ASSERT_EQ(records.size(), 193u);
  const auto& header = records[0];
  EXPECT_EQ(header, results_csv_columns());
  // The original's columns come first, in order.
  const char* original[] = {"config_name",
                            "config",
                            "prompt_text",
                            "prompt_category",
                            "prompt_description",
                            "generated_text",
                            "full_text",
                            "num_input_tokens",
                            "num_output_tokens",
                            "inference_time_sec",
                            "tokens_per_sec",
                            "avg_experts_per_token",
                            "std_experts_per_token",
                            "min_experts",
                            "max_experts",
                            "num_layers",
                            "timestamp",
                            "expert_utilization_cv",
                            "expert_utilization_max_min_ratio"};
  for (size_t i = 0; i < std::size(original); ++i) EXPECT_EQ(header[i], original[i]);
  for (const auto& record : records) EXPECT_EQ(record.size(), header.size());
  EXPECT_EQ(records[1][2], rows[0].prompt_text);  // commas, quotes and newline survive
  EXPECT_EQ(records[1][0], "topk_8");
  EXPECT_EQ(records[1][11], "8");

  auto mk = parse_csv(max_k_csv(analyze(rows)));
  ASSERT_EQ(mk.size(), 5u);
  EXPECT_EQ(mk[0], (std::vector<std::string>{"max_k", "baseline_experts", "bh_mean_experts",
                                             "reduction_pct"}));
  EXPECT_EQ(mk[1][0], "8");
  EXPECT_EQ(mk[1][1], "8");
}

// ---- Plots and report (needs gnuplot, as the product does). ----

bool is_png(const fs::path& path) {
  std::string data = read_file(path);
  return data.size() > 100 && data.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0;
}

TEST(Outputs, WritesEveryFileValidPlotsAndEveryReportSection) {
  fs::path dir = temp_dir("outputs");
  auto rows = synthetic_seed_rows();
  auto pareto = synthetic_pareto_rows();
  rows.insert(rows.end(), pareto.begin(), pareto.end());
  OutputSummary summary = write_outputs(dir, rows);
  for (const char* file :
       {"bh_routing_results.csv", "max_k_comparison.csv", "analysis_summary.json", "REPORT.md"}) {
    EXPECT_TRUE(fs::exists(dir / file)) << file;
  }
  EXPECT_TRUE(nlohmann::json::parse(read_file(dir / "analysis_summary.json")).is_object());
  std::vector<std::string> expected = {
      "max_k_comparison_bar",  "max_k_distribution_box", "max_k_alpha_heatmap",
      "max_k_saturation",      "avg_experts_comparison", "inference_time_comparison",
      "expert_utilization_cv", "experts_by_category",    "experts_vs_latency",
      "layer_heatmap",         "kl_to_native",           "pareto_perplexity"};
  ASSERT_EQ(summary.plots.size(), expected.size());
  std::string report = read_file(dir / "REPORT.md");
  for (size_t i = 0; i < expected.size(); ++i) {
    const PlotFile& plot = summary.plots[i];
    EXPECT_EQ(plot.name, expected[i]);
    EXPECT_TRUE(is_png(dir / "plots" / (plot.name + ".png"))) << plot.name;
    std::string svg = read_file(dir / "plots" / (plot.name + ".svg"));
    EXPECT_NE(svg.find("<svg"), std::string::npos) << plot.name;
    EXPECT_NE(svg.find(plot.title), std::string::npos)
        << plot.name << ": title '" << plot.title << "' not in SVG";
    EXPECT_TRUE(fs::exists(dir / "plots" / (plot.name + ".gp")));
    EXPECT_NE(report.find("](plots/" + plot.name + ".png)"), std::string::npos) << plot.name;
  }
  for (const char* section :
       {"# Benjamini–Hochberg expert routing: experiment report", "**Counts:**", "## Setup",
        "## Executive summary", "## Summary by config", "## Quality", "## Statistical tests",
        "## By prompt category", "## max_k analysis", "## Per-layer expert use", "## Plots",
        "## Conclusions", "## Appendix: configs", "this model is synthetic", "Commit", "Machine",
        "Settings", "Run time", "pareto"}) {
    EXPECT_NE(report.find(section), std::string::npos) << section;
  }
  fs::remove_all(dir);
}

TEST(Outputs, RelativeOutputFolderRendersEveryPlot) {
  // `bhmoe run --out out/seed` (what `make run` does) passes a folder relative to the working
  // directory; gnuplot runs inside the plots folder, so nothing may be named relative to ours.
  fs::path base = temp_dir("relative");
  fs::path previous = fs::current_path();
  fs::current_path(base);
  try {
    OutputSummary summary = write_outputs(fs::path("out") / "seed", synthetic_seed_rows());
    fs::current_path(previous);
    ASSERT_FALSE(summary.plots.empty());
    for (const PlotFile& plot : summary.plots) {
      EXPECT_TRUE(is_png(base / "out" / "seed" / "plots" / (plot.name + ".png"))) << plot.name;
    }
  } catch (...) {
    fs::current_path(previous);
    fs::remove_all(base);
    throw;
  }
  fs::remove_all(base);
}

TEST(Outputs, MissingGnuplotFailsClearlyAfterWritingTables) {
  fs::path dir = temp_dir("nognuplot");
  ::setenv("BHMOE_GNUPLOT", "/nonexistent/gnuplot", 1);
  try {
    write_outputs(dir, synthetic_seed_rows());
    ::unsetenv("BHMOE_GNUPLOT");
    FAIL() << "no error";
  } catch (const Error& e) {
    ::unsetenv("BHMOE_GNUPLOT");
    EXPECT_NE(std::string(e.what()).find("gnuplot"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::exists(dir / "bh_routing_results.csv"));
  EXPECT_TRUE(fs::exists(dir / "analysis_summary.json"));
  EXPECT_NE(read_file(dir / "REPORT.md").find("could not be made"), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace bhmoe::experiments
