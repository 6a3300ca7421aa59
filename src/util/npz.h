// NumPy .npz archives: a ZIP of .npy members, as numpy.savez writes and numpy.load reads. Traces
// (bhmoe trace) are written in this format so one `np.load(path)` gives every array by name.
//
// Writing stores the members uncompressed (as numpy.savez does), with CRC-32s, atomically.
// Reading accepts stored (uncompressed) members, ZIP64 size fields included (numpy.savez writes
// them); a compressed archive (numpy.savez_compressed) is an error that says to save with
// numpy.savez. Every offset and size is checked against the file before it is used.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bhmoe {

// CRC-32 (the ZIP/PNG polynomial 0xEDB88320, reflected, init and final xor 0xFFFFFFFF).
uint32_t crc32(std::string_view bytes);

// One member: its name without ".npy" and its complete .npy bytes (from npy_bytes, say).
using NpzMember = std::pair<std::string, std::string>;

// The archive's bytes. Member names must be unique, non-empty and free of '/'.
std::string npz_bytes(const std::vector<NpzMember>& members);
void write_npz(const std::filesystem::path& path, const std::vector<NpzMember>& members);

// Every member's .npy bytes by name (".npy" stripped); parse each with parse_npy. `source` names
// the archive in messages.
std::map<std::string, std::string> parse_npz(std::string_view bytes, std::string_view source);
std::map<std::string, std::string> read_npz(const std::filesystem::path& path);

}  // namespace bhmoe
