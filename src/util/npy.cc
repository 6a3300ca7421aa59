#include "util/npy.h"

#include <bit>
#include <cctype>
#include <cmath>
#include <cstring>

#include "util/error.h"
#include "util/file.h"

namespace bhmoe {

namespace {

std::string dims_text(const std::vector<int64_t>& shape) {
  std::string text = "(";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + (shape.size() == 1 ? ",)" : ")");
}

// Product of non-negative dims, or -1 when it does not fit int64. A zero dim makes the product 0
// whatever the others are (so (2^40, 2^40, 0) is a valid empty shape, not an overflow).
int64_t checked_product(const std::vector<int64_t>& shape) {
  for (int64_t d : shape) {
    if (d == 0) return 0;
  }
  int64_t n = 1;
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, d, &n)) return -1;
  }
  return n;
}

}  // namespace

int64_t NpyArray::size() const {
  for (int64_t d : shape) {
    if (d < 0) fail("npy shape ", dims_text(shape), " has a negative dimension");
  }
  int64_t n = checked_product(shape);
  if (n < 0) fail("npy shape ", dims_text(shape), " is too large (its product overflows 64 bits)");
  return n;
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: value = mantissa * 2^-24
      float value = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
      return sign ? -value : value;
    }
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  }
  return std::bit_cast<float>(bits);
}

float bfloat16_to_float(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// The value text of `key` in the header dict (up to the next top-level comma or closing brace).
std::string_view dict_value(std::string_view dict, std::string_view key, std::string_view source) {
  std::string quoted1 = cat("'", key, "'");
  std::string quoted2 = cat("\"", key, "\"");
  size_t at = dict.find(quoted1);
  size_t len = quoted1.size();
  if (at == std::string_view::npos) {
    at = dict.find(quoted2);
    len = quoted2.size();
  }
  if (at == std::string_view::npos) fail(source, ": npy header has no '", key, "' entry");
  size_t colon = dict.find(':', at + len);
  if (colon == std::string_view::npos) fail(source, ": npy header entry '", key, "' has no value");
  size_t end = colon + 1;
  int depth = 0;
  while (end < dict.size()) {
    char c = dict[end];
    if (c == '(' || c == '[') ++depth;
    if (c == ')' || c == ']') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
    if (depth < 0) break;
    ++end;
  }
  return trim(dict.substr(colon + 1, end - colon - 1));
}

// What a .npy header says: the dtype text, the shape and where the data starts.
struct NpyHeader {
  std::string descr;
  std::vector<int64_t> shape;
  size_t data_offset = 0;
};

NpyHeader parse_header(std::string_view bytes, std::string_view source);

// Checks that the data after the header holds exactly product(shape) items of item_size bytes
// (before anything is allocated) and returns that product.
int64_t checked_count(std::string_view bytes, const NpyHeader& header, size_t item_size,
                      std::string_view source);

enum class Dtype { kF32, kF16, kU16 };

}  // namespace

namespace {

NpyHeader parse_header(std::string_view bytes, std::string_view source) {
  static constexpr char kMagic[] = "\x93NUMPY";
  if (bytes.size() < 10 || bytes.substr(0, 6) != std::string_view(kMagic, 6)) {
    fail(source, ": not a .npy file (missing the \\x93NUMPY magic)");
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len;
  size_t offset;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) |
                 (static_cast<size_t>(static_cast<unsigned char>(bytes[9])) << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) fail(source, ": truncated .npy header");
    header_len = 0;
    for (int i = 0; i < 4; ++i)
      header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    offset = 12;
  } else {
    fail(source, ": unsupported .npy format version ", major, ".",
         static_cast<int>(static_cast<unsigned char>(bytes[7])),
         " (1.0, 2.0 and 3.0 are supported)");
  }
  if (bytes.size() < offset + header_len) {
    fail(source, ": truncated .npy header (needs ", header_len, " bytes, file has ",
         bytes.size() - offset, ")");
  }
  std::string_view dict = trim(bytes.substr(offset, header_len));
  if (dict.empty() || dict.front() != '{') fail(source, ": malformed .npy header: ", dict);

  std::string_view descr = dict_value(dict, "descr", source);
  if (descr.size() >= 2 && (descr.front() == '\'' || descr.front() == '"')) {
    descr = descr.substr(1, descr.size() - 2);
  }
  NpyHeader header;
  header.descr = std::string(descr);
  std::string_view order = dict_value(dict, "fortran_order", source);
  if (order == "True") {
    fail(source,
         ": .npy array is in Fortran order; only C order is supported "
         "(save it with numpy.ascontiguousarray)");
  }
  if (order != "False") fail(source, ": npy header 'fortran_order' is '", order, "'");

