// bhmoe plot-trace: the expert count of every token in every layer of a trace (bhmoe trace), as a
// heatmap over the per-token mean, rendered by gnuplot to PNG and SVG with its script and data.
#include <algorithm>
#include <iostream>
#include <span>

#include "cli/command.h"
#include "experiments/plots.h"
#include "model/engine.h"
#include "model/trace_file.h"
#include "util/error.h"

namespace bhmoe::cli {
namespace {

struct PlotTraceOptions {
  std::string trace;
  std::string out;
  std::string model;
};

CommandRegistration reg{
    "plot-trace",
    "Plot experts per token and layer from a trace (.npz of bhmoe trace) to PNG + SVG",
    [](CLI::App& app) {
      auto o = std::make_shared<PlotTraceOptions>();
      app.add_option("--trace", o->trace, "Trace .npz (bhmoe trace)")->required();
      app.add_option("--out", o->out,
                     "Output PNG; the SVG, gnuplot script (.gp) and data (.dat) go beside it")
          ->required();
      app.add_option("--model", o->model,
                     "Checkpoint whose tokenizer labels the tokens (traces of <= 96 tokens)");
      return [o]() {
        const std::filesystem::path out(o->out);
        if (out.extension() != ".png") fail("--out ", o->out, ": give a .png path");
        const model::TraceFile file = model::read_trace(o->trace);
        const model::Trace& t = file.trace;
        std::vector<std::string> labels;
        if (!o->model.empty()) {
          auto m = model::Model::load(o->model);
          for (int32_t id : t.tokens) {
            if (id < 0 || id >= m->tokenizer().vocab_size()) {
              fail("--trace ", o->trace, ": token id ", id, " is outside the vocabulary of --model ",
                   o->model);
            }
            labels.push_back(m->tokenizer().decode(std::span<const int32_t>(&id, 1)));
          }
        }
        const std::string router = file.router_spec.empty() ? "(router not recorded)" : file.router_spec;
        const experiments::PlotScript plot = experiments::trace_counts_plot(
            t.counts, t.num_tokens, t.num_layers, t.max_k, router, labels, out.stem().string());
        const std::filesystem::path dir = out.has_parent_path() ? out.parent_path() : ".";
        const int64_t width = std::clamp<int64_t>(400 + 12 * t.num_tokens, 1000, 2400);
        experiments::render_plot(plot, dir, experiments::find_gnuplot(),
                                 std::to_string(width) + ",800");
        std::cerr << "wrote " << o->out << " and " << (dir / (out.stem().string() + ".svg")).string()
                  << ": " << t.num_tokens << " tokens x " << t.num_layers << " layers\n";
        return 0;
      };
    }};

}  // namespace
}  // namespace bhmoe::cli
