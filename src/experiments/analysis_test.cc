// The analysis side on synthetic rows: statistics, t-tests, CSV, JSON, plots and the report.
#include <gtest/gtest.h>

#include <unistd.h>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include "experiments/analysis.h"
#include "experiments/bootstrap.h"
#include "experiments/csv.h"
#include "experiments/plots.h"
#include "experiments/report.h"
#include "experiments/results.h"
#include "experiments/schema.h"
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

TEST(MeanInterval, MatchesHandComputation) {
  // {1, 2, 3, 4, 6}: mean 3.2, sd sqrt(3.7), t(0.975, 4) = 2.7764451051977987 (scipy.stats.t.ppf);
  // 3.2 ∓ 2.7764451 · 1.9235384 / √5.
  MeanInterval i = mean_t_interval(std::vector<double>{1, 2, 3, 4, 6});
  EXPECT_EQ(i.n, 5);
  EXPECT_DOUBLE_EQ(i.mean, 3.2);
  EXPECT_NEAR(i.lo, 0.8116116119000156, 1e-10);
  EXPECT_NEAR(i.hi, 5.588388388099984, 1e-10);
  // n = 2: t(0.975, 1) = 12.706204736432095; non-finite values are left out.
  MeanInterval two = mean_t_interval(std::vector<double>{2, NAN, 4});
  EXPECT_EQ(two.n, 2);
  EXPECT_NEAR(two.lo, -9.706204736432094, 1e-9);
  // One value: a mean without an interval. Constant values (top-k's count): a zero-width one.
  MeanInterval one = mean_t_interval(std::vector<double>{5});
  EXPECT_DOUBLE_EQ(one.mean, 5);
  EXPECT_TRUE(std::isnan(one.lo) && std::isnan(one.hi));
  MeanInterval constant = mean_t_interval(std::vector<double>{8, 8, 8});
  EXPECT_DOUBLE_EQ(constant.lo, 8);
  EXPECT_DOUBLE_EQ(constant.hi, 8);
  EXPECT_EQ(mean_t_interval(std::vector<double>{}).n, 0);
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

  // 15 configs × 3 metrics against topk_8, less the expert counts of topk_16/32/64 (k by
  // construction: nothing to test).
  EXPECT_EQ(a.ttests.size(), 42u);
  for (const auto& t : a.ttests) {
    EXPECT_FALSE(t.metric == "avg_experts_per_token" && t.config_name.rfind("topk_", 0) == 0)
        << t.config_name;
  }
  // Reductions are stated against native top-8 (the baseline), beside the original's column
  // against top-k at k = max_k.
  const MaxKRow& k64 = a.max_k[3];
  EXPECT_EQ(k64.max_k, 64);
  EXPECT_DOUBLE_EQ(k64.native_experts, 8);
  EXPECT_NEAR(k64.reduction_vs_native_pct, (8 - k64.bh_mean_experts) / 8 * 100, 1e-9);
  EXPECT_NEAR(k64.reduction_pct, (64 - k64.bh_mean_experts) / 64 * 100, 1e-9);
  EXPECT_EQ(k64.bh_ci.n, 12);  // prompts, each the mean over the three alphas
  EXPECT_LT(k64.bh_ci.lo, k64.bh_mean_experts);
  EXPECT_GT(k64.bh_ci.hi, k64.bh_mean_experts);
  int64_t decisions = 0;
  for (int64_t n : k64.bh_histogram) decisions += n;
  EXPECT_EQ(decisions, k64.bh_box.n);
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

// Holm over the configs of one metric, against values computed by hand from closed-form p-values.
TEST(Analysis, TTestsAreHolmAdjustedPerMetric) {
  // Baseline prompt NLL 0 on three prompts; configs a, b, c differ by {1, 2, 4}, {1, 2, 3} and
  // {2, 3, 4}. df = 2: p = 1 − t / sqrt(2 + t²): 0.11808289631180306, 0.07417990022744853,
  // 0.03509871864598465 (scipy.stats.ttest_1samp agrees). Holm: sorted c, b, a times 3, 2, 1 =
  // 0.10529615593795395, 0.14835980045489706, 0.11808289631180306 -> running max.
  std::vector<ResultRow> rows;
  const std::vector<std::pair<std::string, std::vector<double>>> configs = {
      {"topk_8", {0, 0, 0}}, {"a", {1, 2, 4}}, {"b", {1, 2, 3}}, {"c", {2, 3, 4}}};
  int64_t index = 0;
  for (const auto& [name, nll] : configs) {
    for (int p = 0; p < 3; ++p) {
      ResultRow r;
      r.experiment = "e";
      r.index = index++;
      r.config_name = name;
      r.rule = name == "topk_8" ? "topk" : "bh";
      r.max_k = r.max_k_requested = 8;
      r.prompt_id = "p" + std::to_string(p);
      r.key = "e/" + name + "/" + r.prompt_id;
      r.prompt_nll = nll[p];
      r.avg_experts_per_token = name == "topk_8" ? 8 : 2 + p + nll[p];
      rows.push_back(r);
    }
  }
  Analysis a = analyze(rows);
  std::map<std::string, const TTestResult*> nll;
  for (const TTestResult& t : a.ttests) {
    if (t.metric == "prompt_nll") nll[t.config_name] = &t;
  }
  ASSERT_EQ(nll.size(), 3u);
  EXPECT_NEAR(nll["a"]->test.p_value, 0.11808289631180306, 1e-12);
  EXPECT_NEAR(nll["c"]->p_holm, 0.10529615593795395, 1e-12);
  EXPECT_NEAR(nll["b"]->p_holm, 0.14835980045489706, 1e-12);
  EXPECT_NEAR(nll["a"]->p_holm, 0.14835980045489706, 1e-12);
  // The expert-count family is adjusted on its own (three tests of its own).
  int counts = 0;
  for (const TTestResult& t : a.ttests) {
    if (t.metric != "avg_experts_per_token") continue;
    ++counts;
    EXPECT_GE(t.p_holm, t.test.p_value);
  }
  EXPECT_EQ(counts, 3);
  // The report shows the adjusted column and counts significance with it.
  ReportContext context;
  std::string md = report_markdown(a, rows, context);
  EXPECT_NE(md.find("| p (Holm) |"), std::string::npos);
  EXPECT_NE(md.find("0.1484"), std::string::npos) << md;
  EXPECT_NE(md.find("Holm-adjusted p < 0.05"), std::string::npos);
  EXPECT_EQ(md.find("uncorrected"), std::string::npos);
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
  // The original's four columns first, then the interval and the reduction against native top-8.
  EXPECT_EQ(mk[0], (std::vector<std::string>{"max_k", "baseline_experts", "bh_mean_experts",
                                             "reduction_pct", "bh_mean_experts_lo",
                                             "bh_mean_experts_hi", "native_experts",
                                             "reduction_vs_native_pct"}));
  for (const auto& record : mk) EXPECT_EQ(record.size(), mk[0].size());
  EXPECT_EQ(mk[1][0], "8");
  EXPECT_EQ(mk[1][1], "8");
  EXPECT_EQ(mk[1][6], "8");  // native topk_8
}

// The schema (`bhmoe report --schema`) lists exactly the columns the files hold, both ways.
TEST(Schema, ListsEveryColumnWrittenAndNothingElse) {
  ResultRow row = synthetic_seed_rows()[30];
  std::set<std::string> written, listed;
  const nlohmann::json object = to_json(row);
  for (const auto& [key, value] : object.items()) written.insert(key);
  for (const std::string& c : schema_columns(kResultsJsonl)) listed.insert(c);
  EXPECT_EQ(written, listed);
  EXPECT_EQ(listed.size(), schema_columns(kResultsJsonl).size()) << "a name listed twice";
  // The row CSV in its writer's order; the other CSVs take their headers from the schema, and
  // every data line has as many fields.
  EXPECT_EQ(results_csv_columns(), schema_columns(kResultsCsv));
  auto rows = synthetic_seed_rows();
  auto pareto = synthetic_pareto_rows();
  for (ResultRow& r : pareto) {
    r.window_tokens = {r.num_scored_tokens / 2 + 1, r.num_scored_tokens / 2};
    r.window_nll_sum = {r.nll_mean * r.window_tokens[0], r.nll_mean * (r.window_tokens[1] - 1)};
    r.window_experts = {100, 100};
  }
  rows.insert(rows.end(), pareto.begin(), pareto.end());
  Analysis a = analyze(rows);
  ASSERT_FALSE(a.matched.empty());
  for (const auto& [text, file] : {std::pair{max_k_csv(a), kMaxKCsv},
                                   std::pair{matched_compute_csv(a), kMatchedCsv}}) {
    auto records = parse_csv(text);
    ASSERT_GT(records.size(), 1u);
    EXPECT_EQ(records[0], schema_columns(file));
    for (const auto& record : records) EXPECT_EQ(record.size(), records[0].size());
  }
  // One spelling: American "utilization", never "utilisation".
  const std::string text = schema_text();
  EXPECT_EQ(text.find("utilisation"), std::string::npos);
  EXPECT_NE(text.find("| expert_utilization_cv | number or null/empty |"), std::string::npos);
  for (const ColumnDoc& c : output_schema()) {
    EXPECT_TRUE(*c.type && *c.unit && *c.meaning) << c.name;
  }
  EXPECT_NE(text.find("## matched_compute.csv"), std::string::npos);
  EXPECT_NE(text.find("| nll_mean | number or null/empty | nats per predicted token |"),
            std::string::npos);
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
      "max_k_comparison_bar",  "max_k_count_distribution", "max_k_alpha_heatmap",
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

// ---- What the report and the plots say (issue 11: as found wrong when tried). ----

const PlotScript& find_plot(const std::vector<PlotScript>& plots, const std::string& name) {
  for (const PlotScript& p : plots) {
    if (p.file.name == name) return p;
  }
  throw std::runtime_error("no plot " + name);
}

TEST(Report, MaxKSectionNamesWhatIsMissingAndNeverDeniesBH) {
  // A pareto-style run: BH scored text, no generation rows.
  auto rows = synthetic_pareto_rows();
  std::string md = report_markdown(analyze(rows), rows, ReportContext{});
  EXPECT_EQ(md.find("No BH configs"), std::string::npos) << md;
  EXPECT_NE(md.find("No max_k comparison: it needs generation (`generate`) rows of BH configs"),
            std::string::npos);
  EXPECT_NE(md.find("BH did run here, on held-out text (1 config: `bh_a005`)"), std::string::npos)
      << md;
  // Without any BH the sentence only says what is missing.
  std::vector<ResultRow> no_bh;
  for (const ResultRow& r : rows) {
    if (r.rule != "bh") no_bh.push_back(r);
  }
  md = report_markdown(analyze(no_bh), no_bh, ReportContext{});
  EXPECT_EQ(md.find("BH did run"), std::string::npos);
  // The seed grid: reductions against native top-8, with intervals.
  auto seed = synthetic_seed_rows();
  md = report_markdown(analyze(seed), seed, ReportContext{});
  EXPECT_NE(md.find("reduction vs native"), std::string::npos);
  EXPECT_NE(md.find("experts per token against native `topk_8`'s 8.00"), std::string::npos) << md;
}

TEST(Report, ScoringProtocolIsTheOneTheRowsRecord) {
  auto rows = synthetic_pareto_rows();
  for (ResultRow& r : rows) {
    r.settings = {{"scoring_window", 256}, {"scoring_window_requested", 512},
                  {"scoring_max_tokens", 8192}};
    r.protocol = "split into non-overlapping windows of 256 tokens";
  }
  std::string md = report_markdown(analyze(rows), rows, ReportContext{});
  EXPECT_NE(md.find("Protocol (as recorded in the rows): split into non-overlapping windows of 256 "
                    "tokens."),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("256-token windows (512 requested, cut to the model's context), at most 8192 "
                    "tokens per text"),
            std::string::npos)
      << md;
  // The same from the bootstrap's section (rows with per-window data).
  for (ResultRow& r : rows) {
    r.window_tokens = {r.num_scored_tokens / 2 + 1, r.num_scored_tokens / 2};
    r.window_nll_sum = {r.nll_mean * r.window_tokens[0], r.nll_mean * (r.window_tokens[1] - 1)};
    r.window_experts = {100, 100};
  }
  Analysis a = analyze(rows);
  ASSERT_FALSE(a.matched.empty());
  md = report_markdown(a, rows, ReportContext{});
  EXPECT_NE(md.find("256-token windows (512 requested"), std::string::npos) << md;
}

TEST(Plots, DistributionsIntervalsScalesAndCaptionsSayWhatTheyShow) {
  auto rows = synthetic_seed_rows();
  Analysis a = analyze(rows);
  std::vector<PlotScript> plots = plot_scripts(a, rows);
  // Every plot of a mean over prompts draws its interval.
  for (const char* name : {"max_k_comparison_bar", "max_k_saturation", "avg_experts_comparison",
                           "inference_time_comparison", "expert_utilization_cv",
                           "experts_by_category", "experts_vs_latency", "kl_to_native"}) {
    const PlotScript& p = find_plot(plots, name);
    EXPECT_TRUE(p.script.find("errorbars") != std::string::npos ||
                p.script.find("errorlines") != std::string::npos)
        << name;
    EXPECT_NE(p.file.caption.find("95%"), std::string::npos) << name;
  }
  // The count distribution: per max_k, the shares of its decisions sum to 100%.
  const PlotScript& dist = find_plot(plots, "max_k_count_distribution");
  EXPECT_NE(dist.script.find("set logscale y"), std::string::npos);
  std::vector<double> sums;
  double sum = 0;
  std::istringstream lines(dist.data);
  int blank = 0;
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) {
      if (++blank == 2) {
        sums.push_back(sum);
        sum = 0;
        blank = 0;
      }
      continue;
    }
    sum += std::stod(line.substr(line.find('\t') + 1));
  }
  ASSERT_EQ(sums.size(), 4u);
  for (double v : sums) EXPECT_NEAR(v, 100.0, 1e-9);
  // Saturation: BH on its own scale, the log2 axis labelled.
  const PlotScript& sat = find_plot(plots, "max_k_saturation");
  EXPECT_NE(sat.script.find("set xlabel \"max_k (log2 scale)\""), std::string::npos);
  EXPECT_EQ(sat.script.find("top-k"), std::string::npos) << sat.script;
  EXPECT_NE(sat.script.find("set xtics (\"8\" 8, \"16\" 16, \"32\" 32, \"64\" 64)"),
            std::string::npos);
  // The layer heatmap's colour scale spans the adaptive configs only (BH here peaks at
  // 64 · 0.4 + 0.2 + 0.5 = 26.3 in layer 0), not topk_64's 64; its labels are 10 pt.
  const PlotScript& heat = find_plot(plots, "layer_heatmap");
  const size_t cb = heat.script.find("set cbrange [");
  ASSERT_NE(cb, std::string::npos);
  const double hi = std::stod(heat.script.substr(heat.script.find(':', cb) + 1));
  EXPECT_LT(hi, 27);
  EXPECT_GT(hi, 26);
  EXPECT_NE(heat.script.find("font \",10\""), std::string::npos);
  EXPECT_EQ(heat.script.find("font \",7\""), std::string::npos);
  // Bars spanning topk_64 and BH's few experts get a log2 axis (the small bars stay readable);
  // bars within a factor of 10 keep a linear one.
  for (const char* name : {"avg_experts_comparison", "max_k_comparison_bar"}) {
    const PlotScript& bars = find_plot(plots, name);
    EXPECT_NE(bars.script.find("set logscale y 2"), std::string::npos) << name;
    EXPECT_NE(bars.file.caption.find("Log2 y axis"), std::string::npos) << name;
  }
  EXPECT_EQ(find_plot(plots, "expert_utilization_cv").script.find("logscale"), std::string::npos);
  // Fixed configs are left out of the per-category distribution, and the caption says so.
  const PlotScript& cat = find_plot(plots, "experts_by_category");
  EXPECT_EQ(cat.script.find("\"topk_64\""), std::string::npos);
  EXPECT_NE(cat.file.caption.find("topk_8, topk_16, topk_32, topk_64"), std::string::npos);
  // Timing captions say whether the first config ran cold.
  EXPECT_NE(find_plot(plots, "inference_time_comparison").file.caption.find("without a warm-up"),
            std::string::npos);
  for (ResultRow& r : rows) r.run["warmup_tokens"] = 7;
  a = analyze(rows);
  plots = plot_scripts(a, rows);
  for (const char* name : {"inference_time_comparison", "experts_vs_latency"}) {
    EXPECT_NE(find_plot(plots, name).file.caption.find("untimed warm-up forward pass"),
              std::string::npos)
        << name;
  }
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
