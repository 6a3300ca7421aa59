// The engine's verbs: everything a frontend (the CLI, the experiment runner) does with a Session
// beyond prefill/decode. Frontends call these and keep no private copies; errors are in the
// engine's own vocabulary (a frontend that knows which flag supplied a value adds its name).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string_view>
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

// One scoring window: the summed negative log-likelihood of the tokens it predicts.
struct WindowScore {
  int64_t begin = 0;      // offset of the window's first token in the scored sequence
  int64_t tokens = 0;     // tokens in the window (the first is context only)
  double nll_sum = 0;     // sum of -ln p(token | window prefix) over the tokens[1..) it predicts
  int64_t predicted = 0;  // tokens - 1
  // Experts the router selected over the window's tokens, summed over every layer (mean experts
  // per token and layer = experts_selected / (tokens * layers)).
  int64_t experts_selected = 0;
};

// The scoring protocol every frontend shares: `ids` is cut into consecutive non-overlapping windows
// of `window` tokens, each scored from an empty cache with its first token as context only. A final
// window of one token predicts nothing and is dropped. Per-window sums are kept so callers can
// resample by window (bootstrap intervals). window must be in [2, session.max_tokens()]; ids must
// hold at least 2 tokens.
std::vector<WindowScore> score_windows(Session& session, std::span<const int32_t> ids,
                                       int64_t window);

// Totals of score_windows' result: summed NLL and predicted tokens.
struct ScoreTotals {
  double nll_sum = 0;
  int64_t predicted = 0;
  int64_t windows = 0;
  double mean_nll() const { return predicted > 0 ? nll_sum / static_cast<double>(predicted) : 0; }
};
ScoreTotals total_score(std::span<const WindowScore> windows);

// A routing trace: what the router chose for every token in every layer. Arrays are row-major;
// selections are padded to max_k (the router's max_count()) with id -1 and weight 0.
struct Trace {
  int64_t num_tokens = 0;
  int num_layers = 0;
  int max_k = 0;
  int num_experts = 0;
  std::vector<int32_t> tokens;         // [T] the token ids traced
  std::vector<int32_t> ids;            // [T, L, max_k] selected experts, highest probability first
  std::vector<float> weights;          // [T, L, max_k] their mixing weights
  std::vector<int32_t> counts;         // [T, L] experts selected
  std::vector<float> router_logits;    // [T, L, N] raw router logits (when asked for), else empty
};

// Runs `ids` through the session's current router in consecutive windows of `window` tokens, each
// from an empty cache (the same windows as score_windows), and records every routing decision.
// The session's observer is replaced for the call and left unset. window must be in
// [1, session.max_tokens()]. logits (optional) receives the [T, V] vocabulary logits of every
// position (each window's rows in turn) and must then hold at least T * V floats.
Trace trace_routing(Session& session, std::span<const int32_t> ids, int64_t window,
                    bool keep_router_logits, std::span<float> logits = {});

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
// calibration gets `calibration`, which must be given and fit the model
// (Calibration::check_covers_model: every layer 0..L-1 and no layer beyond; the entropy rule also
// needs entropy quantiles for every layer). A rule that uses none ignores it. `calibration_source`
// names the calibration (its file) in messages. Throws bhmoe::Error naming the spec and, for
// coverage, the calibration and the layer.
std::unique_ptr<routing::Router> make_model_router(
    const ModelConfig& config, const routing::RouterSpec& spec,
    std::shared_ptr<const routing::Calibration> calibration,
    std::string_view calibration_source = "(given in memory)");

}  // namespace bhmoe::model
