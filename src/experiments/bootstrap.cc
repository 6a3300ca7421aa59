#include "experiments/bootstrap.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

namespace bhmoe::experiments {

double interpolate(std::span<const double> xs, std::span<const double> ys, double x) {
  if (xs.empty() || !std::isfinite(x) || x < xs.front() || x > xs.back()) return kNaN;
  for (size_t i = 0; i < xs.size(); ++i) {
    if (x == xs[i]) return ys[i];
    if (i + 1 < xs.size() && x > xs[i] && x < xs[i + 1]) {
      return ys[i] + (ys[i + 1] - ys[i]) * (x - xs[i]) / (xs[i + 1] - xs[i]);
    }
  }
  return kNaN;
}

double quantile(std::vector<double>& values, double q) {
  if (values.empty()) return kNaN;
  std::sort(values.begin(), values.end());
  const double h = (static_cast<double>(values.size()) - 1) * q;
  const size_t lo = static_cast<size_t>(std::floor(h));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (h - static_cast<double>(lo)) * (values[hi] - values[lo]);
}

const char* matched_verdict(const MatchedPoint& m) {
  if (!std::isfinite(m.delta_nll.estimate) || !std::isfinite(m.p_holm)) return "–";
  if (m.p_holm >= 0.05 || m.delta_nll.estimate == 0) return "no difference";
  return m.delta_nll.estimate > 0 ? "better" : "worse";
}

std::vector<double> holm_adjust(std::span<const double> p) {
  std::vector<size_t> order;
  for (size_t i = 0; i < p.size(); ++i) {
    if (std::isfinite(p[i])) order.push_back(i);
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] < p[b]; });
  std::vector<double> adjusted(p.size(), kNaN);
  const double m = static_cast<double>(order.size());
  double running = 0;
  for (size_t rank = 0; rank < order.size(); ++rank) {
    running = std::max(running, std::min(1.0, (m - static_cast<double>(rank)) * p[order[rank]]));
    adjusted[order[rank]] = running;
  }
  return adjusted;
}

namespace {

struct ConfigData {
  std::string name, router, rule;
  int layers = 0;
  std::map<std::string, const ResultRow*> by_text;
};

// Sums over a multiset of windows of one config.
struct Sums {
  double nll = 0, predicted = 0, experts = 0, tokens = 0;
  void add(const ResultRow& r, size_t w, double times) {
    nll += times * r.window_nll_sum[w];
    predicted += times * static_cast<double>(r.window_tokens[w] - 1);
    experts += times * static_cast<double>(r.window_experts[w]);
    tokens += times * static_cast<double>(r.window_tokens[w]);
  }
};

bool has_windows(const ResultRow& r) {
  const size_t n = r.window_nll_sum.size();
  return n > 0 && r.window_tokens.size() == n && r.window_experts.size() == n;
}

}  // namespace

std::vector<MatchedPoint> matched_compute(const std::vector<ResultRow>& rows,
                                          const BootstrapOptions& options) {
  std::vector<const ResultRow*> pointers;
  for (const ResultRow& r : rows) pointers.push_back(&r);
  return matched_compute(pointers, options);
}

