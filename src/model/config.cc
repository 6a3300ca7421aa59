#include "model/config.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "routing/calibration.h"
#include "routing/router.h"
#include "util/error.h"
#include "util/file.h"
#include "util/json.h"

namespace bhmoe::model {
namespace {

using nlohmann::json;

// Upper bound on any size key: keeps every product of sizes far from int64 overflow.
constexpr int64_t kMaxDimension = int64_t{1} << 24;
// Tighter bounds where loading allocates per unit before a tensor can be found missing: per-layer
// and per-expert weight tables (a layer count of 2^24 would otherwise take gigabytes before the
// first "missing tensor"). Layers match the calibration's layer-id limit, experts the routers'.
constexpr int64_t kMaxLayers = routing::kMaxCalibrationLayer + 1;
constexpr int64_t kMaxNumExperts = routing::kMaxExperts;

// A float as the shortest decimal that reads back to it (1e-05, not 9.999999747378752e-06).
double shortest(float value) {
  char buffer[32];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, value);
  return std::strtod(std::string(buffer, end).c_str(), nullptr);
}

std::string show(const json& value) {
  std::string text = value.dump();
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

const char* type_name(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    case json::value_t::number_float:
      return "a non-integer number";
    default:
      return "a number";
  }
}

class Reader {
 public:
  Reader(const json& root, const std::string& source) : root_(root), source_(source) {}

  const json* find(const char* key) const {
    auto it = root_.find(key);
    return it == root_.end() ? nullptr : &*it;
  }

  [[noreturn]] void bad(const char* key, const std::string& why) const {
    fail(source_, ": key '", key, "' ", why);
  }

  int64_t integer(const json& value, const char* key) const {
    if (value.is_number_integer()) return value.get<int64_t>();
    if (value.is_number_float()) {
      double d = value.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15)
        return static_cast<int64_t>(d);
    }
    bad(key, cat("must be an integer, got ", type_name(value), " ", show(value)));
  }

  int positive_int(const char* key, int64_t limit = kMaxDimension) const {
    const json* value = find(key);
    if (!value) bad(key, "is missing");
    int64_t n = integer(*value, key);
    if (n <= 0) bad(key, cat("must be positive, got ", n));
    if (n > limit) bad(key, cat("is implausibly large: ", n, " (limit ", limit, ")"));
    return static_cast<int>(n);
  }

  std::optional<int> optional_positive_int(const char* key) const {
    const json* value = find(key);
    if (!value || value->is_null()) return std::nullopt;
    return positive_int(key);
  }

  std::optional<int> token_id(const char* key) const {
    const json* value = find(key);
    if (!value || value->is_null()) return std::nullopt;
    if (value->is_array())
      bad(key, cat("lists of token ids are not supported, got ", show(*value)));
    int64_t id = integer(*value, key);
    if (id < 0 || id > std::numeric_limits<int>::max())
      bad(key, cat("must be a token id >= 0, got ", id));
    return static_cast<int>(id);
  }

  bool boolean(const char* key, bool fallback) const {
    const json* value = find(key);
    if (!value || value->is_null()) return fallback;
    if (!value->is_boolean())
      bad(key, cat("must be true or false, got ", type_name(*value), " ", show(*value)));
    return value->get<bool>();
  }

  double positive_number(const char* key, double fallback) const {
    const json* value = find(key);
    if (!value || value->is_null()) return fallback;
    if (!value->is_number())
      bad(key, cat("must be a number, got ", type_name(*value), " ", show(*value)));
    double d = value->get<double>();
    if (!std::isfinite(d) || d <= 0) bad(key, cat("must be a positive number, got ", show(*value)));
    return d;
  }

  // A positive number the engine keeps as a float: it must stay positive and finite as one
  // (1e-50 would become 0 and 1e300 infinity, so what was accepted would not be what runs).
  float positive_float(const char* key, double fallback) const {
    const double d = positive_number(key, fallback);
    const float f = static_cast<float>(d);
    if (!(f >= std::numeric_limits<float>::min()) || !std::isfinite(f)) {
      bad(key,
          cat("is ", show(*find(key)), ", outside the float range [",
              std::numeric_limits<float>::min(), ", ", std::numeric_limits<float>::max(), "]"));
    }
    return f;
  }

