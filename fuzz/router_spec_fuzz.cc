// Fuzzes router spec strings. A spec that parses must print canonically and read back to the
// same canonical text; resolving it against N = 1, 8 and 64 experts either gives a spec within N
// or an Error.
#include "fuzz/fuzz_common.h"
#include "routing/spec.h"

using namespace bhmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  routing::RouterSpec spec;
  try {
    spec = routing::parse_router_spec(text);
  } catch (const Error& e) {
    fuzz::check_message(e, text);
    return 0;
  }
  const std::string canonical = routing::canonical_spec(spec);
  routing::RouterSpec again;
  try {
    again = routing::parse_router_spec(canonical);
  } catch (const Error& e) {
    fuzz::crash("canonical spec does not parse", e.what());
  }
  if (routing::canonical_spec(again) != canonical) fuzz::crash("canonical round trip", canonical);
  for (int n : {1, 8, 64}) {
    try {
      routing::RouterSpec r = routing::resolve_router_spec(spec, n);
      if (routing::max_count(r) > n || routing::min_count(r) < 1 ||
          routing::min_count(r) > routing::max_count(r))
        fuzz::crash("resolved spec out of range", canonical);
    } catch (const Error& e) {
      fuzz::check_message(e, text);
    }
  }
  return 0;
}
