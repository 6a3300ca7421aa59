#include "experiments/report.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <map>
#include <sstream>

#include "experiments/csv.h"
#include "util/error.h"
#include "util/file.h"

namespace bhmoe::experiments {
namespace {

using nlohmann::json;

std::string fixed(double v, int digits = 2) {
  if (std::isnan(v)) return "—";
  if (std::isinf(v)) return v > 0 ? "∞" : "−∞";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", digits, v);
  return buffer;
}

std::string p_value_text(double p) {
  if (std::isnan(p)) return "—";
  if (p < 1e-4) {
    char buffer[32];
    std::snprintf(buffer, sizeof buffer, "%.1e", p);
    return buffer;
  }
  return fixed(p, 4);
}

// Markdown table cell: pipes and newlines would break the table.
std::string cell(std::string text) {
  std::string out;
  for (char c : text) {
    if (c == '|') {
      out += "\\|";
    } else if (c == '\n' || c == '\r') {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

std::string code(const std::string& text) {
  std::string out(1, '`');
  out += cell(text);
  out += '`';
  return out;
}

std::string with_interval(const Interval& i, int digits) {
  if (!std::isfinite(i.estimate)) return "–";
  return fixed(i.estimate, digits) + " [" + fixed(i.lo, digits) + ", " + fixed(i.hi, digits) + "]";
}

const char* verdict(const MatchedPoint& m) { return matched_verdict(m); }

// The text-scoring protocol as the rows recorded it: each distinct protocol line of the ok
// score_text rows, then the scoring window and token cut their settings record. No figure of the
// protocol is written into this file: a run may use any window (and the runner records the window
// it actually used, after any cut to the model's context).
void protocol_lines(std::ostringstream& md, const std::vector<ResultRow>& rows) {
  std::vector<std::string> protocols, windows;
  for (const ResultRow& r : rows) {
    if (r.kind != "score_text" || !r.ok()) continue;
    if (!r.protocol.empty() &&
        std::find(protocols.begin(), protocols.end(), r.protocol) == protocols.end()) {
      protocols.push_back(r.protocol);
    }
    if (r.settings.contains("scoring_window")) {
      std::string w = r.settings["scoring_window"].dump() + "-token windows";
      if (r.settings.contains("scoring_window_requested")) {
        w += " (" + r.settings["scoring_window_requested"].dump() +
             " requested, cut to the model's context)";
      }
      if (r.settings.contains("scoring_max_tokens")) {
        const int64_t cut = r.settings["scoring_max_tokens"].get<int64_t>();
        w += cut > 0 ? ", at most " + std::to_string(cut) + " tokens per text"
                     : ", whole texts";
      }
      if (std::find(windows.begin(), windows.end(), w) == windows.end()) windows.push_back(w);
    }
  }
  for (const std::string& p : protocols) md << "Protocol (as recorded in the rows): " << p << ".\n\n";
  if (!windows.empty()) {
    md << "Scoring settings recorded in the rows: ";
    for (size_t i = 0; i < windows.size(); ++i) md << (i ? "; " : "") << windows[i];
    md << ".\n\n";
  }
}

// The matched-compute section: the overall table, then the difference per text (domain).
void matched_section(std::ostringstream& md, const Analysis& a, const std::vector<ResultRow>& rows) {
  md << "### Held-out text: quality at matched compute, with 95% bootstrap intervals\n\n"
        "For each config: mean experts per token and layer, and NLL (nats per predicted token, "
        "token-weighted). **Δ NLL vs top-k** is top-k's NLL read off its curve (linear between "
        "adjacent k) at the config's own mean experts, minus the config's NLL: **positive means the "
        "rule is better than top-k at equal compute**. Intervals: 95% percentile bootstrap, "
        "resampling scoring windows with replacement within each text (never tokens), every config "
        "on the same draws, fixed seed; p: two-sided bootstrap p of Δ = 0, Holm-adjusted over the "
        "configs of the table; the verdict is better or worse when that p is below 0.05. Configs "
        "outside top-k's range of expert counts have no Δ. Also in `matched_compute.csv`.\n\n";
  protocol_lines(md, rows);
  md << "| config | rule | mean experts [95% CI] | NLL [95% CI] | perplexity | top-k NLL at match | "
        "Δ NLL vs top-k [95% CI] | p (Holm) | verdict |\n|---|---|---|---|---|---|---|---|---|\n";
  std::vector<std::string> scopes;
  for (const MatchedPoint& m : a.matched) {
    if (std::find(scopes.begin(), scopes.end(), m.scope) == scopes.end()) scopes.push_back(m.scope);
    if (m.scope != "all") continue;
    md << "| " << code(m.config_name) << " | " << m.rule << " | " << with_interval(m.mean_experts, 2)
       << " | " << with_interval(m.nll, 3) << " | " << fixed(std::exp(m.nll.estimate), 2) << " | "
       << fixed(m.topk_nll_at_match.estimate, 3) << " | " << with_interval(m.delta_nll, 3) << " | "
       << (std::isfinite(m.p_holm) ? p_value_text(m.p_holm) : "–") << " | " << verdict(m) << " |\n";
  }
  if (scopes.size() > 1) {
    md << "\nΔ NLL vs top-k [95% CI] per text (domain); each text bootstrapped on its own, Holm over "
          "the configs of each text:\n\n| config |";
    for (size_t i = 1; i < scopes.size(); ++i) md << " " << scopes[i] << " |";
    md << "\n|---|";
    for (size_t i = 1; i < scopes.size(); ++i) md << "---|";
    md << "\n";
    std::vector<std::string> configs;
    for (const MatchedPoint& m : a.matched) {
      if (m.rule != "topk" && std::find(configs.begin(), configs.end(), m.config_name) == configs.end()) {
        configs.push_back(m.config_name);
      }
    }
    for (const std::string& c : configs) {
      md << "| " << code(c) << " |";
      for (size_t i = 1; i < scopes.size(); ++i) {
        const MatchedPoint* found = nullptr;
        for (const MatchedPoint& m : a.matched) {
          if (m.scope == scopes[i] && m.config_name == c) found = &m;
        }
        md << " " << (found ? with_interval(found->delta_nll, 3) : std::string("–"))
           << (found && std::string(verdict(*found)) == "better"  ? " ▲"
               : found && std::string(verdict(*found)) == "worse" ? " ▼"
                                                                   : "")
           << " |";
      }
      md << "\n";
    }
    md << "\n▲ better than top-k at matched compute, ▼ worse (Holm-adjusted p < 0.05 within the "
          "text).\n";
  }
  md << "\n";
}

// One line per rule: which of its configs beat top-k at matched compute and which did not.
void matched_conclusions(std::ostringstream& md, const Analysis& a) {
  std::vector<std::string> rules;
  for (const MatchedPoint& m : a.matched) {
    if (m.scope == "all" && m.rule != "topk" &&
        std::find(rules.begin(), rules.end(), m.rule) == rules.end()) {
      rules.push_back(m.rule);
    }
  }
  for (const std::string& rule : rules) {
    std::vector<std::string> better, worse, same, unmatched;
    for (const MatchedPoint& m : a.matched) {
      if (m.scope != "all" || m.rule != rule) continue;
      const std::string v = verdict(m);
      (v == "better" ? better : v == "worse" ? worse : v == "no difference" ? same : unmatched)
          .push_back(code(m.config_name));
    }
    auto list = [](const std::vector<std::string>& names) {
      std::string out;
      for (const std::string& n : names) out += (out.empty() ? "" : ", ") + n;
      return out.empty() ? std::string("none") : out;
    };
    md << "- Held-out text, rule " << rule << " against top-k at matched compute (Δ NLL, "
       << "Holm-adjusted bootstrap p < 0.05): better: " << list(better) << "; worse: " << list(worse)
       << "; no detectable difference: " << list(same);
    if (!unmatched.empty()) md << "; outside top-k's range: " << list(unmatched);
    md << ".\n";
  }
}

std::string duration(double seconds) {
  if (!std::isfinite(seconds)) return "—";
  char buffer[64];
  if (seconds < 60) {
    std::snprintf(buffer, sizeof buffer, "%.1f s", seconds);
  } else if (seconds < 3600) {
    std::snprintf(buffer, sizeof buffer, "%d min %02d s", static_cast<int>(seconds) / 60,
                  static_cast<int>(seconds) % 60);
  } else {
    std::snprintf(buffer, sizeof buffer, "%.2f h", seconds / 3600);
  }
  return buffer;
}

std::string json_text(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return "—";
  if (j[key].is_string()) return j[key].get<std::string>();
  return j[key].dump();
}

const ConfigSummary* find_config(const Analysis& a, const std::string& name) {
  for (const ConfigSummary& s : a.configs) {
    if (s.config_name == name) return &s;
  }
  return nullptr;
}

void setup_section(std::ostringstream& md, const Analysis& a) {
  md << "## Setup\n\n";
  for (const json& model : a.models) {
    bool synthetic = model.value("synthetic", false);
    bool small = model.value("small", false);
    if (synthetic || small) {
      md << "> **Note: this model is " << (synthetic ? "synthetic" : "small") << "** ("
         << json_text(model, "name") << ", " << json_text(model, "params_text") << " parameters). "
         << json_text(model, "provenance")
         << (synthetic ? " The numbers below show the method and the machinery working on it; they "
                         "are not OLMoE-1B-7B's behaviour and say nothing about a full-size "
                         "model's quality.\n\n"
                       : " The numbers below are this model's, measured; a full-size model such "
                         "as OLMoE-1B-7B may behave differently.\n\n");
    }
  }
  md << "| | |\n|---|---|\n";
  for (const json& model : a.models) {
    md << "| Model | " << code(json_text(model, "name")) << " at " << code(json_text(model, "dir"))
       << " |\n"
       << "| Model fingerprint | " << code(json_text(model, "fingerprint")) << " |\n"
       << "| Architecture | " << json_text(model, "num_layers") << " layers, "
       << json_text(model, "num_experts") << " experts, native top-" << json_text(model, "top_k")
       << ", " << json_text(model, "params_text") << " parameters, weights "
       << json_text(model, "weights") << " |\n";
  }
  if (a.calibrations.empty()) {
    md << "| Calibration | none needed (no calibrated BH config ran) |\n";
  }
  for (const json& c : a.calibrations) {
    md << "| Calibration | " << json_text(c, "source") << ": " << code(json_text(c, "path"))
       << " (fingerprint " << code(json_text(c, "fingerprint")) << ", " << json_text(c, "method")
       << ")" << (c.contains("text") ? " from text " + code(json_text(c, "text")) : std::string())
       << " |\n";
  }
  for (const json& s : a.settings) md << "| Settings | " << code(s.dump()) << " |\n";
  for (const json& r : a.runs) {
    md << "| Commit | " << code(json_text(r, "commit")) << " (bhmoe "
       << json_text(r, "bhmoe_version") << ") |\n"
       << "| Machine | " << cell(json_text(r, "host")) << "; " << cell(json_text(r, "cpu")) << "; "
       << json_text(r, "hardware_threads") << " hardware threads, " << json_text(r, "threads")
       << " used |\n";
  }
  md << "| Run time | " << duration(a.total_wall_time_sec)
     << " of experiment time (sum over rows); "
     << "first row " << (a.first_timestamp.empty() ? "—" : a.first_timestamp) << ", last row "
     << (a.last_timestamp.empty() ? "—" : a.last_timestamp) << " |\n\n";
  if (!a.clamped_configs.empty()) {
    md << "Configs whose max_k exceeded the model's expert count were **clamped to N** (the router "
          "spec column shows what ran): ";
    for (size_t i = 0; i < a.clamped_configs.size(); ++i)
      md << (i ? ", " : "") << code(a.clamped_configs[i]);
    md << ".\n\n";
  }
}

}  // namespace

std::string utc_now() {
  std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buffer;
}

std::string report_markdown(const Analysis& a, const std::vector<ResultRow>& rows,
                            const ReportContext& context) {
  std::ostringstream md;
  md << "# Benjamini–Hochberg expert routing: experiment report\n\n";
  md << "Generated " << context.generated_at << " by `bhmoe report` from `results.jsonl`.\n\n";
  md << "**Counts:** " << a.total_rows << " experiments (" << a.ok_rows << " ok, " << a.error_rows
     << " failed): " << a.generate_rows << " generation runs over " << a.configs.size()
     << " configs × " << a.prompts.size() << " prompts in " << a.categories.size() << " categories";
  if (a.score_rows)
    md << ", " << a.score_rows << " text-scoring runs over " << a.score_configs.size()
       << " configs";
  md << "; experiments: ";
  for (size_t i = 0; i < a.experiments.size(); ++i) md << (i ? ", " : "") << code(a.experiments[i]);
  md << ".\n\n";

  setup_section(md, a);

  const ConfigSummary* base = a.baseline.empty() ? nullptr : find_config(a, a.baseline);

  md << "## Executive summary\n\n";
  if (a.configs.empty()) {
    md << "No generation experiments in these results.\n\n";
  } else if (!base) {
    md << "No `" << kBaselineConfig << "` rows, so no reductions are computed.\n\n";
  } else {
    md << "Every config was applied in every layer of the model, and every count below was "
          "measured "
          "from the routing decisions the engine made (prompt and generated tokens, all layers), "
          "not "
          "copied from the config. Baseline `"
       << a.baseline << "` used " << fixed(base->mean_experts) << " experts per token.\n\n";
    md << "| BH config | router | mean experts | reduction vs " << a.baseline
       << " | KL to native (nats) | prompt NLL | continuation NLL (native) "
          "|\n|---|---|---|---|---|---|---|\n";
    for (const ConfigSummary& s : a.configs) {
      if (s.rule != "bh") continue;
      md << "| " << code(s.config_name) << " | " << code(s.router) << " | " << fixed(s.mean_experts)
         << " | " << fixed(s.reduction_pct, 1) << "% | " << fixed(s.kl_to_native, 4) << " | "
         << fixed(s.prompt_nll, 3) << " | " << fixed(s.continuation_nll_native, 3) << " |\n";
    }
    md << "\nFor reference, `" << a.baseline << "`: prompt NLL " << fixed(base->prompt_nll, 3)
       << ", continuation NLL (native) " << fixed(base->continuation_nll_native, 3) << ".\n\n";
  }

  md << "## Summary by config\n\n";
  if (!a.configs.empty()) {
    md << "Mean experts per token over the config's prompts (sd across prompts; mean per-token "
          "sd), "
          "share of routing decisions at the ceiling (max_k) and at the floor (min_k), utilization "
          "CV, "
          "and time per experiment (prefill + greedy decode).\n\n";
    md << "| config | rule | max_k | rows | mean experts | sd (prompts) | sd (tokens) | min | max "
          "| % at "
          "ceiling | % at floor | weight entropy | util. CV | max/min | inference s | prefill s | "
          "decode s | tokens/s |\n";
    md << "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (const ConfigSummary& s : a.configs) {
      md << "| " << code(s.config_name) << " | " << s.rule << " | " << s.max_k
         << (s.clamped() ? " (clamped from " + std::to_string(s.max_k_requested) + ")"
                       : std::string())
         << " | " << s.rows - s.errors
         << (s.errors ? " (+" + std::to_string(s.errors) + " failed)" : std::string()) << " | "
         << fixed(s.mean_experts) << " | " << fixed(s.sd_experts_across_prompts) << " | "
         << fixed(s.mean_within_sd) << " | " << fixed(s.min_experts, 0) << " | "
         << fixed(s.max_experts, 0) << " | " << fixed(s.pct_at_ceiling, 1) << " | "
         << fixed(s.pct_at_floor, 1) << " | " << fixed(s.weight_entropy, 3) << " | "
         << fixed(s.utilization_cv, 3) << " | " << fixed(s.utilization_max_min_ratio, 1) << " | "
         << fixed(s.mean_inference_time, 3) << " | " << fixed(s.mean_prefill_time, 3) << " | "
         << fixed(s.mean_decode_time, 3) << " | " << fixed(s.mean_tokens_per_sec, 1) << " |\n";
    }
    md << "\n";
    const std::string warm = warmup_note(a);
    if (!warm.empty()) md << "Timings: " << warm << "\n\n";
  } else {
    md << "No generation experiments.\n\n";
  }

  md << "## Quality\n\n";
  md << "Quality is measured, not assumed. `prompt NLL`: mean negative log-likelihood (nats/token) "
        "of "
        "each prompt's tokens under the config. `KL to native`: mean KL(native ‖ config) of the "
        "next-token distributions over the prompt positions, native = the model's own top-k "
        "routing. "
        "`continuation NLL (native)`: the config's greedy continuation scored by the native model "
        "(how plausible the generated text is to the unmodified model).\n\n";
  if (!a.configs.empty()) {
    md << "| config | mean experts | prompt NLL | prompt perplexity | KL to native | continuation "
          "NLL "
          "(native) |\n|---|---|---|---|---|---|\n";
    for (const ConfigSummary& s : a.configs) {
      md << "| " << code(s.config_name) << " | " << fixed(s.mean_experts) << " | "
         << fixed(s.prompt_nll, 3) << " | " << fixed(std::exp(s.prompt_nll), 2) << " | "
         << fixed(s.kl_to_native, 4) << " | " << fixed(s.continuation_nll_native, 3) << " |\n";
    }
    md << "\n";
  }
  if (!a.matched.empty()) matched_section(md, a, rows);
  if (!a.pareto.empty() && a.matched.empty()) {
    md << "### Held-out text: perplexity at matched expert use (pareto)\n\n";
    protocol_lines(md, rows);
    std::map<std::string, int64_t> text_tokens;
    for (const ResultRow& r : rows) {
      if (r.kind == "score_text" && r.ok()) text_tokens[r.text_name] = r.num_scored_tokens;
    }
    md << "Texts:";
    for (const auto& [name, n] : text_tokens)
      md << " " << code(name) << " (" << n << " tokens scored)";
    md << ".\n\n`top-k at match`: top-k's perplexity interpolated at the config's mean experts "
          "(between the two top-k configs around it); below it means the adaptive rule is better "
          "at "
          "equal expert use.\n\n";
    md << "| config | rule | router | mean experts | perplexity | top-k at match | tokens |\n"
          "|---|---|---|---|---|---|---|\n";
    for (const ParetoPoint& p : a.pareto) {
      md << "| " << code(p.config_name) << " | " << p.rule << " | " << code(p.router) << " | "
         << fixed(p.mean_experts) << " | " << fixed(p.perplexity, 3) << " | "
         << fixed(p.topk_perplexity_at_match, 3) << " | " << p.tokens << " |\n";
    }
    md << "\n";
  }

  md << "## Statistical tests: paired t-tests vs "
     << (a.baseline.empty() ? kBaselineConfig : a.baseline) << "\n\n";
  if (a.ttests.empty()) {
    md << "Not computed (needs `" << kBaselineConfig
       << "` and other configs on the same prompts).\n\n";
  } else {
    md << "Two-sided paired t-tests over the prompts (pairs = the same prompt under the config and "
          "the baseline); p from Student's t (Boost.Math); **p (Holm)**: Holm's step-down "
          "adjustment over the configs tested on the same metric (one family per metric), the p "
          "to read when several configs are tested; Cohen's d for paired samples d = mean(diff) / "
          "sd(diff). A zero-variance difference gives t = ±∞, p = 0 (constant shift) or t = 0, "
          "p = 1 (identical). Expert counts are not tested for configs that fix them by "
          "construction (top-k selects exactly k experts on every prompt, so its difference from "
          "the baseline is k − 8, not a measurement)";
    {
      std::vector<std::string> fixed_configs;
      for (const ConfigSummary& s : a.configs) {
        if (s.fixed_count() && s.config_name != a.baseline) fixed_configs.push_back(code(s.config_name));
      }
      if (!fixed_configs.empty()) {
        md << ": left out for ";
        for (size_t i = 0; i < fixed_configs.size(); ++i) md << (i ? ", " : "") << fixed_configs[i];
      }
    }
    md << ".\n\n";
    md << "| config | metric | n | mean (config) | mean (baseline) | mean diff | t | df | p | "
          "p (Holm) | Cohen's d |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (const TTestResult& t : a.ttests) {
      md << "| " << code(t.config_name) << " | " << t.metric << " | " << t.test.n << " | "
         << fixed(t.mean_config, 3) << " | " << fixed(t.mean_baseline, 3) << " | "
         << fixed(t.test.mean_diff, 3) << " | " << fixed(t.test.t, 2) << " | "
         << fixed(t.test.df, 0) << " | " << p_value_text(t.test.p_value) << " | "
         << p_value_text(t.p_holm) << " | " << fixed(t.test.cohens_d, 2) << " |\n";
    }
    md << "\n";
  }

  md << "## By prompt category\n\n";
  if (a.by_category.empty()) {
    md << "No generation experiments.\n\n";
  } else {
    md << "Mean experts per token (mean over the category's prompts).\n\n| config |";
    for (const std::string& c : a.categories) md << " " << cell(c) << " |";
    md << "\n|---|";
    for (size_t i = 0; i < a.categories.size(); ++i) md << "---|";
    md << "\n";
    for (const ConfigSummary& s : a.configs) {
      md << "| " << code(s.config_name) << " |";
      for (const std::string& c : a.categories) {
        double v = kNaN;
        for (const CategorySummary& cs : a.by_category) {
          if (cs.category == c && cs.config_name == s.config_name) v = cs.mean_experts;
        }
        md << " " << fixed(v) << " |";
      }
      md << "\n";
    }
    md << "\n";
  }

  md << "## max_k analysis\n\n";
  if (a.max_k.empty()) {
    // Say what is missing: the comparison needs generation rows of BH configs with a max_k. BH may
    // well have run (e.g. a pareto run scores text only), so never claim it is absent when it is not.
    std::vector<std::string> bh_scored;
    for (const ConfigSummary& s : a.score_configs) {
      if (s.rule == "bh") bh_scored.push_back(code(s.config_name));
    }
    md << "No max_k comparison: it needs generation (`generate`) rows of BH configs at one or more "
          "max_k (with top-k at k = max_k and native `"
       << kBaselineConfig << "` to compare against), and these results have none";
    if (!bh_scored.empty()) {
      md << ". BH did run here, on held-out text (" << bh_scored.size() << " config"
         << (bh_scored.size() == 1 ? "" : "s") << ": ";
      for (size_t i = 0; i < bh_scored.size(); ++i) md << (i ? ", " : "") << bh_scored[i];
      md << "); its expert use and quality are in the text-scoring section above";
    }
    md << ".\n\n";
  } else {
    md << "`baseline_experts`: measured mean of top-k with k = max_k (the ceiling BH may reach); "
          "`bh_mean_experts`: mean over every BH config with that max_k (all alphas), with its 95% "
          "t-interval across prompts (each prompt's mean over the alphas); **reduction vs native**: "
          "(native − BH) / native × 100 against native `"
       << (a.baseline.empty() ? kBaselineConfig : a.baseline)
       << "`, the routing the model runs without BH; `reduction_pct` (the original study's column) "
          "is against top-k at k = max_k instead, which grows with max_k by construction. Both "
          "are in `max_k_comparison.csv`.\n\n";
    md << "| max_k | baseline_experts (top-k, k = max_k) | bh_mean_experts [95% CI] | reduction vs "
          "native | reduction_pct (vs top-max_k) | BH median | BH q1–q3 |\n"
          "|---|---|---|---|---|---|---|\n";
    for (const MaxKRow& m : a.max_k) {
      md << "| " << m.max_k << " | " << fixed(m.baseline_experts) << " | "
         << fixed(m.bh_mean_experts) << " [" << fixed(m.bh_ci.lo) << ", " << fixed(m.bh_ci.hi)
         << "] | " << fixed(m.reduction_vs_native_pct, 1) << "% | " << fixed(m.reduction_pct, 1)
         << "% | " << fixed(m.bh_box.median, 1) << " | " << fixed(m.bh_box.q1, 1) << "–"
         << fixed(m.bh_box.q3, 1) << " |\n";
    }
    md << "\n";
    if (!a.max_k_alpha.empty()) {
      std::vector<int> ks;
      std::vector<double> alphas;
      for (const MaxKAlphaCell& c : a.max_k_alpha) {
        if (std::find(ks.begin(), ks.end(), c.max_k) == ks.end()) ks.push_back(c.max_k);
        if (std::find(alphas.begin(), alphas.end(), c.alpha) == alphas.end())
          alphas.push_back(c.alpha);
      }
      std::sort(ks.begin(), ks.end());
      std::sort(alphas.begin(), alphas.end());
      md << "BH mean experts per token, alpha × max_k:\n\n| alpha |";
      for (int k : ks) md << " max_k " << k << " |";
      md << "\n|---|";
      for (size_t i = 0; i < ks.size(); ++i) md << "---|";
      md << "\n";
      for (double alpha : alphas) {
        md << "| " << fixed(alpha, 3) << " |";
        for (int k : ks) {
          double v = kNaN;
          for (const MaxKAlphaCell& c : a.max_k_alpha) {
            if (c.max_k == k && c.alpha == alpha) v = c.mean_experts;
          }
          md << " " << fixed(v) << " |";
        }
        md << "\n";
      }
      md << "\n";
    }
  }

  md << "## Per-layer expert use\n\n";
  if (a.configs.empty() || a.num_layers == 0) {
    md << "No generation experiments.\n\n";
  } else {
    md << "Mean experts per token in each layer (rows: configs; columns: layers).\n\n| config |";
    for (int l = 0; l < a.num_layers; ++l) md << " L" << l << " |";
    md << "\n|---|";
    for (int l = 0; l < a.num_layers; ++l) md << "---|";
    md << "\n";
    for (const ConfigSummary& s : a.configs) {
      md << "| " << code(s.config_name) << " |";
      for (int l = 0; l < a.num_layers; ++l) {
        md << " "
           << fixed(l < static_cast<int>(s.per_layer_mean_experts.size())
                        ? s.per_layer_mean_experts[l]
                        : kNaN,
                    1)
           << " |";
      }
      md << "\n";
    }
    md << "\nSee `plots/layer_heatmap.png`.\n\n";
  }

  md << "## Plots\n\n";
  if (!context.plot_error.empty()) {
    md << "**The plots could not be made:** " << context.plot_error << "\n\n";
  }
  if (context.plots.empty() && context.plot_error.empty()) md << "No data to plot.\n\n";
  for (const PlotFile& p : context.plots) {
    md << "### " << p.title << "\n\n![" << p.title << "](plots/" << p.name << ".png)\n\n"
       << p.caption << " ([SVG](plots/" << p.name << ".svg), [gnuplot script](plots/" << p.name
       << ".gp))\n\n";
  }

  md << "## Conclusions\n\n";
  if (base) {
    const ConfigSummary* fewest = nullptr;
    const ConfigSummary* closest = nullptr;
    for (const ConfigSummary& s : a.configs) {
      if (s.rule != "bh" || !std::isfinite(s.mean_experts)) continue;
      if (!fewest || s.mean_experts < fewest->mean_experts) fewest = &s;
      if (std::isfinite(s.kl_to_native) && (!closest || s.kl_to_native < closest->kl_to_native))
        closest = &s;
    }
    if (fewest) {
      md << "- The BH config with the fewest experts, `" << fewest->config_name << "`, used "
         << fixed(fewest->mean_experts) << " experts per token (" << fixed(fewest->reduction_pct, 1)
         << "% vs `" << a.baseline << "`) at a KL to native of " << fixed(fewest->kl_to_native, 4)
         << " nats and a prompt NLL of " << fixed(fewest->prompt_nll, 3) << " (baseline "
         << fixed(base->prompt_nll, 3) << ").\n";
    }
    if (closest && closest != fewest) {
      md << "- The BH config closest to native, `" << closest->config_name << "`, used "
         << fixed(closest->mean_experts) << " experts per token ("
         << fixed(closest->reduction_pct, 1) << "% vs `" << a.baseline << "`) at a KL of "
         << fixed(closest->kl_to_native, 4) << " nats.\n";
    }
    int significant = 0, tested = 0;
    for (const TTestResult& t : a.ttests) {
      if (t.metric != "avg_experts_per_token" || !std::isfinite(t.p_holm)) continue;
      ++tested;
      if (t.p_holm < 0.05) ++significant;
    }
    if (tested) {
      md << "- " << significant << " of " << tested
         << " adaptive configs differ from the baseline in mean experts per token at Holm-adjusted "
            "p < 0.05 (paired over prompts; top-k configs are not tested, their count is k by "
            "construction).\n";
    }
    for (const MaxKRow& m : a.max_k) {
      if (std::isfinite(m.reduction_vs_native_pct)) {
        const double pct = m.reduction_vs_native_pct;
        md << "- max_k " << m.max_k << ": BH averages " << fixed(m.bh_mean_experts) << " [95% CI "
           << fixed(m.bh_ci.lo) << ", " << fixed(m.bh_ci.hi) << "] experts per token against native `"
           << a.baseline << "`'s " << fixed(m.native_experts) << " (" << fixed(std::fabs(pct), 1)
           << (pct >= 0 ? "% fewer" : "% more") << ").\n";
      }
    }
  }
  matched_conclusions(md, a);
  const std::pair<std::string, const char*> adaptive_rules[] = {{"bh", "BH"},
                                                                {"topp", "top-p"},
                                                                {"skip", "dynamic skipping"},
                                                                {"threshold", "threshold"},
                                                                {"hc", "Higher Criticism"},
                                                                {"entropy", "entropy-bucketed k"}};
  for (const auto& [rule, label] : adaptive_rules) {
    if (!a.matched.empty()) break;  // the matched-compute verdicts above replace these lines
    int matched = 0, better = 0;
    double sum_pct = 0;
    for (const ParetoPoint& p : a.pareto) {
      if (p.rule != rule || !std::isfinite(p.topk_perplexity_at_match)) continue;
      ++matched;
      double pct = (p.perplexity - p.topk_perplexity_at_match) / p.topk_perplexity_at_match * 100;
      sum_pct += pct;
      if (pct < 0) ++better;
    }
    if (matched) {
      md << "- Held-out text, " << label << " against top-k at matched mean experts: " << better
         << " of " << matched
         << " configs have lower perplexity than interpolated top-k; mean difference "
         << fixed(sum_pct / matched, 2) << "% (negative = better than top-k).\n";
    }
  }
  if (!a.models.empty() &&
      (a.models.front().value("synthetic", false) || a.models.front().value("small", false))) {
    md << (a.models.front().value("synthetic", false)
               ? "- These results come from a synthetic model: treat them as a test of the "
                 "pipeline, not as evidence about OLMoE.\n"
               : "- These results come from a small model: evidence about this model, not about "
                 "OLMoE-1B-7B or any full-size model.\n");
  }
  if (a.error_rows) md << "- " << a.error_rows << " experiments failed; see Errors below.\n";
  md << "\n";

  if (!a.errors.empty()) {
    md << "## Errors\n\n| experiment | error |\n|---|---|\n";
    for (const auto& [key, message] : a.errors)
      md << "| " << code(key) << " | " << cell(message) << " |\n";
    md << "\n";
  }

  md << "## Appendix: configs\n\n| config | rule | router spec (canonical, as run) | config "
        "|\n|---|---|---|---|\n";
  auto appendix = [&](const std::vector<ConfigSummary>& list) {
    for (const ConfigSummary& s : list) {
      json config;
      for (const ResultRow& r : rows) {
        if (r.config_name == s.config_name) {
          config = r.config;
          break;
        }
      }
      md << "| " << code(s.config_name) << " | " << s.rule << " | " << code(s.router) << " | "
         << code(config.dump()) << " |\n";
    }
  };
  appendix(a.configs);
  appendix(a.score_configs);
  md << "\nFiles: `results.jsonl` (one JSON object per experiment), `bh_routing_results.csv`, "
        "`max_k_comparison.csv`, `matched_compute.csv` (text scoring), `analysis_summary.json`, "
        "`run.log`, `plots/`.\n";
  return md.str();
}

OutputSummary write_outputs(const std::filesystem::path& out_dir, std::vector<ResultRow> rows) {
  rows = dedupe_and_sort(std::move(rows));
  OutputSummary summary;
  summary.analysis = analyze(rows);
  std::filesystem::create_directories(out_dir);
  write_file_atomic(out_dir / "bh_routing_results.csv", results_csv(rows));
  write_file_atomic(out_dir / "max_k_comparison.csv", max_k_csv(summary.analysis));
  if (!summary.analysis.matched.empty()) {
    write_file_atomic(out_dir / "matched_compute.csv", matched_compute_csv(summary.analysis));
  }
  write_file_atomic(
      out_dir / "analysis_summary.json",
      analysis_to_json(summary.analysis).dump(2, ' ', false, json::error_handler_t::replace) +
          "\n");
  ReportContext context;
  context.generated_at = utc_now();
  try {
    context.plots = render_plots(summary.analysis, rows, out_dir / "plots");
  } catch (const Error& e) {
    context.plot_error = e.what();
  }
  summary.plots = context.plots;
  write_file_atomic(out_dir / "REPORT.md", report_markdown(summary.analysis, rows, context));
  if (!context.plot_error.empty()) fail(context.plot_error);
  return summary;
}

}  // namespace bhmoe::experiments
