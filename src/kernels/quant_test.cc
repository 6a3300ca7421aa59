// GGUF block types: layouts against hand-built blocks, the quantisers' error bounds, and every
// matvec/matmul level against the reference within the precision contract of ops.h.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/kernels_test_util.h"
#include "kernels/ops.h"
#include "kernels/quant.h"
#include "util/error.h"

namespace bhmoe::kernels {
namespace {

using testing::available_isas;
using testing::OwnedMatrix;
using testing::random_matrix;
using testing::random_vector;
using testing::ScopedIsa;

const DType kBlockTypes[] = {DType::Q8_0, DType::Q4_0, DType::Q4_K, DType::Q6_K};

void put_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v & 0xff);
  p[1] = static_cast<uint8_t>(v >> 8);
}

// Every way of reading a one-block row gives `expected` exactly: dequantize_row, load_weight, and
// the SIMD dequantisation the matmuls use.
void expect_block_values(DType dtype, const std::vector<uint8_t>& block,
                         const std::vector<double>& expected) {
  const int64_t n = block_values(dtype);
  ASSERT_EQ(block.size(), block_bytes(dtype));
  ASSERT_EQ(static_cast<int64_t>(expected.size()), n);
  const Matrix m = block_matrix(block.data(), dtype, 1, n);
  std::vector<float> row(n);
  dequantize_row(m, 0, row.data());
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(row[i], expected[i]) << dtype_name(dtype) << " value " << i;
    ASSERT_EQ(detail::load_weight(m, 0, i), expected[i]) << dtype_name(dtype) << " value " << i;
  }
  if (detected_isa() >= Isa::Avx2) {
    std::vector<float> simd(n);
    detail::avx2::dequantize_range(m, 0, 0, n, simd.data());
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(simd[i], expected[i]) << dtype_name(dtype) << i;
  }
  std::vector<float> embedded(n);
  embedding_row(m, 0, embedded.data());
  EXPECT_EQ(embedded, row);
}

TEST(QuantLayout, Q8_0BlockBuiltByHand) {
  std::vector<uint8_t> block(34);
  put_u16(block.data(), 0x3800);  // d = 0.5
  std::vector<double> expected(32);
  for (int i = 0; i < 32; ++i) {
    const int q = i == 31 ? -128 : 4 * i - 61;
    block[2 + i] = static_cast<uint8_t>(static_cast<int8_t>(q));
    expected[i] = 0.5 * q;
  }
  expect_block_values(DType::Q8_0, block, expected);
}

TEST(QuantLayout, Q4_0BlockBuiltByHand) {
  std::vector<uint8_t> block(18);
  put_u16(block.data(), 0x3400);  // d = 0.25
  std::vector<double> expected(32);
  for (int j = 0; j < 16; ++j) {
    const int lo = j, hi = (15 - j + 5) % 16;
    block[2 + j] = static_cast<uint8_t>(lo | (hi << 4));
    expected[j] = 0.25 * (lo - 8);
    expected[j + 16] = 0.25 * (hi - 8);
  }
  expect_block_values(DType::Q4_0, block, expected);
}

