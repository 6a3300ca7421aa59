// REPORT.md and the whole output set built from result rows: bh_routing_results.csv,
// max_k_comparison.csv, analysis_summary.json, plots/ (gnuplot) and REPORT.md. Everything here is
// derived from results.jsonl alone, so `bhmoe report` and `bhmoe merge` rebuild it at any time.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "experiments/analysis.h"
#include "experiments/plots.h"
#include "experiments/results.h"

namespace bhmoe::experiments {

struct ReportContext {
  std::string generated_at;  // ISO 8601 UTC; the report's date
  std::vector<PlotFile> plots;
  std::string plot_error;  // set when the plots could not be rendered
};

// REPORT.md text.
std::string report_markdown(const Analysis& analysis, const std::vector<ResultRow>& rows,
                            const ReportContext& context);

struct OutputSummary {
  Analysis analysis;
  std::vector<PlotFile> plots;
};

// Writes every output into `out_dir` from `rows` (deduplicated by key, in grid order). The plots
// need gnuplot: when it is missing or fails, the CSV/JSON files and a REPORT.md saying so are still
// written, then bhmoe::Error is thrown.
OutputSummary write_outputs(const std::filesystem::path& out_dir, std::vector<ResultRow> rows);

// Current UTC time as ISO 8601 ("2026-11-26T04:30:00Z").
std::string utc_now();

}  // namespace bhmoe::experiments
