#include "kernels/matrix.h"

#include <cassert>

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
  }
  return 0;
}

Matrix Matrix::row_block(int64_t first_row, int64_t num_rows) const {
  assert(first_row >= 0 && num_rows >= 0 && first_row + num_rows <= rows);
  Matrix block = *this;
  block.rows = num_rows;
  block.data =
      static_cast<const uint8_t*>(data) + static_cast<size_t>(first_row * cols) * dtype_size(dtype);
  if (dtype == DType::Q8 && scales != nullptr)
    block.scales = scales + first_row * (cols / kQ8Block);
  return block;
}

}  // namespace bhmoe::kernels
