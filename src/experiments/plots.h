// Plots through gnuplot: for each figure, a data file `<name>.dat` and a script `<name>.gp` are
// written to the plots folder, then `gnuplot <name>.gp` is run there and renders `<name>.png`
// (pngcairo) and `<name>.svg`. The scripts stay beside the figures so a person can restyle and
// re-run them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "experiments/analysis.h"

namespace bhmoe::experiments {

struct PlotFile {
  std::string name;   // file stem: "<name>.png", "<name>.svg", "<name>.gp", "<name>.dat"
  std::string title;  // the figure's title, as drawn
  std::string caption;
};

// The figures `analysis` has data for, in report order, with the script and data text of each.
struct PlotScript {
  PlotFile file;
  std::string script;  // without terminal/output lines
  std::string data;
};
std::vector<PlotScript> plot_scripts(const Analysis& analysis, const std::vector<ResultRow>& rows);

// The gnuplot executable: $BHMOE_GNUPLOT if set, else "gnuplot" from PATH. Throws bhmoe::Error
// saying how to install it when it cannot be run.
std::string find_gnuplot();

// Writes and renders every plot into `dir` (created if needed). Throws bhmoe::Error naming the plot
// and quoting gnuplot's messages when a rendering fails.
std::vector<PlotFile> render_plots(const Analysis& analysis, const std::vector<ResultRow>& rows,
                                   const std::filesystem::path& dir);

// Writes `plot` into `dir` (created if needed) and renders it with `gnuplot` at `size` pixels
// ("1000,650"). Throws bhmoe::Error naming the script and quoting gnuplot when rendering fails.
void render_plot(const PlotScript& plot, const std::filesystem::path& dir, const std::string& gnuplot,
                 const std::string& size);

// The picture of a routing trace: a heatmap of experts selected per token (x) and layer (y) above
// the per-token mean over layers with its range. counts is [num_tokens, num_layers]; token_labels
// (optional, one per token) label the x axis when there are at most 96 tokens.
PlotScript trace_counts_plot(const std::vector<int32_t>& counts, int64_t num_tokens,
                             int num_layers, int max_k, const std::string& router,
                             const std::vector<std::string>& token_labels, std::string name);

}  // namespace bhmoe::experiments
