// The pieces of Benjamini–Hochberg routing (SPEC.md §2), exposed so tests can check the fast router
// against a direct, sort-based evaluation of the definition.
//
// Numerics (they reproduce ../shared/routing-cases exactly): p-values are interpolated in float64
// (interpolate_cdf), cast to float32 and compared with float32 critical values
// crit[k-1] = fl32(fl32(k) * fl32(alpha)) / fl32(N), as the original's float32 torch code did.
// The original also clamped p to [1.19e-7, 1 - 1.19e-7]; that never changes a comparison unless
// alpha / N < 1.19e-7 (no p in [0, 1.19e-7) can pass then while it would without the clamp), so it
// is not applied here: p-values are compared as they are.
#pragma once

#include <cstdint>
#include <vector>

#include "routing/calibration.h"

namespace bhmoe::routing {

// crit[0..N): the float32 BH critical values k * alpha / N for k = 1..N (non-decreasing).
void bh_critical_values(double alpha, int num_experts, float* crit);

// The calibrated p-value of one logit: fl32(1 - F(logit)), F by float64 linear interpolation.
float calibrated_pvalue(const CalibrationGrid& grid, float logit);

// The references' ranking (BH and Higher Criticism): every expert's calibrated p-value into p
// (resized to num_experts), and the experts ordered by p ascending, ties by the larger logit,
// then the lower id.
std::vector<int32_t> rank_by_pvalue(const float* logits, int num_experts,
                                    const CalibrationGrid& grid, std::vector<float>& p);

// k* = max{k : p_(k) <= crit[k-1]} (0 if none), in O(N) without sorting: expert i passes at every
// k >= t_i = min{k : p_i <= crit[k-1]}, found from ceil(p_i N / alpha) and corrected against crit;
// k* is the largest k with #{i : t_i <= k} >= k.
int bh_step_up_count(const float* pvalues, int num_experts, const float* crit);

// The same by the textbook route (sort p ascending, scan); for tests.
int bh_step_up_count_sorted(const float* pvalues, int num_experts, const float* crit);

// Logit cutoffs: cut[k-1] = the smallest float32 r with calibrated_pvalue(grid, r) <= crit[k-1]
// (+inf when no finite r qualifies, -inf when every finite r does); non-increasing in k. Because
// the calibrated p-value is non-increasing in the logit, "expert i passes at k" is exactly "logit_i
// >= cut[k-1]", which is what the fast router evaluates per token.
std::vector<float> bh_logit_cutoffs(const CalibrationGrid& grid, const float* crit,
                                    int num_experts);

// Direct evaluation of SPEC §2 BH for one token, for tests: computes every p-value, sorts them,
// steps up, clamps to [min_k, max_k] and returns the selected ids (smallest p first; equal p:
// larger logit, then lower id). Weights are not computed.
std::vector<int32_t> bh_select_reference(const float* logits, int num_experts,
                                         const CalibrationGrid& grid, double alpha, int min_k,
                                         int max_k);

}  // namespace bhmoe::routing
