#include "experiments/runner.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <thread>

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

namespace bhmoe::experiments {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kVersion = "0.1.0";
constexpr int kCalibrationWindow = 512;
constexpr int64_t kCalibrationMaxTokens = 4096;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string command_output(const std::string& command) {
  std::string out;
  if (FILE* pipe = ::popen(command.c_str(), "r")) {
    char buffer[256];
    while (std::fgets(buffer, sizeof buffer, pipe)) out += buffer;
    ::pclose(pipe);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

std::string git_commit() {
  if (const char* env = std::getenv("BHMOE_COMMIT"); env && *env) return env;
  std::string commit = command_output("git rev-parse --short=12 HEAD 2>/dev/null");
  if (commit.empty()) return "unknown (not run from a git checkout)";
  if (!command_output("git status --porcelain --untracked-files=no 2>/dev/null").empty())
    commit += "+dirty";
  return commit;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown CPU";
}

std::string hostname() {
  char buffer[256] = {};
  if (::gethostname(buffer, sizeof buffer - 1) != 0) return "unknown";
  return buffer;
}

std::string lower(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text;
}

int64_t parameter_count(const model::ModelConfig& c) {
  int64_t D = c.hidden_size, F = c.intermediate_size, N = c.num_experts, V = c.vocab_size;
  int64_t per_layer = 4 * D * D + 4 * D + N * D + N * 3 * D * F;
  return V * D * (c.tie_word_embeddings ? 1 : 2) + c.num_layers * per_layer + D;
}

std::string params_text(int64_t n) {
  char buffer[32];
  if (n >= 1'000'000'000) {
    std::snprintf(buffer, sizeof buffer, "%.2fB", n / 1e9);
  } else if (n >= 1'000'000) {
    std::snprintf(buffer, sizeof buffer, "%.1fM", n / 1e6);
  } else {
    std::snprintf(buffer, sizeof buffer, "%.1fK", n / 1e3);
  }
  return buffer;
}

// Model identity for the rows: a fingerprint of config + tokenizer + weight file names and sizes
// (hashing multi-GB weights would cost more than many experiments).
json model_identity(const model::Model& m) {
  const model::ModelConfig& c = m.config();
  const fs::path& dir = m.dir();
  std::string material = read_file(dir / "config.json");
  if (fs::exists(dir / "tokenizer.json")) material += read_file(dir / "tokenizer.json");
  std::vector<fs::path> weights;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() == ".safetensors") weights.push_back(entry.path());
  }
  std::sort(weights.begin(), weights.end());
  for (const fs::path& w : weights)
    material += w.filename().string() + ":" + std::to_string(fs::file_size(w)) + ";";
  int64_t params = parameter_count(c);
  std::string readme = fs::exists(dir / "README.md") ? read_file(dir / "README.md") : "";
  std::string readme_lower = lower(readme.substr(0, 4000));
  bool synthetic = readme_lower.find("synthetic") != std::string::npos ||
                   readme_lower.find("random") != std::string::npos ||
                   (readme.empty() && params < 100'000'000);
  std::string provenance;
  if (!readme.empty()) {
    // The model card's first paragraph after its title.
    size_t start = readme.find("\n\n");
    std::string para = readme.substr(start == std::string::npos ? 0 : start + 2);
    para = para.substr(0, para.find("\n\n"));
    for (char& ch : para) {
      if (ch == '\n') ch = ' ';
    }
    provenance = "Model card: \"" + para.substr(0, 400) + (para.size() > 400 ? "…" : "") + "\"";
  } else {
    provenance = "No model card: presumably a random-weight checkpoint (bhmoe make-model).";
  }
  return {{"name", dir.filename().string()},
          {"dir", fs::absolute(dir).lexically_normal().string()},
          {"fingerprint", fnv1a_hex(material)},
          {"weights", m.weights_kind()},
          {"params", params},
          {"params_text", params_text(params)},
          {"num_layers", c.num_layers},
          {"num_experts", c.num_experts},
          {"top_k", c.num_experts_per_tok},
          {"hidden_size", c.hidden_size},
          {"vocab_size", c.vocab_size},
          {"native_router", c.native_router_spec()},
          {"synthetic", synthetic},
          {"small", params < 1'000'000'000},
          {"provenance", provenance}};
}

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

struct ResolvedCalibration {
  std::shared_ptr<const routing::Calibration> calibration;
  json identity = nullptr;
};

// A config ready to run: its router and the parameters the rows record.
struct PreparedRouter {
  RouterEntry entry;
  std::unique_ptr<routing::Router> router;
  std::string rule;
  json config;
  int max_k = 0, max_k_requested = 0, min_k = 1;
  double alpha = kNaN, top_p = kNaN;
  bool clamped() const { return max_k < max_k_requested; }
};

PreparedRouter prepare_router(const RouterEntry& entry, const model::ModelConfig& model_config,
                              const std::shared_ptr<const routing::Calibration>& calibration,
                              const std::string& where) {
  const int num_experts = model_config.num_experts;
  PreparedRouter p;
  p.entry = entry;
  routing::RouterSpec spec = routing::parse_router_spec(entry.spec);
  // max_k (k for top-k) beyond N cannot mean anything but "all experts": clamp and record it.
  if (spec.rule == routing::RuleKind::kTopK) {
    p.max_k_requested = spec.k;
    spec.k = std::min(spec.k, num_experts);
  } else if (spec.max_k_given || spec.rule == routing::RuleKind::kBH) {
    p.max_k_requested = spec.max_k;
    spec.max_k = std::min(spec.max_k, num_experts);
  }
  spec = routing::resolve_router_spec(spec, num_experts);
  if (p.max_k_requested == 0) p.max_k_requested = spec.max_k;
  try {
    p.router = model::make_model_router(model_config, spec, calibration);
  } catch (const Error& e) {
    fail(where, ": router '", entry.name, "' (", entry.spec, "): ", e.what());
  }
  switch (spec.rule) {
    case routing::RuleKind::kTopK:
      p.rule = "topk";
      p.max_k = spec.k;
      p.min_k = 1;
      p.config = {{"type", "topk"},
                  {"k", spec.k},
                  {"renorm", spec.renorm},
                  {"temperature", spec.temperature}};
      break;
    case routing::RuleKind::kBH:
      p.rule = "bh";
      p.max_k = spec.max_k;
      p.min_k = spec.min_k;
      p.alpha = spec.alpha;
      p.config = {{"type", "bh"},
                  {"alpha", spec.alpha},
                  {"max_k", spec.max_k},
                  {"min_k", spec.min_k},
                  {"temperature", spec.temperature},
                  {"renorm", spec.renorm},
                  {"pvalues", spec.pvalues == routing::PValueKind::kCalibrated ? "calibrated"
                                                                               : "one-minus-prob"}};
      break;
    case routing::RuleKind::kTopP:
      p.rule = "topp";
      p.max_k = spec.max_k;
      p.min_k = spec.min_k;
      p.top_p = spec.p;
      p.config = {{"type", "topp"},
                  {"p", spec.p},
                  {"max_k", spec.max_k},
                  {"min_k", spec.min_k},
                  {"temperature", spec.temperature},
                  {"renorm", spec.renorm}};
      break;
  }
  if (p.clamped()) p.config["max_k_requested"] = p.max_k_requested;
  return p;
}

ResolvedCalibration fit_and_cache(const std::shared_ptr<const model::Model>& model,
                                  kernels::ThreadPool* pool, const fs::path& text_path,
                                  const std::string& method_name, const fs::path& out_dir,
                                  const json& model_id, std::string source) {
  std::string text = read_file(text_path);
  std::string key =
      fnv1a_hex(text + "|" + model_id.value("fingerprint", "") + "|" + method_name + "|" +
                std::to_string(kCalibrationWindow) + "|" + std::to_string(kCalibrationMaxTokens));
  fs::path cache = out_dir / ("calibration-" + key + ".json");
  ResolvedCalibration r;
  if (!fs::exists(cache)) {
    routing::FitMethod method = routing::parse_fit_method(method_name);
    std::vector<int32_t> ids = model->tokenizer().encode(text);
    if (ids.size() < 2)
      fail("calibration text ", text_path.string(), " encodes to fewer than 2 tokens");
    if (static_cast<int64_t>(ids.size()) > kCalibrationMaxTokens) ids.resize(kCalibrationMaxTokens);
    model::Session session(model, nullptr, pool, kCalibrationWindow);
    const std::map<int, std::vector<float>> samples =
        model::collect_router_logits(session, ids, kCalibrationWindow);
    routing::Calibration fitted = routing::fit_calibration(samples, method);
    fitted.model = model_id.value("name", "");
    fitted.description =
        cat(routing::fit_method_name(method),
            " fit of raw router logits under native routing over ", ids.size(), " tokens of ",
            text_path.string(), " (windows of ", kCalibrationWindow, " tokens), made by bhmoe run");
    fitted.save(cache);
  }
  auto calibration = std::make_shared<routing::Calibration>(routing::Calibration::load(cache));
  r.calibration = calibration;
  // The cache's file name only: shards and resumed runs of one definition share the identity
  // whatever folder they write to.
  r.identity = {{"source", std::move(source)},
                {"path", cache.filename().string() + " (in the output folder)"},
                {"text", fs::absolute(text_path).lexically_normal().string()},
                {"method", method_name},
                {"fingerprint", fnv1a_hex(read_file(cache))},
                {"description", calibration->description}};
  return r;
}

ResolvedCalibration load_calibration_file(const fs::path& path, std::string source) {
  ResolvedCalibration r;
  auto calibration = std::make_shared<routing::Calibration>(routing::Calibration::load(path));
  r.calibration = calibration;
  r.identity = {{"source", std::move(source)},
                {"path", fs::absolute(path).lexically_normal().string()},
                {"method", "file"},
                {"fingerprint", fnv1a_hex(read_file(path))},
                {"description", calibration->description}};
  return r;
}

// Order: --calibration, the experiment's file, --calibration-text, the experiment's text, the model
// folder's calibration.json, the model folder's calibration.txt (fitted and cached).
ResolvedCalibration resolve_calibration(const RunOptions& o, const Experiment& e,
                                        const std::shared_ptr<const model::Model>& model,
                                        kernels::ThreadPool* pool, const json& model_id) {
  if (!o.calibration.empty()) return load_calibration_file(o.calibration, "--calibration");
  if (!e.calibration.file.empty())
    return load_calibration_file(e.calibration.file, "experiment file");
  if (!o.calibration_text.empty()) {
    return fit_and_cache(model, pool, o.calibration_text, e.calibration.method, o.out_dir, model_id,
                         "fitted from --calibration-text (cached)");
  }
  if (!e.calibration.text.empty()) {
    return fit_and_cache(model, pool, e.calibration.text, e.calibration.method, o.out_dir, model_id,
                         "fitted from the experiment's calibration text (cached)");
  }
  fs::path dir = model->dir();
  if (fs::is_regular_file(dir / "calibration.json")) {
    return load_calibration_file(dir / "calibration.json", "shipped with the model");
  }
  if (fs::is_regular_file(dir / "calibration.txt")) {
    return fit_and_cache(model, pool, dir / "calibration.txt", e.calibration.method, o.out_dir,
                         model_id, "fitted from the model's calibration.txt (cached)");
  }
  fail(
      "the experiment has BH configs that need a calibration, and none was found: pass "
      "--calibration "
      "FILE or --calibration-text TEXT (model folder ",
      dir.string(), " has no calibration.json or calibration.txt)");
}

class Progress {
 public:
  Progress(int mode, bool quiet, int64_t total, fs::path log)
      : bar_(mode == 1 || (mode < 0 && ::isatty(STDERR_FILENO))),
        quiet_(quiet),
        total_(total),
        log_(std::move(log)),
        start_(Clock::now()) {}

  void log_line(const std::string& line) {
    append_file_durable(log_, utc_now() + " " + line + "\n");
  }
  void message(const std::string& line) {
    log_line(line);
    if (quiet_) return;
    if (bar_ && drawn_) std::fprintf(stderr, "\r\033[K");
    std::fprintf(stderr, "%s\n", line.c_str());
    drawn_ = false;
  }
  void finished(int64_t done, const std::string& key, const ResultRow& row) {
    double elapsed = seconds_since(start_);
    double eta =
        done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total_ - done) : 0;
    char summary[256];
    if (row.ok()) {
      std::snprintf(summary, sizeof summary, "ok %.2fs experts %.2f", row.wall_time_sec,
                    row.avg_experts_per_token);
    } else {
      std::snprintf(summary, sizeof summary, "FAILED: %.160s", row.error.c_str());
    }
    std::string line = cat("[", done, "/", total_, "] ", key, " ", summary);
    log_line(line);
    if (quiet_) return;
    if (bar_) {
      int width = 30;
      int filled = total_ ? static_cast<int>(width * done / total_) : width;
      std::string bar(static_cast<size_t>(filled), '#');
      bar.resize(static_cast<size_t>(width), '.');
      if (!row.ok()) {
        std::fprintf(stderr, "\r\033[K%s\n", line.c_str());
      }
      std::fprintf(stderr, "\r\033[K[%s] %lld/%lld  %s elapsed, ETA %s  %s", bar.c_str(),
                   static_cast<long long>(done), static_cast<long long>(total_),
                   clock_text(elapsed).c_str(), clock_text(eta).c_str(), key.c_str());
      std::fflush(stderr);
      drawn_ = true;
    } else {
      std::fprintf(stderr, "%s (ETA %s)\n", line.c_str(), clock_text(eta).c_str());
    }
  }
  void done() {
    if (bar_ && drawn_ && !quiet_) std::fprintf(stderr, "\n");
    drawn_ = false;
  }

 private:
  static std::string clock_text(double seconds) {
    int s = static_cast<int>(std::lround(seconds));
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%d:%02d", s / 60, s % 60);
    return buffer;
  }
  bool bar_;
  bool quiet_;
  int64_t total_;
  fs::path log_;
  Clock::time_point start_;
  bool drawn_ = false;
};

// Runs the grid items with one Session, reusing its buffers.
class Runner {
 public:
  Runner(std::shared_ptr<const model::Model> model, kernels::ThreadPool* pool,
         const Experiment& experiment, int64_t max_tokens)
      : model_(std::move(model)),
        experiment_(experiment),
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
    routing::RoutingStats stats(mc.num_experts, config.max_k, config.min_k);
    StatsObserver observer(&stats);
    session_.reset();
    session_.set_router(config.router.get());
    session_.set_observer(&observer);
    const GenerationSettings& g = experiment_.generation;
    const model::GenerateResult result = model::generate(
        session_, ids,
        {.max_new_tokens = max_new,
         .temperature = static_cast<float>(g.temperature),
         .top_p = static_cast<float>(g.top_p),
         .seed = g.seed,
         .stop_at_eos = g.stop_at_eos},
        nullptr, std::span<float>(config_logits_.data(), static_cast<size_t>(T) * V_));
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

