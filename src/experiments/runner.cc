#include "experiments/runner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <thread>

#include "experiments/calibration_source.h"
#include "experiments/progress.h"
#include "experiments/provenance.h"
#include "experiments/report.h"
#include "experiments/results.h"
#include "kernels/thread_pool.h"
#include "model/engine.h"
#include "model/verbs.h"
#include "routing/calibration.h"
#include "routing/router.h"
#include "routing/spec.h"
#include "routing/stats.h"
#include "util/error.h"
#include "util/file.h"
#include "util/gguf.h"
#include "util/time.h"

namespace bhmoe::experiments {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// Feeds every routing decision to RoutingStats.
class StatsObserver final : public model::RouterObserver {
 public:
  explicit StatsObserver(routing::RoutingStats* stats) : stats_(stats) {}
  void on_route(const model::RouterEvent& event) override {
    stats_->add(event.layer, event.ids, event.weights, event.count);
  }

 private:
  routing::RoutingStats* stats_;
};

// A config ready to run: its router and the RouterConfig its rows record.
struct PreparedRouter {
  std::unique_ptr<routing::Router> router;
  RouterConfig recorded;
};

PreparedRouter prepare_router(const RouterEntry& entry, const model::ModelConfig& model_config,
                              const ResolvedCalibration& calibration, const std::string& where) {
  const int num_experts = model_config.num_experts;
  PreparedRouter p;
  RouterConfig& r = p.recorded;
  routing::RouterSpec spec = routing::parse_router_spec(entry.spec);
  // max_k (k for top-k) beyond N cannot mean anything but "all experts": clamp and record it.
  if (spec.rule == routing::RuleKind::kTopK) {
    r.max_k_requested = spec.k;
    spec.k = std::min(spec.k, num_experts);
  } else if (spec.rule != routing::RuleKind::kEntropy &&
             (spec.max_k_given || spec.rule == routing::RuleKind::kBH ||
              spec.rule == routing::RuleKind::kHC)) {
    r.max_k_requested = spec.max_k;
    spec.max_k = std::min(spec.max_k, num_experts);
  }
  spec = routing::resolve_router_spec(spec, num_experts);
  if (r.max_k_requested == 0) r.max_k_requested = routing::max_count(spec);
  try {
    p.router =
        model::make_model_router(model_config, spec, calibration.calibration, calibration.path);
  } catch (const Error& e) {
    fail(where, ": router '", entry.name, "' (", entry.spec, "): ", e.what());
  }
  r.config_name = entry.name;
  r.router = p.router->spec();
  r.config = routing::to_json(spec);
  r.rule = r.config.at("type").get<std::string>();
  switch (spec.rule) {
    case routing::RuleKind::kTopK:
      r.max_k = spec.k;
      r.min_k = 1;
      break;
    case routing::RuleKind::kBH:
      r.max_k = spec.max_k;
      r.min_k = spec.min_k;
      r.alpha = spec.alpha;
      break;
    case routing::RuleKind::kTopP:
      r.max_k = spec.max_k;
      r.min_k = spec.min_k;
      r.top_p = spec.p;
      break;
    case routing::RuleKind::kSkip:
    case routing::RuleKind::kThreshold:
    case routing::RuleKind::kHC:
    case routing::RuleKind::kEntropy:
      r.max_k = routing::max_count(spec);
      r.min_k = routing::min_count(spec);
      break;
  }
  if (r.clamped()) r.config["max_k_requested"] = r.max_k_requested;
  return p;
}

// The scoring window the runner actually uses: the experiment's, never beyond the context the
// model was built for.
int64_t effective_window(const Experiment& experiment, const model::ModelConfig& mc) {
  return std::min(experiment.scoring.window, mc.max_position_embeddings);
}

// Runs the grid items with one Session, reusing its buffers.
class Runner {
 public:
  Runner(std::shared_ptr<const model::Model> model, kernels::ThreadPool* pool,
         const Experiment& experiment, int64_t max_tokens)
      : model_(std::move(model)),
        experiment_(experiment),
        pool_(pool),
        max_tokens_(max_tokens),
        session_(model_, nullptr, pool, max_tokens) {
    V_ = model_->config().vocab_size;
  }

