// The one parameter of an adaptive rule that sets how many experts it selects on average: what
// `bhmoe calibrate-rule` searches to give a rule a compute target (the top-p literature calibrates
// its p this way). Rules without a single such knob (top-k, whose k is the count) have none.
#pragma once

#include <string>
#include <string_view>

namespace bhmoe::routing {

struct RuleParameter {
  std::string rule;  // "bh", "topp", ...
  std::string key;   // the spec key: "alpha", "p", ...
  double lo = 0, hi = 1;           // the search range, inside the key's valid range
  bool more_when_larger = true;    // mean experts rises with the value (else falls)
  bool log_scale = false;          // search in log space (values spanning decades)
};

// The parameter of `rule` (the part before ':'), or nullptr when it has none.
const RuleParameter* find_rule_parameter(std::string_view rule);

// The rule name of a spec text ("bh:max_k=16" -> "bh").
std::string rule_name(std::string_view spec_text);

// `spec_text` (a rule with every key but the parameter, e.g. "bh:max_k=16" or "topp") with the
// parameter appended: "bh:max_k=16,alpha=0.05". Throws bhmoe::Error if spec_text already sets it.
std::string with_parameter(std::string_view spec_text, const RuleParameter& parameter, double value);

}  // namespace bhmoe::routing