  std::string_view shape_text = dict_value(dict, "shape", source);
  if (shape_text.size() < 2 || shape_text.front() != '(' || shape_text.back() != ')') {
    fail(source, ": npy header 'shape' is not a tuple: ", shape_text);
  }
  std::string_view inner = shape_text.substr(1, shape_text.size() - 2);
  while (!trim(inner).empty()) {
    size_t comma = inner.find(',');
    std::string_view item = trim(inner.substr(0, comma));
    inner = comma == std::string_view::npos ? std::string_view() : inner.substr(comma + 1);
    if (item.empty()) continue;
    int64_t dim = 0;
    for (char c : item) {
      if (c == 'L') continue;  // Python 2 longs
      if (!std::isdigit(static_cast<unsigned char>(c)))
        fail(source, ": npy shape entry '", item, "' is not a number");
      dim = dim * 10 + (c - '0');
      if (dim > (int64_t{1} << 40)) fail(source, ": npy shape entry '", item, "' is too large");
    }
    header.shape.push_back(dim);
  }
  header.data_offset = offset + header_len;
  return header;
}

int64_t checked_count(std::string_view bytes, const NpyHeader& header, size_t item_size,
                      std::string_view source) {
  // The product of the dims must fit 64 bits, and the bytes it needs must be in the file.
  const int64_t count = checked_product(header.shape);
  const size_t available = bytes.size() - header.data_offset;
  if (count < 0 || static_cast<uint64_t>(count) > available / item_size) {
    fail(source, ": truncated .npy data: shape ", dims_text(header.shape), " needs ",
         count < 0 ? std::string("more than 2^63 values") : cat(count, " values"), " of ",
         item_size, " bytes, the file has ", available, " data bytes");
  }
  const size_t need = static_cast<size_t>(count) * item_size;
  if (available > need) {
    fail(source, ": .npy file has ", available - need, " bytes after the data its shape describes");
  }
  return count;
}

}  // namespace

NpyArray parse_npy(std::string_view bytes, std::string_view source, NpyU16 u16) {
  const NpyHeader header = parse_header(bytes, source);
  const std::string_view descr = header.descr;
  Dtype dtype;
  if (descr == "<f4" || descr == "=f4") {
    dtype = Dtype::kF32;
  } else if (descr == "<f2" || descr == "=f2") {
    dtype = Dtype::kF16;
  } else if (descr == "<u2" || descr == "=u2") {
    dtype = Dtype::kU16;
  } else {
    fail(source, ": unsupported .npy dtype '", descr,
         "' (supported: little-endian float32 <f4, float16 <f2, bfloat16 bits as uint16 <u2)");
  }
  NpyArray array;
  array.shape = header.shape;
  const size_t item_size = dtype == Dtype::kF32 ? 4 : 2;
  const int64_t count = checked_count(bytes, header, item_size, source);
  const size_t need = static_cast<size_t>(count) * item_size;
  const size_t data_offset = header.data_offset;
  array.data.resize(static_cast<size_t>(count));
  const char* data = bytes.data() + data_offset;
  static_assert(std::endian::native == std::endian::little,
                "npy reading assumes a little-endian host");
  if (need == 0) {
    // nothing to copy (an empty array)
  } else if (dtype == Dtype::kF32) {
    std::memcpy(array.data.data(), data, need);
  } else {
    for (int64_t i = 0; i < count; ++i) {
      uint16_t v;
      std::memcpy(&v, data + 2 * i, 2);
      array.data[i] = dtype == Dtype::kF16       ? half_to_float(v)
                      : u16 == NpyU16::kBFloat16 ? bfloat16_to_float(v)
                                                 : static_cast<float>(v);
    }
  }
  return array;
}

NpyArray read_npy(const std::filesystem::path& path, NpyU16 u16) {
  std::string bytes = read_file(path);
  return parse_npy(bytes, path.string(), u16);
}

static std::string npy_bytes_raw(std::string_view descr, const std::vector<int64_t>& dims,
                                 const void* data, size_t element_size, size_t count) {
  int64_t product = 1;
  for (int64_t d : dims) {
    if (d < 0) fail("write_npy: negative dimension ", d);
    product *= d;
  }
  if (product != static_cast<int64_t>(count)) {
    fail("write_npy: shape holds ", product, " values but data has ", count);
  }
  std::string shape = "(";
  for (size_t i = 0; i < dims.size(); ++i) {
    shape += std::to_string(dims[i]);
    shape += dims.size() == 1 ? "," : (i + 1 < dims.size() ? ", " : "");
  }
  shape += ")";
  std::string dict = cat("{'descr': '", descr, "', 'fortran_order': False, 'shape': ", shape, ", }");
  // Pad with spaces so the data starts on a 64-byte boundary; the header ends with a newline.
  size_t prefix = 10;
  size_t total = prefix + dict.size() + 1;
  bool v2 = false;
  if (((total + 63) / 64) * 64 - prefix > 65535) {
    v2 = true;
    prefix = 12;
    total = prefix + dict.size() + 1;
  }
  const size_t padded = (total + 63) / 64 * 64;
  dict.append(padded - total, ' ');
  dict.push_back('\n');
  std::string out("\x93NUMPY", 6);
  out.push_back(static_cast<char>(v2 ? 2 : 1));
  out.push_back(0);
  const size_t header_len = dict.size();
  if (v2) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((header_len >> (8 * i)) & 0xff));
  } else {
    out.push_back(static_cast<char>(header_len & 0xff));
    out.push_back(static_cast<char>((header_len >> 8) & 0xff));
  }
  out += dict;
  if (count > 0) out.append(static_cast<const char*>(data), count * element_size);
  return out;
}