    // Native pass over prompt + continuation (the last token's successor is not needed): KL over
    // the prompt positions, and the continuation's NLL under native routing.
    std::vector<int32_t> sequence = ids;
    sequence.insert(sequence.end(), generated.begin(), generated.end());
    session_.reset();
    session_.set_router(nullptr);
    const int64_t native_len = T + G - 1;
    session_.prefill(std::span<const int32_t>(sequence.data(), static_cast<size_t>(native_len)),
                     native_logits_.data());
    double kl = 0;
    for (int64_t i = 0; i < T; ++i) {
      model::log_softmax(native_logits_.data() + i * V_, V_, logp_.data());
      model::log_softmax(config_logits_.data() + i * V_, V_, logq_.data());
      double sum = 0;
      for (int v = 0; v < V_; ++v) sum += std::exp(logp_[v]) * (logp_[v] - logq_[v]);
      kl += std::max(0.0, sum);
    }
    row.kl_to_native = kl / static_cast<double>(T);
    double continuation = 0;
    for (int64_t j = 0; j < G; ++j) {
      model::log_softmax(native_logits_.data() + (T - 1 + j) * V_, V_, logp_.data());
      continuation -= logp_[static_cast<size_t>(generated[static_cast<size_t>(j)])];
    }
    row.continuation_nll_native = continuation / static_cast<double>(G);

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