  void generate(const PreparedRouter& config, const PromptEntry& prompt, ResultRow& row) {
    const model::ModelConfig& mc = model_->config();
    std::vector<int32_t> ids = model_->tokenizer().encode(prompt.text);
    if (ids.empty()) fail("prompt '", prompt.id, "' encodes to no tokens");
    const int64_t T = static_cast<int64_t>(ids.size());
    const int max_new = experiment_.generation.max_new_tokens;
    ensure_buffers(T + max_new);
    routing::RoutingStats stats(mc.num_experts, config.recorded.max_k, config.recorded.min_k);
    StatsObserver observer(&stats);
    session_.reset();
    session_.set_router(config.router.get());
    session_.set_observer(&observer);
    const model::GenerateResult result =
        model::generate(session_, ids, experiment_.generation, nullptr,
                        std::span<float>(config_logits_.data(), static_cast<size_t>(T) * V_));
    session_.set_observer(nullptr);
    const std::vector<int32_t>& generated = result.tokens;
    row.prefill_time_sec = result.prefill_seconds;
    row.decode_time_sec = result.decode_seconds;
    row.stopped_at_eos = result.stopped_at_eos;
    row.inference_time_sec = row.prefill_time_sec + row.decode_time_sec;
    const int64_t G = static_cast<int64_t>(generated.size());

    // Quality under this config: the prompt's NLL (rows 0..T-2 predict tokens 1..T-1).
    double nll = 0;
    for (int64_t i = 0; i + 1 < T; ++i) {
      model::log_softmax(config_logits_.data() + i * V_, V_, logp_.data());
      nll -= logp_[static_cast<size_t>(ids[static_cast<size_t>(i + 1)])];
    }
    row.prompt_nll = T > 1 ? nll / static_cast<double>(T - 1) : kNaN;

    // Native routing over the same prompt and continuation: KL over the prompt positions, and the
    // continuation's NLL (the native model's surprise at what this config generated).
    const NativePrompt& native = native_prompt(ids);
    double kl = 0;
    for (int64_t i = 0; i < T; ++i) {
      const double* logp = native.logp.data() + i * V_;
      const double* p = native.prob.data() + i * V_;
      model::log_softmax(config_logits_.data() + i * V_, V_, logq_.data());
      double sum = 0;
      for (int v = 0; v < V_; ++v) sum += p[v] * (logp[v] - logq_[v]);
      kl += std::max(0.0, sum);
    }
    row.kl_to_native = kl / static_cast<double>(T);
    row.continuation_nll_native =
        native_continuation_nll(generated) / static_cast<double>(G);

    std::vector<int32_t> text_tokens = generated;
    if (row.stopped_at_eos && !text_tokens.empty()) text_tokens.pop_back();
    row.generated_text = model_->tokenizer().decode(text_tokens);
    row.full_text = prompt.text + row.generated_text;
    row.num_input_tokens = T;
    row.num_output_tokens = G;
    row.tokens_per_sec =
        row.inference_time_sec > 0 ? static_cast<double>(G) / row.inference_time_sec : 0;
    fill_stats(stats, row);
  }

  // One untimed forward pass before the first timed experiment of this process, so that the first
  // config is not timed cold (page faults of mapped weights, caches, thread start-up: the first
  // config ran 10× slower than the rest without it). Every expert is selected (top-k with k = N),
  // so every expert's weights are touched once, and one decode step follows the prefill so the
  // decode path is warm too. Nothing is recorded: rows start timing after this returns. `ids` is
  // cut to what the session's KV cache holds (and to kWarmUpTokens); returns the tokens prefilled.
  static constexpr int64_t kWarmUpTokens = 32;
  int64_t warm_up(std::vector<int32_t> ids) {
    const int64_t fits = std::min<int64_t>(kWarmUpTokens, session_.max_tokens() - 1);
    if (static_cast<int64_t>(ids.size()) > fits) ids.resize(static_cast<size_t>(std::max<int64_t>(fits, 0)));
    if (ids.empty()) return 0;
    const int num_experts = model_->config().num_experts;
    const std::unique_ptr<routing::Router> every =
        routing::make_router("topk:k=" + std::to_string(num_experts), num_experts);
    session_.reset();
    session_.set_observer(nullptr);
    session_.set_router(every.get());
    session_.prefill(ids);
    session_.decode(ids.back());
    session_.reset();
    session_.set_router(nullptr);
    return static_cast<int64_t>(ids.size());
  }

