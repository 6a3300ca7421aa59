// Every matvec/matmul level against the scalar reference, for every dtype and odd shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/kernels_test_util.h"
#include "kernels/ops.h"

namespace bhmoe::kernels {
namespace {

using testing::available_isas;
using testing::OwnedMatrix;
using testing::random_matrix;
using testing::random_vector;
using testing::ScopedIsa;

// The error a kernel may add over the double-accumulated reference for output (row r, token t):
// fp32 accumulation, plus bf16 rounding of activations or int8 quantisation of activations where
// the documented contract (ops.h) allows it at this ISA level.
double allowed_error(const Matrix& w, const float* x, int64_t r, Isa isa, bool matmul_tokens,
                     bool exact_call) {
  double magnitude = 0.0, bf16_bound = 0.0, q8_bound = 0.0;
  for (int64_t c = 0; c < w.cols; ++c) {
    double wc = std::fabs(detail::load_weight(w, r, c));
    magnitude += wc * std::fabs(x[c]);
  }
  if (w.dtype == DType::Q8) {
    for (int64_t b = 0; b < w.cols / kQ8Block; ++b) {
      double absmax = 0.0, wsum = 0.0;
      for (int i = 0; i < kQ8Block; ++i) {
        absmax = std::fmax(absmax, std::fabs(x[b * kQ8Block + i]));
        wsum += std::fabs(detail::load_weight(w, r, b * kQ8Block + i));
      }
      q8_bound += wsum * absmax / 254.0 * 1.001;
    }
  }
  bf16_bound = magnitude * std::ldexp(1.0, -8);
  double tolerance = magnitude * (static_cast<double>(w.cols) * 1.2e-7 + 1e-6) + 1e-30;
  if (isa == Isa::Avx512Bf16 && !exact_call) {
    if (w.dtype == DType::BF16 && matmul_tokens) tolerance += bf16_bound;
    // Q8 weights dequantised to bf16 and activations rounded to bf16.
    if (w.dtype == DType::Q8 && matmul_tokens) tolerance += 2 * bf16_bound;
    if (w.dtype == DType::Q8 && !matmul_tokens) tolerance += q8_bound;
  }
  return tolerance;
}

struct Shape {
  int64_t rows, cols;
};

std::vector<Shape> shapes_for(DType dtype) {
  if (dtype == DType::Q8) return {{1, 32}, {3, 64}, {5, 96}, {9, 160}, {4, 256}, {13, 32}};
  return {{1, 1},  {1, 7},  {3, 16},  {5, 17},   {4, 31},
          {9, 33}, {7, 64}, {6, 100}, {13, 129}, {2, 300}};
}

class MatrixKernelTest : public ::testing::TestWithParam<DType> {};

TEST_P(MatrixKernelTest, MatvecMatchesReferenceAtEveryLevel) {
  const DType dtype = GetParam();
  std::mt19937 rng(1234);
  for (Isa isa : available_isas()) {
    ScopedIsa scoped(isa);
    for (Shape shape : shapes_for(dtype)) {
      OwnedMatrix w = random_matrix(dtype, shape.rows, shape.cols, rng);
      std::vector<float> x = random_vector(shape.cols, rng);
      // A sub-range of rows, and sentinels around the output to catch stray writes.
      for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, shape.rows},
                                std::pair<int64_t, int64_t>{shape.rows / 2, shape.rows}}) {
        std::vector<float> expected(static_cast<size_t>(end - begin));
        ref::matvec(w.view, x.data(), expected.data(), begin, end);
        std::vector<float> got(static_cast<size_t>(end - begin) + 2, 12345.0f);
        matvec(w.view, x.data(), got.data() + 1, begin, end);
        EXPECT_EQ(got.front(), 12345.0f);
        EXPECT_EQ(got.back(), 12345.0f);
        for (int64_t r = begin; r < end; ++r) {
          double tol = allowed_error(w.view, x.data(), r, isa, false, false);
          EXPECT_NEAR(got[r - begin + 1], expected[r - begin], tol)
              << isa_name(isa) << " " << dtype_name(dtype) << " " << shape.rows << "x" << shape.cols
              << " row " << r;
        }
      }
    }
  }
}