  std::optional<double> optional_positive_number(const char* key) const {
    const json* value = find(key);
    if (!value || value->is_null()) return std::nullopt;
    return positive_number(key, 0);
  }

  std::string string(const char* key, const std::string& fallback) const {
    const json* value = find(key);
    if (!value || value->is_null()) return fallback;
    if (!value->is_string())
      bad(key, cat("must be a string, got ", type_name(*value), " ", show(*value)));
    return value->get<std::string>();
  }

 private:
  const json& root_;
  const std::string& source_;
};

// DeepSeek-V2's own keys (the shared ones are read by parse_config): MLA widths, leading dense
// layers, shared experts, routing switches and YaRN. Everything it does not implement is refused
// naming the key: q_lora_rank (DeepSeek-V2 full), topk_method other than "greedy"
// (group_limited_greedy, noaux_tc: V2 full and V3), scoring_func other than "softmax".
void parse_deepseek_v2(const Reader& r, const std::string& source, ModelConfig& c) {
  if (const json* q_lora = r.find("q_lora_rank"); q_lora && !q_lora->is_null()) {
    r.bad("q_lora_rank",
          cat("is ", show(*q_lora),
              "; only null (q_proj, as DeepSeek-V2-Lite) is supported, not the low-rank query "
              "(q_a_proj, q_a_layernorm, q_b_proj)"));
  }
  c.kv_lora_rank = r.positive_int("kv_lora_rank");
  c.qk_nope_head_dim = r.positive_int("qk_nope_head_dim");
  c.qk_rope_head_dim = r.positive_int("qk_rope_head_dim");
  c.v_head_dim = r.positive_int("v_head_dim");
  c.head_dim = c.qk_nope_head_dim + c.qk_rope_head_dim;
  if (c.qk_rope_head_dim % 2 != 0)
    r.bad("qk_rope_head_dim", cat("is ", c.qk_rope_head_dim, "; it must be even for RoPE"));
  // MLA gives every head its own key and value: key/value heads are the heads.
  if (const json* kv = r.find("num_key_value_heads"); kv && !kv->is_null()) {
    if (r.integer(*kv, "num_key_value_heads") != c.num_heads)
      r.bad("num_key_value_heads",
            cat("is ", show(*kv), "; DeepSeek-V2's latent attention has one key/value per head (",
                c.num_heads, ")"));
  }
  c.num_kv_heads = c.num_heads;
  c.dense_intermediate_size = r.positive_int("intermediate_size");
  c.first_k_dense_replace = 0;
  if (const json* k = r.find("first_k_dense_replace"); k && !k->is_null()) {
    const int64_t n = r.integer(*k, "first_k_dense_replace");
    if (n < 0 || n >= c.num_layers)
      r.bad("first_k_dense_replace", cat("is ", n, "; it must be in [0, num_hidden_layers ",
                                         c.num_layers, ") so that at least one layer has experts"));
    c.first_k_dense_replace = static_cast<int>(n);
  }
  if (const json* step = r.find("moe_layer_freq"); step && !step->is_null()) {
    if (r.integer(*step, "moe_layer_freq") != 1)
      r.bad("moe_layer_freq", cat("is ", show(*step),
                                  "; only 1 (every layer after "
                                  "first_k_dense_replace has experts) is supported"));
  }
  if (const json* shared = r.find("n_shared_experts"); shared && !shared->is_null()) {
    const int64_t n = r.integer(*shared, "n_shared_experts");
    if (n < 0 || n > 1024) r.bad("n_shared_experts", cat("must be in [0, 1024], got ", n));
    c.shared_expert_intermediate_size = static_cast<int>(n * c.intermediate_size);
  }
  c.shared_expert_gated = false;
  c.routed_scaling_factor = r.positive_number("routed_scaling_factor", 1.0);
  if (std::string method = r.string("topk_method", "greedy"); method != "greedy") {
    r.bad("topk_method", cat("is \"", method,
                             "\"; only \"greedy\" (DeepSeek-V2-Lite) is supported, not the "
                             "group-limited routing of DeepSeek-V2 and V3"));
  }
  if (std::string scoring = r.string("scoring_func", "softmax"); scoring != "softmax")
    r.bad("scoring_func", cat("is \"", scoring, "\"; only \"softmax\" is supported"));
  // DeepSeek's modelling code multiplies by routed_scaling_factor only when it does not
  // renormalise, llama.cpp's deepseek2 graph always: refused where the two disagree.
  if (r.boolean("norm_topk_prob", false) && c.routed_scaling_factor != 1.0) {
    r.bad("routed_scaling_factor",
          cat("is ", c.routed_scaling_factor,
              " with norm_topk_prob true; the reference implementations disagree on whether it "
              "applies to renormalised weights, so only 1 is supported with norm_topk_prob"));
  }
  c.rope_interleaved = true;
  if (const json* scaling = r.find("rope_scaling"); scaling && !scaling->is_null()) {
    if (!scaling->is_object())
      r.bad("rope_scaling", cat("must be an object or null, got ", show(*scaling)));
    const Reader y(*scaling, source);
    std::string type = y.string("type", y.string("rope_type", ""));
    if (type != "yarn")
      r.bad("rope_scaling",
            cat("is ", show(*scaling), "; only null or type \"yarn\" is supported"));
    YarnScaling yarn;
    auto field = [&](const char* key, double fallback) {
      const json* value = y.find(key);
      if (!value || value->is_null()) return fallback;
      if (!value->is_number() || !std::isfinite(value->get<double>()) || value->get<double>() < 0)
        r.bad("rope_scaling", cat("key '", key, "' must be a number >= 0, got ", show(*value)));
      return value->get<double>();
    };
    yarn.factor = field("factor", 0);
    if (!(yarn.factor >= 1.0))
      r.bad("rope_scaling", cat("key 'factor' must be at least 1 for yarn, got ", yarn.factor));
    yarn.original_max_position_embeddings = y.positive_int("original_max_position_embeddings");
    yarn.beta_fast = field("beta_fast", 32.0);
    yarn.beta_slow = field("beta_slow", 1.0);
    yarn.mscale = field("mscale", 1.0);
    yarn.mscale_all_dim = field("mscale_all_dim", 0.0);
    c.yarn = yarn;
  }
}

}  // namespace

