// GGUF block types: scalar dequantisation (the reference every kernel is tested against) and the
// quantisers.
#include "kernels/quant.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/kernels_impl.h"
#include "kernels/ops.h"
#include "util/error.h"

namespace bhmoe::kernels {
namespace {

float f16_at(const uint8_t* p) {
  return f16_to_f32(load_u16(p));
}

void store_u16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v & 0xff);
  p[1] = static_cast<uint8_t>(v >> 8);
}

// ---- dequantisation, written as the format descriptions in quant.h read ----------------------

void dequantize_q8_0(const uint8_t* b, float* out) {
  const float d = f16_at(b + q8_0::kD);
  const auto* qs = reinterpret_cast<const int8_t*>(b + q8_0::kQs);
  for (int i = 0; i < 32; ++i) out[i] = d * static_cast<float>(qs[i]);
}

void dequantize_q4_0(const uint8_t* b, float* out) {
  const float d = f16_at(b + q4_0::kD);
  const uint8_t* qs = b + q4_0::kQs;
  for (int j = 0; j < 16; ++j) {
    out[j] = d * static_cast<float>((qs[j] & 0xF) - 8);
    out[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

void dequantize_q4_k(const uint8_t* b, float* out) {
  const float d = f16_at(b + q4_k::kD);
  const float dmin = f16_at(b + q4_k::kDmin);
  const uint8_t* scales = b + q4_k::kScales;
  const uint8_t* qs = b + q4_k::kQs;
  for (int c = 0; c < 4; ++c) {
    int sc_lo, m_lo, sc_hi, m_hi;
    q4k_scale_min(scales, 2 * c, &sc_lo, &m_lo);
    q4k_scale_min(scales, 2 * c + 1, &sc_hi, &m_hi);
    const float d_lo = d * static_cast<float>(sc_lo), min_lo = dmin * static_cast<float>(m_lo);
    const float d_hi = d * static_cast<float>(sc_hi), min_hi = dmin * static_cast<float>(m_hi);
    for (int l = 0; l < 32; ++l) {
      out[64 * c + l] = d_lo * static_cast<float>(qs[32 * c + l] & 0xF) - min_lo;
      out[64 * c + 32 + l] = d_hi * static_cast<float>(qs[32 * c + l] >> 4) - min_hi;
    }
  }
}

void dequantize_q6_k(const uint8_t* b, float* out) {
  const float d = f16_at(b + q6_k::kD);
  const auto* scales = reinterpret_cast<const int8_t*>(b + q6_k::kScales);
  for (int n = 0; n < 2; ++n) {
    const uint8_t* ql = b + q6_k::kQl + 64 * n;
    const uint8_t* qh = b + q6_k::kQh + 32 * n;
    const int8_t* sc = scales + 8 * n;
    float* y = out + 128 * n;
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * static_cast<float>(sc[is + 0]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
  }
}

// ---- quantisers ------------------------------------------------------------------------------

[[noreturn]] void scale_overflow(DType target, int64_t row, int64_t col) {
  fail("quantize_rows: a ", dtype_name(target), " scale overflows f16 in the block at row ", row,
       ", column ", col);
}

// The smallest f16 >= need (need >= 0): positive f16 bit patterns order like their values.
uint16_t f16_at_least(double need, DType target, int64_t row, int64_t col) {
  uint16_t h = f32_to_f16(static_cast<float>(need));
  while ((h & 0x7fff) < 0x7c00 && f16_to_f32(h) < need) ++h;
  if ((h & 0x7fff) >= 0x7c00) scale_overflow(target, row, col);
  return h;
}

int clamp_int(double v, int lo, int hi) {
  return static_cast<int>(std::clamp(v, static_cast<double>(lo), static_cast<double>(hi)));
}

// max |x[i]| over a 32-value block.
float absmax32(const float* x) {
  float absmax = 0.0f;
  for (int i = 0; i < 32; ++i) absmax = std::fmax(absmax, std::fabs(x[i]));
  return absmax;
}

void quantize_q8_0(const float* x, uint8_t* b, int64_t row, int64_t col) {
  const float absmax = absmax32(x);
  const uint16_t h = f16_at_least(absmax / 127.0, DType::Q8_0, row, col);
  const float d = f16_to_f32(h);
  store_u16(b + q8_0::kD, h);
  auto* qs = reinterpret_cast<int8_t*>(b + q8_0::kQs);
  for (int i = 0; i < 32; ++i) {
    qs[i] = static_cast<int8_t>(d > 0.0f ? clamp_int(std::nearbyint(x[i] / d), -127, 127) : 0);
  }
}

void quantize_q4_0(const float* x, uint8_t* b, int64_t row, int64_t col) {
  const float absmax = absmax32(x);
  const uint16_t h = f16_at_least(absmax / 7.5, DType::Q4_0, row, col);
  const float d = f16_to_f32(h);
  store_u16(b + q4_0::kD, h);
  int q[32];
  for (int i = 0; i < 32; ++i) q[i] = d > 0.0f ? clamp_int(std::nearbyint(x[i] / d), -8, 7) + 8 : 8;
  for (int j = 0; j < 16; ++j) b[q4_0::kQs + j] = static_cast<uint8_t>(q[j] | (q[j + 16] << 4));
}

void quantize_q4_k(const float* x, uint8_t* b, int64_t row, int64_t col) {
  // Offsets first (m rounded up, so -dmin * m <= min(0, min x)), then the steps that reach max x
  // from there (sc rounded up, so nothing clips).
  double offset_needed[8], max_value[8];
  double max_offset = 0.0;
  for (int j = 0; j < 8; ++j) {
    double lo = 0.0, hi = -INFINITY;
    for (int i = 0; i < 32; ++i) {
      lo = std::fmin(lo, x[32 * j + i]);
      hi = std::fmax(hi, x[32 * j + i]);
    }
    offset_needed[j] = -lo;
    max_value[j] = hi;
    max_offset = std::fmax(max_offset, -lo);
  }
  const uint16_t dmin_h =
      max_offset > 0.0 ? f16_at_least(max_offset / 63.0, DType::Q4_K, row, col) : uint16_t{0};
  const float dmin = f16_to_f32(dmin_h);
  int m[8], sc[8];
  float offset[8];
  double step_needed[8], max_step = 0.0;
  for (int j = 0; j < 8; ++j) {
    m[j] = dmin > 0.0f ? clamp_int(std::ceil(offset_needed[j] / dmin), 0, 63) : 0;
    while (m[j] < 63 && static_cast<double>(dmin) * m[j] < offset_needed[j]) ++m[j];
    offset[j] = dmin * static_cast<float>(m[j]);
    step_needed[j] = std::fmax(0.0, (max_value[j] + offset[j]) / 15.0);
    max_step = std::fmax(max_step, step_needed[j]);
  }
  const uint16_t d_h =
      max_step > 0.0 ? f16_at_least(max_step / 63.0, DType::Q4_K, row, col) : uint16_t{0};
  const float d = f16_to_f32(d_h);
  for (int j = 0; j < 8; ++j) {
    sc[j] = d > 0.0f ? clamp_int(std::ceil(step_needed[j] / d), 0, 63) : 0;
    while (sc[j] < 63 && static_cast<double>(d) * sc[j] < step_needed[j]) ++sc[j];
  }
  store_u16(b + q4_k::kD, d_h);
  store_u16(b + q4_k::kDmin, dmin_h);
  uint8_t* scales = b + q4_k::kScales;
  for (int j = 0; j < 4; ++j) {
    scales[j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
    scales[j + 4] = static_cast<uint8_t>(m[j] | ((m[j + 4] >> 4) << 6));
    scales[j + 8] = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
  }
  int q[256];
  for (int j = 0; j < 8; ++j) {
    const float step = d * static_cast<float>(sc[j]);
    for (int i = 0; i < 32; ++i) {
      const double v = (static_cast<double>(x[32 * j + i]) + offset[j]) / step;
      q[32 * j + i] = step > 0.0f ? clamp_int(std::nearbyint(v), 0, 15) : 0;
    }
  }
  uint8_t* qs = b + q4_k::kQs;
  for (int c = 0; c < 4; ++c) {
    for (int l = 0; l < 32; ++l) {
      qs[32 * c + l] = static_cast<uint8_t>(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
    }
  }
}

void quantize_q6_k(const float* x, uint8_t* b, int64_t row, int64_t col) {
  double step_needed[16], max_step = 0.0;
  for (int g = 0; g < 16; ++g) {
    double absmax = 0.0;
    for (int i = 0; i < 16; ++i) absmax = std::fmax(absmax, std::fabs(x[16 * g + i]));
    step_needed[g] = absmax / 31.5;
    max_step = std::fmax(max_step, step_needed[g]);
  }
  const uint16_t d_h =
      max_step > 0.0 ? f16_at_least(max_step / 127.0, DType::Q6_K, row, col) : uint16_t{0};
  const float d = f16_to_f32(d_h);
  store_u16(b + q6_k::kD, d_h);
  auto* scales = reinterpret_cast<int8_t*>(b + q6_k::kScales);
  int u[256];  // q + 32, in [0, 63]
  for (int g = 0; g < 16; ++g) {
    int sc = d > 0.0f ? clamp_int(std::ceil(step_needed[g] / d), 0, 127) : 0;
    while (sc < 127 && static_cast<double>(d) * sc < step_needed[g]) ++sc;
    scales[g] = static_cast<int8_t>(sc);
    const float step = d * static_cast<float>(sc);
    for (int i = 0; i < 16; ++i) {
      const int q = step > 0.0f ? clamp_int(std::nearbyint(x[16 * g + i] / step), -32, 31) : 0;
      u[16 * g + i] = q + 32;
    }
  }
  std::fill(b + q6_k::kQh, b + q6_k::kQh + 64, uint8_t{0});
  for (int n = 0; n < 2; ++n) {
    uint8_t* ql = b + q6_k::kQl + 64 * n;
    uint8_t* qh = b + q6_k::kQh + 32 * n;
    const int* v = u + 128 * n;
    for (int l = 0; l < 32; ++l) {
      ql[l] = static_cast<uint8_t>((v[l] & 0xF) | ((v[l + 64] & 0xF) << 4));
      ql[l + 32] = static_cast<uint8_t>((v[l + 32] & 0xF) | ((v[l + 96] & 0xF) << 4));
      qh[l] = static_cast<uint8_t>((v[l] >> 4) | ((v[l + 32] >> 4) << 2) | ((v[l + 64] >> 4) << 4) |
                                   ((v[l + 96] >> 4) << 6));
    }
  }
}

}  // namespace

float detail::block_value(DType dtype, const uint8_t* b, int64_t i) {
  switch (dtype) {
    case DType::Q8_0:
      return f16_at(b + q8_0::kD) * static_cast<float>(static_cast<int8_t>(b[q8_0::kQs + i]));
    case DType::Q4_0: {
      const uint8_t byte = b[q4_0::kQs + i % 16];
      const int q = i < 16 ? byte & 0xF : byte >> 4;
      return f16_at(b + q4_0::kD) * static_cast<float>(q - 8);
    }
    case DType::Q4_K: {
      const int64_t chunk = i / 64, within = i % 64;
      const int j = static_cast<int>(2 * chunk + within / 32);
      const uint8_t byte = b[q4_k::kQs + 32 * chunk + within % 32];
      const int q = within < 32 ? byte & 0xF : byte >> 4;
      int sc, m;
      q4k_scale_min(b + q4_k::kScales, j, &sc, &m);
      return f16_at(b + q4_k::kD) * static_cast<float>(sc) * static_cast<float>(q) -
             f16_at(b + q4_k::kDmin) * static_cast<float>(m);
    }
    case DType::Q6_K: {
      const int64_t half = i / 128, group = i % 128 / 32, l = i % 32;
      const uint8_t low = b[q6_k::kQl + 64 * half + l + 32 * (group & 1)];
      const int nibble = group >= 2 ? low >> 4 : low & 0xF;
      const int high = (b[q6_k::kQh + 32 * half + l] >> (2 * group)) & 3;
      const auto scale = static_cast<int8_t>(b[q6_k::kScales + i / 16]);
      return f16_at(b + q6_k::kD) * static_cast<float>(scale) *
             static_cast<float>((nibble | (high << 4)) - 32);
    }
    default:
      fail("block_value: ", dtype_name(dtype), " is not a block type");
  }
}

void dequantize_block(DType dtype, const uint8_t* block, float* out) {
  switch (dtype) {
    case DType::Q8_0:
      return dequantize_q8_0(block, out);
    case DType::Q4_0:
      return dequantize_q4_0(block, out);
    case DType::Q4_K:
      return dequantize_q4_k(block, out);
    case DType::Q6_K:
      return dequantize_q6_k(block, out);
    default:
      fail("dequantize_block: ", dtype_name(dtype), " is not a block type");
  }
}

void dequantize_row(const Matrix& w, int64_t row, float* out) {
  if (!is_block_dtype(w.dtype)) {
    for (int64_t c = 0; c < w.cols; ++c) out[c] = detail::load_weight(w, row, c);
    return;
  }
  const int64_t values = block_values(w.dtype);
  const size_t bytes = block_bytes(w.dtype);
  const uint8_t* r = static_cast<const uint8_t*>(w.data) + row * row_bytes(w.dtype, w.cols);
  for (int64_t b = 0; b < w.cols / values; ++b)
    dequantize_block(w.dtype, r + b * bytes, out + b * values);
}

void quantize_rows(const Matrix& src, DType target, uint8_t* out) {
  if (!is_block_dtype(target)) fail("quantize_rows: ", dtype_name(target), " is not a block type");
  if (src.dtype != DType::F32 && src.dtype != DType::F16 && src.dtype != DType::BF16) {
    fail("quantize_rows: the source is ", dtype_name(src.dtype), " (F32, F16 or BF16 expected)");
  }
  const int64_t values = block_values(target);
  if (src.cols % values != 0) {
    fail("quantize_rows: ", src.cols, " columns is not a multiple of the ", dtype_name(target),
         " block size ", values);
  }
  const size_t bytes = block_bytes(target);
  std::vector<float> row(static_cast<size_t>(src.cols));
  for (int64_t r = 0; r < src.rows; ++r) {
    dequantize_row(src, r, row.data());
    for (int64_t c = 0; c < src.cols; ++c) {
      if (!std::isfinite(row[c])) {
        fail("quantize_rows: non-finite value ", row[c], " at row ", r, ", column ", c);
      }
    }
    uint8_t* dst = out + r * row_bytes(target, src.cols);
    for (int64_t b = 0; b < src.cols / values; ++b) {
      const float* x = row.data() + b * values;
      uint8_t* block = dst + b * bytes;
      const int64_t col = b * values;
      switch (target) {
        case DType::Q8_0:
          quantize_q8_0(x, block, r, col);
          break;
        case DType::Q4_0:
          quantize_q4_0(x, block, r, col);
          break;
        case DType::Q4_K:
          quantize_q4_k(x, block, r, col);
          break;
        default:
          quantize_q6_k(x, block, r, col);
          break;
      }
    }
  }
}

Matrix block_matrix(const void* data, DType dtype, int64_t rows, int64_t cols) {
  Matrix m;
  m.data = data;
  m.dtype = dtype;
  m.rows = rows;
  m.cols = cols;
  return m;
}

}  // namespace bhmoe::kernels
