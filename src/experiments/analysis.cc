#include "experiments/analysis.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

namespace bhmoe::experiments {
namespace {

using nlohmann::json;

double mean_of(const std::vector<double>& values) {
  double sum = 0;
  int n = 0;
  for (double v : values) {
    if (std::isfinite(v)) {
      sum += v;
      ++n;
    }
  }
  return n ? sum / n : kNaN;
}

double sample_sd(const std::vector<double>& values) {
  double mean = mean_of(values);
  double squares = 0;
  int n = 0;
  for (double v : values) {
    if (std::isfinite(v)) {
      squares += (v - mean) * (v - mean);
      ++n;
    }
  }
  return n >= 2 ? std::sqrt(squares / (n - 1)) : (n == 1 ? 0.0 : kNaN);
}

// Mean of `field` over rows weighted by `weight` (finite values only).
template <typename Field, typename Weight>
double weighted_mean(const std::vector<const ResultRow*>& rows, Field field, Weight weight) {
  double sum = 0, total = 0;
  for (const ResultRow* r : rows) {
    double v = field(*r), w = weight(*r);
    if (std::isfinite(v) && w > 0) {
      sum += v * w;
      total += w;
    }
  }
  return total > 0 ? sum / total : kNaN;
}

template <typename Field>
std::vector<double> collect(const std::vector<const ResultRow*>& rows, Field field) {
  std::vector<double> out;
  out.reserve(rows.size());
  for (const ResultRow* r : rows) out.push_back(field(*r));
  return out;
}

void add_histogram(std::vector<int64_t>& into, const std::vector<int64_t>& from) {
  if (into.size() < from.size()) into.resize(from.size(), 0);
  for (size_t i = 0; i < from.size(); ++i) into[i] += from[i];
}

void add_unique(std::vector<json>& into, const json& value) {
  if (value.is_null()) return;
  if (std::find(into.begin(), into.end(), value) == into.end()) into.push_back(value);
}

// Value at 0-based fractional rank `rank` of the sorted multiset described by `histogram`.
double histogram_order_stat(const std::vector<int64_t>& histogram, int64_t index) {
  int64_t seen = 0;
  for (size_t c = 0; c < histogram.size(); ++c) {
    seen += histogram[c];
    if (index < seen) return static_cast<double>(c);
  }
  return static_cast<double>(histogram.size() - 1);
}

double histogram_quantile(const std::vector<int64_t>& histogram, int64_t n, double q) {
  double rank = q * static_cast<double>(n - 1);
  int64_t lo = static_cast<int64_t>(std::floor(rank));
  int64_t hi = std::min<int64_t>(lo + 1, n - 1);
  double a = histogram_order_stat(histogram, lo), b = histogram_order_stat(histogram, hi);
  return a + (b - a) * (rank - static_cast<double>(lo));
}

ConfigSummary summarize_config(const std::vector<const ResultRow*>& rows, int total, int errors) {
  ConfigSummary s;
  const ResultRow& first = *rows.front();
  static_cast<RouterConfig&>(s) = first;  // every row of a config records the same RouterConfig
  s.rows = total;
  s.errors = errors;
  auto events = [](const ResultRow& r) { return static_cast<double>(r.num_routing_events); };
  std::vector<double> means =
      collect(rows, [](const ResultRow& r) { return r.avg_experts_per_token; });
  s.mean_experts = mean_of(means);
  s.sd_experts_across_prompts = sample_sd(means);
  s.experts_ci = mean_t_interval(means);
  s.inference_time_ci =
      mean_t_interval(collect(rows, [](const ResultRow& r) { return r.inference_time_sec; }));
  s.prefill_time_ci =
      mean_t_interval(collect(rows, [](const ResultRow& r) { return r.prefill_time_sec; }));
  s.kl_to_native_ci =
      mean_t_interval(collect(rows, [](const ResultRow& r) { return r.kl_to_native; }));
  s.utilization_cv_ci =
      mean_t_interval(collect(rows, [](const ResultRow& r) { return r.expert_utilization_cv; }));
  s.mean_within_sd =
      mean_of(collect(rows, [](const ResultRow& r) { return r.std_experts_per_token; }));
  for (const ResultRow* r : rows) {
    if (std::isfinite(r->min_experts) && !(r->min_experts >= s.min_experts))
      s.min_experts = r->min_experts;
    if (std::isfinite(r->max_experts) && !(r->max_experts <= s.max_experts))
      s.max_experts = r->max_experts;
  }
  s.pct_at_ceiling = weighted_mean(
      rows, [](const ResultRow& r) { return r.pct_at_ceiling; }, events);
  s.pct_at_floor = weighted_mean(
      rows, [](const ResultRow& r) { return r.pct_at_floor; }, events);
  s.weight_entropy = weighted_mean(
      rows, [](const ResultRow& r) { return r.weight_entropy; }, events);
  s.mean_inference_time =
      mean_of(collect(rows, [](const ResultRow& r) { return r.inference_time_sec; }));
  s.mean_prefill_time =
      mean_of(collect(rows, [](const ResultRow& r) { return r.prefill_time_sec; }));
  s.mean_decode_time = mean_of(collect(rows, [](const ResultRow& r) { return r.decode_time_sec; }));
  s.mean_tokens_per_sec =
      mean_of(collect(rows, [](const ResultRow& r) { return r.tokens_per_sec; }));
  s.utilization_cv =
      mean_of(collect(rows, [](const ResultRow& r) { return r.expert_utilization_cv; }));
  s.utilization_max_min_ratio =
      mean_of(collect(rows, [](const ResultRow& r) { return r.expert_utilization_max_min_ratio; }));
  s.prompt_nll = mean_of(collect(rows, [](const ResultRow& r) { return r.prompt_nll; }));
  s.kl_to_native = mean_of(collect(rows, [](const ResultRow& r) { return r.kl_to_native; }));
  s.continuation_nll_native =
      mean_of(collect(rows, [](const ResultRow& r) { return r.continuation_nll_native; }));
  size_t layers = 0;
  for (const ResultRow* r : rows) layers = std::max(layers, r->per_layer_mean_experts.size());
  s.per_layer_mean_experts.assign(layers, kNaN);
  s.per_layer_ci.assign(layers, MeanInterval{});
  for (size_t l = 0; l < layers; ++l) {
    std::vector<double> values;
    for (const ResultRow* r : rows) {
      if (l < r->per_layer_mean_experts.size()) values.push_back(r->per_layer_mean_experts[l]);
    }
    s.per_layer_mean_experts[l] = mean_of(values);
    s.per_layer_ci[l] = mean_t_interval(values);
  }
  for (const ResultRow* r : rows) add_histogram(s.count_histogram, r->count_histogram);
  s.box = box_from_histogram(s.count_histogram);
  return s;
}

json num(double v) {
  return std::isfinite(v) ? json(v) : json(nullptr);
}

json interval_json(const MeanInterval& i) {
  return {{"n", i.n}, {"mean", num(i.mean)}, {"lo", num(i.lo)}, {"hi", num(i.hi)}};
}

json box_json(const BoxStats& b) {
  return {{"n", b.n},        {"min", num(b.min)}, {"q1", num(b.q1)},    {"median", num(b.median)},
          {"q3", num(b.q3)}, {"max", num(b.max)}, {"mean", num(b.mean)}};
}

json config_json(const ConfigSummary& s) {
  json layers = json::array();
  for (double v : s.per_layer_mean_experts) layers.push_back(num(v));
  return {{"config_name", s.config_name},
          {"router", s.router},
          {"rule", s.rule},
          {"max_k", s.max_k},
          {"max_k_requested", s.max_k_requested},
          {"min_k", s.min_k},
          {"alpha", num(s.alpha)},
          {"top_p", num(s.top_p)},
          {"clamped", s.clamped()},
          {"rows", s.rows},
          {"errors", s.errors},
          {"mean_experts", num(s.mean_experts)},
          {"sd_experts_across_prompts", num(s.sd_experts_across_prompts)},
          {"mean_within_sd", num(s.mean_within_sd)},
          {"min_experts", num(s.min_experts)},
          {"max_experts", num(s.max_experts)},
          {"pct_at_ceiling", num(s.pct_at_ceiling)},
          {"pct_at_floor", num(s.pct_at_floor)},
          {"weight_entropy", num(s.weight_entropy)},
          {"mean_inference_time_sec", num(s.mean_inference_time)},
          {"mean_prefill_time_sec", num(s.mean_prefill_time)},
          {"mean_decode_time_sec", num(s.mean_decode_time)},
          {"mean_tokens_per_sec", num(s.mean_tokens_per_sec)},
          {"expert_utilization_cv", num(s.utilization_cv)},
          {"expert_utilization_max_min_ratio", num(s.utilization_max_min_ratio)},
          {"prompt_nll", num(s.prompt_nll)},
          {"kl_to_native", num(s.kl_to_native)},
          {"continuation_nll_native", num(s.continuation_nll_native)},
          {"reduction_pct_vs_baseline", num(s.reduction_pct)},
          {"mean_experts_ci95", interval_json(s.experts_ci)},
          {"inference_time_sec_ci95", interval_json(s.inference_time_ci)},
          {"kl_to_native_ci95", interval_json(s.kl_to_native_ci)},
          {"expert_utilization_cv_ci95", interval_json(s.utilization_cv_ci)},
          {"per_layer_mean_experts", layers},
          {"count_histogram", s.count_histogram},
          {"box", box_json(s.box)}};
}

}  // namespace

BoxStats box_from_histogram(const std::vector<int64_t>& histogram) {
  BoxStats b;
  int64_t n = 0;
  double sum = 0;
  for (size_t c = 0; c < histogram.size(); ++c) {
    n += histogram[c];
    sum += static_cast<double>(c) * static_cast<double>(histogram[c]);
  }
  b.n = n;
  if (n == 0) return b;
  b.mean = sum / static_cast<double>(n);
  b.min = histogram_quantile(histogram, n, 0.0);
  b.q1 = histogram_quantile(histogram, n, 0.25);
  b.median = histogram_quantile(histogram, n, 0.5);
  b.q3 = histogram_quantile(histogram, n, 0.75);
  b.max = histogram_quantile(histogram, n, 1.0);
  return b;
}

BoxStats box_from_values(std::vector<double> values) {
  values.erase(
      std::remove_if(values.begin(), values.end(), [](double v) { return !std::isfinite(v); }),
      values.end());
  BoxStats b;
  b.n = static_cast<int64_t>(values.size());
  if (values.empty()) return b;
  std::sort(values.begin(), values.end());
  auto quantile = [&](double q) {
    double rank = q * static_cast<double>(values.size() - 1);
    size_t lo = static_cast<size_t>(std::floor(rank));
    size_t hi = std::min(lo + 1, values.size() - 1);
    return values[lo] + (values[hi] - values[lo]) * (rank - static_cast<double>(lo));
  };
  b.min = values.front();
  b.q1 = quantile(0.25);
  b.median = quantile(0.5);
  b.q3 = quantile(0.75);
  b.max = values.back();
  b.mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
  return b;
}

Analysis analyze(const std::vector<ResultRow>& input) {
  Analysis a;
  std::vector<const ResultRow*> rows;
  for (const ResultRow& r : input) rows.push_back(&r);
  std::stable_sort(rows.begin(), rows.end(), [](const ResultRow* x, const ResultRow* y) {
    if (x->experiment != y->experiment) return x->experiment < y->experiment;
    return x->index < y->index;
  });

  std::vector<std::string> config_order, score_order;
  std::map<std::string, std::vector<const ResultRow*>> ok_by_config, ok_score_by_config;
  std::map<std::string, int> total_by_config, errors_by_config, score_total, score_errors;
  for (const ResultRow* r : rows) {
    ++a.total_rows;
    r->ok() ? ++a.ok_rows : ++a.error_rows;
    if (!r->ok()) a.errors.emplace_back(r->key, r->error);
    if (std::find(a.experiments.begin(), a.experiments.end(), r->experiment) ==
        a.experiments.end()) {
      a.experiments.push_back(r->experiment);
    }
    add_unique(a.models, r->model);
    add_unique(a.calibrations, r->calibration);
    add_unique(a.settings, r->settings);
    add_unique(a.runs, r->run);
    if (!r->timestamp.empty()) {
      if (a.first_timestamp.empty() || r->timestamp < a.first_timestamp)
        a.first_timestamp = r->timestamp;
      if (r->timestamp > a.last_timestamp) a.last_timestamp = r->timestamp;
    }
    a.total_wall_time_sec += r->wall_time_sec;
    if (r->ok()) a.num_layers = std::max(a.num_layers, r->num_layers);
    bool generate = r->kind == "generate";
    generate ? ++a.generate_rows : ++a.score_rows;
    auto& order = generate ? config_order : score_order;
    auto& totals = generate ? total_by_config : score_total;
    auto& errs = generate ? errors_by_config : score_errors;
    auto& oks = generate ? ok_by_config : ok_score_by_config;
    if (!totals.count(r->config_name)) order.push_back(r->config_name);
    ++totals[r->config_name];
    if (!r->ok()) {
      ++errs[r->config_name];
      continue;
    }
    oks[r->config_name].push_back(r);
    if (generate) {
      if (std::find(a.prompts.begin(), a.prompts.end(), r->prompt_id) == a.prompts.end()) {
        a.prompts.push_back(r->prompt_id);
      }
      if (std::find(a.categories.begin(), a.categories.end(), r->prompt_category) ==
          a.categories.end()) {
        a.categories.push_back(r->prompt_category);
      }
    }
  }

  for (const std::string& name : config_order) {
    auto it = ok_by_config.find(name);
    if (it == ok_by_config.end()) {
      ConfigSummary failed;
      failed.config_name = name;
      failed.rows = total_by_config[name];
      failed.errors = errors_by_config[name];
      a.configs.push_back(failed);
      continue;
    }
    a.configs.push_back(
        summarize_config(it->second, total_by_config[name], errors_by_config[name]));
    if (a.configs.back().clamped()) a.clamped_configs.push_back(name);
  }
  for (const std::string& name : score_order) {
    auto it = ok_score_by_config.find(name);
    if (it == ok_score_by_config.end()) continue;
    a.score_configs.push_back(summarize_config(it->second, score_total[name], score_errors[name]));
    if (a.score_configs.back().clamped()) a.clamped_configs.push_back(name);
  }

  // Baseline and reduction percentages.
  const ConfigSummary* baseline = nullptr;
  for (const ConfigSummary& s : a.configs) {
    if (s.config_name == kBaselineConfig && std::isfinite(s.mean_experts)) baseline = &s;
  }
  if (baseline) {
    a.baseline = baseline->config_name;
    for (ConfigSummary& s : a.configs) {
      if (baseline->mean_experts > 0 && std::isfinite(s.mean_experts)) {
        s.reduction_pct =
            (baseline->mean_experts - s.mean_experts) / baseline->mean_experts * 100.0;
      }
    }
  }

  // By prompt category × config.
  for (const std::string& category : a.categories) {
    for (const std::string& name : config_order) {
      std::vector<const ResultRow*> in;
      for (const ResultRow* r : ok_by_config[name]) {
        if (r->prompt_category == category) in.push_back(r);
      }
      if (in.empty()) continue;
      CategorySummary c;
      c.category = category;
      c.config_name = name;
      c.rows = static_cast<int>(in.size());
      std::vector<double> means =
          collect(in, [](const ResultRow& r) { return r.avg_experts_per_token; });
      c.mean_experts = mean_of(means);
      c.sd_experts = sample_sd(means);
      c.experts_ci = mean_t_interval(means);
      c.prompt_nll = mean_of(collect(in, [](const ResultRow& r) { return r.prompt_nll; }));
      c.kl_to_native = mean_of(collect(in, [](const ResultRow& r) { return r.kl_to_native; }));
      std::vector<int64_t> histogram;
      for (const ResultRow* r : in) add_histogram(histogram, r->count_histogram);
      c.box = box_from_histogram(histogram);
      a.by_category.push_back(c);
    }
  }

  // By max_k: top-k configs define the baseline for their k; BH configs are pooled over alphas.
  // Configs are grouped by the max_k they were named with (max_k_requested).
  std::set<int> max_ks;
  for (const ConfigSummary& s : a.configs) {
    if ((s.rule == "bh" || s.rule == "topk") && s.max_k_requested > 0)
      max_ks.insert(s.max_k_requested);
  }
  for (int k : max_ks) {
    MaxKRow m;
    m.max_k = k;
    std::vector<double> bh_means;
    std::map<std::string, std::vector<double>> bh_by_prompt;  // prompt -> its BH means (alphas)
    std::vector<int64_t> histogram;
    bool has_bh = false;
    for (const ConfigSummary& s : a.configs) {
      if (s.max_k_requested != k) continue;
      if (s.rule == "topk") m.baseline_experts = s.mean_experts;
      if (s.rule == "bh") {
        has_bh = true;
        for (const ResultRow* r : ok_by_config[s.config_name]) {
          bh_means.push_back(r->avg_experts_per_token);
          if (std::isfinite(r->avg_experts_per_token))
            bh_by_prompt[r->prompt_id].push_back(r->avg_experts_per_token);
          add_histogram(histogram, r->count_histogram);
        }
        if (std::isfinite(s.alpha))
          a.max_k_alpha.push_back({k, s.alpha, s.config_name, s.mean_experts, s.experts_ci});
      }
    }
    if (!has_bh) continue;
    m.bh_mean_experts = mean_of(bh_means);
    if (std::isfinite(m.baseline_experts) && m.baseline_experts > 0) {
      m.reduction_pct = (m.baseline_experts - m.bh_mean_experts) / m.baseline_experts * 100.0;
    }
    if (baseline && baseline->mean_experts > 0) {
      m.native_experts = baseline->mean_experts;
      m.reduction_vs_native_pct =
          (m.native_experts - m.bh_mean_experts) / m.native_experts * 100.0;
    }
    std::vector<double> per_prompt;
    for (const auto& [prompt, values] : bh_by_prompt) per_prompt.push_back(mean_of(values));
    m.bh_ci = mean_t_interval(per_prompt);
    m.bh_box = box_from_histogram(histogram);
    m.bh_histogram = std::move(histogram);
    a.max_k.push_back(m);
  }

  // Paired t-tests over prompts against the baseline.
  if (baseline) {
    std::map<std::string, const ResultRow*> base_by_prompt;
    for (const ResultRow* r : ok_by_config[baseline->config_name]) base_by_prompt[r->prompt_id] = r;
    struct Metric {
      const char* name;
      double ResultRow::*field;
    };
    const Metric metrics[] = {{"avg_experts_per_token", &ResultRow::avg_experts_per_token},
                              {"prompt_nll", &ResultRow::prompt_nll},
                              {"continuation_nll_native", &ResultRow::continuation_nll_native}};
    for (const ConfigSummary& s : a.configs) {
      if (s.config_name == baseline->config_name) continue;
      for (const Metric& metric : metrics) {
        // A count fixed by construction is not a measurement to test (see TTestResult).
        if (metric.field == &ResultRow::avg_experts_per_token && s.fixed_count()) continue;
        std::vector<double> x, y;
        for (const ResultRow* r : ok_by_config[s.config_name]) {
          auto it = base_by_prompt.find(r->prompt_id);
          if (it == base_by_prompt.end()) continue;
          double v = r->*metric.field, w = it->second->*metric.field;
          if (!std::isfinite(v) || !std::isfinite(w)) continue;
          x.push_back(v);
          y.push_back(w);
        }
        if (x.empty()) continue;
        TTestResult t;
        t.config_name = s.config_name;
        t.metric = metric.name;
        t.mean_config = mean_of(x);
        t.mean_baseline = mean_of(y);
        t.test = paired_t_test(x, y);
        a.ttests.push_back(t);
      }
    }
    // Holm over the configs of each metric: one family of hypotheses per metric.
    for (const Metric& metric : metrics) {
      std::vector<size_t> family;
      std::vector<double> p;
      for (size_t i = 0; i < a.ttests.size(); ++i) {
        if (a.ttests[i].metric != metric.name) continue;
        family.push_back(i);
        p.push_back(a.ttests[i].test.defined ? a.ttests[i].test.p_value : kNaN);
      }
      const std::vector<double> adjusted = holm_adjust(p);
      for (size_t j = 0; j < family.size(); ++j) a.ttests[family[j]].p_holm = adjusted[j];
    }
  }

  // Text scoring: perplexity against mean experts, token-weighted over texts.
  for (const ConfigSummary& s : a.score_configs) {
    ParetoPoint p;
    p.config_name = s.config_name;
    p.router = s.router;
    p.rule = s.rule;
    double nll = 0, experts = 0, events = 0;
    for (const ResultRow* r : ok_score_by_config[s.config_name]) {
      if (!std::isfinite(r->nll_mean) || r->num_scored_tokens <= 0) continue;
      nll += r->nll_mean * static_cast<double>(r->num_scored_tokens);
      p.tokens += r->num_scored_tokens;
      ++p.texts;
      if (std::isfinite(r->avg_experts_per_token)) {
        experts += r->avg_experts_per_token * static_cast<double>(r->num_routing_events);
        events += static_cast<double>(r->num_routing_events);
      }
    }
    if (p.tokens == 0) continue;
    p.nll_mean = nll / static_cast<double>(p.tokens);
    p.perplexity = std::exp(p.nll_mean);
    p.mean_experts = events > 0 ? experts / events : kNaN;
    a.pareto.push_back(p);
  }
  std::vector<std::pair<double, double>> topk_curve;
  for (const ParetoPoint& p : a.pareto) {
    if (p.rule == "topk" && std::isfinite(p.mean_experts))
      topk_curve.emplace_back(p.mean_experts, p.perplexity);
  }
  std::sort(topk_curve.begin(), topk_curve.end());
  for (ParetoPoint& p : a.pareto) {
    if (p.rule == "topk" || !std::isfinite(p.mean_experts)) continue;
    for (size_t i = 0; i + 1 < topk_curve.size(); ++i) {
      auto [x0, y0] = topk_curve[i];
      auto [x1, y1] = topk_curve[i + 1];
      if (p.mean_experts >= x0 && p.mean_experts <= x1 && x1 > x0) {
        p.topk_perplexity_at_match = y0 + (y1 - y0) * (p.mean_experts - x0) / (x1 - x0);
        break;
      }
    }
  }
  a.matched = matched_compute(rows);
  return a;
}

std::string warmup_note(const Analysis& a) {
  int warm = 0;
  for (const json& run : a.runs) {
    if (run.is_object() && run.value("warmup_tokens", int64_t{0}) > 0) ++warm;
  }
  const int total = static_cast<int>(a.runs.size());
  if (total == 0) return "";
  if (warm == total) {
    return "Each run process made one untimed warm-up forward pass (every expert selected) before "
           "its first timed experiment, so the first config was not timed cold.";
  }
  std::string cold = "the first config each such process ran was timed cold (page faults of the "
                     "mapped weights, caches, thread start-up), so its times are inflated";
  if (warm == 0) return "These rows come from runs without a warm-up pass: " + cold + ".";
  return std::to_string(total - warm) + " of the rows' " + std::to_string(total) +
         " distinct run records show no warm-up pass: " + cold + ".";
}

json analysis_to_json(const Analysis& a) {
  json j;
  j["format"] = "bhmoe-analysis/1";
  j["counts"] = {{"rows", a.total_rows},        {"ok", a.ok_rows},
                 {"errors", a.error_rows},      {"generate", a.generate_rows},
                 {"score_text", a.score_rows},  {"configs", a.configs.size()},
                 {"prompts", a.prompts.size()}, {"num_layers", a.num_layers}};
  j["experiments"] = a.experiments;
  j["prompts"] = a.prompts;
  j["categories"] = a.categories;
  j["baseline"] = a.baseline.empty() ? json(nullptr) : json(a.baseline);
  j["configs"] = json::array();
  for (const ConfigSummary& s : a.configs) j["configs"].push_back(config_json(s));
  j["by_category"] = json::array();
  for (const CategorySummary& c : a.by_category) {
    j["by_category"].push_back({{"category", c.category},
                                {"config_name", c.config_name},
                                {"rows", c.rows},
                                {"mean_experts", num(c.mean_experts)},
                                {"sd_experts", num(c.sd_experts)},
                                {"prompt_nll", num(c.prompt_nll)},
                                {"kl_to_native", num(c.kl_to_native)},
                                {"mean_experts_ci95", interval_json(c.experts_ci)},
                                {"box", box_json(c.box)}});
  }
  j["max_k_comparison"] = json::array();
  for (const MaxKRow& m : a.max_k) {
    j["max_k_comparison"].push_back({{"max_k", m.max_k},
                                     {"baseline_experts", num(m.baseline_experts)},
                                     {"bh_mean_experts", num(m.bh_mean_experts)},
                                     {"reduction_pct", num(m.reduction_pct)},
                                     {"native_experts", num(m.native_experts)},
                                     {"reduction_vs_native_pct", num(m.reduction_vs_native_pct)},
                                     {"bh_mean_experts_ci95", interval_json(m.bh_ci)},
                                     {"bh_count_histogram", m.bh_histogram},
                                     {"bh_box", box_json(m.bh_box)}});
  }
  j["max_k_alpha"] = json::array();
  for (const MaxKAlphaCell& c : a.max_k_alpha) {
    j["max_k_alpha"].push_back({{"max_k", c.max_k},
                                {"alpha", num(c.alpha)},
                                {"config_name", c.config_name},
                                {"mean_experts", num(c.mean_experts)},
                                {"mean_experts_ci95", interval_json(c.ci)}});
  }
  j["ttests"] = json::array();
  for (const TTestResult& t : a.ttests) {
    j["ttests"].push_back({{"config_name", t.config_name},
                           {"baseline", a.baseline},
                           {"metric", t.metric},
                           {"n", t.test.n},
                           {"mean_config", num(t.mean_config)},
                           {"mean_baseline", num(t.mean_baseline)},
                           {"mean_diff", num(t.test.mean_diff)},
                           {"sd_diff", num(t.test.sd_diff)},
                           {"t", num(t.test.t)},
                           {"df", num(t.test.df)},
                           {"p_value", num(t.test.p_value)},
                           {"p_holm", num(t.p_holm)},
                           {"cohens_d", num(t.test.cohens_d)},
                           {"defined", t.test.defined}});
  }
  j["text_scoring"] = json::array();
  for (const ConfigSummary& s : a.score_configs) j["text_scoring"].push_back(config_json(s));
  j["pareto"] = json::array();
  for (const ParetoPoint& p : a.pareto) {
    j["pareto"].push_back({{"config_name", p.config_name},
                           {"router", p.router},
                           {"rule", p.rule},
                           {"mean_experts", num(p.mean_experts)},
                           {"perplexity", num(p.perplexity)},
                           {"nll_mean", num(p.nll_mean)},
                           {"tokens", p.tokens},
                           {"texts", p.texts},
                           {"topk_perplexity_at_match", num(p.topk_perplexity_at_match)}});
  }
  j["matched_compute"] = json::array();
  auto interval = [](const Interval& i) {
    return json{{"estimate", num(i.estimate)}, {"lo", num(i.lo)}, {"hi", num(i.hi)}};
  };
  for (const MatchedPoint& m : a.matched) {
    j["matched_compute"].push_back({{"scope", m.scope},
                                    {"config_name", m.config_name},
                                    {"router", m.router},
                                    {"rule", m.rule},
                                    {"tokens", m.tokens},
                                    {"windows", m.windows},
                                    {"mean_experts", interval(m.mean_experts)},
                                    {"nll", interval(m.nll)},
                                    {"topk_nll_at_match", interval(m.topk_nll_at_match)},
                                    {"delta_nll", interval(m.delta_nll)},
                                    {"p_value", num(m.p_value)},
                                    {"p_holm", num(m.p_holm)}});
  }
  j["clamped_configs"] = a.clamped_configs;
  j["errors"] = json::array();
  for (const auto& [key, message] : a.errors)
    j["errors"].push_back({{"key", key}, {"error", message}});
  j["models"] = a.models;
  j["calibrations"] = a.calibrations;
  j["settings"] = a.settings;
  j["runs"] = a.runs;
  j["first_timestamp"] = a.first_timestamp;
  j["last_timestamp"] = a.last_timestamp;
  j["total_wall_time_sec"] = a.total_wall_time_sec;
  return j;
}

}  // namespace bhmoe::experiments
