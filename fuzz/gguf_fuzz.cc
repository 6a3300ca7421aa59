// Fuzzes GgufFile::parse. On success every tensor lies inside the input, aligned, with the bytes its
// type and shape take, and every metadata key can be described and read by each typed getter
// (which either returns or raises bhmoe::Error).
#include "fuzz/fuzz_common.h"
#include "util/gguf.h"

using namespace bhmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    const GgufFile g = GgufFile::parse(bytes, "x.gguf");
    for (const GgufTensor& t : g.tensors()) {
      const uint8_t* begin = reinterpret_cast<const uint8_t*>(bytes.data());
      if (t.data < begin || t.data + t.nbytes > begin + size) fuzz::crash("tensor outside the input", t.name);
      if ((t.data - begin) % g.alignment() != 0) fuzz::crash("tensor not aligned", t.name);
      if (const auto layout = ggml_type_layout(t.type)) {
        if (t.nbytes != static_cast<uint64_t>(t.numel() / layout->block_elements * layout->block_bytes))
          fuzz::crash("tensor size differs from type x shape", t.name);
      }
      if (g.find_tensor(t.name) != &t) fuzz::crash("tensor lookup", t.name);
    }
    for (const std::string& key : g.keys()) {
      if (!g.find(key)) fuzz::crash("key lookup", key);
      g.describe(key);
      auto attempt = [&](auto&& call) {
        try {
          call();
        } catch (const Error& e) {
          fuzz::check_message(e, bytes);
        }
      };
      attempt([&] { g.get_uint(key); });
      attempt([&] { g.get_real(key); });
      attempt([&] { g.get_string(key); });
      attempt([&] { g.get_bool_or(key, false); });
      attempt([&] { g.get_string_array(key); });
      attempt([&] { g.get_int_array(key); });
      attempt([&] { g.get_real_array(key); });
    }
  } catch (const Error& e) {
    fuzz::check_message(e, bytes);
  }
  return 0;
}
