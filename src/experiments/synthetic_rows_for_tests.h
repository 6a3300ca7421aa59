// Synthetic result rows with known statistics, for the analysis/report tests (test-only header).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "experiments/results.h"

namespace bhmoe::experiments::testing {

// The seed grid's shape: topk_{8,16,32,64} and bh_k{8,16,32,64}_a{001,005,010} × 12 prompts in 4
// categories. top-k rows use exactly k experts (histogram all at k). BH row for prompt p uses a
// histogram with mean  max_k * (0.2 + alpha * 2) + 0.1 * (p % 3), varying per token.
inline std::vector<ResultRow> synthetic_seed_rows(int num_layers = 4) {
  std::vector<ResultRow> rows;
  const char* categories[] = {"simple", "medium", "complex", "domain_specific"};
  struct Config {
    std::string name, rule;
    int max_k;
    double alpha;
  };
  std::vector<Config> configs;
  for (int k : {8, 16, 32, 64}) configs.push_back({"topk_" + std::to_string(k), "topk", k, NAN});
  for (int k : {8, 16, 32, 64}) {
    for (auto [tag, alpha] : {std::pair{"001", 0.01}, {"005", 0.05}, {"010", 0.10}}) {
      configs.push_back({"bh_k" + std::to_string(k) + "_a" + tag, "bh", k, alpha});
    }
  }
  int64_t index = 0;
  for (const Config& c : configs) {
    for (int p = 0; p < 12; ++p) {
      ResultRow r;
      r.experiment = "seed";
      r.index = index++;
      r.prompt_id = "p" + std::to_string(p + 1);
      r.key = "seed/" + c.name + "/" + r.prompt_id;
      r.config_name = c.name;
      r.rule = c.rule;
      r.max_k = r.max_k_requested = c.max_k;
      r.alpha = c.alpha;
      r.router = c.rule == "topk"
                     ? "topk:k=" + std::to_string(c.max_k) + ",renorm=false,temperature=1"
                     : "bh:alpha=" + std::to_string(c.alpha) + ",max_k=" + std::to_string(c.max_k);
      r.config = {{"type", c.rule}, {"max_k", c.max_k}};
      r.prompt_category = categories[p / 3];
      r.prompt_text = "Prompt, \"number\" " + std::to_string(p + 1) + "\nsecond line";
      r.prompt_description = "description " + std::to_string(p + 1);
      r.generated_text = " generated, text";
      r.full_text = r.prompt_text + r.generated_text;
      r.num_input_tokens = 10 + p;
      r.num_output_tokens = 20;
      r.num_layers = num_layers;
      int64_t tokens = r.num_input_tokens + r.num_output_tokens;
      r.num_routing_events = tokens * num_layers;
      r.count_histogram.assign(c.max_k + 1, 0);
      if (c.rule == "topk") {
        r.count_histogram[c.max_k] = r.num_routing_events;
        r.avg_experts_per_token = c.max_k;
        r.std_experts_per_token = 0;
        r.min_experts = r.max_experts = c.max_k;
        r.pct_at_ceiling = 100;
        r.pct_at_floor = 0;
        r.prompt_nll = 3.0 + 0.01 * p;
        r.kl_to_native = c.max_k == 8 ? 0.0 : 0.001 * c.max_k;
      } else {
        // Two count values lo and lo+1 mixed to the target mean.
        double mean = c.max_k * (0.2 + c.alpha * 2) + 0.1 * (p % 3);
        int lo = static_cast<int>(std::floor(mean));
        int64_t high = static_cast<int64_t>(std::llround((mean - lo) * r.num_routing_events));
        r.count_histogram[lo] = r.num_routing_events - high;
        if (high) r.count_histogram[lo + 1] = high;
        r.avg_experts_per_token =
            (lo * static_cast<double>(r.num_routing_events - high) + (lo + 1.0) * high) /
            r.num_routing_events;
        r.std_experts_per_token = high ? 0.5 : 0.0;
        r.min_experts = lo;
        r.max_experts = high ? lo + 1 : lo;
        r.pct_at_ceiling = 0;
        r.pct_at_floor = 0;
        r.prompt_nll = 3.2 + 0.02 * p;
        r.kl_to_native = 0.05 / (1 + c.max_k * c.alpha);
      }
      r.per_layer_mean_experts.assign(num_layers, r.avg_experts_per_token);
      r.per_layer_mean_experts[0] += 0.5;
      r.per_layer_mean_experts[num_layers - 1] -= 0.5;
      r.continuation_nll_native = 2.0 + 0.01 * p;
      r.weight_entropy = std::log(r.avg_experts_per_token);
      r.expert_utilization_cv = 0.3;
      r.expert_utilization_max_min_ratio = 4.0;
      r.prefill_time_sec = 0.01 * r.avg_experts_per_token;
      r.decode_time_sec = 0.05 * r.avg_experts_per_token;
      r.inference_time_sec = r.prefill_time_sec + r.decode_time_sec;
      r.tokens_per_sec = 20 / r.decode_time_sec;
      r.wall_time_sec = r.inference_time_sec * 2;
      r.timestamp = "2026-11-26T04:00:" + std::string(index % 60 < 10 ? "0" : "") +
                    std::to_string(index % 60) + "Z";
      r.model = {{"name", "synthetic-test"},
                 {"synthetic", true},
                 {"small", true},
                 {"num_layers", num_layers},
                 {"num_experts", 64},
                 {"top_k", 8},
                 {"params_text", "1.0M"},
                 {"fingerprint", "abc"},
                 {"provenance", "Rows made up by the test."}};
      r.settings = {{"max_new_tokens", 20}};
      r.run = {{"commit", "deadbeef"}, {"host", "test"}, {"cpu", "cpu"}, {"threads", 2}};
      rows.push_back(r);
    }
  }
  return rows;
}

// Text-scoring rows for the pareto analysis: top-k k = 1..4, top-p and BH points.
inline std::vector<ResultRow> synthetic_pareto_rows() {
  std::vector<ResultRow> rows;
  int64_t index = 0;
  auto add = [&](const std::string& name, const std::string& rule, double experts, double ppl) {
    for (int t = 0; t < 2; ++t) {
      ResultRow r;
      r.experiment = "pareto";
      r.kind = "score_text";
      r.index = index++;
      r.config_name = name;
      r.rule = rule;
      r.router = rule + ":" + name;
      r.text_name = "text" + std::to_string(t);
      r.key = "pareto/" + name + "/" + r.text_name;
      r.num_scored_tokens = 100 * (t + 1);
      r.nll_mean = std::log(ppl) + (t == 0 ? 0.1 : -0.05);
      r.perplexity = std::exp(r.nll_mean);
      r.num_layers = 2;
      r.num_routing_events = 2 * (r.num_scored_tokens + 1);
      r.avg_experts_per_token = experts;
      r.protocol = "synthetic protocol";
      r.model = {{"name", "synthetic-test"}, {"synthetic", true}};
      rows.push_back(r);
    }
  };
  for (int k = 1; k <= 4; ++k) add("topk_" + std::to_string(k), "topk", k, 30.0 / k);
  add("topp_050", "topp", 1.7, 20);
  add("topp_090", "topp", 3.1, 11);
  add("bh_a005", "bh", 2.2, 13);
  return rows;
}

}  // namespace bhmoe::experiments::testing
