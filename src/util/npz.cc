#include "util/npz.h"

#include <array>
#include <limits>

#include "util/error.h"
#include "util/file.h"

namespace bhmoe {
namespace {

constexpr uint32_t kLocalHeader = 0x04034b50;
constexpr uint32_t kCentralHeader = 0x02014b50;
constexpr uint32_t kEndOfCentral = 0x06054b50;
constexpr uint32_t kZip64Marker = 0xffffffff;
constexpr size_t kEndOfCentralSize = 22;
// Members beyond this would need ZIP64 on the writing side, which traces never approach.
constexpr uint64_t kMaxMemberBytes = std::numeric_limits<uint32_t>::max() - 1;
constexpr size_t kMaxMembers = 1 << 16;

std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    table[i] = c;
  }
  return table;
}

void put16(std::string& out, uint32_t v) {
  out.push_back(static_cast<char>(v & 0xff));
  out.push_back(static_cast<char>((v >> 8) & 0xff));
}
void put32(std::string& out, uint32_t v) {
  put16(out, v & 0xffff);
  put16(out, v >> 16);
}

uint64_t get(std::string_view bytes, size_t at, int width) {
  uint64_t v = 0;
  for (int i = width - 1; i >= 0; --i) {
    v = (v << 8) | static_cast<uint8_t>(bytes[at + static_cast<size_t>(i)]);
  }
  return v;
}

}  // namespace

