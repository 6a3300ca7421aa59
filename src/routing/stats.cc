#include "routing/stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <sstream>

#include "routing/router.h"
#include "routing/spec.h"
#include "util/error.h"
#include "util/file.h"

namespace bhmoe::routing {

CountStats count_stats(std::span<const int32_t> counts, int max_k, int min_k) {
  CountStats s;
  s.tokens = static_cast<int64_t>(counts.size());
  if (counts.empty()) return s;
  double sum = 0.0;
  int32_t lo = counts[0];
  int32_t hi = counts[0];
  int64_t ceiling = 0;
  int64_t floor = 0;
  for (int32_t c : counts) {
    sum += c;
    lo = std::min(lo, c);
    hi = std::max(hi, c);
    ceiling += c == max_k ? 1 : 0;
    floor += c == min_k ? 1 : 0;
  }
  const double n = static_cast<double>(counts.size());
  s.mean_experts = sum / n;
  double ss = 0.0;
  for (int32_t c : counts) ss += (c - s.mean_experts) * (c - s.mean_experts);
  s.std_experts = counts.size() > 1 ? std::sqrt(ss / (n - 1.0)) : 0.0;
  s.min_experts = lo;
  s.max_experts = hi;
  s.pct_at_ceiling = 100.0 * static_cast<double>(ceiling) / n;
  s.pct_at_floor = 100.0 * static_cast<double>(floor) / n;
  return s;
}

double weight_entropy(std::span<const float> weights) {
  double h = 0.0;
  for (float w : weights) {
    if (w > 0.0f) h -= static_cast<double>(w) * std::log(static_cast<double>(w));
  }
  return h;
}

Utilisation utilisation_from_counts(std::vector<int64_t> selections) {
  Utilisation u;
  u.selections = std::move(selections);
  double sum = 0.0;
  int64_t lo = 0;
  int64_t hi = 0;
  for (int64_t c : u.selections) {
    if (c <= 0) continue;
    lo = u.used_experts == 0 ? c : std::min(lo, c);
    hi = std::max(hi, c);
    sum += static_cast<double>(c);
    ++u.used_experts;
  }
  if (u.used_experts == 0) return u;
  const double mean = sum / u.used_experts;
  double ss = 0.0;
  for (int64_t c : u.selections) {
    if (c > 0) ss += (static_cast<double>(c) - mean) * (static_cast<double>(c) - mean);
  }
  u.cv = std::sqrt(ss / u.used_experts) / mean;
  u.max_min_ratio = static_cast<double>(hi) / static_cast<double>(lo);
  return u;
}

RoutingStats::RoutingStats(int num_experts, int max_k, int min_k)
    : num_experts_(num_experts), max_k_(max_k), min_k_(min_k) {
  if (num_experts < 1) fail("routing statistics: number of experts ", num_experts, " must be >= 1");
}

void RoutingStats::add(int layer, const int32_t* ids, const float* weights, int count) {
  Layer& data = layers_[layer];
  if (data.selections.empty()) data.selections.assign(static_cast<size_t>(num_experts_), 0);
  data.counts.push_back(count);
  double sum = 0.0;
  for (int j = 0; j < count; ++j) {
    if (ids[j] < 0 || ids[j] >= num_experts_) {
      fail("routing statistics: expert id ", ids[j], " outside [0, ", num_experts_, ")");
    }
    ++data.selections[ids[j]];
    sum += weights[j];
  }
  data.entropy_sum += weight_entropy(std::span<const float>(weights, static_cast<size_t>(count)));
  data.weight_sum += sum;
}

void RoutingStats::add_batch(int layer, const int32_t* ids, const float* weights,
                             const int32_t* counts, int64_t num_tokens, int stride) {
  for (int64_t t = 0; t < num_tokens; ++t)
    add(layer, ids + t * stride, weights + t * stride, counts[t]);
}

const RoutingStats::Layer& RoutingStats::layer_data(int layer) const {
  auto it = layers_.find(layer);
  if (it == layers_.end()) fail("routing statistics: nothing recorded for layer ", layer);
  return it->second;
}

CountStats RoutingStats::counts() const {
  std::vector<int32_t> all;
  for (const auto& [id, data] : layers_)
    all.insert(all.end(), data.counts.begin(), data.counts.end());
  return count_stats(all, max_k_, min_k_);
}

Utilisation RoutingStats::utilisation() const {
  std::vector<int64_t> total(static_cast<size_t>(num_experts_), 0);
  for (const auto& [id, data] : layers_) {
    for (int e = 0; e < num_experts_; ++e) total[e] += data.selections[e];
  }
  return utilisation_from_counts(std::move(total));
}

double RoutingStats::mean_weight_entropy() const {
  double sum = 0.0;
  int64_t tokens = 0;
  for (const auto& [id, data] : layers_) {
    sum += data.entropy_sum;
    tokens += static_cast<int64_t>(data.counts.size());
  }
  return tokens ? sum / static_cast<double>(tokens) : 0.0;
}

double RoutingStats::mean_weight_sum() const {
  double sum = 0.0;
  int64_t tokens = 0;
  for (const auto& [id, data] : layers_) {
    sum += data.weight_sum;
    tokens += static_cast<int64_t>(data.counts.size());
  }
  return tokens ? sum / static_cast<double>(tokens) : 0.0;
}

std::vector<int> RoutingStats::layers() const {
  std::vector<int> out;
  for (const auto& [id, data] : layers_) out.push_back(id);
  return out;
}

CountStats RoutingStats::counts(int layer) const {
  return count_stats(layer_data(layer).counts, max_k_, min_k_);
}

Utilisation RoutingStats::utilisation(int layer) const {
  return utilisation_from_counts(layer_data(layer).selections);
}

double RoutingStats::mean_weight_entropy(int layer) const {
  const Layer& data = layer_data(layer);
  return data.counts.empty() ? 0.0 : data.entropy_sum / static_cast<double>(data.counts.size());
}

const std::vector<int32_t>& RoutingStats::token_counts(int layer) const {
  return layer_data(layer).counts;
}

std::vector<MultiKRow> multi_k_table(const std::string& bh_spec, std::span<const int> max_ks,
                                     const float* logits, int64_t num_tokens, int num_experts,
                                     int layer, std::shared_ptr<const Calibration> calibration) {
  RouterSpec base = parse_router_spec(bh_spec);
  if (base.rule != RuleKind::kBH)
    fail("multi-k table: router spec \"", bh_spec, "\" is not a bh: spec");
  std::vector<MultiKRow> rows;
  for (int max_k : max_ks) {
    RouterSpec spec = base;
    spec.max_k = max_k;
    spec.max_k_given = true;
    if (max_k < spec.min_k) {
      fail("multi-k table: max_k ", max_k, " is below min_k=", spec.min_k);
    }
    auto router = make_router(spec, num_experts, calibration);
    std::vector<int32_t> ids(static_cast<size_t>(num_tokens * max_k));
    std::vector<float> weights(ids.size());
    std::vector<int32_t> counts(static_cast<size_t>(num_tokens));
    router->route_batch(logits, num_tokens, layer, ids.data(), weights.data(), counts.data());
    rows.push_back({max_k, count_stats(counts, max_k, spec.min_k)});
  }
  return rows;
}

std::string format_stat(double value) {
  if (!std::isfinite(value)) return value != value ? "nan" : (value > 0 ? "inf" : "-inf");
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.6f", value);
  std::string s(buffer);
  if (s.find('.') != std::string::npos) {
    while (s.back() == '0') s.pop_back();
    if (s.back() == '.') s.pop_back();
  }
  if (s == "-0") s = "0";
  return s;
}

std::string multi_k_csv(std::span<const MultiKRow> rows) {
  std::string out = std::string(kMultiKColumns) + "\n";
  for (const MultiKRow& row : rows) {
    const CountStats& s = row.stats;
    out += cat(row.max_k, ",", format_stat(s.mean_experts), ",", format_stat(s.std_experts), ",",
               format_stat(s.min_experts), ",", format_stat(s.max_experts), ",",
               format_stat(s.pct_at_ceiling), ",", format_stat(s.pct_at_floor), "\n");
  }
  return out;
}

void write_multi_k_csv(const std::filesystem::path& path, std::span<const MultiKRow> rows) {
  write_file_atomic(path, multi_k_csv(rows));
}

std::string multi_k_text(std::span<const MultiKRow> rows) {
  std::ostringstream out;
  out << std::left << std::setw(7) << "max_k" << std::right << std::setw(13) << "mean_experts"
      << std::setw(12) << "std_experts" << std::setw(12) << "min_experts" << std::setw(12)
      << "max_experts" << std::setw(15) << "pct_at_ceiling" << std::setw(13) << "pct_at_floor"
      << "\n";
  out << std::fixed;
  for (const MultiKRow& row : rows) {
    const CountStats& s = row.stats;
    out << std::left << std::setw(7) << row.max_k << std::right << std::setprecision(2)
        << std::setw(13) << s.mean_experts << std::setw(12) << s.std_experts << std::setprecision(0)
        << std::setw(12) << s.min_experts << std::setw(12) << s.max_experts << std::setprecision(1)
        << std::setw(15) << s.pct_at_ceiling << std::setw(13) << s.pct_at_floor << "\n";
  }
  return out.str();
}

}  // namespace bhmoe::routing
