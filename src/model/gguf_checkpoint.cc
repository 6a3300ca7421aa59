#include "model/gguf_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "kernels/ops.h"
#include "kernels/quant.h"
#include "model/tensor_names.h"
#include "util/error.h"

namespace bhmoe::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::optional<kernels::DType> kernel_dtype_of(uint32_t ggml_type) {
  const std::optional<GgufType> t = gguf_type(ggml_type);
  if (!t) return std::nullopt;
  return t->dtype;
}

std::string ne_text(const std::vector<int64_t>& ne) {
  std::string text = "{";
  for (size_t i = 0; i < ne.size(); ++i) text += (i ? ", " : "") + std::to_string(ne[i]);
  return text + "}";
}

// The config.json keys a GGUF file's "<arch>.<gguf>" keys give, in OLMoE's spelling (config_key()
// renames them for the other families). A config key listed twice takes the first present (the
// expert width: expert_feed_forward_length, else feed_forward_length, which in Qwen files is the
// dense width and so is not read for them). Checks that mention several keys name the first
// listed: the expert count used comes before the expert count.
struct ConfigKey {
  const char* config;
  const char* gguf;
  enum Kind { kCount, kReal, kBool } kind;
};
constexpr ConfigKey kConfigKeys[] = {
    {"num_experts_per_tok", "expert_used_count", ConfigKey::kCount},
    {"num_experts", "expert_count", ConfigKey::kCount},
    {"hidden_size", "embedding_length", ConfigKey::kCount},
    {"num_hidden_layers", "block_count", ConfigKey::kCount},
    {"num_attention_heads", "attention.head_count", ConfigKey::kCount},
    {"num_key_value_heads", "attention.head_count_kv", ConfigKey::kCount},
    {"intermediate_size", "expert_feed_forward_length", ConfigKey::kCount},
    {"intermediate_size", "feed_forward_length", ConfigKey::kCount},
    {"shared_expert_intermediate_size", "expert_shared_feed_forward_length", ConfigKey::kCount},
    {"max_position_embeddings", "context_length", ConfigKey::kCount},
    {"rope_theta", "rope.freq_base", ConfigKey::kReal},
    {"rms_norm_eps", "attention.layer_norm_rms_epsilon", ConfigKey::kReal},
    {"norm_topk_prob", "expert_weights_norm", ConfigKey::kBool},
    {"head_dim", "attention.key_length", ConfigKey::kCount},
};

// The config.json spelling of an OLMoE-spelt key in `family`.
std::string config_key(std::string_view key, Family family) {
  const bool qwen = family == Family::Qwen2Moe || family == Family::Qwen3Moe;
  const bool deepseek = family == Family::DeepseekV2;
  if (key == "intermediate_size" && (qwen || deepseek)) return "moe_intermediate_size";
  if (key == "num_experts" && family == Family::Mixtral) return "num_local_experts";
  if (key == "num_experts" && deepseek) return "n_routed_experts";
  return std::string(key);
}

// The family of a GGUF general.architecture; llama files are Mixtral only when they have experts.
Family gguf_family(const GgufFile& f) {
  const std::string& arch = f.get_string("general.architecture");
  for (Family family :
       {Family::Olmoe, Family::Qwen2Moe, Family::Qwen3Moe, Family::Mixtral, Family::DeepseekV2}) {
    if (arch != hf::gguf_architecture(family)) continue;
    if (family == Family::Mixtral && !f.find("llama.expert_count")) {
      fail(f.source(),
           ": general.architecture = \"llama\" without llama.expert_count: a dense "
           "model; bhmoe runs mixture-of-experts models (Mixtral is llama with experts)");
    }
    return family;
  }
  fail(f.source(), ": general.architecture = \"", arch,
       "\": bhmoe runs olmoe, qwen2moe, qwen3moe, llama (Mixtral) and deepseek2 GGUF files");
}

class GgufCheckpoint final : public Checkpoint {
 public:
  explicit GgufCheckpoint(const fs::path& path) : path_(path), file_(GgufFile::open(path)) {
    config_ = gguf_model_config(file_);
    load_weights();
    WeightFileInfo info;
    info.path = path_;
    info.bytes = file_.size();
    info.tensors = file_.tensors().size();
    for (const GgufTensor& t : file_.tensors()) {
      const std::string name = ggml_type_name(t.type);
      if (std::find(info.dtypes.begin(), info.dtypes.end(), name) == info.dtypes.end())
        info.dtypes.push_back(name);
    }
    info.identity = file_.identity();
    infos_.push_back(std::move(info));
  }

