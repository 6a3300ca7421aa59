// The trace file: a model::Trace as a NumPy .npz archive, so that one line of Python reads it:
//
//   t = numpy.load("trace.npz")
//   t["tokens"]         int32   [T]            token ids traced
//   t["ids"]            int32   [T, L, max_k]  selected experts, highest probability first, -1 pad
//   t["weights"]        float32 [T, L, max_k]  their mixing weights, 0 pad
//   t["counts"]         int32   [T, L]         experts selected per token and layer
//   t["router_logits"]  float32 [T, L, N]      raw router logits (only when recorded)
//   str(t["router"])    the canonical router spec that made the trace
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "model/verbs.h"

namespace bhmoe::model {

// The trace's router logits [T, L, N] laid out per layer, [L, T, N] (the layout of
// `bhmoe logits --router-logits`). Empty when the trace has none.
std::vector<float> router_logits_by_layer(const Trace& trace);

void write_trace(const std::filesystem::path& path, const Trace& trace,
                 const std::string& router_spec);

struct TraceFile {
  Trace trace;
  std::string router_spec;
};
// Reads a file written by write_trace (or by numpy.savez with the same names, dtypes and shapes).
// Every array's dtype and shape is checked against the others; errors name the file and array.
TraceFile read_trace(const std::filesystem::path& path);

}  // namespace bhmoe::model
