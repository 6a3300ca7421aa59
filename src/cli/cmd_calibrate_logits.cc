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

std::string shape_text(const NpyArray& a) {
  std::string s;
  for (int64_t d : a.shape) s += (s.empty() ? "" : ", ") + std::to_string(d);
  return "[" + s + "]";
}

int run(const CalibrateOptions& o) {
  const FitMethod method = parse_fit_method(o.method);
  if (o.grid_points < 2) fail("--grid-points ", o.grid_points, " must be >= 2");
  for (int layer : o.layers) {
    if (layer < 0) fail("--layer ", layer, " must be >= 0");
  }
  std::map<int, std::vector<float>> samples;
  // N, the row width, when every file gives it ([T, N] or [layers, T, N]): the fit then adds the
  // per-layer router entropy quantiles of the entropy rule. A 1-D dump has no rows; its
  // calibration has none.
  int num_experts = 0;
  bool rows_known = true;
  auto note_rows = [&](const std::string& path, int64_t n) {
    if (n < 1 || n > kMaxExperts) {
      fail(path, ": rows of ", n, " logits (N must be in [1, ", kMaxExperts, "])");
    }
    if (num_experts != 0 && n != num_experts) {
      fail(path, ": rows of ", n, " logits, but an earlier file has N = ", num_experts,
           " (one model's router logits expected)");
    }
    num_experts = static_cast<int>(n);
  };
  if (o.logits.size() == 1 && read_npy(o.logits[0]).rank() == 3) {
    // One [layers, T, N] file: slice i is layer --layer[i] (default: 0, 1, ...).
    NpyArray a = read_npy(o.logits[0]);
    note_rows(o.logits[0], a.dim(2));
    const int64_t num = a.dim(0);
    const int64_t per = num ? a.size() / num : 0;
    if (!o.layers.empty() && static_cast<int64_t>(o.layers.size()) != num) {
      fail(o.logits[0], ": holds ", num, " layers ", shape_text(a), " but ", o.layers.size(),
           " --layer values were given");
    }
    for (int64_t i = 0; i < num; ++i) {
      const int layer = o.layers.empty() ? static_cast<int>(i) : o.layers[i];
      auto& pool = samples[layer];
      pool.insert(pool.end(), a.data.begin() + i * per, a.data.begin() + (i + 1) * per);
    }
  } else {
    if (o.layers.size() != o.logits.size()) {
      fail("give one --layer per --logits file (", o.logits.size(), " files, ", o.layers.size(),
           " layers), or a single [layers, T, N] file");
    }
    for (size_t i = 0; i < o.logits.size(); ++i) {
      NpyArray a = read_npy(o.logits[i]);
      if (a.rank() < 1 || a.rank() > 2) {
        fail(o.logits[i], ": expected [T, N] router logits for layer ", o.layers[i], ", got ",
             shape_text(a));
      }
      if (a.rank() == 2) {
        note_rows(o.logits[i], a.dim(1));
      } else {
        rows_known = false;
      }
      auto& pool = samples[o.layers[i]];  // files for the same layer are pooled
      pool.insert(pool.end(), a.data.begin(), a.data.end());
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
             "layer are pooled), or one [layers, T, N] file")
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