  const ModelConfig& config() const override { return config_; }
  const Weights& weights() const override { return weights_; }
  const fs::path& dir() const override { return path_; }
  size_t mapped_bytes() const override { return file_.size(); }
  const std::vector<WeightFileInfo>& weight_files() const override { return infos_; }
  ExpertLayout expert_layout() const override { return ExpertLayout::Fused; }
  std::optional<NonFiniteValue> find_non_finite() const override;

  const GgufFile& file() const { return file_; }

 private:
  void load_weights();
  // The tensor `name`, which must exist with ggml ne == `ne` and a type bhmoe runs whose blocks
  // divide its rows (ne[0]).
  const GgufTensor& checked(const std::string& name, const std::vector<int64_t>& ne) const;
  // The tensor `name`, checked against ggml shape `ne`, as a [rows, cols] matrix.
  TensorView view(const std::string& name, const std::vector<int64_t>& ne, int64_t rows,
                  int64_t cols) const;
  TensorView matrix(const std::string& name, int64_t rows, int64_t cols) const {
    return view(name, {cols, rows}, rows, cols);
  }
  // Norm weights: ggml shape {size}, one dimension.
  TensorView vector(const std::string& name, int64_t size) const {
    return view(name, {size}, 1, size);
  }

  fs::path path_;
  GgufFile file_;
  ModelConfig config_;
  Weights weights_;
  std::vector<WeightFileInfo> infos_;
};

const GgufTensor& GgufCheckpoint::checked(const std::string& name,
                                          const std::vector<int64_t>& ne) const {
  const GgufTensor* t = file_.find_tensor(name);
  if (!t) fail(file_.source(), ": missing tensor ", name);
  if (t->ne != ne) {
    fail(file_.source(), ": tensor ", name, " has ggml shape ", ne_text(t->ne), ", expected ",
         ne_text(ne), " from the metadata");
  }
  const std::optional<kernels::DType> dtype = kernel_dtype_of(t->type);
  if (!dtype) {
    fail(file_.source(), ": tensor ", name, " has type ", ggml_type_name(t->type),
         ", which bhmoe does not run (", gguf_type_names(), ")");
  }
  const int64_t block = kernels::block_values(*dtype);
  if (ne[0] % block != 0) {
    fail(file_.source(), ": tensor ", name, ": rows of ", ne[0], " values are not whole ",
         ggml_type_name(t->type), " blocks of ", block);
  }
  return *t;
}

TensorView GgufCheckpoint::view(const std::string& name, const std::vector<int64_t>& ne,
                                int64_t rows, int64_t cols) const {
  const GgufTensor& t = checked(name, ne);
  TensorView view;
  view.data = t.data;
  view.dtype = *kernel_dtype_of(t.type);
  view.rows = rows;
  view.cols = cols;
  view.name = name;
  return view;
}

