// The pieces of the adaptive rules beside BH and top-p (SPEC.md §2 style; README's rules table):
// dynamic skipping, a fixed probability threshold, Higher Criticism and entropy-bucketed k. The
// routers (router.cc) use them per token; bhmoe.torch reproduces them op for op; the *_reference
// functions evaluate each rule's definition directly (sort everything, then walk), for the tests
// that check the fast routers against them.
//
// Contracts shared by every rule here:
//  - e are the library's softmax numerators exp((r - max) / temperature)
//    (detail::softmax_numerators, so e = 1 exactly for the largest logit) and `sum` their float32
//    sum; an expert's probability
//    is e * fl32(1 / sum), the value the router writes as its (unrenormalised) weight.
//  - The selection is a count; the experts are the `count` largest logits (ties: lower id first).
//  - Temperature shapes the probabilities that skip and threshold compare and the weights; HC's
//    p-values and the entropy of the entropy rule are taken at temperature 1 (as BH's p-values),
//    because their calibration was fitted on raw logits.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "routing/calibration.h"

namespace bhmoe::routing {

// ---- dynamic skipping (Lu et al. 2024) and fixed threshold ----

// Skip: expert i passes when e_i >= fl32(beta) * e_top (e_top = 1): its probability is at least
// beta times the top probability; the common factor 1 / sum is left out, so the comparison is
// exact. Threshold: expert i passes when e_i * fl32(1 / sum) >= fl32(tau): its probability (exactly
// the weight the router reports) reaches tau. In both, count = clamp(#passing, min_k, max_k).
//
// References: sort the experts by logit (stable), then keep them while they pass, within
// [min_k, max_k]. Weights are not computed.
std::vector<int32_t> skip_select_reference(const float* logits, int num_experts, double beta,
                                           double temperature, int min_k, int max_k);
std::vector<int32_t> threshold_select_reference(const float* logits, int num_experts, double tau,
                                                double temperature, int min_k, int max_k);

// ---- Higher Criticism (Donoho & Jin 2004) ----

// Guards of the two ends, where the formula divides by zero:
//  - p = 0 (a logit above the calibration grid: certainly not null) is raised to kHCPValueFloor,
//    float32's epsilon (the clamp the original project applied to its p-values). A run of p = 0
//    experts then has HC increasing along the run, so all of them are selected (up to max_k);
//    +inf would tie them all and the tie rule would keep only the first.
//  - p = 1 (a logit below the grid: certainly null) gives HC = -inf, its limit for i < N (and 0/0
//    at i = N), so such an expert is never where HC peaks; a token whose p-values are all 1 gets
//    i* = 1 (all -inf tie), i.e. min_k experts. Clamping to 1 - epsilon instead would make HC rise
//    along a run of p = 1 and select the most experts exactly when none is significant.
inline constexpr double kHCPValueFloor = 0x1p-23;

// The HC search range: i = 1..hc_search_length(alpha0, N) = max(1, floor(alpha0 * N)) (<= N),
// floor taken in float64.
int hc_search_length(double alpha0, int num_experts);

// HC(i) = sqrt(N) * (i/N - p) / sqrt(p * (1 - p)) for the i-th smallest p-value p (float32, as
// calibrated_pvalue gives it), guarded as above (p >= 1: -inf; p below the floor: the floor), in
// float64 in exactly that order of operations (bhmoe.torch does the same ones).
double higher_criticism(float pvalue, int i, int num_experts);

// i* = argmax over i = 1..length of HC(i) for ascending p-values sorted_p[0..length); the first
// (smallest) i wins ties.
int hc_argmax(const float* sorted_p, int length, int num_experts);

// Direct evaluation: every calibrated p-value, sorted ascending (equal p: larger logit, then lower
// id, as bh_select_reference), HC over the first hc_search_length, argmax, clamp to
// [min_k, max_k]; the selected experts are returned by logit descending, ties lower id first.
// The router and bhmoe.torch instead take the p-values of the experts in logit order: the same
// sequence whenever p is non-increasing in the logit (one pooled CDF per layer, as BH's cutoffs
// assume); the tests check the two agree on a normal and the real OLMoE calibration.
std::vector<int32_t> hc_select_reference(const float* logits, int num_experts,
                                         const CalibrationGrid& grid, double alpha0, int min_k,
                                         int max_k);

// ---- entropy-bucketed k (Adaptive-K style) ----

// Cephes' logf, in float32 operations in a fixed order (bhmoe.torch repeats them): within about
// 1 ulp of log(x) for positive normal x.
float entropy_log(float x);

// The entropy in nats of softmax(logits) at temperature 1, H = ln S - (sum_i e_i x_i) / S with
// x_i = max(r_i - max, -87.33654) (where e_i is 0 anyway; keeps -inf out) and S = sum_i e_i; the
// products are summed as the library sums e (eight lanes over blocks of eight experts, then the
// lanes in order, then the tail). Logits must be finite.
float router_entropy(const float* logits, int num_experts);

// The same in float64 with std::exp and std::log, for tests (|difference| ~ 1e-6).
double router_entropy_reference(const float* logits, int num_experts);

// The calibration's entropy quantiles: kEntropyQuantileLevels + 1 values, at levels j / Q for
// j = 0..Q (so the first is the minimum and the last the maximum), by linear interpolation between
// order statistics (numpy.quantile's default) of router_entropy over the tokens of `pooled`, a
// flat [T, N] array of one layer's logits. Throws when the size is not a positive multiple of N or
// a logit is not finite.
inline constexpr int kEntropyQuantileLevels = 1000;
std::vector<double> entropy_quantiles(std::span<const float> pooled, int num_experts);

// Bucket boundaries for `buckets` equal-mass buckets: t[b-1] = the quantile at level b / buckets
// (b = 1..buckets-1), linearly interpolated between the stored levels in float64, then rounded to
// float32. Empty for one bucket.
std::vector<float> entropy_thresholds(const std::vector<double>& quantiles, int buckets);

// The bucket of entropy h: #{b : h > t[b]} (a token exactly at a boundary goes to the lower,
// cheaper bucket).
int entropy_bucket(float entropy, const float* thresholds, int count);

// Direct evaluation: entropy (router_entropy), bucket by a scan of the thresholds, k = ks[bucket],
// the k first experts of a stable sort by logit.
std::vector<int32_t> entropy_select_reference(const float* logits, int num_experts,
                                              const std::vector<float>& thresholds,
                                              const std::vector<int>& ks);

}  // namespace bhmoe::routing
