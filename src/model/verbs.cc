#include "model/verbs.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <optional>

#include "model/sampler.h"
#include "util/error.h"

namespace bhmoe::model {

GenerateResult generate(Session& session, std::span<const int32_t> prompt,
                        const GenerateOptions& options,
                        const std::function<void(int32_t)>& on_token,
                        std::span<float> prompt_logits) {
  using Clock = std::chrono::steady_clock;
  if (options.max_new_tokens < 0) {
    fail("generate: max_new_tokens ", options.max_new_tokens, " must be >= 0");
  }
  const Model& model = session.model();
  const int64_t V = model.config().vocab_size;
  if (!prompt_logits.empty() &&
      static_cast<int64_t>(prompt_logits.size()) < static_cast<int64_t>(prompt.size()) * V) {
    fail("generate: the prompt-logits buffer holds ", prompt_logits.size(), " floats; the ",
         prompt.size(), "-token prompt needs ", static_cast<int64_t>(prompt.size()) * V);
  }
  const int32_t vocab_limit =
      std::min<int32_t>(model.config().vocab_size, model.tokenizer().vocab_size());
  Sampler sampler(vocab_limit, static_cast<float>(options.temperature),
                  static_cast<float>(options.top_p), options.seed);
  const std::optional<int> eos = model.config().eos_token_id;
  if (session.position() + static_cast<int64_t>(prompt.size()) + options.max_new_tokens >
      session.max_tokens() + 1) {
    fail("generate: prompt (", prompt.size(), " tokens) + max_new_tokens ", options.max_new_tokens,
         " exceed the session's ", session.max_tokens(), "-token KV cache");
  }

  GenerateResult result;
  result.tokens.reserve(static_cast<size_t>(options.max_new_tokens));
  const auto start = Clock::now();
  session.prefill(prompt, prompt_logits.empty() ? nullptr : prompt_logits.data());
  const auto prefilled = Clock::now();
  result.prefill_seconds = std::chrono::duration<double>(prefilled - start).count();
  for (int i = 0; i < options.max_new_tokens; ++i) {
    const int32_t token = sampler.sample(session.last_logits());
    result.tokens.push_back(token);
    if (on_token) on_token(token);
    if (options.stop_at_eos && eos && token == *eos) {
      result.stopped_at_eos = true;
      break;
    }
    // The last token's successor is never needed, so it is not run through the model.
    if (i + 1 < options.max_new_tokens) session.decode(token);
  }
  result.decode_seconds = std::chrono::duration<double>(Clock::now() - prefilled).count();
  return result;
}

void log_softmax(const float* row, int V, double* out) {
  double max_logit = row[0];
  for (int i = 1; i < V; ++i) max_logit = std::max<double>(max_logit, row[i]);
  double sum = 0;
  for (int i = 0; i < V; ++i) sum += std::exp(static_cast<double>(row[i]) - max_logit);
  const double log_sum = std::log(sum) + max_logit;
  for (int i = 0; i < V; ++i) out[i] = static_cast<double>(row[i]) - log_sum;
}

std::vector<double> score_tokens(Session& session, std::span<const int32_t> tokens) {
  if (tokens.empty()) fail("score: empty token sequence");
  session.reset();
  const int64_t T = static_cast<int64_t>(tokens.size());
  const int V = session.model().config().vocab_size;
  // Prefill runs in pieces so the [piece, V] logits buffer stays small; the KV cache carries the
  // context between pieces, so this equals one prefill of the whole sequence.
  const int64_t piece = std::min<int64_t>(T, kMaxChunk);
  std::vector<float> logits(static_cast<size_t>(piece * V));
  std::vector<double> logp(static_cast<size_t>(V));
  std::vector<double> logprobs;
  logprobs.reserve(static_cast<size_t>(T - 1));
  for (int64_t done = 0; done < T;) {
    const int64_t n = std::min(piece, T - done);
    session.prefill(tokens.subspan(static_cast<size_t>(done), static_cast<size_t>(n)),
                    logits.data());
    for (int64_t t = 0; t < n; ++t) {
      const int64_t target = done + t + 1;
      if (target >= T) break;
      log_softmax(logits.data() + t * V, V, logp.data());
      logprobs.push_back(logp[static_cast<size_t>(tokens[static_cast<size_t>(target)])]);
    }
    done += n;
  }
  return logprobs;
}

namespace {

int64_t total_selected(const Session& session) {
  int64_t sum = 0;
  for (int64_t s : session.selected_experts_per_layer()) sum += s;
  return sum;
}

}  // namespace

std::vector<WindowScore> score_windows(Session& session, std::span<const int32_t> ids,
                                       int64_t window) {
  if (window < 2 || window > session.max_tokens()) {
    fail("score: window ", window, " is outside [2, ", session.max_tokens(),
         "] (the session's KV cache)");
  }
  if (ids.size() < 2) fail("score: ", ids.size(), " token(s); at least 2 are needed");
  std::vector<WindowScore> windows;
  const int64_t T = static_cast<int64_t>(ids.size());
  for (int64_t begin = 0; begin + 1 < T; begin += window) {
    const int64_t n = std::min(window, T - begin);
    WindowScore w;
    w.begin = begin;
    w.tokens = n;
    const int64_t selected_before = total_selected(session);
    for (double lp :
         score_tokens(session, ids.subspan(static_cast<size_t>(begin), static_cast<size_t>(n)))) {
      w.nll_sum -= lp;
    }
    w.predicted = n - 1;
    w.experts_selected = total_selected(session) - selected_before;
    windows.push_back(w);
  }
  return windows;
}

ScoreTotals total_score(std::span<const WindowScore> windows) {
  ScoreTotals totals;
  for (const WindowScore& w : windows) {
    totals.nll_sum += w.nll_sum;
    totals.predicted += w.predicted;
    ++totals.windows;
  }
  return totals;
}

namespace {

// Pools every raw router logit of each layer.
class LogitCollector final : public RouterObserver {
 public:
  explicit LogitCollector(int num_layers) {
    for (int layer = 0; layer < num_layers; ++layer) samples[layer];
  }
  void on_route(const RouterEvent& event) override {
    auto& pool = samples[event.layer];
    pool.insert(pool.end(), event.logits, event.logits + event.num_experts);
  }
  std::map<int, std::vector<float>> samples;
};

}  // namespace

std::map<int, std::vector<float>> collect_router_logits(Session& session,
                                                        std::span<const int32_t> ids,
                                                        int64_t window) {
  if (window < 1 || window > session.max_tokens()) {
    fail("collect_router_logits: window ", window, " is outside [1, ", session.max_tokens(),
         "] (the session's KV cache)");
  }
  LogitCollector collector(session.model().config().num_routed_layers());
  session.set_observer(&collector);
  try {
    for (size_t begin = 0; begin < ids.size(); begin += static_cast<size_t>(window)) {
      const size_t n = std::min(ids.size() - begin, static_cast<size_t>(window));
      session.reset();
      session.prefill(ids.subspan(begin, n));
    }
  } catch (...) {
    session.set_observer(nullptr);
    throw;
  }
  session.set_observer(nullptr);
  return std::move(collector.samples);
}

namespace {

// Writes each decision into the trace's [T, L, ...] arrays; `offset` is the sequence index of the
// current window's position 0.
class TraceRecorder final : public RouterObserver {
 public:
  explicit TraceRecorder(Trace* trace) : trace_(trace) {}
  void set_offset(int64_t offset) { offset_ = offset; }
  void on_route(const RouterEvent& event) override {
    Trace& t = *trace_;
    const int64_t row = (offset_ + event.position) * t.num_layers + event.layer;
    const int count = std::min(event.count, t.max_k);
    t.counts[static_cast<size_t>(row)] = event.count;
    int32_t* ids = t.ids.data() + row * t.max_k;
    float* weights = t.weights.data() + row * t.max_k;
    std::copy(event.ids, event.ids + count, ids);
    std::copy(event.weights, event.weights + count, weights);
    if (!t.router_logits.empty()) {
      std::copy(event.logits, event.logits + event.num_experts,
                t.router_logits.data() + row * t.num_experts);
    }
  }

