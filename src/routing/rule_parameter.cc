#include "routing/rule_parameter.h"

#include <vector>

#include "routing/spec.h"
#include "util/error.h"

namespace bhmoe::routing {
namespace {

const std::vector<RuleParameter>& table() {
  // Ranges stay inside each key's valid range (alpha in (0, 1), p, beta and tau in (0, 1]).
  static const std::vector<RuleParameter> parameters = {
      {"bh", "alpha", 1e-6, 0.999, true, true},
      {"topp", "p", 0.01, 1.0, true, false},
      {"skip", "beta", 1e-4, 1.0, false, true},
      {"threshold", "tau", 1e-5, 1.0, false, true},
  };
  return parameters;
}

}  // namespace

const RuleParameter* find_rule_parameter(std::string_view rule) {
  for (const RuleParameter& p : table()) {
    if (p.rule == rule) return &p;
  }
  return nullptr;
}

std::string rule_name(std::string_view spec_text) {
  const size_t colon = spec_text.find(':');
  std::string_view name = spec_text.substr(0, colon);
  while (!name.empty() && name.front() == ' ') name.remove_prefix(1);
  while (!name.empty() && name.back() == ' ') name.remove_suffix(1);
  return std::string(name);
}

std::string with_parameter(std::string_view spec_text, const RuleParameter& parameter, double value) {
  const size_t colon = spec_text.find(':');
  std::string rest = colon == std::string_view::npos ? "" : std::string(spec_text.substr(colon + 1));
  // Keys are separated by commas; the parameter must be left for the search to set.
  size_t at = 0;
  while (at <= rest.size()) {
    size_t comma = rest.find(',', at);
    if (comma == std::string::npos) comma = rest.size();
    std::string item = rest.substr(at, comma - at);
    const size_t eq = item.find('=');
    std::string key = item.substr(0, eq);
    while (!key.empty() && key.front() == ' ') key.erase(key.begin());
    while (!key.empty() && key.back() == ' ') key.pop_back();
    if (key == parameter.key) {
      fail("rule \"", spec_text, "\" sets ", parameter.key,
           " itself; leave it out, the search sets it");
    }
    at = comma + 1;
  }
  std::string out = rule_name(spec_text) + ":" + parameter.key + "=" + format_number(value);
  if (!rest.empty()) out += "," + rest;
  return out;
}

}  // namespace bhmoe::routing
