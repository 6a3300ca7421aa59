// The Qwen2-MoE, Qwen3-MoE, Mixtral and DeepSeek-V2 families against references that share no
// code with the engine (src/model/testdata/families, recorded by tools/make_family_goldens.sh):
// - llama.cpp's logits for the GGUF files bhmoe writes of qwen2-moe-tiny, mixtral-tiny,
//   deepseek-v2-tiny and deepseek-v2-tiny-yarn (f32 native and forced top-k, bf16, q8_0); the
//   Hugging Face folders must match them too (Mixtral's folder runs NeoX RoPE on unpermuted rows,
//   its GGUF pairwise RoPE on permuted ones);
// - tools/moe_reference.py (float64 NumPy from the Hugging Face modelling code) on the folders of
//   all five, native, forced top-k and Benjamini-Hochberg with a calibration of its own.
// Each model is rebuilt here by make-model (and export_gguf) and must be byte-identical to what the
// references read (FNV-1a 64 recorded beside the logits).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "kernels/thread_pool.h"
#include "model/engine.h"
#include "model/gguf_export.h"
#include "model/make_model.h"
#include "routing/calibration.h"
#include "routing/router.h"
#include "util/error.h"
#include "util/file.h"
#include "util/gguf.h"
#include "util/json.h"
#include "util/npy.h"

namespace bhmoe::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const fs::path kData = fs::path(BHMOE_SOURCE_DIR) / "src" / "model" / "testdata" / "families";

fs::path scratch() {
  static const fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("bhmoe_family_test_" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

std::string fnv1a64_of(const fs::path& file) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char b : read_file(file)) h = (h ^ b) * 0x100000001b3ull;
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(h));
  return text;
}

// The preset's seed-7 f32 folder, named as the script names it (a GGUF's general.name is the
// folder's name).
fs::path family_folder(const std::string& preset) {
  const fs::path dir = scratch() / preset;
  if (!fs::exists(dir)) {
    MakeModelOptions options;
    options.preset = preset;
    options.dtype = kernels::DType::F32;
    options.seed = 7;
    make_model(dir, options);
  }
  return dir;
}

fs::path family_gguf(const std::string& preset, const std::string& type) {
  const fs::path file = scratch() / cat(preset, "-", type, ".gguf");
  if (!fs::exists(file)) {
    const fs::path dir = family_folder(preset);
    export_gguf(*Checkpoint::open(dir), read_json_file(dir / "tokenizer.json"),
                parse_gguf_matrix_type(type), file);
  }
  return file;
}

double max_abs_diff(const float* got, const float* want, size_t n) {
  double worst = 0;
  for (size_t i = 0; i < n; ++i)
    worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - want[i]));
  return worst;
}

struct PrefillRun {
  std::vector<float> logits;  // [T, V] of one prefill
  double mean_experts = 0;    // selected per token and layer
};

PrefillRun prefill(const std::shared_ptr<const Model>& model, const std::vector<int32_t>& ids,
                   const routing::Router* router) {
  Session session(model, router, nullptr, static_cast<int64_t>(ids.size()));
  PrefillRun run;
  run.logits.resize(ids.size() * static_cast<size_t>(model->config().vocab_size));
  session.prefill(ids, run.logits.data());
  int64_t selected = 0;
  for (int64_t s : session.selected_experts_per_layer()) selected += s;
  // Per routed token and routing layer (DeepSeek-V2's leading dense layers route nothing).
  EXPECT_EQ(session.selected_experts_per_layer().size(),
            static_cast<size_t>(model->config().num_routed_layers()));
  run.mean_experts = static_cast<double>(selected) /
                     (static_cast<double>(ids.size()) * model->config().num_routed_layers());
  return run;
}