void GgufCheckpoint::load_weights() {
  const ModelConfig& c = config_;
  const int64_t d = c.hidden_size, v = c.vocab_size;
  weights_.embed = matrix(std::string(hf::kGgufEmbed), v, d);
  weights_.layers.resize(static_cast<size_t>(c.num_layers));
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights& lw = weights_.layers[static_cast<size_t>(l)];
    for (const hf::LayerTensor& t : hf::kLayerTensors) {
      if (!hf::needed(t.needs, c, l)) continue;
      const std::string name = hf::gguf_layer_name(l, t.gguf);
      if (t.vector || t.rows == hf::Size::One) {
        lw.*t.field = vector(name, hf::size(t.vector ? t.rows : t.cols, c));
      } else {
        lw.*t.field = matrix(name, hf::size(t.rows, c), hf::size(t.cols, c));
      }
    }
    if (!hf::is_moe_layer(c, l)) continue;
    lw.experts.resize(static_cast<size_t>(c.num_experts));
    for (const hf::ExpertTensor& t : hf::kExpertTensors) {
      const int64_t rows = hf::size(t.rows, c), cols = hf::size(t.cols, c);
      const std::string name = hf::gguf_layer_name(l, t.gguf_stacked);
      const std::string first = hf::gguf_layer_name(l, cat(t.gguf_per_expert, ".0.weight"));
      if (!file_.find_tensor(name) && file_.find_tensor(first)) {
        for (int e = 0; e < c.num_experts; ++e) {
          lw.experts[static_cast<size_t>(e)].*t.field =
              matrix(hf::gguf_layer_name(l, cat(t.gguf_per_expert, ".", e, ".weight")), rows, cols);
        }
        continue;
      }
      const TensorView stacked =
          view(name, {cols, rows, c.num_experts}, rows * c.num_experts, cols);
      for (int e = 0; e < c.num_experts; ++e) {
        TensorView view;
        static_cast<kernels::Matrix&>(view) = stacked.row_block(e * rows, rows);
        view.name = cat(name, "[", e, "]");
        lw.experts[static_cast<size_t>(e)].*t.field = view;
      }
    }
  }
  weights_.final_norm = vector(std::string(hf::kGgufFinalNorm), d);
  if (c.tie_word_embeddings) {
    weights_.lm_head = weights_.embed;
  } else {
    weights_.lm_head = matrix(std::string(hf::kGgufLmHead), v, d);
  }
  // Tensors beyond the config: more layers than block_count says means config and weights
  // disagree.
  for (const GgufTensor& t : file_.tensors()) {
    if (t.name.rfind("blk.", 0) != 0) continue;
    const long layer = std::strtol(t.name.c_str() + 4, nullptr, 10);
    if (layer >= c.num_layers) {
      fail(file_.source(), ": tensor ", t.name, " is beyond ",
           file_.get_string("general.architecture"), ".block_count = ", c.num_layers);
    }
  }
}

std::optional<NonFiniteValue> GgufCheckpoint::find_non_finite() const {
  return find_non_finite_in(file_);
}

}  // namespace

std::optional<GgufType> gguf_type(uint32_t ggml_type) {
  for (const GgufType& t : kGgufTypes) {
    if (static_cast<uint32_t>(t.ggml) == ggml_type) return t;
  }
  return std::nullopt;
}

GgufType gguf_type(kernels::DType dtype) {
  for (const GgufType& t : kGgufTypes) {
    if (t.dtype == dtype) return t;
  }
  fail(kernels::dtype_name(dtype), " has no GGUF type");
}

std::string gguf_type_names() {
  std::string names;
  for (const GgufType& t : kGgufTypes)
    names += (names.empty() ? "" : ", ") + std::string(kernels::dtype_name(t.dtype));
  return names;
}

std::optional<NonFiniteValue> find_non_finite_in(const GgufFile& file) {
  std::vector<float> row;
  for (const GgufTensor& t : file.tensors()) {
    const std::optional<kernels::DType> dtype = kernel_dtype_of(t.type);
    if (!dtype || t.ne.empty()) continue;
    const int64_t cols = t.ne[0];
    const int64_t rows = t.numel() / std::max<int64_t>(cols, 1);
    kernels::Matrix m;
    m.data = t.data;
    m.dtype = *dtype;
    m.rows = rows;
    m.cols = cols;
    row.resize(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      kernels::dequantize_row(m, r, row.data());
      for (int64_t i = 0; i < cols; ++i) {
        if (!std::isfinite(row[static_cast<size_t>(i)])) {
          std::vector<int64_t> shape(t.ne.rbegin(), t.ne.rend());
          return NonFiniteValue{file.source(), t.name, shape, r * cols + i,
                                row[static_cast<size_t>(i)]};
        }
      }
    }
  }
  return std::nullopt;
}

