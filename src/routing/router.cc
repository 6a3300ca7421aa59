#include "routing/router.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "routing/adaptive.h"
#include "routing/bh.h"
#include "routing/calibration.h"
#include "routing/router_ops.h"
#include "routing/spec.h"
#include "util/error.h"

namespace bhmoe::routing {

void Router::route_batch(const float* logits, int64_t num_tokens, int layer, int32_t* ids,
                         float* weights, int32_t* counts) const {
  const int n = num_experts();
  const int stride = max_count();
  for (int64_t t = 0; t < num_tokens; ++t) {
    int32_t* row_ids = ids + t * stride;
    float* row_weights = weights + t * stride;
    int count;
    try {
      count = route(logits + t * n, layer, row_ids, row_weights);
    } catch (const Error& e) {
      fail("token ", t, ": ", e.what());
    }
    counts[t] = count;
    for (int j = count; j < stride; ++j) {
      row_ids[j] = -1;
      row_weights[j] = 0.0f;
    }
  }
}

namespace {

[[noreturn]] void non_finite_error(const float* logits, int n, int layer) {
  int i = detail::first_non_finite(logits, n);
  fail("layer ", layer, ": router logit of expert ", i, " is ", logits[i < 0 ? 0 : i],
       " (logits must be finite)");
}

// Fills weights for ids[0..count) from the softmax numerators e and their sum.
inline void write_weights(const float* e, float sum, const int32_t* ids, int count, bool renorm,
                          float* weights) {
  const float inv_sum = 1.0f / sum;
  float selected = 0.0f;
  for (int j = 0; j < count; ++j) {
    weights[j] = e[ids[j]] * inv_sum;
    selected += weights[j];
  }
  if (renorm && selected > 0.0f) {
    const float inv = 1.0f / selected;
    for (int j = 0; j < count; ++j) weights[j] *= inv;
  }
}

// ids[0..count) = the `count` largest logits, ties lower id first; floor8 as max_logit sets it
// (read only when n >= 8).
inline void top_ids(const float* logits, int n, float floor8, int count, int32_t* ids) {
  if (count <= 8 && n >= 8) {
    // At least 8 logits reach floor8, so the `count` largest are among those that do; rank only
    // them.
    int32_t candidates[kMaxExperts];
    float candidate_logits[kMaxExperts + 16];
    int32_t ordered[kMaxExperts];
    const int m = detail::collect_at_least(logits, n, floor8, candidates, candidate_logits);
    detail::rank_order(candidate_logits, candidates, m, ordered);
    std::memcpy(ids, ordered, sizeof(int32_t) * static_cast<size_t>(count));
  } else {
    detail::select_top(logits, nullptr, n, count, ids);
  }
}

class TopKRouter final : public Router {
 public:
  TopKRouter(const RouterSpec& spec, int n)
      : spec_(spec), n_(n), temperature_(static_cast<float>(spec.temperature)) {}

  std::string spec() const override { return canonical_spec(spec_); }
  int num_experts() const override { return n_; }
  int max_count() const override { return spec_.k; }

  int route(const float* logits, int layer, int32_t* ids, float* weights) const override {
    bool finite;
    float floor8;
    float mx;
    float e[kMaxExperts];
    const float sum = detail::max_and_softmax(logits, n_, temperature_, &mx, &finite, &floor8, e);
    if (!finite) non_finite_error(logits, n_, layer);
    top_ids(logits, n_, floor8, spec_.k, ids);
    write_weights(e, sum, ids, spec_.k, spec_.renorm, weights);
    return spec_.k;
  }

 private:
  RouterSpec spec_;
  int n_;
  float temperature_;
};

class TopPRouter final : public Router {
 public:
  TopPRouter(const RouterSpec& spec, int n)
      : spec_(spec),
        n_(n),
        temperature_(static_cast<float>(spec.temperature)),
        mass_(static_cast<float>(spec.p)) {}

  std::string spec() const override { return canonical_spec(spec_); }
  int num_experts() const override { return n_; }
  int max_count() const override { return spec_.max_k; }