double yarn_mscale(double factor, double m) {
  return factor <= 1.0 ? 1.0 : 0.1 * m * std::log(factor) + 1.0;
}

std::string ModelConfig::native_router_spec() const {
  return cat("topk:k=", num_experts_per_tok, ",renorm=", norm_topk_prob ? "true" : "false");
}

const char* model_type_name(Family family) {
  switch (family) {
    case Family::Olmoe:
      return "olmoe";
    case Family::Qwen2Moe:
      return "qwen2_moe";
    case Family::Qwen3Moe:
      return "qwen3_moe";
    case Family::Mixtral:
      return "mixtral";
    case Family::DeepseekV2:
      return "deepseek_v2";
  }
  return "?";
}

ModelConfig parse_config(const nlohmann::json& root, const std::string& source) {
  if (!root.is_object()) fail(source, ": expected a JSON object, got ", type_name(root));
  Reader r(root, source);
  ModelConfig c;

  constexpr const char* kSupported =
      "\"olmoe\", \"qwen2_moe\", \"qwen3_moe\", \"mixtral\" or \"deepseek_v2\"";
  const json* model_type = r.find("model_type");
  if (!model_type) r.bad("model_type", cat("is missing (expected ", kSupported, ")"));
  c.model_type = r.string("model_type", "");
  bool known = false;
  for (Family f :
       {Family::Olmoe, Family::Qwen2Moe, Family::Qwen3Moe, Family::Mixtral, Family::DeepseekV2}) {
    if (c.model_type == model_type_name(f)) c.family = f, known = true;
  }
  if (!known) r.bad("model_type", cat("is \"", c.model_type, "\"; bhmoe runs ", kSupported));
  const bool qwen = c.family == Family::Qwen2Moe || c.family == Family::Qwen3Moe;
  const bool deepseek = c.family == Family::DeepseekV2;

  // The keys that name the same thing differently per family: the routed experts' width and count.
  const char* expert_width_key = qwen || deepseek ? "moe_intermediate_size" : "intermediate_size";
  const char* experts_key = c.family == Family::Mixtral ? "num_local_experts"
                            : deepseek                  ? "n_routed_experts"
                                                        : "num_experts";
  c.hidden_size = r.positive_int("hidden_size");
  c.intermediate_size = r.positive_int(expert_width_key);
  c.num_layers = r.positive_int("num_hidden_layers", kMaxLayers);
  c.num_heads = r.positive_int("num_attention_heads");
  c.num_kv_heads = r.optional_positive_int("num_key_value_heads").value_or(c.num_heads);
  c.num_experts = r.positive_int(experts_key, kMaxNumExperts);
  c.num_experts_per_tok = r.positive_int("num_experts_per_tok");
  c.vocab_size = r.positive_int("vocab_size");
  // Mixtral always renormalises its top-k weights (it has no key for it).
  c.norm_topk_prob = c.family == Family::Mixtral || r.boolean("norm_topk_prob", false);
  c.rope_theta = r.positive_number("rope_theta", 10000.0);
  c.rms_norm_eps = r.positive_float("rms_norm_eps", 1e-5);
  if (r.optional_positive_number("clip_qkv")) c.clip_qkv = r.positive_float("clip_qkv", 0);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  c.max_position_embeddings = r.optional_positive_int("max_position_embeddings").value_or(4096);
  c.eos_token_id = r.token_id("eos_token_id");
  c.bos_token_id = r.token_id("bos_token_id");
  c.pad_token_id = r.token_id("pad_token_id");
  c.torch_dtype = r.string("torch_dtype", "");
  c.qk_norm = c.family == Family::Olmoe      ? QkNorm::Full
              : c.family == Family::Qwen3Moe ? QkNorm::PerHead
                                             : QkNorm::None;
  // Qwen2-MoE's q/k/v projections always carry biases; Qwen3 has them when attention_bias says.
  c.qkv_bias = c.family == Family::Qwen2Moe;
  if (c.family == Family::Qwen2Moe) {
    c.shared_expert_intermediate_size = r.positive_int("shared_expert_intermediate_size");
    c.shared_expert_gated = true;
  }

  if (c.hidden_size % c.num_heads != 0 && c.family == Family::Olmoe) {
    fail(source, ": hidden_size ", c.hidden_size, " is not divisible by num_attention_heads ",
         c.num_heads);
  }
  const json* head_dim = r.find("head_dim");
  if (deepseek) {
    // The query/key head is qk_nope_head_dim + qk_rope_head_dim wide; a head_dim key is not read.
    parse_deepseek_v2(r, source, c);
  } else if (c.head_dim = c.hidden_size / c.num_heads; head_dim && !head_dim->is_null()) {
    // OLMoE's attention is hidden_size / heads wide whatever head_dim says; Qwen3 and Mixtral use
    // the declared width (Qwen3-30B-A3B: 32 heads of 128 on a hidden size of 2048).
    if (c.family == Family::Olmoe || c.family == Family::Qwen2Moe) {
      int64_t declared = r.integer(*head_dim, "head_dim");
      if (declared != c.head_dim) {
        fail(source, ": head_dim ", declared,
             " contradicts hidden_size / num_attention_heads = ", c.hidden_size, " / ", c.num_heads,
             " = ", c.head_dim);
      }
    } else {
      c.head_dim = r.positive_int("head_dim");
    }
  } else if (c.hidden_size % c.num_heads != 0) {
    fail(source, ": hidden_size ", c.hidden_size, " is not divisible by num_attention_heads ",
         c.num_heads, " and no head_dim is given");
  }
  if (c.head_dim % 2 != 0)
    fail(source, ": head_dim ", c.head_dim, " must be even for rotary embeddings");
  if (c.num_kv_heads > c.num_heads || c.num_heads % c.num_kv_heads != 0) {
    fail(source, ": num_attention_heads ", c.num_heads,
         " is not a multiple of num_key_value_heads ", c.num_kv_heads);
  }
  if (c.num_experts_per_tok > c.num_experts) {
    fail(source, ": num_experts_per_tok ", c.num_experts_per_tok, " exceeds ", experts_key, " ",
         c.num_experts);
  }
  for (auto [key, id] :
       {std::pair{"eos_token_id", c.eos_token_id}, std::pair{"bos_token_id", c.bos_token_id},
        std::pair{"pad_token_id", c.pad_token_id}}) {
    if (id && *id >= c.vocab_size)
      fail(source, ": ", key, " ", *id, " is outside vocab_size ", c.vocab_size);
  }

  // Keys whose other values would change the computation in ways this engine does not implement.
  if (const json* scaling = r.find("rope_scaling"); scaling && !scaling->is_null() && !deepseek) {
    r.bad("rope_scaling", cat("is ", show(*scaling), "; only null (no RoPE scaling) is supported"));
  }
  if (std::string act = r.string("hidden_act", "silu"); act != "silu") {
    r.bad("hidden_act", cat("is \"", act, "\"; only \"silu\" is supported"));
  }
  if (r.boolean("attention_bias", false)) {
    if (c.family != Family::Qwen3Moe)
      r.bad("attention_bias", "is true; attention biases are not supported for this model_type");
    c.qkv_bias = true;
  }
  if (c.clip_qkv && c.family != Family::Olmoe)
    r.bad("clip_qkv", cat("is set; only OLMoE clips q, k and v (model_type ", c.model_type, ")"));
  if (qwen) {
    // Every layer must be an MoE layer: dense MLP layers would need weights this engine has no
    // place for.
    if (const json* step = r.find("decoder_sparse_step"); step && !step->is_null()) {
      if (r.integer(*step, "decoder_sparse_step") != 1)
        r.bad("decoder_sparse_step",
              cat("is ", show(*step), "; only 1 (every layer MoE) is supported"));
    }
    if (const json* dense = r.find("mlp_only_layers"); dense && !dense->is_null()) {
      if (!dense->is_array() || !dense->empty())
        r.bad("mlp_only_layers",
              cat("is ", show(*dense), "; only [] (no dense layers) is supported"));
    }
    if (r.boolean("use_sliding_window", false))
      r.bad("use_sliding_window", "is true; sliding-window attention is not supported");
  }
  if (c.family == Family::Mixtral) {
    // A window at least as long as the context changes nothing; a shorter one would.
    if (const json* window = r.find("sliding_window"); window && !window->is_null()) {
      const int64_t w = r.integer(*window, "sliding_window");
      if (w < c.max_position_embeddings)
        r.bad("sliding_window",
              cat("is ", w, ", shorter than max_position_embeddings ", c.max_position_embeddings,
                  "; sliding-window attention is not supported"));
    }
  }
  return c;
}