  void score(const PreparedRouter& config, const TextEntry& text, ResultRow& row) {
    const model::ModelConfig& mc = model_->config();
    // Every config of a text runs back to back (text-major), so its tokens are encoded once.
    if (text_ids_path_ != text.path) {
      text_ids_ = model_->tokenizer().encode(read_file(text.path));
      text_ids_path_ = text.path;
    }
    std::vector<int32_t> ids = text_ids_;
    if (experiment_.scoring.max_tokens > 0 &&
        static_cast<int64_t>(ids.size()) > experiment_.scoring.max_tokens) {
      ids.resize(static_cast<size_t>(experiment_.scoring.max_tokens));
    }
    if (ids.size() < 2)
      fail("text '", text.name, "' (", text.path.string(), ") encodes to fewer than 2 tokens");
    // Never beyond the context the model was built for.
    const size_t window = static_cast<size_t>(effective_window(experiment_, mc));
    routing::RoutingStats stats(mc.num_experts, config.recorded.max_k, config.recorded.min_k);
    StatsObserver observer(&stats);
    session_.set_router(config.router.get());
    session_.set_observer(&observer);
    auto start = Clock::now();
    const std::vector<model::WindowScore> windows =
        model::score_windows(session_, ids, static_cast<int64_t>(window));
    const model::ScoreTotals totals = model::total_score(windows);
    for (const model::WindowScore& w : windows) {
      row.window_tokens.push_back(w.tokens);
      row.window_nll_sum.push_back(w.nll_sum);
      row.window_experts.push_back(w.experts_selected);
    }
    session_.set_observer(nullptr);
    row.prefill_time_sec = row.inference_time_sec = seconds_since(start);
    row.num_scored_tokens = totals.predicted;
    row.num_input_tokens = static_cast<int64_t>(ids.size());
    row.nll_mean = totals.mean_nll();
    row.perplexity = std::exp(row.nll_mean);
    row.tokens_per_sec =
        row.inference_time_sec > 0 ? static_cast<double>(ids.size()) / row.inference_time_sec : 0;
    // Text-independent, so one protocol line describes every row of the experiment.
    row.protocol =
        cat("token-weighted perplexity (exp of the mean NLL over every scored token of every "
            "text); each text ",
            experiment_.scoring.max_tokens > 0
                ? cat("cut to its first ", experiment_.scoring.max_tokens, " tokens, ")
                : std::string(),
            "split into non-overlapping windows of ", window,
            " tokens, each scored from an empty cache (a window's first token is context only, not "
            "scored); the config routes every layer");
    fill_stats(stats, row);
  }

 private:
  // Native routing's pass over one prompt, shared by every config run on it (the shard runs
  // prompt-major): the KV cache after the prompt stays in native_session_, with the native
  // log-probabilities at every prompt position. A config's continuation extends that prefix
  // (Session::truncate rewinds to it), and a continuation seen before (many configs generate
  // what native routing does) reuses its NLL.
  struct NativePrompt {
    std::vector<int32_t> ids;  // the prompt's tokens: what the pass depends on
    std::vector<double> logp;  // [T, V] native log-probabilities after each prompt position
    std::vector<double> prob;  // [T, V] exp(logp), the KL's weights
    std::map<std::vector<int32_t>, double> continuation_nll_sum;  // by continuation
  };