TEST(QuantLayout, Q4_KBlockBuiltByHand) {
  // Distinct 6-bit scales and mins per sub-block, with the top bits set for sub-blocks 4-7 so the
  // split packing is exercised.
  const int sc[8] = {1, 5, 17, 33, 63, 40, 18, 55};
  const int m[8] = {0, 63, 12, 31, 48, 7, 59, 20};
  std::vector<uint8_t> block(144, 0);
  put_u16(block.data(), 0x3000);      // d = 0.125
  put_u16(block.data() + 2, 0x2c00);  // dmin = 0.0625
  uint8_t* scales = block.data() + 4;
  for (int j = 0; j < 4; ++j) {
    scales[j] = static_cast<uint8_t>(sc[j]);
    scales[j + 4] = static_cast<uint8_t>(m[j]);
  }
  for (int j = 4; j < 8; ++j) {
    scales[j + 4] = static_cast<uint8_t>((sc[j] & 0xF) | ((m[j] & 0xF) << 4));
    scales[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
    scales[j] |= static_cast<uint8_t>((m[j] >> 4) << 6);
  }
  for (int j = 0; j < 8; ++j) {
    int got_sc, got_m;
    q4k_scale_min(scales, j, &got_sc, &got_m);
    EXPECT_EQ(got_sc, sc[j]) << j;
    EXPECT_EQ(got_m, m[j]) << j;
  }
  std::vector<double> expected(256);
  uint8_t* qs = block.data() + 16;
  for (int v = 0; v < 256; ++v) {
    const int q = (v * 7 + 3) % 16;
    const int chunk = v / 64, within = v % 64;
    if (within < 32) {
      qs[32 * chunk + within] |= static_cast<uint8_t>(q);
    } else {
      qs[32 * chunk + within - 32] |= static_cast<uint8_t>(q << 4);
    }
    const int j = v / 32;
    expected[v] = 0.125 * sc[j] * q - 0.0625 * m[j];  // multiples of 1/16: exact in fp32
  }
  expect_block_values(DType::Q4_K, block, expected);
}

TEST(QuantLayout, Q6_KBlockBuiltByHand) {
  std::vector<uint8_t> block(210, 0);
  put_u16(block.data() + 208, 0x3800);  // d = 0.5, after ql[128], qh[64], scales[16]
  int sc[16];
  for (int g = 0; g < 16; ++g) {
    sc[g] = g * 9 - 70;  // distinct, negative and positive
    block[192 + g] = static_cast<uint8_t>(static_cast<int8_t>(sc[g]));
  }
  std::vector<double> expected(256);
  uint8_t* ql = block.data();
  uint8_t* qh = block.data() + 128;
  for (int v = 0; v < 256; ++v) {
    const int q = (v * 11 + 5) % 64;
    const int n = v / 128, k = v % 128 / 32, l = v % 32;
    uint8_t& low = ql[64 * n + l + 32 * (k & 1)];
    low |= static_cast<uint8_t>(k < 2 ? (q & 0xF) : (q & 0xF) << 4);
    qh[32 * n + l] |= static_cast<uint8_t>((q >> 4) << (2 * k));
    expected[v] = 0.5 * sc[v / 16] * (q - 32);
  }
  expect_block_values(DType::Q6_K, block, expected);
}

TEST(QuantLayout, SizesAndRowViews) {
  EXPECT_EQ(block_values(DType::Q8_0), 32);
  EXPECT_EQ(block_values(DType::Q4_0), 32);
  EXPECT_EQ(block_values(DType::Q4_K), 256);
  EXPECT_EQ(block_values(DType::Q6_K), 256);
  EXPECT_EQ(block_values(DType::BF16), 1);
  EXPECT_EQ(block_bytes(DType::Q8_0), 34u);
  EXPECT_EQ(block_bytes(DType::Q4_0), 18u);
  EXPECT_EQ(block_bytes(DType::Q4_K), 144u);
  EXPECT_EQ(block_bytes(DType::Q6_K), 210u);
  EXPECT_EQ(row_bytes(DType::Q4_K, 2048), 8u * 144);
  EXPECT_EQ(row_bytes(DType::Q4_0, 64), 36u);
  EXPECT_EQ(row_bytes(DType::F16, 10), 20u);
  EXPECT_EQ(row_bytes(DType::Q8, 64), 64u);
  EXPECT_STREQ(dtype_name(DType::Q4_K), "Q4_K");
  EXPECT_STREQ(dtype_name(DType::Q6_K), "Q6_K");
  EXPECT_TRUE(is_block_dtype(DType::Q8_0));
  EXPECT_FALSE(is_block_dtype(DType::Q8));
  EXPECT_THROW(dtype_size(DType::Q6_K), Error);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);

  std::mt19937 rng(3);
  for (DType dtype : kBlockTypes) {
    OwnedMatrix w = random_matrix(dtype, 5, 512, rng);
    Matrix block = w.view.row_block(3, 2);
    EXPECT_EQ(static_cast<const uint8_t*>(block.data), w.blocks.data() + 3 * row_bytes(dtype, 512));
    for (int64_t c = 0; c < 512; c += 7) {
      EXPECT_EQ(detail::load_weight(block, 1, c), detail::load_weight(w.view, 4, c));
    }
  }
}

// ---- quantisers ------------------------------------------------------------------------------

