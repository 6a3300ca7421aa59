#include "routing/spec.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>
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

// "1/2/4/8".
std::string ks_text(const std::vector<int>& ks) {
  std::string out;
  for (int k : ks) {
    if (!out.empty()) out += '/';
    out += std::to_string(k);
  }
  return out;
}

std::vector<int> parse_ks(std::string_view text, std::string_view value) {
  std::vector<int> out;
  while (true) {
    size_t slash = value.find('/');
    out.push_back(parse_int(text, "ks", trim(value.substr(0, slash))));
    if (slash == std::string_view::npos) break;
    value = value.substr(slash + 1);
    if (out.size() > 64) key_error(text, "ks", "more than 64 buckets");
  }
  return out;
}

const char* pvalues_name(PValueKind kind) {
  return kind == PValueKind::kCalibrated ? "calibrated" : "one-minus-prob";
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
    case RuleKind::kSkip:
      if (!(spec.beta > 0.0 && spec.beta <= 1.0)) {
        key_error(text, "beta", cat(format_number(spec.beta), " is outside (0, 1]"));
      }
      break;
    case RuleKind::kThreshold:
      if (!(spec.tau > 0.0 && spec.tau <= 1.0)) {
        key_error(text, "tau", cat(format_number(spec.tau), " is outside (0, 1]"));
      }
      break;
    case RuleKind::kHC:
      if (!(spec.alpha0 > 0.0 && spec.alpha0 <= 1.0)) {
        key_error(text, "alpha0", cat(format_number(spec.alpha0), " is outside (0, 1]"));
      }
      if (spec.pvalues != PValueKind::kCalibrated) {
        key_error(text, "pvalues", "hc supports only calibrated p-values");
      }
      break;
    case RuleKind::kEntropy:
      if (spec.ks.empty()) key_error(text, "ks", "is empty (give k per bucket, e.g. 1/2/4/8)");
      if (spec.ks.size() > 64) key_error(text, "ks", cat(spec.ks.size(), " buckets (at most 64)"));
      for (size_t b = 0; b < spec.ks.size(); ++b) {
        if (spec.ks[b] < 1) key_error(text, "ks", cat("k=", spec.ks[b], " must be >= 1"));
        if (b > 0 && spec.ks[b] < spec.ks[b - 1]) {
          key_error(text, "ks",
                    cat(ks_text(spec.ks), " decreases at ", spec.ks[b - 1], " then ", spec.ks[b],
                        " (k must not decrease with entropy)"));
        }
      }
      break;
  }
  if (spec.rule != RuleKind::kTopK && spec.rule != RuleKind::kEntropy) {
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
  } else if (rule_name == "skip") {
    spec.rule = RuleKind::kSkip;
    spec.max_k = 8;  // skipping prunes OLMoE's native top-8 (Lu et al. 2024)
  } else if (rule_name == "threshold") {
    spec.rule = RuleKind::kThreshold;
  } else if (rule_name == "hc") {
    spec.rule = RuleKind::kHC;
  } else if (rule_name == "entropy") {
    spec.rule = RuleKind::kEntropy;
  } else {
    fail("router spec \"", text, "\": unknown rule \"", rule_name,
         "\" (expected topk:, bh:, topp:, skip:, threshold:, hc: or entropy:, e.g. "
         "\"bh:alpha=0.05,max_k=16\")");
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
      case RuleKind::kSkip:
        return key == "beta" || key == "max_k" || key == "min_k" || key == "temperature" ||
               key == "renorm";
      case RuleKind::kThreshold:
        return key == "tau" || key == "max_k" || key == "min_k" || key == "temperature" ||
               key == "renorm";
      case RuleKind::kHC:
        return key == "max_k" || key == "min_k" || key == "alpha0" || key == "temperature" ||
               key == "renorm" || key == "pvalues";
      case RuleKind::kEntropy:
        return key == "ks" || key == "temperature" || key == "renorm";
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
      case RuleKind::kSkip:
        return "beta, max_k, min_k, temperature, renorm";
      case RuleKind::kThreshold:
        return "tau, max_k, min_k, temperature, renorm";
      case RuleKind::kHC:
        return "max_k, min_k, alpha0, temperature, renorm, pvalues";
      case RuleKind::kEntropy:
        return "ks, temperature, renorm";
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
    } else if (key == "beta") {
      spec.beta = parse_double(text, key, value);
    } else if (key == "tau") {
      spec.tau = parse_double(text, key, value);
    } else if (key == "alpha0") {
      spec.alpha0 = parse_double(text, key, value);
    } else if (key == "ks") {
      spec.ks = parse_ks(text, value);
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
    case RuleKind::kSkip:
      require("beta");
      break;
    case RuleKind::kThreshold:
      require("tau");
      break;
    case RuleKind::kHC:
      require("max_k");
      break;
    case RuleKind::kEntropy:
      require("ks");
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
  if (spec.rule == RuleKind::kEntropy) {
    for (int k : spec.ks) {
      if (k > num_experts) key_error(text, "ks", cat("k=", k, " exceeds N=", num_experts));
    }
    return spec;
  }
  const bool default_max_k = spec.rule == RuleKind::kTopP || spec.rule == RuleKind::kSkip ||
                             spec.rule == RuleKind::kThreshold;
  if (default_max_k && !spec.max_k_given && spec.max_k > num_experts) {
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
              {"pvalues", pvalues_name(spec.pvalues)}};
    case RuleKind::kTopP:
      return {{"type", "topp"},
              {"p", spec.p},
              {"max_k", spec.max_k},
              {"min_k", spec.min_k},
              {"temperature", spec.temperature},
              {"renorm", spec.renorm}};
    case RuleKind::kSkip:
      return {{"type", "skip"},
              {"beta", spec.beta},
              {"max_k", spec.max_k},
              {"min_k", spec.min_k},
              {"temperature", spec.temperature},
              {"renorm", spec.renorm}};
    case RuleKind::kThreshold:
      return {{"type", "threshold"},
              {"tau", spec.tau},
              {"max_k", spec.max_k},
              {"min_k", spec.min_k},
              {"temperature", spec.temperature},
              {"renorm", spec.renorm}};
    case RuleKind::kHC:
      return {{"type", "hc"},
              {"max_k", spec.max_k},
              {"min_k", spec.min_k},
              {"alpha0", spec.alpha0},
              {"temperature", spec.temperature},
              {"renorm", spec.renorm},
              {"pvalues", pvalues_name(spec.pvalues)}};
    case RuleKind::kEntropy:
      return {{"type", "entropy"},
              {"ks", spec.ks},
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
      return cat("bh:alpha=", format_number(spec.alpha), ",max_k=", spec.max_k,
                 ",min_k=", spec.min_k, ",temperature=", temperature, ",renorm=", renorm,
                 ",pvalues=", pvalues_name(spec.pvalues));
    case RuleKind::kTopP:
      return cat("topp:p=", format_number(spec.p), ",max_k=", spec.max_k, ",min_k=", spec.min_k,
                 ",temperature=", temperature, ",renorm=", renorm);
    case RuleKind::kSkip:
      return cat("skip:beta=", format_number(spec.beta), ",max_k=", spec.max_k,
                 ",min_k=", spec.min_k, ",temperature=", temperature, ",renorm=", renorm);
    case RuleKind::kThreshold:
      return cat("threshold:tau=", format_number(spec.tau), ",max_k=", spec.max_k,
                 ",min_k=", spec.min_k, ",temperature=", temperature, ",renorm=", renorm);
    case RuleKind::kHC:
      return cat("hc:max_k=", spec.max_k, ",min_k=", spec.min_k,
                 ",alpha0=", format_number(spec.alpha0), ",temperature=", temperature,
                 ",renorm=", renorm, ",pvalues=", pvalues_name(spec.pvalues));
    case RuleKind::kEntropy:
      return cat("entropy:ks=", ks_text(spec.ks), ",temperature=", temperature, ",renorm=", renorm);
  }
  return {};
}

const char* rule_name(RuleKind rule) {
  switch (rule) {
    case RuleKind::kTopK:
      return "topk";
    case RuleKind::kBH:
      return "bh";
    case RuleKind::kTopP:
      return "topp";
    case RuleKind::kSkip:
      return "skip";
    case RuleKind::kThreshold:
      return "threshold";
    case RuleKind::kHC:
      return "hc";
    case RuleKind::kEntropy:
      return "entropy";
  }
  return "?";
}

int max_count(const RouterSpec& spec) {
  if (spec.rule == RuleKind::kTopK) return spec.k;
  if (spec.rule == RuleKind::kEntropy) {
    return spec.ks.empty() ? 0 : *std::max_element(spec.ks.begin(), spec.ks.end());
  }
  return spec.max_k;
}

int min_count(const RouterSpec& spec) {
  if (spec.rule == RuleKind::kTopK) return spec.k;
  if (spec.rule == RuleKind::kEntropy) {
    return spec.ks.empty() ? 0 : *std::min_element(spec.ks.begin(), spec.ks.end());
  }
  return spec.min_k;
}

}  // namespace bhmoe::routing