  const NativePrompt& native_prompt(const std::vector<int32_t>& ids) {
    if (native_session_ && native_.ids == ids) return native_;
    if (!native_session_) native_session_.emplace(model_, nullptr, pool_, max_tokens_);
    const int64_t T = static_cast<int64_t>(ids.size());
    native_.ids = ids;
    native_.continuation_nll_sum.clear();
    native_.logp.resize(static_cast<size_t>(T) * V_);
    native_session_->reset();
    native_session_->prefill(ids, native_logits_.data());
    for (int64_t i = 0; i < T; ++i)
      model::log_softmax(native_logits_.data() + i * V_, V_, native_.logp.data() + i * V_);
    native_.prob.resize(native_.logp.size());
    for (size_t i = 0; i < native_.logp.size(); ++i) native_.prob[i] = std::exp(native_.logp[i]);
    return native_;
  }

  // Sum over the continuation of -log p_native(token), given native_prompt() for its prompt: the
  // first token from the prompt's last position, the rest from one prefill of the continuation
  // (its last token's successor is not needed).
  double native_continuation_nll(const std::vector<int32_t>& generated) {
    if (generated.empty()) return kNaN;
    auto [it, added] = native_.continuation_nll_sum.try_emplace(generated, 0.0);
    if (!added) return it->second;
    const int64_t T = static_cast<int64_t>(native_.ids.size());
    const int64_t G = static_cast<int64_t>(generated.size());
    double sum = -native_.logp[static_cast<size_t>((T - 1) * V_ + generated[0])];
    if (G > 1) {
      native_session_->truncate(T);
      native_session_->prefill(
          std::span<const int32_t>(generated.data(), static_cast<size_t>(G - 1)),
          native_logits_.data());
      for (int64_t j = 1; j < G; ++j) {
        model::log_softmax(native_logits_.data() + (j - 1) * V_, V_, logp_.data());
        sum -= logp_[static_cast<size_t>(generated[static_cast<size_t>(j)])];
      }
    }
    it->second = sum;
    return sum;
  }

  void ensure_buffers(int64_t tokens) {
    size_t need = static_cast<size_t>(tokens) * static_cast<size_t>(V_);
    if (config_logits_.size() < need) config_logits_.resize(need);
    if (native_logits_.size() < need) native_logits_.resize(need);
    if (logp_.size() < static_cast<size_t>(V_)) {
      logp_.resize(static_cast<size_t>(V_));
      logq_.resize(static_cast<size_t>(V_));
    }
  }

  static void fill_stats(const routing::RoutingStats& stats, ResultRow& row) {
    routing::CountStats counts = stats.counts();
    row.num_routing_events = counts.tokens;
    row.avg_experts_per_token = counts.mean_experts;
    row.std_experts_per_token = counts.std_experts;
    row.min_experts = counts.min_experts;
    row.max_experts = counts.max_experts;
    row.pct_at_ceiling = counts.pct_at_ceiling;
    row.pct_at_floor = counts.pct_at_floor;
    row.weight_entropy = stats.mean_weight_entropy();
    routing::Utilisation util = stats.utilisation();
    row.expert_utilization_cv = util.used_experts ? util.cv : kNaN;
    row.expert_utilization_max_min_ratio = util.used_experts ? util.max_min_ratio : kNaN;
    std::vector<int> layers = stats.layers();
    row.num_layers = static_cast<int>(layers.size());
    row.per_layer_mean_experts.assign(layers.empty() ? 0 : static_cast<size_t>(layers.back() + 1),
                                      kNaN);
    row.count_histogram.assign(static_cast<size_t>(stats.max_k() + 1), 0);
    for (int layer : layers) {
      row.per_layer_mean_experts[static_cast<size_t>(layer)] = stats.counts(layer).mean_experts;
      for (int32_t c : stats.token_counts(layer)) {
        if (static_cast<size_t>(c) >= row.count_histogram.size())
          row.count_histogram.resize(static_cast<size_t>(c) + 1, 0);
        ++row.count_histogram[static_cast<size_t>(c)];
      }
    }
  }

