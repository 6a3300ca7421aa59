// Weight matrices as the kernels see them: a typed, non-owning, row-major view. Knows no model.
#pragma once

#include <cstddef>
#include <cstdint>

namespace bhmoe::kernels {

// Element types (F32, F16, BF16, Q8: one value per element, Q8's scales separate) and the GGUF
// block-quantised types (Q8_0, Q4_0, Q4_K, Q6_K: fixed-size blocks of values with their scales
// inside, stored consecutively along a row; the layouts are in quant.h).
enum class DType : uint8_t { F32, F16, BF16, Q8, Q8_0, Q4_0, Q4_K, Q6_K };

const char* dtype_name(DType dtype);
// Bytes per element of an element type; Q8 is 1 (its scales are separate). Throws bhmoe::Error for
// a block type, whose elements have no whole byte size (use row_bytes).
size_t dtype_size(DType dtype);
// Whether dtype is one of the GGUF block-quantised types.
bool is_block_dtype(DType dtype);
// Values per block: 32 for Q8_0 and Q4_0, 256 for Q4_K and Q6_K, 1 for the element types.
int64_t block_values(DType dtype);
// Bytes per block: 34, 18, 144, 210 for Q8_0, Q4_0, Q4_K, Q6_K; dtype_size for element types.
size_t block_bytes(DType dtype);
// Bytes of one row of `cols` values (cols a multiple of block_values(dtype)); Q8's separate scales
// are not included.
size_t row_bytes(DType dtype, int64_t cols);

// Q8: int8 values, one float scale per kQ8Block consecutive values of a row (cols % kQ8Block == 0).
inline constexpr int kQ8Block = 32;

// A row-major matrix [rows, cols]; a vector has rows == 1. Rows of a block type start every
// row_bytes(dtype, cols) bytes (cols % block_values(dtype) == 0).
struct Matrix {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const float* scales = nullptr;  // Q8 only: [rows, cols / kQ8Block]

  int64_t numel() const { return rows * cols; }
  bool empty() const { return data == nullptr; }
  // Rows [first_row, first_row + num_rows) as a matrix (pointer arithmetic in row_bytes).
  Matrix row_block(int64_t first_row, int64_t num_rows) const;
};

}  // namespace bhmoe::kernels