  int route(const float* logits, int layer, int32_t* ids, float* weights) const override {
    bool finite;
    float floor8;
    float mx;
    float e[kMaxExperts];
    const float sum = detail::max_and_softmax(logits, n_, temperature_, &mx, &finite, &floor8, e);
    if (!finite) non_finite_error(logits, n_, layer);
    const float inv_sum = 1.0f / sum;
    // The smallest prefix (by probability) whose cumulative probability reaches p, within
    // [min_k, max_k]; `ordered` holds the first `known` experts in that order.
    auto prefix = [&](const int32_t* ordered, int known) {
      float cumulative = 0.0f;
      for (int j = 0; j < known; ++j) {
        cumulative += e[ordered[j]] * inv_sum;
        if (cumulative >= mass_) return j + 1;
      }
      return known + 1;  // not reached within `known`
    };
    int count = spec_.max_k + 1;
    if (n_ >= 8 && spec_.min_k <= 8) {
      // The logits reaching floor8 (at least 8) are the largest ones: often enough to reach p.
      int32_t candidates[kMaxExperts];
      float candidate_logits[kMaxExperts + 16];
      int32_t ordered[kMaxExperts];
      const int m = detail::collect_at_least(logits, n_, floor8, candidates, candidate_logits);
      detail::rank_order(candidate_logits, candidates, m, ordered);
      const int known = std::min(m, spec_.max_k);
      const int reached = prefix(ordered, known);
      if (reached <= known || known == spec_.max_k) {
        count = std::clamp(reached, spec_.min_k, spec_.max_k);
        std::memcpy(ids, ordered, sizeof(int32_t) * static_cast<size_t>(count));
      }
    }
    if (count > spec_.max_k) {
      detail::select_top(logits, nullptr, n_, spec_.max_k, ids);
      count = std::clamp(prefix(ids, spec_.max_k), spec_.min_k, spec_.max_k);
    }
    write_weights(e, sum, ids, count, spec_.renorm, weights);
    return count;
  }

 private:
  RouterSpec spec_;
  int n_;
  float temperature_;
  float mass_;
};

class BHRouter final : public Router {
 public:
  BHRouter(const RouterSpec& spec, int n, std::shared_ptr<const Calibration> calibration)
      : spec_(spec),
        n_(n),
        temperature_(static_cast<float>(spec.temperature)),
        calibration_(std::move(calibration)),
        crit_(static_cast<size_t>(n)) {
    bh_critical_values(spec.alpha, n, crit_.data());
    if (spec.pvalues == PValueKind::kCalibrated) {
      for (int layer : calibration_->layers()) {
        if (layer < 0) continue;
        if (static_cast<size_t>(layer) >= cutoffs_.size()) cutoffs_.resize(layer + 1);
        // Padded with -inf to a multiple of 16 entries: step_up_count reads whole vectors.
        std::vector<float> cut = bh_logit_cutoffs(calibration_->grid(layer), crit_.data(), n);
        cut.resize((cut.size() + 15) / 16 * 16, -std::numeric_limits<float>::infinity());
        cutoffs_[layer] = std::move(cut);
      }
    }
  }

  std::string spec() const override { return canonical_spec(spec_); }
  int num_experts() const override { return n_; }
  int max_count() const override { return spec_.max_k; }
  bool uses_calibration() const override { return spec_.pvalues == PValueKind::kCalibrated; }

  int route(const float* logits, int layer, int32_t* ids, float* weights) const override {
    if (spec_.pvalues == PValueKind::kOneMinusProb)
      return route_one_minus_prob(logits, layer, ids, weights);
    return route_calibrated(logits, layer_cutoffs(layer), layer, ids, weights);
  }

  void route_batch(const float* logits, int64_t num_tokens, int layer, int32_t* ids, float* weights,
                   int32_t* counts) const override {
    if (spec_.pvalues == PValueKind::kOneMinusProb) {
      Router::route_batch(logits, num_tokens, layer, ids, weights, counts);
      return;
    }
    const float* cut = layer_cutoffs(layer);
    const int stride = spec_.max_k;
    for (int64_t t = 0; t < num_tokens; ++t) {
      int32_t* row_ids = ids + t * stride;
      float* row_weights = weights + t * stride;
      int count;
      try {
        count = route_calibrated(logits + t * n_, cut, layer, row_ids, row_weights);
      } catch (const Error& e) {
        fail("token ", t, ": ", e.what());
      }
      counts[t] = count;
      for (int j = count; j < stride; ++j) {
        row_ids[j] = -1;
        row_weights[j] = 0.0f;
      }
    }
  }

 private:
  const float* layer_cutoffs(int layer) const {
    if (layer < 0 || static_cast<size_t>(layer) >= cutoffs_.size() || cutoffs_[layer].empty()) {
      calibration_->grid(layer);  // throws the error naming the layers it has
      fail("calibration has no layer ", layer);
    }
    return cutoffs_[layer].data();
  }