  void score(const PreparedRouter& config, const TextEntry& text, ResultRow& row) {
    const model::ModelConfig& mc = model_->config();
    std::vector<int32_t> ids = model_->tokenizer().encode(read_file(text.path));
    if (experiment_.scoring.max_tokens > 0 &&
        static_cast<int64_t>(ids.size()) > experiment_.scoring.max_tokens) {
      ids.resize(static_cast<size_t>(experiment_.scoring.max_tokens));
    }
    if (ids.size() < 2)
      fail("text '", text.name, "' (", text.path.string(), ") encodes to fewer than 2 tokens");
    // Never beyond the context the model was built for.
    const size_t window =
        static_cast<size_t>(std::min(experiment_.scoring.window, mc.max_position_embeddings));
    routing::RoutingStats stats(mc.num_experts, config.max_k, config.min_k);
    StatsObserver observer(&stats);
    session_.set_router(config.router.get());
    session_.set_observer(&observer);
    auto start = Clock::now();
    double nll = 0;
    int64_t scored = 0, windows = 0;
    std::span<const int32_t> all(ids);
    for (size_t begin = 0; begin < ids.size(); begin += window) {
      size_t n = std::min(window, ids.size() - begin);
      if (n < 2) break;
      for (double logp : model::score_tokens(session_, all.subspan(begin, n))) {
        nll -= logp;
        ++scored;
      }
      ++windows;
    }
    session_.set_observer(nullptr);
    row.prefill_time_sec = row.inference_time_sec = seconds_since(start);
    row.num_scored_tokens = scored;
    row.num_input_tokens = static_cast<int64_t>(ids.size());
    row.nll_mean = nll / static_cast<double>(scored);
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
    (void)windows;
    fill_stats(stats, row);
  }

