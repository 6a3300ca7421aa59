// bhmoe bench routing: one JSON line of routing speed figures (one thread).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cli/command.h"
#include "routing/adaptive.h"
#include "routing/calibration.h"
#include "routing/router.h"
#include "routing/spec.h"
#include "routing/stats.h"
#include "util/error.h"

namespace bhmoe::cli {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kDefaultCalibration = "../shared/calibration/olmoe-1b-7b-0924.kde.json";

struct BenchOptions {
  std::string router = "bh:alpha=0.05,max_k=16";
  int experts = 64;
  std::string calibration;
  int layer = 0;
  int64_t tokens = 4096;
  double seconds = 0.5;
  uint64_t seed = 1234;
  std::string logits_from = "normal";
};

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

int run(const BenchOptions& o) {
  using namespace routing;
  if (o.experts < 1 || o.experts > kMaxExperts) {
    fail("--experts ", o.experts, " is outside [1, ", kMaxExperts, "]");
  }
  if (o.tokens < 1) fail("--tokens ", o.tokens, " must be >= 1");
  RouterSpec spec = parse_router_spec(o.router);
  const int n = o.experts;

  // Standard normal logits (the scale of OLMoE's raw router logits), fixed seed.
  std::mt19937_64 rng(o.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> logits(static_cast<size_t>(o.tokens * n));
  for (float& v : logits) v = normal(rng);

  std::shared_ptr<Calibration> calibration;
  std::string calibration_source = "none";
  if (spec.uses_calibration()) {
    std::string path = o.calibration;
    if (path.empty() && std::filesystem::exists(kDefaultCalibration)) path = kDefaultCalibration;
    if (!path.empty()) {
      calibration = std::make_shared<Calibration>(Calibration::load(path));
      calibration_source = path;
    } else {
      std::map<int, std::vector<float>> samples;
      auto& pool = samples[o.layer];
      for (int i = 0; i < n * 1000; ++i) pool.push_back(normal(rng));
      calibration =
          std::make_shared<Calibration>(fit_calibration(samples, FitMethod::kKde, 10000, n));
      calibration_source = cat("kde fitted on ", n * 1000, " random normal logits");
    }
    if (spec.rule == RuleKind::kEntropy && calibration->has_layer(o.layer) &&
        !calibration->has_entropy_quantiles(o.layer)) {
      // The real OLMoE calibration predates entropy quantiles: take them from 1000 other tokens of
      // the same standard normal logits, so the buckets split the benchmark's tokens evenly.
      std::vector<float> tokens(static_cast<size_t>(n) * 1000);
      for (float& v : tokens) v = normal(rng);
      calibration->set_entropy_quantiles(o.layer, entropy_quantiles(tokens, n));
      calibration_source += " + entropy quantiles of 1000 random normal tokens";
    }
  }
  if (o.logits_from == "calibration") {
    // Draws from the layer's calibrated null distribution (inverse CDF by interpolation): the
    // pooled distribution of the real model's logits, as the calibration was fitted on them.
    if (!calibration) {
      fail("--logits-from calibration needs a router with a calibration (bh, hc or entropy)");
    }
    const CalibrationGrid& g = calibration->grid(o.layer);
    std::uniform_real_distribution<double> uniform(g.cdf.front(), g.cdf.back());
    for (float& v : logits) {
      const double u = uniform(rng);
      size_t j = std::upper_bound(g.cdf.begin(), g.cdf.end(), u) - g.cdf.begin();
      j = std::clamp<size_t>(j, 1, g.cdf.size() - 1);
      const double span = g.cdf[j] - g.cdf[j - 1];
      const double f = span > 0 ? (u - g.cdf[j - 1]) / span : 0.0;
      v = static_cast<float>(g.x[j - 1] + f * (g.x[j] - g.x[j - 1]));
    }
  } else if (o.logits_from != "normal") {
    fail("--logits-from \"", o.logits_from, "\" is not normal or calibration");
  }
  auto router = make_router(o.router, n, calibration);
  const int stride = router->max_count();
  std::vector<int32_t> ids(static_cast<size_t>(o.tokens * stride));
  std::vector<float> weights(ids.size());
  std::vector<int32_t> counts(static_cast<size_t>(o.tokens));

  // Batch: whole passes over the tokens until the time budget is spent; the best pass counts.
  router->route_batch(logits.data(), o.tokens, o.layer, ids.data(), weights.data(), counts.data());
  double best_batch = 1e300;
  int passes = 0;
  auto start = Clock::now();
  do {
    auto t0 = Clock::now();
    router->route_batch(logits.data(), o.tokens, o.layer, ids.data(), weights.data(),
                        counts.data());
    auto t1 = Clock::now();
    best_batch = std::min(best_batch, std::chrono::duration<double, std::nano>(t1 - t0).count());
    ++passes;
  } while (std::chrono::duration<double>(Clock::now() - start).count() < o.seconds || passes < 3);
  const double ns_batch = best_batch / static_cast<double>(o.tokens);

  // Single calls: one token per route() call, cycling through the tokens; timed in blocks of 256
  // calls (a clock read per call would cost as much as the call), best block counts.
  constexpr int kBlock = 256;
  double best_single = 1e300;
  int64_t next = 0;
  int64_t sink = 0;
  start = Clock::now();
  int blocks = 0;
  do {
    auto t0 = Clock::now();
    for (int c = 0; c < kBlock; ++c) {
      sink += router->route(logits.data() + next * n, o.layer, ids.data(), weights.data());
      next = next + 1 == o.tokens ? 0 : next + 1;
    }
    auto t1 = Clock::now();
    best_single = std::min(best_single, std::chrono::duration<double, std::nano>(t1 - t0).count());
    ++blocks;
  } while (std::chrono::duration<double>(Clock::now() - start).count() < o.seconds || blocks < 3);
  const double ns_single = best_single / kBlock;

  CountStats stats = count_stats(counts, router->max_count(), 1);
  std::cout << "{\"bench\":\"routing\",\"router\":" << json_string(router->spec())
            << ",\"experts\":" << n << ",\"layer\":" << o.layer << ",\"tokens\":" << o.tokens
            << ",\"threads\":1,\"calibration\":" << json_string(calibration_source)
            << ",\"logits\":"
            << json_string(o.logits_from == "normal" ? "standard normal" : "calibrated null")
            << ",\"ns_per_token_batch\":" << format_stat(ns_batch)
            << ",\"ns_per_call_single\":" << format_stat(ns_single)
            << ",\"tokens_per_second_batch\":" << format_stat(1e9 / ns_batch)
            << ",\"mean_count\":" << format_stat(stats.mean_experts)
            << ",\"checksum\":" << (sink % 1000003) << "}" << std::endl;
  return 0;
}

CommandRegistration registration{
    "bench routing",
    "Routing speed on random logits: one JSON line with ns_per_token_batch (4096 tokens, one "
    "thread) and ns_per_call_single",
    [](CLI::App& app) -> Action {
      auto o = std::make_shared<BenchOptions>();
      app.add_option("--router", o->router, "router spec")->capture_default_str();
      app.add_option("--experts", o->experts, "number of experts N")->capture_default_str();
      app.add_option("--calibration", o->calibration,
                     cat("calibration JSON for bh (default: ", kDefaultCalibration,
                         " if it exists, else a KDE fitted on random logits)"));
      app.add_option("--layer", o->layer, "layer to route")->capture_default_str();
      app.add_option("--tokens", o->tokens, "batch size (at most 1048576)")
          ->capture_default_str()
          ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
      app.add_option("--seconds", o->seconds, "time budget per measurement (at most 3600)")
          ->capture_default_str()
          ->check(finite_range(0.0, 3600.0));
      app.add_option("--seed", o->seed, "random seed of the logits")
          ->capture_default_str()
          ->check(unsigned_integer());
      app.add_option(
             "--logits-from", o->logits_from,
             "normal: standard normal logits; calibration: drawn from the layer's calibrated "
             "null distribution")
          ->capture_default_str();
      return [o] { return run(*o); };
    }};

}  // namespace
}  // namespace bhmoe::cli
