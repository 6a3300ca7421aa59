// Fuzzes SafetensorsFile::open on whole files (length prefix, JSON header, data region). On
// success the format's invariants must hold: tensors in offset order, covering the data region
// exactly, each tensor's bytes matching its shape and dtype, and unique names.
#include <set>

#include "fuzz/fuzz_common.h"
#include "model/safetensors.h"

using namespace bhmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  static fuzz::MemFile file;
  const std::string& path = file.write(data, size);
  try {
    model::SafetensorsFile st = model::SafetensorsFile::open(path);
    uint64_t covered = 0;
    std::set<std::string> names;
    for (const auto& t : st.tensors()) {
      if (t.begin != covered) fuzz::crash("tensors not contiguous", t.name);
      if (!names.insert(t.name).second) fuzz::crash("duplicate tensor", t.name);
      uint64_t bytes = model::safetensors_dtype_size(t.dtype);
      for (int64_t d : t.shape) bytes *= static_cast<uint64_t>(d);
      if (bytes != t.nbytes()) fuzz::crash("bytes do not match the shape", t.name);
      if (st.find(t.name) != &t) fuzz::crash("find() disagrees", t.name);
      covered = t.end;
    }
    if (8 + st.header_size() + covered != st.file_size()) fuzz::crash("data not covered", path);
  } catch (const Error& e) {
    fuzz::check_message(e, input);
  }
  return 0;
}