ModelConfig load_config(const std::filesystem::path& config_json) {
  return parse_config(read_json_file(config_json), config_json.string());
}

nlohmann::json to_json(const ModelConfig& c) {
  auto optional_id = [](const std::optional<int>& id) { return id ? json(*id) : json(nullptr); };
  const bool qwen = c.family == Family::Qwen2Moe || c.family == Family::Qwen3Moe;
  const bool deepseek = c.family == Family::DeepseekV2;
  json j = json::object();
  j["architectures"] = json::array({c.family == Family::Olmoe      ? "OlmoeForCausalLM"
                                    : c.family == Family::Qwen2Moe ? "Qwen2MoeForCausalLM"
                                    : c.family == Family::Qwen3Moe ? "Qwen3MoeForCausalLM"
                                    : deepseek                     ? "DeepseekV2ForCausalLM"
                                                                   : "MixtralForCausalLM"});
  j["model_type"] = model_type_name(c.family);
  j["hidden_size"] = c.hidden_size;
  if (qwen) {
    // intermediate_size is the width of dense MLP layers, which these checkpoints do not have;
    // the hub's configs carry it, so it is written (as the widest FFN) but never read.
    j["intermediate_size"] = std::max(c.intermediate_size, c.shared_expert_intermediate_size);
    j["moe_intermediate_size"] = c.intermediate_size;
    if (c.family == Family::Qwen2Moe)
      j["shared_expert_intermediate_size"] = c.shared_expert_intermediate_size;
    j["decoder_sparse_step"] = 1;
    j["mlp_only_layers"] = json::array();
    j["use_sliding_window"] = false;
  } else if (deepseek) {
    j["intermediate_size"] = c.dense_intermediate_size;
    j["moe_intermediate_size"] = c.intermediate_size;
    j["n_shared_experts"] = c.shared_expert_intermediate_size / c.intermediate_size;
    j["first_k_dense_replace"] = c.first_k_dense_replace;
    j["moe_layer_freq"] = 1;
    j["q_lora_rank"] = nullptr;
    j["kv_lora_rank"] = c.kv_lora_rank;
    j["qk_nope_head_dim"] = c.qk_nope_head_dim;
    j["qk_rope_head_dim"] = c.qk_rope_head_dim;
    j["v_head_dim"] = c.v_head_dim;
    j["routed_scaling_factor"] = c.routed_scaling_factor;
    j["topk_method"] = "greedy";
    j["scoring_func"] = "softmax";
    j["n_group"] = 1;
    j["topk_group"] = 1;
  } else {
    j["intermediate_size"] = c.intermediate_size;
  }
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  if (c.family == Family::Qwen3Moe || c.family == Family::Mixtral) j["head_dim"] = c.head_dim;
  j[c.family == Family::Mixtral ? "num_local_experts"
    : deepseek                  ? "n_routed_experts"
                                : "num_experts"] = c.num_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  if (c.family != Family::Mixtral) j["norm_topk_prob"] = c.norm_topk_prob;
  j["vocab_size"] = c.vocab_size;
  j["rope_theta"] = c.rope_theta;
  if (c.yarn) {
    j["rope_scaling"] = {
        {"type", "yarn"},
        {"factor", c.yarn->factor},
        {"original_max_position_embeddings", c.yarn->original_max_position_embeddings},
        {"beta_fast", c.yarn->beta_fast},
        {"beta_slow", c.yarn->beta_slow},
        {"mscale", c.yarn->mscale},
        {"mscale_all_dim", c.yarn->mscale_all_dim}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["rms_norm_eps"] = shortest(c.rms_norm_eps);
  if (c.family == Family::Olmoe)
    j["clip_qkv"] = c.clip_qkv ? json(shortest(*c.clip_qkv)) : json(nullptr);
  if (c.family == Family::Mixtral) j["sliding_window"] = nullptr;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["hidden_act"] = "silu";
  if (c.family != Family::Qwen2Moe) j["attention_bias"] = c.qkv_bias;
  j["attention_dropout"] = 0.0;
  j["pad_token_id"] = optional_id(c.pad_token_id);
  j["bos_token_id"] = optional_id(c.bos_token_id);
  j["eos_token_id"] = optional_id(c.eos_token_id);
  j["router_aux_loss_coef"] = 0.01;
  j["output_router_logits"] = false;
  j["initializer_range"] = 0.02;
  if (!c.torch_dtype.empty()) j["torch_dtype"] = c.torch_dtype;
  return j;
}

ParameterCounts count_parameters(const ModelConfig& c) {
  const int64_t d = c.hidden_size, f = c.intermediate_size, v = c.vocab_size;
  const int64_t d_q = int64_t{c.num_heads} * c.head_dim;
  const int64_t d_kv = int64_t{c.num_kv_heads} * c.head_dim;
  ParameterCounts p;
  p.embedding = v * d;
  p.lm_head = c.tie_word_embeddings ? 0 : v * d;
  p.per_expert = 3 * f * d;
  int64_t attention = 0;
  if (c.mla()) {
    // q_proj, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj.
    const int64_t latent = c.kv_lora_rank;
    attention = d_q * d + (latent + c.qk_rope_head_dim) * d + latent +
                int64_t{c.num_heads} * (c.qk_nope_head_dim + c.v_head_dim) * latent +
                d * int64_t{c.num_heads} * c.v_head_dim;
  } else {
    attention = 2 * d * d_q + 2 * d_kv * d + (c.qkv_bias ? d_q + 2 * d_kv : 0);
  }
  const int64_t qk_norms = c.qk_norm == QkNorm::Full      ? d_q + d_kv
                           : c.qk_norm == QkNorm::PerHead ? 2 * int64_t{c.head_dim}
                                                          : 0;
  const int64_t norms = 2 * d + qk_norms;  // input and post-attention norms, q and k norms
  const int64_t router = int64_t{c.num_experts} * d;
  // The shared expert is dense: always active.
  const int64_t shared =
      3 * int64_t{c.shared_expert_intermediate_size} * d + (c.shared_expert_gated ? d : 0);
  const int64_t dense_mlp = 3 * int64_t{c.dense_intermediate_size} * d;
  const int64_t routed_layers = c.num_routed_layers();
  p.dense = c.num_layers * (attention + norms) + routed_layers * (router + shared) +
            int64_t{c.first_k_dense_replace} * dense_mlp + d /* final norm */;
  p.experts = routed_layers * c.num_experts * p.per_expert;
  p.total = p.embedding + p.lm_head + p.dense + p.experts;
  p.active =
      p.embedding + p.lm_head + p.dense + routed_layers * c.num_experts_per_tok * p.per_expert;
  return p;
}

}  // namespace bhmoe::model
