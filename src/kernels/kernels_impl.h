// Internal: per-ISA kernel entry points behind the dispatch in ops.cc. Each is compiled with a
// function-level target attribute, so it may only be called when the CPU supports that level.
#pragma once

#include <cstdint>

#include "kernels/matrix.h"

namespace bhmoe::kernels::detail {

// What a matmul may do with BF16 (and Q8) weights on Avx512Bf16: round activations to bf16.
enum class Activations : uint8_t { Exact, RoundToBf16 };

namespace scalar {
void matvec(const Matrix& w, const float* x, float* y, int64_t row_begin, int64_t row_end);
void matmul(const Matrix& w, const float* x, int64_t x_stride, int64_t num_tokens, float* y,
            int64_t y_stride, int64_t row_begin, int64_t row_end);
float sum_squares(const float* x, int64_t n);
void scale_by_weight(const float* x, float scale, const Matrix& weight, int64_t n, float* out);
void swiglu(const float* gate, const float* up, float* out, int64_t n);
void axpy(float a, const float* x, float* y, int64_t n);
float dot_f32(const float* a, const float* b, int64_t n);
float max_f32(const float* x, int64_t n);
float exp_shift_sum(float* x, float shift, int64_t n);  // x = exp(x - shift), returns the sum
void scale_f32(float* x, float s, int64_t n);
}  // namespace scalar

namespace avx2 {
void matvec(const Matrix& w, const float* x, float* y, int64_t row_begin, int64_t row_end);
void matmul(const Matrix& w, const float* x, int64_t x_stride, int64_t num_tokens, float* y,
            int64_t y_stride, int64_t row_begin, int64_t row_end);
float sum_squares(const float* x, int64_t n);
void scale_by_weight(const float* x, float scale, const Matrix& weight, int64_t n, float* out);
void swiglu(const float* gate, const float* up, float* out, int64_t n);
void axpy(float a, const float* x, float* y, int64_t n);
float dot_f32(const float* a, const float* b, int64_t n);
float max_f32(const float* x, int64_t n);
float exp_shift_sum(float* x, float shift, int64_t n);
void scale_f32(float* x, float s, int64_t n);
// Columns [k0, k1) (block-aligned) of row r of a block-type matrix to fp32, bit-identical to
// dequantize_row. Also used by the AVX-512 levels' block-type matmuls.
void dequantize_range(const Matrix& w, int64_t r, int64_t k0, int64_t k1, float* out);
}  // namespace avx2

namespace avx512 {
// How far ahead (bytes) matvec prefetches in each weight row; 0 disables. A tuning knob for
// benchmarks, not an interface.
extern int64_t g_matvec_prefetch_bytes;
extern int64_t g_matmul_prefetch_next;
// Rows matvec streams at once (1, 2 or 4; 1 = one sequential stream). Tuning knob.
extern int64_t g_matvec_rows_at_once;
// Columns per pass of the vdpbf16ps matmul (a multiple of 32; 0 = whole rows). Tuning knob.
extern int64_t g_bf16_col_block;
// bf16: whether the AVX512-BF16/VNNI instructions may be used (Isa::Avx512Bf16).
void matvec(const Matrix& w, const float* x, float* y, int64_t row_begin, int64_t row_end,
            bool bf16);
void matmul(const Matrix& w, const float* x, int64_t x_stride, int64_t num_tokens, float* y,
            int64_t y_stride, int64_t row_begin, int64_t row_end, bool bf16,
            Activations activations);
float sum_squares(const float* x, int64_t n);
void scale_by_weight(const float* x, float scale, const Matrix& weight, int64_t n, float* out);
void swiglu(const float* gate, const float* up, float* out, int64_t n);
void axpy(float a, const float* x, float* y, int64_t n);
float dot_f32(const float* a, const float* b, int64_t n);
float max_f32(const float* x, int64_t n);
float exp_shift_sum(float* x, float shift, int64_t n);
void scale_f32(float* x, float s, int64_t n);
// quantize_q8 for F32/F16/BF16 sources, bit-identical to the scalar version; false (output
// unspecified) if src holds a non-finite value.
bool quantize_q8(const Matrix& src, int8_t* values, float* scales);
}  // namespace avx512

// Element loads in fp32 (scalar), shared by the references and the scalar tails. Block types
// decode the one value (block_value), equal to dequantize_row's.
float load_weight(const Matrix& w, int64_t row, int64_t col);
// Value i of one block of a block type, decoded on its own.
float block_value(DType dtype, const uint8_t* block, int64_t i);

}  // namespace bhmoe::kernels::detail
