// Fuzzes config.json reading: strict JSON parsing, then parse_config. On success the limits the
// engine relies on must hold, and to_json must read back to the same configuration.
#include <cmath>

#include "fuzz/fuzz_common.h"
#include "model/config.h"
#include "util/json.h"

using namespace bhmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  model::ModelConfig c;
  try {
    c = model::parse_config(parse_json(text, "config.json"), "config.json");
  } catch (const Error& e) {
    fuzz::check_message(e, text);
    return 0;
  }
  if (c.num_layers < 1 || c.num_layers > 4096) fuzz::crash("num_layers out of range", "");
  if (c.num_experts < 1 || c.num_experts > 1024) fuzz::crash("num_experts out of range", "");
  if (c.num_experts_per_tok > c.num_experts) fuzz::crash("top-k beyond experts", "");
  if (c.head_dim * c.num_heads != c.hidden_size) fuzz::crash("head_dim inconsistent", "");
  if (!(c.rms_norm_eps > 0.0f) || !std::isfinite(c.rms_norm_eps)) fuzz::crash("rms_norm_eps", text);
  if (c.clip_qkv && (!(*c.clip_qkv > 0.0f) || !std::isfinite(*c.clip_qkv)))
    fuzz::crash("clip_qkv", text);
  // What was accepted must write out and read back unchanged (an error here is a finding too).
  model::ModelConfig back;
  try {
    back = model::parse_config(model::to_json(c), "round trip");
  } catch (const Error& e) {
    fuzz::crash("to_json output rejected", e.what());
  }
  if (model::to_json(back) != model::to_json(c)) fuzz::crash("to_json round trip", text);
  (void)model::count_parameters(c);
  return 0;
}