 private:
  std::shared_ptr<const model::Model> model_;
  const Experiment& experiment_;
  kernels::ThreadPool* pool_;
  int64_t max_tokens_;
  model::Session session_;
  std::optional<model::Session> native_session_;  // created by the first generate row
  NativePrompt native_;
  fs::path text_ids_path_;  // the text whose tokens text_ids_ holds
  std::vector<int32_t> text_ids_;
  int V_ = 0;
  std::vector<float> config_logits_, native_logits_;
  std::vector<double> logp_, logq_;
};

void check_options(const RunOptions& o) {
  if (o.shard_count < 1 || o.shard_index < 0 || o.shard_index >= o.shard_count) {
    fail("--shard ", o.shard_index, "/", o.shard_count, ": expected 0 <= I < N");
  }
  if (o.threads < 0) fail("--threads ", o.threads, ": must be >= 0");
  try {
    if (!is_gguf_file(o.model_dir)) require_directory(o.model_dir);
  } catch (const Error& e) {
    fail("--model: ", e.what());
  }
  if (!o.calibration.empty() && !fs::is_regular_file(o.calibration)) {
    fail("--calibration ", o.calibration.string(), ": no such file");
  }
  if (!o.calibration_text.empty() && !fs::is_regular_file(o.calibration_text)) {
    fail("--calibration-text ", o.calibration_text.string(), ": no such file");
  }
}

// The experiment's routers, ready to run; configs whose max_k was clamped to N are added to
// `clamped`.
std::vector<PreparedRouter> prepare_routers(const std::vector<RouterEntry>& entries,
                                            const model::ModelConfig& mc,
                                            const ResolvedCalibration& calibration,
                                            const std::string& where,
                                            std::vector<std::string>& clamped) {
  std::vector<PreparedRouter> routers;
  for (const RouterEntry& r : entries) {
    routers.push_back(prepare_router(r, mc, calibration, where));
    if (routers.back().recorded.clamped()) clamped.push_back(r.name);
  }
  return routers;
}

// Keys of this experiment's finished rows. Rows of the experiment must come from the same
// definition, model and calibration (settings_hash); a torn last line (an interrupted write) is cut
// so the next append starts on a line of its own.
std::set<std::string> finished_keys(const LoadedResults& existing, const fs::path& results_path,
                                    const std::string& experiment,
                                    const std::string& settings_hash, Progress& progress) {
  std::set<std::string> done;
  for (const ResultRow& row : existing.rows) {
    if (row.experiment != experiment) continue;
    std::string theirs = row.run.value("settings_hash", "");
    if (theirs != settings_hash) {
      fail(results_path.string(), " holds rows of experiment '", experiment,
           "' from a different definition, model or calibration (settings hash ", theirs,
           ", this run ", settings_hash, "): use another --out folder, or delete the old results");
    }
    if (row.ok()) done.insert(row.key);
  }
  if (existing.torn_tail) {
    std::string text = read_file(results_path);
    write_file_atomic(results_path, std::string_view(text).substr(0, existing.valid_bytes));
    progress.message(cat("resume: ignored an incomplete last line in ", results_path.string(),
                         " (an interrupted write)"));
  }
  return done;
}

// The session's KV cache: the longest prompt plus the new tokens, or the scoring window. Every
// prompt with its new tokens must fit the model's context: a prompt that does not (a 100 KB prompt
// file, say) is an error naming it before any work, not a giant KV cache.
int64_t session_tokens(const Experiment& experiment, const model::Model& model) {
  int64_t max_tokens = 2;
  const int64_t context = model.config().max_position_embeddings;
  for (const PromptEntry& p : experiment.prompts) {
    const int64_t prompt_tokens = static_cast<int64_t>(model.tokenizer().encode(p.text).size());
    if (prompt_tokens + experiment.generation.max_new_tokens > context) {
      fail(experiment.source, ": prompt '", p.id, "' is ", prompt_tokens, " tokens; with ",
           experiment.generation.max_new_tokens, " new tokens that exceeds the model's context of ",
           context, " tokens (max_position_embeddings)");
    }
    max_tokens =
        std::max<int64_t>(max_tokens, prompt_tokens + experiment.generation.max_new_tokens);
  }
  if (!experiment.texts.empty()) {
    max_tokens = std::max<int64_t>(max_tokens, effective_window(experiment, model.config()));
  }
  return max_tokens;
}

// The generation and scoring settings every row of the experiment records. scoring_window is the
// window actually used (the protocol line of each row states the same figure); when the model's
// context cut it, scoring_window_requested keeps the experiment's.
json run_settings(const Experiment& experiment, const model::ModelConfig& mc) {
  json settings = {{"experiment", experiment.name},
                   {"experiment_source", experiment.source},
                   {"max_new_tokens", experiment.generation.max_new_tokens},
                   {"temperature", experiment.generation.temperature},
                   {"top_p", experiment.generation.top_p},
                   {"seed", experiment.generation.seed},
                   {"stop_at_eos", experiment.generation.stop_at_eos},
                   {"decoding", experiment.generation.temperature == 0 ? "greedy" : "sampled"}};
  if (!experiment.texts.empty()) {
    const int64_t window = effective_window(experiment, mc);
    settings["scoring_window"] = window;
    if (window != experiment.scoring.window)
      settings["scoring_window_requested"] = experiment.scoring.window;
    settings["scoring_max_tokens"] = experiment.scoring.max_tokens;
  }
  return settings;
}

// A row with everything that identifies it filled in; the Runner adds the measurements.
ResultRow row_for(const GridItem& item, const PreparedRouter& config,
                  const Experiment& experiment) {
  ResultRow row;
  row.key = item.key;
  row.index = item.index;
  row.experiment = experiment.name;
  row.kind = item.generate ? "generate" : "score_text";
  static_cast<RouterConfig&>(row) = config.recorded;
  if (item.generate) {
    const PromptEntry& p = experiment.prompts[item.item];
    row.prompt_id = p.id;
    row.prompt_text = p.text;
    row.prompt_category = p.category;
    row.prompt_description = p.description;
  } else {
    const TextEntry& t = experiment.texts[item.item];
    row.text_name = t.name;
    row.text_path = fs::absolute(t.path).lexically_normal().string();
  }
  return row;
}

// What every row of a run records beside its measurements.
struct RunContext {
  json model_id;
  ResolvedCalibration calibration;
  json settings;  // run_settings
  json run_info;  // host, settings hash, threads, grid, shard, warm-up
};

bool experiment_uses_calibration(const Experiment& experiment) {
  for (const auto* list : {&experiment.routers, &experiment.score_routers}) {
    for (const RouterEntry& r : *list) {
      if (routing::parse_router_spec(r.spec).uses_calibration()) return true;
    }
  }
  return false;
}

// What resume and merge check rows against: the experiment's definition, the model and the
// calibration.
std::string run_settings_hash(const Experiment& experiment, const RunContext& context) {
  const json& calibration = context.calibration.identity;
  return fnv1a_hex(experiment_definition(experiment).dump() + "|" +
                   context.model_id.value("fingerprint", "") + "|" +
                   (calibration.is_object() ? calibration.value("fingerprint", "")
                                            : std::string("none")));
}

// The run's first lines: what runs on what, the warm-up, the calibration, clamped configs.
void announce(Progress& progress, const Experiment& experiment, const RunContext& context,
              const model::ModelConfig& mc, int threads, const RunOptions& o,
              const RunSummary& summary, size_t to_run, const std::string& warmup_message) {
  const json& id = context.model_id;
  progress.message(cat("bhmoe run: experiment '", experiment.name, "' (", experiment.source,
                       "), model ", id.value("name", ""), " (", id.value("params_text", ""),
                       " params, ", mc.num_layers, " layers, ", mc.num_experts, " experts, top-",
                       mc.num_experts_per_tok, "), ", threads, " threads; grid ", summary.grid,
                       ", shard ", o.shard_index, "/", o.shard_count, ": ", summary.in_shard,
                       " experiments, ", summary.already, " already done, ", to_run, " to run"));
  if (!warmup_message.empty()) progress.message(warmup_message);
  const json& calibration = context.calibration.identity;
  if (calibration.is_object()) {
    progress.message(cat("calibration: ", calibration.value("source", ""), ": ",
                         calibration.value("path", "")));
  }
  for (const std::string& name : summary.clamped) {
    progress.message(cat("note: config '", name, "' asks for more experts than the model's ",
                         mc.num_experts, ": clamped to ", mc.num_experts,
                         " (recorded in the rows)"));
  }
}

// This shard's grid items not finished yet, prompt-major (and text-major): every config of a prompt
// runs back to back, so the prompt's native pass (Runner::native_prompt) is computed once per
// prompt, not once per row. Rows are appended in this order; the CSVs and the report sort them by
// grid index. Counts the shard's items and those already done into `summary`.
std::vector<const GridItem*> shard_todo(const std::vector<GridItem>& grid,
                                        const std::set<std::string>& done, const RunOptions& o,
                                        RunSummary& summary) {
  std::vector<const GridItem*> todo;
  for (const GridItem& item : grid) {
    if (item.index % o.shard_count != o.shard_index) continue;
    ++summary.in_shard;
    if (done.count(item.key)) {
      ++summary.already;
    } else {
      todo.push_back(&item);
    }
  }
  std::stable_sort(todo.begin(), todo.end(), [](const GridItem* a, const GridItem* b) {
    if (a->generate != b->generate) return a->generate;
    return a->item < b->item;
  });
  return todo;
}

// The untimed warm-up (Runner::warm_up) on the first prompt, or the start of the first text;
// recorded in the rows' run object as warmup_tokens (the caller sets 0 first, for when none runs)
// so the report can say whether the first config's timings are cold. Returns the line for the log.
std::string warm_up(Runner& runner, const Experiment& experiment, const model::Model& model,
                    json& run_info) {
  auto start = Clock::now();
  try {
    std::vector<int32_t> ids;
    if (!experiment.prompts.empty()) {
      ids = model.tokenizer().encode(experiment.prompts.front().text);
    } else if (!experiment.texts.empty()) {
      // The text's first KiB holds far more than kWarmUpTokens tokens.
      ids = model.tokenizer().encode(read_file(experiment.texts.front().path).substr(0, 1024));
    }
    const int64_t tokens = runner.warm_up(std::move(ids));
    run_info["warmup_tokens"] = tokens;
    return cat("warm-up: an untimed prefill of ", tokens, " tokens and one decode step with all ",
               model.config().num_experts, " experts selected, ", seconds_since(start),
               " s (not part of any row's timings)");
  } catch (const Error& e) {
    return cat("warm-up skipped (", e.what(), "): the first config's timings run cold");
  }
}

// Runs one grid item into its row; a failure is recorded in the row (status "error"), not thrown.
ResultRow run_item(Runner& runner, const GridItem& item, const PreparedRouter& config,
                   const Experiment& experiment, const RunContext& context, RunSummary& summary) {
  ResultRow row = row_for(item, config, experiment);
  row.model = context.model_id;
  row.calibration = config.router->uses_calibration() ? context.calibration.identity : json(nullptr);
  row.settings = context.settings;
  row.run = context.run_info;
  auto start = Clock::now();
  try {
    if (item.generate) {
      runner.generate(config, experiment.prompts[item.item], row);
    } else {
      runner.score(config, experiment.texts[item.item], row);
    }
  } catch (const std::exception& e) {
    row.status = "error";
    row.error = e.what();
    ++summary.failed;
  }
  row.wall_time_sec = seconds_since(start);
  row.timestamp = utc_now();
  return row;
}

}  // namespace