  int route_calibrated(const float* logits, const float* cut, int layer, int32_t* ids,
                       float* weights) const {
    bool finite;
    float mx;
    float e[kMaxExperts];
    const float sum = detail::max_and_softmax(logits, n_, temperature_, &mx, &finite, nullptr, e);
    if (!finite) non_finite_error(logits, n_, layer);

    // Only experts at or above the loosest cutoff (k = N) can pass at any k; they are the m largest
    // logits, and k* <= m.
    int32_t candidates[kMaxExperts];
    float candidate_logits[kMaxExperts + 16];
    const int m = detail::collect_at_least(logits, n_, cut[n_ - 1], candidates, candidate_logits);
    const int kstar = detail::step_up_count(candidate_logits, m, cut);
    const int count = std::clamp(kstar, spec_.min_k, spec_.max_k);
    int32_t selected[kMaxExperts];
    float selected_logits[kMaxExperts + 16];
    int exact = 0;
    if (count == kstar) {
      // Exactly k* candidates reach cut[k*-1] (k' = more would pass at k' too, contradicting the
      // maximality of k*; cut is non-increasing): they are the selection, only their order remains.
      const float bar = cut[kstar - 1];
      for (int j = 0; j < m; ++j) {
        selected[exact] = candidates[j];
        selected_logits[exact] = candidate_logits[j];
        exact += candidate_logits[j] >= bar ? 1 : 0;
      }
    }
    if (count == kstar && exact == count) {
      if (count <= 8) {
        // Few: insertion sort, moving past strictly smaller logits only (ties keep id order).
        for (int j = 0; j < count; ++j) {
          const int32_t id = selected[j];
          const float v = selected_logits[j];
          int pos = j;
          while (pos > 0 && v > logits[ids[pos - 1]]) {
            ids[pos] = ids[pos - 1];
            --pos;
          }
          ids[pos] = id;
        }
      } else {
        // rank_order reads whole vectors: -inf padding up to a multiple of 16.
        for (int j = exact; j < (exact + 15) / 16 * 16; ++j) {
          selected_logits[j] = -std::numeric_limits<float>::infinity();
        }
        detail::rank_order(selected_logits, selected, count, ids);
      }
    } else if (count == 1) {
      // The largest logit (known): its first occurrence, among the candidates when there are any.
      int32_t best = -1;
      if (m > 0) {
        for (int j = 0; best < 0; ++j) best = candidate_logits[j] == mx ? candidates[j] : -1;
      } else {
        for (int i = 0; best < 0; ++i) best = logits[i] == mx ? i : -1;
      }
      ids[0] = best;
    } else if (count <= 8 && count <= m) {
      detail::select_top(logits, candidates, m, count, ids);
    } else if (count <= m) {
      int32_t ordered[kMaxExperts];
      detail::rank_order(candidate_logits, candidates, m, ordered);
      std::memcpy(ids, ordered, sizeof(int32_t) * static_cast<size_t>(count));
    } else {
      detail::select_top(logits, nullptr, n_, count, ids);
    }
    write_weights(e, sum, ids, count, spec_.renorm, weights);
    return count;
  }

  // p_i = 1 - softmax(r)_i (temperature 1: temperature does not touch p-values). Degenerate; kept
  // to reproduce the original's first version.
  int route_one_minus_prob(const float* logits, int layer, int32_t* ids, float* weights) const {
    bool finite;
    const float mx = detail::max_logit(logits, n_, &finite);
    if (!finite) non_finite_error(logits, n_, layer);
    float e[kMaxExperts];
    float p[kMaxExperts];
    const float sum1 = detail::softmax_numerators(logits, n_, mx, 1.0f, e);
    for (int i = 0; i < n_; ++i) p[i] = 1.0f - e[i] / sum1;
    const int kstar = bh_step_up_count(p, n_, crit_.data());
    const int count = std::clamp(kstar, spec_.min_k, spec_.max_k);
    detail::select_top(logits, nullptr, n_, count, ids);
    const float sum =
        temperature_ == 1.0f ? sum1 : detail::softmax_numerators(logits, n_, mx, temperature_, e);
    write_weights(e, sum, ids, count, spec_.renorm, weights);
    return count;
  }

  RouterSpec spec_;
  int n_;
  float temperature_;
  std::shared_ptr<const Calibration> calibration_;
  std::vector<float> crit_;
  std::vector<std::vector<float>> cutoffs_;  // by layer id; empty when the calibration lacks it
};

// Skip (Lu et al. 2024) and threshold: count the experts that pass (adaptive.h states the exact
// comparisons), clamp, take that many of the largest logits. O(N) after the softmax.
class ProbabilityRouter final : public Router {
 public:
  ProbabilityRouter(const RouterSpec& spec, int n)
      : spec_(spec),
        n_(n),
        temperature_(static_cast<float>(spec.temperature)),
        bar_(static_cast<float>(spec.rule == RuleKind::kSkip ? spec.beta : spec.tau)) {}

