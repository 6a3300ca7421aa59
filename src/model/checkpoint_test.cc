#include "model/checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "model/make_model.h"
#include "model/safetensors.h"
#include "util/error.h"
#include "util/file.h"

namespace bhmoe::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::HasSubstr;

const fs::path kGolden = fs::path(BHMOE_SHARED_DIR) / "golden";

// A small config: D 16, F 8, 2 heads, 4 experts top-2, V 32, 2 layers.
ModelConfig small_config() {
  ModelConfig c = preset_config("tiny");
  c.hidden_size = 16;
  c.intermediate_size = 8;
  c.num_heads = 2;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.num_experts = 4;
  c.num_experts_per_tok = 2;
  c.vocab_size = 32;
  c.eos_token_id = 0;
  return c;
}

// Deterministic contents for a per-expert-layout tensor name, encoded in `dtype` (F32 or BF16).
std::string contents(const std::string& name, int64_t numel, const std::string& dtype) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : name) h = (h ^ ch) * 0x100000001b3ull;
  std::string out;
  for (int64_t i = 0; i < numel; ++i) {
    float v = static_cast<float>((h + 7919 * i) % 997) / 997.0f - 0.5f;
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    if (dtype == "BF16") {
      uint16_t hi = bits >> 16;
      out.append(reinterpret_cast<const char*>(&hi), 2);
    } else {
      out.append(reinterpret_cast<const char*>(&v), 4);
    }
  }
  return out;
}

struct Tensors {
  std::vector<TensorSpec> specs;
  std::vector<std::string> data;

  void remove(const std::string& name) {
    for (size_t i = 0; i < specs.size(); ++i) {
      if (specs[i].name == name) {
        specs.erase(specs.begin() + i);
        data.erase(data.begin() + i);
        return;
      }
    }
    ADD_FAILURE() << "no tensor " << name;
  }
  void replace(const std::string& name, TensorSpec spec, std::string bytes) {
    for (size_t i = 0; i < specs.size(); ++i) {
      if (specs[i].name == name) {
        specs[i] = std::move(spec);
        data[i] = std::move(bytes);
        return;
      }
    }
    ADD_FAILURE() << "no tensor " << name;
  }
  void add(TensorSpec spec, std::string bytes) {
    specs.push_back(std::move(spec));
    data.push_back(std::move(bytes));
  }
  std::vector<std::string_view> views() const { return {data.begin(), data.end()}; }
};