TEST(FamilyGoldens, EveryFamilyReproducesItsReferences) {
  const json goldens = read_json_file(kData / "goldens.json");
  ASSERT_EQ(goldens["format"], "bhmoe-family-goldens/1");
  int checked = 0;
  for (const json& k : goldens["cases"]) {
    const std::string name = k["name"], preset = k["model"], source = k["source"];
    SCOPED_TRACE(name);
    const bool gguf = source.rfind("gguf ", 0) == 0;
    const std::string type = gguf ? source.substr(5) : "f32";
    const fs::path path = gguf ? family_gguf(preset, type) : family_folder(preset);
    ASSERT_EQ(fnv1a64_of(gguf ? path : path / "model.safetensors"), k["fnv1a64"].get<std::string>())
        << "make-model or convert no longer writes the file the reference read: rerun "
           "tools/make_family_goldens.sh";
    auto model = Model::load(path);
    const ModelConfig& c = model->config();
    const std::string family = preset == "mixtral-tiny"           ? "mixtral"
                               : preset == "qwen2-moe-tiny"       ? "qwen2_moe"
                               : preset.rfind("deepseek", 0) == 0 ? "deepseek_v2"
                                                                  : "qwen3_moe";
    EXPECT_EQ(c.model_type, family);
    std::unique_ptr<routing::Router> router;
    const std::string spec = k["router"];
    if (spec != "native") {
      auto calibration = std::make_shared<routing::Calibration>(
          routing::Calibration::load(kData / cat(preset, "-calibration.json")));
      router = routing::make_router(spec, c.num_experts, calibration);
    }
    const auto ids = k["ids"].get<std::vector<int32_t>>();
    const size_t T = ids.size(), V = static_cast<size_t>(c.vocab_size);
    const NpyArray want = read_npy(kData / k["logits"].get<std::string>());
    ASSERT_EQ(want.shape, (std::vector<int64_t>{static_cast<int64_t>(T), c.vocab_size}));
    const PrefillRun run = prefill(model, ids, router.get());
    double scale = 0;
    for (float v : want.data) scale = std::max(scale, std::fabs(static_cast<double>(v)));
    if (type == "f32") {
      EXPECT_LE(max_abs_diff(run.logits.data(), want.data.data(), T * V), 1e-4);
      // Decode (one token at a time: matvec, not matmul) reaches the same logits.
      Session session(model, router.get(), nullptr, static_cast<int64_t>(T));
      for (size_t t = 0; t < T; ++t) {
        session.decode(ids[t]);
        EXPECT_LE(max_abs_diff(session.last_logits(), want.data.data() + t * V, V), 1e-4)
            << "decode, position " << t;
      }
      // The Hugging Face folder reproduces llama.cpp's logits of the GGUF file too.
      if (gguf) {
        const PrefillRun folder = prefill(Model::load(family_folder(preset)), ids, router.get());
        EXPECT_LE(max_abs_diff(folder.logits.data(), want.data.data(), T * V), 1e-4);
      }
    } else {
      // bf16 and q8_0 (see the GGUF goldens' test for the reasoning): both sides round activations
      // (llama.cpp to the weight type or Q8_0 blocks, bhmoe to int8 blocks or bf16 in batches), a
      // random walk well under 1% of the largest logit except where it flips a near-tie expert.
      int within = 0;
      for (size_t t = 0; t < T; ++t)
        within +=
            max_abs_diff(run.logits.data() + t * V, want.data.data() + t * V, V) <= 0.02 * scale;
      EXPECT_GE(within, static_cast<int>(T) * 3 / 4);
      EXPECT_LE(max_abs_diff(run.logits.data(), want.data.data(), T * V) / scale, 0.25);
    }
    if (!k["mean_experts"].is_null())
      EXPECT_NEAR(run.mean_experts, k["mean_experts"].get<double>(), 1e-9);
    ++checked;
  }
  EXPECT_EQ(checked, 17 + 2 * 7);
}

// The routing the families declare: Mixtral and Qwen3 renormalise their top-k, Qwen2-MoE and
// DeepSeek-V2 do not; the shared expert is never counted as selected, DeepSeek-V2's dense layer
// never routes.
TEST(FamilyGoldens, NativeRoutersAndCounts) {
  struct Want {
    const char* preset;
    const char* spec;
  };
  for (const Want& w : {Want{"qwen2-moe-tiny", "topk:k=4,renorm=false"},
                        Want{"qwen3-moe-tiny", "topk:k=2,renorm=true"},
                        Want{"mixtral-tiny", "topk:k=2,renorm=true"},
                        Want{"deepseek-v2-tiny", "topk:k=2,renorm=false"}}) {
    SCOPED_TRACE(w.preset);
    auto model = Model::load(family_folder(w.preset));
    EXPECT_EQ(model->config().native_router_spec(), w.spec);
    const PrefillRun run = prefill(model, {1, 2, 3, 4, 5}, nullptr);
    EXPECT_EQ(run.mean_experts, model->config().num_experts_per_tok);
  }
}