// deepseek2's keys (llama.cpp's convert_hf_to_gguf.py DeepseekV2Model and its loader) as
// config.json's: the dense width, MLA's widths, leading dense layers, shared experts, routing and
// YaRN. A file with q_lora_rank is refused by parse_config naming the key (and the GGUF key).
void deepseek2_config(const GgufFile& f, const std::string& p, json& hf) {
  const auto count = [&](const char* key, const char* config) {
    if (f.find(p + key)) hf[config] = f.get_uint(p + key);
  };
  count("feed_forward_length", "intermediate_size");
  count("leading_dense_block_count", "first_k_dense_replace");
  count("attention.kv_lora_rank", "kv_lora_rank");
  count("attention.q_lora_rank", "q_lora_rank");
  count("attention.value_length", "v_head_dim");
  count("rope.dimension_count", "qk_rope_head_dim");
  count("expert_shared_count", "n_shared_experts");
  if (f.find(p + "attention.key_length") && f.find(p + "rope.dimension_count")) {
    const int64_t key = static_cast<int64_t>(f.get_uint(p + "attention.key_length"));
    const int64_t rope = static_cast<int64_t>(f.get_uint(p + "rope.dimension_count"));
    if (key <= rope)
      fail(f.source(), ": ", p, "attention.key_length ", key, " must exceed ", p,
           "rope.dimension_count ", rope, " (the head is qk_nope + qk_rope wide)");
    hf["qk_nope_head_dim"] = key - rope;
  }
  if (f.find(p + "expert_weights_scale"))
    hf["routed_scaling_factor"] = f.get_real(p + "expert_weights_scale");
  // llama.cpp: 1 softmax (the default of files without the key), 2 sigmoid (DeepSeek-V3).
  if (f.find(p + "expert_gating_func")) {
    const uint64_t gating = f.get_uint(p + "expert_gating_func");
    if (gating == 2)
      hf["scoring_func"] = "sigmoid";  // refused by parse_config
    else if (gating > 2)
      fail(f.source(), ": ", p, "expert_gating_func = ", gating, " is unknown");
  }
  // The selection bias of DeepSeek-V3's noaux_tc routing.
  for (const GgufTensor& t : f.tensors()) {
    if (t.name.find("exp_probs_b") != std::string::npos) hf["topk_method"] = "noaux_tc";
  }
  // YaRN: llama.cpp keeps factor, original context and 0.1 * mscale_all_dim; beta_fast and
  // beta_slow are its context defaults (32, 1), and cos/sin are never scaled (mscale equal to
  // mscale_all_dim, as in every DeepSeek-V2 config).
  const std::optional<std::string> type = f.get_string_or_none(p + "rope.scaling.type");
  if (type && *type == "yarn") {
    const double log_mul = f.get_real_or(p + "rope.scaling.yarn_log_multiplier", 0.0);
    json yarn = {
        {"type", "yarn"},          {"factor", f.get_real_or(p + "rope.scaling.factor", 1.0)},
        {"beta_fast", 32.0},       {"beta_slow", 1.0},
        {"mscale", log_mul / 0.1}, {"mscale_all_dim", log_mul / 0.1}};
    if (f.find(p + "rope.scaling.original_context_length"))
      yarn["original_max_position_embeddings"] =
          f.get_uint(p + "rope.scaling.original_context_length");
    hf["rope_scaling"] = yarn;
  } else if (type && *type != "none") {
    hf["rope_scaling"] = {{"type", *type}};  // refused by parse_config, naming the type
  }
}

