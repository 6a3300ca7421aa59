// bhmoe logits: float32 [T, V] logits at every position of --ids, from one prefill, as .npy.
#include <algorithm>
#include <iostream>

#include "cli/command.h"
#include "cli/engine_common.h"
#include "model/trace_file.h"
#include "util/npy.h"

namespace bhmoe::cli {
namespace {

struct LogitsOptions {
  EngineOptions engine;
  std::string ids;
  std::string out;
  std::string router_logits;
};

CommandRegistration reg{
    "logits", "Logits at every position of a token-id sequence (one prefill) to a .npy file",
    [](CLI::App& app) {
      auto o = std::make_shared<LogitsOptions>();
      add_engine_options(app, o->engine);
      app.add_option("--ids", o->ids, "Token ids, e.g. \"1 2 3\"")->required();
      app.add_option("--out", o->out, "Output .npy (float32 [T, V])")->required();
      app.add_option("--router-logits", o->router_logits,
                     "Also write the raw router logits to this .npy (float32 [layers, T, experts]; "
                     "`bhmoe route --layer` and `bhmoe calibrate-logits` read it)");
      return [o]() {
        const std::vector<int32_t> ids = parse_ids(o->ids);
        Engine engine = open_engine(o->engine);
        const int V = engine.model->config().vocab_size;
        // The [T, V] output and the KV cache grow with T: bounded by the context before either is
        // allocated.
        const int64_t context = engine.model->config().max_position_embeddings;
        if (static_cast<int64_t>(ids.size()) > context) {
          fail("--ids: ", ids.size(), " tokens, more than the model's context of ", context,
               " tokens (max_position_embeddings)");
        }
        model::Session session(engine.model, engine.router.get(), engine.pool.get(),
                               static_cast<int64_t>(ids.size()));
        NpyArray array;
        array.shape = {static_cast<int64_t>(ids.size()), V};
        array.data.resize(ids.size() * static_cast<size_t>(V));
        const int64_t T = static_cast<int64_t>(ids.size());
        if (o->router_logits.empty()) {
          session.prefill(ids, array.data.data());
        } else {
          const model::Trace trace = model::trace_routing(session, ids, T, true, array.data);
          const int64_t L = trace.num_layers, N = trace.num_experts;
          NpyArray router;
          router.shape = {L, T, N};
          router.data = model::router_logits_by_layer(trace);
          write_npy(o->router_logits, router);
          std::cerr << "wrote " << o->router_logits << ": [" << L << ", " << T << ", " << N
                    << "] float32 router logits\n";
        }
        write_npy(o->out, array);
        std::cerr << "wrote " << o->out << ": [" << ids.size() << ", " << V
                  << "] float32 logits, router " << engine.router_spec() << "\n";
        return 0;
      };
    }};

}  // namespace
}  // namespace bhmoe::cli