// Every tensor of `c`; the fused layout holds exactly the per-expert layout's values.
Tensors build(const ModelConfig& c, const std::string& dtype, bool fused) {
  Tensors t;
  const auto kdtype = *kernel_dtype(dtype);
  for (auto& spec : checkpoint_tensor_specs(c, kdtype, fused)) {
    std::string bytes;
    const int64_t f = c.intermediate_size, d = c.hidden_size;
    auto ends_with = [&](const char* suffix) {
      std::string_view s(suffix);
      return spec.name.size() >= s.size() &&
             spec.name.compare(spec.name.size() - s.size(), s.size(), s) == 0;
    };
    if (ends_with("experts.gate_up_proj") || ends_with("experts.down_proj")) {
      const std::string prefix = spec.name.substr(0, spec.name.rfind('.') + 1);
      for (int e = 0; e < c.num_experts; ++e) {
        if (ends_with("gate_up_proj")) {
          bytes += contents(cat(prefix, e, ".gate_proj.weight"), f * d, dtype);
          bytes += contents(cat(prefix, e, ".up_proj.weight"), f * d, dtype);
        } else {
          bytes += contents(cat(prefix, e, ".down_proj.weight"), d * f, dtype);
        }
      }
    } else {
      int64_t numel = 1;
      for (int64_t s : spec.shape) numel *= s;
      bytes = contents(spec.name, numel, dtype);
    }
    t.add(std::move(spec), std::move(bytes));
  }
  return t;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           cat("bhmoe-checkpoint-test-", ::getpid(), "-",
               ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path write(const std::string& name, const ModelConfig& c, const Tensors& t) {
    fs::path dir = dir_ / name;
    fs::create_directories(dir);
    write_file_atomic(dir / "config.json", to_json(c).dump(2));
    write_safetensors(dir / "model.safetensors", t.specs, t.views());
    return dir;
  }

  std::string error_of(const fs::path& dir) {
    try {
      Checkpoint::open(dir);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  }

  fs::path dir_;
};

bool same_bytes(const TensorView& a, const TensorView& b) {
  if (a.rows != b.rows || a.cols != b.cols || a.dtype != b.dtype) return false;
  size_t n = a.numel() * safetensors_dtype_size(safetensors_dtype_name(a.dtype));
  return std::memcmp(a.data, b.data, n) == 0;
}

uint32_t f32_bits(const TensorView& v, int64_t i) {
  EXPECT_EQ(v.dtype, DType::F32);
  uint32_t bits;
  std::memcpy(&bits, static_cast<const uint8_t*>(v.data) + 4 * i, 4);
  return bits;
}

uint16_t bf16_bits(const TensorView& v, int64_t i) {
  EXPECT_EQ(v.dtype, DType::BF16);
  uint16_t bits;
  std::memcpy(&bits, static_cast<const uint8_t*>(v.data) + 2 * i, 2);
  return bits;
}

// Expected values read from the golden files' bytes independently (Python struct).
TEST_F(CheckpointTest, GoldenF32) {
  auto ckpt = Checkpoint::open(kGolden / "tiny-f32");
  const Weights& w = ckpt->weights();
  EXPECT_EQ(ckpt->config().hidden_size, 64);
  EXPECT_EQ(ckpt->expert_layout(), ExpertLayout::PerExpert);
  EXPECT_EQ(ckpt->mapped_bytes(), 1062992u);
  ASSERT_EQ(ckpt->weight_files().size(), 1u);
  EXPECT_EQ(ckpt->weight_files()[0].tensors, 69u);
  EXPECT_EQ(ckpt->weight_files()[0].dtypes, std::vector<std::string>{"F32"});
  EXPECT_EQ(w.embed.rows, 1024);
  EXPECT_EQ(w.embed.cols, 64);
  EXPECT_EQ(w.embed.name, "model.embed_tokens.weight");
  EXPECT_EQ(f32_bits(w.embed, 0), 0x3f5d5344u);
  EXPECT_EQ(f32_bits(w.embed, 1), 0xbf36d790u);
  EXPECT_EQ(f32_bits(w.embed, 5 * 64 + 3), 0xbed38002u);
  ASSERT_EQ(w.layers.size(), 2u);
  ASSERT_EQ(w.layers[1].experts.size(), 8u);
  const TensorView& down = w.layers[1].experts[7].down;
  EXPECT_EQ(down.rows, 64);
  EXPECT_EQ(down.cols, 32);
  EXPECT_EQ(f32_bits(down, 0), 0x3e41f47cu);
  EXPECT_EQ(f32_bits(down, 31), 0x3d9a33c5u);
  EXPECT_EQ(f32_bits(down, 64 * 32 - 1), 0x3d8b7d87u);
  EXPECT_EQ(f32_bits(w.lm_head, 1023 * 64 + 63), 0xbe3a8bb6u);
  EXPECT_NE(w.lm_head.data, w.embed.data);  // not tied
  const TensorView& q_norm = w.layers[0].q_norm;
  EXPECT_EQ(q_norm.rows, 1);
  EXPECT_EQ(q_norm.cols, 64);
  EXPECT_EQ(f32_bits(q_norm, 0), 0x3f75c838u);
  EXPECT_EQ(f32_bits(q_norm, 5), 0x3f809657u);
  EXPECT_EQ(w.layers[0].router.rows, 8);
  EXPECT_EQ(w.layers[0].k_proj.rows, 64);
  EXPECT_EQ(w.final_norm.cols, 64);
}

TEST_F(CheckpointTest, GoldenBf16) {
  auto ckpt = Checkpoint::open(kGolden / "tiny-bf16");
  const Weights& w = ckpt->weights();
  EXPECT_EQ(ckpt->weight_files()[0].dtypes, std::vector<std::string>{"BF16"});
  EXPECT_EQ(bf16_bits(w.embed, 0), 0x3f5a);
  EXPECT_EQ(bf16_bits(w.embed, 1), 0xbe1b);
  EXPECT_EQ(bf16_bits(w.embed, 5 * 64 + 3), 0x3eb3);
  const TensorView& down = w.layers[1].experts[7].down;
  EXPECT_EQ(bf16_bits(down, 0), 0xbde8);
  EXPECT_EQ(bf16_bits(down, 31), 0x3934);
  EXPECT_EQ(bf16_bits(down, 64 * 32 - 1), 0xbdb6);
  EXPECT_EQ(bf16_bits(w.lm_head, 1023 * 64 + 63), 0xbd93);
  EXPECT_EQ(bf16_bits(w.layers[0].q_norm, 0), 0x3f80);
}

TEST_F(CheckpointTest, ViewsPointIntoTheMapping) {
  // Zero-copy: each view's address is the mapping's base plus the tensor's offset in the file.
  auto ckpt = Checkpoint::open(kGolden / "tiny-f32");
  SafetensorsFile file = SafetensorsFile::open(kGolden / "tiny-f32" / "model.safetensors");
  const auto* base = static_cast<const uint8_t*>(ckpt->weights().embed.data);
  const SafetensorsTensor* embed = file.find("model.embed_tokens.weight");
  auto offset_of = [&](const std::string& name) {
    return int64_t(file.find(name)->begin) - int64_t(embed->begin);
  };
  const auto& layer = ckpt->weights().layers[1];
  EXPECT_EQ(static_cast<const uint8_t*>(layer.experts[3].up.data) - base,
            offset_of("model.layers.1.mlp.experts.3.up_proj.weight"));
  EXPECT_EQ(static_cast<const uint8_t*>(ckpt->weights().lm_head.data) - base,
            offset_of("lm_head.weight"));
}

TEST_F(CheckpointTest, FusedAndPerExpertViewsAgree) {
  ModelConfig c = small_config();
  for (const char* dtype : {"F32", "BF16"}) {
    auto per_expert = Checkpoint::open(write(cat("per-expert-", dtype), c, build(c, dtype, false)));
    auto fused = Checkpoint::open(write(cat("fused-", dtype), c, build(c, dtype, true)));
    EXPECT_EQ(per_expert->expert_layout(), ExpertLayout::PerExpert);
    EXPECT_EQ(fused->expert_layout(), ExpertLayout::Fused);
    for (int l = 0; l < c.num_layers; ++l) {
      const LayerWeights& a = per_expert->weights().layers[l];
      const LayerWeights& b = fused->weights().layers[l];
      ASSERT_EQ(b.experts.size(), 4u);
      for (int e = 0; e < c.num_experts; ++e) {
        EXPECT_TRUE(same_bytes(a.experts[e].gate, b.experts[e].gate))
            << dtype << " layer " << l << " expert " << e;
        EXPECT_TRUE(same_bytes(a.experts[e].up, b.experts[e].up))
            << dtype << " layer " << l << " expert " << e;
        EXPECT_TRUE(same_bytes(a.experts[e].down, b.experts[e].down))
            << dtype << " layer " << l << " expert " << e;
        EXPECT_EQ(b.experts[e].gate.rows, c.intermediate_size);
        EXPECT_EQ(b.experts[e].down.rows, c.hidden_size);
        EXPECT_EQ(b.experts[e].down.cols, c.intermediate_size);
      }
      // Views into the fused tensor, not copies: consecutive experts are 2F rows apart.
      const size_t element = std::string(dtype) == "F32" ? 4 : 2;
      EXPECT_EQ(static_cast<const uint8_t*>(b.experts[1].gate.data) -
                    static_cast<const uint8_t*>(b.experts[0].gate.data),
                int64_t(2 * c.intermediate_size * c.hidden_size * element));
      EXPECT_THAT(b.experts[2].up.name, HasSubstr("gate_up_proj"));
      EXPECT_TRUE(same_bytes(a.q_proj, b.q_proj));
    }
  }
}

TEST_F(CheckpointTest, ShardedWithIndex) {
  ModelConfig c = small_config();
  Tensors t = build(c, "BF16", false);
  auto single = Checkpoint::open(write("single", c, t));
  fs::path dir = dir_ / "sharded";
  fs::create_directories(dir);
  write_file_atomic(dir / "config.json", to_json(c).dump());
  // Two shards split in the middle of the tensor list.
  size_t half = t.specs.size() / 2;
  Tensors first, second;
  json weight_map;
  for (size_t i = 0; i < t.specs.size(); ++i) {
    (i < half ? first : second).add(t.specs[i], t.data[i]);
    weight_map[t.specs[i].name] =
        i < half ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  write_safetensors(dir / "model-00001-of-00002.safetensors", first.specs, first.views());
  write_safetensors(dir / "model-00002-of-00002.safetensors", second.specs, second.views());
  write_file_atomic(dir / "model.safetensors.index.json",
                    json{{"metadata", json::object()}, {"weight_map", weight_map}}.dump());
  auto sharded = Checkpoint::open(dir);
  EXPECT_EQ(sharded->weight_files().size(), 2u);
  EXPECT_EQ(sharded->mapped_bytes(), fs::file_size(dir / "model-00001-of-00002.safetensors") +
                                         fs::file_size(dir / "model-00002-of-00002.safetensors"));
  EXPECT_TRUE(same_bytes(single->weights().embed, sharded->weights().embed));
  EXPECT_TRUE(same_bytes(single->weights().lm_head, sharded->weights().lm_head));
  EXPECT_TRUE(same_bytes(single->weights().layers[1].experts[3].down,
                         sharded->weights().layers[1].experts[3].down));
}

TEST_F(CheckpointTest, MixedDTypesPerTensor) {
  ModelConfig c = small_config();
  Tensors t = build(c, "BF16", false);
  const std::string name = "model.layers.0.self_attn.q_norm.weight";
  t.replace(name, {name, "F32", {16}}, contents(name, 16, "F32"));
  t.replace("lm_head.weight", {"lm_head.weight", "F16", {32, 16}}, std::string(32 * 16 * 2, '\0'));
  auto ckpt = Checkpoint::open(write("mixed", c, t));
  EXPECT_EQ(ckpt->weights().layers[0].q_norm.dtype, DType::F32);
  EXPECT_EQ(ckpt->weights().layers[1].q_norm.dtype, DType::BF16);
  EXPECT_EQ(ckpt->weights().lm_head.dtype, DType::F16);
  EXPECT_EQ(ckpt->weight_files()[0].dtypes, (std::vector<std::string>{"BF16", "F16", "F32"}));
}

TEST_F(CheckpointTest, TiedEmbeddings) {
  ModelConfig c = small_config();
  c.tie_word_embeddings = true;
  Tensors t = build(c, "F32", false);  // no lm_head.weight
  auto ckpt = Checkpoint::open(write("tied", c, t));
  EXPECT_EQ(ckpt->weights().lm_head.data, ckpt->weights().embed.data);
  EXPECT_EQ(ckpt->weights().lm_head.rows, 32);
}

TEST_F(CheckpointTest, MissingTensor) {
  ModelConfig c = small_config();
  Tensors t = build(c, "BF16", false);
  t.remove("model.layers.1.self_attn.k_norm.weight");
  EXPECT_THAT(error_of(write("m", c, t)),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("missing tensor"),
                    HasSubstr("model.layers.1.self_attn.k_norm.weight")));
}

TEST_F(CheckpointTest, MissingExpertTensor) {
  ModelConfig c = small_config();
  Tensors t = build(c, "BF16", false);
  t.remove("model.layers.0.mlp.experts.3.down_proj.weight");
  EXPECT_THAT(error_of(write("m", c, t)),
              HasSubstr("missing tensor model.layers.0.mlp.experts.3.down_proj.weight"));
}

TEST_F(CheckpointTest, MissingLmHeadWhenUntied) {
  ModelConfig c = small_config();
  Tensors t = build(c, "BF16", false);
  t.remove("lm_head.weight");
  EXPECT_THAT(error_of(write("m", c, t)), HasSubstr("missing tensor lm_head.weight"));
}

TEST_F(CheckpointTest, WrongShape) {
  ModelConfig c = small_config();
  Tensors t = build(c, "F32", false);
  const std::string name = "model.layers.1.self_attn.q_proj.weight";
  t.replace(name, {name, "F32", {16, 8}}, contents(name, 128, "F32"));
  EXPECT_THAT(error_of(write("m", c, t)),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("tensor " + name),
                    HasSubstr("shape [16, 8]"), HasSubstr("[16, 16]")));
}

TEST_F(CheckpointTest, VectorStoredAsMatrix) {
  ModelConfig c = small_config();
  Tensors t = build(c, "F32", false);
  const std::string name = "model.norm.weight";
  t.replace(name, {name, "F32", {1, 16}}, contents(name, 16, "F32"));
  EXPECT_THAT(error_of(write("m", c, t)),
              AllOf(HasSubstr("tensor model.norm.weight"), HasSubstr("[1, 16]")));
}

TEST_F(CheckpointTest, WrongFusedShape) {
  ModelConfig c = small_config();
  Tensors t = build(c, "F32", true);
  const std::string name = "model.layers.0.mlp.experts.gate_up_proj";
  t.replace(name, {name, "F32", {4, 8, 16}}, std::string(4 * 8 * 16 * 4, '\0'));  // F rows, not 2F
  EXPECT_THAT(error_of(write("m", c, t)),
              AllOf(HasSubstr(name), HasSubstr("[4, 8, 16]"), HasSubstr("[4, 16, 16]")));
}

TEST_F(CheckpointTest, UnsupportedDType) {
  ModelConfig c = small_config();
  Tensors t = build(c, "F32", false);
  const std::string name = "model.layers.0.mlp.gate.weight";
  t.replace(name, {name, "I32", {4, 16}}, std::string(4 * 16 * 4, '\0'));
  EXPECT_THAT(error_of(write("m", c, t)),
              AllOf(HasSubstr("tensor " + name), HasSubstr("dtype I32 is not supported"),
                    HasSubstr("BF16, F16 or F32")));
}

TEST_F(CheckpointTest, UnknownDTypeInFile) {
  ModelConfig c = small_config();
  fs::path dir = write("m", c, build(c, "F32", false));
  // Rewrite one dtype in place: same header length, a dtype safetensors does not define.
  std::string bytes = read_file(dir / "model.safetensors");
  size_t at = bytes.find("\"F32\"");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 5, "\"F31\"");
  write_file_atomic(dir / "model.safetensors", bytes);
  EXPECT_THAT(error_of(dir),
              AllOf(HasSubstr("model.safetensors"), HasSubstr("unknown dtype \"F31\"")));
}

