#include "experiments/csv.h"

#include <cmath>
#include <functional>
#include <sstream>

#include "experiments/schema.h"
#include "routing/spec.h"

namespace bhmoe::experiments {
namespace {

std::string join_numbers(const std::vector<double>& values) {
  std::string out;
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) out += ';';
    out += csv_number(values[i]);
  }
  return out;
}

struct Column {
  std::string name;
  std::function<std::string(const ResultRow&)> value;
};

std::string integer(int64_t v) {
  return std::to_string(v);
}

const std::vector<Column>& columns() {
  static const std::vector<Column> list = {
      // The original study's columns, in its order.
      {"config_name", [](const ResultRow& r) { return r.config_name; }},
      {"config", [](const ResultRow& r) { return r.config.dump(); }},
      {"prompt_text", [](const ResultRow& r) { return r.prompt_text; }},
      {"prompt_category", [](const ResultRow& r) { return r.prompt_category; }},
      {"prompt_description", [](const ResultRow& r) { return r.prompt_description; }},
      {"generated_text", [](const ResultRow& r) { return r.generated_text; }},
      {"full_text", [](const ResultRow& r) { return r.full_text; }},
      {"num_input_tokens", [](const ResultRow& r) { return integer(r.num_input_tokens); }},
      {"num_output_tokens", [](const ResultRow& r) { return integer(r.num_output_tokens); }},
      {"inference_time_sec", [](const ResultRow& r) { return csv_number(r.inference_time_sec); }},
      {"tokens_per_sec", [](const ResultRow& r) { return csv_number(r.tokens_per_sec); }},
      {"avg_experts_per_token",
       [](const ResultRow& r) { return csv_number(r.avg_experts_per_token); }},
      {"std_experts_per_token",
       [](const ResultRow& r) { return csv_number(r.std_experts_per_token); }},
      {"min_experts", [](const ResultRow& r) { return csv_number(r.min_experts); }},
      {"max_experts", [](const ResultRow& r) { return csv_number(r.max_experts); }},
      {"num_layers", [](const ResultRow& r) { return integer(r.num_layers); }},
      {"timestamp", [](const ResultRow& r) { return r.timestamp; }},
      {"expert_utilization_cv",
       [](const ResultRow& r) { return csv_number(r.expert_utilization_cv); }},
      {"expert_utilization_max_min_ratio",
       [](const ResultRow& r) { return csv_number(r.expert_utilization_max_min_ratio); }},
      // Ours.
      {"key", [](const ResultRow& r) { return r.key; }},
      {"experiment", [](const ResultRow& r) { return r.experiment; }},
      {"kind", [](const ResultRow& r) { return r.kind; }},
      {"status", [](const ResultRow& r) { return r.status; }},
      {"error", [](const ResultRow& r) { return r.error; }},
      {"router", [](const ResultRow& r) { return r.router; }},
      {"rule", [](const ResultRow& r) { return r.rule; }},
      {"max_k", [](const ResultRow& r) { return integer(r.max_k); }},
      {"max_k_requested", [](const ResultRow& r) { return integer(r.max_k_requested); }},
      {"min_k", [](const ResultRow& r) { return integer(r.min_k); }},
      {"alpha", [](const ResultRow& r) { return csv_number(r.alpha); }},
      {"top_p", [](const ResultRow& r) { return csv_number(r.top_p); }},
      {"prompt_id", [](const ResultRow& r) { return r.prompt_id; }},
      {"pct_at_ceiling", [](const ResultRow& r) { return csv_number(r.pct_at_ceiling); }},
      {"pct_at_floor", [](const ResultRow& r) { return csv_number(r.pct_at_floor); }},
      {"weight_entropy", [](const ResultRow& r) { return csv_number(r.weight_entropy); }},
      {"num_routing_events", [](const ResultRow& r) { return integer(r.num_routing_events); }},
      {"per_layer_mean_experts",
       [](const ResultRow& r) { return join_numbers(r.per_layer_mean_experts); }},
      {"prompt_nll", [](const ResultRow& r) { return csv_number(r.prompt_nll); }},
      {"kl_to_native", [](const ResultRow& r) { return csv_number(r.kl_to_native); }},
      {"continuation_nll_native",
       [](const ResultRow& r) { return csv_number(r.continuation_nll_native); }},
      {"prefill_time_sec", [](const ResultRow& r) { return csv_number(r.prefill_time_sec); }},
      {"decode_time_sec", [](const ResultRow& r) { return csv_number(r.decode_time_sec); }},
      {"wall_time_sec", [](const ResultRow& r) { return csv_number(r.wall_time_sec); }},
      {"stopped_at_eos",
       [](const ResultRow& r) { return std::string(r.stopped_at_eos ? "true" : "false"); }},
      {"text_name", [](const ResultRow& r) { return r.text_name; }},
      {"num_scored_tokens", [](const ResultRow& r) { return integer(r.num_scored_tokens); }},
      {"nll_mean", [](const ResultRow& r) { return csv_number(r.nll_mean); }},
      {"perplexity", [](const ResultRow& r) { return csv_number(r.perplexity); }},
      {"protocol", [](const ResultRow& r) { return r.protocol; }},
      {"model", [](const ResultRow& r) { return r.model.value("name", std::string()); }},
      {"model_fingerprint",
       [](const ResultRow& r) { return r.model.value("fingerprint", std::string()); }},
      {"calibration",
       [](const ResultRow& r) {
         return r.calibration.is_object() ? r.calibration.value("fingerprint", std::string())
                                          : std::string();
       }},
  };
  return list;
}

}  // namespace

