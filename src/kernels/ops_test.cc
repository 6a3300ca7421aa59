// Element-wise kernels at every ISA level against double-precision formulas; Q8 quantisation.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/kernels_test_util.h"
#include "kernels/ops.h"
#include "util/error.h"

namespace bhmoe::kernels {
namespace {

using testing::available_isas;
using testing::OwnedMatrix;
using testing::random_matrix;
using testing::random_vector;
using testing::ScopedIsa;

const int64_t kSizes[] = {1, 5, 15, 16, 17, 33, 64, 1000, 2048};

TEST(Ops, RmsnormMatchesFormulaForEveryWeightDtype) {
  std::mt19937 rng(11);
  for (Isa isa : available_isas()) {
    ScopedIsa scoped(isa);
    for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
      for (int64_t n : kSizes) {
        OwnedMatrix weight = random_matrix(dtype, 1, n, rng, 2.0f);
        std::vector<float> x = random_vector(n, rng, 3.0f);
        double ss = 0;
        for (float v : x) ss += static_cast<double>(v) * v;
        const float eps = 1e-5f;
        double inv = 1.0 / std::sqrt(ss / n + eps);
        std::vector<float> out(n + 1, 99.0f);
        rmsnorm(x.data(), weight.view, n, eps, out.data());
        EXPECT_EQ(out[n], 99.0f);
        for (int64_t i = 0; i < n; ++i) {
          double expected = x[i] * inv * detail::load_weight(weight.view, 0, i);
          ASSERT_NEAR(out[i], expected, 1e-5 * (1 + std::fabs(expected)))
              << isa_name(isa) << " " << dtype_name(dtype) << " n " << n << " i " << i;
        }
        // In place.
        std::vector<float> in_place = x;
        rmsnorm(in_place.data(), weight.view, n, eps, in_place.data());
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(in_place[i], out[i]);
      }
    }
  }
}

TEST(Ops, SoftmaxIsStableAndNormalised) {
  std::mt19937 rng(12);
  for (Isa isa : available_isas()) {
    ScopedIsa scoped(isa);
    for (int64_t n : kSizes) {
      for (float range : {1.0f, 30.0f, 1000.0f}) {
        std::vector<float> x = random_vector(n, rng, range);
        x[0] += range;  // large logits must not overflow
        double max = -INFINITY;
        for (float v : x) max = std::fmax(max, v);
        double sum = 0;
        for (float v : x) sum += std::exp(static_cast<double>(v) - max);
        std::vector<float> y = x;
        softmax(y.data(), n);
        double total = 0;
        for (int64_t i = 0; i < n; ++i) {
          double expected = std::exp(static_cast<double>(x[i]) - max) / sum;
          // exp's own error, plus the rounding of x - max in fp32; values under 2^-126 may flush.
          double tol = expected * (2e-6 + std::fabs(x[i] - max) * 1.2e-7) + 1.2e-38;
          ASSERT_NEAR(y[i], expected, tol) << isa_name(isa) << " n " << n << " i " << i;
          total += y[i];
        }
        EXPECT_NEAR(total, 1.0, 1e-5);
      }
    }
  }
}

TEST(Ops, SoftmaxOfMinusInfinityIsZero) {
  for (Isa isa : available_isas()) {
    ScopedIsa scoped(isa);
    std::vector<float> x(37, -std::numeric_limits<float>::infinity());
    x[3] = 0.5f;
    x[20] = 0.5f;
    softmax(x.data(), 37);
    for (int i = 0; i < 37; ++i) EXPECT_EQ(x[i], (i == 3 || i == 20) ? 0.5f : 0.0f) << i;
  }
}

TEST(Ops, SwigluMatchesFormula) {
  std::mt19937 rng(13);
  for (Isa isa : available_isas()) {
    ScopedIsa scoped(isa);
    for (int64_t n : kSizes) {
      std::vector<float> gate = random_vector(n, rng, 20.0f), up = random_vector(n, rng, 3.0f);
      gate[0] = -100.0f;
      if (n > 1) gate[1] = 95.0f;
      std::vector<float> out(n);
      swiglu(gate.data(), up.data(), out.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        double g = gate[i];
        double expected = g / (1.0 + std::exp(-g)) * up[i];
        ASSERT_NEAR(out[i], expected, 2e-6 * std::fabs(expected) + 1e-35)
            << isa_name(isa) << " n " << n << " gate " << g;
      }
    }
  }
}

TEST(Ops, AxpyAndDot) {
  std::mt19937 rng(14);
  for (Isa isa : available_isas()) {
    ScopedIsa scoped(isa);
    for (int64_t n : kSizes) {
      std::vector<float> a = random_vector(n, rng), b = random_vector(n, rng);
      double expected_dot = 0, magnitude = 0;
      for (int64_t i = 0; i < n; ++i) {
        expected_dot += static_cast<double>(a[i]) * b[i];
        magnitude += std::fabs(static_cast<double>(a[i]) * b[i]);
      }
      EXPECT_NEAR(dot_f32(a.data(), b.data(), n), expected_dot, 1e-6 * magnitude * (1 + n / 64.0));
      std::vector<float> y = b;
      y.push_back(5.0f);
      axpy(0.75f, a.data(), y.data(), n);
      EXPECT_EQ(y[n], 5.0f);
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_NEAR(y[i], 0.75 * a[i] + b[i], 1.2e-7 * (std::fabs(0.75 * a[i]) + std::fabs(b[i])));
      }
    }
  }
}