  std::string spec() const override { return canonical_spec(spec_); }
  int num_experts() const override { return n_; }
  int max_count() const override { return spec_.max_k; }

  int route(const float* logits, int layer, int32_t* ids, float* weights) const override {
    bool finite;
    float floor8 = -std::numeric_limits<float>::infinity();
    float mx;
    float e[kMaxExperts];
    const float sum = detail::max_and_softmax(logits, n_, temperature_, &mx, &finite, &floor8, e);
    if (!finite) non_finite_error(logits, n_, layer);
    int passing = 0;
    if (spec_.rule == RuleKind::kSkip) {
      // e_i >= beta * e_top with e_top = exp(0) = 1.
      for (int i = 0; i < n_; ++i) passing += e[i] >= bar_ ? 1 : 0;
    } else {
      const float inv_sum = 1.0f / sum;
      for (int i = 0; i < n_; ++i) passing += e[i] * inv_sum >= bar_ ? 1 : 0;
    }
    const int count = std::clamp(passing, spec_.min_k, spec_.max_k);
    top_ids(logits, n_, floor8, count, ids);
    write_weights(e, sum, ids, count, spec_.renorm, weights);
    return count;
  }

 private:
  RouterSpec spec_;
  int n_;
  float temperature_;
  float bar_;  // fl32(beta) or fl32(tau)
};

// Higher Criticism (Donoho & Jin 2004) on BH's calibrated p-values. The p-values ascending are the
// logits descending (one pooled CDF per layer: p is non-increasing in the logit), so only the
// hc_search_length largest logits are ranked and get a p-value; HC as adaptive.h defines it.
class HCRouter final : public Router {
 public:
  HCRouter(const RouterSpec& spec, int n, std::shared_ptr<const Calibration> calibration)
      : spec_(spec),
        n_(n),
        temperature_(static_cast<float>(spec.temperature)),
        length_(hc_search_length(spec.alpha0, n)),
        calibration_(std::move(calibration)) {}

  std::string spec() const override { return canonical_spec(spec_); }
  int num_experts() const override { return n_; }
  int max_count() const override { return spec_.max_k; }
  bool uses_calibration() const override { return true; }

  int route(const float* logits, int layer, int32_t* ids, float* weights) const override {
    const CalibrationGrid& grid = calibration_->grid(layer);
    bool finite;
    float floor8 = -std::numeric_limits<float>::infinity();
    float mx;
    float e[kMaxExperts];
    const float sum = detail::max_and_softmax(logits, n_, temperature_, &mx, &finite, &floor8, e);
    if (!finite) non_finite_error(logits, n_, layer);
    int32_t ordered[kMaxExperts];
    int known = length_;  // ordered[0..known) are the largest logits in order
    if (length_ <= 8) {
      top_ids(logits, n_, floor8, length_, ordered);
    } else {
      // A long prefix (N/2 at the default alpha0): rank every expert with the vectorised ranking,
      // four times faster here than a partial sort (and than nth_element, then ranking the top).
      int32_t all[kMaxExperts];
      float all_logits[kMaxExperts + 16];
      const int m = detail::collect_at_least(logits, n_, -std::numeric_limits<float>::infinity(),
                                             all, all_logits);
      detail::rank_order(all_logits, all, m, ordered);
      known = n_;
    }
    float p[kMaxExperts];
    for (int j = 0; j < length_; ++j) p[j] = calibrated_pvalue(grid, logits[ordered[j]]);
    const int count = std::clamp(hc_argmax(p, length_, n_), spec_.min_k, spec_.max_k);
    if (count <= known) {
      std::memcpy(ids, ordered, sizeof(int32_t) * static_cast<size_t>(count));
    } else {
      top_ids(logits, n_, floor8, count, ids);
    }
    write_weights(e, sum, ids, count, spec_.renorm, weights);
    return count;
  }

