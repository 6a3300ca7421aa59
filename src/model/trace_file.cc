#include "model/trace_file.h"

#include <algorithm>

#include "util/error.h"
#include "util/npy.h"
#include "util/npz.h"

namespace bhmoe::model {
namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s;
  for (int64_t d : shape) s += (s.empty() ? "" : ", ") + std::to_string(d);
  return "[" + s + "]";
}

void expect_shape(const std::vector<int64_t>& got, const std::vector<int64_t>& want,
                  const std::string& source, const char* name) {
  if (got != want) {
    fail(source, ": array '", name, "' has shape ", shape_text(got), "; the trace needs ",
         shape_text(want));
  }
}

const std::string& member(const std::map<std::string, std::string>& members,
                          const std::string& source, const char* name) {
  auto it = members.find(name);
  if (it == members.end()) fail(source, ": no array '", name, "' (not a bhmoe trace?)");
  return it->second;
}

}  // namespace

std::vector<float> router_logits_by_layer(const Trace& t) {
  const int64_t T = t.num_tokens, L = t.num_layers, N = t.num_experts;
  std::vector<float> out(t.router_logits.size());
  if (out.empty()) return out;
  for (int64_t i = 0; i < T; ++i) {
    for (int64_t l = 0; l < L; ++l) {
      std::copy_n(t.router_logits.data() + (i * L + l) * N, N, out.data() + (l * T + i) * N);
    }
  }
  return out;
}

void write_trace(const std::filesystem::path& path, const Trace& trace,
                 const std::string& router_spec) {
  const int64_t T = trace.num_tokens, L = trace.num_layers, K = trace.max_k;
  std::vector<NpzMember> members;
  members.emplace_back("tokens", npy_bytes_int32({T}, trace.tokens));
  members.emplace_back("ids", npy_bytes_int32({T, L, K}, trace.ids));
  NpyArray weights{{T, L, K}, trace.weights};
  members.emplace_back("weights", npy_bytes(weights));
  members.emplace_back("counts", npy_bytes_int32({T, L}, trace.counts));
  if (!trace.router_logits.empty()) {
    NpyArray logits{{T, L, trace.num_experts}, trace.router_logits};
    members.emplace_back("router_logits", npy_bytes(logits));
  }
  members.emplace_back("router", npy_bytes_string(router_spec));
  write_npz(path, members);
}

TraceFile read_trace(const std::filesystem::path& path) {
  const std::string source = path.string();
  const auto members = read_npz(path);
  TraceFile file;
  Trace& t = file.trace;
  NpyInt32Array tokens = parse_npy_int32(member(members, source, "tokens"), source + ":tokens");
  NpyInt32Array ids = parse_npy_int32(member(members, source, "ids"), source + ":ids");
  NpyArray weights = parse_npy(member(members, source, "weights"), source + ":weights");
  NpyInt32Array counts = parse_npy_int32(member(members, source, "counts"), source + ":counts");
  if (tokens.shape.size() != 1) fail(source, ": array 'tokens' must be 1-d [T], got ", shape_text(tokens.shape));
  if (ids.shape.size() != 3) fail(source, ": array 'ids' must be [T, L, max_k], got ", shape_text(ids.shape));
  t.num_tokens = tokens.shape[0];
  if (ids.shape[1] < 1 || ids.shape[1] > 4096) fail(source, ": ", ids.shape[1], " layers is outside [1, 4096]");
  if (ids.shape[2] < 1 || ids.shape[2] > 4096) fail(source, ": max_k ", ids.shape[2], " is outside [1, 4096]");
  t.num_layers = static_cast<int>(ids.shape[1]);
  t.max_k = static_cast<int>(ids.shape[2]);
  expect_shape(ids.shape, {t.num_tokens, t.num_layers, t.max_k}, source, "ids");
  expect_shape(weights.shape, {t.num_tokens, t.num_layers, t.max_k}, source, "weights");
  expect_shape(counts.shape, {t.num_tokens, t.num_layers}, source, "counts");
  for (size_t i = 0; i < counts.data.size(); ++i) {
    if (counts.data[i] < 0 || counts.data[i] > t.max_k) {
      fail(source, ": counts[", i / static_cast<size_t>(t.num_layers), ", ",
           i % static_cast<size_t>(t.num_layers), "] = ", counts.data[i], " is outside [0, ",
           t.max_k, "]");
    }
  }
  if (members.count("router_logits")) {
    NpyArray logits = parse_npy(members.at("router_logits"), source + ":router_logits");
    if (logits.shape.size() != 3 || logits.shape[2] < 1) {
      fail(source, ": array 'router_logits' must be [T, L, N], got ", shape_text(logits.shape));
    }
    expect_shape(logits.shape, {t.num_tokens, t.num_layers, logits.shape[2]}, source, "router_logits");
    t.num_experts = static_cast<int>(logits.shape[2]);
    t.router_logits = std::move(logits.data);
  }
  if (members.count("router")) file.router_spec = parse_npy_string(members.at("router"), source + ":router");
  t.tokens = std::move(tokens.data);
  t.ids = std::move(ids.data);
  t.weights = std::move(weights.data);
  t.counts = std::move(counts.data);
  return file;
}

}  // namespace bhmoe::model
