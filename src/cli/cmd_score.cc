// bhmoe score: token-weighted negative log-likelihood and perplexity of a text file.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "cli/command.h"
#include "cli/engine_common.h"
#include "util/file.h"

namespace bhmoe::cli {
namespace {

struct ScoreOptions {
  EngineOptions engine;
  std::string text_file;
  int max_length = 512;
  bool json = false;
};

constexpr const char* kProtocol =
    "the text is tokenised whole (no special tokens) and cut into non-overlapping windows of "
    "max_length tokens; each window is scored from an empty context, its first token serving only "
    "as "
    "context; nll is the mean of -ln p(token | window prefix) over every predicted token of every "
    "window (token-weighted), perplexity = exp(nll)";

CommandRegistration reg{
    "score", "Token-weighted NLL and perplexity of a text file under any router",
    [](CLI::App& app) {
      auto o = std::make_shared<ScoreOptions>();
      add_engine_options(app, o->engine);
      app.add_option("--text-file", o->text_file, "UTF-8 text to score")->required();
      app.add_option("--max-length", o->max_length, "Window length in tokens")
          ->check(CLI::Range(2, 1 << 20));
      app.add_flag("--json", o->json, "Print one JSON line");
      return [o]() {
        const std::string text = read_file(o->text_file);
        Engine engine = open_engine(o->engine);
        const std::vector<int32_t> ids = engine.model->tokenizer().encode(text);
        if (ids.size() < 2) {
          fail("--text-file ", o->text_file, ": ", ids.size(),
               " token(s); at least 2 are needed to score anything");
        }
        // Windows are never longer than the text, so neither is the KV cache.
        const int64_t window = std::min<int64_t>(o->max_length, static_cast<int64_t>(ids.size()));
        model::Session session(engine.model, engine.router.get(), engine.pool.get(), window);
        const auto start = std::chrono::steady_clock::now();
        const model::ScoreTotals totals =
            model::total_score(model::score_windows(session, ids, window));
        const int64_t predicted = totals.predicted, windows = totals.windows;
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const double nll = totals.mean_nll();
        const double ppl = std::exp(nll);
        const double tokens_per_s = seconds > 0 ? session.routed_tokens() / seconds : 0.0;
        nlohmann::json summary = routing_summary(session);
        if (o->json) {
          nlohmann::json out;
          out["tokens"] = predicted;
          out["text_tokens"] = ids.size();
          out["windows"] = windows;
          out["max_length"] = o->max_length;
          out["nll"] = nll;
          out["perplexity"] = ppl;
          out["tokens_per_s"] = tokens_per_s;
          out["seconds"] = seconds;
          out["mean_experts"] = summary["mean_experts"];
          out["per_layer_mean_experts"] = summary["per_layer_mean_experts"];
          out["router"] = engine.router_spec();
          out["weights"] = engine.model->weights_kind();
          out["threads"] = engine.pool->num_threads();
          out["protocol"] = kProtocol;
          std::cout << out.dump() << "\n";
        } else {
          std::printf("protocol: %s\n", kProtocol);
          std::printf("router: %s (%s weights)\n", engine.router_spec().c_str(),
                      engine.model->weights_kind().c_str());
          std::printf("tokens scored: %lld in %lld window(s) of at most %d (text: %zu tokens)\n",
                      static_cast<long long>(predicted), static_cast<long long>(windows),
                      o->max_length, ids.size());
          std::printf("nll: %.6f\nperplexity: %.4f\nmean experts per token: %.4f\n", nll, ppl,
                      summary["mean_experts"].get<double>());
          std::printf("speed: %.1f tokens/s (%d threads)\n", tokens_per_s,
                      engine.pool->num_threads());
        }
        return 0;
      };
    }};

}  // namespace
}  // namespace bhmoe::cli
