#include "util/gguf.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "util/error.h"

namespace bhmoe {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint64_t kMaxAlignment = 1 << 20;

struct TypeRow {
  uint32_t type;
  const char* name;
  int64_t block_elements, block_bytes;  // 0, 0: named only (bhmoe does not know its layout)
};

// Block sizes from the ggml block structs: e.g. Q4_K = f16 d, f16 dmin, 12 bytes of 6-bit scales
// and minima, 128 bytes of nibbles per 256 elements; Q6_K = 128 bytes low nibbles, 64 bytes high
// bits, 16 int8 scales, f16 d.
constexpr TypeRow kTypes[] = {
    {0, "F32", 1, 4},       {1, "F16", 1, 2},       {2, "Q4_0", 32, 18},    {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},    {7, "Q5_1", 32, 24},    {8, "Q8_0", 32, 34},    {9, "Q8_1", 32, 36},
    {10, "Q2_K", 256, 84},  {11, "Q3_K", 256, 110}, {12, "Q4_K", 256, 144}, {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210}, {15, "Q8_K", 256, 292}, {16, "IQ2_XXS", 0, 0},  {17, "IQ2_XS", 0, 0},
    {18, "IQ3_XXS", 0, 0},  {19, "IQ1_S", 0, 0},    {20, "IQ4_NL", 0, 0},   {21, "IQ3_S", 0, 0},
    {22, "IQ2_S", 0, 0},    {23, "IQ4_XS", 0, 0},   {24, "I8", 1, 1},       {25, "I16", 1, 2},
    {26, "I32", 1, 4},      {27, "I64", 1, 8},      {28, "F64", 1, 8},      {29, "IQ1_M", 0, 0},
    {30, "BF16", 1, 2},     {34, "TQ1_0", 0, 0},    {35, "TQ2_0", 0, 0},    {39, "MXFP4", 0, 0},
};

const TypeRow* type_row(uint32_t type) {
  for (const TypeRow& r : kTypes) {
    if (r.type == type) return &r;
  }
  return nullptr;
}

// Bytes of one scalar value of a metadata type; 0 for string and array.
size_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::Uint8:
    case GgufValueType::Int8:
    case GgufValueType::Bool:
      return 1;
    case GgufValueType::Uint16:
    case GgufValueType::Int16:
      return 2;
    case GgufValueType::Uint32:
    case GgufValueType::Int32:
    case GgufValueType::Float32:
      return 4;
    case GgufValueType::Uint64:
    case GgufValueType::Int64:
    case GgufValueType::Float64:
      return 8;
    case GgufValueType::String:
    case GgufValueType::Array:
      return 0;
  }
  return 0;
}

bool known_value_type(uint32_t t) {
  return t <= static_cast<uint32_t>(GgufValueType::Float64);
}

uint64_t load_le(const uint8_t* p, size_t width) {
  uint64_t v = 0;
  for (size_t i = width; i-- > 0;) v = (v << 8) | p[i];
  return v;
}

// Decodes one numeric or bool scalar at p into `v`. Returns false for a bool byte other than 0/1.
bool decode_scalar(GgufValueType t, const uint8_t* p, GgufValue& v) {
  const uint64_t raw = load_le(p, scalar_size(t));
  v.is_integer = true;
  auto set_signed = [&](int64_t s) {
    v.as_signed = s;
    v.is_negative = s < 0;
    v.as_unsigned = s < 0 ? 0 : static_cast<uint64_t>(s);
    v.as_double = static_cast<double>(s);
  };
  auto set_unsigned = [&](uint64_t u) {
    v.as_unsigned = u;
    v.as_signed = u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
                      ? std::numeric_limits<int64_t>::max()
                      : static_cast<int64_t>(u);
    v.as_double = static_cast<double>(u);
  };
  switch (t) {
    case GgufValueType::Uint8:
    case GgufValueType::Uint16:
    case GgufValueType::Uint32:
    case GgufValueType::Uint64:
      set_unsigned(raw);
      return true;
    case GgufValueType::Int8:
      set_signed(static_cast<int8_t>(raw));
      return true;
    case GgufValueType::Int16:
      set_signed(static_cast<int16_t>(raw));
      return true;
    case GgufValueType::Int32:
      set_signed(static_cast<int32_t>(raw));
      return true;
    case GgufValueType::Int64:
      set_signed(static_cast<int64_t>(raw));
      return true;
    case GgufValueType::Bool:
      if (raw > 1) return false;
      set_unsigned(raw);
      return true;
    case GgufValueType::Float32: {
      float f;
      const uint32_t bits = static_cast<uint32_t>(raw);
      std::memcpy(&f, &bits, 4);
      v.is_integer = false;
      v.as_double = f;
      return true;
    }
    case GgufValueType::Float64: {
      double d;
      std::memcpy(&d, &raw, 8);
      v.is_integer = false;
      v.as_double = d;
      return true;
    }
    default:
      return false;
  }
}

