#include "model/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "model/make_model.h"
#include "util/error.h"
#include "util/file.h"

namespace bhmoe::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::HasSubstr;

const fs::path kShared = BHMOE_SHARED_DIR;

json olmoe_json() {
  return json::parse(read_file(kShared / "olmoe" / "config.json"));
}

std::string error_of(const json& j) {
  try {
    parse_config(j, "dir/config.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Config, PublishedOlmoe) {
  ModelConfig c = load_config(kShared / "olmoe" / "config.json");
  EXPECT_EQ(c.model_type, "olmoe");
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.intermediate_size, 1024);
  EXPECT_EQ(c.num_layers, 16);
  EXPECT_EQ(c.num_heads, 16);
  EXPECT_EQ(c.num_kv_heads, 16);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_experts, 64);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_FALSE(c.norm_topk_prob);
  EXPECT_EQ(c.vocab_size, 50304);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_FALSE(c.clip_qkv.has_value());
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_id, 50279);
  EXPECT_EQ(c.pad_token_id, 1);
  EXPECT_FALSE(c.bos_token_id.has_value());
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.native_router_spec(), "topk:k=8,renorm=false");
}

TEST(Config, GoldenTiny) {
  for (const char* name : {"tiny-f32", "tiny-bf16"}) {
    ModelConfig c = load_config(kShared / "golden" / name / "config.json");
    EXPECT_EQ(c.hidden_size, 64) << name;
    EXPECT_EQ(c.head_dim, 16) << name;
    EXPECT_EQ(c.num_experts, 8) << name;
    EXPECT_EQ(c.native_router_spec(), "topk:k=2,renorm=false") << name;
    EXPECT_EQ(c.eos_token_id, 0) << name;
  }
}

TEST(Config, NativeRouterSpecFollowsRenorm) {
  json j = olmoe_json();
  j["norm_topk_prob"] = true;
  j["num_experts_per_tok"] = 4;
  EXPECT_EQ(parse_config(j, "x").native_router_spec(), "topk:k=4,renorm=true");
}

TEST(Config, ToJsonRoundTrip) {
  json j = olmoe_json();
  j["clip_qkv"] = 8.0;
  j["tie_word_embeddings"] = true;
  j["norm_topk_prob"] = true;
  j["bos_token_id"] = 50278;
  j["rms_norm_eps"] = 1e-6;
  ModelConfig c = parse_config(j, "x");
  json out = to_json(c);
  EXPECT_EQ(out["rms_norm_eps"].get<double>(),
            1e-6);  // shortest decimal of the float, not 9.99e-07
  ModelConfig back = parse_config(out, "round trip");
  EXPECT_EQ(to_json(back), out);
  EXPECT_EQ(back.clip_qkv, 8.0f);
  EXPECT_TRUE(back.tie_word_embeddings);
  EXPECT_TRUE(back.norm_topk_prob);
  EXPECT_EQ(back.bos_token_id, 50278);
  EXPECT_EQ(back.hidden_size, 2048);
  EXPECT_EQ(back.rms_norm_eps, c.rms_norm_eps);
  // Published keys survive with their published values.
  json published = olmoe_json();
  json written = to_json(load_config(kShared / "olmoe" / "config.json"));
  for (auto& [key, value] : published.items()) {
    ASSERT_TRUE(written.contains(key)) << key;
    EXPECT_EQ(written[key], value) << key;
  }
}

TEST(Config, DefaultsForOptionalKeys) {
  json j = olmoe_json();
  for (const char* key :
       {"num_key_value_heads", "norm_topk_prob", "rope_theta", "rms_norm_eps", "clip_qkv",
        "tie_word_embeddings", "max_position_embeddings", "eos_token_id", "pad_token_id",
        "rope_scaling", "hidden_act", "torch_dtype"}) {
    j.erase(key);
  }
  ModelConfig c = parse_config(j, "x");
  EXPECT_EQ(c.num_kv_heads, 16);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.eos_token_id.has_value());
}

