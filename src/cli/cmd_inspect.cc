// bhmoe inspect: what a checkpoint directory holds (config, parameter counts, dtypes, files,
// layout), or what a GGUF file holds (metadata, tensors by type).
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/gguf_checkpoint.h"
#include "model/safetensors.h"
#include "util/error.h"
#include "util/gguf.h"

namespace {

using namespace bhmoe;
namespace fs = std::filesystem;

std::string with_units(double count) {
  char text[32];
  if (count >= 1e9) {
    std::snprintf(text, sizeof text, "%.2f B", count / 1e9);
  } else if (count >= 1e6) {
    std::snprintf(text, sizeof text, "%.2f M", count / 1e6);
  } else if (count >= 1e3) {
    std::snprintf(text, sizeof text, "%.2f K", count / 1e3);
  } else {
    std::snprintf(text, sizeof text, "%.0f", count);
  }
  return text;
}

// --check-weights: every value of every floating-point tensor must be finite. The first NaN or
// infinity is an error naming the file, the tensor and the element.
void report_non_finite(const std::optional<model::NonFiniteValue>& bad) {
  if (!bad) return;
  const char* value = std::isnan(bad->value) ? "nan" : bad->value > 0 ? "inf" : "-inf";
  fail("--check-weights: ", bad->file.string(), ": tensor ", bad->tensor, " element ",
       model::element_index_text(bad->shape, bad->index), " (flat index ", bad->index, ") is ",
       value, " (the first non-finite value; the weights are corrupt)");
}

// A GGUF file: the container as read and validated (util/gguf.h): version, alignment, every
// metadata key with its value (arrays abbreviated), and the tensors by ggml type.
int inspect_gguf(const std::string& path, bool as_json, bool weights) {
  const GgufFile g = GgufFile::open(path);
  if (weights) report_non_finite(model::find_non_finite_in(g));
  struct TypeTotal {
    size_t tensors = 0;
    uint64_t bytes = 0;
    int64_t elements = 0;
  };
  std::map<std::string, TypeTotal> by_type;
  for (const GgufTensor& t : g.tensors()) {
    TypeTotal& total = by_type[ggml_type_name(t.type)];
    ++total.tensors;
    total.bytes += t.nbytes;
    total.elements += t.numel();
  }
  const std::string arch = g.get_string_or_none("general.architecture").value_or("(none)");
  if (as_json) {
    nlohmann::json out;
    out["model"] = path;
    out["format"] = "gguf";
    out["version"] = g.version();
    out["alignment"] = g.alignment();
    out["bytes"] = g.size();
    out["architecture"] = arch;
    out["metadata"] = nlohmann::json::object();
    for (const std::string& key : g.keys()) out["metadata"][key] = g.describe(key);
    out["tensor_types"] = nlohmann::json::object();
    for (const auto& [type, total] : by_type) {
      out["tensor_types"][type] = {
          {"tensors", total.tensors}, {"bytes", total.bytes}, {"elements", total.elements}};
    }
    out["tensors"] = nlohmann::json::array();
    for (const GgufTensor& t : g.tensors()) {
      out["tensors"].push_back({{"name", t.name},
                                {"type", ggml_type_name(t.type)},
                                {"ne", t.ne},
                                {"offset", t.offset},
                                {"bytes", t.nbytes}});
    }
    if (weights) out["weights_finite"] = true;
    std::cout << out.dump() << "\n";
    return 0;
  }
  std::printf("model        %s\n", path.c_str());
  std::printf("format       GGUF v%u, alignment %ju, %.3f GB\n", g.version(),
              static_cast<uintmax_t>(g.alignment()), static_cast<double>(g.size()) / 1e9);
  std::printf("architecture %s\n", arch.c_str());
  // What bhmoe makes of it: the family and native routing, or why it would refuse the file.
  try {
    const model::ModelConfig c = model::gguf_model_config(g);
    const char* attention = c.mla() ? ", latent attention, pairwise RoPE on the rope dims"
                            : c.rope_interleaved ? ", pairwise RoPE (llama.cpp's permuted q/k rows)"
                                                 : "";
    std::printf("runs as      %s, native %s%s\n", c.model_type.c_str(),
                c.native_router_spec().c_str(), attention);
  } catch (const Error& e) {
    std::printf("runs as      not runnable: %s\n", e.what());
  }
  std::printf("metadata     %zu keys\n", g.keys().size());
  for (const std::string& key : g.keys()) {
    std::printf("  %-44s %s\n", key.c_str(), g.describe(key).c_str());
  }
  std::printf("tensors      %zu\n", g.tensors().size());
  for (const auto& [type, total] : by_type) {
    std::printf("  %-8s %6zu tensors  %14ju bytes  %s parameters\n", type.c_str(), total.tensors,
                static_cast<uintmax_t>(total.bytes),
                with_units(static_cast<double>(total.elements)).c_str());
  }
  if (weights)
    std::printf("values       all finite (checked every tensor of a type bhmoe reads)\n");
  return 0;
}

int inspect(const std::string& dir, bool as_json, bool weights) {
  // A GGUF file is recognised by its content (the magic), whatever its name.
  if (is_gguf_file(dir)) return inspect_gguf(dir, as_json, weights);
  auto checkpoint = model::Checkpoint::open(dir);
  if (weights) report_non_finite(checkpoint->find_non_finite());
  const model::ModelConfig& c = checkpoint->config();
  const model::ParameterCounts p = model::count_parameters(c);
  std::set<std::string> dtypes;
  for (const auto& f : checkpoint->weight_files()) dtypes.insert(f.dtypes.begin(), f.dtypes.end());
  fs::path tokenizer = fs::path(dir) / "tokenizer.json";
  const bool has_tokenizer = fs::exists(tokenizer);
  const char* layout = model::expert_layout_name(checkpoint->expert_layout());

  if (as_json) {
    nlohmann::json out;
    out["model"] = dir;
    out["config"] = model::to_json(c);
    out["native_router"] = c.native_router_spec();
    out["parameters"] = {{"total", p.total},          {"active", p.active},
                         {"embedding", p.embedding},  {"lm_head", p.lm_head},
                         {"dense", p.dense},          {"experts", p.experts},
                         {"per_expert", p.per_expert}};
    out["dtypes"] = dtypes;
    out["expert_layout"] = layout;
    out["weight_bytes"] = checkpoint->mapped_bytes();
    out["files"] = nlohmann::json::array();
    for (const auto& f : checkpoint->weight_files()) {
      out["files"].push_back({{"name", f.path.filename().string()},
                              {"bytes", f.bytes},
                              {"tensors", f.tensors},
                              {"dtypes", f.dtypes}});
    }
    out["tokenizer"] = has_tokenizer ? nlohmann::json{{"name", "tokenizer.json"},
                                                      {"bytes", fs::file_size(tokenizer)}}
                                     : nlohmann::json(nullptr);
    if (weights) out["weights_finite"] = true;
    std::cout << out.dump() << "\n";
    return 0;
  }

  std::printf("model        %s\n", dir.c_str());
  std::printf("type         %s, %d layers, hidden %d, %d heads (%d kv, head_dim %d)\n",
              c.model_type.c_str(), c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads,
              c.head_dim);
  std::printf("experts      %d per MoE layer, intermediate %d, native %s", c.num_experts,
              c.intermediate_size, c.native_router_spec().c_str());
  if (c.shared_expert_intermediate_size > 0) {
    std::printf("; a shared expert (intermediate %d, %s, always computed)",
                c.shared_expert_intermediate_size,
                c.shared_expert_gated ? "sigmoid-gated" : "ungated");
  }
  if (c.routed_scaling_factor != 1.0) std::printf("; routed weights x %g", c.routed_scaling_factor);
  std::printf("\n");
  if (c.first_k_dense_replace > 0) {
    std::printf(
        "dense        the first %d layer(s) a dense MLP (intermediate %d, no router); "
        "routing layers 0..%d are layers %d..%d\n",
        c.first_k_dense_replace, c.dense_intermediate_size, c.num_routed_layers() - 1,
        c.first_k_dense_replace, c.num_layers - 1);
  }
  if (c.mla()) {
    std::printf("latent attn  kv_lora_rank %d, qk_nope %d, qk_rope %d, v_head %d%s\n",
                c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim,
                c.yarn ? cat(", YaRN factor ", c.yarn->factor, " over ",
                             c.yarn->original_max_position_embeddings, " positions")
                             .c_str()
                       : "");
  }
  std::printf("vocab        %d, tied embeddings %s, eos %s, pad %s, bos %s\n", c.vocab_size,
              c.tie_word_embeddings ? "yes" : "no",
              c.eos_token_id ? std::to_string(*c.eos_token_id).c_str() : "none",
              c.pad_token_id ? std::to_string(*c.pad_token_id).c_str() : "none",
              c.bos_token_id ? std::to_string(*c.bos_token_id).c_str() : "none");
  const char* qk_norm = c.qk_norm == model::QkNorm::Full      ? "over the projection"
                        : c.qk_norm == model::QkNorm::PerHead ? "per head"
                                                              : "none";
  std::printf(
      "attention    rope_theta %g, rms_norm_eps %g, q/k norm %s, q/k/v bias %s, clip_qkv %s, max "
      "positions %d\n",
      c.rope_theta, c.rms_norm_eps, qk_norm, c.qkv_bias ? "yes" : "no",
      c.clip_qkv ? std::to_string(*c.clip_qkv).c_str() : "none", c.max_position_embeddings);
  std::printf("parameters   total %lld (%s), active per token %lld (%s) at top-%d\n",
              static_cast<long long>(p.total), with_units(p.total).c_str(),
              static_cast<long long>(p.active), with_units(p.active).c_str(),
              c.num_experts_per_tok);
  std::printf(
      "             embedding %s, lm_head %s, attention+norms+routers+dense MLPs %s, experts %s "
      "(%s "
      "each)\n",
      with_units(p.embedding).c_str(), with_units(p.lm_head).c_str(), with_units(p.dense).c_str(),
      with_units(p.experts).c_str(), with_units(p.per_expert).c_str());
  std::string dtype_list;
  for (const auto& d : dtypes) dtype_list += (dtype_list.empty() ? "" : ", ") + d;
  std::printf("dtypes       %s\n", dtype_list.c_str());
  std::printf("experts as   %s tensors\n", layout);
  std::printf("weights      %zu file(s), %.3f GB\n", checkpoint->weight_files().size(),
              checkpoint->mapped_bytes() / 1e9);
  for (const auto& f : checkpoint->weight_files()) {
    std::string file_dtypes;
    for (const auto& d : f.dtypes) file_dtypes += (file_dtypes.empty() ? "" : ",") + d;
    std::printf("  %-40s %15zu bytes  %5zu tensors  %s\n", f.path.filename().c_str(), f.bytes,
                f.tensors, file_dtypes.c_str());
  }
  if (weights) std::printf("values       all finite (checked every floating-point tensor)\n");
  if (has_tokenizer) {
    std::printf("tokenizer    tokenizer.json, %ju bytes\n",
                static_cast<uintmax_t>(fs::file_size(tokenizer)));
  } else {
    std::printf("tokenizer    none (no tokenizer.json)\n");
  }
  return 0;
}

cli::CommandRegistration inspect_command{
    "inspect",
    "Show a checkpoint's config, parameter counts, dtypes, files and expert layout, or a GGUF "
    "file's metadata and tensors",
    [](CLI::App& app) {
      auto dir = std::make_shared<std::string>();
      auto as_json = std::make_shared<bool>(false);
      auto weights = std::make_shared<bool>(false);
      app.add_option("--model", *dir, "Checkpoint directory or GGUF file")->required();
      app.add_flag("--json", *as_json, "Print one JSON object");
      app.add_flag("--check-weights", *weights,
                   "Read every weight and fail (exit 1) at the first NaN or infinity, naming the "
                   "tensor and element");
      return [dir, as_json, weights]() { return inspect(*dir, *as_json, *weights); };
    }};

}  // namespace
