// GGUF files (llama.cpp's single-file model format), versions 2 and 3, little-endian:
//
//   "GGUF", version u32, tensor count u64, metadata count u64,
//   metadata: key (u64 length + bytes), value type u32, value,
//   tensor infos: name, dimension count u32, ne[dims] u64 (ne[0] varies fastest), ggml type u32,
//                 offset u64 (from the start of the data region),
//   padding to general.alignment (default 32), then the data region.
//
// Reading maps the file and validates everything it will index before anything is allocated from a
// count in the file: counts and lengths against the bytes left (every element takes at least one
// byte, so no count can allocate more than the file's size), value types, unique keys and tensor
// names, dimensions (at most 4, none negative, no overflow), the alignment, and each tensor's
// offset (aligned) and size (ggml type x shape) inside the data region, without overlaps. Tensors
// are zero-copy views into the mapping. Errors name the file and the key or tensor at fault.
//
// Only the container is read here: what the keys and tensors mean for a model is model/'s business.
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

#include "util/file.h"

namespace bhmoe {

// ggml tensor types by their numbers in the file format.
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
};

// Elements per block and bytes per block of a ggml type whose storage layout bhmoe knows (a plain
// type is a block of one element); nullopt for every other type number.
struct GgmlTypeLayout {
  int64_t block_elements = 0;
  int64_t block_bytes = 0;
};
std::optional<GgmlTypeLayout> ggml_type_layout(uint32_t type);
// "Q4_K", or for a type number outside the table "ggml type 23" (named where known, e.g. IQ4_XS).
std::string ggml_type_name(uint32_t type);

// Metadata value types.
enum class GgufValueType : uint32_t {
  Uint8 = 0,
  Int8 = 1,
  Uint16 = 2,
  Int16 = 3,
  Uint32 = 4,
  Int32 = 5,
  Float32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  Uint64 = 10,
  Int64 = 11,
  Float64 = 12,
};
const char* gguf_value_type_name(GgufValueType type);  // "uint32", "string", "array", ...

// One metadata value. Scalars are decoded; string arrays are decoded into `strings`; numeric arrays
// stay in the mapping (`array_data`, `count` elements of `element_type`) and are copied out by the
// typed getters of GgufFile.
struct GgufValue {
  GgufValueType type = GgufValueType::Uint8;
  GgufValueType element_type = GgufValueType::Uint8;  // arrays only
  uint64_t count = 0;                                 // arrays only
  const uint8_t* array_data = nullptr;                // numeric arrays only
  std::vector<std::string> strings;                   // string arrays only
  std::string text;                                   // strings
  // A numeric or bool scalar, in each representation it converts to exactly (see GgufFile getters).
  uint64_t as_unsigned = 0;
  int64_t as_signed = 0;
  double as_double = 0;
  bool is_integer = false, is_negative = false;
};

struct GgufTensor {
  std::string name;
  uint32_t type = 0;        // a GgmlType number; may be one bhmoe has no layout for
  std::vector<int64_t> ne;  // ne[0] varies fastest (a matrix [rows, cols] is ne = {cols, rows})
  uint64_t offset = 0;      // from the start of the data region
  uint64_t nbytes = 0;      // 0 when the type's layout is unknown
  const uint8_t* data = nullptr;  // into the mapping
  int64_t numel() const;
};

// True when `path` is a regular file that starts with the GGUF magic (whatever its name); false for
// anything else, including paths that cannot be read.
bool is_gguf_file(const std::filesystem::path& path);

// Sane limits, far above any real model (a 671B model has about 1,100 tensors and 50 keys).
inline constexpr uint64_t kMaxGgufTensors = 1 << 20;
inline constexpr uint64_t kMaxGgufKeys = 1 << 20;
inline constexpr int kMaxGgufDims = 4;

class GgufFile {
 public:
  // Maps `path` (a regular file) and validates it.
  static GgufFile open(const std::filesystem::path& path);
  // Validates `bytes` (which must outlive the result); `source` names them in messages.
  static GgufFile parse(std::string_view bytes, std::string source);
  // A temporary string would be freed while the result still points into it.
  static GgufFile parse(std::string&& bytes, std::string source) = delete;

  GgufFile(GgufFile&&) = default;
  GgufFile& operator=(GgufFile&&) = default;