TEST(Config, MissingKey) {
  json j = olmoe_json();
  j.erase("num_experts");
  EXPECT_THAT(error_of(j), AllOf(HasSubstr("dir/config.json"), HasSubstr("'num_experts'"),
                                 HasSubstr("missing")));
}

TEST(Config, MissingModelType) {
  json j = olmoe_json();
  j.erase("model_type");
  EXPECT_THAT(error_of(j), AllOf(HasSubstr("'model_type'"), HasSubstr("missing")));
}

TEST(Config, MistypedKey) {
  json j = olmoe_json();
  j["hidden_size"] = "2048";
  EXPECT_THAT(error_of(j),
              AllOf(HasSubstr("'hidden_size'"), HasSubstr("integer"), HasSubstr("a string")));
}

TEST(Config, FractionalSize) {
  json j = olmoe_json();
  j["intermediate_size"] = 1024.5;
  EXPECT_THAT(error_of(j), AllOf(HasSubstr("'intermediate_size'"), HasSubstr("integer")));
}

TEST(Config, MistypedBoolean) {
  json j = olmoe_json();
  j["norm_topk_prob"] = "false";
  EXPECT_THAT(error_of(j), AllOf(HasSubstr("'norm_topk_prob'"), HasSubstr("true or false")));
}

TEST(Config, NonPositiveSize) {
  for (const char* key :
       {"hidden_size", "num_hidden_layers", "num_experts", "vocab_size", "num_experts_per_tok"}) {
    json j = olmoe_json();
    j[key] = 0;
    EXPECT_THAT(error_of(j), AllOf(HasSubstr(cat("'", key, "'")), HasSubstr("positive"))) << key;
    j[key] = -3;
    EXPECT_THAT(error_of(j), AllOf(HasSubstr(cat("'", key, "'")), HasSubstr("-3"))) << key;
  }
}

TEST(Config, ImplausiblyLargeSize) {
  json j = olmoe_json();
  j["vocab_size"] = int64_t{1} << 40;
  EXPECT_THAT(error_of(j), AllOf(HasSubstr("'vocab_size'"), HasSubstr("implausibly large")));
}

// Layer and expert counts allocate per-layer / per-expert tables at load: bounded tighter.
TEST(Config, LayerAndExpertCountsHaveSaneLimits) {
  json j = olmoe_json();
  j["num_hidden_layers"] = 1 << 24;
  EXPECT_EQ(error_of(j),
            "dir/config.json: key 'num_hidden_layers' is implausibly large: 16777216 (limit 4096)");
  j["num_hidden_layers"] = 4096;
  EXPECT_EQ(error_of(j), "(no error)");
  j["num_experts"] = 1025;
  EXPECT_EQ(error_of(j),
            "dir/config.json: key 'num_experts' is implausibly large: 1025 (limit 1024)");
}

// Found while writing the config fuzz target's round-trip check: values positive as doubles but not
// as floats were accepted and then ran as 0 or infinity (and to_json wrote a config that no longer
// loaded).
TEST(Config, FloatKeysMustFitAFloat) {
  json j = olmoe_json();
  j["rms_norm_eps"] = 1e-50;
  EXPECT_EQ(error_of(j),
            "dir/config.json: key 'rms_norm_eps' is 1e-50, outside the float range "
            "[1.17549e-38, 3.40282e+38]");
  j = olmoe_json();
  j["clip_qkv"] = 1e300;
  EXPECT_THAT(error_of(j), AllOf(HasSubstr("key 'clip_qkv' is 1e+300, outside the float range")));
  j["clip_qkv"] = 8.0;
  j["rms_norm_eps"] = 1e-6;
  EXPECT_EQ(error_of(j), "(no error)");
}