TEST_F(CheckpointTest, TruncatedWeights) {
  ModelConfig c = small_config();
  fs::path dir = write("m", c, build(c, "F32", false));
  fs::resize_file(dir / "model.safetensors", fs::file_size(dir / "model.safetensors") - 100);
  EXPECT_THAT(error_of(dir), AllOf(HasSubstr("model.safetensors"), HasSubstr("lm_head.weight"),
                                   HasSubstr("past the end")));
}

// Loading looks at no values; find_non_finite reads them all and names the first bad one.
TEST_F(CheckpointTest, FindNonFiniteNamesTheTensorAndElement) {
  ModelConfig c = small_config();
  EXPECT_FALSE(Checkpoint::open(write("clean", c, build(c, "BF16", false)))->find_non_finite());

  // BF16: a NaN at [2, 3] of a router (D = 16 columns: flat index 35), and a later infinity that
  // must not be the one reported.
  Tensors t = build(c, "BF16", false);
  const std::string router = "model.layers.1.mlp.gate.weight";
  std::string bytes = contents(router, int64_t{c.num_experts} * c.hidden_size, "BF16");
  const uint16_t nan = 0xFFC1, inf = 0x7F80;  // a negative NaN with a payload; +inf
  std::memcpy(bytes.data() + 35 * 2, &nan, 2);
  std::memcpy(bytes.data() + 40 * 2, &inf, 2);
  t.replace(router, {router, "BF16", {c.num_experts, c.hidden_size}}, bytes);
  auto found = Checkpoint::open(write("nan", c, t))->find_non_finite();
  ASSERT_TRUE(found);
  EXPECT_EQ(found->tensor, router);
  EXPECT_EQ(found->index, 35);
  EXPECT_TRUE(std::isnan(found->value));
  EXPECT_EQ(found->file.filename(), "model.safetensors");
  EXPECT_EQ(element_index_text(found->shape, found->index), "[2, 3]");

  // F32 and F16 infinities (F16 in a mixed-dtype file), with their signs.
  Tensors f = build(c, "F32", false);
  std::string head = contents("lm_head.weight", int64_t{c.vocab_size} * c.hidden_size, "F32");
  const float minus_inf = -std::numeric_limits<float>::infinity();
  std::memcpy(head.data() + 17 * 4, &minus_inf, 4);
  f.replace("lm_head.weight", {"lm_head.weight", "F32", {c.vocab_size, c.hidden_size}}, head);
  found = Checkpoint::open(write("inf32", c, f))->find_non_finite();
  ASSERT_TRUE(found);
  EXPECT_EQ(found->tensor, "lm_head.weight");
  EXPECT_EQ(found->index, 17);
  EXPECT_EQ(found->value, -std::numeric_limits<double>::infinity());

  Tensors h = build(c, "F32", false);
  std::string norm(static_cast<size_t>(c.hidden_size) * 2, '\0');  // F16 zeros
  const uint16_t f16_inf = 0x7C00;
  std::memcpy(norm.data() + 5 * 2, &f16_inf, 2);
  h.replace("model.norm.weight", {"model.norm.weight", "F16", {c.hidden_size}}, norm);
  found = Checkpoint::open(write("inf16", c, h))->find_non_finite();
  ASSERT_TRUE(found);
  EXPECT_EQ(found->tensor, "model.norm.weight");
  EXPECT_EQ(found->index, 5);
  EXPECT_EQ(found->value, std::numeric_limits<double>::infinity());
  EXPECT_EQ(element_index_text(found->shape, found->index), "[5]");
}

