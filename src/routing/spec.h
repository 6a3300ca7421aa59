// Router spec strings: parse, validate and print back canonically (SPEC.md §2).
//
//   topk:k=8[,renorm=false][,temperature=1]
//   bh:alpha=0.05,max_k=16[,min_k=1][,temperature=1][,renorm=false][,pvalues=calibrated|one-minus-prob]
//   topp:p=0.7[,max_k=16][,min_k=1][,temperature=1][,renorm=false]
//   skip:beta=0.3[,max_k=8][,min_k=1][,temperature=1][,renorm=false]
//   threshold:tau=0.05[,max_k=16][,min_k=1][,temperature=1][,renorm=false]
//   hc:max_k=16[,min_k=1][,alpha0=0.5][,temperature=1][,renorm=false][,pvalues=calibrated]
//   entropy:ks=1/2/4/8[,temperature=1][,renorm=false]
//
// Keys may come in any order; each at most once. Required: topk k; bh alpha and max_k; topp p;
// skip beta; threshold tau; hc max_k; entropy ks.
// Booleans are true/false (also 1/0). Every error names the key and says why.
#pragma once

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace bhmoe::routing {

// kSkip: dynamic skipping (Lu et al. 2024); kThreshold: a fixed probability threshold; kHC: Higher
// Criticism thresholding (Donoho & Jin 2004) of the calibrated p-values; kEntropy: k from the
// router's softmax entropy through per-layer calibrated quantiles (Adaptive-K style).
enum class RuleKind { kTopK, kBH, kTopP, kSkip, kThreshold, kHC, kEntropy };

// The spec's rule name as written before the colon ("topk", "bh", "topp", "skip", "threshold",
// "hc", "entropy").
const char* rule_name(RuleKind rule);

// How BH turns logits into p-values. kOneMinusProb (p = 1 - softmax(r)_i) is the original project's
// first version, kept only to reproduce it: it is degenerate (with N = 64 the best expert's p is
// about 0.85 >> alpha/N, so it always selects exactly min_k experts).
enum class PValueKind { kCalibrated, kOneMinusProb };

struct RouterSpec {
  RuleKind rule = RuleKind::kTopK;
  int k = 8;            // topk: number of experts
  double alpha = 0.05;  // bh: false discovery rate, in (0, 1)
  double p = 0.7;       // topp: probability mass to reach, in (0, 1]
  double beta = 0.3;    // skip: keep experts whose prob >= beta * the top prob; in (0, 1]
  double tau = 0.05;    // threshold: keep experts whose prob >= tau; in (0, 1]
  double alpha0 = 0.5;  // hc: HC is maximised over i = 1..max(1, floor(alpha0 * N)); in (0, 1]
  std::vector<int> ks;  // entropy: k per entropy bucket, lowest entropy first; non-decreasing, >= 1
  int min_k = 1;        // bh, topp, skip, threshold, hc
  // bh, topp, skip, threshold, hc. When not given: topp and threshold min(16, N), skip min(8, N)
  // (resolve_router_spec); bh and hc require it.
  int max_k = 16;
  bool max_k_given = false;
  double temperature = 1.0;  // softmax(r / temperature) for the weights (and top-p's mass); > 0
  bool renorm = false;       // rescale the selected weights to sum to 1
  PValueKind pvalues = PValueKind::kCalibrated;

  // BH and HC with calibrated p-values use the calibration's CDF grids; entropy uses its
  // per-layer entropy quantiles.
  bool uses_calibration() const {
    return ((rule == RuleKind::kBH || rule == RuleKind::kHC) &&
            pvalues == PValueKind::kCalibrated) ||
           rule == RuleKind::kEntropy;
  }
};

// The row width of a router of this (resolved) spec: k for topk, the largest of ks for entropy,
// max_k otherwise.
int max_count(const RouterSpec& spec);
// The smallest count a router of this spec can return: k for topk, ks[0] for entropy, min_k
// otherwise (the floor of the count statistics).
int min_count(const RouterSpec& spec);

// Parses and checks everything that does not depend on N (syntax, unknown/duplicate/missing keys,
// ranges such as alpha in (0,1), temperature > 0, min_k >= 1, max_k >= min_k).
// Throws bhmoe::Error: `router spec "<text>": key "<key>": <why>`.
RouterSpec parse_router_spec(std::string_view text);

// The range checks of parse_router_spec for a spec built in code (the required keys are implied by
// the struct's fields). Throws bhmoe::Error naming the key, with the spec in canonical form.
void validate_router_spec(const RouterSpec& spec);

// The checks that need N (k <= N, max_k <= N, min_k <= N, every ks <= N; N in [1, kMaxExperts])
// and the resolution of N-dependent defaults (the max_k of topp, threshold and skip). Throws
// bhmoe::Error naming the key.
RouterSpec resolve_router_spec(RouterSpec spec, int num_experts);

// Every parameter spelled out in a fixed order, numbers in their shortest round-trip form, e.g.
// "topk:k=8,renorm=false,temperature=1",
// "bh:alpha=0.05,max_k=16,min_k=1,temperature=1,renorm=false,pvalues=calibrated",
// "topp:p=0.7,max_k=16,min_k=1,temperature=1,renorm=false",
// "skip:beta=0.3,max_k=8,min_k=1,temperature=1,renorm=false",
// "threshold:tau=0.05,max_k=16,min_k=1,temperature=1,renorm=false",
// "hc:max_k=16,min_k=1,alpha0=0.5,temperature=1,renorm=false,pvalues=calibrated",
// "entropy:ks=1/2/4/8,temperature=1,renorm=false".
// parse_router_spec(canonical_spec(s)) == s (up to max_k_given).
std::string canonical_spec(const RouterSpec& spec);

// The spec's parameters as a JSON object, the same ones canonical_spec spells out, plus "type":
//   {"type":"topk","k":8,"renorm":false,"temperature":1.0}
//   {"type":"bh","alpha":0.05,"max_k":16,"min_k":1,"temperature":1.0,"renorm":false,
//    "pvalues":"calibrated"}
//   {"type":"topp","p":0.7,"max_k":16,"min_k":1,"temperature":1.0,"renorm":false}
//   {"type":"skip","beta":0.3,"max_k":8,"min_k":1,"temperature":1.0,"renorm":false}
//   {"type":"threshold","tau":0.05,"max_k":16,"min_k":1,"temperature":1.0,"renorm":false}
//   {"type":"hc","max_k":16,"min_k":1,"alpha0":0.5,"temperature":1.0,"renorm":false,
//    "pvalues":"calibrated"}
//   {"type":"entropy","ks":[1,2,4,8],"temperature":1.0,"renorm":false}
// (the experiment rows' `config` column).
nlohmann::json to_json(const RouterSpec& spec);

// Shortest decimal form that reads back to the same double ("0.05", "1", "1e-05").
std::string format_number(double value);

}  // namespace bhmoe::routing