  const std::string& source() const { return source_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // file offset of the data region
  size_t size() const { return size_; }
  const FileIdentity& identity() const { return file_.identity(); }  // when mapped (open() only)

  const std::vector<std::string>& keys() const { return key_order_; }  // in file order
  const GgufValue* find(std::string_view key) const;                   // nullptr if absent
  const std::vector<GgufTensor>& tensors() const { return tensors_; }  // in file order
  const GgufTensor* find_tensor(std::string_view name) const;          // nullptr if absent

  // Typed getters: the key must be present (else an error naming it and the file) and hold a value
  // that converts exactly (any integer type that fits for integers; float32/float64 or an integer
  // for reals). The *_or forms return `fallback` when the key is absent.
  uint64_t get_uint(std::string_view key) const;
  uint64_t get_uint_or(std::string_view key, uint64_t fallback) const;
  double get_real(std::string_view key) const;
  double get_real_or(std::string_view key, double fallback) const;
  bool get_bool_or(std::string_view key, bool fallback) const;
  const std::string& get_string(std::string_view key) const;
  std::optional<std::string> get_string_or_none(std::string_view key) const;
  const std::vector<std::string>& get_string_array(std::string_view key) const;
  std::vector<int64_t> get_int_array(std::string_view key) const;  // any integer element type
  std::vector<double> get_real_array(std::string_view key) const;  // float or integer elements

  // A value in words for `bhmoe inspect`: scalars as written, arrays as "[type x count] first..."
  std::string describe(std::string_view key, size_t max_items = 8) const;

 private:
  GgufFile() = default;
  void parse_all();
  [[noreturn]] void fail_at(uint64_t offset, const std::string& what) const;
  const GgufValue& require(std::string_view key) const;

  MappedFile file_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  std::string source_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue, std::less<>> values_;
  std::vector<std::string> key_order_;
  std::vector<GgufTensor> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

// Builds GGUF v3 bytes: for tests (valid files to corrupt) and for writing checkpoints. Tensors are
// laid out in the order added, each at the next aligned offset.
class GgufWriter {
 public:
  void add_uint32(const std::string& key, uint32_t v);
  void add_uint64(const std::string& key, uint64_t v);
  void add_int32(const std::string& key, int32_t v);
  void add_float32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string(const std::string& key, const std::string& v);
  void add_string_array(const std::string& key, const std::vector<std::string>& v);
  void add_int32_array(const std::string& key, const std::vector<int32_t>& v);
  void add_float32_array(const std::string& key, const std::vector<float>& v);
  // `key` with its value exactly as `from` holds it, of any type (for rewriting a file with some
  // keys changed). Throws bhmoe::Error when `from` has no such key.
  void add_copy(const GgufFile& from, const std::string& key);
  // `data` must hold exactly the bytes the type and shape take.
  void add_tensor(const std::string& name, GgmlType type, const std::vector<int64_t>& ne,
                  std::string data);
  // A tensor whose bytes `produce` returns when the file is written, so that a multi-GB file is
  // never held in memory (write() calls it once, in tensor order, and checks the size it returns).
  void add_tensor_later(const std::string& name, GgmlType type, const std::vector<int64_t>& ne,
                        std::function<std::string()> produce);
  void set_alignment(uint32_t alignment);  // also written as general.alignment

  std::string bytes() const;
  // Streams the file to `path` + ".partial", then renames it over `path` (a reader never sees half
  // a file; an error leaves `path` as it was).
  void write(const std::filesystem::path& path) const;

 private:
  void key(const std::string& name, GgufValueType type);
  std::string kv_;
  uint64_t kv_count_ = 0;
  uint32_t alignment_ = 32;
  struct Pending {
    std::string name;
    uint32_t type;
    std::vector<int64_t> ne;
    uint64_t nbytes;
    std::string data;                      // when given now
    std::function<std::string()> produce;  // when produced at write time
  };
  uint64_t tensor_bytes(const std::string& name, GgmlType type,
                        const std::vector<int64_t>& ne) const;
  std::string header() const;  // everything before the data region, padded
  std::string data_of(const Pending& t) const;
  std::vector<Pending> tensors_;
};

}  // namespace bhmoe