TEST_F(CheckpointTest, MoreLayersThanConfig) {
  ModelConfig c = small_config();
  Tensors t = build(c, "F32", false);
  c.num_layers = 1;
  EXPECT_THAT(error_of(write("m", c, t)),
              AllOf(HasSubstr("model.layers.1."), HasSubstr("num_hidden_layers 1")));
}

// A huge layer count fails on the first missing layer before per-layer tables are sized.
TEST_F(CheckpointTest, FarMoreLayersInConfigThanTensors) {
  ModelConfig c = small_config();
  Tensors t = build(c, "F32", false);
  c.num_layers = 4096;
  fs::path dir = write("m", c, t);
  EXPECT_EQ(error_of(dir), (dir / "model.safetensors").string() +
                               ": missing tensor model.layers.4095.input_layernorm.weight "
                               "(config.json says num_hidden_layers 4096)");
}

TEST_F(CheckpointTest, MoreExpertsThanConfig) {
  ModelConfig c = small_config();
  Tensors t = build(c, "F32", false);
  c.num_experts = 3;
  c.num_experts_per_tok = 2;
  // The router's shape catches it first; the message names the tensor and the shapes.
  EXPECT_THAT(error_of(write("m", c, t)),
              AllOf(HasSubstr("mlp.gate.weight"), HasSubstr("[4, 16]"), HasSubstr("[3, 16]")));
}