 private:
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
  model::Session session_;
  int V_ = 0;
  std::vector<float> config_logits_, native_logits_;
  std::vector<double> logp_, logq_;
};

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
  if (o.shard_count < 1 || o.shard_index < 0 || o.shard_index >= o.shard_count) {
    fail("--shard ", o.shard_index, "/", o.shard_count, ": expected 0 <= I < N");
  }
  if (o.threads < 0) fail("--threads ", o.threads, ": must be >= 0");
  if (!fs::is_directory(o.model_dir)) fail("--model ", o.model_dir.string(), ": no such folder");
  if (!o.calibration.empty() && !fs::is_regular_file(o.calibration)) {
    fail("--calibration ", o.calibration.string(), ": no such file");
  }
  if (!o.calibration_text.empty() && !fs::is_regular_file(o.calibration_text)) {
    fail("--calibration-text ", o.calibration_text.string(), ": no such file");
  }
  // Everything about the experiment is checked before the model is even loaded.
  Experiment experiment = load_experiment(o.experiment, o.model_dir);
  if (o.max_new_tokens) experiment.generation.max_new_tokens = *o.max_new_tokens;
  validate_experiment(experiment);

  fs::create_directories(o.out_dir);
  const fs::path results_path = o.out_dir / "results.jsonl";
  // Existing results are read (and checked) before any expensive work, too.
  LoadedResults existing = load_results(results_path);

