// One experiment's result row: the schema of results.jsonl (one JSON object per line), shared by
// the runner (which appends rows), the analysis, and `bhmoe report` / `bhmoe merge` (which rebuild
// every output from results.jsonl alone).
//
// Two kinds of rows:
//  - "generate": one routing config × one prompt; the original study's columns (SPEC.md §3) plus
//    quality (prompt_nll, kl_to_native, continuation_nll_native) and expert statistics measured
//    from what the engine's router observer saw;
//  - "score_text": one routing config × one held-out text; token-weighted perplexity + protocol.
// Numbers that are undefined (no data, division by zero) are NaN in memory and null in JSON; CSV
// leaves them empty.
#pragma once

#include <cstdint>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace bhmoe::experiments {

inline constexpr const char* kResultSchema = "bhmoe-result/1";
inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// One routing config as rows and summaries record it; embedded in both (ResultRow, ConfigSummary),
// so the runner fills it once per config and the analysis copies it whole. `router` is the canonical
// spec the engine actually ran (after any max_k clamping); `config` holds its parameters as an
// object (routing::to_json, plus max_k_requested when clamped: the original's `config` column).
struct RouterConfig {
  std::string config_name;
  std::string router;
  std::string rule;  // "topk" | "bh" | "topp" | "native"
  nlohmann::json config = nlohmann::json::object();
  int max_k = 0;            // the effective ceiling (k for top-k) after clamping to N
  int max_k_requested = 0;  // as named in the config (differs from max_k when clamped)
  int min_k = 1;
  double alpha = kNaN;  // bh only
  double top_p = kNaN;  // topp only

  bool clamped() const { return max_k < max_k_requested; }
  // True when the rule selects the same number of experts for every token by construction (top-k:
  // exactly k; any rule with min_k == max_k): a distribution, interval or test of its count carries
  // no information, so the analysis and plots leave such configs' counts out of them.
  bool fixed_count() const {
    return rule == "topk" || rule == "native" || (max_k > 0 && min_k == max_k);
  }
};

// One experiment's result: its routing config (the RouterConfig base) and everything measured.
struct ResultRow : RouterConfig {
  // Identity. `key` is unique within a run (experiment/config/prompt-or-text) and is what resume
  // and merge use; `index` is the position in the experiment's deterministic grid.
  std::string key;
  int64_t index = 0;
  std::string experiment;         // "seed", "pareto", or the experiment file's name
  std::string kind = "generate";  // "generate" | "score_text"
  std::string status = "ok";      // "ok" | "error"
  std::string error;              // the error message when status == "error"

  // generate rows.
  std::string prompt_id;
  std::string prompt_text, prompt_category, prompt_description;
  std::string generated_text, full_text;
  int64_t num_input_tokens = 0;
  int64_t num_output_tokens = 0;
  bool stopped_at_eos = false;

  // score_text rows.
  std::string text_name, text_path;
  int64_t num_scored_tokens = 0;
  double nll_mean = kNaN;    // token-weighted mean negative log-likelihood (nats)
  double perplexity = kNaN;  // exp(nll_mean)
  std::string protocol;
  // Per scoring window (the bootstrap resamples these): tokens in the window (the first is context
  // only, so it predicts tokens − 1), summed NLL of its predictions, and experts selected over its
  // tokens summed over every layer.
  std::vector<int64_t> window_tokens;
  std::vector<double> window_nll_sum;
  std::vector<int64_t> window_experts;

  // Timing (seconds). inference = prefill + decode of the config's own run; wall includes the
  // quality passes too.
  double inference_time_sec = 0, prefill_time_sec = 0, decode_time_sec = 0;
  double tokens_per_sec = 0;
  double wall_time_sec = 0;

  // Expert statistics over every (layer, token) routing decision the observer saw.
  double avg_experts_per_token = kNaN, std_experts_per_token = kNaN;
  double min_experts = kNaN, max_experts = kNaN;
  int num_layers = 0;
  int64_t num_routing_events = 0;
  double pct_at_ceiling = kNaN, pct_at_floor = kNaN;
  double weight_entropy = kNaN;  // mean over events of −Σ w ln w
  double expert_utilization_cv = kNaN, expert_utilization_max_min_ratio = kNaN;
  std::vector<double> per_layer_mean_experts;  // [num_layers]
  std::vector<int64_t> count_histogram;        // [c] = number of events that selected c experts

  // Quality (nats per token). NaN when not measured (e.g. an error, or a prompt of one token).
  double prompt_nll = kNaN;               // the prompt under this config
  double kl_to_native = kNaN;             // mean KL(native ‖ config) over prompt positions
  double continuation_nll_native = kNaN;  // the generated tokens scored by native routing

  std::string timestamp;  // ISO 8601 UTC, when the row was finished

  // Provenance, passed through to the report: model {dir, name, fingerprint, weights, params,
  // num_experts, num_layers, top_k, synthetic, small}, calibration {source, path, fingerprint, ...}
  // (null when no config needs one), settings {max_new_tokens, ...}, run {settings_hash, commit,
  // host, cpu, threads, bhmoe_version}.
  nlohmann::json model = nlohmann::json::object();
  nlohmann::json calibration = nullptr;
  nlohmann::json settings = nlohmann::json::object();
  nlohmann::json run = nlohmann::json::object();

  bool ok() const { return status == "ok"; }
};

nlohmann::json to_json(const ResultRow& row);
// Throws bhmoe::Error naming `source` and the key for a missing or mistyped field.
ResultRow row_from_json(const nlohmann::json& json, const std::string& source);

// One line of results.jsonl (no trailing newline).
std::string to_jsonl_line(const ResultRow& row);

struct LoadedResults {
  std::vector<ResultRow> rows;  // in file order; a later row with the same key replaces an earlier
  bool torn_tail = false;       // the last line was incomplete (a crash mid-append) and was ignored
  size_t valid_bytes = 0;       // length of the file prefix made of complete lines
};

// Reads results.jsonl. A missing file is an empty result. An incomplete last line (no newline, or
// not parseable) is ignored and reported through torn_tail; a malformed line elsewhere is an error
// naming the file and line number. Rows sharing a key keep the last one, in the first one's place.
LoadedResults load_results(const std::filesystem::path& path);

// Keeps the last row per key, ordered by (experiment, index, key).
std::vector<ResultRow> dedupe_and_sort(std::vector<ResultRow> rows);

}  // namespace bhmoe::experiments
