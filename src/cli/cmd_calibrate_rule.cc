// bhmoe calibrate-rule: the parameter value (BH's alpha, top-p's p) at which a rule selects a
// target mean number of experts per token on a text, so rules can be compared at equal compute.
// The last line of the output is the resulting router spec.
#include <cstdio>

#include "cli/command.h"
#include "cli/engine_common.h"
#include "model/rule_search.h"
#include "util/file.h"

namespace bhmoe::cli {
namespace {

struct CalibrateRuleOptions {
  EngineOptions engine;
  std::string text_file;
  std::string rule;
  double target = 0;
  double tolerance = 0.02;
  int64_t max_tokens = 4096;
  int64_t window = 512;
  int max_steps = 24;
};

CommandRegistration reg{
    "calibrate-rule",
    "Find the alpha/p at which a rule selects a target mean of experts per token on a text",
    [](CLI::App& app) {
      auto o = std::make_shared<CalibrateRuleOptions>();
      add_engine_options(app, o->engine, /*with_router=*/false);
      app.add_option("--calibration", o->engine.calibration,
                     "Calibration file (bh-calibration-grid/1) for rules that use one (bh)");
      app.add_option("--text-file", o->text_file, "UTF-8 text to measure on (a calibration split)")
          ->required();
      app.add_option("--rule", o->rule,
                     "The rule without its searched parameter: bh[:max_k=16,...] (alpha), "
                     "topp[:...] (p), skip[:...] (beta) or threshold[:...] (tau)")
          ->required();
      app.add_option("--target-mean-experts", o->target, "Mean experts per token and layer to reach")
          ->required();
      app.add_option("--tolerance", o->tolerance, "Stop when the mean is this close")
          ->check(CLI::Range(1e-6, 1e6));
      app.add_option("--max-tokens", o->max_tokens, "Use at most this many tokens of the text")
          ->check(CLI::Range(int64_t{2}, int64_t{1} << 30));
      app.add_option("--window", o->window, "Tokens per window, each from an empty cache")
          ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
      app.add_option("--max-steps", o->max_steps, "Model passes over the text at most")
          ->check(CLI::Range(2, 200));
      return [o]() {
        Engine engine = open_engine(o->engine);
        std::vector<int32_t> ids = engine.model->tokenizer().encode(read_file(o->text_file));
        if (ids.empty()) fail("--text-file ", o->text_file, ": the text encodes to no tokens");
        if (static_cast<int64_t>(ids.size()) > o->max_tokens) ids.resize(static_cast<size_t>(o->max_tokens));
        const int64_t context = engine.model->config().max_position_embeddings;
        if (o->window > context) fail("--window ", o->window, " exceeds the model's context of ", context);
        const int64_t window = std::min<int64_t>(o->window, static_cast<int64_t>(ids.size()));
        model::Session session(engine.model, nullptr, engine.pool.get(), window);
        model::RuleSearchOptions options;
        options.target = o->target;
        options.tolerance = o->tolerance;
        options.max_steps = o->max_steps;
        options.window = window;
        std::printf("searching %s for %.4g mean experts per token on %zu tokens of %s\n",
                    o->rule.c_str(), o->target, ids.size(), o->text_file.c_str());
        model::RuleSearchResult result;
        try {
          result = model::search_rule_parameter(
              session, ids, o->rule, engine.calibration, options, [](const model::RuleSearchStep& s) {
                std::printf("  %-60s mean experts %.4f\n", s.spec.c_str(), s.mean_experts);
                std::fflush(stdout);
              });
        } catch (const Error& e) {
          fail("--rule ", o->rule, ": ", e.what());
        }
        if (!result.reached) {
          std::fprintf(stderr,
                       "bhmoe: warning: the closest mean reached is %.4f (target %.4g): the rule's "
                       "range or its step-wise counts do not allow closer\n",
                       result.mean_experts, o->target);
        }
        std::printf("mean experts %.4f (target %.4g) after %zu passes\n%s\n", result.mean_experts,
                    o->target, result.steps.size(), result.spec.c_str());
        return 0;
      };
    }};

}  // namespace
}  // namespace bhmoe::cli