TEST(Config, JsonErrorsNameFileAndKey) {
  fs::path dir = fs::temp_directory_path() / cat("bhmoe-config-json-test-", ::getpid());
  fs::create_directories(dir);
  std::string text = olmoe_json().dump(2);
  size_t at = text.find("\"rope_theta\": ");
  ASSERT_NE(at, std::string::npos);
  size_t value = at + 14, end = text.find_first_of(",\n}", value);
  text.replace(value, end - value, "1e400");
  write_file_atomic(dir / "config.json", text);
  try {
    load_config(dir / "config.json");
    ADD_FAILURE() << "1e400 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), (dir / "config.json").string() +
                                         ": number 1e400 at key path rope_theta is not finite "
                                         "as a double (beyond +-1.8e308)");
  }
  write_file_atomic(dir / "config.json", R"({"hidden_size": 64, "hidden_size": 65})");
  try {
    load_config(dir / "config.json");
    ADD_FAILURE() << "duplicate key accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("key \"hidden_size\" appears twice"));
  }
  fs::remove(dir / "config.json");
  ASSERT_EQ(::mkfifo((dir / "config.json").c_str(), 0600), 0);
  try {
    load_config(dir / "config.json");
    ADD_FAILURE() << "FIFO read";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              (dir / "config.json").string() + " is a FIFO (named pipe), not a regular file");
  }
  fs::remove_all(dir);
}

TEST(Config, HiddenNotDivisibleByHeads) {
  json j = olmoe_json();
  j["num_attention_heads"] = 15;
  j["num_key_value_heads"] = 15;
  EXPECT_THAT(error_of(j),
              AllOf(HasSubstr("hidden_size 2048"), HasSubstr("not divisible"), HasSubstr("15")));
}

TEST(Config, ContradictoryHeadDim) {
  json j = olmoe_json();
  j["head_dim"] = 64;
  EXPECT_THAT(error_of(j), AllOf(HasSubstr("head_dim 64"), HasSubstr("contradicts")));
}

TEST(Config, KvHeadsNotDividingHeads) {
  json j = olmoe_json();
  j["num_key_value_heads"] = 3;
  EXPECT_THAT(error_of(j), HasSubstr("num_key_value_heads 3"));
}

TEST(Config, TopKExceedsExperts) {
  json j = olmoe_json();
  j["num_experts_per_tok"] = 65;
  EXPECT_THAT(error_of(j),
              AllOf(HasSubstr("num_experts_per_tok 65"), HasSubstr("exceeds num_experts 64")));
}

TEST(Config, UnsupportedModelType) {
  json j = olmoe_json();
  j["model_type"] = "deepseek_v3";
  EXPECT_THAT(error_of(j), AllOf(HasSubstr("'model_type'"), HasSubstr("deepseek_v3"),
                                 HasSubstr("olmoe"), HasSubstr("qwen2_moe"), HasSubstr("mixtral"),
                                 HasSubstr("deepseek_v2")));
}

// The published configs of the other families, as the hub has them (the keys that matter).
json qwen15_moe_json() {
  return json::parse(R"({
    "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": 2048,
    "intermediate_size": 5632, "moe_intermediate_size": 1408,
    "shared_expert_intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16,
    "num_key_value_heads": 16, "num_experts": 60, "num_experts_per_tok": 4, "norm_topk_prob": false,
    "decoder_sparse_step": 1, "mlp_only_layers": [], "use_sliding_window": false,
    "sliding_window": 32768, "max_window_layers": 21, "vocab_size": 151936, "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-06, "hidden_act": "silu", "max_position_embeddings": 8192,
    "tie_word_embeddings": false, "bos_token_id": 151643, "eos_token_id": 151643,
    "torch_dtype": "bfloat16"})");
}

json qwen3_moe_json() {
  return json::parse(R"({
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
    "intermediate_size": 6144, "moe_intermediate_size": 768, "num_hidden_layers": 48,
    "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
    "num_experts_per_tok": 8, "norm_topk_prob": true, "decoder_sparse_step": 1,
    "mlp_only_layers": [], "use_sliding_window": false, "sliding_window": null,
    "attention_bias": false, "vocab_size": 151936, "rope_theta": 1000000.0, "rope_scaling": null,
    "rms_norm_eps": 1e-06, "hidden_act": "silu", "max_position_embeddings": 40960,
    "tie_word_embeddings": false, "bos_token_id": 151643, "eos_token_id": 151645,
    "torch_dtype": "bfloat16"})");
}