TEST_F(CheckpointTest, BothExpertLayouts) {
  ModelConfig c = small_config();
  Tensors t = build(c, "F32", false);
  Tensors fused = build(c, "F32", true);
  for (size_t i = 0; i < fused.specs.size(); ++i) {
    if (fused.specs[i].name == "model.layers.0.mlp.experts.gate_up_proj")
      t.add(fused.specs[i], fused.data[i]);
  }
  EXPECT_THAT(error_of(write("m", c, t)), AllOf(HasSubstr("layer 0"), HasSubstr("both fused")));
}

TEST_F(CheckpointTest, MalformedConfig) {
  ModelConfig c = small_config();
  fs::path dir = write("m", c, build(c, "F32", false));
  write_file_atomic(dir / "config.json", "{\"model_type\": \"olmoe\", ");
  EXPECT_THAT(error_of(dir), AllOf(HasSubstr("config.json"), HasSubstr("malformed JSON")));
}

TEST_F(CheckpointTest, MissingConfigKey) {
  ModelConfig c = small_config();
  fs::path dir = write("m", c, build(c, "F32", false));
  json j = to_json(c);
  j.erase("intermediate_size");
  write_file_atomic(dir / "config.json", j.dump());
  EXPECT_THAT(error_of(dir),
              AllOf(HasSubstr("config.json"), HasSubstr("'intermediate_size' is missing")));
}

