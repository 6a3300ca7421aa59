// Calibrating an adaptive rule to a compute target: the value of its parameter (BH's alpha,
// top-p's p, ...) at which it selects a given mean number of experts per token on a text. The mean
// is measured by running the model, not on fixed router logits, because each layer's routing
// changes the next layer's router input.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/engine.h"
#include "routing/calibration.h"

namespace bhmoe::model {

// Mean experts per token and layer when `ids` runs through the session's current router, in
// consecutive windows of `window` tokens from an empty cache. Resets the session's routing totals.
double measure_mean_experts(Session& session, std::span<const int32_t> ids, int64_t window);

struct RuleSearchStep {
  double value = 0;
  std::string spec;  // canonical
  double mean_experts = 0;
};

struct RuleSearchResult {
  std::string spec;  // canonical spec of the chosen value
  double value = 0;
  double mean_experts = 0;
  bool reached = false;  // |mean_experts − target| <= tolerance
  std::vector<RuleSearchStep> steps;
};

struct RuleSearchOptions {
  double target = 4;        // mean experts per token and layer
  double tolerance = 0.02;  // stop when this close
  int max_steps = 24;
  int64_t window = 512;
};

// Searches the parameter of `rule_template` (a spec without it, e.g. "bh:max_k=16"; the rule must
// have one, see routing/rule_parameter.h) by bisection over its range (in log space where the
// table says so), keeping the value whose measured mean is closest to the target; a value rounded
// to 3 significant digits replaces it when it is as close. calibration is needed by rules that use
// one. on_step (optional) sees each measurement. The session's router is set to native afterwards.
// Throws bhmoe::Error for a rule without a parameter, a template that sets it, or a target outside
// (0, num_experts].
RuleSearchResult search_rule_parameter(Session& session, std::span<const int32_t> ids,
                                       std::string_view rule_template,
                                       std::shared_ptr<const routing::Calibration> calibration,
                                       const RuleSearchOptions& options,
                                       const std::function<void(const RuleSearchStep&)>& on_step = nullptr);

}  // namespace bhmoe::model