json mixtral_json() {
  return json::parse(R"({
    "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
    "sliding_window": null, "vocab_size": 32000, "rope_theta": 1e6, "rms_norm_eps": 1e-05,
    "hidden_act": "silu", "max_position_embeddings": 32768, "tie_word_embeddings": false,
    "router_aux_loss_coef": 0.02, "bos_token_id": 1, "eos_token_id": 2,
    "torch_dtype": "bfloat16"})");
}

TEST(Config, PublishedQwen15Moe) {
  const ModelConfig c = parse_config(qwen15_moe_json(), "qwen/config.json");
  EXPECT_EQ(c.family, Family::Qwen2Moe);
  EXPECT_EQ(c.intermediate_size, 1408);  // the routed experts' width, not the dense 5632
  EXPECT_EQ(c.shared_expert_intermediate_size, 5632);
  EXPECT_EQ(c.num_experts, 60);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_EQ(c.qk_norm, QkNorm::None);
  EXPECT_FALSE(c.rope_interleaved);
  EXPECT_EQ(c.native_router_spec(), "topk:k=4,renorm=false");
  // The model card's figures: 14.3 B parameters, 2.7 B active, 2.0 B of them outside the
  // embeddings.
  const ParameterCounts p = count_parameters(c);
  EXPECT_NEAR(p.total / 1e9, 14.3, 0.05);
  EXPECT_NEAR(p.active / 1e9, 2.7, 0.05);
  EXPECT_NEAR((p.active - p.embedding - p.lm_head) / 1e9, 2.0, 0.1);
}

TEST(Config, PublishedQwen3Moe) {
  const ModelConfig c = parse_config(qwen3_moe_json(), "qwen3/config.json");
  EXPECT_EQ(c.family, Family::Qwen3Moe);
  EXPECT_EQ(c.intermediate_size, 768);
  EXPECT_EQ(c.head_dim, 128);  // declared: 32 heads x 128 = 4096 query width on D 2048
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.qk_norm, QkNorm::PerHead);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.shared_expert_intermediate_size, 0);
  EXPECT_EQ(c.native_router_spec(), "topk:k=8,renorm=true");
  const ParameterCounts p = count_parameters(c);
  EXPECT_NEAR(p.total / 1e9, 30.5, 0.1);  // "Qwen3-30B-A3B: 30.5B in total and 3.3B activated"
  EXPECT_NEAR(p.active / 1e9, 3.3, 0.1);
}

TEST(Config, PublishedMixtral) {
  const ModelConfig c = parse_config(mixtral_json(), "mixtral/config.json");
  EXPECT_EQ(c.family, Family::Mixtral);
  EXPECT_EQ(c.num_experts, 8);  // num_local_experts
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.qk_norm, QkNorm::None);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_TRUE(c.norm_topk_prob);  // Mixtral always renormalises its top-2
  EXPECT_EQ(c.native_router_spec(), "topk:k=2,renorm=true");
  const ParameterCounts p = count_parameters(c);
  EXPECT_NEAR(p.total / 1e9, 46.7, 0.1);  // "46.7B total parameters but only uses 12.9B"
  EXPECT_NEAR(p.active / 1e9, 12.9, 0.1);
}

TEST(Config, FamiliesRoundTrip) {
  for (const json& j : {qwen15_moe_json(), qwen3_moe_json(), mixtral_json()}) {
    const ModelConfig c = parse_config(j, "config.json");
    const ModelConfig again = parse_config(to_json(c), "to_json");
    EXPECT_EQ(to_json(again), to_json(c)) << c.model_type;
    EXPECT_EQ(again.intermediate_size, c.intermediate_size);
    EXPECT_EQ(again.head_dim, c.head_dim);
    EXPECT_EQ(again.qk_norm, c.qk_norm);
    EXPECT_EQ(again.qkv_bias, c.qkv_bias);
    EXPECT_EQ(again.shared_expert_intermediate_size, c.shared_expert_intermediate_size);
    EXPECT_EQ(again.norm_topk_prob, c.norm_topk_prob);
  }
}

