#include "model/rule_search.h"

#include <algorithm>
#include <cmath>

#include "model/verbs.h"
#include "routing/rule_parameter.h"
#include "routing/spec.h"
#include "util/error.h"

namespace bhmoe::model {

double measure_mean_experts(Session& session, std::span<const int32_t> ids, int64_t window) {
  if (window < 1 || window > session.max_tokens()) {
    fail("measure_mean_experts: window ", window, " is outside [1, ", session.max_tokens(), "]");
  }
  if (ids.empty()) fail("measure_mean_experts: no tokens");
  session.reset_routing_totals();
  for (size_t begin = 0; begin < ids.size(); begin += static_cast<size_t>(window)) {
    session.reset();
    session.prefill(ids.subspan(begin, std::min(ids.size() - begin, static_cast<size_t>(window))));
  }
  int64_t selected = 0;
  for (int64_t s : session.selected_experts_per_layer()) selected += s;
  const double events = static_cast<double>(session.routed_tokens()) *
                        static_cast<double>(session.model().config().num_routed_layers());
  return static_cast<double>(selected) / events;
}

namespace {

double round_significant(double value, int digits) {
  if (value == 0 || !std::isfinite(value)) return value;
  const double scale =
      std::pow(10.0, digits - 1 - static_cast<int>(std::floor(std::log10(std::fabs(value)))));
  return std::round(value * scale) / scale;
}

}  // namespace

RuleSearchResult search_rule_parameter(Session& session, std::span<const int32_t> ids,
                                       std::string_view rule_template,
                                       std::shared_ptr<const routing::Calibration> calibration,
                                       const RuleSearchOptions& options,
                                       const std::function<void(const RuleSearchStep&)>& on_step) {
  const std::string rule = routing::rule_name(rule_template);
  const routing::RuleParameter* parameter = routing::find_rule_parameter(rule);
  if (!parameter) {
    fail("rule \"", rule,
         "\" has no parameter to calibrate (bh: alpha, topp: p, skip: beta, "
         "threshold: tau; top-k's k is the count itself)");
  }
  const ModelConfig& config = session.model().config();
  if (!(options.target > 0) || options.target > config.num_experts) {
    fail("target mean experts ", options.target, " is outside (0, ", config.num_experts, "]");
  }
  if (options.max_steps < 2) fail("rule search: max_steps ", options.max_steps, " must be >= 2");
  const int64_t window = std::min<int64_t>(options.window, static_cast<int64_t>(ids.size()));

  RuleSearchResult result;
  std::unique_ptr<routing::Router> router;
  auto measure = [&](double value) {
    const std::string text = routing::with_parameter(rule_template, *parameter, value);
    router = make_model_router(config, routing::parse_router_spec(text), calibration);
    session.set_router(router.get());
    RuleSearchStep step;
    step.value = value;
    step.spec = router->spec();
    try {
      step.mean_experts = measure_mean_experts(session, ids, window);
    } catch (...) {
      session.set_router(nullptr);
      throw;
    }
    session.set_router(nullptr);
    result.steps.push_back(step);
    if (on_step) on_step(step);
    const double gap = std::fabs(step.mean_experts - options.target);
    if (result.steps.size() == 1 || gap < std::fabs(result.mean_experts - options.target)) {
      result.spec = step.spec;
      result.value = value;
      result.mean_experts = step.mean_experts;
    }
    return step.mean_experts;
  };
  auto to_search = [&](double v) { return parameter->log_scale ? std::log(v) : v; };
  auto from_search = [&](double s) { return parameter->log_scale ? std::exp(s) : s; };
  auto close_enough = [&] {
    return std::fabs(result.mean_experts - options.target) <= options.tolerance;
  };

  // The mean rises with the value when more_when_larger; orient so that "low" gives fewer experts.
  double low = to_search(parameter->more_when_larger ? parameter->lo : parameter->hi);
  double high = to_search(parameter->more_when_larger ? parameter->hi : parameter->lo);
  const double fewest = measure(from_search(low));
  const double most = measure(from_search(high));
  if (options.target > fewest && options.target < most) {
    while (!close_enough() && static_cast<int>(result.steps.size()) < options.max_steps) {
      const double mid = (low + high) / 2;
      if (measure(from_search(mid)) < options.target) {
        low = mid;
      } else {
        high = mid;
      }
    }
  }
  // A rounder value when it does as well (or within the tolerance).
  const double rounded = round_significant(result.value, 3);
  if (rounded != result.value && rounded >= parameter->lo && rounded <= parameter->hi) {
    const std::string best_spec = result.spec;
    const double best_value = result.value, best_mean = result.mean_experts;
    const double mean = measure(rounded);
    if (std::fabs(mean - options.target) <=
        std::max(options.tolerance, std::fabs(best_mean - options.target))) {
      result.spec = result.steps.back().spec;
      result.value = rounded;
      result.mean_experts = mean;
    } else {
      result.spec = best_spec;
      result.value = best_value;
      result.mean_experts = best_mean;
    }
  }
  result.reached = close_enough();
  return result;
}

}  // namespace bhmoe::model