TEST_P(MatrixKernelTest, MatmulMatchesReferenceForOneToNineTokens) {
  const DType dtype = GetParam();
  std::mt19937 rng(99);
  for (Isa isa : available_isas()) {
    ScopedIsa scoped(isa);
    for (Shape shape : shapes_for(dtype)) {
      OwnedMatrix w = random_matrix(dtype, shape.rows, shape.cols, rng);
      for (int64_t tokens = 1; tokens <= 9; ++tokens) {
        for (bool exact : {false, true}) {
          const int64_t x_stride = shape.cols + 3, begin = shape.rows > 2 ? 1 : 0;
          const int64_t end = shape.rows, out = end - begin, y_stride = out + 2;
          std::vector<float> x = random_vector(tokens * x_stride, rng);
          std::vector<float> expected(static_cast<size_t>(tokens * y_stride), 0.0f);
          ref::matmul(w.view, x.data(), x_stride, tokens, expected.data(), y_stride, begin, end);
          const std::vector<float> got = testing::matmul_within_range(
              w.view, x.data(), x_stride, tokens, y_stride, begin, end, exact);
          for (int64_t t = 0; t < tokens; ++t) {
            for (int64_t i = 0; i < out; ++i) {
              const float value = got[t * y_stride + i];
              double tol =
                  allowed_error(w.view, x.data() + t * x_stride, begin + i, isa, tokens > 1, exact);
              EXPECT_NEAR(value, expected[t * y_stride + i], tol)
                  << isa_name(isa) << " " << dtype_name(dtype) << " " << shape.rows << "x"
                  << shape.cols << " tokens " << tokens << " token " << t << " row " << begin + i
                  << (exact ? " exact" : "");
            }
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, MatrixKernelTest,
                         ::testing::Values(DType::F32, DType::F16, DType::BF16, DType::Q8),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// The contract of ops.h: on Avx512Bf16, matmul over >= 2 tokens with BF16 weights computes with
// activations rounded to bf16 (so it equals the reference on rounded x), and matmul_exact does not.
TEST(MatmulBf16Activations, RoundedOnlyWhereDocumented) {
  if (detected_isa() != Isa::Avx512Bf16) GTEST_SKIP() << "CPU has no AVX512-BF16";
  ScopedIsa scoped(Isa::Avx512Bf16);
  std::mt19937 rng(7);
  const int64_t rows = 8, cols = 256, tokens = 4;
  OwnedMatrix w = random_matrix(DType::BF16, rows, cols, rng);
  std::vector<float> x = random_vector(tokens * cols, rng);
  std::vector<float> x_rounded(x.size());
  for (size_t i = 0; i < x.size(); ++i) x_rounded[i] = bf16_to_f32(f32_to_bf16(x[i]));
  std::vector<float> exact_ref(tokens * rows), rounded_ref(tokens * rows), fast(tokens * rows),
      exact(tokens * rows);
  ref::matmul(w.view, x.data(), cols, tokens, exact_ref.data(), rows, 0, rows);
  ref::matmul(w.view, x_rounded.data(), cols, tokens, rounded_ref.data(), rows, 0, rows);
  matmul(w.view, x.data(), cols, tokens, fast.data(), rows, 0, rows);
  matmul_exact(w.view, x.data(), cols, tokens, exact.data(), rows, 0, rows);
  double fast_vs_rounded = 0, exact_vs_exact = 0, rounded_vs_exact = 0;
  for (size_t i = 0; i < fast.size(); ++i) {
    fast_vs_rounded = std::fmax(fast_vs_rounded, std::fabs(fast[i] - rounded_ref[i]));
    exact_vs_exact = std::fmax(exact_vs_exact, std::fabs(exact[i] - exact_ref[i]));
    rounded_vs_exact = std::fmax(rounded_vs_exact, std::fabs(rounded_ref[i] - exact_ref[i]));
  }
  EXPECT_LT(fast_vs_rounded, 1e-4);
  EXPECT_LT(exact_vs_exact, 1e-4);
  EXPECT_GT(rounded_vs_exact, 1e-3) << "test data should make bf16 rounding visible";
}

// The column-blocked variant of the vdpbf16ps matmul (a tuning knob, off by default) accumulates
// partial sums across blocks; it must give the same results.
TEST(Matmul, ColumnBlockedBf16MatchesWholeRows) {
  if (detected_isa() != Isa::Avx512Bf16) GTEST_SKIP() << "CPU has no AVX512-BF16";
  ScopedIsa scoped(Isa::Avx512Bf16);
  std::mt19937 rng(21);
  for (DType dtype : {DType::BF16, DType::Q8}) {
    const int64_t rows = 9, cols = 224, tokens = 13;
    OwnedMatrix w = random_matrix(dtype, rows, cols, rng);
    std::vector<float> x = random_vector(tokens * cols, rng);
    std::vector<float> whole(tokens * rows), blocked(tokens * rows);
    matmul(w.view, x.data(), cols, tokens, whole.data(), rows, 0, rows);
    const int64_t saved = detail::avx512::g_bf16_col_block;
    detail::avx512::g_bf16_col_block = 64;
    matmul(w.view, x.data(), cols, tokens, blocked.data(), rows, 0, rows);
    detail::avx512::g_bf16_col_block = saved;
    for (size_t i = 0; i < whole.size(); ++i) {
      EXPECT_NEAR(blocked[i], whole[i], 1e-5 * (1 + std::fabs(whole[i]))) << dtype_name(dtype) << i;
    }
  }
}

// Every row grouping of the AVX-512 matvec (a tuning knob) gives the reference results.
TEST(Matvec, EveryRowGroupingMatchesReference) {
  if (static_cast<int>(detected_isa()) < static_cast<int>(Isa::Avx512)) GTEST_SKIP();
  std::mt19937 rng(23);
  const int64_t saved = detail::avx512::g_matvec_rows_at_once;
  for (Isa isa : {Isa::Avx512, detected_isa()}) {
    ScopedIsa scoped(isa);
    for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::Q8}) {
      const int64_t rows = 11, cols = dtype == DType::Q8 ? 160 : 147;
      OwnedMatrix w = random_matrix(dtype, rows, cols, rng);
      std::vector<float> x = random_vector(cols, rng);
      std::vector<float> expected(rows);
      ref::matvec(w.view, x.data(), expected.data(), 0, rows);
      for (int64_t grouping : {1, 2, 4}) {
        detail::avx512::g_matvec_rows_at_once = grouping;
        std::vector<float> got(rows);
        matvec(w.view, x.data(), got.data(), 0, rows);
        for (int64_t r = 0; r < rows; ++r) {
          EXPECT_NEAR(got[r], expected[r], allowed_error(w.view, x.data(), r, isa, false, false))
              << dtype_name(dtype) << " grouping " << grouping << " row " << r;
        }
      }
    }
  }
  detail::avx512::g_matvec_rows_at_once = saved;
}

// The next-row-group prefetch (a tuning knob) only moves data into the cache: results are the same
// bits at every distance, including past the thread's row range.
TEST(Matmul, PrefetchDistanceDoesNotChangeResults) {
  if (detected_isa() != Isa::Avx512Bf16) GTEST_SKIP();
  std::mt19937 rng(29);
  const int64_t saved = detail::avx512::g_matmul_prefetch_next;
  for (DType dtype : {DType::BF16, DType::Q8}) {
    const int64_t rows = 37, cols = 320, tokens = 9;
    OwnedMatrix w = random_matrix(dtype, rows, cols, rng);
    std::vector<float> x = random_vector(tokens * cols, rng);
    std::vector<float> first;
    for (int64_t distance : {0, 1, 2, 9}) {
      detail::avx512::g_matmul_prefetch_next = distance;
      std::vector<float> y(tokens * rows);
      matmul(w.view, x.data(), cols, tokens, y.data(), rows, 0, 20);
      matmul(w.view, x.data(), cols, tokens, y.data() + 20, rows, 20, rows);
      if (first.empty()) {
        first = y;
      } else {
        EXPECT_EQ(y, first) << dtype_name(dtype) << " distance " << distance;
      }
    }
  }
  detail::avx512::g_matmul_prefetch_next = saved;
}

TEST(Matmul, LargeShapesAgreeAcrossLevels) {
  // One realistic expert shape, so the main (unrolled, chunked) loops run many iterations.
  std::mt19937 rng(5);
  const int64_t rows = 64, cols = 2048, tokens = 53;
  for (DType dtype : {DType::BF16, DType::Q8, DType::F32}) {
    OwnedMatrix w = random_matrix(dtype, rows, cols, rng, 0.05f);
    std::vector<float> x = random_vector(tokens * cols, rng);
    std::vector<float> expected(tokens * rows);
    ref::matmul(w.view, x.data(), cols, tokens, expected.data(), rows, 0, rows);
    for (Isa isa : available_isas()) {
      ScopedIsa scoped(isa);
      std::vector<float> got(tokens * rows);
      matmul(w.view, x.data(), cols, tokens, got.data(), rows, 0, rows);
      for (int64_t t = 0; t < tokens; ++t) {
        for (int64_t r = 0; r < rows; ++r) {
          double tol = allowed_error(w.view, x.data() + t * cols, r, isa, true, false);
          ASSERT_NEAR(got[t * rows + r], expected[t * rows + r], tol)
              << isa_name(isa) << " " << dtype_name(dtype) << " token " << t << " row " << r;
        }
      }
    }
  }
}

}  // namespace
}  // namespace bhmoe::kernels
