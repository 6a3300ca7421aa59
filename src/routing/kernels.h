// Allocation-free per-token building blocks shared by the routers (internal to the routing layer).
#pragma once

#include <cstdint>

namespace bhmoe::routing::detail {

// Largest logit; sets *finite to false if any logit is NaN or infinite.
float max_logit(const float* logits, int n, bool* finite);

// e[i] = exp((logits[i] - max) / temperature) for all i; returns their float32 sum (>= 1).
// The exponential is a branch-free polynomial (Cephes expf, within about 2 ulp of std::exp; inputs
// below -87.3 give 0), vectorised, and computed identically on every CPU (no FMA contraction).
float softmax_numerators(const float* logits, int n, float max, float temperature, float* e);

// Indices i in ascending order with logits[i] >= cutoff; returns how many.
int collect_at_least(const float* logits, int n, float cutoff, int32_t* out);

// Writes to out[0..count) the `count` indices with the largest logits among `candidates[0..n)`
// (ascending indices; nullptr means 0..n-1), ordered by logit descending, equal logits lower index
// first. count <= n. No allocation.
void select_top(const float* logits, const int32_t* candidates, int n, int count, int32_t* out);

// The first non-finite logit's index (or -1); the slow path of error reporting.
int first_non_finite(const float* logits, int n);

}  // namespace bhmoe::routing::detail
