// Dispatch, element conversions, scalar references and the scalar (portable) kernel level.
#include "kernels/ops.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/kernels_impl.h"
#include "kernels/quant.h"
#include "util/error.h"

namespace bhmoe::kernels {

// ---------------------------------------------------------------------------------------------
// Element conversions.

float bf16_to_f32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_bf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  // Round to nearest, ties to even; a carry into the exponent is the correct rounding (up to inf).
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float f16_to_f32(uint16_t v) {
  uint32_t sign = static_cast<uint32_t>(v & 0x8000u) << 16;
  uint32_t exponent = (v >> 10) & 0x1fu;
  uint32_t mantissa = v & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24 is exact in fp32.
    float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    std::memcpy(&bits, &magnitude, 4);
    bits |= sign;
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t f32_to_f16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) {  // NaN: keep the top payload bits, force quiet
    return static_cast<uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
  }
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf
  if (magnitude < 0x38800000u) {                        // below 2^-14: f16 subnormal or zero
    uint32_t exponent = magnitude >> 23;
    uint32_t shift = 126 - exponent;  // value in units of 2^-24 is mant * 2^-shift
    if (shift > 24) return sign;      // < 2^-25 rounds to zero
    uint32_t mant = (magnitude & 0x7fffffu) | 0x800000u;
    uint32_t rounded = mant >> shift;
    uint32_t rest = mant & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rest > half || (rest == half && (rounded & 1u))) ++rounded;
    return static_cast<uint16_t>(sign | rounded);
  }
  uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

// ---------------------------------------------------------------------------------------------
// ISA selection: util/simd.h.

