// Fuzzes parse_npy. On success the array must hold exactly product(shape) values.
#include "fuzz/fuzz_common.h"
#include "util/npy.h"

using namespace bhmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  for (NpyU16 mode : {NpyU16::kBFloat16, NpyU16::kInteger}) {
    try {
      NpyArray a = parse_npy(bytes, "x.npy", mode);
      if (a.size() != static_cast<int64_t>(a.data.size())) fuzz::crash("size mismatch", "");
    } catch (const Error& e) {
      fuzz::check_message(e, bytes);
    }
  }
  return 0;
}