uint32_t crc32(std::string_view bytes) {
  static const std::array<uint32_t, 256> table = make_crc_table();
  uint32_t c = 0xffffffffu;
  for (char ch : bytes) c = table[(c ^ static_cast<uint8_t>(ch)) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

std::string npz_bytes(const std::vector<NpzMember>& members) {
  if (members.size() > kMaxMembers) fail("npz: ", members.size(), " members (at most ", kMaxMembers, ")");
  std::string out, central;
  std::map<std::string, int> seen;
  for (const auto& [name, data] : members) {
    if (name.empty() || name.find('/') != std::string::npos) {
      fail("npz: member name \"", name, "\" must be non-empty and contain no '/'");
    }
    if (seen[name]++) fail("npz: member \"", name, "\" appears twice");
    if (data.size() > kMaxMemberBytes || out.size() > kMaxMemberBytes) {
      fail("npz: member \"", name, "\" (", data.size(),
           " bytes) would need ZIP64; write fewer tokens per archive");
    }
    const std::string file_name = name + ".npy";
    const uint32_t crc = crc32(data);
    const uint32_t offset = static_cast<uint32_t>(out.size());
    // Local header: version 2.0, no flags, method 0 (stored), DOS time/date 0 (1980-01-01).
    put32(out, kLocalHeader);
    put16(out, 20);
    put16(out, 0);
    put16(out, 0);
    put16(out, 0);
    put16(out, 0x21);
    put32(out, crc);
    put32(out, static_cast<uint32_t>(data.size()));
    put32(out, static_cast<uint32_t>(data.size()));
    put16(out, static_cast<uint32_t>(file_name.size()));
    put16(out, 0);
    out += file_name;
    out += data;

    put32(central, kCentralHeader);
    put16(central, 20);  // made by
    put16(central, 20);  // needed
    put16(central, 0);
    put16(central, 0);
    put16(central, 0);
    put16(central, 0x21);
    put32(central, crc);
    put32(central, static_cast<uint32_t>(data.size()));
    put32(central, static_cast<uint32_t>(data.size()));
    put16(central, static_cast<uint32_t>(file_name.size()));
    put16(central, 0);  // extra
    put16(central, 0);  // comment
    put16(central, 0);  // disk
    put16(central, 0);  // internal attributes
    put32(central, 0);  // external attributes
    put32(central, offset);
    central += file_name;
  }
  if (out.size() > kMaxMemberBytes) fail("npz: archive of ", out.size(), " bytes would need ZIP64");
  const uint32_t central_offset = static_cast<uint32_t>(out.size());
  out += central;
  put32(out, kEndOfCentral);
  put16(out, 0);
  put16(out, 0);
  put16(out, static_cast<uint32_t>(members.size()));
  put16(out, static_cast<uint32_t>(members.size()));
  put32(out, static_cast<uint32_t>(central.size()));
  put32(out, central_offset);
  put16(out, 0);
  return out;
}

void write_npz(const std::filesystem::path& path, const std::vector<NpzMember>& members) {
  std::string bytes;
  try {
    bytes = npz_bytes(members);
  } catch (const Error& e) {
    fail(path.string(), ": ", e.what());
  }
  write_file_atomic(path, bytes);
}

std::map<std::string, std::string> parse_npz(std::string_view bytes, std::string_view source) {
  const size_t size = bytes.size();
  if (size < kEndOfCentralSize) fail(source, ": ", size, " bytes is too short for a .npz (ZIP) archive");
  // The end-of-central-directory record: the last 22 bytes, or earlier if a comment follows it.
  size_t eocd = std::string_view::npos;
  const size_t lowest = size >= kEndOfCentralSize + 0xffff ? size - kEndOfCentralSize - 0xffff : 0;
  for (size_t at = size - kEndOfCentralSize + 1; at-- > lowest;) {
    if (get(bytes, at, 4) == kEndOfCentral) {
      eocd = at;
      break;
    }
  }
  if (eocd == std::string_view::npos) fail(source, ": not a .npz (ZIP) archive (no end-of-central-directory record)");
  uint64_t entries = get(bytes, eocd + 10, 2);
  uint64_t central_size = get(bytes, eocd + 12, 4);
  uint64_t central_offset = get(bytes, eocd + 16, 4);
  if (central_offset == kZip64Marker || entries == 0xffff) {
    // ZIP64 end-of-central-directory locator, 20 bytes before the record.
    if (eocd < 20 || get(bytes, eocd - 20, 4) != 0x07064b50) fail(source, ": ZIP64 archive without its locator");
    const uint64_t z64 = get(bytes, eocd - 20 + 8, 8);
    if (z64 > size || size - z64 < 56 || get(bytes, z64, 4) != 0x06064b50) {
      fail(source, ": ZIP64 end-of-central-directory record is outside the file");
    }
    entries = get(bytes, z64 + 32, 8);
    central_size = get(bytes, z64 + 40, 8);
    central_offset = get(bytes, z64 + 48, 8);
  }
  if (central_offset > size || central_size > size - central_offset) {
    fail(source, ": central directory (offset ", central_offset, ", ", central_size,
         " bytes) runs past the end of the ", size, "-byte file");
  }
  if (entries > kMaxMembers || entries > central_size / 46) {
    fail(source, ": ", entries, " members do not fit a ", central_size, "-byte central directory");
  }
  std::map<std::string, std::string> members;
  size_t at = static_cast<size_t>(central_offset);
  const size_t central_end = static_cast<size_t>(central_offset + central_size);
  for (uint64_t i = 0; i < entries; ++i) {
    if (central_end - at < 46 || get(bytes, at, 4) != kCentralHeader) {
      fail(source, ": central directory entry ", i, " is malformed");
    }
    const uint64_t method = get(bytes, at + 10, 2);
    const uint32_t crc = static_cast<uint32_t>(get(bytes, at + 16, 4));
    uint64_t packed = get(bytes, at + 20, 4);
    uint64_t unpacked = get(bytes, at + 24, 4);
    const size_t name_len = get(bytes, at + 28, 2);
    const size_t extra_len = get(bytes, at + 30, 2);
    const size_t comment_len = get(bytes, at + 32, 2);
    uint64_t local = get(bytes, at + 42, 4);
    if (central_end - at - 46 < name_len + extra_len + comment_len) {
      fail(source, ": central directory entry ", i, " runs past the directory");
    }
    std::string name(bytes.substr(at + 46, name_len));
    for (char c : name) {
      // Names end up in messages and dictionary keys: control bytes (a NUL would cut a message)
      // are refused rather than carried along.
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
        fail(source, ": member ", i, " has a control character in its name");
      }
    }
    // ZIP64 extended information: the 8-byte values that replace 0xffffffff fields, in order.
    std::string_view extra = bytes.substr(at + 46 + name_len, extra_len);
    for (size_t e = 0; e + 4 <= extra.size();) {
      const uint64_t id = get(extra, e, 2), len = get(extra, e + 2, 2);
      if (len > extra.size() - e - 4) break;
      if (id == 1) {
        size_t f = e + 4;
        auto take = [&](uint64_t& field) {
          if (field == kZip64Marker && f + 8 <= e + 4 + len) {
            field = get(extra, f, 8);
            f += 8;
          }
        };
        take(unpacked);
        take(packed);
        take(local);
      }
      e += 4 + len;
    }
    at += 46 + name_len + extra_len + comment_len;
    if (method != 0) {
      fail(source, ": member \"", name, "\" is compressed (method ", method,
           "); bhmoe reads uncompressed archives: save with numpy.savez, not savez_compressed");
    }
    if (packed != unpacked) fail(source, ": member \"", name, "\" stored with different sizes");
    if (local > size || size - local < 30 || get(bytes, local, 4) != kLocalHeader) {
      fail(source, ": member \"", name, "\": local header at offset ", local, " is missing");
    }
    const uint64_t data_at = local + 30 + get(bytes, local + 26, 2) + get(bytes, local + 28, 2);
    if (data_at > size || unpacked > size - data_at) {
      fail(source, ": member \"", name, "\" (", unpacked, " bytes at offset ", data_at,
           ") runs past the end of the ", size, "-byte file");
    }
    std::string data(bytes.substr(static_cast<size_t>(data_at), static_cast<size_t>(unpacked)));
    if (crc32(data) != crc) fail(source, ": member \"", name, "\" fails its CRC-32 check (corrupt file)");
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name.resize(name.size() - 4);
    if (members.count(name)) fail(source, ": member \"", name, "\" appears twice");
    members.emplace(std::move(name), std::move(data));
  }
  return members;
}

std::map<std::string, std::string> read_npz(const std::filesystem::path& path) {
  const std::string bytes = read_regular_file(path);
  return parse_npz(bytes, path.string());
}

}  // namespace bhmoe