// Rows that stress the scale choices: uniform, all positive, all negative, a zero block, a lone
// outlier, tiny values (f16 subnormal scales), and a constant row.
std::vector<float> awkward_rows(int64_t rows, int64_t cols, std::mt19937& rng) {
  std::vector<float> v(static_cast<size_t>(rows * cols));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = v.data() + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      float x = u(rng);
      switch (r % 7) {
        case 1:
          x = std::fabs(x) * 3.0f;
          break;
        case 2:
          x = -std::fabs(x) - 0.5f;
          break;
        case 3:
          x = c < 64 ? 0.0f : x;
          break;
        case 4:
          x = c == 5 ? 40.0f : x * 0.01f;
          break;
        case 5:
          x *= 1e-6f;
          break;
        case 6:
          x = 0.75f;
          break;
        default:
          break;
      }
      row[c] = x;
    }
  }
  return v;
}

float f16_field(const uint8_t* p) {
  return f16_to_f32(load_u16(p));
}

TEST(Quantize, ErrorIsWithinTheStatedBound) {
  std::mt19937 rng(41);
  const int64_t rows = 14, cols = 512;
  const std::vector<float> src = awkward_rows(rows, cols, rng);
  for (DType dtype : kBlockTypes) {
    std::vector<uint8_t> out(rows * row_bytes(dtype, cols));
    quantize_rows(Matrix{src.data(), DType::F32, rows, cols, nullptr}, dtype, out.data());
    const Matrix q = block_matrix(out.data(), dtype, rows, cols);
    std::vector<float> back(cols);
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row(q, r, back.data());
      const uint8_t* row = out.data() + r * row_bytes(dtype, cols);
      const float* x = src.data() + r * cols;
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t block = c / block_values(dtype);
        const uint8_t* b = row + block * block_bytes(dtype);
        const float* bx = x + block * block_values(dtype);
        double bound = 0.0, data_bound = 0.0;
        if (dtype == DType::Q8_0 || dtype == DType::Q4_0) {
          const double top = dtype == DType::Q8_0 ? 127.0 : 7.0;
          const double d = f16_field(b);
          double absmax = 0.0;
          for (int i = 0; i < 32; ++i) absmax = std::fmax(absmax, std::fabs(bx[i]));
          bound = std::fmax(d / 2, absmax - top * d);
          // d's rounding up to f16: relative 2^-11, or absolute 2^-24 where d is subnormal.
          data_bound = absmax / (dtype == DType::Q8_0 ? 254.0 : 15.0) * (1 + 0x1p-10) + 0x1p-25;
        } else if (dtype == DType::Q4_K) {
          const int j = static_cast<int>(c % 256 / 32);
          int sc, m;
          q4k_scale_min(b + 4, j, &sc, &m);
          const double d = f16_field(b), dmin = f16_field(b + 2);
          bound = d * sc / 2;
          double lo = 0.0, hi = -INFINITY;
          for (int i = 0; i < 32; ++i) {
            lo = std::fmin(lo, bx[32 * j + i]);
            hi = std::fmax(hi, bx[32 * j + i]);
          }
          data_bound = ((hi - lo + dmin) / 15 + d) / 2;
        } else {
          const int g = static_cast<int>(c % 256 / 16);
          const double d = f16_field(b + 208);
          const int sc = static_cast<int8_t>(b[192 + g]);
          bound = d * sc / 2;
          double absmax = 0.0;
          for (int i = 0; i < 16; ++i) absmax = std::fmax(absmax, std::fabs(bx[16 * g + i]));
          data_bound = absmax / 63 + d / 2;
        }
        // Plus the fp32 rounding of the dequantised value (Q4_K's subtraction).
        const double slack = 1.2e-7 * (std::fabs(x[c]) + bound) + 1e-30;
        const double error = std::fabs(static_cast<double>(back[c]) - x[c]);
        ASSERT_LE(error, bound * (1 + 1e-6) + slack)
            << dtype_name(dtype) << " row " << r << " col " << c << " value " << x[c];
        ASSERT_LE(bound, data_bound * (1 + 1e-6) + 1e-30)
            << dtype_name(dtype) << " row " << r << " col " << c;
      }
    }
  }
}