  int threads = o.threads > 0 ? o.threads
                              : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  auto pool = std::make_unique<kernels::ThreadPool>(threads);
  auto model = model::Model::load(o.model_dir, {.weights = o.weights});
  const model::ModelConfig& mc = model->config();
  json model_id = model_identity(*model);

  Progress progress(o.progress, o.quiet, 0, o.out_dir / "run.log");
  bool needs_calibration = false;
  for (const auto* list : {&experiment.routers, &experiment.score_routers}) {
    for (const RouterEntry& r : *list)
      needs_calibration |= routing::parse_router_spec(r.spec).uses_calibration();
  }
  ResolvedCalibration calibration;
  if (needs_calibration)
    calibration = resolve_calibration(o, experiment, model, pool.get(), model_id);

  std::vector<PreparedRouter> routers, score_routers;
  RunSummary summary;
  for (const RouterEntry& r : experiment.routers) {
    routers.push_back(prepare_router(r, mc, calibration.calibration, experiment.source));
    if (routers.back().clamped()) summary.clamped.push_back(r.name);
  }
  for (const RouterEntry& r : experiment.score_routers) {
    score_routers.push_back(prepare_router(r, mc, calibration.calibration, experiment.source));
    if (score_routers.back().clamped()) summary.clamped.push_back(r.name);
  }

  json definition = experiment_definition(experiment);
  std::string settings_hash =
      fnv1a_hex(definition.dump() + "|" + model_id.value("fingerprint", "") + "|" +
                (calibration.identity.is_object() ? calibration.identity.value("fingerprint", "")
                                                  : std::string("none")));
  std::vector<GridItem> grid = expand_grid(experiment);
  summary.grid = static_cast<int64_t>(grid.size());

