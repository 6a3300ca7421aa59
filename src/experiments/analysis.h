// Analysis of result rows: by config, by prompt category, by max_k (with reduction_pct), paired
// t-tests against the topk_8 baseline over prompts (Holm-adjusted per metric), per-layer means, and
// the perplexity-vs-experts points of text-scoring experiments. Every mean over prompts carries its
// 95% Student-t interval across prompts (MeanInterval, significance.h), which the plots draw. Pure computation over rows (no files), so `bhmoe report`
// rebuilds everything from results.jsonl alone.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "experiments/bootstrap.h"
#include "experiments/results.h"
#include "experiments/significance.h"

namespace bhmoe::experiments {

// The baseline config of the t-tests and the reduction percentages: OLMoE's native routing (top-8).
inline constexpr const char* kBaselineConfig = "topk_8";

// Quantiles of a pooled count histogram, for box plots.
struct BoxStats {
  int64_t n = 0;
  double min = kNaN, q1 = kNaN, median = kNaN, q3 = kNaN, max = kNaN, mean = kNaN;
};
// histogram[c] = number of observations equal to c. Quantiles by linear interpolation between
// order statistics (numpy's default, "type 7").
BoxStats box_from_histogram(const std::vector<int64_t>& histogram);
BoxStats box_from_values(std::vector<double> values);

// One config over its rows: the config as its rows recorded it (the RouterConfig base), then the
// aggregates.
struct ConfigSummary : RouterConfig {
  int rows = 0, errors = 0;
  // Over the config's ok generate rows (one value per prompt): mean and sample sd across prompts.
  double mean_experts = kNaN, sd_experts_across_prompts = kNaN;
  double mean_within_sd = kNaN;  // mean of the rows' per-token sd
  double min_experts = kNaN, max_experts = kNaN;
  double pct_at_ceiling = kNaN, pct_at_floor = kNaN;  // weighted by routing events
  double weight_entropy = kNaN;
  double mean_inference_time = kNaN, mean_tokens_per_sec = kNaN;
  double mean_prefill_time = kNaN, mean_decode_time = kNaN;
  double utilization_cv = kNaN, utilization_max_min_ratio = kNaN;
  double prompt_nll = kNaN, kl_to_native = kNaN, continuation_nll_native = kNaN;
  double reduction_pct = kNaN;  // (baseline − mean) / baseline × 100, vs topk_8
  // 95% t-intervals across the config's prompts (one value per ok row) of the means above.
  MeanInterval experts_ci, inference_time_ci, prefill_time_ci, kl_to_native_ci, utilization_cv_ci;
  std::vector<double> per_layer_mean_experts;
  std::vector<MeanInterval> per_layer_ci;  // [layer], across prompts
  std::vector<int64_t> count_histogram;  // pooled over rows
  BoxStats box;
};

struct CategorySummary {
  std::string category, config_name;
  int rows = 0;
  double mean_experts = kNaN, sd_experts = kNaN;
  double prompt_nll = kNaN, kl_to_native = kNaN;
  MeanInterval experts_ci;  // 95% t-interval across the category's prompts
  BoxStats box;             // over every routing decision of the category's rows
};

// One line of max_k_comparison.csv: `baseline_experts` is the measured mean of topk_<max_k>,
// `bh_mean_experts` the mean over every BH config with that max_k (all alphas). `reduction_pct` is
// the original study's column, against top-k at k = max_k (the ceiling BH may reach, not what the
// model runs natively); `reduction_vs_native_pct` is against native top-8 (kBaselineConfig), the
// reduction the report states.
struct MaxKRow {
  int max_k = 0;
  double baseline_experts = kNaN, bh_mean_experts = kNaN, reduction_pct = kNaN;
  double native_experts = kNaN, reduction_vs_native_pct = kNaN;
  // 95% t-interval across prompts of each prompt's BH mean (the mean over the alphas' rows of the
  // prompt), so prompts, not alphas, are the sampling unit.
  MeanInterval bh_ci;
  BoxStats bh_box;                     // BH experts per routing decision, pooled over alphas and prompts
  std::vector<int64_t> bh_histogram;   // [c] = BH routing decisions that selected c experts, pooled
};

struct MaxKAlphaCell {
  int max_k = 0;
  double alpha = kNaN;
  std::string config_name;
  double mean_experts = kNaN;
  MeanInterval ci;  // across prompts
};

// A paired t-test of one config against the baseline over prompts. Expert counts are not tested
// for configs whose count is fixed by construction (RouterConfig::fixed_count: top-k's count is k
// on every prompt, so the "test" would only restate k − 8). p_holm: Holm's step-down adjustment of
// p over the configs tested on the same metric (one family per metric); NaN when p is undefined.
struct TTestResult {
  std::string config_name, metric;  // metric: a row field, e.g. "avg_experts_per_token"
  double mean_config = kNaN, mean_baseline = kNaN;
  PairedTTest test;
  double p_holm = kNaN;
};

// Perplexity against mean experts for one config over the text-scoring rows (token-weighted).
struct ParetoPoint {
  std::string config_name, router, rule;
  double mean_experts = kNaN, perplexity = kNaN, nll_mean = kNaN;
  int64_t tokens = 0;
  int texts = 0;
  // Top-k's perplexity at this point's mean experts, interpolated linearly between the two top-k
  // configs around it (NaN outside top-k's range or for top-k itself): the matched comparison.
  double topk_perplexity_at_match = kNaN;
};

struct Analysis {
  int total_rows = 0, ok_rows = 0, error_rows = 0;
  int generate_rows = 0, score_rows = 0;
  std::vector<std::string> experiments;
  std::vector<std::string> prompts;  // prompt ids with at least one row, in grid order
  std::vector<std::string> categories;
  std::vector<ConfigSummary> configs;  // generate rows, in grid order of first appearance
  std::vector<CategorySummary> by_category;
  std::vector<MaxKRow> max_k;
  std::vector<MaxKAlphaCell> max_k_alpha;
  std::vector<TTestResult> ttests;
  std::string baseline;  // "" when no topk_8 rows
  std::vector<ParetoPoint> pareto;
  // Matched-compute comparisons with bootstrap intervals (experiments/bootstrap.h): scope "all"
  // first, then one scope per text (domain).
  std::vector<MatchedPoint> matched;
  std::vector<ConfigSummary> score_configs;  // text-scoring rows by config
  int num_layers = 0;
  // Distinct provenance objects seen in the rows (normally one each).
  std::vector<nlohmann::json> models, calibrations, settings, runs;
  std::vector<std::string> clamped_configs;
  std::vector<std::pair<std::string, std::string>> errors;  // key, message
  std::string first_timestamp, last_timestamp;
  double total_wall_time_sec = 0;
};

Analysis analyze(const std::vector<ResultRow>& rows);

// One sentence on whether the timings are warm, from the rows' run objects (runner.cc records
// run.warmup_tokens, the tokens of its untimed warm-up forward pass, 0 or absent when none ran):
// every run process warmed up; none did, so the first config each process timed ran cold; or some.
// "" without run objects.
std::string warmup_note(const Analysis& analysis);

// analysis_summary.json (NaN/inf as null).
nlohmann::json analysis_to_json(const Analysis& analysis);

}  // namespace bhmoe::experiments