ModelConfig gguf_model_config(const GgufFile& f) {
  const Family family = gguf_family(f);
  const std::string p = f.get_string("general.architecture") + ".";
  const bool qwen = family == Family::Qwen2Moe || family == Family::Qwen3Moe;
  json hf;
  hf["model_type"] = model_type_name(family);
  // The keys present are copied; parse_config checks them, fills the optional ones and refuses
  // what is missing or implausible.
  for (const ConfigKey& k : kConfigKeys) {
    const std::string key = p + k.gguf;
    const std::string config = config_key(k.config, family);
    if (hf.contains(config) || !f.find(key)) continue;
    if (qwen && std::string_view(k.gguf) == "feed_forward_length") continue;
    // deepseek2's key_length is qk_nope + qk_rope (read below), not a head_dim key.
    if (family == Family::DeepseekV2 && std::string_view(k.gguf) == "attention.key_length")
      continue;
    switch (k.kind) {
      case ConfigKey::kCount:
        hf[config] = f.get_uint(key);
        break;
      case ConfigKey::kReal:
        hf[config] = f.get_real(key);
        break;
      case ConfigKey::kBool:
        hf[config] = f.get_bool_or(key, false);
        break;
    }
  }
  if (family == Family::DeepseekV2) deepseek2_config(f, p, hf);
  // What llama.cpp's graphs do for these architectures without a key: Qwen3-MoE renormalises its
  // top-k weights, Qwen2-MoE does not; q/k/v biases are there when the tensors are.
  if (family == Family::Qwen3Moe && !hf.contains("norm_topk_prob")) hf["norm_topk_prob"] = true;
  if (family == Family::Qwen3Moe && f.find_tensor(hf::gguf_layer_name(0, "attn_q.bias")))
    hf["attention_bias"] = true;
  // The vocabulary is the embedding's rows. Without that tensor vocab_size stays unset: the
  // config's checks report the first missing key, or with every key present, the tensor.
  const GgufTensor* embed = f.find_tensor(hf::kGgufEmbed);
  if (embed) {
    if (embed->ne.size() != 2) {
      fail(f.source(), ": tensor ", hf::kGgufEmbed, " has ", embed->ne.size(),
           " dimensions, expected 2 ({hidden, vocabulary})");
    }
    if (embed->ne[1] < 1 || embed->ne[1] > std::numeric_limits<int>::max())
      fail(f.source(), ": tensor ", hf::kGgufEmbed, ": vocabulary of ", embed->ne[1], " rows");
    hf["vocab_size"] = embed->ne[1];
    for (const char* key : {"eos", "bos", "padding"}) {
      const std::string k = cat("tokenizer.ggml.", key, "_token_id");
      if (!f.find(k)) continue;
      const uint64_t id = f.get_uint(k);
      if (id >= static_cast<uint64_t>(embed->ne[1]))
        fail(f.source(), ": ", k, " = ", id, " is outside the vocabulary of ", embed->ne[1]);
      hf[std::string(key == std::string("padding") ? "pad" : key) + "_token_id"] = id;
    }
  }
  hf["tie_word_embeddings"] = f.find_tensor(hf::kGgufLmHead) == nullptr;
  hf["torch_dtype"] = "gguf";
  try {
    ModelConfig config = parse_config(hf, f.source());
    // llama.cpp's converter permutes a llama file's q/k rows for pairwise ("normal") RoPE.
    // (deepseek2 pairs its rope dims so in every file: parse_config sets it.)
    config.rope_interleaved = family == Family::Mixtral || family == Family::DeepseekV2;
    return config;
  } catch (const Error& e) {
    // The config's checks name config.json's keys; say which GGUF key the value came from.
    const std::string message = e.what();
    // DeepSeek-V2's own keys first: their messages may mention shared ones (num_hidden_layers).
    if (family == Family::DeepseekV2) {
      constexpr std::pair<const char*, const char*> kDeepseekKeys[] = {
          {"'q_lora_rank'", "attention.q_lora_rank"},
          {"'kv_lora_rank'", "attention.kv_lora_rank"},
          {"'first_k_dense_replace'", "leading_dense_block_count"},
          {"'intermediate_size'", "feed_forward_length"},
          {"'v_head_dim'", "attention.value_length"},
          {"'qk_rope_head_dim'", "rope.dimension_count"},
          {"'qk_nope_head_dim'", "attention.key_length"},
          {"'n_shared_experts'", "expert_shared_count"},
          {"'routed_scaling_factor'", "expert_weights_scale"},
          {"'scoring_func'", "expert_gating_func"},
          {"'topk_method'", "blk.*.exp_probs_b"},
          {"'rope_scaling'", "rope.scaling.*"}};
      for (const auto& [config, gguf] : kDeepseekKeys) {
        if (message.find(config) != std::string::npos)
          fail(message, " (GGUF: ", std::string_view(gguf).rfind("blk.", 0) == 0 ? "" : p, gguf,
               ")");
      }
    }
    for (const ConfigKey& k : kConfigKeys) {
      if (message.find(config_key(k.config, family)) == std::string::npos) continue;
      std::string keys;
      for (const ConfigKey& same : kConfigKeys) {
        if (std::string_view(same.config) == k.config)
          keys += (keys.empty() ? "" : " or ") + p + same.gguf;
      }
      fail(message, " (GGUF: ", keys, ")");
    }
    if (!embed && message.find("vocab_size") != std::string::npos)
      fail(f.source(), ": missing tensor ", hf::kGgufEmbed);
    throw;
  }
}