bool is_integer_type(GgufValueType t) {
  return t != GgufValueType::Float32 && t != GgufValueType::Float64 && t != GgufValueType::Bool &&
         scalar_size(t) > 0;
}

// A byte cursor over [0, size) that fails with the offset and what was being read.
class Cursor {
 public:
  Cursor(const uint8_t* base, size_t size) : base_(base), size_(size) {}
  uint64_t at() const { return at_; }
  uint64_t left() const { return size_ - at_; }
  bool has(uint64_t n) const { return n <= left(); }
  const uint8_t* here() const { return base_ + at_; }
  uint64_t take(size_t width) {
    const uint64_t v = load_le(base_ + at_, width);
    at_ += width;
    return v;
  }
  void skip(uint64_t n) { at_ += n; }

 private:
  const uint8_t* base_;
  uint64_t size_;
  uint64_t at_ = 0;
};

}  // namespace

std::optional<GgmlTypeLayout> ggml_type_layout(uint32_t type) {
  const TypeRow* r = type_row(type);
  if (!r || r->block_elements == 0) return std::nullopt;
  return GgmlTypeLayout{r->block_elements, r->block_bytes};
}

std::string ggml_type_name(uint32_t type) {
  const TypeRow* r = type_row(type);
  return r ? std::string(r->name) : cat("ggml type ", type);
}

const char* gguf_value_type_name(GgufValueType type) {
  switch (type) {
    case GgufValueType::Uint8:
      return "uint8";
    case GgufValueType::Int8:
      return "int8";
    case GgufValueType::Uint16:
      return "uint16";
    case GgufValueType::Int16:
      return "int16";
    case GgufValueType::Uint32:
      return "uint32";
    case GgufValueType::Int32:
      return "int32";
    case GgufValueType::Float32:
      return "float32";
    case GgufValueType::Bool:
      return "bool";
    case GgufValueType::String:
      return "string";
    case GgufValueType::Array:
      return "array";
    case GgufValueType::Uint64:
      return "uint64";
    case GgufValueType::Int64:
      return "int64";
    case GgufValueType::Float64:
      return "float64";
  }
  return "unknown";
}

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

bool is_gguf_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  return in.gcount() == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

GgufFile GgufFile::open(const std::filesystem::path& path) {
  GgufFile g;
  g.file_ = MappedFile(path);
  g.base_ = g.file_.data();
  g.size_ = g.file_.size();
  g.source_ = path.string();
  g.parse_all();
  return g;
}

GgufFile GgufFile::parse(std::string_view bytes, std::string source) {
  GgufFile g;
  g.base_ = reinterpret_cast<const uint8_t*>(bytes.data());
  g.size_ = bytes.size();
  g.source_ = std::move(source);
  g.parse_all();
  return g;
}

void GgufFile::fail_at(uint64_t offset, const std::string& what) const {
  fail(source_, ": not a valid GGUF file: ", what, " (at byte ", offset, " of ", size_, ")");
}