std::vector<MatchedPoint> matched_compute(const std::vector<const ResultRow*>& rows,
                                          const BootstrapOptions& options) {
  // Configs in order of first appearance, each with its row per text.
  std::vector<ConfigData> configs;
  std::map<std::string, size_t> config_index;
  std::map<std::string, std::vector<int64_t>> text_windows;  // the window lengths of each text
  for (const ResultRow* row : rows) {
    const ResultRow& r = *row;
    if (r.kind != "score_text" || !r.ok() || !has_windows(r)) continue;
    auto [it, added] = config_index.emplace(r.config_name, configs.size());
    if (added) configs.push_back({r.config_name, r.router, r.rule, r.num_layers, {}});
    configs[it->second].by_text[r.text_name] = &r;
    text_windows.emplace(r.text_name, r.window_tokens);
  }
  // A text's scope holds the configs whose windows match the text's first row's.
  std::vector<std::string> texts;
  for (const auto& [name, _] : text_windows) texts.push_back(name);
  auto in_text = [&](const ConfigData& c, const std::string& text) {
    auto it = c.by_text.find(text);
    return it != c.by_text.end() && it->second->window_tokens == text_windows.at(text) &&
           c.layers > 0;
  };
  auto in_all = [&](const ConfigData& c) {
    for (const std::string& t : texts) {
      if (!in_text(c, t)) return false;
    }
    return true;
  };

  std::vector<std::string> scopes = {"all"};
  scopes.insert(scopes.end(), texts.begin(), texts.end());
  // Multiplicity of each window in the current replicate, per text (1 for the point estimate).
  std::map<std::string, std::vector<double>> times;
  for (const std::string& t : texts) times[t].assign(text_windows[t].size(), 1.0);

  struct Estimate {
    double experts = kNaN, nll = kNaN;
  };
  auto estimate = [&](const ConfigData& c, const std::string& scope) {
    Sums s;
    for (const std::string& t : texts) {
      if (scope != "all" && scope != t) continue;
      const ResultRow& r = *c.by_text.at(t);
      const std::vector<double>& m = times.at(t);
      for (size_t w = 0; w < m.size(); ++w) {
        if (m[w] != 0) s.add(r, w, m[w]);
      }
    }
    Estimate e;
    if (s.predicted > 0) e.nll = s.nll / s.predicted;
    if (s.tokens > 0) e.experts = s.experts / (s.tokens * c.layers);
    return e;
  };
  // The scope's configs and, for one replicate, every config's estimate and the matched deltas.
  auto members = [&](const std::string& scope) {
    std::vector<size_t> out;
    for (size_t i = 0; i < configs.size(); ++i) {
      if (scope == "all" ? in_all(configs[i]) : in_text(configs[i], scope)) out.push_back(i);
    }
    return out;
  };
  struct Replicate {
    std::vector<double> experts, nll, topk_at_match;
  };
  auto evaluate = [&](const std::string& scope, const std::vector<size_t>& idx) {
    Replicate r;
    std::vector<std::pair<double, double>> curve;
    for (size_t i : idx) {
      const Estimate e = estimate(configs[i], scope);
      r.experts.push_back(e.experts);
      r.nll.push_back(e.nll);
      if (configs[i].rule == "topk" && std::isfinite(e.experts) && std::isfinite(e.nll)) {
        curve.emplace_back(e.experts, e.nll);
      }
    }
    std::sort(curve.begin(), curve.end());
    std::vector<double> xs, ys;
    for (auto [x, y] : curve) {
      if (!xs.empty() && x == xs.back()) continue;
      xs.push_back(x);
      ys.push_back(y);
    }
    for (size_t j = 0; j < idx.size(); ++j) {
      r.topk_at_match.push_back(configs[idx[j]].rule == "topk" ? kNaN
                                                               : interpolate(xs, ys, r.experts[j]));
    }
    return r;
  };

  const double tail = (1.0 - options.level) / 2.0;
  std::vector<MatchedPoint> points;
  for (const std::string& scope : scopes) {
    const std::vector<size_t> idx = members(scope);
    if (idx.empty()) continue;
    for (auto& [t, m] : times) std::fill(m.begin(), m.end(), 1.0);
    const Replicate point = evaluate(scope, idx);
    // Replicates: the same seed for every scope, so a scope's intervals do not depend on which
    // other scopes exist.
    std::mt19937_64 rng(options.seed);
    std::vector<std::vector<double>> experts(idx.size()), nll(idx.size()), match(idx.size()),
        delta(idx.size());
    std::vector<int> missing(idx.size(), 0);
    for (int b = 0; b < options.replicates; ++b) {
      for (const std::string& t : texts) {
        std::vector<double>& m = times[t];
        std::fill(m.begin(), m.end(), 0.0);
        if (scope != "all" && scope != t) continue;
        std::uniform_int_distribution<size_t> pick(0, m.size() - 1);
        for (size_t w = 0; w < m.size(); ++w) m[pick(rng)] += 1.0;
      }
      const Replicate r = evaluate(scope, idx);
      for (size_t j = 0; j < idx.size(); ++j) {
        experts[j].push_back(r.experts[j]);
        nll[j].push_back(r.nll[j]);
        if (std::isfinite(r.topk_at_match[j])) {
          match[j].push_back(r.topk_at_match[j]);
          delta[j].push_back(r.topk_at_match[j] - r.nll[j]);
        } else {
          ++missing[j];
        }
      }
    }
    auto interval = [&](double estimate, std::vector<double>& values) {
      Interval i;
      i.estimate = estimate;
      i.lo = quantile(values, tail);
      i.hi = quantile(values, 1.0 - tail);
      return i;
    };
    const size_t first = points.size();
    std::vector<double> p_values;
    for (size_t j = 0; j < idx.size(); ++j) {
      const ConfigData& c = configs[idx[j]];
      MatchedPoint p;
      p.scope = scope;
      p.config_name = c.name;
      p.router = c.router;
      p.rule = c.rule;
      for (const std::string& t : texts) {
        if (scope != "all" && scope != t) continue;
        const ResultRow& r = *c.by_text.at(t);
        p.windows += static_cast<int>(r.window_tokens.size());
        for (int64_t n : r.window_tokens) p.tokens += n - 1;
      }
      p.mean_experts = interval(point.experts[j], experts[j]);
      p.nll = interval(point.nll[j], nll[j]);
      // A matched difference needs the config inside top-k's range in (nearly) every replicate;
      // otherwise the interval would describe only the replicates where it happened to be.
      const bool matched = std::isfinite(point.topk_at_match[j]) &&
                           missing[j] <= options.replicates / 20;
      if (matched) {
        p.topk_nll_at_match = interval(point.topk_at_match[j], match[j]);
        p.delta_nll = interval(point.topk_at_match[j] - point.nll[j], delta[j]);
        const double n = static_cast<double>(delta[j].size());
        double below = 0, above = 0;
        for (double d : delta[j]) {
          below += d <= 0;
          above += d >= 0;
        }
        p.p_value = std::min(1.0, 2.0 * (std::min(below, above) + 1.0) / (n + 1.0));
      }
      p_values.push_back(p.p_value);
      points.push_back(p);
    }
    const std::vector<double> holm = holm_adjust(p_values);
    for (size_t j = 0; j < holm.size(); ++j) points[first + j].p_holm = holm[j];
  }
  return points;
}

}  // namespace bhmoe::experiments