std::string csv_field(std::string_view text) {
  if (text.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(text);
  std::string out = "\"";
  for (char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

std::string csv_number(double value) {
  if (!std::isfinite(value)) return "";
  return routing::format_number(value);
}

const std::vector<std::string>& results_csv_columns() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const Column& c : columns()) out.push_back(c.name);
    return out;
  }();
  return names;
}

std::string results_csv(const std::vector<ResultRow>& rows) {
  std::ostringstream out;
  const auto& cols = columns();
  for (size_t i = 0; i < cols.size(); ++i) out << (i ? "," : "") << cols[i].name;
  out << "\n";
  for (const ResultRow& row : rows) {
    for (size_t i = 0; i < cols.size(); ++i) out << (i ? "," : "") << csv_field(cols[i].value(row));
    out << "\n";
  }
  return out.str();
}

std::string max_k_csv(const Analysis& analysis) {
  std::ostringstream out;
  // The header is the schema's (schema.h); the values below follow its order.
  out << schema_csv_header(kMaxKCsv) << "\n";
  for (const MaxKRow& m : analysis.max_k) {
    out << m.max_k << "," << csv_number(m.baseline_experts) << "," << csv_number(m.bh_mean_experts)
        << "," << csv_number(m.reduction_pct) << "," << csv_number(m.bh_ci.lo) << ","
        << csv_number(m.bh_ci.hi) << "," << csv_number(m.native_experts) << ","
        << csv_number(m.reduction_vs_native_pct) << "\n";
  }
  return out.str();
}

std::string matched_compute_csv(const Analysis& analysis) {
  std::ostringstream out;
  // The header is the schema's (schema.h); the values below follow its order.
  out << schema_csv_header(kMatchedCsv) << "\n";
  for (const MatchedPoint& m : analysis.matched) {
    out << csv_field(m.scope) << "," << csv_field(m.config_name) << "," << csv_field(m.rule) << ","
        << csv_field(m.router) << "," << m.tokens << "," << m.windows << ","
        << csv_number(m.mean_experts.estimate) << "," << csv_number(m.mean_experts.lo) << ","
        << csv_number(m.mean_experts.hi) << "," << csv_number(m.nll.estimate) << ","
        << csv_number(m.nll.lo) << "," << csv_number(m.nll.hi) << ","
        << csv_number(std::exp(m.nll.estimate)) << "," << csv_number(m.topk_nll_at_match.estimate)
        << "," << csv_number(m.delta_nll.estimate) << "," << csv_number(m.delta_nll.lo) << ","
        << csv_number(m.delta_nll.hi) << "," << csv_number(m.p_value) << ","
        << csv_number(m.p_holm) << "\n";
  }
  return out.str();
}

}  // namespace bhmoe::experiments