void GgufFile::parse_all() {
  Cursor c(base_, size_);
  auto need = [&](uint64_t n, const std::string& what) {
    if (!c.has(n)) fail_at(c.at(), cat("the file ends inside ", what));
  };
  // A string: u64 length, then that many bytes (not NUL-terminated).
  auto read_string = [&](const std::string& what) {
    need(8, what);
    const uint64_t len = c.take(8);
    if (!c.has(len)) {
      fail_at(c.at() - 8,
              cat(what, " has length ", len, ", more than the ", c.left(), " bytes left"));
    }
    std::string s(reinterpret_cast<const char*>(c.here()), static_cast<size_t>(len));
    c.skip(len);
    return s;
  };

  need(4, "the magic number");
  if (c.take(4) != kMagic) {
    fail(source_, ": not a GGUF file (it does not start with the bytes \"GGUF\")");
  }
  need(4, "the version");
  version_ = static_cast<uint32_t>(c.take(4));
  if (version_ == 0x02000000u || version_ == 0x03000000u) {
    fail(source_,
         ": a big-endian GGUF file; bhmoe reads little-endian GGUF (convert it on a "
         "little-endian machine)");
  }
  if (version_ == 1)
    fail(source_, ": GGUF version 1 is not supported (re-convert with a current llama.cpp)");
  if (version_ != 2 && version_ != 3) {
    fail(source_, ": GGUF version ", version_, " is not supported (bhmoe reads versions 2 and 3)");
  }
  need(16, "the header");
  const uint64_t n_tensors = c.take(8);
  const uint64_t n_keys = c.take(8);
  // Each tensor info takes at least 8 + 4 + 8 + 4 + 8 bytes and each key-value at least 8 + 4 + 1.
  if (n_tensors > kMaxGgufTensors || n_tensors > c.left() / 32) {
    fail_at(8, cat("tensor count ", n_tensors, " is impossible for a file of this size"));
  }
  if (n_keys > kMaxGgufKeys || n_keys > c.left() / 13) {
    fail_at(16, cat("metadata count ", n_keys, " is impossible for a file of this size"));
  }

  for (uint64_t k = 0; k < n_keys; ++k) {
    const uint64_t key_at = c.at();
    std::string key = read_string(cat("metadata key ", k));
    if (key.empty()) fail_at(key_at, cat("metadata key ", k, " is empty"));
    if (values_.count(key)) fail_at(key_at, cat("metadata key '", key, "' appears twice"));
    need(4, cat("the type of metadata key '", key, "'"));
    const uint32_t raw_type = static_cast<uint32_t>(c.take(4));
    if (!known_value_type(raw_type)) {
      fail_at(c.at() - 4, cat("metadata key '", key, "' has unknown value type ", raw_type));
    }
    GgufValue v;
    v.type = static_cast<GgufValueType>(raw_type);
    if (v.type == GgufValueType::String) {
      v.text = read_string(cat("the string of metadata key '", key, "'"));
    } else if (v.type == GgufValueType::Array) {
      need(12, cat("the array header of metadata key '", key, "'"));
      const uint32_t et = static_cast<uint32_t>(c.take(4));
      v.count = c.take(8);
      if (!known_value_type(et)) {
        fail_at(c.at() - 12, cat("metadata key '", key, "' is an array of unknown type ", et));
      }
      v.element_type = static_cast<GgufValueType>(et);
      if (v.element_type == GgufValueType::Array) {
        fail_at(c.at() - 12,
                cat("metadata key '", key, "' is an array of arrays, which no model uses"));
      }
      if (v.element_type == GgufValueType::String) {
        // Every string takes at least its 8-byte length, so the count is bounded by the bytes left
        // before anything is reserved.
        if (v.count > c.left() / 8) {
          fail_at(c.at() - 8, cat("metadata key '", key, "' claims ", v.count,
                                  " strings, more than the bytes left can hold"));
        }
        v.strings.reserve(static_cast<size_t>(v.count));
        for (uint64_t i = 0; i < v.count; ++i) {
          v.strings.push_back(read_string(cat("string ", i, " of metadata key '", key, "'")));
        }
      } else {
        const size_t width = scalar_size(v.element_type);
        if (v.count > c.left() / width) {
          fail_at(c.at() - 8, cat("metadata key '", key, "' claims ", v.count, " ",
                                  gguf_value_type_name(v.element_type),
                                  " values, more than the bytes left can hold"));
        }
        v.array_data = c.here();
        if (v.element_type == GgufValueType::Bool) {
          for (uint64_t i = 0; i < v.count; ++i) {
            if (v.array_data[i] > 1)
              fail_at(c.at() + i,
                      cat("metadata key '", key, "': bool value ", int(v.array_data[i])));
          }
        }
        c.skip(v.count * width);
      }
    } else {
      const size_t width = scalar_size(v.type);
      need(width, cat("the value of metadata key '", key, "'"));
      if (!decode_scalar(v.type, c.here(), v)) {
        fail_at(c.at(), cat("metadata key '", key, "': bool value ", int(*c.here()),
                            " is neither 0 nor 1"));
      }
      c.skip(width);
    }
    key_order_.push_back(key);
    values_.emplace(std::move(key), std::move(v));
  }

  if (const GgufValue* a = find("general.alignment")) {
    if (a->type != GgufValueType::Uint32) {
      fail(source_, ": metadata key 'general.alignment' is ", gguf_value_type_name(a->type),
           ", not uint32");
    }
    alignment_ = a->as_unsigned;
    if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0 || alignment_ > kMaxAlignment) {
      fail(source_, ": general.alignment ", alignment_, " is not a power of two up to ",
           kMaxAlignment);
    }
  }

  tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t t = 0; t < n_tensors; ++t) {
    GgufTensor info;
    const uint64_t info_at = c.at();
    info.name = read_string(cat("the name of tensor ", t));
    if (info.name.empty()) fail_at(info_at, cat("tensor ", t, " has an empty name"));
    if (tensor_index_.count(info.name))
      fail_at(info_at, cat("tensor '", info.name, "' appears twice"));
    need(4, cat("the dimensions of tensor '", info.name, "'"));
    const uint32_t dims = static_cast<uint32_t>(c.take(4));
    if (dims == 0 || dims > static_cast<uint32_t>(kMaxGgufDims)) {
      fail_at(c.at() - 4, cat("tensor '", info.name, "' has ", dims, " dimensions (1 to ",
                              kMaxGgufDims, " allowed)"));
    }
    need(8ull * dims + 12, cat("the shape, type and offset of tensor '", info.name, "'"));
    uint64_t numel = 1;
    for (uint32_t d = 0; d < dims; ++d) {
      const uint64_t n = c.take(8);
      if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (n != 0 && numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / n)) {
        fail_at(c.at() - 8, cat("tensor '", info.name, "' has an impossible dimension ", n));
      }
      numel *= n;
      info.ne.push_back(static_cast<int64_t>(n));
    }
    info.type = static_cast<uint32_t>(c.take(4));
    info.offset = c.take(8);
    if (!type_row(info.type)) {
      fail_at(c.at() - 12, cat("tensor '", info.name, "' has unknown ggml type ", info.type));
    }
    if (info.offset % alignment_ != 0) {
      fail_at(c.at() - 8, cat("tensor '", info.name, "' has offset ", info.offset,
                              ", not a multiple of the alignment ", alignment_));
    }
    if (const auto layout = ggml_type_layout(info.type)) {
      if (info.ne[0] % layout->block_elements != 0) {
        fail_at(info_at, cat("tensor '", info.name, "' (", ggml_type_name(info.type), ") has ",
                             info.ne[0], " elements per row, not a multiple of the block size ",
                             layout->block_elements));
      }
      const uint64_t blocks = numel / static_cast<uint64_t>(layout->block_elements);
      if (blocks >
          std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(layout->block_bytes)) {
        fail_at(info_at, cat("tensor '", info.name, "' is impossibly large"));
      }
      info.nbytes = blocks * static_cast<uint64_t>(layout->block_bytes);
    }
    tensor_index_.emplace(info.name, tensors_.size());
    tensors_.push_back(std::move(info));
  }

  data_offset_ = (c.at() + alignment_ - 1) / alignment_ * alignment_;
  if (data_offset_ > size_) {
    fail_at(c.at(), cat("the data region would start at byte ", data_offset_, ", past the end"));
  }
  const uint64_t data_size = size_ - data_offset_;
  std::vector<const GgufTensor*> by_offset;
  for (GgufTensor& t : tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      fail(source_, ": tensor '", t.name, "' (", ggml_type_name(t.type), ", ", t.nbytes,
           " bytes at data offset ", t.offset,
           ") extends past the end of the file (the data region "
           "holds ",
           data_size, " bytes): the file is truncated or corrupt");
    }
    t.data = base_ + data_offset_ + t.offset;
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GgufTensor* a, const GgufTensor* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensor& prev = *by_offset[i - 1];
    if (prev.offset + prev.nbytes > by_offset[i]->offset) {
      fail(source_, ": tensors '", prev.name, "' and '", by_offset[i]->name,
           "' overlap in the data region");
    }
  }
}

