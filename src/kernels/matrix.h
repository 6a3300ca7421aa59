// Weight matrices as the kernels see them: a typed, non-owning, row-major view. Knows no model.
#pragma once

#include <cstddef>
#include <cstdint>

namespace bhmoe::kernels {

enum class DType : uint8_t { F32, F16, BF16, Q8 };

const char* dtype_name(DType dtype);
size_t dtype_size(DType dtype);  // bytes per element; Q8 is 1 (its scales are separate)

// Q8: int8 values, one float scale per kQ8Block consecutive values of a row (cols % kQ8Block == 0).
inline constexpr int kQ8Block = 32;

// A row-major matrix [rows, cols]; a vector has rows == 1.
struct Matrix {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0;
  int64_t cols = 0;
  const float* scales = nullptr;  // Q8 only: [rows, cols / kQ8Block]

  int64_t numel() const { return rows * cols; }
  bool empty() const { return data == nullptr; }
  // Row r as a matrix [1, cols] (pointer arithmetic in the dtype's element size).
  Matrix row_block(int64_t first_row, int64_t num_rows) const;
};

}  // namespace bhmoe::kernels