 private:
  RouterSpec spec_;
  int n_;
  float temperature_;
  int length_;
  std::shared_ptr<const Calibration> calibration_;
};

// Entropy-bucketed k: the entropy of softmax(r) (temperature 1) against the layer's bucket
// boundaries from the calibration's entropy quantiles; k = ks[bucket] of the largest logits.
class EntropyRouter final : public Router {
 public:
  EntropyRouter(const RouterSpec& spec, int n, std::shared_ptr<const Calibration> calibration)
      : spec_(spec),
        n_(n),
        temperature_(static_cast<float>(spec.temperature)),
        max_count_(routing::max_count(spec)) {
    const int buckets = static_cast<int>(spec.ks.size());
    for (int layer : calibration->layers()) {
      if (!calibration->has_entropy_quantiles(layer)) continue;
      if (static_cast<size_t>(layer) >= thresholds_.size()) thresholds_.resize(layer + 1);
      thresholds_[layer] = entropy_thresholds(calibration->entropy_quantiles(layer), buckets);
      has_.resize(thresholds_.size(), false);
      has_[layer] = true;
    }
    if (thresholds_.empty()) {
      fail("router spec \"", canonical_spec(spec),
           "\": the calibration has no entropy quantiles for any layer (fit one with bhmoe "
           "calibrate, calibrate-logits on [T, N] logits or bhmoe.Calibration.fit)");
    }
    calibration_ = std::move(calibration);
  }

  std::string spec() const override { return canonical_spec(spec_); }
  int num_experts() const override { return n_; }
  int max_count() const override { return max_count_; }
  bool uses_calibration() const override { return true; }

  int route(const float* logits, int layer, int32_t* ids, float* weights) const override {
    if (layer < 0 || static_cast<size_t>(layer) >= has_.size() || !has_[layer]) {
      fail(calibration_error(*calibration_, layer));
    }
    bool finite;
    float floor8 = -std::numeric_limits<float>::infinity();
    float mx;
    float e[kMaxExperts];
    const float sum = detail::max_and_softmax(logits, n_, temperature_, &mx, &finite, &floor8, e);
    if (!finite) non_finite_error(logits, n_, layer);
    const std::vector<float>& t = thresholds_[layer];
    const float h = router_entropy(logits, n_);
    const int count = spec_.ks[entropy_bucket(h, t.data(), static_cast<int>(t.size()))];
    top_ids(logits, n_, floor8, count, ids);
    write_weights(e, sum, ids, count, spec_.renorm, weights);
    return count;
  }

 private:
  // The calibration's own message (which layers have entropy quantiles, how to get them).
  static std::string calibration_error(const Calibration& calibration, int layer) {
    try {
      calibration.entropy_quantiles(layer);
    } catch (const Error& e) {
      return e.what();
    }
    return cat("calibration has no entropy quantiles for layer ", layer);
  }

  RouterSpec spec_;
  int n_;
  float temperature_;
  int max_count_;
  std::shared_ptr<const Calibration> calibration_;
  std::vector<std::vector<float>> thresholds_;  // by layer id
  std::vector<bool> has_;                       // by layer id: entropy quantiles present
};

}  // namespace

std::unique_ptr<Router> make_router(std::string_view spec_text, int num_experts,
                                    std::shared_ptr<const Calibration> calibration) {
  return make_router(parse_router_spec(spec_text), num_experts, std::move(calibration));
}

std::unique_ptr<Router> make_router(const RouterSpec& given, int num_experts,
                                    std::shared_ptr<const Calibration> calibration) {
  validate_router_spec(given);
  const RouterSpec spec = resolve_router_spec(given, num_experts);
  switch (spec.rule) {
    case RuleKind::kTopK:
      return std::make_unique<TopKRouter>(spec, num_experts);
    case RuleKind::kTopP:
      return std::make_unique<TopPRouter>(spec, num_experts);
    case RuleKind::kBH:
      if (spec.pvalues == PValueKind::kCalibrated && !calibration) {
        fail("router spec \"", canonical_spec(spec), "\": pvalues=calibrated needs a calibration");
      }
      return std::make_unique<BHRouter>(spec, num_experts, std::move(calibration));
    case RuleKind::kSkip:
    case RuleKind::kThreshold:
      return std::make_unique<ProbabilityRouter>(spec, num_experts);
    case RuleKind::kHC:
      if (!calibration) {
        fail("router spec \"", canonical_spec(spec), "\": pvalues=calibrated needs a calibration");
      }
      return std::make_unique<HCRouter>(spec, num_experts, std::move(calibration));
    case RuleKind::kEntropy:
      if (!calibration) {
        fail("router spec \"", canonical_spec(spec),
             "\": needs a calibration with entropy quantiles");
      }
      return std::make_unique<EntropyRouter>(spec, num_experts, std::move(calibration));
  }
  fail("router spec \"", canonical_spec(spec), "\": unknown rule");
}

}  // namespace bhmoe::routing