TEST(Ops, EmbeddingRowConvertsEveryDtype) {
  std::mt19937 rng(15);
  for (DType dtype : {DType::F32, DType::F16, DType::BF16, DType::Q8}) {
    OwnedMatrix m = random_matrix(dtype, 5, 64, rng);
    std::vector<float> out(64);
    embedding_row(m.view, 3, out.data());
    for (int64_t c = 0; c < 64; ++c) EXPECT_EQ(out[c], detail::load_weight(m.view, 3, c));
    if (dtype == DType::F32) {
      for (int64_t c = 0; c < 64; ++c) EXPECT_EQ(out[c], m.f32[3 * 64 + c]);
    }
  }
}

TEST(Q8, QuantiseErrorIsWithinHalfAStep) {
  std::mt19937 rng(16);
  for (DType dtype : {DType::F32, DType::BF16, DType::F16}) {
    OwnedMatrix src = random_matrix(dtype, 7, 96, rng, 4.0f);
    std::vector<int8_t> values(7 * 96);
    std::vector<float> scales(7 * 3);
    quantize_q8(src.view, values.data(), scales.data());
    Matrix q = q8_matrix(values.data(), scales.data(), 7, 96);
    for (int64_t r = 0; r < 7; ++r) {
      for (int64_t b = 0; b < 3; ++b) {
        float absmax = 0;
        for (int i = 0; i < kQ8Block; ++i) {
          absmax = std::fmax(absmax, std::fabs(detail::load_weight(src.view, r, b * 32 + i)));
        }
        EXPECT_FLOAT_EQ(scales[r * 3 + b], absmax / 127.0f);
        bool reaches_127 = false;
        for (int i = 0; i < kQ8Block; ++i) {
          int64_t c = b * 32 + i;
          int v = values[r * 96 + c];
          EXPECT_LE(std::abs(v), 127);
          reaches_127 |= std::abs(v) == 127;
          float original = detail::load_weight(src.view, r, c);
          EXPECT_LE(std::fabs(detail::load_weight(q, r, c) - original),
                    scales[r * 3 + b] * 0.5f * 1.0001f);
        }
        EXPECT_TRUE(reaches_127);
      }
    }
  }
}

TEST(Q8, VectorQuantisationIsBitIdenticalToScalar) {
  std::mt19937 rng(18);
  for (DType dtype : {DType::F32, DType::BF16, DType::F16}) {
    OwnedMatrix src = random_matrix(dtype, 9, 160, rng, 3.0f);
    std::vector<int8_t> expected_values(9 * 160);
    std::vector<float> expected_scales(9 * 5);
    {
      ScopedIsa scoped(Isa::Scalar);
      quantize_q8(src.view, expected_values.data(), expected_scales.data());
    }
    for (Isa isa : available_isas()) {
      ScopedIsa scoped(isa);
      std::vector<int8_t> values(9 * 160);
      std::vector<float> scales(9 * 5);
      quantize_q8(src.view, values.data(), scales.data());
      EXPECT_EQ(values, expected_values) << isa_name(isa) << " " << dtype_name(dtype);
      EXPECT_EQ(scales, expected_scales) << isa_name(isa) << " " << dtype_name(dtype);
    }
  }
}

TEST(Q8, ZeroBlockAndBadInput) {
  std::vector<float> zeros(64, 0.0f);
  zeros[40] = -2.0f;
  Matrix src{zeros.data(), DType::F32, 1, 64, nullptr};
  std::vector<int8_t> values(64, 1);
  std::vector<float> scales(2, -1.0f);
  quantize_q8(src, values.data(), scales.data());
  EXPECT_EQ(scales[0], 0.0f);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(values[i], 0);
  EXPECT_EQ(values[40], -127);

  Matrix odd{zeros.data(), DType::F32, 2, 30, nullptr};
  EXPECT_THROW(quantize_q8(odd, values.data(), scales.data()), Error);
  Matrix already = q8_matrix(values.data(), scales.data(), 1, 64);
  EXPECT_THROW(quantize_q8(already, values.data(), scales.data()), Error);
  for (Isa isa : available_isas()) {
    ScopedIsa scoped(isa);
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), INFINITY, -INFINITY}) {
      std::vector<float> data = zeros;
      data[37] = bad;
      Matrix m{data.data(), DType::F32, 1, 64, nullptr};
      try {
        quantize_q8(m, values.data(), scales.data());
        ADD_FAILURE() << "no error for " << bad;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("column 37"), std::string::npos) << e.what();
      }
    }
  }
}

TEST(Isa, LevelsAndNames) {
  EXPECT_STREQ(isa_name(Isa::Scalar), "scalar");
  EXPECT_STREQ(isa_name(Isa::Avx512Bf16), "avx512bf16");
  for (Isa isa : available_isas()) {
    ScopedIsa scoped(isa);
    EXPECT_EQ(active_isa(), isa);
  }
  if (detected_isa() != Isa::Avx512Bf16) {
    EXPECT_THROW(set_active_isa(Isa::Avx512Bf16), Error);
  }
  EXPECT_STREQ(dtype_name(DType::BF16), "BF16");
  EXPECT_EQ(dtype_size(DType::F32), 4u);
  EXPECT_EQ(dtype_size(DType::Q8), 1u);
}

TEST(MatrixView, RowBlockOffsetsDataAndScales) {
  std::mt19937 rng(17);
  OwnedMatrix q = random_matrix(DType::Q8, 6, 64, rng);
  Matrix block = q.view.row_block(2, 3);
  EXPECT_EQ(block.rows, 3);
  EXPECT_EQ(block.cols, 64);
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t c = 0; c < 64; ++c)
      EXPECT_EQ(detail::load_weight(block, r, c), detail::load_weight(q.view, r + 2, c));
  OwnedMatrix b = random_matrix(DType::BF16, 6, 10, rng);
  Matrix bb = b.view.row_block(5, 1);
  EXPECT_EQ(static_cast<const uint16_t*>(bb.data), b.half.data() + 50);
}

}  // namespace
}  // namespace bhmoe::kernels
