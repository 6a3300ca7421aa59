// Router-logit files as `route` and `calibrate-logits` read them: a .npy of [T, N] (one layer) or
// [layers, T, N] (`bhmoe logits --router-logits`), or a .npz trace holding router_logits [T, L, N]
// (`bhmoe trace --router-logits`), which is brought to [L, T, N].
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/trace_file.h"
#include "util/error.h"
#include "util/npy.h"

namespace bhmoe::cli {

struct RouterLogitsFile {
  bool layered = false;  // [L, T, N] (else one layer's [T, N], layers == 1)
  bool flat = false;     // a 1-D dump: one row of all its values, whose row width is unknown
  int64_t layers = 1, tokens = 0, experts = 0;
  std::vector<float> data;  // [layers, tokens, experts]

  const float* layer(int64_t l) const { return data.data() + l * tokens * experts; }
};

inline std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s;
  for (int64_t d : shape) s += (s.empty() ? "" : ", ") + std::to_string(d);
  return "[" + s + "]";
}

inline RouterLogitsFile read_router_logits(const std::string& path) {
  RouterLogitsFile f;
  if (path.size() > 4 && path.compare(path.size() - 4, 4, ".npz") == 0) {
    model::TraceFile trace = model::read_trace(path);
    const model::Trace& t = trace.trace;
    if (t.router_logits.empty()) {
      fail(path, ": the trace has no router_logits (make it with `bhmoe trace --router-logits`)");
    }
    f.layered = true;
    f.layers = t.num_layers;
    f.tokens = t.num_tokens;
    f.experts = t.num_experts;
    f.data = model::router_logits_by_layer(t);
    return f;
  }
  NpyArray a = read_npy(path);
  if (a.rank() == 1) {
    f.flat = true;
    a.shape.insert(a.shape.begin(), 1);
  }
  if (a.rank() == 2) {
    f.tokens = a.dim(0);
    f.experts = a.dim(1);
  } else if (a.rank() == 3) {
    f.layered = true;
    f.layers = a.dim(0);
    f.tokens = a.dim(1);
    f.experts = a.dim(2);
  } else {
    fail(path, ": expected router logits [T, N] or [layers, T, N], got ", shape_text(a.shape));
  }
  f.data = std::move(a.data);
  return f;
}

}  // namespace bhmoe::cli
