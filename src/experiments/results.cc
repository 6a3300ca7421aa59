#include "experiments/results.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "util/error.h"
#include "util/file.h"

namespace bhmoe::experiments {
namespace {

using nlohmann::json;

json number_or_null(double value) {
  return std::isfinite(value) ? json(value) : json(nullptr);
}

// Typed field readers: a missing key takes the default (rows written by an older schema stay
// readable); a present key of the wrong type is an error naming it.
class Reader {
 public:
  Reader(const json& object, const std::string& source) : object_(object), source_(source) {}

  const json* find(const char* key) const {
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  [[noreturn]] void bad(const char* key, const char* want) const {
    fail(source_, ": key '", key, "' should be ", want);
  }
  void get(const char* key, std::string& out) const {
    if (const json* v = find(key)) {
      if (!v->is_string()) bad(key, "a string");
      out = v->get<std::string>();
    }
  }
  void get(const char* key, double& out) const {
    out = kNaN;
    if (const json* v = find(key)) {
      if (!v->is_number()) bad(key, "a number or null");
      out = v->get<double>();
    }
  }
  void get(const char* key, int64_t& out) const {
    if (const json* v = find(key)) {
      if (!v->is_number_integer()) bad(key, "an integer");
      out = v->get<int64_t>();
    }
  }
  void get(const char* key, int& out) const {
    int64_t wide = out;
    get(key, wide);
    out = static_cast<int>(wide);
  }
  void get(const char* key, bool& out) const {
    if (const json* v = find(key)) {
      if (!v->is_boolean()) bad(key, "true or false");
      out = v->get<bool>();
    }
  }
  void get(const char* key, std::vector<double>& out) const {
    out.clear();
    if (const json* v = find(key)) {
      if (!v->is_array()) bad(key, "an array of numbers");
      for (const json& item : *v) {
        if (item.is_null()) {
          out.push_back(kNaN);
        } else if (item.is_number()) {
          out.push_back(item.get<double>());
        } else {
          bad(key, "an array of numbers");
        }
      }
    }
  }
  void get(const char* key, std::vector<int64_t>& out) const {
    out.clear();
    if (const json* v = find(key)) {
      if (!v->is_array()) bad(key, "an array of integers");
      for (const json& item : *v) {
        if (!item.is_number_integer()) bad(key, "an array of integers");
        out.push_back(item.get<int64_t>());
      }
    }
  }
  void get_object(const char* key, json& out, bool allow_null) const {
    auto it = object_.find(key);
    if (it == object_.end()) return;
    if (it->is_null() && allow_null) {
      out = nullptr;
      return;
    }
    if (!it->is_object()) bad(key, "an object");
    out = *it;
  }

 private:
  const json& object_;
  const std::string& source_;
};

}  // namespace

json to_json(const ResultRow& row) {
  json per_layer = json::array();
  for (double v : row.per_layer_mean_experts) per_layer.push_back(number_or_null(v));
  json j = {
      {"schema", kResultSchema},
      {"key", row.key},
      {"index", row.index},
      {"experiment", row.experiment},
      {"kind", row.kind},
      {"status", row.status},
      {"error", row.error},
      {"config_name", row.config_name},
      {"router", row.router},
      {"rule", row.rule},
      {"config", row.config},
      {"max_k", row.max_k},
      {"max_k_requested", row.max_k_requested},
      {"min_k", row.min_k},
      {"alpha", number_or_null(row.alpha)},
      {"top_p", number_or_null(row.top_p)},
      {"prompt_id", row.prompt_id},
      {"prompt_text", row.prompt_text},
      {"prompt_category", row.prompt_category},
      {"prompt_description", row.prompt_description},
      {"generated_text", row.generated_text},
      {"full_text", row.full_text},
      {"num_input_tokens", row.num_input_tokens},
      {"num_output_tokens", row.num_output_tokens},
      {"stopped_at_eos", row.stopped_at_eos},
      {"text_name", row.text_name},
      {"text_path", row.text_path},
      {"num_scored_tokens", row.num_scored_tokens},
      {"nll_mean", number_or_null(row.nll_mean)},
      {"perplexity", number_or_null(row.perplexity)},
      {"protocol", row.protocol},
      {"window_tokens", row.window_tokens},
      {"window_nll_sum", row.window_nll_sum},
      {"window_experts", row.window_experts},
      {"inference_time_sec", row.inference_time_sec},
      {"prefill_time_sec", row.prefill_time_sec},
      {"decode_time_sec", row.decode_time_sec},
      {"tokens_per_sec", row.tokens_per_sec},
      {"wall_time_sec", row.wall_time_sec},
      {"avg_experts_per_token", number_or_null(row.avg_experts_per_token)},
      {"std_experts_per_token", number_or_null(row.std_experts_per_token)},
      {"min_experts", number_or_null(row.min_experts)},
      {"max_experts", number_or_null(row.max_experts)},
      {"num_layers", row.num_layers},
      {"num_routing_events", row.num_routing_events},
      {"pct_at_ceiling", number_or_null(row.pct_at_ceiling)},
      {"pct_at_floor", number_or_null(row.pct_at_floor)},
      {"weight_entropy", number_or_null(row.weight_entropy)},
      {"expert_utilization_cv", number_or_null(row.expert_utilization_cv)},
      {"expert_utilization_max_min_ratio", number_or_null(row.expert_utilization_max_min_ratio)},
      {"per_layer_mean_experts", per_layer},
      {"count_histogram", row.count_histogram},
      {"prompt_nll", number_or_null(row.prompt_nll)},
      {"kl_to_native", number_or_null(row.kl_to_native)},
      {"continuation_nll_native", number_or_null(row.continuation_nll_native)},
      {"timestamp", row.timestamp},
      {"model", row.model},
      {"calibration", row.calibration},
      {"settings", row.settings},
      {"run", row.run},
  };
  return j;
}

ResultRow row_from_json(const json& j, const std::string& source) {
  if (!j.is_object()) fail(source, ": a result row must be a JSON object");
  Reader r(j, source);
  std::string schema;
  r.get("schema", schema);
  if (schema != kResultSchema) {
    fail(source, ": key 'schema' is '", schema, "', expected '", kResultSchema, "'");
  }
  ResultRow row;
  r.get("key", row.key);
  if (row.key.empty()) fail(source, ": key 'key' is missing or empty");
  r.get("index", row.index);
  r.get("experiment", row.experiment);
  r.get("kind", row.kind);
  if (row.kind != "generate" && row.kind != "score_text") {
    fail(source, ": key 'kind' is '", row.kind, "', expected 'generate' or 'score_text'");
  }
  r.get("status", row.status);
  if (row.status != "ok" && row.status != "error") {
    fail(source, ": key 'status' is '", row.status, "', expected 'ok' or 'error'");
  }
  r.get("error", row.error);
  r.get("config_name", row.config_name);
  r.get("router", row.router);
  r.get("rule", row.rule);
  r.get_object("config", row.config, false);
  r.get("max_k", row.max_k);
  r.get("max_k_requested", row.max_k_requested);
  r.get("min_k", row.min_k);
  r.get("alpha", row.alpha);
  r.get("top_p", row.top_p);
  r.get("prompt_id", row.prompt_id);
  r.get("prompt_text", row.prompt_text);
  r.get("prompt_category", row.prompt_category);
  r.get("prompt_description", row.prompt_description);
  r.get("generated_text", row.generated_text);
  r.get("full_text", row.full_text);
  r.get("num_input_tokens", row.num_input_tokens);
  r.get("num_output_tokens", row.num_output_tokens);
  r.get("stopped_at_eos", row.stopped_at_eos);
  r.get("text_name", row.text_name);
  r.get("text_path", row.text_path);
  r.get("num_scored_tokens", row.num_scored_tokens);
  r.get("nll_mean", row.nll_mean);
  r.get("perplexity", row.perplexity);
  r.get("protocol", row.protocol);
  r.get("window_tokens", row.window_tokens);
  r.get("window_nll_sum", row.window_nll_sum);
  r.get("window_experts", row.window_experts);
  if (row.window_nll_sum.size() != row.window_tokens.size() ||
      row.window_experts.size() != row.window_tokens.size()) {
    fail(source, ": keys 'window_tokens', 'window_nll_sum' and 'window_experts' must have one entry "
         "per window (", row.window_tokens.size(), ", ", row.window_nll_sum.size(), ", ",
         row.window_experts.size(), ")");
  }
  r.get("inference_time_sec", row.inference_time_sec);
  r.get("prefill_time_sec", row.prefill_time_sec);
  r.get("decode_time_sec", row.decode_time_sec);
  r.get("tokens_per_sec", row.tokens_per_sec);
  r.get("wall_time_sec", row.wall_time_sec);
  r.get("avg_experts_per_token", row.avg_experts_per_token);
  r.get("std_experts_per_token", row.std_experts_per_token);
  r.get("min_experts", row.min_experts);
  r.get("max_experts", row.max_experts);
  r.get("num_layers", row.num_layers);
  r.get("num_routing_events", row.num_routing_events);
  r.get("pct_at_ceiling", row.pct_at_ceiling);
  r.get("pct_at_floor", row.pct_at_floor);
  r.get("weight_entropy", row.weight_entropy);
  r.get("expert_utilization_cv", row.expert_utilization_cv);
  r.get("expert_utilization_max_min_ratio", row.expert_utilization_max_min_ratio);
  r.get("per_layer_mean_experts", row.per_layer_mean_experts);
  r.get("count_histogram", row.count_histogram);
  r.get("prompt_nll", row.prompt_nll);
  r.get("kl_to_native", row.kl_to_native);
  r.get("continuation_nll_native", row.continuation_nll_native);
  r.get("timestamp", row.timestamp);
  r.get_object("model", row.model, false);
  r.get_object("calibration", row.calibration, true);
  r.get_object("settings", row.settings, false);
  r.get_object("run", row.run, false);
  return row;
}

std::string to_jsonl_line(const ResultRow& row) {
  // Invalid UTF-8 in generated text (a token boundary inside a character) must not make the dump
  // throw: replace it.
  return to_json(row).dump(-1, ' ', false, json::error_handler_t::replace);
}

LoadedResults load_results(const std::filesystem::path& path) {
  LoadedResults loaded;
  if (!std::filesystem::exists(path)) return loaded;
  std::string text = read_file(path);
  std::map<std::string, size_t> position_of_key;
  size_t begin = 0;
  int64_t line_number = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    ++line_number;
    bool complete = end != std::string::npos;
    std::string_view line(text.data() + begin, (complete ? end : text.size()) - begin);
    std::string source = path.string() + " line " + std::to_string(line_number);
    if (!complete) {
      // A crash mid-append leaves a partial last line: never trust it, even if it happens to parse.
      loaded.torn_tail = true;
      break;
    }
    begin = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) {
      loaded.valid_bytes = begin;
      continue;
    }
    json parsed = json::parse(line, nullptr, false);
    if (parsed.is_discarded()) {
      if (begin >= text.size()) {
        loaded.torn_tail = true;
        break;
      }
      fail(source, ": not valid JSON");
    }
    ResultRow row = row_from_json(parsed, source);
    loaded.valid_bytes = begin;
    auto [it, inserted] = position_of_key.try_emplace(row.key, loaded.rows.size());
    if (inserted) {
      loaded.rows.push_back(std::move(row));
    } else {
      loaded.rows[it->second] = std::move(row);
    }
  }
  return loaded;
}

std::vector<ResultRow> dedupe_and_sort(std::vector<ResultRow> rows) {
  std::map<std::string, size_t> last;
  for (size_t i = 0; i < rows.size(); ++i) last[rows[i].key] = i;
  std::vector<ResultRow> out;
  out.reserve(last.size());
  for (auto& [key, i] : last) out.push_back(std::move(rows[i]));
  std::stable_sort(out.begin(), out.end(), [](const ResultRow& a, const ResultRow& b) {
    if (a.experiment != b.experiment) return a.experiment < b.experiment;
    if (a.index != b.index) return a.index < b.index;
    return a.key < b.key;
  });
  return out;
}

}  // namespace bhmoe::experiments
