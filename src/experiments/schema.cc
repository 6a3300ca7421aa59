#include "experiments/schema.h"

#include <sstream>

namespace bhmoe::experiments {
namespace {

constexpr unsigned kRows = kResultsJsonl | kResultsCsv;  // a row field in both row files

const std::vector<ColumnDoc> kSchema = {
    // ---- results.jsonl and bh_routing_results.csv: one experiment (config × prompt or text), in
    // the CSV writer's order (the original study's columns first). ----
    {kResultsJsonl, "schema", "string", "-", "row format, \"bhmoe-result/1\""},
    {kRows, "config_name", "string", "-", "the routing config's name (e.g. bh_k16_a005)"},
    {kResultsCsv, "config", "string (JSON)", "-", "the `config` object of the row, as JSON text"},
    {kResultsJsonl, "config", "object", "-",
     "the router's parameters (type, k / alpha / max_k / ...; max_k_requested when clamped)"},
    {kRows, "prompt_text", "string", "-", "generate rows: the prompt"},
    {kRows, "prompt_category", "string", "-", "generate rows: the prompt's category"},
    {kRows, "prompt_description", "string", "-", "generate rows: the prompt's description"},
    {kRows, "generated_text", "string", "-", "generate rows: the greedy continuation (without EOS)"},
    {kRows, "full_text", "string", "-", "prompt_text + generated_text"},
    {kRows, "num_input_tokens", "integer", "tokens",
     "tokens of the prompt (generate) or of the scored text after any cut (score_text)"},
    {kRows, "num_output_tokens", "integer", "tokens", "generated tokens (generate rows)"},
    {kRows, "inference_time_sec", "number", "s per experiment",
     "prefill + decode of the config's own run (quality passes excluded); after the run's untimed "
     "warm-up (run.warmup_tokens)"},
    {kRows, "tokens_per_sec", "number", "tokens per s",
     "generate: new tokens / inference_time_sec; score_text: text tokens / inference_time_sec"},
    {kRows, "avg_experts_per_token", "number or null/empty", "experts per token and layer",
     "mean experts selected over every routing decision (token × layer) the engine made"},
    {kRows, "std_experts_per_token", "number or null/empty", "experts",
     "sd of experts selected over the routing decisions"},
    {kRows, "min_experts", "number or null/empty", "experts", "fewest experts in one decision"},
    {kRows, "max_experts", "number or null/empty", "experts", "most experts in one decision"},
    {kRows, "num_layers", "integer", "layers", "layers whose decisions were counted"},
    {kRows, "timestamp", "string", "-", "ISO 8601 UTC, when the row was finished"},
    {kRows, "expert_utilization_cv", "number or null/empty", "-",
     "coefficient of variation of how often each expert was selected (lower = more even load)"},
    {kRows, "expert_utilization_max_min_ratio", "number or null/empty", "-",
     "selections of the most used expert / of the least used one that was used"},
    {kRows, "key", "string", "-",
     "unique id of the experiment in its run: experiment/config_name/prompt_id or text_name"},
    {kResultsJsonl, "index", "integer", "-", "position in the experiment's deterministic grid"},
    {kRows, "experiment", "string", "-", "\"seed\", \"pareto\" or the experiment file's name"},
    {kRows, "kind", "string", "-",
     "\"generate\" (config × prompt: generation + quality) or \"score_text\" (config × held-out "
     "text: perplexity)"},
    {kRows, "status", "string", "-", "\"ok\" or \"error\""},
    {kRows, "error", "string", "-", "the error message when status is \"error\", else empty"},
    {kRows, "router", "string", "-",
     "canonical router spec the engine ran (after clamping max_k to the expert count)"},
    {kRows, "rule", "string", "-", "topk | bh | topp | skip | threshold | hc | entropy"},
    {kRows, "max_k", "integer", "experts", "effective ceiling of experts per decision (k for top-k)"},
    {kRows, "max_k_requested", "integer", "experts", "ceiling as named in the config, before clamping"},
    {kRows, "min_k", "integer", "experts", "floor of experts per decision"},
    {kRows, "alpha", "number or null/empty", "-", "BH's false-discovery rate (bh only)"},
    {kRows, "top_p", "number or null/empty", "-", "top-p's probability mass (topp only)"},
    {kRows, "prompt_id", "string", "-", "generate rows: the prompt's id; else empty"},
    {kRows, "pct_at_ceiling", "number or null/empty", "% of decisions", "decisions selecting max_k"},
    {kRows, "pct_at_floor", "number or null/empty", "% of decisions", "decisions selecting min_k"},
    {kRows, "weight_entropy", "number or null/empty", "nats per decision",
     "mean over decisions of −Σ w ln w of the mixing weights"},
    {kRows, "num_routing_events", "integer", "decisions", "routing decisions (tokens × layers)"},
    {kResultsCsv, "per_layer_mean_experts", "string", "experts per token",
     "the same, ';'-separated, layer 0 first"},
    {kResultsJsonl, "per_layer_mean_experts", "array of numbers (null when undefined)",
     "experts per token", "mean experts per token in each layer, index = layer"},
    {kResultsJsonl, "count_histogram", "array of integers", "decisions",
     "[c] = routing decisions that selected c experts"},
    {kRows, "prompt_nll", "number or null/empty", "nats per predicted token",
     "generate rows: mean NLL of the prompt's tokens 1..T−1 under the config"},
    {kRows, "kl_to_native", "number or null/empty", "nats per prompt position",
     "generate rows: mean KL(native ‖ config) of the next-token distributions over the prompt"},
    {kRows, "continuation_nll_native", "number or null/empty", "nats per generated token",
     "generate rows: the continuation scored by native routing"},
    {kRows, "prefill_time_sec", "number", "s per experiment", "the prompt's prefill"},
    {kRows, "decode_time_sec", "number", "s per experiment", "greedy decode of the new tokens"},
    {kRows, "wall_time_sec", "number", "s per experiment", "the experiment's whole wall time"},
    {kRows, "stopped_at_eos", "boolean", "-", "generation ended at end-of-text"},
    {kRows, "text_name", "string", "-", "score_text rows: the held-out text's name (its domain)"},
    {kResultsJsonl, "text_path", "string", "-", "score_text rows: absolute path of the text"},
    {kRows, "num_scored_tokens", "integer", "tokens",
     "score_text rows: tokens predicted (each window's first token is context only)"},
    {kRows, "nll_mean", "number or null/empty", "nats per predicted token",
     "score_text rows: token-weighted mean negative log-likelihood over the text"},
    {kRows, "perplexity", "number or null/empty", "-", "score_text rows: exp(nll_mean)"},
    {kRows, "protocol", "string", "-",
     "score_text rows: the scoring protocol as run (window size actually used, cut, cache)"},
    {kResultsJsonl, "window_tokens", "array of integers", "tokens",
     "score_text rows: tokens in each scoring window (the bootstrap resamples windows)"},
    {kResultsJsonl, "window_nll_sum", "array of numbers", "nats per window",
     "score_text rows: summed NLL of each window's predictions"},
    {kResultsJsonl, "window_experts", "array of integers", "experts per window",
     "score_text rows: experts selected over each window's tokens, summed over layers"},
    {kResultsCsv, "model", "string", "-", "model.name"},
    {kResultsCsv, "model_fingerprint", "string", "-", "model.fingerprint"},
    {kResultsCsv, "calibration", "string", "-", "calibration.fingerprint, empty when none"},
    {kResultsJsonl, "model", "object", "-",
     "model identity: name, dir, fingerprint, weights, params, num_layers, num_experts, top_k, "
     "synthetic, small, ..."},
    {kResultsJsonl, "calibration", "object or null", "-",
     "calibration identity (source, path, fingerprint, method); null when the config needs none"},
    {kResultsJsonl, "settings", "object", "-",
     "generation and scoring settings: max_new_tokens, temperature, top_p, seed, decoding, "
     "scoring_window (the window used), scoring_window_requested (when the model's context cut "
     "it), scoring_max_tokens (per text, 0 = all)"},
    {kResultsJsonl, "run", "object", "-",
     "the process that ran the row: settings_hash, commit, host, cpu, threads, shard, "
     "warmup_tokens (tokens of its untimed warm-up prefill; 0 = none)"},

    // ---- max_k_comparison.csv: one line per max_k with BH generate rows. ----
    {kMaxKCsv, "max_k", "integer", "experts", "the ceiling BH and top-k were named with"},
    {kMaxKCsv, "baseline_experts", "number or empty", "experts per token and layer",
     "measured mean of top-k with k = max_k (the original study's baseline)"},
    {kMaxKCsv, "bh_mean_experts", "number or empty", "experts per token and layer",
     "mean over every BH config with that max_k (all alphas) and their prompts"},
    {kMaxKCsv, "reduction_pct", "number or empty", "%",
     "(baseline_experts − bh_mean_experts) / baseline_experts × 100: against top-k at k = max_k "
     "(the original's column; grows with max_k by construction)"},
    {kMaxKCsv, "bh_mean_experts_lo", "number or empty", "experts per token and layer",
     "lower end of the 95% t-interval of bh_mean_experts across prompts"},
    {kMaxKCsv, "bh_mean_experts_hi", "number or empty", "experts per token and layer",
     "upper end of that interval"},
    {kMaxKCsv, "native_experts", "number or empty", "experts per token and layer",
     "measured mean of native top-8 (topk_8)"},
    {kMaxKCsv, "reduction_vs_native_pct", "number or empty", "%",
     "(native_experts − bh_mean_experts) / native_experts × 100: the reduction the report states"},

    // ---- matched_compute.csv: one line per scope (all texts, or one text) and config. ----
    {kMatchedCsv, "scope", "string", "-", "\"all\" (every text pooled) or a text's name"},
    {kMatchedCsv, "config_name", "string", "-", "the config"},
    {kMatchedCsv, "rule", "string", "-", "its rule"},
    {kMatchedCsv, "router", "string", "-", "its canonical router spec"},
    {kMatchedCsv, "tokens", "integer", "tokens", "scored tokens in scope"},
    {kMatchedCsv, "windows", "integer", "windows", "scoring windows in scope"},
    {kMatchedCsv, "mean_experts", "number", "experts per token and layer", "bootstrap estimate"},
    {kMatchedCsv, "mean_experts_lo", "number", "experts per token and layer",
     "95% percentile-bootstrap interval, lower end (windows resampled within each text)"},
    {kMatchedCsv, "mean_experts_hi", "number", "experts per token and layer", "upper end"},
    {kMatchedCsv, "nll", "number", "nats per predicted token", "token-weighted mean NLL"},
    {kMatchedCsv, "nll_lo", "number", "nats per predicted token", "95% bootstrap interval, lower"},
    {kMatchedCsv, "nll_hi", "number", "nats per predicted token", "upper end"},
    {kMatchedCsv, "perplexity", "number", "-", "exp(nll)"},
    {kMatchedCsv, "topk_nll_at_match", "number or empty", "nats per predicted token",
     "top-k's NLL interpolated at the config's mean_experts (empty for top-k and outside its range)"},
    {kMatchedCsv, "delta_nll", "number or empty", "nats per predicted token",
     "topk_nll_at_match − nll: > 0 means better than top-k at equal compute"},
    {kMatchedCsv, "delta_nll_lo", "number or empty", "nats per predicted token",
     "95% bootstrap interval, lower"},
    {kMatchedCsv, "delta_nll_hi", "number or empty", "nats per predicted token", "upper end"},
    {kMatchedCsv, "p_value", "number or empty", "-", "two-sided bootstrap p of delta_nll = 0"},
    {kMatchedCsv, "p_holm", "number or empty", "-",
     "p_value Holm-adjusted over the configs of the scope"},
};

}  // namespace

const std::vector<ColumnDoc>& output_schema() { return kSchema; }

const char* schema_file_name(SchemaFile file) {
  switch (file) {
    case kResultsJsonl:
      return "results.jsonl";
    case kResultsCsv:
      return "bh_routing_results.csv";
    case kMaxKCsv:
      return "max_k_comparison.csv";
    case kMatchedCsv:
      return "matched_compute.csv";
  }
  return "?";
}

std::vector<std::string> schema_columns(SchemaFile file) {
  std::vector<std::string> out;
  for (const ColumnDoc& c : kSchema) {
    if (c.files & file) out.emplace_back(c.name);
  }
  return out;
}

std::string schema_csv_header(SchemaFile file) {
  std::string out;
  for (const std::string& name : schema_columns(file)) out += (out.empty() ? "" : ",") + name;
  return out;
}

std::string schema_text() {
  std::ostringstream s;
  s << "# bhmoe output schema\n\n"
       "Units: NLL and KL in nats (natural log); \"per predicted token\" averages over the tokens a "
       "model predicts (not per sequence); times in seconds; a routing decision is one token in "
       "one layer. Undefined numbers are null in JSON and empty in CSV. Names are spelled one way "
       "across outputs (American \"utilization\"). results.jsonl is one flat JSON object per line "
       "(objects and arrays as values), e.g. pandas.read_json(path, lines=True).\n";
  for (SchemaFile file : {kResultsJsonl, kResultsCsv, kMaxKCsv, kMatchedCsv}) {
    s << "\n## " << schema_file_name(file) << "\n\n| column | type | unit | meaning |\n"
      << "|---|---|---|---|\n";
    for (const ColumnDoc& c : kSchema) {
      if (c.files & file) {
        s << "| " << c.name << " | " << c.type << " | " << c.unit << " | " << c.meaning << " |\n";
      }
    }
  }
  return s.str();
}

}  // namespace bhmoe::experiments
