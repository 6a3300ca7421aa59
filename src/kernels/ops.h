// Numeric kernels used by the forward pass. Each fast kernel has a naive scalar reference in
// namespace `ref` beside it, and tests compare the two. Knows no model.
//
// Conventions: activations are fp32; weights are a kernels::Matrix in any DType; "rows" of a weight
// matrix are output features ([out, in] PyTorch layout). Kernels run on the calling thread; callers
// split work across threads by row range (see thread_pool.h).
#pragma once

#include <cstdint>

#include "kernels/matrix.h"
#include "kernels/quant.h"
#include "util/simd.h"

namespace bhmoe::kernels {

// The instruction-set level the kernels run at is bhmoe's one SIMD level (util/simd.h), shared with
// routing/; these are its names in the kernels' vocabulary.
using Isa = SimdLevel;
inline Isa detected_isa() { return detected_simd_level(); }   // the best this CPU supports
inline Isa active_isa() { return simd_level(); }              // what the kernels use now
inline void set_active_isa(Isa isa) { set_simd_level(isa); }  // must be <= detected_isa()
inline const char* isa_name(Isa isa) { return simd_level_name(isa); }

// y[r - row_begin] = dot(W[r, :], x) for r in [row_begin, row_end).   x: [cols]
void matvec(const Matrix& w, const float* x, float* y, int64_t row_begin, int64_t row_end);

// Y[t, r - row_begin] = dot(W[r, :], X[t, :]) for t < num_tokens, r in [row_begin, row_end).
// X: [num_tokens, w.cols] with row stride x_stride; Y row stride y_stride (>= row_end - row_begin).
// Reads each weight row once for all tokens (prefill and grouped expert batches).
void matmul(const Matrix& w, const float* x, int64_t x_stride, int64_t num_tokens, float* y,
            int64_t y_stride, int64_t row_begin, int64_t row_end);

// out = x / sqrt(mean(x^2) + eps) * weight, in fp32. weight: [1, n] any dtype. out may alias x.
void rmsnorm(const float* x, const Matrix& weight, int64_t n, float eps, float* out);

// Row `row` of an embedding matrix to fp32. out: [w.cols]
void embedding_row(const Matrix& w, int64_t row, float* out);

// In-place numerically stable softmax over n values.
void softmax(float* x, int64_t n);

// out[i] = silu(gate[i]) * up[i]
void swiglu(const float* gate, const float* up, float* out, int64_t n);

// y += a * x
void axpy(float a, const float* x, float* y, int64_t n);

float dot_f32(const float* a, const float* b, int64_t n);

// Precision of the matrix kernels (a contract the golden tolerances rely on):
// - F32, F16 weights: exact fp32 products, fp32 accumulation at every level (summation order
//   differs from ref, so results differ by fp32 rounding: ~1e-7 relative to sum_i |w_i x_i|).
// - BF16 weights: matvec (and matmul with one token) converts weights to fp32 exactly (a shift)
//   and accumulates in fp32: decode is memory-bound, so exactness costs nothing. matmul with >= 2
//   tokens on Isa::Avx512Bf16 rounds the activations to bf16 (RNE) and uses vdpbf16ps with fp32
//   accumulation, as llama.cpp does: each product then carries a relative error up to 2^-8, so
//   |error| <= 2^-8 * sum_i |w_i x_i| per output (typically far less, errors are random) — well
//   inside the 6e-2 of the bf16 goldens, and ~2x the fp32-FMA throughput where prefill and grouped
//   experts are compute-bound. matmul_exact keeps fp32 activations (for f32-exact comparisons).
// - Q8 weights: matvec on Isa::Avx512Bf16 (which implies AVX512-VNNI) quantises x per kQ8Block
//   block to int8 (symmetric absmax, like llama.cpp's Q8_0 x Q8_0) and uses vpdpbusd: adds
//   |error| <= sum_i |w_i| * absmax(x in i's block) / 254. Measured ~1.8x faster than dequantising
//   to fp32 (kernels_bench, BM_MatvecQ8 isa:3 vs isa:2), so decode stays memory-bound. matmul with
//   >= 2 tokens on Avx512Bf16 dequantises row groups to bf16 (w * scale rounded, 2^-9 relative)
//   and uses vdpbf16ps with bf16 activations (|error| <= 2^-7 * sum_i |w_i x_i|). Other levels,
//   and matmul_exact, dequantise to fp32 exactly and keep fp32 activations.
// - GGUF block types (Q8_0, Q4_0, Q4_K, Q6_K; layouts in quant.h). Weights dequantise exactly to
//   the fp32 values of dequantize_row (every level reproduces them bit for bit).
//   matvec on Isa::Avx2, Isa::Avx512 and Isa::Avx512Bf16 quantises x per 32 columns to int8
//   (symmetric absmax, round to nearest: x' = round(x * 127 / absmax) * absmax / 127) and takes
//   integer dot products of the weights as stored (vpmaddubsw + vpmaddwd on Avx2 and Avx512,
//   vpdpbusd on Avx512Bf16), scaled and accumulated in fp32: the result is dot(w, x') up to fp32
//   rounding, so |error| <= sum_i |w_i| * absmax(x in i's 32-column block) / 254 plus the F32
//   rounding term. Weights stream at 1.06 (Q8_0), 0.56 (Q4_0, Q4_K) or 0.82 (Q6_K) bytes per value,
//   so this keeps decode memory-bound. matmul with one token on Avx512Bf16 does the same.
//   matmul with >= 2 tokens on Avx512Bf16 dequantises row groups to bf16 (2^-9 relative) and rounds
//   the activations to bf16 (vdpbf16ps): |error| <= 2^-7 * sum_i |w_i x_i|, as for Q8. Every other
//   matmul (Scalar, Avx2, Avx512; matmul_exact everywhere) and the Scalar matvec use exact fp32
//   weights and fp32 activations, with the F32 rounding term only. The SIMD matmuls dequantise
//   row groups 2048 columns at a time into stack buffers (<= 32 KiB; no allocation, no limit on
//   cols); the matvecs quantise x 4096 columns at a time on the stack. Only the bf16 activations
//   of the Avx512Bf16 matmul use the grow-once thread-local scratch the BF16 path uses.
void matmul_exact(const Matrix& w, const float* x, int64_t x_stride, int64_t num_tokens, float* y,
                  int64_t y_stride, int64_t row_begin, int64_t row_end);

// Symmetric absmax quantisation of src (F32, F16 or BF16, cols % kQ8Block == 0) to Q8:
// values [rows, cols] int8 in [-127, 127], scales [rows, cols / kQ8Block] with
// value * scale ~= src (|error| <= scale / 2 = absmax(block) / 254). An all-zero block has scale 0.
// Throws bhmoe::Error if cols is not a multiple of kQ8Block or the dtype is Q8.
void quantize_q8(const Matrix& src, int8_t* values, float* scales);
// src (F32, F16 or BF16) as bf16 [rows, cols] in out: a copy for BF16, round-to-nearest-even for
// the others. Throws bhmoe::Error for Q8.
void convert_to_bf16(const Matrix& src, uint16_t* out);
// A Matrix view over quantize_q8 output.
Matrix q8_matrix(const int8_t* values, const float* scales, int64_t rows, int64_t cols);

namespace ref {
// Naive scalar references: weights converted element by element to fp32, x exact, double
// accumulation.
void matvec(const Matrix& w, const float* x, float* y, int64_t row_begin, int64_t row_end);
void matmul(const Matrix& w, const float* x, int64_t x_stride, int64_t num_tokens, float* y,
            int64_t y_stride, int64_t row_begin, int64_t row_end);
}  // namespace ref

// Element conversions (round-to-nearest-even for float -> bf16; NaN stays NaN).
float bf16_to_f32(uint16_t v);
uint16_t f32_to_bf16(float v);
float f16_to_f32(uint16_t v);
uint16_t f32_to_f16(float v);

}  // namespace bhmoe::kernels
