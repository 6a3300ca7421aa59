// Fuzzes parse_npz and the trace members' parsers. On success every member is a complete .npy
// whose parse, when it succeeds, holds exactly product(shape) values.
#include "fuzz/fuzz_common.h"
#include "util/npy.h"
#include "util/npz.h"

using namespace bhmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    const auto members = parse_npz(bytes, "x.npz");
    // Writing what was read and reading it back gives the same members.
    std::vector<NpzMember> list(members.begin(), members.end());
    if (parse_npz(npz_bytes(list), "again.npz") != members) fuzz::crash("round trip differs", "");
    for (const auto& [name, npy] : members) {
      try {
        NpyArray a = parse_npy(npy, name);
        if (a.size() != static_cast<int64_t>(a.data.size())) fuzz::crash("size mismatch", name);
      } catch (const Error& e) {
        fuzz::check_message(e, bytes);  // messages quote the member name, from the archive
      }
      try {
        NpyInt32Array a = parse_npy_int32(npy, name);
        int64_t n = 1;
        for (int64_t d : a.shape) n *= d;
        if (n != static_cast<int64_t>(a.data.size())) fuzz::crash("int32 size mismatch", name);
      } catch (const Error& e) {
        fuzz::check_message(e, bytes);  // messages quote the member name, from the archive
      }
      try {
        parse_npy_string(npy, name);
      } catch (const Error& e) {
        fuzz::check_message(e, bytes);  // messages quote the member name, from the archive
      }
    }
  } catch (const Error& e) {
    fuzz::check_message(e, bytes);
  }
  return 0;
}
