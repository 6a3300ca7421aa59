// bhmoe calibrate: run native routing over a text, collect every layer's raw router logits through
// the engine's observer, and fit the per-layer null CDF (bh-calibration-grid/1) that bh and hc
// routing use, with the per-layer router entropy quantiles that entropy routing uses.
#include <cstdio>
#include <iostream>
#include <map>

#include "cli/command.h"
#include "cli/engine_common.h"
#include "util/file.h"

namespace bhmoe::cli {
namespace {

struct CalibrateOptions {
  EngineOptions engine;
  std::string text_file;
  std::string out;
  std::string method = "ecdf";
  int64_t max_tokens = 4096;
  int max_length = 512;
  int grid_points = 10000;
};

CommandRegistration reg{
    "calibrate", "Fit a per-layer router-logit calibration (for bh routing) from a text",
    [](CLI::App& app) {
      auto o = std::make_shared<CalibrateOptions>();
      add_engine_options(app, o->engine, /*with_router=*/false);
      app.add_option("--text-file", o->text_file, "UTF-8 text to run through the model")
          ->required();
      app.add_option("--out", o->out, "Output calibration JSON")->required();
      app.add_option("--method", o->method, "ecdf or kde (Gaussian KDE, Scott bandwidth)")
          ->check(CLI::IsMember({"ecdf", "kde"}));
      app.add_option("--max-tokens", o->max_tokens, "Use at most this many tokens of the text")
          ->check(CLI::PositiveNumber);
      app.add_option("--max-length", o->max_length, "Window length in tokens (fresh context each)")
          ->check(CLI::PositiveNumber);
      app.add_option("--grid-points", o->grid_points, "CDF grid points per layer")
          ->check(CLI::Range(2, 10000000));
      return [o]() {
        const routing::FitMethod method = routing::parse_fit_method(o->method);
        const std::string text = read_file(o->text_file);
        Engine engine = open_engine(o->engine);
        const model::ModelConfig& config = engine.model->config();
        std::vector<int32_t> ids = engine.model->tokenizer().encode(text);
        if (ids.empty()) fail("--text-file ", o->text_file, ": the text encodes to no tokens");
        if (static_cast<int64_t>(ids.size()) > o->max_tokens)
          ids.resize(static_cast<size_t>(o->max_tokens));
        // A window longer than the text is the text: the KV cache is never sized beyond it.
        const int64_t window = std::min<int64_t>(o->max_length, static_cast<int64_t>(ids.size()));
        model::Session session(engine.model, nullptr, engine.pool.get(), window);
        const std::map<int, std::vector<float>> samples =
            model::collect_router_logits(session, ids, window);
        routing::Calibration calibration =
            routing::fit_calibration(samples, method, o->grid_points, config.num_experts);
        calibration.model = config.model_type + " " + engine.model->dir().filename().string();
        calibration.description = cat(
            routing::fit_method_name(method), " fit of raw router logits (",
            config.native_router_spec(), " routing) over ", ids.size(), " tokens of ", o->text_file,
            " in windows of ", o->max_length, " tokens; ", ids.size() * config.num_experts,
            " samples per layer; with router entropy quantiles over the tokens");
        calibration.save(o->out);
        std::printf("wrote %s: %d layers, %s fit, %zu tokens, %zu logits per layer\n",
                    o->out.c_str(), calibration.num_layers(), routing::fit_method_name(method),
                    ids.size(), ids.size() * static_cast<size_t>(config.num_experts));
        return 0;
      };
    }};

}  // namespace
}  // namespace bhmoe::cli
