// bhmoe trace: every routing decision (experts, weights, counts; optionally raw router logits) for
// each token and layer of a text or id list, as a NumPy .npz archive (schema: model/trace_file.h).
#include <algorithm>
#include <iostream>

#include "cli/command.h"
#include "cli/engine_common.h"
#include "model/trace_file.h"
#include "util/file.h"

namespace bhmoe::cli {
namespace {

struct TraceOptions {
  EngineOptions engine;
  std::string text_file;
  std::string ids;
  std::string out;
  int64_t window = 512;
  bool router_logits = false;
};

CommandRegistration reg{
    "trace",
    "Routing decisions per token and layer (ids, weights, counts, optional router logits) to .npz",
    [](CLI::App& app) {
      auto o = std::make_shared<TraceOptions>();
      add_engine_options(app, o->engine);
      auto* text = app.add_option("--text-file", o->text_file, "UTF-8 text to trace (tokenised whole)");
      auto* ids = app.add_option("--ids", o->ids, "Token ids instead of a text, e.g. \"1 2 3\"");
      text->excludes(ids);
      app.add_option("--out", o->out, "Output .npz (numpy.load reads it)")->required();
      auto* window = app.add_option(
          "--window", o->window,
          "Tokens per window (default: 512, or the model's context if shorter); each window runs "
          "from an empty cache (as `bhmoe score`)");
      window->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
      app.add_flag("--router-logits", o->router_logits,
                   "Also store the raw router logits [T, L, N] (float32)");
      return [o, window]() {
        if (o->text_file.empty() && o->ids.empty()) fail("give --text-file or --ids");
        Engine engine = open_engine(o->engine);
        const std::vector<int32_t> ids =
            o->ids.empty() ? engine.model->tokenizer().encode(read_file(o->text_file))
                           : parse_ids(o->ids);
        if (ids.empty()) fail(o->ids.empty() ? "--text-file " + o->text_file : std::string("--ids"),
                              ": no tokens to trace");
        const int64_t context = engine.model->config().max_position_embeddings;
        if (window->count() > 0 && o->window > context) {
          fail("--window ", o->window, " exceeds the model's context of ", context, " tokens");
        }
        const int64_t length =
            std::min({o->window, context, static_cast<int64_t>(ids.size())});
        model::Session session(engine.model, engine.router.get(), engine.pool.get(), length);
        const model::Trace trace = model::trace_routing(session, ids, length, o->router_logits);
        model::write_trace(o->out, trace, engine.router_spec());
        int64_t selected = 0;
        for (int32_t c : trace.counts) selected += c;
        std::cerr << "wrote " << o->out << ": " << trace.num_tokens << " tokens x "
                  << trace.num_layers << " layers, max_k " << trace.max_k << ", mean experts "
                  << static_cast<double>(selected) / static_cast<double>(trace.counts.size())
                  << (o->router_logits ? ", with router logits" : "") << "; router "
                  << engine.router_spec() << "\n";
        return 0;
      };
    }};

}  // namespace
}  // namespace bhmoe::cli