  // Resume: rows of this experiment must come from the same definition, model and calibration.
  std::set<std::string> done;
  for (const ResultRow& row : existing.rows) {
    if (row.experiment != experiment.name) continue;
    std::string theirs = row.run.value("settings_hash", "");
    if (theirs != settings_hash) {
      fail(results_path.string(), " holds rows of experiment '", experiment.name,
           "' from a different definition, model or calibration (settings hash ", theirs,
           ", this run ", settings_hash, "): use another --out folder, or delete the old results");
    }
    if (row.ok()) done.insert(row.key);
  }
  if (existing.torn_tail) {
    // Cut the incomplete last line so the next append starts on a line of its own.
    std::string text = read_file(results_path);
    write_file_atomic(results_path, std::string_view(text).substr(0, existing.valid_bytes));
    progress.message(cat("resume: ignored an incomplete last line in ", results_path.string(),
                         " (an interrupted write)"));
  }

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

  int64_t max_tokens = 2;
  for (const PromptEntry& p : experiment.prompts) {
    max_tokens = std::max<int64_t>(max_tokens,
                                   static_cast<int64_t>(model->tokenizer().encode(p.text).size()) +
                                       experiment.generation.max_new_tokens);
  }
  if (!experiment.texts.empty())
    max_tokens = std::max<int64_t>(max_tokens,
                                   std::min(experiment.scoring.window, mc.max_position_embeddings));
  Runner runner(model, pool.get(), experiment, max_tokens);

  json settings = {{"experiment", experiment.name},
                   {"experiment_source", experiment.source},
                   {"max_new_tokens", experiment.generation.max_new_tokens},
                   {"temperature", experiment.generation.temperature},
                   {"top_p", experiment.generation.top_p},
                   {"seed", experiment.generation.seed},
                   {"stop_at_eos", experiment.generation.stop_at_eos},
                   {"decoding", experiment.generation.temperature == 0 ? "greedy" : "sampled"}};
  if (!experiment.texts.empty()) {
    settings["scoring_window"] = experiment.scoring.window;
    settings["scoring_max_tokens"] = experiment.scoring.max_tokens;
  }
  json run_info = {{"settings_hash", settings_hash},
                   {"commit", git_commit()},
                   {"bhmoe_version", kVersion},
                   {"host", hostname()},
                   {"cpu", cpu_model()},
                   {"hardware_threads", std::thread::hardware_concurrency()},
                   {"threads", threads},
                   {"grid_size", summary.grid},
                   {"shard", cat(o.shard_index, "/", o.shard_count)}};

  progress =
      Progress(o.progress, o.quiet, static_cast<int64_t>(todo.size()), o.out_dir / "run.log");
  progress.message(cat("bhmoe run: experiment '", experiment.name, "' (", experiment.source,
                       "), model ", model_id.value("name", ""), " (",
                       model_id.value("params_text", ""), " params, ", mc.num_layers, " layers, ",
                       mc.num_experts, " experts, top-", mc.num_experts_per_tok, "), ", threads,
                       " threads; grid ", summary.grid, ", shard ", o.shard_index, "/",
                       o.shard_count, ": ", summary.in_shard, " experiments, ", summary.already,
                       " already done, ", todo.size(), " to run"));
  if (calibration.identity.is_object()) {
    progress.message(cat("calibration: ", calibration.identity.value("source", ""), ": ",
                         calibration.identity.value("path", "")));
  }
  for (const std::string& name : summary.clamped) {
    progress.message(cat("note: config '", name, "' asks for more experts than the model's ",
                         mc.num_experts, ": clamped to ", mc.num_experts,
                         " (recorded in the rows)"));
  }

