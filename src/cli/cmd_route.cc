// bhmoe route: apply routing rules to every row of a [T, N] router-logits file (or one layer of a
// [layers, T, N] file or trace).
#include <algorithm>
#include <charconv>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli/command.h"
#include "routing/calibration.h"
#include "routing/router.h"
#include "routing/spec.h"
#include "routing/stats.h"
#include "util/error.h"
#include "util/file.h"
#include "cli/router_logits_file.h"
#include "util/npy.h"

namespace bhmoe::cli {
namespace {

using namespace routing;

struct RouteOptions {
  std::string logits;
  int layer = 0;
  std::vector<std::string> routers;
  std::string calibration;
  std::string out;
  std::string stats;
  std::string max_k_sweep;
};

std::string float_text(float v) {
  char buffer[32];
  auto [ptr, ec] = std::to_chars(buffer, buffer + sizeof buffer, v);
  return std::string(buffer, ptr);
}

struct RouterResult {
  std::string spec;
  int stride = 0;
  int min_k = 1;
  std::vector<int32_t> ids;
  std::vector<float> weights;
  std::vector<int32_t> counts;
};

std::string stats_header() {
  return "router,tokens,mean_experts,std_experts,min_experts,max_experts,pct_at_ceiling,"
         "pct_at_floor,mean_weight_sum,weight_entropy,expert_utilization_cv,"
         "expert_utilization_max_min_ratio,"
         "experts_used";
}

int run(const RouteOptions& o) {
  const RouterLogitsFile file = read_router_logits(o.logits);
  if (o.layer < 0) fail("--layer ", o.layer, " must be >= 0");
  if (file.layered && o.layer >= file.layers) {
    fail(o.logits, ": holds ", file.layers, " layers; --layer ", o.layer, " is not among them");
  }
  // The rows routed: the whole [T, N] file, or layer --layer of an [L, T, N] file or trace.
  NpyArray logits;
  logits.shape = {file.tokens, file.experts};
  const float* rows = file.layer(file.layered ? o.layer : 0);
  logits.data.assign(rows, rows + file.tokens * file.experts);
  const int64_t tokens = logits.dim(0);
  if (logits.dim(1) < 1 || logits.dim(1) > kMaxExperts) {
    fail(o.logits, ": N = ", logits.dim(1), " experts is outside [1, ", kMaxExperts, "]");
  }
  const int n = static_cast<int>(logits.dim(1));

  std::shared_ptr<const Calibration> calibration;
  if (!o.calibration.empty()) {
    calibration = std::make_shared<const Calibration>(Calibration::load(o.calibration));
  }
  std::vector<int> sweep;
  if (!o.max_k_sweep.empty()) sweep = parse_positive_int_list(o.max_k_sweep, "--max-k-sweep");

  std::vector<RouterResult> results;
  for (const std::string& text : o.routers) {
    const RouterSpec spec = resolve_router_spec(parse_router_spec(text), n);
    if (spec.uses_calibration() && !calibration) {
      fail("--router ", text, ": ", rule_name(spec.rule),
           spec.rule == RuleKind::kEntropy ? " needs entropy quantiles from"
                                           : " with calibrated p-values needs",
           " --calibration FILE.json");
    }
    std::unique_ptr<Router> router;
    try {
      router = make_router(spec, n, calibration);
      // The layer's calibration data, checked here so the message can name the file.
      if (spec.rule == RuleKind::kEntropy) calibration->entropy_quantiles(o.layer);
      if (spec.uses_calibration()) calibration->grid(o.layer);
    } catch (const Error& e) {
      if (!spec.uses_calibration()) throw;
      fail("--router ", text, " with --calibration ", o.calibration, ": ", e.what());
    }
    if (!sweep.empty() && spec.rule != RuleKind::kBH) {
      fail("--max-k-sweep sweeps bh routers over max_k; \"", text, "\" is not a bh: spec");
    }
    RouterResult r;
    r.spec = router->spec();
    r.stride = router->max_count();
    r.min_k = min_count(spec);
    r.ids.resize(static_cast<size_t>(tokens * r.stride));
    r.weights.resize(r.ids.size());
    r.counts.resize(static_cast<size_t>(tokens));
    try {
      router->route_batch(logits.data.data(), tokens, o.layer, r.ids.data(), r.weights.data(),
                          r.counts.data());
    } catch (const Error& e) {
      fail(o.logits, ": ", e.what());
    }
    results.push_back(std::move(r));
  }

  if (!o.out.empty()) {
    std::string text;
    for (const RouterResult& r : results) {
      for (int64_t t = 0; t < tokens; ++t) {
        text += "{\"router\": \"" + r.spec + "\", \"token\": " + std::to_string(t) +
                ", \"count\": " + std::to_string(r.counts[t]) + ", \"experts\": [";
        for (int j = 0; j < r.counts[t]; ++j) {
          text += (j ? ", " : "") + std::to_string(r.ids[t * r.stride + j]);
        }
        text += "], \"weights\": [";
        for (int j = 0; j < r.counts[t]; ++j) {
          text += (j ? ", " : "") + float_text(r.weights[t * r.stride + j]);
        }
        text += "]}\n";
      }
    }
    write_file_atomic(o.out, text);
  }

  std::ostringstream table;
  std::string csv;
  if (sweep.empty()) {
    csv = stats_header() + "\n";
    table << std::left << std::setw(12) << "mean" << std::setw(8) << "std" << std::setw(6) << "min"
          << std::setw(6) << "max" << std::setw(10) << "%ceiling" << std::setw(9) << "%floor"
          << std::setw(10) << "w_sum" << std::setw(9) << "entropy" << std::setw(8) << "util_cv"
          << "router\n";
    for (const RouterResult& r : results) {
      RoutingStats stats(n, r.stride, r.min_k);
      stats.add_batch(o.layer, r.ids.data(), r.weights.data(), r.counts.data(), tokens, r.stride);
      const CountStats c = stats.counts();
      const Utilisation u = stats.utilisation();
      csv += cat("\"", r.spec, "\",", tokens, ",", format_stat(c.mean_experts), ",",
                 format_stat(c.std_experts), ",", format_stat(c.min_experts), ",",
                 format_stat(c.max_experts), ",", format_stat(c.pct_at_ceiling), ",",
                 format_stat(c.pct_at_floor), ",", format_stat(stats.mean_weight_sum()), ",",
                 format_stat(stats.mean_weight_entropy()), ",", format_stat(u.cv), ",",
                 format_stat(u.max_min_ratio), ",", u.used_experts, "\n");
      table << std::fixed << std::setprecision(3) << std::left << std::setw(12) << c.mean_experts
            << std::setw(8) << std::setprecision(2) << c.std_experts << std::setprecision(0)
            << std::setw(6) << c.min_experts << std::setw(6) << c.max_experts
            << std::setprecision(1) << std::setw(10) << c.pct_at_ceiling << std::setw(9)
            << c.pct_at_floor << std::setprecision(3) << std::setw(10) << stats.mean_weight_sum()
            << std::setw(9) << stats.mean_weight_entropy() << std::setw(8) << u.cv << r.spec
            << "\n";
    }
  } else {
    const bool several = o.routers.size() > 1;
    csv = std::string(several ? "router," : "") + kMultiKColumns + "\n";
    for (const std::string& text : o.routers) {
      std::vector<MultiKRow> rows;
      try {
        rows = multi_k_table(text, sweep, logits.data.data(), tokens, n, o.layer, calibration);
      } catch (const Error& e) {
        fail(o.logits, ": ", e.what());
      }
      std::string body = multi_k_csv(rows);
      body = body.substr(body.find('\n') + 1);
      if (several) {
        std::string prefixed;
        std::istringstream lines(body);
        for (std::string line; std::getline(lines, line);) {
          prefixed += "\"" + canonical_spec(parse_router_spec(text)) + "\"," + line + "\n";
        }
        body = prefixed;
      }
      csv += body;
      table << "max_k sweep of " << text << "\n" << multi_k_text(rows) << "\n";
    }
  }
  if (!o.stats.empty()) write_file_atomic(o.stats, csv);
  std::cout << o.logits << ": " << tokens << " tokens x " << n << " experts, layer " << o.layer
            << "\n"
            << table.str();
  if (!o.out.empty()) std::cout << "decisions: " << o.out << "\n";
  if (!o.stats.empty()) std::cout << "statistics: " << o.stats << "\n";
  return 0;
}

CommandRegistration registration{
    "route", "Apply routing rules to every row of a [T, N] router-logits .npy file",
    [](CLI::App& app) -> Action {
      auto o = std::make_shared<RouteOptions>();
      app.add_option("--logits", o->logits,
                     "router logits: .npy [T, N] (float32/float16/bf16-as-uint16) or [layers, T, N] "
                     "(bhmoe logits --router-logits), or a .npz trace (bhmoe trace "
                     "--router-logits)")
          ->required();
      app.add_option("--layer", o->layer, "layer index (selects the calibration grid, and the slice of a [layers, T, N] file "
                     "or trace)")->required();
      app.add_option("--router", o->routers,
                     "router spec, repeatable: topk:k=8 | bh:alpha=0.05,max_k=16 | topp:p=0.7")
          ->required();
      app.add_option("--calibration", o->calibration, "bh-calibration-grid/1 JSON (needed by bh)");
      app.add_option(
          "--out", o->out,
          "JSONL: one {router, token, count, experts, weights} object per token and router");
      app.add_option("--stats", o->stats,
                     "CSV statistics: one row per router, or per max_k with --max-k-sweep");
      app.add_option(
          "--max-k-sweep", o->max_k_sweep,
          "comma-separated max_k values (e.g. 8,16,32,64): the multi-k table of each bh router");
      return [o] { return run(*o); };
    }};

}  // namespace
}  // namespace bhmoe::cli