TEST(Config, FamilyKeysTheEngineDoesNotImplementAreRefused) {
  auto error_with = [](json j, const char* key, const json& value) {
    j[key] = value;
    return error_of(j);
  };
  EXPECT_THAT(error_with(qwen15_moe_json(), "decoder_sparse_step", 2),
              AllOf(HasSubstr("'decoder_sparse_step'"), HasSubstr("every layer MoE")));
  EXPECT_THAT(error_with(qwen3_moe_json(), "mlp_only_layers", json::array({0})),
              AllOf(HasSubstr("'mlp_only_layers'"), HasSubstr("[0]")));
  EXPECT_THAT(error_with(qwen3_moe_json(), "use_sliding_window", true),
              HasSubstr("'use_sliding_window'"));
  EXPECT_THAT(error_with(mixtral_json(), "sliding_window", 4096),
              AllOf(HasSubstr("'sliding_window'"), HasSubstr("4096")));
  EXPECT_EQ(error_with(mixtral_json(), "sliding_window", 32768), "(no error)");
  EXPECT_THAT(error_with(mixtral_json(), "clip_qkv", 8.0), HasSubstr("'clip_qkv'"));
  EXPECT_THAT(error_with(mixtral_json(), "attention_bias", true), HasSubstr("'attention_bias'"));
  EXPECT_EQ(error_with(qwen3_moe_json(), "attention_bias", true), "(no error)");
  json no_shared = qwen15_moe_json();
  no_shared.erase("shared_expert_intermediate_size");
  EXPECT_THAT(error_of(no_shared),
              AllOf(HasSubstr("'shared_expert_intermediate_size'"), HasSubstr("missing")));
  json no_experts = mixtral_json();
  no_experts.erase("num_local_experts");
  EXPECT_THAT(error_of(no_experts), AllOf(HasSubstr("'num_local_experts'"), HasSubstr("missing")));
  // OLMoE's attention is hidden_size / heads wide: a different head_dim contradicts it.
  EXPECT_THAT(error_with(olmoe_json(), "head_dim", 64), HasSubstr("contradicts"));
}

// DeepSeek-V2-Lite's config.json (deepseek-ai/DeepSeek-V2-Lite), the keys the modelling code reads.
json deepseek_v2_lite_json() {
  return json::parse(R"({
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
    "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408,
    "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16,
    "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
    "first_k_dense_replace": 1, "moe_layer_freq": 1, "norm_topk_prob": false,
    "routed_scaling_factor": 1.0, "topk_method": "greedy", "scoring_func": "softmax",
    "n_group": 1, "topk_group": 1, "aux_loss_alpha": 0.001, "seq_aux": true, "ep_size": 1,
    "q_lora_rank": null, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "v_head_dim": 128, "vocab_size": 102400, "rope_theta": 10000, "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
                     "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096,
                     "type": "yarn"},
    "hidden_act": "silu", "max_position_embeddings": 163840, "attention_bias": false,
    "attention_dropout": 0.0, "tie_word_embeddings": false, "bos_token_id": 100000,
    "eos_token_id": 100001, "pretraining_tp": 1, "use_cache": true,
    "torch_dtype": "bfloat16"})");
}

