#include "model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include <nlohmann/json.hpp>

#include "util/error.h"
#include "util/json.h"

namespace bhmoe::model {
namespace {

using nlohmann::json;

struct DTypeInfo {
  std::string_view name;
  size_t size;
};

// Every dtype the safetensors format defines; only BF16, F16 and F32 are usable as weights.
constexpr DTypeInfo kDTypes[] = {
    {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
    {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
    {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8},
};

// Multiplies non-negative values, reporting overflow past int64.
bool checked_mul(int64_t a, int64_t b, int64_t* out) {
  if (a != 0 && b > std::numeric_limits<int64_t>::max() / a) return false;
  *out = a * b;
  return true;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

std::string hex_byte(char c) {
  static constexpr char kDigits[] = "0123456789abcdef";
  const auto b = static_cast<unsigned char>(c);
  return {kDigits[b >> 4], kDigits[b & 15]};
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

size_t safetensors_dtype_size(std::string_view dtype) {
  for (const auto& info : kDTypes) {
    if (info.name == dtype) return info.size;
  }
  return 0;
}

std::optional<kernels::DType> kernel_dtype(std::string_view dtype) {
  if (dtype == "F32") return kernels::DType::F32;
  if (dtype == "F16") return kernels::DType::F16;
  if (dtype == "BF16") return kernels::DType::BF16;
  return std::nullopt;
}

const char* safetensors_dtype_name(kernels::DType dtype) {
  switch (dtype) {
    case kernels::DType::F32:
      return "F32";
    case kernels::DType::F16:
      return "F16";
    case kernels::DType::BF16:
      return "BF16";
    default:
      fail("dtype ", kernels::dtype_name(dtype), " has no safetensors name");
  }
}

namespace {

// Bit tests of the IEEE formats: an all-ones exponent is NaN or infinity. E4M3 (the "fn" variant
// safetensors means) has no infinity, and NaN only as S.1111.111.
template <typename Bits>
int64_t first_non_finite_bits(const uint8_t* data, int64_t n, Bits exponent_mask) {
  for (int64_t i = 0; i < n; ++i) {
    Bits bits;
    std::memcpy(&bits, data + i * int64_t{sizeof(Bits)}, sizeof(Bits));
    if ((bits & exponent_mask) == exponent_mask) return i;
  }
  return -1;
}

double element_value(const SafetensorsTensor& t, int64_t i) {
  const size_t size = safetensors_dtype_size(t.dtype);
  const uint8_t* p = t.data + i * static_cast<int64_t>(size);
  if (t.dtype == "F64") {
    double v;
    std::memcpy(&v, p, 8);
    return v;
  }
  if (t.dtype == "F32") {
    float v;
    std::memcpy(&v, p, 4);
    return v;
  }
  // The narrower formats are non-finite here, so only the sign and NaN-or-infinity matter: a
  // non-zero mantissa is NaN (and every non-finite E4M3 value is NaN).
  const double sign = (p[size - 1] & 0x80) ? -1.0 : 1.0;  // little-endian: in the last byte
  bool nan = true;
  if (t.dtype == "BF16" || t.dtype == "F16") {
    uint16_t bits;
    std::memcpy(&bits, p, 2);
    nan = (bits & (t.dtype == "BF16" ? 0x007F : 0x03FF)) != 0;
  } else if (t.dtype == "F8_E5M2") {
    nan = (p[0] & 0x03) != 0;
  }
  return nan ? std::numeric_limits<double>::quiet_NaN()
             : sign * std::numeric_limits<double>::infinity();
}

}  // namespace

std::optional<NonFiniteValue> find_non_finite(const SafetensorsFile& file) {
  for (const SafetensorsTensor& t : file.tensors()) {
    const int64_t n = t.numel();
    int64_t at = -1;
    if (t.dtype == "F64") {
      at = first_non_finite_bits<uint64_t>(t.data, n, 0x7FF0000000000000ull);
    } else if (t.dtype == "F32") {
      at = first_non_finite_bits<uint32_t>(t.data, n, 0x7F800000u);
    } else if (t.dtype == "BF16") {
      at = first_non_finite_bits<uint16_t>(t.data, n, 0x7F80);
    } else if (t.dtype == "F16") {
      at = first_non_finite_bits<uint16_t>(t.data, n, 0x7C00);
    } else if (t.dtype == "F8_E5M2") {
      at = first_non_finite_bits<uint8_t>(t.data, n, 0x7C);
    } else if (t.dtype == "F8_E4M3") {
      at = first_non_finite_bits<uint8_t>(t.data, n, 0x7F);
    }
    if (at >= 0) return NonFiniteValue{file.path(), t.name, t.shape, at, element_value(t, at)};
  }
  return std::nullopt;
}

std::string element_index_text(const std::vector<int64_t>& shape, int64_t index) {
  std::vector<int64_t> at(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    if (shape[d] > 0) {
      at[d] = index % shape[d];
      index /= shape[d];
    }
  }
  return shape_text(at);
}

int64_t SafetensorsTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  SafetensorsFile st;
  st.file_ = MappedFile(path);
  const std::string where = path.string();
  const uint64_t size = st.file_.size();
  if (size < 8) fail(where, ": truncated safetensors file (", size, " bytes; no header length)");
  const uint8_t* base = st.file_.data();
  const uint64_t header_size = read_u64_le(base);
  if (header_size > size - 8) {
    fail(where, ": header length ", header_size, " runs past the end of the file (", size,
         " bytes)");
  }
  if (header_size > kMaxSafetensorsHeader) {
    fail(where, ": header length ", header_size, " exceeds the ", kMaxSafetensorsHeader,
         "-byte limit");
  }
  if (header_size < 2 || base[8] != '{') fail(where, ": header is not a JSON object");
  st.header_size_ = header_size;

  // The format allows only spaces (0x20) after the JSON, as padding. Whatever else follows the
  // closing brace within the stated length (a tab, a newline, data bytes) means the length is wrong.
  const char* header_text = reinterpret_cast<const char*>(base + 8);
  uint64_t json_end = header_size;
  while (json_end > 0 && header_text[json_end - 1] == ' ') --json_end;
  const bool ends_with_brace = header_text[json_end - 1] == '}';
  const std::string not_at_end =
      cat(where, ": the header's JSON does not end at its stated length ", header_size, " (byte ",
          json_end - 1, " of the header is 0x", hex_byte(header_text[json_end - 1]),
          ", not the closing brace or space padding)");
  json header;
  try {
    header = parse_json(std::string_view(header_text, json_end), cat(where, ": header"));
  } catch (const Error& e) {
    if (!ends_with_brace) fail(not_at_end, "; ", e.what());
    throw;
  }
  // JSON itself allows trailing tabs and newlines; the format does not.
  if (!ends_with_brace) fail(not_at_end);
  if (!header.is_object()) fail(where, ": header is not a JSON object");

  const uint64_t data_size = size - 8 - header_size;
  const uint8_t* data = base + 8 + header_size;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail(where, ": __metadata__ is not an object");
      for (auto& [key, value] : entry.items()) {
        if (!value.is_string()) fail(where, ": __metadata__ value of '", key, "' is not a string");
        st.metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string tensor = cat(where, ": tensor ", name);
    if (!entry.is_object()) fail(tensor, ": entry is not an object");
    SafetensorsTensor t;
    t.name = name;
    auto dtype = entry.find("dtype");
    if (dtype == entry.end() || !dtype->is_string()) fail(tensor, ": missing or non-string dtype");
    t.dtype = dtype->get<std::string>();
    size_t element_size = safetensors_dtype_size(t.dtype);
    if (element_size == 0) fail(tensor, ": unknown dtype \"", t.dtype, "\"");

    auto shape = entry.find("shape");
    if (shape == entry.end() || !shape->is_array()) fail(tensor, ": missing or non-array shape");
    int64_t numel = 1;
    for (const auto& dim : *shape) {
      if (!dim.is_number_unsigned())
        fail(tensor, ": shape ", shape->dump(), " is not a list of sizes >= 0");
      uint64_t d = dim.get<uint64_t>();
      if (d > uint64_t{std::numeric_limits<int64_t>::max()} ||
          !checked_mul(numel, int64_t(d), &numel)) {
        fail(tensor, ": shape ", shape->dump(), " is too large");
      }
      t.shape.push_back(static_cast<int64_t>(d));
    }
    int64_t expected_bytes = 0;
    if (!checked_mul(numel, int64_t(element_size), &expected_bytes)) {
      fail(tensor, ": shape ", shape->dump(), " is too large");
    }

    auto offsets = entry.find("data_offsets");
    if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 ||
        !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
      fail(tensor, ": data_offsets must be [begin, end] with integers >= 0");
    }
    t.begin = (*offsets)[0].get<uint64_t>();
    t.end = (*offsets)[1].get<uint64_t>();
    if (t.end < t.begin)
      fail(tensor, ": data_offsets [", t.begin, ", ", t.end, "] end before they begin");
    if (t.end > data_size) {
      fail(tensor, ": data_offsets [", t.begin, ", ", t.end, "] run past the end of the data (",
           data_size, " bytes; file truncated?)");
    }
    if (t.end - t.begin != uint64_t(expected_bytes)) {
      fail(tensor, ": data_offsets [", t.begin, ", ", t.end, "] hold ", t.end - t.begin,
           " bytes but shape ", shape_text(t.shape), " of ", t.dtype, " needs ", expected_bytes);
    }
    t.data = data + t.begin;
    st.tensors_.push_back(std::move(t));
  }

  std::sort(st.tensors_.begin(), st.tensors_.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  // The format requires the data region to be indexed entirely, without holes or overlaps: in
  // offset order each tensor begins where the previous one ended, the first at 0, and the last
  // ends at the end of the file. A header length a few bytes short (pointing into the padding)
  // shifts every tensor and is caught here, as is anything hidden between or after tensors.
  const SafetensorsTensor* previous = nullptr;
  uint64_t covered = 0;
  for (const auto& t : st.tensors_) {
    if (t.begin < covered) {
      fail(where, ": tensors ", previous->name, " [", previous->begin, ", ", previous->end,
           ") and ", t.name, " [", t.begin, ", ", t.end, ") overlap");
    }
    if (t.begin > covered) {
      fail(where, ": tensor ", t.name, " begins at data offset ", t.begin, " but ",
           previous ? cat("the previous tensor ", previous->name, " ends at ", covered)
                    : std::string("the data region begins at 0"),
           "; the data must be covered without gaps");
    }
    covered = t.end;
    previous = &t;
  }
  if (covered != data_size) {
    fail(where, ": the tensors cover ", covered, " bytes of data but the data region after the ",
         header_size, "-byte header holds ", data_size,
         " (wrong header length, or bytes not indexed by any tensor)");
  }
  for (size_t i = 0; i < st.tensors_.size(); ++i) st.index_.emplace(st.tensors_[i].name, i);
  return st;
}

const SafetensorsTensor* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

uint64_t TensorSpec::nbytes() const {
  size_t element_size = safetensors_dtype_size(dtype);
  if (element_size == 0) fail("tensor ", name, ": unknown dtype \"", dtype, "\"");
  uint64_t n = element_size;
  for (int64_t d : shape) {
    if (d < 0) fail("tensor ", name, ": negative size in shape ", shape_text(shape));
    n *= uint64_t(d);
  }
  return n;
}

SafetensorsLayout plan_safetensors(const std::vector<TensorSpec>& tensors,
                                   const std::map<std::string, std::string>& metadata) {
  SafetensorsLayout layout;
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__" || header.contains(t.name))
      fail("tensor name ", t.name, " used twice");
    uint64_t n = t.nbytes();
    header[t.name] = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    layout.begin.push_back(offset);
    offset += n;
  }
  layout.data_bytes = offset;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  layout.prefix.resize(8);
  uint64_t length = text.size();
  for (int i = 0; i < 8; ++i) layout.prefix[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  layout.prefix += text;
  return layout;
}

void write_safetensors(const std::filesystem::path& path, const std::vector<TensorSpec>& tensors,
                       const std::vector<std::string_view>& data,
                       const std::map<std::string, std::string>& metadata) {
  if (data.size() != tensors.size())
    fail("write_safetensors: ", tensors.size(), " tensors but ", data.size(), " buffers");
  SafetensorsLayout layout = plan_safetensors(tensors, metadata);
  std::string contents = layout.prefix;
  contents.reserve(layout.file_bytes());
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (data[i].size() != tensors[i].nbytes()) {
      fail("write_safetensors: tensor ", tensors[i].name, " has ", data[i].size(),
           " bytes, its shape needs ", tensors[i].nbytes());
    }
    contents.append(data[i]);
  }
  write_file_atomic(path, contents);
}

}  // namespace bhmoe::model