TEST(Quantize, ZeroRowsAreExactAndTinyValuesSurvive) {
  for (DType dtype : kBlockTypes) {
    std::vector<float> src(2 * 256, 0.0f);
    for (int i = 256; i < 512; ++i) src[i] = (i % 2 ? 1e-7f : -2e-7f);  // scales below f16's range
    std::vector<uint8_t> out(2 * row_bytes(dtype, 256), 0xAB);
    quantize_rows(Matrix{src.data(), DType::F32, 2, 256, nullptr}, dtype, out.data());
    std::vector<float> back(512);
    const Matrix q = block_matrix(out.data(), dtype, 2, 256);
    dequantize_row(q, 0, back.data());
    dequantize_row(q, 1, back.data() + 256);
    for (int i = 0; i < 256; ++i) EXPECT_EQ(back[i], 0.0f) << dtype_name(dtype) << " " << i;
    for (int i = 256; i < 512; ++i) {
      EXPECT_NE(back[i], 0.0f) << dtype_name(dtype) << " " << i;
      EXPECT_EQ(std::signbit(back[i]), std::signbit(src[i])) << dtype_name(dtype) << " " << i;
    }
  }
}

TEST(Quantize, AcceptsHalfSourcesAndRejectsBadInput) {
  std::mt19937 rng(43);
  for (DType dtype : kBlockTypes) {
    for (DType source : {DType::F16, DType::BF16}) {
      OwnedMatrix src = random_matrix(source, 3, 256, rng);
      std::vector<uint8_t> a(3 * row_bytes(dtype, 256)), b(a.size());
      quantize_rows(src.view, dtype, a.data());
      std::vector<float> f32(3 * 256);
      for (int64_t i = 0; i < 3 * 256; ++i)
        f32[i] = detail::load_weight(src.view, i / 256, i % 256);
      quantize_rows(Matrix{f32.data(), DType::F32, 3, 256, nullptr}, dtype, b.data());
      EXPECT_EQ(a, b) << dtype_name(dtype) << " from " << dtype_name(source);
    }
  }
  std::vector<float> src(512, 1.0f);
  std::vector<uint8_t> out(4096);
  EXPECT_THROW(
      quantize_rows(Matrix{src.data(), DType::F32, 1, 48, nullptr}, DType::Q8_0, out.data()),
      Error);
  EXPECT_THROW(
      quantize_rows(Matrix{src.data(), DType::F32, 1, 128, nullptr}, DType::Q4_K, out.data()),
      Error);
  EXPECT_THROW(
      quantize_rows(Matrix{src.data(), DType::F32, 1, 64, nullptr}, DType::BF16, out.data()),
      Error);
  EXPECT_THROW(quantize_rows(block_matrix(out.data(), DType::Q8_0, 1, 32), DType::Q4_0, out.data()),
               Error);
  src[300] = std::numeric_limits<float>::quiet_NaN();
  try {
    quantize_rows(Matrix{src.data(), DType::F32, 1, 512, nullptr}, DType::Q6_K, out.data());
    ADD_FAILURE() << "no error for NaN";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("column 300"), std::string::npos) << e.what();
  }
  src[300] = 1e6f;  // Q8_0 scale 1e6 / 127 fits f16; Q4_0's 1e6 / 7.5 does not
  EXPECT_THROW(
      quantize_rows(Matrix{src.data(), DType::F32, 1, 512, nullptr}, DType::Q4_0, out.data()),
      Error);
}

// ---- matvec / matmul against the reference ---------------------------------------------------

// x quantised per 32 columns as the integer matvec does (ops.h): round(x * 127 / absmax) * scale.
std::vector<float> quantised_x(const float* x, int64_t cols) {
  std::vector<float> out(static_cast<size_t>(cols));
  for (int64_t b = 0; b < cols / 32; ++b) {
    float absmax = 0.0f;
    for (int i = 0; i < 32; ++i) absmax = std::fmax(absmax, std::fabs(x[32 * b + i]));
    const float inverse = absmax > 0.0f ? 127.0f / absmax : 0.0f;
    const float scale = absmax / 127.0f;
    for (int i = 0; i < 32; ++i) {
      out[32 * b + i] = std::nearbyint(x[32 * b + i] * inverse) * scale;
    }
  }
  return out;
}

// How an output was computed under the contract of ops.h.
enum class Path { ExactF32, QuantisedX, Bf16 };