const GgufValue* GgufFile::find(std::string_view key) const {
  const auto it = values_.find(key);
  return it == values_.end() ? nullptr : &it->second;
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  const auto it = tensor_index_.find(std::string(name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufValue& GgufFile::require(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) fail(source_, ": metadata key '", key, "' is missing");
  return *v;
}

uint64_t GgufFile::get_uint(std::string_view key) const {
  const GgufValue& v = require(key);
  if (!is_integer_type(v.type) || v.is_negative) {
    fail(source_, ": metadata key '", key, "' is ",
         v.is_negative ? "negative" : gguf_value_type_name(v.type), ", not a non-negative integer");
  }
  return v.as_unsigned;
}

uint64_t GgufFile::get_uint_or(std::string_view key, uint64_t fallback) const {
  return find(key) ? get_uint(key) : fallback;
}

double GgufFile::get_real(std::string_view key) const {
  const GgufValue& v = require(key);
  if (scalar_size(v.type) == 0 || v.type == GgufValueType::Bool) {
    fail(source_, ": metadata key '", key, "' is ", gguf_value_type_name(v.type), ", not a number");
  }
  return v.as_double;
}

double GgufFile::get_real_or(std::string_view key, double fallback) const {
  return find(key) ? get_real(key) : fallback;
}

bool GgufFile::get_bool_or(std::string_view key, bool fallback) const {
  const GgufValue* v = find(key);
  if (!v) return fallback;
  if (v->type != GgufValueType::Bool) {
    fail(source_, ": metadata key '", key, "' is ", gguf_value_type_name(v->type), ", not bool");
  }
  return v->as_unsigned != 0;
}

const std::string& GgufFile::get_string(std::string_view key) const {
  const GgufValue& v = require(key);
  if (v.type != GgufValueType::String) {
    fail(source_, ": metadata key '", key, "' is ", gguf_value_type_name(v.type), ", not string");
  }
  return v.text;
}

std::optional<std::string> GgufFile::get_string_or_none(std::string_view key) const {
  if (!find(key)) return std::nullopt;
  return get_string(key);
}

const std::vector<std::string>& GgufFile::get_string_array(std::string_view key) const {
  const GgufValue& v = require(key);
  if (v.type != GgufValueType::Array || v.element_type != GgufValueType::String) {
    fail(source_, ": metadata key '", key, "' is ",
         v.type == GgufValueType::Array ? cat("an array of ", gguf_value_type_name(v.element_type))
                                        : std::string(gguf_value_type_name(v.type)),
         ", not an array of strings");
  }
  return v.strings;
}

std::vector<int64_t> GgufFile::get_int_array(std::string_view key) const {
  const GgufValue& v = require(key);
  if (v.type != GgufValueType::Array || !is_integer_type(v.element_type)) {
    fail(source_, ": metadata key '", key, "' is not an array of integers");
  }
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(v.count));
  const size_t width = scalar_size(v.element_type);
  for (uint64_t i = 0; i < v.count; ++i) {
    GgufValue one;
    decode_scalar(v.element_type, v.array_data + i * width, one);
    if (!one.is_negative &&
        one.as_unsigned > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail(source_, ": metadata key '", key, "' element ", i, " does not fit in int64");
    }
    out.push_back(one.as_signed);
  }
  return out;
}

std::vector<double> GgufFile::get_real_array(std::string_view key) const {
  const GgufValue& v = require(key);
  if (v.type != GgufValueType::Array || scalar_size(v.element_type) == 0 ||
      v.element_type == GgufValueType::Bool) {
    fail(source_, ": metadata key '", key, "' is not an array of numbers");
  }
  std::vector<double> out;
  out.reserve(static_cast<size_t>(v.count));
  const size_t width = scalar_size(v.element_type);
  for (uint64_t i = 0; i < v.count; ++i) {
    GgufValue one;
    decode_scalar(v.element_type, v.array_data + i * width, one);
    out.push_back(one.as_double);
  }
  return out;
}

std::string GgufFile::describe(std::string_view key, size_t max_items) const {
  const GgufValue& v = require(key);
  std::ostringstream s;
  auto scalar_text = [&](const GgufValue& x, GgufValueType t) {
    std::ostringstream o;
    if (t == GgufValueType::Bool) {
      o << (x.as_unsigned ? "true" : "false");
    } else if (!x.is_integer) {
      o << x.as_double;
    } else if (x.is_negative) {
      o << x.as_signed;
    } else {
      o << x.as_unsigned;
    }
    return o.str();
  };
  if (v.type == GgufValueType::String) {
    s << '"' << (v.text.size() > 200 ? v.text.substr(0, 200) + "..." : v.text) << '"';
  } else if (v.type == GgufValueType::Array) {
    s << "[" << gguf_value_type_name(v.element_type) << " x " << v.count << "]";
    const uint64_t shown = std::min<uint64_t>(v.count, max_items);
    for (uint64_t i = 0; i < shown; ++i) {
      s << (i ? ", " : " ");
      if (v.element_type == GgufValueType::String) {
        s << '"' << v.strings[i] << '"';
      } else {
        GgufValue one;
        decode_scalar(v.element_type, v.array_data + i * scalar_size(v.element_type), one);
        s << scalar_text(one, v.element_type);
      }
    }
    if (shown < v.count) s << ", ...";
  } else {
    s << scalar_text(v, v.type);
  }
  return s.str();
}

// ---------------------------------------------------------------------------------------------
// Writing.

namespace {

void put(std::string& out, uint64_t v, size_t width) {
  for (size_t i = 0; i < width; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void put_string(std::string& out, const std::string& s) {
  put(out, s.size(), 8);
  out += s;
}

}  // namespace

void GgufWriter::key(const std::string& name, GgufValueType type) {
  put_string(kv_, name);
  put(kv_, static_cast<uint32_t>(type), 4);
  ++kv_count_;
}

void GgufWriter::add_uint32(const std::string& k, uint32_t v) {
  key(k, GgufValueType::Uint32);
  put(kv_, v, 4);
}
void GgufWriter::add_uint64(const std::string& k, uint64_t v) {
  key(k, GgufValueType::Uint64);
  put(kv_, v, 8);
}
void GgufWriter::add_int32(const std::string& k, int32_t v) {
  key(k, GgufValueType::Int32);
  put(kv_, static_cast<uint32_t>(v), 4);
}
void GgufWriter::add_float32(const std::string& k, float v) {
  key(k, GgufValueType::Float32);
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  put(kv_, bits, 4);
}
void GgufWriter::add_bool(const std::string& k, bool v) {
  key(k, GgufValueType::Bool);
  put(kv_, v ? 1 : 0, 1);
}
void GgufWriter::add_string(const std::string& k, const std::string& v) {
  key(k, GgufValueType::String);
  put_string(kv_, v);
}
void GgufWriter::add_string_array(const std::string& k, const std::vector<std::string>& v) {
  key(k, GgufValueType::Array);
  put(kv_, static_cast<uint32_t>(GgufValueType::String), 4);
  put(kv_, v.size(), 8);
  for (const std::string& s : v) put_string(kv_, s);
}
void GgufWriter::add_int32_array(const std::string& k, const std::vector<int32_t>& v) {
  key(k, GgufValueType::Array);
  put(kv_, static_cast<uint32_t>(GgufValueType::Int32), 4);
  put(kv_, v.size(), 8);
  for (int32_t x : v) put(kv_, static_cast<uint32_t>(x), 4);
}
void GgufWriter::add_float32_array(const std::string& k, const std::vector<float>& v) {
  key(k, GgufValueType::Array);
  put(kv_, static_cast<uint32_t>(GgufValueType::Float32), 4);
  put(kv_, v.size(), 8);
  for (float x : v) {
    uint32_t bits;
    std::memcpy(&bits, &x, 4);
    put(kv_, bits, 4);
  }
}

void GgufWriter::add_copy(const GgufFile& from, const std::string& k) {
  const GgufValue* v = from.find(k);
  if (!v) fail(from.source(), ": no metadata key '", k, "' to copy");
  key(k, v->type);
  if (v->type == GgufValueType::String) {
    put_string(kv_, v->text);
  } else if (v->type == GgufValueType::Array) {
    put(kv_, static_cast<uint32_t>(v->element_type), 4);
    put(kv_, v->count, 8);
    if (v->element_type == GgufValueType::String) {
      for (const std::string& text : v->strings) put_string(kv_, text);
    } else {
      // Numeric elements are little-endian in both files: the stored bytes as they are.
      kv_.append(reinterpret_cast<const char*>(v->array_data),
                 v->count * scalar_size(v->element_type));
    }
  } else if (v->type == GgufValueType::Float32) {
    const float f = static_cast<float>(v->as_double);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    put(kv_, bits, 4);
  } else if (v->type == GgufValueType::Float64) {
    uint64_t bits;
    std::memcpy(&bits, &v->as_double, 8);
    put(kv_, bits, 8);
  } else {
    // Integers and bools: the two's-complement bits, cut to the type's width by put().
    put(kv_, v->is_negative ? static_cast<uint64_t>(v->as_signed) : v->as_unsigned,
        scalar_size(v->type));
  }
}

void GgufWriter::set_alignment(uint32_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    fail("GGUF alignment ", alignment, " is not a power of two");
  }
  alignment_ = alignment;
  add_uint32("general.alignment", alignment);
}

uint64_t GgufWriter::tensor_bytes(const std::string& name, GgmlType type,
                                  const std::vector<int64_t>& ne) const {
  const auto layout = ggml_type_layout(static_cast<uint32_t>(type));
  if (!layout) {
    fail("GGUF writer: tensor '", name, "': no layout for ",
         ggml_type_name(static_cast<uint32_t>(type)));
  }
  int64_t numel = 1;
  for (int64_t d : ne) numel *= d;
  if (ne.empty() || ne[0] % layout->block_elements != 0) {
    fail("GGUF writer: tensor '", name, "': rows of ", ne.empty() ? 0 : ne[0],
         " values are not whole blocks of ", layout->block_elements);
  }
  return static_cast<uint64_t>(numel / layout->block_elements * layout->block_bytes);
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, const std::vector<int64_t>& ne,
                            std::string data) {
  const uint64_t nbytes = tensor_bytes(name, type, ne);
  if (nbytes != data.size()) {
    fail("GGUF writer: tensor '", name, "': ", data.size(),
         " bytes do not match its type and shape (", nbytes, ")");
  }
  tensors_.push_back({name, static_cast<uint32_t>(type), ne, nbytes, std::move(data), nullptr});
}

void GgufWriter::add_tensor_later(const std::string& name, GgmlType type,
                                  const std::vector<int64_t>& ne,
                                  std::function<std::string()> produce) {
  const uint64_t nbytes = tensor_bytes(name, type, ne);
  tensors_.push_back({name, static_cast<uint32_t>(type), ne, nbytes, {}, std::move(produce)});
}

std::string GgufWriter::data_of(const Pending& t) const {
  if (!t.produce) return t.data;
  std::string data = t.produce();
  if (data.size() != t.nbytes) {
    fail("GGUF writer: tensor '", t.name, "': produced ", data.size(),
         " bytes, its type and shape take ", t.nbytes);
  }
  return data;
}

std::string GgufWriter::header() const {
  std::string out;
  put(out, kMagic, 4);
  put(out, 3, 4);
  put(out, tensors_.size(), 8);
  put(out, kv_count_, 8);
  out += kv_;
  uint64_t offset = 0;
  for (const Pending& t : tensors_) {
    put_string(out, t.name);
    put(out, t.ne.size(), 4);
    for (int64_t d : t.ne) put(out, static_cast<uint64_t>(d), 8);
    put(out, t.type, 4);
    put(out, offset, 8);
    offset = (offset + t.nbytes + alignment_ - 1) / alignment_ * alignment_;
  }
  out.resize((out.size() + alignment_ - 1) / alignment_ * alignment_, '\0');
  return out;
}

// Each tensor starts at an aligned offset; nothing follows the last one.
std::string GgufWriter::bytes() const {
  std::string out = header();
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (i > 0) out.resize((out.size() + alignment_ - 1) / alignment_ * alignment_, '\0');
    out += data_of(tensors_[i]);
  }
  return out;
}

void GgufWriter::write(const std::filesystem::path& path) const {
  const std::filesystem::path partial = path.string() + ".partial";
  {
    std::ofstream out(partial, std::ios::binary | std::ios::trunc);
    if (!out) fail("cannot create ", partial.string());
    auto put_bytes = [&](const std::string& bytes) {
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      if (!out) fail("writing ", partial.string(), " failed (disk full?)");
    };
    uint64_t written = 0;
    const std::string head = header();
    put_bytes(head);
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const uint64_t padded = (written + alignment_ - 1) / alignment_ * alignment_;
      put_bytes(std::string(padded - written, '\0'));
      put_bytes(data_of(tensors_[i]));
      written = padded + tensors_[i].nbytes;
    }
    out.flush();
    if (!out) fail("writing ", partial.string(), " failed (disk full?)");
  }
  std::error_code ec;
  std::filesystem::rename(partial, path, ec);
  if (ec) fail("cannot rename ", partial.string(), " to ", path.string(), ": ", ec.message());
}

}  // namespace bhmoe