std::string npy_bytes(const NpyArray& array) {
  return npy_bytes_raw("<f4", array.shape, array.data.data(), sizeof(float), array.data.size());
}

std::string npy_bytes_int32(const std::vector<int64_t>& shape, std::span<const int32_t> data) {
  return npy_bytes_raw("<i4", shape, data.data(), sizeof(int32_t), data.size());
}


NpyInt32Array parse_npy_int32(std::string_view bytes, std::string_view source) {
  const NpyHeader header = parse_header(bytes, source);
  const bool wide = header.descr == "<i8" || header.descr == "=i8";
  if (!wide && header.descr != "<i4" && header.descr != "=i4") {
    fail(source, ": unsupported .npy dtype '", header.descr,
         "' for integers (supported: little-endian int32 <i4, int64 <i8)");
  }
  const size_t item_size = wide ? 8 : 4;
  const int64_t count = checked_count(bytes, header, item_size, source);
  NpyInt32Array array;
  array.shape = header.shape;
  array.data.resize(static_cast<size_t>(count));
  const char* data = bytes.data() + header.data_offset;
  for (int64_t i = 0; i < count; ++i) {
    if (wide) {
      int64_t v;
      std::memcpy(&v, data + 8 * i, 8);
      if (v < INT32_MIN || v > INT32_MAX) {
        fail(source, ": value ", v, " at index ", i, " does not fit int32");
      }
      array.data[static_cast<size_t>(i)] = static_cast<int32_t>(v);
    } else {
      std::memcpy(&array.data[static_cast<size_t>(i)], data + 4 * i, 4);
    }
  }
  return array;
}

std::string npy_bytes_string(std::string_view ascii) {
  std::string utf32;
  for (char c : ascii) {
    if (static_cast<unsigned char>(c) > 0x7f) fail("write_npy: string is not ASCII: ", ascii);
    utf32.push_back(c);
    utf32.append(3, '\0');
  }
  if (ascii.empty()) utf32.assign(4, '\0');  // numpy stores "" as <U1 holding one NUL
  // A 0-d array: one element of 4 * chars bytes.
  return npy_bytes_raw(cat("<U", utf32.size() / 4), {}, utf32.data(), utf32.size(), 1);
}

std::string parse_npy_string(std::string_view bytes, std::string_view source) {
  const NpyHeader header = parse_header(bytes, source);
  const std::string_view descr = header.descr;
  if (descr.size() < 3 || (descr[0] != '<' && descr[0] != '=') || descr[1] != 'U') {
    fail(source, ": expected a unicode string (<U), got dtype '", descr, "'");
  }
  if (!header.shape.empty()) fail(source, ": expected a 0-d string, got shape ", dims_text(header.shape));
  size_t chars = 0;
  for (char c : descr.substr(2)) {
    if (!std::isdigit(static_cast<unsigned char>(c)) || chars > 1'000'000) {
      fail(source, ": malformed string dtype '", descr, "'");
    }
    chars = chars * 10 + static_cast<size_t>(c - '0');
  }
  NpyHeader one = header;
  one.shape = {static_cast<int64_t>(chars)};
  checked_count(bytes, one, 4, source);
  std::string text;
  for (size_t i = 0; i < chars; ++i) {
    uint32_t code;
    std::memcpy(&code, bytes.data() + header.data_offset + 4 * i, 4);
    if (code == 0) break;  // numpy pads shorter strings with NULs
    if (code > 0x7f) fail(source, ": string holds non-ASCII code point ", code);
    text.push_back(static_cast<char>(code));
  }
  return text;
}

void write_npy(const std::filesystem::path& path, const NpyArray& array) {
  std::string bytes;
  try {
    bytes = npy_bytes(array);
  } catch (const Error& e) {
    fail(path.string(), ": ", e.what());
  }
  write_file_atomic(path, bytes);
}

}  // namespace bhmoe
