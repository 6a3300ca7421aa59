#include "experiments/significance.h"

#include <algorithm>
#include <boost/math/distributions/students_t.hpp>
#include <cmath>
#include <limits>

#include "util/error.h"

namespace bhmoe::experiments {

double students_t_two_sided_p(double t, double df) {
  if (std::isnan(t) || !(df > 0)) return std::numeric_limits<double>::quiet_NaN();
  if (std::isinf(t)) return 0.0;
  boost::math::students_t distribution(df);
  double p = 2.0 * boost::math::cdf(boost::math::complement(distribution, std::fabs(t)));
  return std::min(1.0, p);
}

MeanInterval mean_t_interval(std::span<const double> values, double level) {
  if (!(level > 0 && level < 1)) fail("t interval: level ", level, " is outside (0, 1)");
  MeanInterval out;
  double sum = 0;
  for (double v : values) {
    if (std::isfinite(v)) {
      sum += v;
      ++out.n;
    }
  }
  if (out.n == 0) return out;
  out.mean = sum / out.n;
  if (out.n == 1) return out;
  double squares = 0;
  for (double v : values) {
    if (std::isfinite(v)) squares += (v - out.mean) * (v - out.mean);
  }
  const double sd = std::sqrt(squares / (out.n - 1));
  const boost::math::students_t distribution(out.n - 1);
  const double half =
      boost::math::quantile(distribution, 0.5 + level / 2) * sd / std::sqrt(double(out.n));
  out.lo = out.mean - half;
  out.hi = out.mean + half;
  return out;
}

PairedTTest paired_t_test(std::span<const double> a, std::span<const double> b) {
  if (a.size() != b.size()) {
    fail("paired t-test: the samples have different sizes (", a.size(), " and ", b.size(), ")");
  }
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) {
      fail("paired t-test: pair ", i, " holds a non-finite value");
    }
  }
  PairedTTest test;
  test.n = static_cast<int>(a.size());
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (test.n < 2) {
    test.t = test.p_value = test.cohens_d = test.sd_diff = nan;
    test.mean_diff = test.n == 1 ? a[0] - b[0] : nan;
    test.df = test.n - 1;
    return test;
  }
  test.defined = true;
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) sum += a[i] - b[i];
  test.mean_diff = sum / test.n;
  double squares = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    double d = (a[i] - b[i]) - test.mean_diff;
    squares += d * d;
  }
  test.sd_diff = std::sqrt(squares / (test.n - 1));
  test.df = test.n - 1;
  // Differences equal to rounding noise of the values count as no spread.
  double scale = 0;
  for (size_t i = 0; i < a.size(); ++i) scale = std::max({scale, std::fabs(a[i]), std::fabs(b[i])});
  if (test.sd_diff <= 1e-12 * std::max(scale, 1.0)) {
    test.sd_diff = 0;
    if (std::fabs(test.mean_diff) <= 1e-12 * std::max(scale, 1.0)) {
      test.mean_diff = 0;
      test.t = 0;
      test.p_value = 1;
      test.cohens_d = 0;
    } else {
      double inf = std::copysign(std::numeric_limits<double>::infinity(), test.mean_diff);
      test.t = inf;
      test.p_value = 0;
      test.cohens_d = inf;
    }
    return test;
  }
  test.t = test.mean_diff / (test.sd_diff / std::sqrt(static_cast<double>(test.n)));
  test.p_value = students_t_two_sided_p(test.t, test.df);
  test.cohens_d = test.mean_diff / test.sd_diff;
  return test;
}

}  // namespace bhmoe::experiments
