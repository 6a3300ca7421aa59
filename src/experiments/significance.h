// Significance tests for comparing routing configs over the same prompts.
#pragma once

#include <limits>
#include <span>

namespace bhmoe::experiments {

struct PairedTTest {
  int n = 0;             // number of pairs
  double mean_diff = 0;  // mean of (a_i − b_i)
  double sd_diff = 0;    // sample standard deviation of the differences (n − 1)
  double t = 0;          // mean_diff / (sd_diff / sqrt(n)); ±inf when sd_diff = 0 ≠ mean_diff
  double df = 0;         // n − 1
  double p_value = 1;    // two-sided, Student's t with df degrees of freedom (Boost.Math)
  double cohens_d = 0;   // paired-samples effect size d_z = mean_diff / sd_diff (±inf as t)
  bool defined = false;  // false when n < 2 (no test possible); then t, p, d are NaN
};

// Paired two-sided t-test of a against b (same length, a[i] paired with b[i]). Differences that are
// all equal give sd 0: identical samples yield t = 0, p = 1, d = 0; a constant non-zero shift
// yields t = ±inf, p = 0, d = ±inf. Throws bhmoe::Error if the lengths differ or a value is not
// finite.
PairedTTest paired_t_test(std::span<const double> a, std::span<const double> b);

// Two-sided p-value of Student's t statistic `t` with `df` degrees of freedom.
double students_t_two_sided_p(double t, double df);

// The mean of a sample with its Student-t confidence interval, the interval every plotted mean
// carries: mean ± t_{(1 + level) / 2, n − 1} · sd / √n, sd the sample standard deviation (n − 1).
// Non-finite values are left out (n counts the finite ones). n = 0: everything NaN; n = 1: the
// mean with lo = hi = NaN (no spread to estimate); sd = 0 (e.g. top-k's count, k on every prompt):
// lo = hi = mean.
struct MeanInterval {
  int n = 0;
  double mean = std::numeric_limits<double>::quiet_NaN();
  double lo = std::numeric_limits<double>::quiet_NaN();
  double hi = std::numeric_limits<double>::quiet_NaN();
  double half_width() const { return (hi - lo) / 2; }  // NaN when the interval is undefined
};
MeanInterval mean_t_interval(std::span<const double> values, double level = 0.95);

}  // namespace bhmoe::experiments