  for (const GridItem* item : todo) {
    if (o.limit >= 0 && summary.ran >= o.limit) break;
    const PreparedRouter& config =
        item->generate ? routers[item->router] : score_routers[item->router];
    ResultRow row;
    row.key = item->key;
    row.index = item->index;
    row.experiment = experiment.name;
    row.kind = item->generate ? "generate" : "score_text";
    row.config_name = config.entry.name;
    row.router = config.router->spec();
    row.rule = config.rule;
    row.config = config.config;
    row.max_k = config.max_k;
    row.max_k_requested = config.max_k_requested;
    row.min_k = config.min_k;
    row.alpha = config.alpha;
    row.top_p = config.top_p;
    if (item->generate) {
      const PromptEntry& p = experiment.prompts[item->item];
      row.prompt_id = p.id;
      row.prompt_text = p.text;
      row.prompt_category = p.category;
      row.prompt_description = p.description;
    } else {
      const TextEntry& t = experiment.texts[item->item];
      row.text_name = t.name;
      row.text_path = fs::absolute(t.path).lexically_normal().string();
    }
    row.model = model_id;
    row.calibration = config.router->uses_calibration() ? calibration.identity : json(nullptr);
    row.settings = settings;
    row.run = run_info;
    auto start = Clock::now();
    try {
      if (item->generate) {
        runner.generate(config, experiment.prompts[item->item], row);
      } else {
        runner.score(config, experiment.texts[item->item], row);
      }
    } catch (const std::exception& e) {
      row.status = "error";
      row.error = e.what();
      ++summary.failed;
    }
    row.wall_time_sec = seconds_since(start);
    row.timestamp = utc_now();
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

MergeSummary merge_results(const fs::path& out_dir, const std::vector<fs::path>& shard_dirs,
                           bool report) {
  if (shard_dirs.empty()) fail("merge: no shard folders given");
  MergeSummary summary;
  std::map<std::string, ResultRow> by_key;
  std::map<std::string, std::string> hash_of_experiment;
  std::map<std::string, int64_t> grid_size;
  for (const fs::path& dir : shard_dirs) {
    fs::path path = dir / "results.jsonl";
    if (!fs::is_regular_file(path)) fail("merge: ", path.string(), " does not exist");
    if (fs::equivalent(dir, out_dir))
      fail("merge: the output folder ", out_dir.string(), " is also a shard folder");
    LoadedResults loaded = load_results(path);
    ++summary.shards;
    if (loaded.torn_tail)
      summary.warnings.push_back(cat(path.string(), ": ignored an incomplete last line"));
    for (ResultRow& row : loaded.rows) {
      std::string hash = row.run.value("settings_hash", "");
      auto [it, inserted] = hash_of_experiment.try_emplace(row.experiment, hash);
      if (!inserted && it->second != hash) {
        fail("merge: ", path.string(), " holds experiment '", row.experiment,
             "' with a different definition, model or calibration (settings hash ", hash, " vs ",
             it->second, ")");
      }
      if (row.run.contains("grid_size") && row.run["grid_size"].is_number_integer()) {
        grid_size[row.experiment] = row.run["grid_size"].get<int64_t>();
      }
      auto existing = by_key.find(row.key);
      if (existing == by_key.end()) {
        by_key.emplace(row.key, std::move(row));
      } else {
        ++summary.duplicates;
        if (!existing->second.ok() && row.ok())
          existing->second = std::move(row);  // a retry that worked
      }
    }
  }
  std::vector<ResultRow> rows;
  for (auto& [key, row] : by_key) rows.push_back(std::move(row));
  rows = dedupe_and_sort(std::move(rows));
  for (const auto& [experiment, size] : grid_size) {
    int64_t have = std::count_if(rows.begin(), rows.end(),
                                 [&](const ResultRow& r) { return r.experiment == experiment; });
    if (have < size) {
      summary.warnings.push_back(
          cat("experiment '", experiment, "': ", have, " of ", size,
              " grid items present; the missing ones were not run by any shard"));
    }
  }
  fs::create_directories(out_dir);
  std::string text;
  for (const ResultRow& row : rows) text += to_jsonl_line(row) + "\n";
  write_file_atomic(out_dir / "results.jsonl", text);
  summary.rows = static_cast<int64_t>(rows.size());
  std::string log = utc_now() + cat(" bhmoe merge: ", summary.rows, " rows from ", summary.shards,
                                    " shards (", summary.duplicates, " duplicates)\n");
  for (const std::string& w : summary.warnings) log += utc_now() + " warning: " + w + "\n";
  append_file_durable(out_dir / "run.log", log);
  if (report) write_outputs(out_dir, std::move(rows));
  return summary;
}

}  // namespace bhmoe::experiments