TEST_F(CheckpointTest, ContradictoryConfig) {
  ModelConfig c = small_config();
  fs::path dir = write("m", c, build(c, "F32", false));
  json j = to_json(c);
  j["num_experts_per_tok"] = 5;
  write_file_atomic(dir / "config.json", j.dump());
  EXPECT_THAT(error_of(dir), AllOf(HasSubstr("config.json"),
                                   HasSubstr("num_experts_per_tok 5 exceeds num_experts 4")));
}

TEST_F(CheckpointTest, NoConfig) {
  ModelConfig c = small_config();
  fs::path dir = write("m", c, build(c, "F32", false));
  fs::remove(dir / "config.json");
  EXPECT_THAT(error_of(dir), AllOf(HasSubstr(dir.string()), HasSubstr("no config.json")));
}

TEST_F(CheckpointTest, NoWeights) {
  ModelConfig c = small_config();
  fs::path dir = write("m", c, build(c, "F32", false));
  fs::remove(dir / "model.safetensors");
  EXPECT_THAT(error_of(dir), HasSubstr("no model.safetensors or model.safetensors.index.json"));
}

TEST_F(CheckpointTest, NotADirectory) {
  EXPECT_THAT(error_of(dir_ / "absent"),
              AllOf(HasSubstr("absent"), HasSubstr("no such file or directory"),
                    HasSubstr("a model is a Hugging Face checkpoint folder")));
  std::ofstream(dir_ / "file") << "x";
  EXPECT_THAT(error_of(dir_ / "file"), HasSubstr("is not a directory (it is a regular file)"));
}