void parse_shard(const std::string& text, int& index, int& count) {
  auto slash = text.find('/');
  auto bad = [&]() {
    fail("--shard '", text, "': expected I/N with 0 <= I < N (0-based, e.g. 0/4 .. 3/4)");
  };
  if (slash == std::string::npos) bad();
  try {
    size_t used_i = 0, used_n = 0;
    std::string i_text = text.substr(0, slash), n_text = text.substr(slash + 1);
    index = std::stoi(i_text, &used_i);
    count = std::stoi(n_text, &used_n);
    if (used_i != i_text.size() || used_n != n_text.size()) bad();
  } catch (const std::logic_error&) {
    bad();
  }
  if (count < 1 || index < 0 || index >= count) bad();
}

RunSummary run_experiments(const RunOptions& o) {
  auto wall_start = Clock::now();
  check_options(o);
  // Everything about the experiment, and the results already there, is checked before the model is
  // even loaded.
  Experiment experiment = load_experiment(o.experiment, o.model_dir);
  if (o.max_new_tokens) experiment.generation.max_new_tokens = *o.max_new_tokens;
  validate_experiment(experiment);
  try {
    ensure_directory(o.out_dir);
  } catch (const Error& e) {
    fail("--out: ", e.what());
  }
  // Held until the run returns: a second run on this folder fails here, before reading or writing
  // anything in it (results.jsonl, the calibration cache, run.log).
  const DirectoryLock lock(o.out_dir);
  const fs::path results_path = o.out_dir / "results.jsonl";
  LoadedResults existing = load_results(results_path);

  int threads = o.threads > 0 ? o.threads
                              : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  auto pool = std::make_unique<kernels::ThreadPool>(threads);
  auto model = model::Model::load(o.model_dir, {.weights = o.weights});
  const model::ModelConfig& mc = model->config();
  Progress progress(o.progress, o.quiet, o.out_dir / "run.log");

  RunContext context;
  context.model_id = model_identity(*model);
  if (experiment_uses_calibration(experiment))
    context.calibration = resolve_calibration(o, experiment, model, pool.get(), context.model_id);
  RunSummary summary;
  const std::vector<PreparedRouter> routers = prepare_routers(
      experiment.routers, mc, context.calibration, experiment.source, summary.clamped);
  const std::vector<PreparedRouter> score_routers = prepare_routers(
      experiment.score_routers, mc, context.calibration, experiment.source, summary.clamped);

  const std::string settings_hash = run_settings_hash(experiment, context);
  const std::vector<GridItem> grid = expand_grid(experiment);
  summary.grid = static_cast<int64_t>(grid.size());
  const std::vector<const GridItem*> todo = shard_todo(
      grid, finished_keys(existing, results_path, experiment.name, settings_hash, progress), o,
      summary);

  Runner runner(model, pool.get(), experiment, session_tokens(experiment, *model));
  context.settings = run_settings(experiment, mc);
  context.run_info = host_identity();
  context.run_info.update({{"settings_hash", settings_hash},
                           {"threads", threads},
                           {"grid_size", summary.grid},
                           {"shard", cat(o.shard_index, "/", o.shard_count)}});
  context.run_info["warmup_tokens"] = 0;
  const std::string warmup_message = !todo.empty() && o.limit != 0
                                         ? warm_up(runner, experiment, *model, context.run_info)
                                         : std::string();

  progress.start(static_cast<int64_t>(todo.size()));
  announce(progress, experiment, context, mc, threads, o, summary, todo.size(), warmup_message);
  for (const GridItem* item : todo) {
    if (o.limit >= 0 && summary.ran >= o.limit) break;
    const PreparedRouter& config =
        item->generate ? routers[item->router] : score_routers[item->router];
    ResultRow row = run_item(runner, *item, config, experiment, context, summary);
    // A weight file changed while the row ran: the row may mix two files' weights, so it is not
    // written and the run stops (rows written so far are intact and a rerun resumes).
    model->require_weight_files_unchanged();
    append_file_durable(results_path, to_jsonl_line(row) + "\n");
    ++summary.ran;
    progress.finished(summary.ran, row.key, row);
  }
  progress.done();
  summary.remaining = summary.in_shard - summary.already - summary.ran;
  summary.seconds = seconds_since(wall_start);
  progress.log_line(cat("run finished: ", summary.ran, " run (", summary.failed, " failed), ",
                        summary.already, " already done, ", summary.remaining, " remaining; ",
                        summary.seconds, " s"));
  if (o.report) {
    LoadedResults all = load_results(results_path);
    write_outputs(o.out_dir, std::move(all.rows));
  }
  return summary;
}

}  // namespace bhmoe::experiments
