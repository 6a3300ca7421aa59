// safetensors files: an 8-byte little-endian header length, a JSON header
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the data
// region the offsets index. Reading maps the file read-only and hands out pointers into the mapping
// (zero-copy); every entry is validated before use. Writing is for make-model and tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kernels/matrix.h"
#include "util/file.h"

namespace bhmoe::model {

// Bytes per element of a safetensors dtype string ("BF16" -> 2), or 0 when it is not one.
size_t safetensors_dtype_size(std::string_view dtype);
// The kernel dtype for BF16, F16 and F32; nullopt for every other dtype.
std::optional<kernels::DType> kernel_dtype(std::string_view dtype);
const char* safetensors_dtype_name(kernels::DType dtype);  // F32 -> "F32" (Q8 and the block types have none: throws)

struct SafetensorsTensor {
  std::string name;
  std::string dtype;           // as written in the header, e.g. "BF16"
  std::vector<int64_t> shape;  // [] for a scalar
  uint64_t begin = 0;          // byte offsets into the data region
  uint64_t end = 0;
  const uint8_t* data = nullptr;  // into the mapping
  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

// The header's limit (the reference implementation refuses more than 100 MB).
inline constexpr uint64_t kMaxSafetensorsHeader = 100u << 20;

class SafetensorsFile {
 public:
  // Maps `path` (a regular file) and validates the header: length inside the file and below the
  // limit, a JSON object ending exactly at that length (only space padding after it), no duplicate
  // keys, known dtypes, offsets consistent with shape x dtype size, and, in offset order, tensors
  // covering the data region exactly (from 0 to the end of the file, no gaps, no overlaps), as the
  // format requires. Errors name the file (and tensor).
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return file_.path(); }
  size_t file_size() const { return file_.size(); }
  const FileIdentity& identity() const { return file_.identity(); }  // when it was mapped
  uint64_t header_size() const { return header_size_; }  // JSON bytes, excluding the 8-byte length
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }  // in offset order
  const SafetensorsTensor* find(std::string_view name) const;                 // nullptr if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  MappedFile file_;
  uint64_t header_size_ = 0;
  std::vector<SafetensorsTensor> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A NaN or infinity found in a floating-point tensor.
struct NonFiniteValue {
  std::filesystem::path file;
  std::string tensor;
  std::vector<int64_t> shape;
  int64_t index = 0;  // flat, row-major
  double value = 0;   // NaN, +inf or -inf
};

// Scans every floating-point tensor of `file` (F16, BF16, F32, F64, F8_E5M2, F8_E4M3) in offset
// order and returns the first NaN or infinity; nullopt when every value is finite. Integer and
// bool tensors have no such values and are skipped. Reads the whole data region once.
std::optional<NonFiniteValue> find_non_finite(const SafetensorsFile& file);

// "[3, 5]": the multi-dimensional index of flat element `index` of `shape` (row-major).
std::string element_index_text(const std::vector<int64_t>& shape, int64_t index);

// --- writing ---

struct TensorSpec {
  std::string name;
  std::string dtype;  // "BF16", "F16", "F32", ...
  std::vector<int64_t> shape;
  uint64_t nbytes() const;  // numel x dtype size
};

// The bytes that precede the data region (length + JSON header padded with spaces so the data
// region starts 8-byte aligned), with each tensor's offsets laid out back to back in the order
// given.
struct SafetensorsLayout {
  std::string prefix;
  std::vector<uint64_t> begin;  // per tensor, into the data region
  uint64_t data_bytes = 0;
  uint64_t file_bytes() const { return prefix.size() + data_bytes; }
};
SafetensorsLayout plan_safetensors(const std::vector<TensorSpec>& tensors,
                                   const std::map<std::string, std::string>& metadata = {});

// Writes a whole safetensors file atomically from in-memory tensor bytes (data[i] must hold exactly
// tensors[i].nbytes() bytes). For small files: tests and tools.
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorSpec>& tensors,
                       const std::vector<std::string_view>& data,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace bhmoe::model
