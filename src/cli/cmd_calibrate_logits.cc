// bhmoe calibrate-logits: fit a per-layer calibration (bh-calibration-grid/1) from router-logit
// dumps.
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cli/command.h"
#include "routing/calibration.h"
#include "routing/router.h"
#include "util/error.h"
#include "cli/router_logits_file.h"
#include "util/npy.h"

namespace bhmoe::cli {
namespace {

using namespace routing;

struct CalibrateOptions {
  std::vector<std::string> logits;
  std::vector<int> layers;
  std::string method = "kde";
  std::string out;
  int grid_points = 10000;
  std::string model;
  std::string description;
};

int run(const CalibrateOptions& o) {
  const FitMethod method = parse_fit_method(o.method);
  if (o.grid_points < 2) fail("--grid-points ", o.grid_points, " must be >= 2");
  for (int layer : o.layers) {
    if (layer < 0) fail("--layer ", layer, " must be >= 0");
  }
  std::map<int, std::vector<float>> samples;
  // N, the row width, when every file gives it ([T, N], [layers, T, N] or a trace): the fit then
  // adds the per-layer router entropy quantiles of the entropy rule. A 1-D dump has no rows; its
  // calibration has none.
  int num_experts = 0;
  bool rows_known = true;
  auto note_rows = [&](const std::string& path, const RouterLogitsFile& f) {
    if (f.flat) {
      rows_known = false;
      return;
    }
    if (f.experts < 1 || f.experts > kMaxExperts) {
      fail(path, ": rows of ", f.experts, " logits (N must be in [1, ", kMaxExperts, "])");
    }
    if (num_experts != 0 && f.experts != num_experts) {
      fail(path, ": rows of ", f.experts, " logits, but an earlier file has N = ", num_experts,
           " (one model's router logits expected)");
    }
    num_experts = static_cast<int>(f.experts);
  };
  std::vector<RouterLogitsFile> files;
  for (const std::string& path : o.logits) {
    files.push_back(read_router_logits(path));
    note_rows(path, files.back());
  }
  if (files.size() == 1 && files[0].layered) {
    // One [layers, T, N] file or trace: slice i is layer --layer[i] (default: 0, 1, ...).
    const RouterLogitsFile& f = files[0];
    if (!o.layers.empty() && static_cast<int64_t>(o.layers.size()) != f.layers) {
      fail(o.logits[0], ": holds ", f.layers, " layers but ", o.layers.size(),
           " --layer values were given");
    }
    for (int64_t i = 0; i < f.layers; ++i) {
      const int layer = o.layers.empty() ? static_cast<int>(i) : o.layers[static_cast<size_t>(i)];
      auto& pool = samples[layer];
      pool.insert(pool.end(), f.layer(i), f.layer(i) + f.tokens * f.experts);
    }
  } else {
    if (o.layers.size() != o.logits.size()) {
      fail("give one --layer per --logits file (", o.logits.size(), " files, ", o.layers.size(),
           " layers), or a single [layers, T, N] file or trace");
    }
    for (size_t i = 0; i < files.size(); ++i) {
      if (files[i].layered) {
        fail(o.logits[i], ": holds ", files[i].layers,
             " layers; with several files each must be one layer's [T, N]");
      }
      auto& pool = samples[o.layers[i]];  // files for the same layer are pooled
      pool.insert(pool.end(), files[i].data.begin(), files[i].data.end());
    }
  }
  Calibration calibration;
  try {
    calibration = fit_calibration(samples, method, o.grid_points, rows_known ? num_experts : 0);
  } catch (const Error& e) {
    fail("calibrate-logits: ", e.what());
  }
  calibration.model = o.model;
  if (!o.description.empty()) calibration.description = o.description;
  calibration.description += cat(" Fit by bhmoe calibrate-logits (", fit_method_name(method),
                                 ") on ", o.logits.size(), " file(s).");
  calibration.save(o.out);
  for (const auto& [layer, pool] : samples) {
    const CalibrationGrid& g = calibration.grid(layer);
    std::cout << "layer " << layer << ": " << pool.size() << " logits -> " << g.x.size()
              << " points, x in [" << g.x.front() << ", " << g.x.back() << "]";
    if (calibration.has_entropy_quantiles(layer)) {
      const std::vector<double>& q = calibration.entropy_quantiles(layer);
      std::cout << ", entropy median " << q[q.size() / 2] << " nats";
    }
    std::cout << "\n";
  }
  std::cout << "calibration (" << fit_method_name(method) << "): " << o.out << "\n";
  return 0;
}

CommandRegistration registration{
    "calibrate-logits",
    "Fit a per-layer null CDF of raw router logits (bh-calibration-grid/1) from .npy dumps",
    [](CLI::App& app) -> Action {
      auto o = std::make_shared<CalibrateOptions>();
      app.add_option(
             "--logits", o->logits,
             "router logits .npy, repeatable: one [T, N] file per --layer (files for the same "
             "layer are pooled), or one [layers, T, N] file (bhmoe logits --router-logits) or "
             ".npz trace (bhmoe trace --router-logits)")
          ->required();
      app.add_option("--layer", o->layers, "layer of each --logits file (repeatable)");
      app.add_option("--method", o->method, "ecdf or kde (Gaussian KDE, Scott bandwidth)")
          ->capture_default_str();
      app.add_option("--out", o->out, "output calibration JSON")->required();
      app.add_option("--grid-points", o->grid_points, "grid points per layer")
          ->capture_default_str();
      app.add_option("--model", o->model, "model name stored in the file");
      app.add_option("--description", o->description, "description stored in the file");
      return [o] { return run(*o); };
    }};

}  // namespace
}  // namespace bhmoe::cli
