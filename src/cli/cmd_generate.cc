// bhmoe generate: prefill a prompt and generate (greedy or temperature/top-p with a seed),
// streaming the text; then tokens/s and the mean number of experts per token (stderr, or one JSON
// line).
#include <cmath>
#include <cstdio>
#include <iostream>

#include "cli/command.h"
#include "cli/engine_common.h"
#include "util/file.h"

namespace bhmoe::cli {
namespace {

struct GenerateCliOptions {
  EngineOptions engine;
  std::string prompt;
  std::string prompt_file;
  int max_new_tokens = 50;
  float temperature = 0.0f;
  float top_p = 1.0f;
  uint64_t seed = 0;
  bool json = false;
};

CommandRegistration reg{
    "generate", "Generate text from a prompt with any router", [](CLI::App& app) {
      auto o = std::make_shared<GenerateCliOptions>();
      add_engine_options(app, o->engine);
      auto* prompt = app.add_option("--prompt", o->prompt, "Prompt text");
      auto* prompt_file =
          app.add_option("--prompt-file", o->prompt_file, "A file holding the prompt text");
      prompt->excludes(prompt_file);
      app.add_option("--max-new-tokens", o->max_new_tokens,
                     "Tokens to generate (stops early at EOS); the prompt and these must fit the "
                     "model's context (max_position_embeddings)")
          ->check(CLI::NonNegativeNumber);
      app.add_option("--temperature", o->temperature, "0: greedy; > 0: sampling temperature");
      app.add_option("--top-p", o->top_p, "Nucleus sampling mass in (0, 1]");
      app.add_option("--seed", o->seed, "Sampling seed")->check(unsigned_integer());
      app.add_flag("--json", o->json, "Print one JSON line instead of streaming text");
      return [o, prompt, prompt_file]() {
        if (prompt->count() == 0 && prompt_file->count() == 0) {
          fail("give the prompt as --prompt TEXT or --prompt-file FILE");
        }
        // The sampler checks these too, in its own words; checking first names the flags.
        if (!(o->temperature >= 0.0f) || !std::isfinite(o->temperature)) {
          fail("--temperature ", o->temperature, ": must be a finite value >= 0");
        }
        if (!(o->top_p > 0.0f && o->top_p <= 1.0f))
          fail("--top-p ", o->top_p, ": must be in (0, 1]");
        const std::string flag =
            o->prompt_file.empty() ? std::string("--prompt") : "--prompt-file " + o->prompt_file;
        const std::string prompt_text =
            o->prompt_file.empty() ? o->prompt : read_regular_file(o->prompt_file);
        Engine engine = open_engine(o->engine);
        const model::Tokenizer& tokenizer = engine.model->tokenizer();
        const std::vector<int32_t> prompt = tokenizer.encode(prompt_text);
        if (prompt.empty()) fail(flag, ": empty prompt (it encodes to no tokens)");
        // The session (its KV cache) is sized by the prompt and the new tokens, so both are bounded
        // by the model's context before it is allocated.
        const int64_t context = engine.model->config().max_position_embeddings;
        const int64_t prompt_tokens = static_cast<int64_t>(prompt.size());
        if (prompt_tokens > context) {
          fail(flag, ": the prompt is ", prompt_tokens,
               " tokens, longer than the model's context of ", context,
               " tokens (max_position_embeddings)");
        }
        if (prompt_tokens + o->max_new_tokens > context) {
          fail("--max-new-tokens ", o->max_new_tokens, ": with the ", prompt_tokens,
               "-token prompt this exceeds the model's context of ", context,
               " tokens (max_position_embeddings); at most ", context - prompt_tokens,
               " new tokens fit");
        }
        model::Session session(engine.model, engine.router.get(), engine.pool.get(),
                               prompt_tokens + o->max_new_tokens);
        model::GenerateOptions options;
        options.max_new_tokens = o->max_new_tokens;
        options.temperature = o->temperature;
        options.top_p = o->top_p;
        options.seed = o->seed;

        // Streaming: decode everything generated so far and print the new complete characters.
        std::vector<int32_t> generated;
        generated.reserve(static_cast<size_t>(o->max_new_tokens));
        size_t printed = 0;
        auto on_token = [&](int32_t token) {
          generated.push_back(token);
          if (o->json) return;
          const std::string text = tokenizer.decode(generated);
          const size_t ready = complete_utf8_prefix(text);
          if (ready > printed) {
            std::fwrite(text.data() + printed, 1, ready - printed, stdout);
            std::fflush(stdout);
            printed = ready;
          }
        };
        const model::GenerateResult result = model::generate(session, prompt, options, on_token);
        const std::string text = tokenizer.decode(result.tokens);

        const int64_t decode_steps =
            std::max<int64_t>(0, static_cast<int64_t>(result.tokens.size()) - 1);
        const double tokens_per_s =
            result.decode_seconds > 0 ? decode_steps / result.decode_seconds : 0.0;
        const double prefill_tokens_per_s =
            result.prefill_seconds > 0 ? prompt.size() / result.prefill_seconds : 0.0;
        nlohmann::json summary = routing_summary(session);
        if (o->json) {
          nlohmann::json out;
          out["text"] = text;
          out["tokens"] = result.tokens.size();
          out["token_ids"] = result.tokens;
          out["prompt_tokens"] = prompt.size();
          out["stopped_at_eos"] = result.stopped_at_eos;
          out["tokens_per_s"] = tokens_per_s;
          out["prefill_tokens_per_s"] = prefill_tokens_per_s;
          out["prefill_seconds"] = result.prefill_seconds;
          out["decode_seconds"] = result.decode_seconds;
          out["mean_experts"] = summary["mean_experts"];
          out["per_layer_mean_experts"] = summary["per_layer_mean_experts"];
          out["router"] = engine.router_spec();
          out["weights"] = engine.model->weights_kind();
          out["threads"] = engine.pool->num_threads();
          std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
        } else {
          if (printed < text.size())
            std::fwrite(text.data() + printed, 1, text.size() - printed, stdout);
          std::fputs("\n", stdout);
          std::fflush(stdout);
          std::fprintf(
              stderr,
              "[generate] %zu tokens%s, %.2f tokens/s (decode), prefill %zu tokens at %.1f "
              "tokens/s; mean experts per token %.3f (router %s, %s weights, %d threads)\n",
              result.tokens.size(), result.stopped_at_eos ? " (stopped at EOS)" : "", tokens_per_s,
              prompt.size(), prefill_tokens_per_s, summary["mean_experts"].get<double>(),
              engine.router_spec().c_str(), engine.model->weights_kind().c_str(),
              engine.pool->num_threads());
        }
        return 0;
      };
    }};

}  // namespace
}  // namespace bhmoe::cli
