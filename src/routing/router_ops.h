// Allocation-free per-token building blocks shared by the routers (internal to the routing layer).
#pragma once

#include <cstdint>

namespace bhmoe::routing::detail {

// Largest logit; sets *finite to false if any logit is NaN or infinite. When n >= 8 and `floor8` is
// given, *floor8 is a value that at least 8 logits reach (the smallest of eight disjoint groups'
// maxima): a cheap lower bound for the 8th largest logit.
float max_logit(const float* logits, int n, bool* finite, float* floor8 = nullptr);

// e[i] = exp((logits[i] - max) / temperature) for all i; returns their float32 sum (>= 1).
// The exponential is a branch-free polynomial (Cephes expf, within about 2 ulp of std::exp; inputs
// below -87.3 give 0), vectorised, and computed identically on every CPU (no FMA contraction).
float softmax_numerators(const float* logits, int n, float max, float temperature, float* e);

// max_logit and then, only when every logit is finite, softmax_numerators with that maximum, in
// one call: *max, *finite and *floor8 (if given) as max_logit sets them; returns the sum (0 when a
// logit is not finite, e untouched then).
float max_and_softmax(const float* logits, int n, float temperature, float* max, bool* finite,
                      float* floor8, float* e);

// Indices i in ascending order with logits[i] >= cutoff to out[0..m), their logits to
// out_logits[0..m) followed by -inf up to the next multiple of 16; returns m. out_logits needs room
// for n rounded up to a multiple of 16.
int collect_at_least(const float* logits, int n, float cutoff, int32_t* out, float* out_logits);

// BH's k* (see bh.h) from the m candidates' logits (as written by collect_at_least with cutoff
// cut[N-1]) and the non-increasing logit cutoffs `cut`, readable up to m rounded up to a multiple
// of 16: k* = max{k <= m : #{j : logit_j >= cut[k-1]} >= k}, 0 if none. O(m^2 / 16), branch-free.
int step_up_count(const float* candidate_logits, int m, const float* cut);

// ordered[0..m) = candidates sorted by logit descending, equal logits lower index first
// (candidates ascending on entry; candidate_logits readable, padded with -inf, up to m rounded up
// to a multiple of 16, as collect_at_least writes them).
void rank_order(const float* candidate_logits, const int32_t* candidates, int m, int32_t* ordered);

// Writes to out[0..count) the `count` indices with the largest logits among `candidates[0..n)`
// (ascending indices; nullptr means 0..n-1), ordered by logit descending, equal logits lower index
// first. count <= n. No allocation.
void select_top(const float* logits, const int32_t* candidates, int n, int count, int32_t* out);

// The first non-finite logit's index (or -1); the slow path of error reporting.
int first_non_finite(const float* logits, int n);

}  // namespace bhmoe::routing::detail
