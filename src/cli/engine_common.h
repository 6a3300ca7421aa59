// Shared plumbing of the engine subcommands (logits, generate, score, calibrate, bench model):
// the --model/--router/--calibration/--threads/--weights options, building the router, parsing id
// lists, routing summaries and streaming decoded text.
#pragma once

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/thread_pool.h"
#include "model/engine.h"
#include "model/verbs.h"
#include "routing/calibration.h"
#include "routing/router.h"
#include "routing/spec.h"
#include "util/error.h"

namespace bhmoe::cli {

// --weights: how the engine holds the weights.
inline constexpr const char* kWeightsHelp =
    "native (zero-copy mmap as stored), bf16 (a bf16 copy in huge pages: faster prefill, load-time "
    "copy) or q8 (8-bit, quantised at load, in huge pages)";

// --threads: 0 (all cores) to kernels::kMaxThreads; CLI11 names the flag and the range when a
// value is outside it.
inline CLI::Option* add_threads_option(CLI::App& app, int& threads) {
  return app
      .add_option(
          "--threads", threads,
          "Worker threads (0: all cores; at most " + std::to_string(kernels::kMaxThreads) + ")")
      ->check(CLI::Range(0, kernels::kMaxThreads));
}

struct EngineOptions {
  std::string model_dir;
  std::string router_spec;  // empty: the model's native rule
  std::string calibration;  // optional bh-calibration-grid/1 file
  std::string weights = "native";
  int threads = 0;  // 0: all cores
};

inline void add_engine_options(CLI::App& app, EngineOptions& o, bool with_router = true) {
  app.add_option("--model", o.model_dir,
                 "Checkpoint folder (config.json, safetensors, tokenizer.json) or GGUF file")
      ->required();
  if (with_router) {
    app.add_option("--router", o.router_spec,
                   "Routing rule in every layer, e.g. topk:k=4 or bh:alpha=0.05,max_k=16 (default: "
                   "the model's native top-k)");
    app.add_option("--calibration", o.calibration,
                   "Calibration file (bh-calibration-grid/1) for bh");
  }
  add_threads_option(app, o.threads);
  app.add_option("--weights", o.weights, kWeightsHelp)
      ->check(CLI::IsMember({"native", "bf16", "q8"}));
}

struct Engine {
  std::shared_ptr<const model::Model> model;
  std::shared_ptr<const routing::Calibration> calibration;
  std::unique_ptr<routing::Router> router;  // null: native
  std::unique_ptr<kernels::ThreadPool> pool;

  std::string router_spec() const {
    return router ? router->spec() : model->config().native_router_spec();
  }
};

// Builds --router for the model (model::make_model_router checks the calibration fits the model:
// every layer, none beyond); the engine's message gains the flags that supplied the values and
// names the calibration file.
inline std::unique_ptr<routing::Router> make_cli_router(
    const model::ModelConfig& config, const std::string& spec_text,
    const std::shared_ptr<const routing::Calibration>& calibration,
    const std::string& calibration_path) {
  const routing::RouterSpec spec = routing::parse_router_spec(spec_text);
  if (spec.uses_calibration() && !calibration) fail("--router ", spec_text, " needs --calibration");
  try {
    return model::make_model_router(config, spec, calibration, calibration_path);
  } catch (const Error& e) {
    if (!spec.uses_calibration()) throw;
    fail("--router ", spec_text, " with --calibration: ", e.what());
  }
}

inline Engine open_engine(const EngineOptions& o) {
  Engine engine;
  engine.model = model::Model::load(o.model_dir, {.weights = o.weights});
  if (!o.calibration.empty()) {
    engine.calibration =
        std::make_shared<routing::Calibration>(routing::Calibration::load(o.calibration));
  }
  if (!o.router_spec.empty()) {
    engine.router =
        make_cli_router(engine.model->config(), o.router_spec, engine.calibration, o.calibration);
  }
  engine.pool = std::make_unique<kernels::ThreadPool>(o.threads);
  return engine;
}

// "1 2 3" or "1,2,3" or "[1, 2, 3]".
inline std::vector<int32_t> parse_ids(std::string_view text) {
  std::vector<int32_t> ids;
  size_t i = 0;
  auto is_sep = [](char c) {
    return c == ' ' || c == ',' || c == '\t' || c == '\n' || c == '[' || c == ']';
  };
  while (i < text.size()) {
    if (is_sep(text[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < text.size() && !is_sep(text[j])) ++j;
    const std::string_view word = text.substr(i, j - i);
    int64_t value = 0;
    auto [end, ec] = std::from_chars(word.data(), word.data() + word.size(), value);
    if (ec != std::errc() || end != word.data() + word.size() || value < INT32_MIN ||
        value > INT32_MAX) {
      fail("--ids: '", word, "' is not an integer token id");
    }
    ids.push_back(static_cast<int32_t>(value));
    i = j;
  }
  if (ids.empty()) fail("--ids: no token ids given");
  return ids;
}

// Mean experts per routed token, overall and per layer, from the session's running totals.
inline nlohmann::json routing_summary(const model::Session& session) {
  const auto& per_layer = session.selected_experts_per_layer();
  const double tokens = static_cast<double>(session.routed_tokens());
  std::vector<double> means;
  double total = 0;
  for (int64_t s : per_layer) {
    means.push_back(tokens > 0 ? s / tokens : 0.0);
    total += static_cast<double>(s);
  }
  nlohmann::json out;
  out["mean_experts"] =
      tokens > 0 && !per_layer.empty() ? total / (tokens * per_layer.size()) : 0.0;
  out["per_layer_mean_experts"] = means;
  return out;
}

// Length of the longest prefix of `text` that does not end inside a UTF-8 sequence, so streamed
// output never splits a character. Trailing U+FFFD are held back too: a SentencePiece tokenizer's
// byte-fallback tokens decode to one U+FFFD per byte until the character's last byte arrives, and
// then to the character itself (a real U+FFFD is printed once anything follows it, or at the end).
inline size_t complete_utf8_prefix(std::string_view text) {
  constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  size_t n = text.size();
  while (n >= kReplacement.size() && text.substr(0, n).ends_with(kReplacement))
    n -= kReplacement.size();
  size_t back = 0;
  while (back < 4 && back < n && (static_cast<unsigned char>(text[n - 1 - back]) & 0xC0) == 0x80)
    ++back;
  if (back < n) {
    const unsigned char lead = static_cast<unsigned char>(text[n - 1 - back]);
    size_t need = lead < 0x80         ? 1
                  : (lead >> 5) == 6  ? 2
                  : (lead >> 4) == 14 ? 3
                  : (lead >> 3) == 30 ? 4
                                      : 1;
    if (back + 1 < need) return n - back - 1;
  }
  return n;
}

}  // namespace bhmoe::cli