TEST(Config, PublishedDeepseekV2Lite) {
  const ModelConfig c = parse_config(deepseek_v2_lite_json(), "deepseek/config.json");
  EXPECT_EQ(c.family, Family::DeepseekV2);
  EXPECT_EQ(c.model_type, "deepseek_v2");
  EXPECT_EQ(c.intermediate_size, 1408);  // the routed experts'
  EXPECT_EQ(c.dense_intermediate_size, 10944);
  EXPECT_EQ(c.shared_expert_intermediate_size, 2 * 1408);
  EXPECT_FALSE(c.shared_expert_gated);
  EXPECT_EQ(c.num_experts, 64);
  EXPECT_EQ(c.first_k_dense_replace, 1);
  EXPECT_EQ(c.num_routed_layers(), 26);
  EXPECT_TRUE(c.mla());
  EXPECT_EQ(c.kv_lora_rank, 512);
  EXPECT_EQ(c.head_dim, 192);  // qk_nope + qk_rope
  EXPECT_EQ(c.rope_head_dim(), 64);
  EXPECT_EQ(c.value_head_dim(), 128);
  EXPECT_EQ(c.num_kv_heads, 16);
  EXPECT_TRUE(c.rope_interleaved);
  EXPECT_EQ(c.qk_norm, QkNorm::None);
  ASSERT_TRUE(c.yarn.has_value());
  EXPECT_EQ(c.yarn->factor, 40);
  EXPECT_EQ(c.yarn->original_max_position_embeddings, 4096);
  EXPECT_EQ(c.yarn->mscale_all_dim, 0.707);
  EXPECT_EQ(c.routed_scaling_factor, 1.0);
  EXPECT_EQ(c.native_router_spec(), "topk:k=6,renorm=false");
  // "15.7B total parameters, of which 2.4B are activated for each token": 2.4 B counts lm_head but
  // not the embedding lookup, which count_parameters' active includes (then 2.66 B).
  const ParameterCounts p = count_parameters(c);
  EXPECT_NEAR(p.total / 1e9, 15.7, 0.05);
  EXPECT_NEAR((p.active - p.embedding) / 1e9, 2.4, 0.06);
  EXPECT_NEAR(p.active / 1e9, 2.66, 0.01);
  // The preset is the same shape.
  const ModelConfig preset = preset_config("deepseek-v2-lite");
  EXPECT_EQ(count_parameters(preset).total, p.total);
  EXPECT_EQ(count_parameters(preset).active, p.active);
}

TEST(Config, DeepseekV2RoundTrip) {
  const ModelConfig c = parse_config(deepseek_v2_lite_json(), "config.json");
  const ModelConfig again = parse_config(to_json(c), "to_json");
  EXPECT_EQ(to_json(again), to_json(c));
  EXPECT_EQ(again.kv_lora_rank, c.kv_lora_rank);
  EXPECT_EQ(again.qk_nope_head_dim, c.qk_nope_head_dim);
  EXPECT_EQ(again.v_head_dim, c.v_head_dim);
  EXPECT_EQ(again.first_k_dense_replace, c.first_k_dense_replace);
  EXPECT_EQ(again.dense_intermediate_size, c.dense_intermediate_size);
  EXPECT_EQ(again.shared_expert_intermediate_size, c.shared_expert_intermediate_size);
  ASSERT_TRUE(again.yarn.has_value());
  EXPECT_EQ(again.yarn->mscale, c.yarn->mscale);
  json plain = deepseek_v2_lite_json();
  plain["rope_scaling"] = nullptr;
  EXPECT_FALSE(parse_config(plain, "config.json").yarn.has_value());
}

TEST(Config, DeepseekV2KeysTheEngineDoesNotImplementAreRefused) {
  auto error_with = [](const char* key, const json& value) {
    json j = deepseek_v2_lite_json();
    j[key] = value;
    return error_of(j);
  };
  EXPECT_THAT(error_with("q_lora_rank", 1536),
              AllOf(HasSubstr("dir/config.json"), HasSubstr("'q_lora_rank'"), HasSubstr("1536")));
  EXPECT_THAT(error_with("topk_method", "group_limited_greedy"),
              AllOf(HasSubstr("'topk_method'"), HasSubstr("group_limited_greedy")));
  EXPECT_THAT(error_with("topk_method", "noaux_tc"), HasSubstr("'topk_method'"));
  EXPECT_THAT(error_with("scoring_func", "sigmoid"), HasSubstr("'scoring_func'"));
  EXPECT_THAT(error_with("first_k_dense_replace", 27),
              AllOf(HasSubstr("'first_k_dense_replace'"), HasSubstr("27")));
  EXPECT_THAT(error_with("first_k_dense_replace", -1), HasSubstr("'first_k_dense_replace'"));
  EXPECT_THAT(error_with("moe_layer_freq", 2), HasSubstr("'moe_layer_freq'"));
  EXPECT_THAT(error_with("num_key_value_heads", 4), HasSubstr("'num_key_value_heads'"));
  EXPECT_THAT(error_with("qk_rope_head_dim", 63), HasSubstr("'qk_rope_head_dim'"));
  EXPECT_THAT(error_with("rope_scaling", {{"type", "linear"}, {"factor", 2.0}}),
              AllOf(HasSubstr("'rope_scaling'"), HasSubstr("yarn")));
  EXPECT_THAT(error_with("rope_scaling", {{"type", "yarn"}, {"factor", 40}}),
              HasSubstr("'original_max_position_embeddings'"));
  json renorm = deepseek_v2_lite_json();
  renorm["norm_topk_prob"] = true;
  EXPECT_EQ(error_of(renorm), "(no error)");  // with routed_scaling_factor 1
  renorm["routed_scaling_factor"] = 16.0;
  EXPECT_THAT(error_of(renorm), HasSubstr("'routed_scaling_factor'"));
  json no_latent = deepseek_v2_lite_json();
  no_latent.erase("kv_lora_rank");
  EXPECT_THAT(error_of(no_latent), AllOf(HasSubstr("'kv_lora_rank'"), HasSubstr("missing")));
}