// DeepSeek-V2's leading dense layer has no router: observers see routing layers 0..R-1 only, the
// decoder layers 1..L-1, and the calibration covers those.
TEST(FamilyGoldens, DeepseekDenseLayerIsNotRouted) {
  auto model = Model::load(family_folder("deepseek-v2-tiny"));
  const ModelConfig& c = model->config();
  ASSERT_EQ(c.first_k_dense_replace, 1);
  struct Layers final : RouterObserver {
    std::vector<int> seen;
    void on_route(const RouterEvent& e) override { seen.push_back(e.layer); }
  } observer;
  Session session(model, nullptr, nullptr, 8);
  session.set_observer(&observer);
  session.prefill(std::vector<int32_t>{1, 2, 3});
  ASSERT_EQ(observer.seen.size(), 3u * c.num_routed_layers());
  EXPECT_EQ(*std::min_element(observer.seen.begin(), observer.seen.end()), 0);
  EXPECT_EQ(*std::max_element(observer.seen.begin(), observer.seen.end()),
            c.num_routed_layers() - 1);
  EXPECT_EQ(routing::Calibration::load(kData / "deepseek-v2-tiny-calibration.json").num_layers(),
            c.num_routed_layers());
}

// Latent attention split over threads (q | latent rows, kv_b rows, heads), prefill of a prefix then
// decode, reaches llama.cpp's logits as the single-threaded prefill does.
TEST(FamilyGoldens, DeepseekThreadedPrefillThenDecode) {
  const json goldens = read_json_file(kData / "goldens.json");
  for (const char* name : {"deepseek-v2-tiny-f32-native", "deepseek-v2-tiny-yarn-f32-native"}) {
    SCOPED_TRACE(name);
    const json* k = nullptr;
    for (const json& c : goldens["cases"])
      if (c["name"] == name) k = &c;
    ASSERT_NE(k, nullptr);
    const NpyArray want = read_npy(kData / (*k)["logits"].get<std::string>());
    const auto ids = (*k)["ids"].get<std::vector<int32_t>>();
    auto model = Model::load(family_folder((*k)["model"].get<std::string>()));
    const size_t V = static_cast<size_t>(model->config().vocab_size);
    kernels::ThreadPool pool(3);
    Session session(model, nullptr, &pool, static_cast<int64_t>(ids.size()));
    const size_t prefix = 5;
    std::vector<float> logits(prefix * V);
    session.prefill(std::span<const int32_t>(ids.data(), prefix), logits.data());
    EXPECT_LE(max_abs_diff(logits.data(), want.data.data(), prefix * V), 1e-4);
    for (size_t t = prefix; t < ids.size(); ++t) {
      session.decode(ids[t]);
      EXPECT_LE(max_abs_diff(session.last_logits(), want.data.data() + t * V, V), 1e-4)
          << "decode, position " << t;
    }
  }
}