class IndexTest : public CheckpointTest {
 protected:
  // A checkpoint whose weights are one shard "shard.safetensors" listed by an index.
  fs::path sharded(json* weight_map) {
    ModelConfig c = small_config();
    fs::path dir = write("s", c, build(c, "F32", false));
    fs::rename(dir / "model.safetensors", dir / "shard.safetensors");
    SafetensorsFile f = SafetensorsFile::open(dir / "shard.safetensors");
    for (const auto& t : f.tensors()) (*weight_map)[t.name] = "shard.safetensors";
    return dir;
  }
  void write_index(const fs::path& dir, const json& index) {
    write_file_atomic(dir / "model.safetensors.index.json", index.dump());
  }
};

TEST_F(IndexTest, Valid) {
  json map;
  fs::path dir = sharded(&map);
  write_index(dir, {{"weight_map", map}});
  EXPECT_EQ(Checkpoint::open(dir)->weight_files().size(), 1u);
}

TEST_F(IndexTest, MalformedJson) {
  json map;
  fs::path dir = sharded(&map);
  write_file_atomic(dir / "model.safetensors.index.json", "{\"weight_map\": {");
  EXPECT_THAT(error_of(dir),
              AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("malformed JSON")));
}

TEST_F(IndexTest, OutOfRangeNumberNamesKeyPath) {
  json map;
  fs::path dir = sharded(&map);
  write_file_atomic(dir / "model.safetensors.index.json",
                    "{\"metadata\": {\"total_size\": 1e400}, \"weight_map\": {}}");
  EXPECT_EQ(error_of(dir), (dir / "model.safetensors.index.json").string() +
                               ": number 1e400 at key path metadata.total_size is not finite as "
                               "a double (beyond +-1.8e308)");
}