Path path_for(Isa isa, bool matvec_call, int64_t tokens, bool exact) {
  if (matvec_call) return isa == Isa::Scalar ? Path::ExactF32 : Path::QuantisedX;
  if (isa != Isa::Avx512Bf16 || exact) return Path::ExactF32;
  return tokens == 1 ? Path::QuantisedX : Path::Bf16;
}

// |got - ref| allowed for row r and token x. For QuantisedX the expected value is computed on the
// quantised x (so the check is sharp), for the others on x itself.
double tolerance(const Matrix& w, const float* x, int64_t r, Path path) {
  double magnitude = 0.0;
  for (int64_t c = 0; c < w.cols; ++c) {
    magnitude += std::fabs(detail::load_weight(w, r, c)) * std::fabs(x[c]);
  }
  double tol = magnitude * (static_cast<double>(w.cols) * 1.2e-7 + 1e-6) + 1e-30;
  if (path == Path::Bf16) tol += 2 * magnitude * std::ldexp(1.0, -8);
  return tol;
}

struct Case {
  int64_t rows, cols;
};

std::vector<Case> cases_for(DType dtype) {
  // One block, a few blocks, and more columns than one matmul panel (2048) and one matvec x panel
  // (4096) hold. For the 32-value types also 25 blocks (the Avx512Bf16 matvec takes 16 blocks per
  // zmm step, then a 256-bit tail of 9) alone and after a full x panel.
  if (block_values(dtype) == 32) {
    return {{3, 32}, {9, 96}, {6, 288}, {7, 800}, {5, 4160}, {4, 4896}};
  }
  return {{3, 256}, {9, 768}, {5, 4352}};
}

class BlockKernelTest : public ::testing::TestWithParam<DType> {};

TEST_P(BlockKernelTest, MatvecMatchesReferenceAtEveryLevel) {
  const DType dtype = GetParam();
  std::mt19937 rng(1000 + static_cast<int>(dtype));
  for (Case shape : cases_for(dtype)) {
    OwnedMatrix w = random_matrix(dtype, shape.rows, shape.cols, rng);
    std::vector<float> x = random_vector(shape.cols, rng);
    x[7] = 5.0f;  // an outlier makes the int8 rounding of x visible
    const std::vector<float> xq = quantised_x(x.data(), shape.cols);
    for (Isa isa : available_isas()) {
      ScopedIsa scoped(isa);
      const Path path = path_for(isa, true, 1, false);
      const std::vector<float>& x_ref = path == Path::QuantisedX ? xq : x;
      for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, shape.rows},
                                std::pair<int64_t, int64_t>{1, shape.rows - 1},
                                std::pair<int64_t, int64_t>{shape.rows / 2, shape.rows}}) {
        std::vector<float> expected(static_cast<size_t>(end - begin));
        ref::matvec(w.view, x_ref.data(), expected.data(), begin, end);
        std::vector<float> got(static_cast<size_t>(end - begin) + 2, 12345.0f);
        matvec(w.view, x.data(), got.data() + 1, begin, end);
        EXPECT_EQ(got.front(), 12345.0f);
        EXPECT_EQ(got.back(), 12345.0f);
        for (int64_t r = begin; r < end; ++r) {
          EXPECT_NEAR(got[r - begin + 1], expected[r - begin],
                      tolerance(w.view, x_ref.data(), r, path))
              << isa_name(isa) << " " << dtype_name(dtype) << " " << shape.rows << "x" << shape.cols
              << " rows [" << begin << ", " << end << ") row " << r;
        }
      }
    }
  }
}