namespace {

// Qwen2's pre-tokeniser regex, as its tokenizer.json writes it (Oniguruma syntax); llama.cpp's
// pre-tokeniser "qwen2" stands for it.
constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// DeepSeek-LLM's (and DeepSeek-V2's) pre-tokeniser: Split regexes (behavior Isolated) applied in
// order, each to every piece the ones before it made, then ByteLevel without its regex. llama.cpp's
// pre-tokeniser "deepseek-llm" stands for it; the list is llama.cpp's
// LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM (src/llama-vocab.cpp), which llama.cpp applies the same way
// (each regex splits every piece of the one before, keeping matches and the text between them).
// The characters are written as escapes here; the regexes are Oniguruma's, translated as any Split.
const char* const kDeepseekLlmPatterns[] = {
    "[\r\n]",
    "\\s?[A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293"
    "\u0295-\u02AF\u0370-\u0373\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C"
    "\u038E-\u03A1\u03A3-\u03F5\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0"
    "-\u13F5\u13F8-\u13FD\u1C90-\u1CBA\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-"
    "\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B"
    "\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-"
    "\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC\u2102\u2107\u210A-\u2113"
    "\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139\u213C-\u213F"
    "\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE\u2CF2\u2CF3"
    "\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF\uFB00"
    "-\uFB06\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A\U00010400-\U0001044F\U000104B0-"
    "\U000104D3\U000104D8-\U000104FB\U00010C80-\U00010CB2\U00010CC0-\U00010CF2\U000118A0-"
    "\U000118DF\U0001E900-\U0001E943]+",
    "\\s?[!-/:-~\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3000-\u3002]+",
    "\\s+$",
    "[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+",
    "\\p{N}+",
};

constexpr const char* kMetaSpace = "\u2581";  // ▁, SentencePiece's stand-in for a space

// llama.cpp's token types.
enum TokenType : int64_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6
};

// The tokenizer.ggml.token_type array, checked against the token count; empty when absent and not
// `required`.
std::vector<int64_t> token_types(const GgufFile& f, size_t tokens, bool required,
                                 const std::string& why) {
  if (!f.find("tokenizer.ggml.token_type")) {
    if (required) fail(f.source(), ": tokenizer.ggml.token_type is missing (", why, ")");
    return {};
  }
  std::vector<int64_t> types = f.get_int_array("tokenizer.ggml.token_type");
  if (types.size() != tokens) {
    fail(f.source(), ": tokenizer.ggml.token_type has ", types.size(), " entries for ", tokens,
         " tokens");
  }
  return types;
}

json added_token(size_t id, const std::string& content, bool special) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", special}};
}

