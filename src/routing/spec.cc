#include "routing/spec.h"

#include <charconv>
#include <nlohmann/json.hpp>
#include <cmath>
#include <set>
#include <string>
#include <system_error>

#include "routing/router.h"
#include "util/error.h"

namespace bhmoe::routing {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

[[noreturn]] void key_error(std::string_view text, std::string_view key, const std::string& why) {
  fail("router spec \"", text, "\": key \"", key, "\": ", why);
}

double parse_double(std::string_view text, std::string_view key, std::string_view value) {
  double out = 0.0;
  const char* begin = value.data();
  const char* end = value.data() + value.size();
  if (!value.empty() && *begin == '+') ++begin;
  auto [ptr, ec] = std::from_chars(begin, end, out);
  if (value.empty() || ec != std::errc() || ptr != end) {
    key_error(text, key, cat("\"", value, "\" is not a number"));
  }
  if (!std::isfinite(out)) key_error(text, key, cat("\"", value, "\" is not finite"));
  return out;
}

int parse_int(std::string_view text, std::string_view key, std::string_view value) {
  long long out = 0;
  const char* begin = value.data();
  const char* end = value.data() + value.size();
  if (!value.empty() && *begin == '+') ++begin;
  auto [ptr, ec] = std::from_chars(begin, end, out);
  if (value.empty() || ec != std::errc() || ptr != end) {
    key_error(text, key, cat("\"", value, "\" is not an integer"));
  }
  if (out < -1000000000LL || out > 1000000000LL)
    key_error(text, key, cat(value, " is out of range"));
  return static_cast<int>(out);
}

bool parse_bool(std::string_view text, std::string_view key, std::string_view value) {
  if (value == "true" || value == "1") return true;
  if (value == "false" || value == "0") return false;
  key_error(text, key, cat("\"", value, "\" is not true or false"));
}

// The range checks of parse_router_spec that need no N; `text` is the spec as the user wrote it
// (or its canonical form for a spec built in code), for the error messages.
void check_values(const RouterSpec& spec, std::string_view text) {
  if (!(spec.temperature > 0.0)) {
    key_error(text, "temperature", cat(format_number(spec.temperature), " must be > 0"));
  }
  if (spec.temperature < 1e-30 || spec.temperature > 1e30) {
    key_error(text, "temperature",
              cat(format_number(spec.temperature), " is outside [1e-30, 1e30] (float32 range)"));
  }
  switch (spec.rule) {
    case RuleKind::kTopK:
      if (spec.k < 1) key_error(text, "k", cat(spec.k, " must be >= 1"));
      break;
    case RuleKind::kBH:
      if (!(spec.alpha > 0.0 && spec.alpha < 1.0)) {
        key_error(text, "alpha", cat(format_number(spec.alpha), " is outside (0, 1)"));
      }
      break;
    case RuleKind::kTopP:
      if (!(spec.p > 0.0 && spec.p <= 1.0)) {
        key_error(text, "p", cat(format_number(spec.p), " is outside (0, 1]"));
      }
      break;
  }
  if (spec.rule != RuleKind::kTopK) {
    if (spec.min_k < 1) key_error(text, "min_k", cat(spec.min_k, " must be >= 1"));
    if (spec.max_k < spec.min_k) {
      key_error(text, "max_k", cat(spec.max_k, " is below min_k=", spec.min_k));
    }
  }
}

}  // namespace

std::string format_number(double value) {
  char buffer[64];
  auto [ptr, ec] = std::to_chars(buffer, buffer + sizeof buffer, value);
  if (ec != std::errc()) return std::to_string(value);
  return std::string(buffer, ptr);
}

