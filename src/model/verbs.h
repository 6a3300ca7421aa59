// The engine's verbs: everything a frontend (the CLI, the experiment runner) does with a Session
// beyond prefill/decode. Frontends call these and keep no private copies; errors are in the
// engine's own vocabulary (a frontend that knows which flag supplied a value adds its name).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "model/config.h"
#include "model/engine.h"
#include "model/generate_options.h"
#include "routing/calibration.h"
#include "routing/router.h"
#include "routing/spec.h"

namespace bhmoe::model {

struct GenerateResult {
  std::vector<int32_t> tokens;  // the new tokens only
  double prefill_seconds = 0;
  double decode_seconds = 0;
  bool stopped_at_eos = false;
};

// Prefills `prompt` (after whatever the session holds) and generates; on_token (optional) sees each
// new token as it is produced. prompt_logits (the logits sink; optional) receives the prompt's
// [prompt.size(), V] logits from the prefill and must hold at least that many floats. The last new
// token's successor is never computed. Throws bhmoe::Error when max_new_tokens < 0 or the prompt and
// the new tokens do not fit the session's KV cache.
GenerateResult generate(Session& session, std::span<const int32_t> prompt,
                        const GenerateOptions& options,
                        const std::function<void(int32_t)>& on_token = nullptr,
                        std::span<float> prompt_logits = {});

// log p(tokens[i] | tokens[0..i)) for i = 1..T-1 (T-1 values), from one prefill of a reset session
// (run in pieces of kMaxChunk so the logits buffer stays small).
std::vector<double> score_tokens(Session& session, std::span<const int32_t> tokens);

// log-softmax of one logits row of V values into out[0..V), in double (for NLL and KL sums).
void log_softmax(const float* row, int V, double* out);

// Every raw router logit of every layer, pooled per layer (each layer present, even if empty): the
// samples a calibration is fitted from. `ids` runs in consecutive windows of `window` tokens, each
// from an empty cache, under the session's current router; the session's observer is replaced for
// the call and left unset. window must be in [1, session.max_tokens()].
std::map<int, std::vector<float>> collect_router_logits(Session& session,
                                                        std::span<const int32_t> ids,
                                                        int64_t window);

// Builds `spec` for a model with this config: N = config.num_experts, and a rule that uses a
// calibration gets `calibration`, which must be given and cover every layer of the model (the
// entropy rule: with entropy quantiles for every layer). A rule
// that uses none ignores it. Throws bhmoe::Error naming the spec and, for coverage, the layer.
std::unique_ptr<routing::Router> make_model_router(
    const ModelConfig& config, const routing::RouterSpec& spec,
    std::shared_ptr<const routing::Calibration> calibration);

}  // namespace bhmoe::model