// tokenizer.ggml.model "llama": llama.cpp's SentencePiece tokenizer (tokens, scores, token types,
// no merges) as a SentencePiece-style BPE tokenizer.json. llama.cpp merges, among adjacent symbols,
// the pair whose concatenation is a token with the highest score (leftmost on ties). The same
// encoding by merge rank: every split of a normal token into two normal tokens is a merge, ranked
// by the merged token's score, highest first; equal scores rank by the merged token's id, then the
// halves' ids. That is the rule for SentencePiece BPE models, where every piece has its own score
// (-its rank), so the ranking is exact; where several tokens share a score (files converted
// without a tokenizer.model give every token -1000), llama.cpp takes the leftmost pair and this the
// lowest id. Control, unknown and user-defined tokens become added tokens (matched before BPE, as
// llama.cpp matches them when it parses special tokens); byte tokens (<0xXX>) are the byte
// fallback; unknown, control, user-defined, unused and byte tokens are never merge results.
json gguf_spm_tokenizer_json(const GgufFile& f) {
  const std::string pre = f.get_string_or_none("tokenizer.ggml.pre").value_or("default");
  if (pre != "default") {
    fail(f.source(), ": tokenizer.ggml.pre = \"", pre,
         "\": a \"llama\" (SentencePiece) vocabulary has the pre-tokeniser \"default\"");
  }
  const std::vector<std::string>& tokens = f.get_string_array("tokenizer.ggml.tokens");
  if (!f.find("tokenizer.ggml.scores")) {
    fail(f.source(), ": tokenizer.ggml.scores is missing (a \"llama\" vocabulary merges by score)");
  }
  const std::vector<double> scores = f.get_real_array("tokenizer.ggml.scores");
  if (scores.size() != tokens.size()) {
    fail(f.source(), ": tokenizer.ggml.scores has ", scores.size(), " entries for ", tokens.size(),
         " tokens");
  }
  for (size_t id = 0; id < scores.size(); ++id) {
    // A NaN would leave the merges without an order (and std::sort without a strict weak order).
    if (std::isnan(scores[id]))
      fail(f.source(), ": tokenizer.ggml.scores[", id, "] (token \"", tokens[id], "\") is NaN");
  }
  const std::vector<int64_t> types = token_types(
      f, tokens.size(), true, "a \"llama\" vocabulary needs it to tell normal tokens from bytes");

  json vocab = json::object();
  json added = json::array();
  std::unordered_map<std::string, size_t> normal;  // normal token -> id
  std::optional<std::string> unk;
  for (size_t id = 0; id < tokens.size(); ++id) {
    vocab[tokens[id]] = id;
    switch (types[id]) {
      case kNormal:
        normal[tokens[id]] = id;
        break;
      case kUnknown:
        if (!unk) unk = tokens[id];
        added.push_back(added_token(id, tokens[id], true));
        break;
      case kControl:
        added.push_back(added_token(id, tokens[id], true));
        break;
      case kUserDefined:
        added.push_back(added_token(id, tokens[id], false));
        break;
      default:
        break;
    }
  }
  // The byte fallback needs every byte's token (a tokenizer.json would say model.byte_fallback).
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    if (!vocab.contains(name)) {
      fail(f.source(), ": tokenizer.ggml.tokens has no \"", name,
           "\" (a \"llama\" vocabulary needs the byte tokens <0x00> to <0xFF>)");
    }
  }
  struct Merge {
    double score;
    size_t merged, left, right;
  };
  std::vector<Merge> ranked;
  for (const auto& [token, id] : normal) {
    for (size_t cut = 1; cut < token.size(); ++cut) {
      if ((static_cast<unsigned char>(token[cut]) & 0xC0) == 0x80) continue;  // inside a character
      auto left = normal.find(token.substr(0, cut));
      if (left == normal.end()) continue;
      auto right = normal.find(token.substr(cut));
      if (right == normal.end()) continue;
      ranked.push_back({scores[id], id, left->second, right->second});
    }
  }
  std::sort(ranked.begin(), ranked.end(), [](const Merge& a, const Merge& b) {
    if (a.score != b.score) return a.score > b.score;
    return std::tie(a.merged, a.left, a.right) < std::tie(b.merged, b.left, b.right);
  });
  json merges = json::array();
  for (const Merge& m : ranked) merges.push_back({tokens[m.left], tokens[m.right]});

  // llama.cpp puts a space before the text (and after every special token) unless
  // tokenizer.ggml.add_space_prefix is false; Prepend does the same to every stretch of text
  // between added tokens.
  const bool add_space_prefix = f.get_bool_or("tokenizer.ggml.add_space_prefix", true);
  json normalizers = json::array();
  if (add_space_prefix) normalizers.push_back({{"type", "Prepend"}, {"prepend", kMetaSpace}});
  normalizers.push_back(
      {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kMetaSpace}});
  json decoders = {{{"type", "Replace"}, {"pattern", {{"String", kMetaSpace}}}, {"content", " "}},
                   {{"type", "ByteFallback"}},
                   {{"type", "Fuse"}}};
  if (add_space_prefix) {
    decoders.push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  }
  return {{"version", "1.0"},
          {"added_tokens", added},
          {"normalizer", {{"type", "Sequence"}, {"normalizers", normalizers}}},
          {"pre_tokenizer", nullptr},
          {"decoder", {{"type", "Sequence"}, {"decoders", decoders}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", unk ? json(*unk) : json(nullptr)},
            {"fuse_unk", true},
            {"byte_fallback", true},
            {"vocab", vocab},
            {"merges", merges}}}};
}

}  // namespace

