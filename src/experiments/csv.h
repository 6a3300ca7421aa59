// CSV outputs (RFC 4180 quoting: a field holding a comma, quote, CR or LF is quoted, quotes
// doubled).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "experiments/analysis.h"
#include "experiments/results.h"

namespace bhmoe::experiments {

std::string csv_field(std::string_view text);
// Shortest round-trip decimal; empty for NaN/inf (undefined).
std::string csv_number(double value);

// The columns of bh_routing_results.csv: the original's (SPEC.md §3) first, then ours.
const std::vector<std::string>& results_csv_columns();

// bh_routing_results.csv: a header and one row per result row, in the given order.
std::string results_csv(const std::vector<ResultRow>& rows);

// max_k_comparison.csv: the original's max_k,baseline_experts,bh_mean_experts,reduction_pct, then
// BH's 95% t-interval and the reduction against native top-8 (columns: schema.h).
std::string max_k_csv(const Analysis& analysis);

// matched_compute.csv: one row per scope and config (experiments/bootstrap.h), flat columns with
// the 95% interval ends beside each estimate; delta_nll > 0 means better than top-k.
std::string matched_compute_csv(const Analysis& analysis);

}  // namespace bhmoe::experiments