TEST_P(BlockKernelTest, MatmulMatchesReferenceAtEveryLevel) {
  const DType dtype = GetParam();
  std::mt19937 rng(2000 + static_cast<int>(dtype));
  for (Case shape : cases_for(dtype)) {
    OwnedMatrix w = random_matrix(dtype, shape.rows, shape.cols, rng);
    for (int64_t tokens : {1, 2, 5, 17}) {
      const int64_t x_stride = shape.cols + 3;
      std::vector<float> x = random_vector(tokens * x_stride, rng);
      std::vector<float> xq(x.size());
      for (int64_t t = 0; t < tokens; ++t) {
        const std::vector<float> q = quantised_x(x.data() + t * x_stride, shape.cols);
        std::copy(q.begin(), q.end(), xq.begin() + t * x_stride);
      }
      for (Isa isa : available_isas()) {
        ScopedIsa scoped(isa);
        for (bool exact : {false, true}) {
          const Path path = path_for(isa, false, tokens, exact);
          const std::vector<float>& x_ref = path == Path::QuantisedX ? xq : x;
          const int64_t begin = 1, end = shape.rows, out = end - begin, y_stride = out + 2;
          std::vector<float> expected(static_cast<size_t>(tokens * y_stride), 0.0f);
          ref::matmul(w.view, x_ref.data(), x_stride, tokens, expected.data(), y_stride, begin,
                      end);
          const std::vector<float> got = testing::matmul_within_range(
              w.view, x.data(), x_stride, tokens, y_stride, begin, end, exact);
          for (int64_t t = 0; t < tokens; ++t) {
            for (int64_t i = 0; i < out; ++i) {
              const float value = got[t * y_stride + i];
              EXPECT_NEAR(value, expected[t * y_stride + i],
                          tolerance(w.view, x_ref.data() + t * x_stride, begin + i, path))
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

// The integer matvec stays within the documented bound against the exact product too.
TEST_P(BlockKernelTest, MatvecErrorWithinContractBound) {
  const DType dtype = GetParam();
  std::mt19937 rng(3000 + static_cast<int>(dtype));
  const int64_t rows = 16, cols = 1024;
  OwnedMatrix w = random_matrix(dtype, rows, cols, rng, 0.05f);
  std::vector<float> x = random_vector(cols, rng, 4.0f);
  std::vector<float> expected(rows);
  ref::matvec(w.view, x.data(), expected.data(), 0, rows);
  for (Isa isa : available_isas()) {
    ScopedIsa scoped(isa);
    std::vector<float> got(rows);
    matvec(w.view, x.data(), got.data(), 0, rows);
    for (int64_t r = 0; r < rows; ++r) {
      double bound = tolerance(w.view, x.data(), r, Path::ExactF32);
      for (int64_t b = 0; b < cols / 32; ++b) {
        double absmax = 0.0, wsum = 0.0;
        for (int i = 0; i < 32; ++i) {
          absmax = std::fmax(absmax, std::fabs(x[32 * b + i]));
          wsum += std::fabs(detail::load_weight(w.view, r, 32 * b + i));
        }
        bound += wsum * absmax / 254.0 * 1.001;
      }
      EXPECT_NEAR(got[r], expected[r], bound) << isa_name(isa) << " " << dtype_name(dtype) << r;
    }
  }
}

TEST_P(BlockKernelTest, RmsnormAndEmbeddingReadTheDequantisedValues) {
  const DType dtype = GetParam();
  std::mt19937 rng(4000 + static_cast<int>(dtype));
  const int64_t cols = 512;
  OwnedMatrix w = random_matrix(dtype, 4, cols, rng, 2.0f);
  std::vector<float> row(cols);
  dequantize_row(w.view, 2, row.data());
  std::vector<float> embedded(cols);
  embedding_row(w.view, 2, embedded.data());
  EXPECT_EQ(embedded, row);
  for (Isa isa : available_isas()) {
    ScopedIsa scoped(isa);
    for (int64_t n : {int64_t{100}, cols}) {
      const Matrix weight = w.view.row_block(2, 1);
      std::vector<float> x = random_vector(n, rng, 3.0f);
      double ss = 0;
      for (float v : x) ss += static_cast<double>(v) * v;
      const double inv = 1.0 / std::sqrt(ss / n + 1e-5);
      std::vector<float> out(n + 1, 99.0f);
      rmsnorm(x.data(), weight, n, 1e-5f, out.data());
      EXPECT_EQ(out[n], 99.0f);
      for (int64_t i = 0; i < n; ++i) {
        const double expected = x[i] * inv * row[i];
        ASSERT_NEAR(out[i], expected, 1e-5 * (1 + std::fabs(expected)))
            << isa_name(isa) << " " << dtype_name(dtype) << " n " << n << " i " << i;
      }
    }
  }
  std::vector<uint16_t> bf16(4 * cols);
  convert_to_bf16(w.view, bf16.data());
  for (int64_t c = 0; c < cols; ++c) EXPECT_EQ(bf16[2 * cols + c], f32_to_bf16(row[c]));
}

// Blocks of random bytes (every scale, min and quant bit pattern; only the f16 scales kept finite),
// so each kernel's unpacking of the packed fields is checked against the reference beyond what the
// quantiser produces.
TEST_P(BlockKernelTest, RandomBytesMatchReferenceAtEveryLevel) {
  const DType dtype = GetParam();
  std::mt19937 rng(5000 + static_cast<int>(dtype));
  const int64_t rows = 6, cols = 1024, tokens = 3;
  std::vector<uint8_t> bytes(rows * row_bytes(dtype, cols));
  for (uint8_t& v : bytes) v = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> scale(-0.1f, 0.1f);
  for (size_t b = 0; b < bytes.size(); b += block_bytes(dtype)) {
    const int offsets[2] = {dtype == DType::Q6_K ? 208 : 0, dtype == DType::Q4_K ? 2 : -1};
    for (int offset : offsets) {
      if (offset >= 0) put_u16(bytes.data() + b + offset, f32_to_f16(scale(rng)));
    }
  }
  const Matrix w = block_matrix(bytes.data(), dtype, rows, cols);
  std::vector<float> x = random_vector(tokens * cols, rng);
  std::vector<float> xq(x.size());
  for (int64_t t = 0; t < tokens; ++t) {
    const std::vector<float> q = quantised_x(x.data() + t * cols, cols);
    std::copy(q.begin(), q.end(), xq.begin() + t * cols);
  }
  for (Isa isa : available_isas()) {
    ScopedIsa scoped(isa);
    const Path vec_path = path_for(isa, true, 1, false);
    std::vector<float> expected(rows), got(rows);
    ref::matvec(w, (vec_path == Path::QuantisedX ? xq : x).data(), expected.data(), 0, rows);
    matvec(w, x.data(), got.data(), 0, rows);
    for (int64_t r = 0; r < rows; ++r) {
      EXPECT_NEAR(got[r], expected[r],
                  tolerance(w, (vec_path == Path::QuantisedX ? xq : x).data(), r, vec_path))
          << isa_name(isa) << " " << dtype_name(dtype) << " matvec row " << r;
    }
    std::vector<float> expected_mm(tokens * rows), got_mm(tokens * rows);
    ref::matmul(w, x.data(), cols, tokens, expected_mm.data(), rows, 0, rows);
    matmul_exact(w, x.data(), cols, tokens, got_mm.data(), rows, 0, rows);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t r = 0; r < rows; ++r) {
        EXPECT_NEAR(got_mm[t * rows + r], expected_mm[t * rows + r],
                    tolerance(w, x.data() + t * cols, r, Path::ExactF32))
            << isa_name(isa) << " " << dtype_name(dtype) << " matmul_exact token " << t << " row "
            << r;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(BlockTypes, BlockKernelTest, ::testing::ValuesIn(kBlockTypes),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// The SIMD dequantisation behind the matmuls reproduces dequantize_row bit for bit on realistic
// (quantiser-made) rows of every type.
TEST(QuantSimd, DequantisationIsBitIdenticalToReference) {
  if (detected_isa() < Isa::Avx2) GTEST_SKIP() << "CPU has no AVX2";
  std::mt19937 rng(51);
  const int64_t rows = 14, cols = 768;
  const std::vector<float> src = awkward_rows(rows, cols, rng);
  for (DType dtype : kBlockTypes) {
    std::vector<uint8_t> out(rows * row_bytes(dtype, cols));
    quantize_rows(Matrix{src.data(), DType::F32, rows, cols, nullptr}, dtype, out.data());
    const Matrix q = block_matrix(out.data(), dtype, rows, cols);
    std::vector<float> expected(cols), got(cols);
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row(q, r, expected.data());
      detail::avx2::dequantize_range(q, r, 0, cols, got.data());
      ASSERT_EQ(std::memcmp(got.data(), expected.data(), cols * sizeof(float)), 0)
          << dtype_name(dtype) << " row " << r;
      detail::avx2::dequantize_range(q, r, 256, 768, got.data());
      ASSERT_EQ(std::memcmp(got.data(), expected.data() + 256, 512 * sizeof(float)), 0)
          << dtype_name(dtype) << " row " << r << " from column 256";
    }
  }
}

}  // namespace
}  // namespace bhmoe::kernels
