// Routing statistics (SPEC.md §2 names): expert counts per token, weight entropy, per-expert
// utilisation, a per-layer breakdown, and the multi-k table (one BH config swept over max_k).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace bhmoe::routing {

class Calibration;

// Over a set of per-token counts. std is the sample standard deviation (n - 1; 0 for one token);
// pct_* are percentages in [0, 100] of tokens whose count equals max_k / min_k.
struct CountStats {
  int64_t tokens = 0;
  double mean_experts = 0.0;
  double std_experts = 0.0;
  double min_experts = 0.0;
  double max_experts = 0.0;
  double pct_at_ceiling = 0.0;
  double pct_at_floor = 0.0;
};
// Empty `counts` gives all zeros.
CountStats count_stats(std::span<const int32_t> counts, int max_k, int min_k);

// -sum w ln w over the positive weights (0 ln 0 = 0). The weights are used as given (not
// renormalised).
double weight_entropy(std::span<const float> weights);

// Per-expert selection counts. cv = population std / mean over the used experts (count > 0);
// max_min_ratio = max / min over the used experts. Both 0 when no expert was used.
struct Utilisation {
  std::vector<int64_t> selections;  // [N]
  int used_experts = 0;
  double cv = 0.0;
  double max_min_ratio = 0.0;
};
Utilisation utilisation_from_counts(std::vector<int64_t> selections);

// Accumulates routing decisions, overall and per layer.
class RoutingStats {
 public:
  RoutingStats(int num_experts, int max_k, int min_k);

  // One token's decision: ids[0..count), weights[0..count). Ids must be in [0, N).
  void add(int layer, const int32_t* ids, const float* weights, int count);
  // A batch as written by Router::route_batch (row stride `stride`).
  void add_batch(int layer, const int32_t* ids, const float* weights, const int32_t* counts,
                 int64_t num_tokens, int stride);

  int num_experts() const { return num_experts_; }
  int max_k() const { return max_k_; }
  int min_k() const { return min_k_; }

  CountStats counts() const;  // every token of every layer
  Utilisation utilisation() const;
  double mean_weight_entropy() const;  // mean over tokens of weight_entropy
  double mean_weight_sum() const;      // mean over tokens of sum of the selected weights

  std::vector<int> layers() const;  // ascending
  CountStats counts(int layer) const;
  Utilisation utilisation(int layer) const;
  double mean_weight_entropy(int layer) const;
  const std::vector<int32_t>& token_counts(int layer) const;

 private:
  struct Layer {
    std::vector<int32_t> counts;
    std::vector<int64_t> selections;
    double entropy_sum = 0.0;
    double weight_sum = 0.0;
  };
  const Layer& layer_data(int layer) const;
  int num_experts_;
  int max_k_;
  int min_k_;
  std::map<int, Layer> layers_;
};

// The multi-k table: exactly these columns, in this order.
inline constexpr const char* kMultiKColumns =
    "max_k,mean_experts,std_experts,min_experts,max_experts,pct_at_ceiling,pct_at_floor";

struct MultiKRow {
  int max_k = 0;
  CountStats stats;
};

// Routes every row of `logits` [num_tokens, num_experts] of `layer` with `bh_spec` (a bh: spec)
// once per max_k in `max_ks` (replacing its max_k), and summarises the counts of each.
std::vector<MultiKRow> multi_k_table(const std::string& bh_spec, std::span<const int> max_ks,
                                     const float* logits, int64_t num_tokens, int num_experts,
                                     int layer, std::shared_ptr<const Calibration> calibration);

// CSV text: the kMultiKColumns header, then one row per entry (numbers with up to 6 decimals).
std::string multi_k_csv(std::span<const MultiKRow> rows);
void write_multi_k_csv(const std::filesystem::path& path, std::span<const MultiKRow> rows);

// A fixed-width table for people (same columns).
std::string multi_k_text(std::span<const MultiKRow> rows);

// CSV number formatting shared by the routing outputs: fixed, up to 6 decimals, trailing zeros cut.
std::string format_stat(double value);

}  // namespace bhmoe::routing
