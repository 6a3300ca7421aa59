// Matched-compute comparisons with bootstrap confidence intervals: the question bhmoe exists to
// answer — does an adaptive rule buy quality per expert compared with fixed top-k?
//
// Every config scores the same texts in the same windows (score_text rows carry per-window sums),
// so one bootstrap replicate resamples windows with replacement within each text (stratified by
// text, i.e. by domain; never by token) and recomputes every config's mean experts and NLL on the
// same draw. The top-k curve of that replicate (NLL against mean experts, linear between adjacent
// k) is read at the config's mean experts; the matched-compute difference is
//   delta_nll = NLL_topk(at the config's mean experts) − NLL_config   (nats per token)
// so delta > 0 means the rule is better than top-k at equal compute. Intervals are percentile
// intervals (2.5%, 97.5%) over the replicates; p-values are two-sided bootstrap p-values of
// delta = 0, Holm-adjusted over the configs compared within one scope (all texts, or one text).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "experiments/results.h"

namespace bhmoe::experiments {

struct Interval {
  double estimate = kNaN, lo = kNaN, hi = kNaN;
};

struct MatchedPoint {
  std::string scope;  // "all" (every text pooled) or a text's name (a domain)
  std::string config_name, router, rule;
  int64_t tokens = 0;  // scored tokens in scope
  int windows = 0;
  Interval mean_experts;  // per token and layer
  Interval nll;           // token-weighted mean NLL, nats per token
  Interval topk_nll_at_match;
  Interval delta_nll;  // topk_nll_at_match − nll; NaN for top-k itself or outside top-k's range
  double p_value = kNaN, p_holm = kNaN;
};

// "better" or "worse" than top-k when the Holm-adjusted p is below 0.05 (by the sign of the
// difference), "no difference" otherwise, "–" without a matched difference.
const char* matched_verdict(const MatchedPoint& point);

struct BootstrapOptions {
  // Enough that a Holm-adjusted p can fall below 0.05 over ~50 configs: the smallest bootstrap p
  // is 2 / (replicates + 1).
  int replicates = 5000;
  uint64_t seed = 20240229;
  double level = 0.95;
};

// Points for the score_text rows of `rows` (others are ignored), scope "all" first and then each
// text in name order, configs in order of first appearance. A config that lacks a text, or whose
// windows differ from the other configs' on it, is left out of that text's scope and of "all".
std::vector<MatchedPoint> matched_compute(const std::vector<const ResultRow*>& rows,
                                          const BootstrapOptions& options = {});
std::vector<MatchedPoint> matched_compute(const std::vector<ResultRow>& rows,
                                          const BootstrapOptions& options = {});

// Holm's step-down adjustment of p-values (NaN entries are skipped and stay NaN).
std::vector<double> holm_adjust(std::span<const double> p);

// Linear interpolation of y at x on a curve sorted by x; NaN outside [x.front(), x.back()].
double interpolate(std::span<const double> xs, std::span<const double> ys, double x);

// Type-7 quantile (numpy's default) of values (sorted in place); NaN when empty.
double quantile(std::vector<double>& values, double q);

}  // namespace bhmoe::experiments