TEST(Config, RopeScalingUnsupported) {
  json j = olmoe_json();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_THAT(error_of(j),
              AllOf(HasSubstr("'rope_scaling'"), HasSubstr("linear"), HasSubstr("only null")));
}

TEST(Config, UnknownHiddenAct) {
  json j = olmoe_json();
  j["hidden_act"] = "gelu";
  EXPECT_THAT(error_of(j), AllOf(HasSubstr("'hidden_act'"), HasSubstr("gelu")));
}

TEST(Config, AttentionBiasUnsupported) {
  json j = olmoe_json();
  j["attention_bias"] = true;
  EXPECT_THAT(error_of(j), HasSubstr("'attention_bias'"));
}

TEST(Config, TokenIdOutsideVocab) {
  json j = olmoe_json();
  j["eos_token_id"] = 50304;
  EXPECT_THAT(error_of(j), AllOf(HasSubstr("eos_token_id 50304"), HasSubstr("vocab_size 50304")));
}

TEST(Config, NonPositiveEpsAndClip) {
  json j = olmoe_json();
  j["rms_norm_eps"] = 0;
  EXPECT_THAT(error_of(j), HasSubstr("'rms_norm_eps'"));
  j = olmoe_json();
  j["clip_qkv"] = -1.0;
  EXPECT_THAT(error_of(j), HasSubstr("'clip_qkv'"));
}

TEST(Config, NotAnObject) {
  EXPECT_THAT(error_of(json::array({1, 2})), HasSubstr("JSON object"));
}

TEST(Config, MalformedFile) {
  fs::path dir = fs::temp_directory_path() / cat("bhmoe-config-test-", ::getpid());
  fs::create_directories(dir);
  write_file_atomic(dir / "config.json", "{\"hidden_size\": 64,,}");
  try {
    load_config(dir / "config.json");
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(),
                AllOf(HasSubstr((dir / "config.json").string()), HasSubstr("malformed JSON")));
  }
  fs::remove_all(dir);
}

TEST(Config, MissingFile) {
  try {
    load_config("/nonexistent/config.json");
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("/nonexistent/config.json"));
  }
}

TEST(Config, ParameterCountsOfOlmoe) {
  ParameterCounts p = count_parameters(load_config(kShared / "olmoe" / "config.json"));
  // 6.92 B total, 1.28 B active at top-8 (the published figures: "7B total, 1B active").
  EXPECT_EQ(p.total, 6919161856);
  EXPECT_EQ(p.active, 1282017280);
  EXPECT_EQ(p.embedding, 50304LL * 2048);
  EXPECT_EQ(p.per_expert, 3LL * 1024 * 2048);
  EXPECT_EQ(p.total, p.embedding + p.lm_head + p.dense + p.experts);
}

}  // namespace
}  // namespace bhmoe::model
