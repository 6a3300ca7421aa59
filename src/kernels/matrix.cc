#include "kernels/matrix.h"

#include <cassert>

#include "util/error.h"

namespace bhmoe::kernels {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::Q8:
      return "Q8";
    case DType::Q8_0:
      return "Q8_0";
    case DType::Q4_0:
      return "Q4_0";
    case DType::Q4_K:
      return "Q4_K";
    case DType::Q6_K:
      return "Q6_K";
  }
  return "unknown";
}

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32:
      return 4;
    case DType::F16:
    case DType::BF16:
      return 2;
    case DType::Q8:
      return 1;
    case DType::Q8_0:
    case DType::Q4_0:
    case DType::Q4_K:
    case DType::Q6_K:
      break;
  }
  fail("dtype_size: ", dtype_name(dtype), " is a block type (use row_bytes)");
}

bool is_block_dtype(DType dtype) {
  return dtype == DType::Q8_0 || dtype == DType::Q4_0 || dtype == DType::Q4_K ||
         dtype == DType::Q6_K;
}

int64_t block_values(DType dtype) {
  switch (dtype) {
    case DType::Q8_0:
    case DType::Q4_0:
      return 32;
    case DType::Q4_K:
    case DType::Q6_K:
      return 256;
    default:
      return 1;
  }
}

size_t block_bytes(DType dtype) {
  switch (dtype) {
    case DType::Q8_0:
      return 34;
    case DType::Q4_0:
      return 18;
    case DType::Q4_K:
      return 144;
    case DType::Q6_K:
      return 210;
    default:
      return dtype_size(dtype);
  }
}

size_t row_bytes(DType dtype, int64_t cols) {
  assert(cols % block_values(dtype) == 0);
  return static_cast<size_t>(cols / block_values(dtype)) * block_bytes(dtype);
}

Matrix Matrix::row_block(int64_t first_row, int64_t num_rows) const {
  assert(first_row >= 0 && num_rows >= 0 && first_row + num_rows <= rows);
  Matrix block = *this;
  block.rows = num_rows;
  block.data =
      static_cast<const uint8_t*>(data) + static_cast<size_t>(first_row) * row_bytes(dtype, cols);
  if (dtype == DType::Q8 && scales != nullptr)
    block.scales = scales + first_row * (cols / kQ8Block);
  return block;
}

}  // namespace bhmoe::kernels