 private:
  Trace* trace_;
  int64_t offset_ = 0;
};

}  // namespace

Trace trace_routing(Session& session, std::span<const int32_t> ids, int64_t window,
                    bool keep_router_logits, std::span<float> logits) {
  if (window < 1 || window > session.max_tokens()) {
    fail("trace: window ", window, " is outside [1, ", session.max_tokens(),
         "] (the session's KV cache)");
  }
  if (ids.empty()) fail("trace: empty token sequence");
  const ModelConfig& config = session.model().config();
  const size_t V = static_cast<size_t>(config.vocab_size);
  if (!logits.empty() && logits.size() < ids.size() * V) {
    fail("trace: the logits buffer holds ", logits.size(), " floats; ", ids.size(), " tokens need ",
         ids.size() * V);
  }
  Trace trace;
  trace.num_tokens = static_cast<int64_t>(ids.size());
  trace.num_layers = config.num_routed_layers();  // routing layers (engine.h)
  trace.max_k = session.router().max_count();
  trace.num_experts = config.num_experts;
  trace.tokens.assign(ids.begin(), ids.end());
  const size_t rows = static_cast<size_t>(trace.num_tokens) * static_cast<size_t>(trace.num_layers);
  trace.ids.assign(rows * static_cast<size_t>(trace.max_k), -1);
  trace.weights.assign(rows * static_cast<size_t>(trace.max_k), 0.0f);
  trace.counts.assign(rows, 0);
  if (keep_router_logits)
    trace.router_logits.assign(rows * static_cast<size_t>(trace.num_experts), 0.0f);

  TraceRecorder recorder(&trace);
  session.set_observer(&recorder);
  try {
    for (size_t begin = 0; begin < ids.size(); begin += static_cast<size_t>(window)) {
      const size_t n = std::min(ids.size() - begin, static_cast<size_t>(window));
      session.reset();
      recorder.set_offset(static_cast<int64_t>(begin));
      session.prefill(ids.subspan(begin, n), logits.empty() ? nullptr : logits.data() + begin * V);
    }
  } catch (...) {
    session.set_observer(nullptr);
    throw;
  }
  session.set_observer(nullptr);
  return trace;
}

std::unique_ptr<routing::Router> make_model_router(
    const ModelConfig& config, const routing::RouterSpec& spec,
    std::shared_ptr<const routing::Calibration> calibration, std::string_view calibration_source) {
  if (!spec.uses_calibration()) return routing::make_router(spec, config.num_experts);
  if (!calibration) {
    fail("router \"", routing::canonical_spec(spec), "\" needs a calibration (none was given)");
  }
  try {
    calibration->check_covers_model(config.num_routed_layers(), calibration_source);
  } catch (const Error& e) {
    fail("router \"", routing::canonical_spec(spec), "\": ", e.what());
  }
  for (int layer = 0; layer < config.num_routed_layers(); ++layer) {
    if (spec.rule == routing::RuleKind::kEntropy && !calibration->has_entropy_quantiles(layer)) {
      try {
        calibration->entropy_quantiles(layer);
      } catch (const Error& e) {
        fail("router \"", routing::canonical_spec(spec), "\" with calibration ", calibration_source,
             ": ", e.what());
      }
    }
  }
  return routing::make_router(spec, config.num_experts, std::move(calibration));
}

}  // namespace bhmoe::model