RouterSpec parse_router_spec(std::string_view text) {
  std::string_view body = trim(text);
  size_t colon = body.find(':');
  std::string_view rule_name = trim(body.substr(0, colon));
  RouterSpec spec;
  if (rule_name == "topk") {
    spec.rule = RuleKind::kTopK;
  } else if (rule_name == "bh") {
    spec.rule = RuleKind::kBH;
  } else if (rule_name == "topp") {
    spec.rule = RuleKind::kTopP;
  } else {
    fail("router spec \"", text, "\": unknown rule \"", rule_name,
         "\" (expected topk:, bh: or topp:, e.g. \"bh:alpha=0.05,max_k=16\")");
  }
  std::string_view params =
      colon == std::string_view::npos ? std::string_view() : body.substr(colon + 1);

  std::set<std::string, std::less<>> seen;
  auto allowed = [&](std::string_view key) {
    switch (spec.rule) {
      case RuleKind::kTopK:
        return key == "k" || key == "renorm" || key == "temperature";
      case RuleKind::kBH:
        return key == "alpha" || key == "max_k" || key == "min_k" || key == "temperature" ||
               key == "renorm" || key == "pvalues";
      case RuleKind::kTopP:
        return key == "p" || key == "max_k" || key == "min_k" || key == "temperature" ||
               key == "renorm";
    }
    return false;
  };
  auto allowed_list = [&]() -> const char* {
    switch (spec.rule) {
      case RuleKind::kTopK:
        return "k, renorm, temperature";
      case RuleKind::kBH:
        return "alpha, max_k, min_k, temperature, renorm, pvalues";
      case RuleKind::kTopP:
        return "p, max_k, min_k, temperature, renorm";
    }
    return "";
  };

  while (!trim(params).empty()) {
    size_t comma = params.find(',');
    std::string_view item = trim(params.substr(0, comma));
    params = comma == std::string_view::npos ? std::string_view() : params.substr(comma + 1);
    if (item.empty()) fail("router spec \"", text, "\": empty parameter (stray comma)");
    size_t eq = item.find('=');
    if (eq == std::string_view::npos) {
      fail("router spec \"", text, "\": parameter \"", item, "\" is not key=value");
    }
    std::string_view key = trim(item.substr(0, eq));
    std::string_view value = trim(item.substr(eq + 1));
    if (!allowed(key)) {
      key_error(text, key,
                cat("unknown key for rule ", rule_name, " (allowed: ", allowed_list(), ")"));
    }
    if (!seen.insert(std::string(key)).second) key_error(text, key, "given more than once");
    if (key == "k") {
      spec.k = parse_int(text, key, value);
    } else if (key == "alpha") {
      spec.alpha = parse_double(text, key, value);
    } else if (key == "p") {
      spec.p = parse_double(text, key, value);
    } else if (key == "max_k") {
      spec.max_k = parse_int(text, key, value);
      spec.max_k_given = true;
    } else if (key == "min_k") {
      spec.min_k = parse_int(text, key, value);
    } else if (key == "temperature") {
      spec.temperature = parse_double(text, key, value);
    } else if (key == "renorm") {
      spec.renorm = parse_bool(text, key, value);
    } else if (key == "pvalues") {
      if (value == "calibrated") {
        spec.pvalues = PValueKind::kCalibrated;
      } else if (value == "one-minus-prob") {
        spec.pvalues = PValueKind::kOneMinusProb;
      } else {
        key_error(text, key, cat("\"", value, "\" is not calibrated or one-minus-prob"));
      }
    }
  }

  auto require = [&](std::string_view key) {
    if (!seen.count(key)) key_error(text, key, cat("missing; rule ", rule_name, " requires it"));
  };
  switch (spec.rule) {
    case RuleKind::kTopK:
      require("k");
      break;
    case RuleKind::kBH:
      require("alpha");
      require("max_k");
      break;
    case RuleKind::kTopP:
      require("p");
      break;
  }
  check_values(spec, text);
  return spec;
}

void validate_router_spec(const RouterSpec& spec) {
  check_values(spec, canonical_spec(spec));
}

RouterSpec resolve_router_spec(RouterSpec spec, int num_experts) {
  std::string text = canonical_spec(spec);
  if (num_experts < 1 || num_experts > kMaxExperts) {
    fail("router spec \"", text, "\": number of experts N=", num_experts, " is outside [1, ",
         kMaxExperts, "]");
  }
  if (spec.rule == RuleKind::kTopK) {
    if (spec.k > num_experts) key_error(text, "k", cat(spec.k, " exceeds N=", num_experts));
    return spec;
  }
  if (spec.rule == RuleKind::kTopP && !spec.max_k_given && spec.max_k > num_experts) {
    spec.max_k = num_experts;
    text = canonical_spec(spec);
  }
  if (spec.min_k > num_experts)
    key_error(text, "min_k", cat(spec.min_k, " exceeds N=", num_experts));
  if (spec.max_k > num_experts)
    key_error(text, "max_k", cat(spec.max_k, " exceeds N=", num_experts));
  if (spec.max_k < spec.min_k) {
    key_error(text, "max_k", cat(spec.max_k, " is below min_k=", spec.min_k));
  }
  return spec;
}

nlohmann::json to_json(const RouterSpec& spec) {
  switch (spec.rule) {
    case RuleKind::kTopK:
      return {{"type", "topk"},
              {"k", spec.k},
              {"renorm", spec.renorm},
              {"temperature", spec.temperature}};
    case RuleKind::kBH:
      return {{"type", "bh"},
              {"alpha", spec.alpha},
              {"max_k", spec.max_k},
              {"min_k", spec.min_k},
              {"temperature", spec.temperature},
              {"renorm", spec.renorm},
              {"pvalues", spec.pvalues == PValueKind::kCalibrated ? "calibrated" : "one-minus-prob"}};
    case RuleKind::kTopP:
      return {{"type", "topp"},
              {"p", spec.p},
              {"max_k", spec.max_k},
              {"min_k", spec.min_k},
              {"temperature", spec.temperature},
              {"renorm", spec.renorm}};
  }
  fail("router spec \"", canonical_spec(spec), "\": unknown rule");
}

std::string canonical_spec(const RouterSpec& spec) {
  std::string renorm = spec.renorm ? "true" : "false";
  std::string temperature = format_number(spec.temperature);
  switch (spec.rule) {
    case RuleKind::kTopK:
      return cat("topk:k=", spec.k, ",renorm=", renorm, ",temperature=", temperature);
    case RuleKind::kBH:
      return cat(
          "bh:alpha=", format_number(spec.alpha), ",max_k=", spec.max_k, ",min_k=", spec.min_k,
          ",temperature=", temperature, ",renorm=", renorm,
          ",pvalues=", spec.pvalues == PValueKind::kCalibrated ? "calibrated" : "one-minus-prob");
    case RuleKind::kTopP:
      return cat("topp:p=", format_number(spec.p), ",max_k=", spec.max_k, ",min_k=", spec.min_k,
                 ",temperature=", temperature, ",renorm=", renorm);
  }
  return {};
}

}  // namespace bhmoe::routing
