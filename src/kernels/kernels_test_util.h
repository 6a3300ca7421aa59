// Helpers shared by the kernel tests.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "kernels/kernels_impl.h"
#include "kernels/matrix.h"
#include "kernels/ops.h"

namespace bhmoe::kernels::testing {

// Every ISA level this CPU can run, lowest first.
inline std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa level : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Bf16}) {
    if (static_cast<int>(level) <= static_cast<int>(detected_isa())) out.push_back(level);
  }
  return out;
}

// Sets the active ISA for a scope and restores the previous one.
class ScopedIsa {
 public:
  explicit ScopedIsa(Isa level) : previous_(active_isa()) { set_active_isa(level); }
  ~ScopedIsa() { set_active_isa(previous_); }
  ScopedIsa(const ScopedIsa&) = delete;
  ScopedIsa& operator=(const ScopedIsa&) = delete;

 private:
  Isa previous_;
};

// A random matrix in any dtype with its storage.
struct OwnedMatrix {
  std::vector<float> f32;
  std::vector<uint16_t> half;
  std::vector<int8_t> q8;
  std::vector<float> scales;
  std::vector<uint8_t> blocks;  // block types
  Matrix view;
};

inline OwnedMatrix random_matrix(DType dtype, int64_t rows, int64_t cols, std::mt19937& rng,
                                 float range = 1.0f) {
  OwnedMatrix m;
  std::uniform_real_distribution<float> dist(-range, range);
  std::vector<float> values(static_cast<size_t>(rows * cols));
  for (float& v : values) v = dist(rng);
  m.view.rows = rows;
  m.view.cols = cols;
  m.view.dtype = dtype;
  switch (dtype) {
    case DType::F32:
      m.f32 = values;
      m.view.data = m.f32.data();
      break;
    case DType::F16:
      for (float v : values) m.half.push_back(f32_to_f16(v));
      m.view.data = m.half.data();
      break;
    case DType::BF16:
      for (float v : values) m.half.push_back(f32_to_bf16(v));
      m.view.data = m.half.data();
      break;
    case DType::Q8: {
      m.f32 = values;
      Matrix src{m.f32.data(), DType::F32, rows, cols, nullptr};
      m.q8.resize(values.size());
      m.scales.resize(static_cast<size_t>(rows * cols / kQ8Block));
      quantize_q8(src, m.q8.data(), m.scales.data());
      m.view = q8_matrix(m.q8.data(), m.scales.data(), rows, cols);
      break;
    }
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q4_K:
    case DType::Q6_K: {
      m.f32 = values;
      Matrix src{m.f32.data(), DType::F32, rows, cols, nullptr};
      m.blocks.resize(static_cast<size_t>(rows) * row_bytes(dtype, cols));
      quantize_rows(src, dtype, m.blocks.data());
      m.view = block_matrix(m.blocks.data(), dtype, rows, cols);
      break;
    }
  }
  return m;
}

inline std::vector<float> random_vector(int64_t n, std::mt19937& rng, float range = 1.0f) {
  std::uniform_real_distribution<float> dist(-range, range);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// matmul (or matmul_exact) of rows [begin, end) into a [tokens, y_stride] buffer filled with -7
// first; the columns past end - begin must keep it (no write past the row range), checked here.
inline std::vector<float> matmul_within_range(const Matrix& w, const float* x, int64_t x_stride,
                                              int64_t tokens, int64_t y_stride, int64_t begin,
                                              int64_t end, bool exact) {
  std::vector<float> got(static_cast<size_t>(tokens * y_stride), -7.0f);
  if (exact) {
    matmul_exact(w, x, x_stride, tokens, got.data(), y_stride, begin, end);
  } else {
    matmul(w, x, x_stride, tokens, got.data(), y_stride, begin, end);
  }
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t i = end - begin; i < y_stride; ++i)
      EXPECT_EQ(got[static_cast<size_t>(t * y_stride + i)], -7.0f) << "wrote past the row range";
  }
  return got;
}

}  // namespace bhmoe::kernels::testing