// The deepseek2 GGUF file bhmoe writes reads back as the folder's config (MLA widths, the dense
// layer, shared experts, scaling, YaRN through llama.cpp's keys).
TEST(FamilyGoldens, DeepseekGgufKeysReadBackAsTheConfig) {
  const ModelConfig folder = Model::load(family_folder("deepseek-v2-tiny-yarn"))->config();
  const ModelConfig gguf = Model::load(family_gguf("deepseek-v2-tiny-yarn", "f32"))->config();
  EXPECT_EQ(gguf.family, Family::DeepseekV2);
  for (const ModelConfig* c : {&folder, &gguf}) {
    EXPECT_EQ(c->kv_lora_rank, 32);
    EXPECT_EQ(c->qk_nope_head_dim, 16);
    EXPECT_EQ(c->qk_rope_head_dim, 8);
    EXPECT_EQ(c->v_head_dim, 16);
    EXPECT_EQ(c->head_dim, 24);
    EXPECT_EQ(c->first_k_dense_replace, 1);
    EXPECT_EQ(c->dense_intermediate_size, 96);
    EXPECT_EQ(c->shared_expert_intermediate_size, 64);
    EXPECT_FALSE(c->shared_expert_gated);
    EXPECT_EQ(c->routed_scaling_factor, 2.0);
    EXPECT_TRUE(c->rope_interleaved);
    ASSERT_TRUE(c->yarn.has_value());
    EXPECT_EQ(c->yarn->factor, 40);
    EXPECT_EQ(c->yarn->original_max_position_embeddings, 4096);
    EXPECT_NEAR(c->yarn->mscale_all_dim, 0.707, 1e-6);  // a float32 key in the GGUF file
    EXPECT_NEAR(c->yarn->mscale, 0.707, 1e-6);
  }
  EXPECT_FALSE(Model::load(family_gguf("deepseek-v2-tiny", "f32"))->config().yarn.has_value());
}

// The deepseek2 f32 file with its metadata rewritten by `edit` (which writes a key or returns false
// to have it copied), loaded: the error.
std::string deepseek_gguf_error(const std::string& name,
                                const std::function<bool(GgufWriter&, const std::string&)>& edit) {
  const GgufFile g = GgufFile::open(family_gguf("deepseek-v2-tiny", "f32"));
  GgufWriter w;
  for (const std::string& key : g.keys()) {
    if (!edit(w, key)) w.add_copy(g, key);
  }
  for (const GgufTensor& t : g.tensors()) {
    w.add_tensor(t.name, static_cast<GgmlType>(t.type), t.ne,
                 std::string(reinterpret_cast<const char*>(t.data), t.nbytes));
  }
  const fs::path out = scratch() / (name + ".gguf");
  w.write(out);
  try {
    Model::load(out);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(FamilyGoldens, DeepseekGgufKeysTheEngineDoesNotImplementAreRefused) {
  using ::testing::AllOf;
  using ::testing::HasSubstr;
  EXPECT_THAT(deepseek_gguf_error("q-lora",
                                  [](GgufWriter& w, const std::string& key) {
                                    if (key == "deepseek2.attention.kv_lora_rank")
                                      w.add_uint32("deepseek2.attention.q_lora_rank", 1536);
                                    return false;
                                  }),
              AllOf(HasSubstr("q-lora.gguf"), HasSubstr("'q_lora_rank'"),
                    HasSubstr("deepseek2.attention.q_lora_rank")));
  EXPECT_THAT(deepseek_gguf_error("all-dense",
                                  [](GgufWriter& w, const std::string& key) {
                                    if (key != "deepseek2.leading_dense_block_count") return false;
                                    w.add_uint32(key, 27);
                                    return true;
                                  }),
              AllOf(HasSubstr("all-dense.gguf"), HasSubstr("deepseek2.leading_dense_block_count")));
  EXPECT_THAT(deepseek_gguf_error("sigmoid",
                                  [](GgufWriter& w, const std::string& key) {
                                    if (key != "deepseek2.expert_gating_func") return false;
                                    w.add_uint32(key, 2);
                                    return true;
                                  }),
              AllOf(HasSubstr("'scoring_func'"), HasSubstr("deepseek2.expert_gating_func")));
  EXPECT_EQ(deepseek_gguf_error("unchanged", [](GgufWriter&, const std::string&) { return false; }),
            "(no error)");
  // llama.cpp reads q_proj only at 27 layers: export refuses other counts rather than write a file
  // llama.cpp cannot load.
  MakeModelOptions options;
  options.preset = "deepseek-v2-tiny";
  options.layers = 3;
  options.dtype = kernels::DType::F32;
  const fs::path three = scratch() / "deepseek-3-layers";
  make_model(three, options);
  try {
    export_gguf(*Checkpoint::open(three), read_json_file(three / "tokenizer.json"),
                kernels::DType::F32, scratch() / "three.gguf");
    ADD_FAILURE() << "export of 3 layers did not fail";
  } catch (const Error& e) {
    EXPECT_THAT(std::string(e.what()), HasSubstr("27 layers"));
  }
}

}  // namespace
}  // namespace bhmoe::model