std::optional<json> gguf_bytelevel_pre_tokenizer(const std::string& pre) {
  json byte_level = {{"type", "ByteLevel"},
                     {"add_prefix_space", false},
                     {"trim_offsets", true},
                     {"use_regex", true}};
  if (pre == "olmo" || pre == "gpt-2" || pre == "default") return byte_level;
  auto split = [](const char* pattern) {
    return json{{"type", "Split"},
                {"pattern", {{"Regex", pattern}}},
                {"behavior", "Isolated"},
                {"invert", false}};
  };
  byte_level["use_regex"] = false;
  json steps = json::array();
  if (pre == "qwen2") {
    byte_level["trim_offsets"] = false;
    steps.push_back(split(kQwen2Pattern));
  } else if (pre == "deepseek-llm") {
    for (const char* pattern : kDeepseekLlmPatterns) steps.push_back(split(pattern));
  } else {
    return std::nullopt;
  }
  steps.push_back(byte_level);
  return json{{"type", "Sequence"}, {"pretokenizers", steps}};
}

json gguf_tokenizer_json(const GgufFile& f) {
  const std::string& model = f.get_string("tokenizer.ggml.model");
  if (model == "llama") return gguf_spm_tokenizer_json(f);
  if (model != "gpt2") {
    fail(f.source(), ": tokenizer.ggml.model = \"", model,
         "\": bhmoe reads byte-level BPE (\"gpt2\") and SentencePiece BPE (\"llama\") "
         "vocabularies from GGUF files");
  }
  const std::string pre = f.get_string_or_none("tokenizer.ggml.pre").value_or("default");
  std::optional<json> pre_tokenizer = gguf_bytelevel_pre_tokenizer(pre);
  if (!pre_tokenizer) {
    fail(f.source(), ": tokenizer.ggml.pre = \"", pre,
         "\": bhmoe knows the pre-tokenisers \"olmo\", \"gpt-2\" and \"default\" (the GPT-2 "
         "regex), \"qwen2\" and \"deepseek-llm\"");
  }
  const std::vector<std::string>& tokens = f.get_string_array("tokenizer.ggml.tokens");
  const std::vector<int64_t> types = token_types(f, tokens.size(), false, "");
  // "gpt2" vocabularies hold the byte-level strings a tokenizer.json's vocab holds.
  json vocab = json::object();
  json added = json::array();
  for (size_t id = 0; id < tokens.size(); ++id) {
    const int64_t type = types.empty() ? kNormal : types[id];
    if (type == kControl || type == kUserDefined) {
      added.push_back(added_token(id, tokens[id], type == kControl));
    }
    vocab[tokens[id]] = id;
  }
  json merges = json::array();
  if (f.find("tokenizer.ggml.merges")) {
    for (const std::string& m : f.get_string_array("tokenizer.ggml.merges")) merges.push_back(m);
  }
  // Qwen2's NFC normaliser is left out, as llama.cpp leaves it out: GGUF files tokenize as
  // llama.cpp tokenizes them, which differs from the tokenizer.json only on text not in NFC.
  // (DeepSeek's tokenizer.json has no normaliser.)
  const json decoder = {{"type", "ByteLevel"},
                        {"add_prefix_space", false},
                        {"trim_offsets", true},
                        {"use_regex", true}};
  return {{"version", "1.0"},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", *pre_tokenizer},
          {"decoder", decoder},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"vocab", vocab},
            {"merges", merges}}}};
}

std::unique_ptr<Checkpoint> open_gguf_checkpoint(const fs::path& file) {
  return std::make_unique<GgufCheckpoint>(file);
}

std::unique_ptr<Tokenizer> load_model_tokenizer(const fs::path& model) {
  if (is_gguf_file(model)) {
    const GgufFile file = GgufFile::open(model);
    return Tokenizer::from_json(gguf_tokenizer_json(file), model.string() + " (GGUF)");
  }
  return Tokenizer::load(model / "tokenizer.json");
}

GgufModel open_gguf_model(const fs::path& file) {
  auto checkpoint = std::make_unique<GgufCheckpoint>(file);
  auto tokenizer =
      Tokenizer::from_json(gguf_tokenizer_json(checkpoint->file()), file.string() + " (GGUF)");
  return {std::move(checkpoint), std::move(tokenizer)};
}

}  // namespace bhmoe::model