TEST_F(IndexTest, NoWeightMap) {
  json map;
  fs::path dir = sharded(&map);
  write_index(dir, {{"metadata", {{"total_size", 1}}}});
  EXPECT_THAT(error_of(dir),
              AllOf(HasSubstr("model.safetensors.index.json"), HasSubstr("weight_map")));
}

TEST_F(IndexTest, MissingShard) {
  json map;
  fs::path dir = sharded(&map);
  map["model.norm.weight"] = "model-00002-of-00002.safetensors";
  write_index(dir, {{"weight_map", map}});
  EXPECT_THAT(error_of(dir), AllOf(HasSubstr("model.safetensors.index.json"),
                                   HasSubstr("shard model-00002-of-00002.safetensors"),
                                   HasSubstr("does not exist")));
}

TEST_F(IndexTest, ShardWithoutTheTensor) {
  json map;
  fs::path dir = sharded(&map);
  map["model.extra.weight"] = "shard.safetensors";
  write_index(dir, {{"weight_map", map}});
  EXPECT_THAT(error_of(dir), AllOf(HasSubstr("model.extra.weight"), HasSubstr("does not hold it")));
}

TEST_F(IndexTest, TensorMissingFromMap) {
  json map;
  fs::path dir = sharded(&map);
  map.erase("model.layers.0.mlp.gate.weight");
  write_index(dir, {{"weight_map", map}});
  EXPECT_THAT(error_of(dir), AllOf(HasSubstr("model.safetensors.index.json"),
                                   HasSubstr("missing tensor model.layers.0.mlp.gate.weight")));
}

TEST_F(IndexTest, ShardPathOutsideDirectory) {
  json map;
  fs::path dir = sharded(&map);
  map["model.norm.weight"] = "../elsewhere.safetensors";
  write_index(dir, {{"weight_map", map}});
  EXPECT_THAT(error_of(dir), HasSubstr("not a file in"));
}

TEST_F(IndexTest, CorruptShard) {
  json map;
  fs::path dir = sharded(&map);
  write_index(dir, {{"weight_map", map}});
  write_file_atomic(dir / "shard.safetensors", std::string("\x05\0\0\0\0\0\0\0{]]]]", 13));
  EXPECT_THAT(error_of(dir), AllOf(HasSubstr("shard.safetensors"), HasSubstr("malformed JSON")));
}

}  // namespace
}  // namespace bhmoe::model
