// NumPy .npy arrays: router-logit dumps from PyTorch arrive in this format.
//
// Reading accepts format versions 1.0, 2.0 and 3.0, C order, dtypes float32 (<f4), float16 (<f2)
// and bfloat16 stored as uint16 (<u2, the usual way to dump bf16 from PyTorch:
// t.view(torch.uint16)), and converts to float. Anything else (Fortran order, big-endian, other
// dtypes, a truncated or malformed file) is a bhmoe::Error naming the file and what is wrong.
// Writing produces float32, C order, version 1.0 (2.0 when the header needs it), atomically.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace bhmoe {

struct NpyArray {
  std::vector<int64_t> shape;  // empty for a scalar
  std::vector<float> data;     // row-major (C order), product(shape) values

  int64_t size() const;  // product of shape (1 for a scalar)
  int64_t dim(int axis) const { return shape.at(static_cast<size_t>(axis)); }
  int rank() const { return static_cast<int>(shape.size()); }
};

// How <u2 data is interpreted: bfloat16 bits (the default) or plain unsigned integers.
enum class NpyU16 { kBFloat16, kInteger };

NpyArray read_npy(const std::filesystem::path& path, NpyU16 u16 = NpyU16::kBFloat16);
// Same from bytes in memory; `source` names them in messages.
NpyArray parse_npy(std::string_view bytes, std::string_view source, NpyU16 u16 = NpyU16::kBFloat16);

// Float32, C order; fails if data.size() != product(shape).
void write_npy(const std::filesystem::path& path, const NpyArray& array);
std::string npy_bytes(const NpyArray& array);
// An int32 (<i4) array, C order; fails if data.size() != product(shape).
std::string npy_bytes_int32(const std::vector<int64_t>& shape, std::span<const int32_t> data);

// Integer arrays (token and expert ids): <i4, or <i8 (numpy's default integer) when every value
// fits int32; anything else is an error naming the source.
struct NpyInt32Array {
  std::vector<int64_t> shape;
  std::vector<int32_t> data;
};
NpyInt32Array parse_npy_int32(std::string_view bytes, std::string_view source);

// A 0-d unicode array ('<U n'), as numpy.array("text") stores it; `str(a)` in Python gives the
// text back. ASCII only (router specs, names); other bytes are an error.
std::string npy_bytes_string(std::string_view ascii);
std::string parse_npy_string(std::string_view bytes, std::string_view source);

// Conversions used by the reader (exposed for tests).
float half_to_float(uint16_t bits);
float bfloat16_to_float(uint16_t bits);

}  // namespace bhmoe