namespace {

inline Isa isa() {
  return simd_level();
}

void check_matrix(const Matrix& w, int64_t row_begin, int64_t row_end) {
  assert(!w.empty() && row_begin >= 0 && row_begin <= row_end && row_end <= w.rows);
  assert(w.dtype != DType::Q8 || (w.scales != nullptr && w.cols % kQ8Block == 0));
  assert(w.cols % block_values(w.dtype) == 0);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// References and the scalar level.

float detail::load_weight(const Matrix& w, int64_t row, int64_t col) {
  if (is_block_dtype(w.dtype)) {
    const int64_t values = block_values(w.dtype);
    const auto* block = static_cast<const uint8_t*>(w.data) + row * row_bytes(w.dtype, w.cols) +
                        col / values * block_bytes(w.dtype);
    return block_value(w.dtype, block, col % values);
  }
  int64_t i = row * w.cols + col;
  switch (w.dtype) {
    case DType::F32:
      return static_cast<const float*>(w.data)[i];
    case DType::F16:
      return f16_to_f32(static_cast<const uint16_t*>(w.data)[i]);
    case DType::BF16:
      return bf16_to_f32(static_cast<const uint16_t*>(w.data)[i]);
    case DType::Q8:
      return static_cast<float>(static_cast<const int8_t*>(w.data)[i]) *
             w.scales[row * (w.cols / kQ8Block) + col / kQ8Block];
    default:
      break;
  }
  return 0.0f;
}

namespace ref {

void matvec(const Matrix& w, const float* x, float* y, int64_t row_begin, int64_t row_end) {
  ref::matmul(w, x, w.cols, 1, y, row_end - row_begin, row_begin, row_end);
}

void matmul(const Matrix& w, const float* x, int64_t x_stride, int64_t num_tokens, float* y,
            int64_t y_stride, int64_t row_begin, int64_t row_end) {
  std::vector<float> weights(static_cast<size_t>(w.cols));
  for (int64_t r = row_begin; r < row_end; ++r) {
    dequantize_row(w, r, weights.data());
    for (int64_t t = 0; t < num_tokens; ++t) {
      double sum = 0.0;
      for (int64_t c = 0; c < w.cols; ++c) {
        sum += static_cast<double>(weights[c]) * x[t * x_stride + c];
      }
      y[t * y_stride + (r - row_begin)] = static_cast<float>(sum);
    }
  }
}

}  // namespace ref

namespace detail::scalar {

namespace {
// Block types: each block dequantised once (into 1 KiB on the stack) for up to kTokenChunk tokens,
// fp32 products and accumulation.
void matmul_blocks(const Matrix& w, const float* x, int64_t x_stride, int64_t num_tokens, float* y,
                   int64_t y_stride, int64_t row_begin, int64_t row_end) {
  constexpr int64_t kTokenChunk = 16;
  const int64_t values = block_values(w.dtype);
  const size_t bytes = block_bytes(w.dtype);
  float block[256];
  for (int64_t r = row_begin; r < row_end; ++r) {
    const auto* row = static_cast<const uint8_t*>(w.data) + r * row_bytes(w.dtype, w.cols);
    for (int64_t t0 = 0; t0 < num_tokens; t0 += kTokenChunk) {
      const int64_t chunk = std::min(kTokenChunk, num_tokens - t0);
      float sums[kTokenChunk] = {};
      for (int64_t b = 0; b < w.cols / values; ++b) {
        dequantize_block(w.dtype, row + b * bytes, block);
        for (int64_t t = 0; t < chunk; ++t) {
          const float* xt = x + (t0 + t) * x_stride + b * values;
          float sum = sums[t];
          for (int64_t i = 0; i < values; ++i) sum += block[i] * xt[i];
          sums[t] = sum;
        }
      }
      for (int64_t t = 0; t < chunk; ++t) y[(t0 + t) * y_stride + (r - row_begin)] = sums[t];
    }
  }
}
}  // namespace

void matmul(const Matrix& w, const float* x, int64_t x_stride, int64_t num_tokens, float* y,
            int64_t y_stride, int64_t row_begin, int64_t row_end) {
  if (is_block_dtype(w.dtype)) {
    return matmul_blocks(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end);
  }
  for (int64_t r = row_begin; r < row_end; ++r) {
    for (int64_t t = 0; t < num_tokens; ++t) {
      const float* xt = x + t * x_stride;
      float sum = 0.0f;
      for (int64_t c = 0; c < w.cols; ++c) sum += load_weight(w, r, c) * xt[c];
      y[t * y_stride + (r - row_begin)] = sum;
    }
  }
}

void matvec(const Matrix& w, const float* x, float* y, int64_t row_begin, int64_t row_end) {
  scalar::matmul(w, x, w.cols, 1, y, row_end - row_begin, row_begin, row_end);
}

float sum_squares(const float* x, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += x[i] * x[i];
  return sum;
}

void scale_by_weight(const float* x, float scale, const Matrix& weight, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * scale * load_weight(weight, 0, i);
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

float dot_f32(const float* a, const float* b, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

float max_f32(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

float exp_shift_sum(float* x, float shift, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

void scale_f32(float* x, float s, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

}  // namespace detail::scalar

// ---------------------------------------------------------------------------------------------
// Dispatch.

// Expands to the call of `fn` at the active level (the AVX-512 levels share one implementation).
#define BHMOE_DISPATCH(fn, ...)               \
  switch (isa()) {                            \
    case Isa::Avx512Bf16:                     \
    case Isa::Avx512:                         \
      return detail::avx512::fn(__VA_ARGS__); \
    case Isa::Avx2:                           \
      return detail::avx2::fn(__VA_ARGS__);   \
    case Isa::Scalar:                         \
      break;                                  \
  }                                           \
  return detail::scalar::fn(__VA_ARGS__)

void matvec(const Matrix& w, const float* x, float* y, int64_t row_begin, int64_t row_end) {
  check_matrix(w, row_begin, row_end);
  switch (isa()) {
    case Isa::Avx512Bf16:
      return detail::avx512::matvec(w, x, y, row_begin, row_end, true);
    case Isa::Avx512:
      return detail::avx512::matvec(w, x, y, row_begin, row_end, false);
    case Isa::Avx2:
      return detail::avx2::matvec(w, x, y, row_begin, row_end);
    case Isa::Scalar:
      break;
  }
  detail::scalar::matvec(w, x, y, row_begin, row_end);
}

namespace {
void matmul_with(detail::Activations activations, const Matrix& w, const float* x, int64_t x_stride,
                 int64_t num_tokens, float* y, int64_t y_stride, int64_t row_begin,
                 int64_t row_end) {
  check_matrix(w, row_begin, row_end);
  assert(num_tokens >= 0 && x_stride >= w.cols && y_stride >= row_end - row_begin);
  if (num_tokens <= 0 || row_begin == row_end) return;
  switch (isa()) {
    case Isa::Avx512Bf16:
      return detail::avx512::matmul(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end,
                                    true, activations);
    case Isa::Avx512:
      return detail::avx512::matmul(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end,
                                    false, detail::Activations::Exact);
    case Isa::Avx2:
      return detail::avx2::matmul(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end);
    case Isa::Scalar:
      break;
  }
  detail::scalar::matmul(w, x, x_stride, num_tokens, y, y_stride, row_begin, row_end);
}
}  // namespace

void matmul(const Matrix& w, const float* x, int64_t x_stride, int64_t num_tokens, float* y,
            int64_t y_stride, int64_t row_begin, int64_t row_end) {
  matmul_with(detail::Activations::RoundToBf16, w, x, x_stride, num_tokens, y, y_stride, row_begin,
              row_end);
}

void matmul_exact(const Matrix& w, const float* x, int64_t x_stride, int64_t num_tokens, float* y,
                  int64_t y_stride, int64_t row_begin, int64_t row_end) {
  matmul_with(detail::Activations::Exact, w, x, x_stride, num_tokens, y, y_stride, row_begin,
              row_end);
}

void rmsnorm(const float* x, const Matrix& weight, int64_t n, float eps, float* out) {
  assert(weight.cols >= n);
  float sum = [&] { BHMOE_DISPATCH(sum_squares, x, n); }();
  float scale = 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
  if (is_block_dtype(weight.dtype)) {
    // Norm weights are small: dequantise block by block (scalar) and scale in fp32.
    const int64_t values = block_values(weight.dtype);
    float block[256];
    for (int64_t b = 0; b * values < n; ++b) {
      dequantize_block(weight.dtype,
                       static_cast<const uint8_t*>(weight.data) + b * block_bytes(weight.dtype),
                       block);
      for (int64_t i = b * values; i < std::min(n, (b + 1) * values); ++i) {
        out[i] = x[i] * scale * block[i - b * values];
      }
    }
    return;
  }
  BHMOE_DISPATCH(scale_by_weight, x, scale, weight, n, out);
}

void embedding_row(const Matrix& w, int64_t row, float* out) {
  assert(row >= 0 && row < w.rows);
  if (is_block_dtype(w.dtype)) return dequantize_row(w, row, out);
  if (w.dtype == DType::F32) {
    std::memcpy(out, static_cast<const float*>(w.data) + row * w.cols, w.cols * sizeof(float));
    return;
  }
  for (int64_t c = 0; c < w.cols; ++c) out[c] = detail::load_weight(w, row, c);
}

void softmax(float* x, int64_t n) {
  if (n <= 0) return;
  float max = [&] { BHMOE_DISPATCH(max_f32, x, n); }();
  float sum = [&] { BHMOE_DISPATCH(exp_shift_sum, x, max, n); }();
  BHMOE_DISPATCH(scale_f32, x, 1.0f / sum, n);
}

void swiglu(const float* gate, const float* up, float* out, int64_t n) {
  BHMOE_DISPATCH(swiglu, gate, up, out, n);
}

void axpy(float a, const float* x, float* y, int64_t n) {
  BHMOE_DISPATCH(axpy, a, x, y, n);
}

float dot_f32(const float* a, const float* b, int64_t n) {
  BHMOE_DISPATCH(dot_f32, a, b, n);
}

// ---------------------------------------------------------------------------------------------
// Q8.

namespace {
void quantize_rows_scalar(const Matrix& src, int8_t* values, float* scales) {
  const int64_t blocks = src.cols / kQ8Block;
  float block[kQ8Block];
  for (int64_t r = 0; r < src.rows; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      float absmax = 0.0f;
      for (int i = 0; i < kQ8Block; ++i) {
        block[i] = detail::load_weight(src, r, b * kQ8Block + i);
        if (!std::isfinite(block[i])) {
          fail("quantize_q8: non-finite value ", block[i], " at row ", r, ", column ",
               b * kQ8Block + i);
        }
        absmax = std::fmax(absmax, std::fabs(block[i]));
      }
      float scale = absmax / 127.0f;
      float inverse = scale > 0.0f ? 1.0f / scale : 0.0f;
      int8_t* out = values + r * src.cols + b * kQ8Block;
      for (int i = 0; i < kQ8Block; ++i) {
        float q = std::nearbyint(block[i] * inverse);
        out[i] = static_cast<int8_t>(std::fmax(-127.0f, std::fmin(127.0f, q)));
      }
      scales[r * blocks + b] = scale;
    }
  }
}
}  // namespace

void quantize_q8(const Matrix& src, int8_t* values, float* scales) {
  if (src.dtype == DType::Q8) fail("quantize_q8: the source matrix is already Q8");
  if (src.cols % kQ8Block != 0) {
    fail("quantize_q8: ", src.cols, " columns is not a multiple of the block size ", kQ8Block);
  }
  // The vector path gives bit-identical results; it declines (returns false) on a non-finite
  // value, and the scalar path then reports where.
  if (isa() >= Isa::Avx512 && detail::avx512::quantize_q8(src, values, scales)) return;
  quantize_rows_scalar(src, values, scales);
}

void convert_to_bf16(const Matrix& src, uint16_t* out) {
  const size_t n = static_cast<size_t>(src.numel());
  switch (src.dtype) {
    case DType::BF16:
      std::memcpy(out, src.data, n * sizeof(uint16_t));
      return;
    case DType::F32: {
      const auto* in = static_cast<const float*>(src.data);
      for (size_t i = 0; i < n; ++i) out[i] = f32_to_bf16(in[i]);
      return;
    }
    case DType::F16: {
      const auto* in = static_cast<const uint16_t*>(src.data);
      for (size_t i = 0; i < n; ++i) out[i] = f32_to_bf16(f16_to_f32(in[i]));
      return;
    }
    case DType::Q8:
      break;
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q4_K:
    case DType::Q6_K: {
      std::vector<float> row(static_cast<size_t>(src.cols));
      for (int64_t r = 0; r < src.rows; ++r) {
        dequantize_row(src, r, row.data());
        for (int64_t c = 0; c < src.cols; ++c) out[r * src.cols + c] = f32_to_bf16(row[c]);
      }
      return;
    }
  }
  fail("convert_to_bf16: the source matrix is Q8 (convert from the stored weights instead)");
}

Matrix q8_matrix(const int8_t* values, const float* scales, int64_t rows, int64_t cols) {
  Matrix m;
  m.data = values;
  m.dtype = DType::Q8;
  m.rows = rows;
  m.cols = cols;
  m.scales = scales;
  return m;
}

}  // namespace bhmoe::kernels
