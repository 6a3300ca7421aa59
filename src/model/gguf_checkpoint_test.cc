// GGUF models: a checkpoint exported to GGUF (gguf_export) and loaded back (gguf_checkpoint)
// reproduces the golden logits; quantised types stay within their error; the tokenizer from the
// tokenizer.ggml.* keys tokenizes as the tokenizer.json; and broken files are clear errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/matrix.h"
#include "model/engine.h"
#include "model/gguf_checkpoint.h"
#include "model/gguf_export.h"
#include "model/make_model.h"
#include "model/verbs.h"
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

const fs::path kShared = BHMOE_SHARED_DIR;
const fs::path kGolden = kShared / "golden" / "tiny-f32";

fs::path scratch() {
  static const fs::path dir = [] {
    fs::path d = fs::temp_directory_path() / ("bhmoe_gguf_test_" + std::to_string(::getpid()));
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

// The golden tiny-f32 checkpoint exported as a GGUF file of `type` (once per type).
fs::path golden_gguf(kernels::DType type) {
  const fs::path out = scratch() / cat("tiny-", kernels::dtype_name(type), ".gguf");
  if (!fs::exists(out)) {
    auto checkpoint = Checkpoint::open(kGolden);
    export_gguf(*checkpoint, read_json_file(kGolden / "tokenizer.json"), type, out);
  }
  return out;
}

std::vector<float> logits_of(const std::shared_ptr<const Model>& model,
                             const std::vector<int32_t>& ids, const routing::Router* router) {
  Session session(model, router, nullptr, static_cast<int64_t>(ids.size()));
  std::vector<float> out(ids.size() * static_cast<size_t>(model->config().vocab_size));
  session.prefill(ids, out.data());
  return out;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  return worst;
}

TEST(GgufModel, ExportedGoldenReproducesEveryGoldenLogitInF32) {
  const fs::path file = golden_gguf(kernels::DType::F32);
  ASSERT_TRUE(is_gguf_file(file));
  auto model = Model::load(file);
  const ModelConfig& c = model->config();
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.vocab_size, 1024);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(model->weights_kind(), "f32");
  auto calibration = std::make_shared<routing::Calibration>(
      routing::Calibration::load(kGolden / "calibration.json"));
  const json cases = read_json_file(kGolden / "cases.json");
  int compared = 0;
  for (const json& k : cases) {
    const auto ids = k["ids"].get<std::vector<int32_t>>();
    for (const auto& [spec, npy] : k["logits"].items()) {
      SCOPED_TRACE(spec);
      std::unique_ptr<routing::Router> router;
      if (spec != "native" && spec != "native_llamacpp")
        router = routing::make_router(spec, c.num_experts, calibration);
      const NpyArray expected = read_npy(kGolden / npy.get<std::string>());
      const std::vector<float> got = logits_of(model, ids, router.get());
      ASSERT_EQ(got.size(), expected.data.size());
      std::vector<float> want(expected.data.begin(), expected.data.end());
      EXPECT_LE(max_abs_diff(got, want), 1e-4);
      ++compared;
    }
  }
  EXPECT_GE(compared, 15);
}

// Largest |logit| of a set, the scale the errors below are relative to.
double largest(const std::vector<float>& logits) {
  double m = 0;
  for (float v : logits) m = std::max(m, std::fabs(static_cast<double>(v)));
  return m;
}

// Positions where the two agree within `tolerance` (absolute, over the whole row).
int positions_within(const std::vector<float>& a, const std::vector<float>& b, int V,
                     double tolerance) {
  int n = 0;
  for (size_t t = 0; t < a.size() / static_cast<size_t>(V); ++t) {
    double worst = 0;
    for (int v = 0; v < V; ++v) {
      const size_t i = t * static_cast<size_t>(V) + static_cast<size_t>(v);
      worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]));
    }
    n += worst <= tolerance;
  }
  return n;
}

// A quantised file runs the values its blocks hold: its logits equal those of an F32 file of the
// dequantised weights (written by exporting the quantised checkpoint itself), up to the kernels'
// activation rounding (kernels/ops.h: int8 per 32 in matvec, bf16 in batched matmul, 2^-7
// relative), which can flip a near-tie expert at a few positions. And the quantised model stays
// near the original one by its type's error.
void expect_runs_its_blocks(const fs::path& quantised, const std::vector<int32_t>& ids,
                            const std::vector<float>& original, double drift_bound) {
  auto model = Model::load(quantised);
  const int V = model->config().vocab_size;
  const fs::path twin = quantised.string() + ".dequantised.gguf";
  {
    const GgufFile source = GgufFile::open(quantised);
    export_gguf(*Checkpoint::open(quantised), gguf_tokenizer_json(source), kernels::DType::F32,
                twin);
  }
  const std::vector<float> got = logits_of(model, ids, nullptr);
  const std::vector<float> exact = logits_of(Model::load(twin), ids, nullptr);
  const double scale = largest(exact);
  EXPECT_GE(positions_within(got, exact, V, 0.02 * scale), static_cast<int>(ids.size()) * 3 / 4);
  EXPECT_LE(max_abs_diff(got, exact) / scale, 0.25);
  const double drift = max_abs_diff(got, original) / largest(original);
  EXPECT_LE(drift, drift_bound);
  EXPECT_GT(drift, 0.0) << "a lossy type gave the original logits exactly: was it converted?";
}

TEST(GgufModel, QuantisedTypesRunTheValuesTheirBlocksHold) {
  const json cases = read_json_file(kGolden / "cases.json");
  const auto ids = cases[2]["ids"].get<std::vector<int32_t>>();
  const std::vector<float> original = logits_of(Model::load(kGolden), ids, nullptr);
  // Drift from the f32 original, relative to its largest logit: per-weight errors of 2^-9 (bf16),
  // 2^-11 (f16), absmax/254 (Q8_0) and absmax/15 (Q4_0) of a random model whose logits are small
  // sums of many such products; 4-bit moves this tiny model's logits by up to its own scale.
  for (auto [type, bound] : {std::pair{kernels::DType::BF16, 0.03},
                             {kernels::DType::F16, 0.005},
                             {kernels::DType::Q8_0, 0.1},
                             {kernels::DType::Q4_0, 1.0}}) {
    SCOPED_TRACE(kernels::dtype_name(type));
    expect_runs_its_blocks(golden_gguf(type), ids, original, bound);
  }
}

TEST(GgufModel, KQuantTypesRunOnRowsOfWholeSuperBlocks) {
  // Rows of 256 values (the K types' super-block): hidden and expert width 256.
  const fs::path dir = scratch() / "tiny256";
  if (!fs::exists(dir)) {
    MakeModelOptions options;
    options.preset = "tiny256";
    options.dtype = kernels::DType::F32;
    make_model(dir, options);
  }
  auto reference = Model::load(dir);
  const std::vector<int32_t> ids = {5, 77, 300, 12, 999, 4, 256, 31, 8, 640, 2, 100};
  const std::vector<float> want = logits_of(reference, ids, nullptr);
  auto checkpoint = Checkpoint::open(dir);
  for (auto [type, bound] : {std::pair{kernels::DType::Q6_K, 0.15}, {kernels::DType::Q4_K, 0.6}}) {
    SCOPED_TRACE(kernels::dtype_name(type));
    const fs::path file = scratch() / cat("tiny256-", kernels::dtype_name(type), ".gguf");
    export_gguf(*checkpoint, read_json_file(dir / "tokenizer.json"), type, file);
    GgufFile g = GgufFile::open(file);
    EXPECT_EQ(
        g.find_tensor("blk.0.ffn_gate_exps.weight")->type,
        static_cast<uint32_t>(type == kernels::DType::Q6_K ? GgmlType::Q6_K : GgmlType::Q4_K));
    EXPECT_EQ(g.find_tensor("blk.0.ffn_gate_inp.weight")->type,
              static_cast<uint32_t>(GgmlType::F32));
    EXPECT_EQ(g.find_tensor("blk.0.attn_norm.weight")->type, static_cast<uint32_t>(GgmlType::F32));
    expect_runs_its_blocks(file, ids, want, bound);
    // --weights bf16 and q8 convert the blocks' values at load: bf16 rounds them (2^-9 relative),
    // q8 requantises per 32 (absmax / 254).
    const std::vector<float> native = logits_of(Model::load(file), ids, nullptr);
    for (const char* weights : {"bf16", "q8"}) {
      SCOPED_TRACE(weights);
      auto converted = Model::load(file, {.weights = weights});
      const std::vector<float> got = logits_of(converted, ids, nullptr);
      EXPECT_GE(
          positions_within(got, native, converted->config().vocab_size, 0.02 * largest(native)),
          static_cast<int>(ids.size()) * 3 / 4);
    }
  }
}

TEST(GgufModel, TokenizerFromTheMetadataTokenizesAsTheTokenizerJson) {
  const json tokenizer_json = read_json_file(kShared / "olmoe" / "tokenizer.json");
  const json config = read_json_file(kShared / "olmoe" / "config.json");
  const ModelConfig c = parse_config(config, "olmoe config.json");
  GgufWriter w;
  add_gguf_tokenizer(w, tokenizer_json, c.vocab_size, c);
  const std::string bytes = w.bytes();
  const GgufFile g = GgufFile::parse(bytes, "tokenizer-only.gguf");
  EXPECT_EQ(g.get_string_array("tokenizer.ggml.tokens").size(), static_cast<size_t>(c.vocab_size));
  auto from_gguf = Tokenizer::from_json(gguf_tokenizer_json(g), "tokenizer-only.gguf");
  auto from_json = Tokenizer::load(kShared / "olmoe" / "tokenizer.json");
  const json cases = read_json_file(kShared / "olmoe" / "tokenizer-cases.json");
  int checked = 0;
  for (const json& k : cases["cases"]) {
    const std::string text = k["text"].get<std::string>();
    SCOPED_TRACE(text);
    EXPECT_EQ(from_gguf->encode(text), k["ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(from_gguf->encode(text), from_json->encode(text));
    ++checked;
  }
  EXPECT_GE(checked, 50);
  // Special tokens are matched whole; padding ids decode to their placeholder.
  EXPECT_EQ(from_gguf->token_to_id("<|endoftext|>"), from_json->token_to_id("<|endoftext|>"));
  EXPECT_EQ(from_gguf->id_to_token(c.vocab_size - 1), cat("[PAD", c.vocab_size - 1, "]"));
}

// FNV-1a 64 of a file's bytes, as 16 hex digits.
std::string fnv1a64_of(const fs::path& file) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char b : read_file(file)) h = (h ^ b) * 0x100000001b3ull;
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(h));
  return text;
}

// llama.cpp's logits for GGUF files bhmoe writes (src/model/testdata/gguf, recorded by
// tools/llamacpp/make_gguf_goldens.sh). Each file is regenerated here and must be byte-identical to
// the one llama.cpp read. Tolerances, relative to the case's largest |logit|:
// - F32: both sides exact fp32 up to summation order: 1e-4 absolute, as the safetensors goldens.
// - F16, BF16: llama.cpp converts activations to the weight type for its dot products (F16: 2^-11,
//   BF16: 2^-8 relative per product), bhmoe keeps fp32 in decode and rounds to bf16 in batched
//   matmuls; Q8_0, Q4_0, Q4_K, Q6_K: both sides quantise activations to 8 bits per block (llama.cpp
//   Q8_0/Q8_K, bhmoe int8 per 32 or bf16 in batches). Each side's activation error is a random walk
//   over a dot product, well under 1% of the largest logit, except where it flips a near-tie
//   expert: hence most positions within 2%, and every position within 25%.
TEST(GgufModel, ReproducesLlamaCppLogitsOnTheFilesItWrites) {
  const fs::path dir = fs::path(BHMOE_SOURCE_DIR) / "src" / "model" / "testdata" / "gguf";
  const json goldens = read_json_file(dir / "goldens.json");
  ASSERT_EQ(goldens["format"], "bhmoe-gguf-goldens/1");
  // Named as the script names it: the folder's name is the file's general.name.
  const fs::path tiny256 = scratch() / "seed7" / "tiny256";
  if (!fs::exists(tiny256)) {
    MakeModelOptions options;
    options.preset = "tiny256";
    options.dtype = kernels::DType::F32;
    options.seed = 7;
    fs::create_directories(tiny256.parent_path());
    make_model(tiny256, options);
  }
  int cases = 0;
  for (const json& k : goldens["cases"]) {
    const std::string name = k["name"];
    SCOPED_TRACE(name);
    const std::string model_name = k["model"], type_name = k["type"];
    const fs::path file = scratch() / cat("golden-", model_name, "-", type_name, ".gguf");
    if (!fs::exists(file)) {
      const fs::path source = model_name == "tiny" ? kGolden : tiny256;
      export_gguf(*Checkpoint::open(source), read_json_file(source / "tokenizer.json"),
                  parse_gguf_matrix_type(type_name), file);
    }
    ASSERT_EQ(fnv1a64_of(file), k["fnv1a64"].get<std::string>())
        << "bhmoe convert no longer writes the file llama.cpp read: rerun "
           "tools/llamacpp/make_gguf_goldens.sh";
    auto model = Model::load(file);
    const int V = model->config().vocab_size;
    std::unique_ptr<routing::Router> router;
    if (k["router"] != "native")
      router = routing::make_router(k["router"].get<std::string>(), model->config().num_experts);
    const auto ids = k["ids"].get<std::vector<int32_t>>();
    const std::vector<float> got = logits_of(model, ids, router.get());
    const NpyArray npy = read_npy(dir / k["logits"].get<std::string>());
    ASSERT_EQ(npy.shape, (std::vector<int64_t>{static_cast<int64_t>(ids.size()), V}));
    const std::vector<float> want(npy.data.begin(), npy.data.end());
    const double scale = largest(want);
    if (type_name == "f32") {
      EXPECT_LE(max_abs_diff(got, want), 1e-4);
    } else {
      EXPECT_GE(positions_within(got, want, V, 0.02 * scale), static_cast<int>(ids.size()) * 3 / 4);
      EXPECT_LE(max_abs_diff(got, want) / scale, 0.25);
    }
    ++cases;
  }
  EXPECT_GE(cases, 11);
}

// A valid tiny GGUF's bytes with one change applied by `edit` to the writer's inputs.
std::string expect_error_of(const fs::path& file) {
  try {
    Model::load(file);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "loading " << file << " did not fail";
  return "";
}

// Rewrites the golden f32 GGUF with one metadata key or tensor changed.
fs::path variant(
    const std::string& name,
    const std::function<void(GgufWriter&, const GgufFile&, const std::string& key)>& key_hook,
    const std::function<bool(GgufWriter&, const GgufTensor&)>& tensor_hook) {
  const GgufFile g = GgufFile::open(golden_gguf(kernels::DType::F32));
  GgufWriter w;
  for (const std::string& key : g.keys()) key_hook(w, g, key);
  for (const GgufTensor& t : g.tensors()) {
    if (tensor_hook(w, t)) continue;
    w.add_tensor(t.name, static_cast<GgmlType>(t.type), t.ne,
                 std::string(reinterpret_cast<const char*>(t.data), t.nbytes));
  }
  const fs::path out = scratch() / (name + ".gguf");
  w.write(out);
  return out;
}

// Copies a key as the golden file holds it.
void copy_key(GgufWriter& w, const GgufFile& g, const std::string& key) {
  w.add_copy(g, key);
}

// Older converters wrote one tensor per expert (blk.<l>.ffn_gate.<e>.weight, ...) instead of the
// stacked ffn_*_exps: such a file runs to the same logits.
TEST(GgufModel, PerExpertTensorsOfOlderFilesRunAsTheStackedOnes) {
  const fs::path f = variant("per-expert", copy_key, [](GgufWriter& w, const GgufTensor& t) {
    const size_t at = t.name.find("_exps.weight");
    if (at == std::string::npos) return false;
    const std::string stem = t.name.substr(0, at);  // blk.<l>.ffn_gate
    const size_t bytes = t.nbytes / static_cast<size_t>(t.ne[2]);
    for (int64_t e = 0; e < t.ne[2]; ++e) {
      w.add_tensor(cat(stem, ".", e, ".weight"), static_cast<GgmlType>(t.type), {t.ne[0], t.ne[1]},
                   std::string(reinterpret_cast<const char*>(t.data) + e * bytes, bytes));
    }
    return true;
  });
  ASSERT_EQ(GgufFile::open(f).find_tensor("blk.0.ffn_gate_exps.weight"), nullptr);
  ASSERT_NE(GgufFile::open(f).find_tensor("blk.1.ffn_down.7.weight"), nullptr);
  const std::vector<int32_t> ids = {3, 17, 254, 900, 41, 5};
  EXPECT_EQ(logits_of(Model::load(f), ids, nullptr),
            logits_of(Model::load(golden_gguf(kernels::DType::F32)), ids, nullptr));
}

TEST(GgufModel, BrokenFilesAreClearErrors) {
  auto keep_tensor = [](GgufWriter&, const GgufTensor&) { return false; };
  // The golden file with one metadata value written by `write` instead of its own.
  auto with_key = [&](const std::string& name, const std::string& replaced,
                      const std::function<void(GgufWriter&)>& write) {
    return variant(
        name,
        [&](GgufWriter& w, const GgufFile& g, const std::string& key) {
          if (key == replaced) {
            write(w);
          } else {
            copy_key(w, g, key);
          }
        },
        keep_tensor);
  };
  {
    const fs::path f = with_key("arch", "general.architecture", [](GgufWriter& w) {
      w.add_string("general.architecture", "qwen9");
    });
    const std::string e = expect_error_of(f);
    EXPECT_NE(e.find("general.architecture = \"qwen9\""), std::string::npos) << e;
  }
  {
    // A llama file without experts is a dense model, not Mixtral.
    const fs::path f = with_key("dense-llama", "general.architecture", [](GgufWriter& w) {
      w.add_string("general.architecture", "llama");
    });
    const std::string e = expect_error_of(f);
    EXPECT_NE(e.find("without llama.expert_count: a dense model"), std::string::npos) << e;
  }
  {
    const fs::path f = variant(
        "no-experts-key",
        [](GgufWriter& w, const GgufFile& g, const std::string& key) {
          if (key != "olmoe.expert_count") copy_key(w, g, key);
        },
        keep_tensor);
    const std::string e = expect_error_of(f);
    EXPECT_NE(e.find("olmoe.expert_count"), std::string::npos) << e;
    EXPECT_NE(e.find("no-experts-key.gguf"), std::string::npos) << e;
  }
  {
    // A value the config's checks refuse is named by its GGUF key.
    const fs::path f = with_key("too-many-used", "olmoe.expert_used_count",
                                [](GgufWriter& w) { w.add_uint32("olmoe.expert_used_count", 9); });
    const std::string e = expect_error_of(f);
    EXPECT_NE(e.find("(GGUF: olmoe.expert_used_count)"), std::string::npos) << e;
    EXPECT_NE(e.find("too-many-used.gguf"), std::string::npos) << e;
  }
  {
    const std::string e =
        expect_error_of(with_key("bert", "tokenizer.ggml.model", [](GgufWriter& w) {
          w.add_string("tokenizer.ggml.model", "bert");
        }));
    EXPECT_NE(e.find("tokenizer.ggml.model = \"bert\""), std::string::npos) << e;
  }
  {
    const std::string e =
        expect_error_of(with_key("types", "tokenizer.ggml.token_type", [](GgufWriter& w) {
          w.add_int32_array("tokenizer.ggml.token_type", {1, 1, 3});
        }));
    EXPECT_NE(e.find("tokenizer.ggml.token_type has 3 entries for 1024 tokens"), std::string::npos)
        << e;
  }
  {
    const std::string e =
        expect_error_of(with_key("eos", "tokenizer.ggml.eos_token_id", [](GgufWriter& w) {
          w.add_uint32("tokenizer.ggml.eos_token_id", 5000);
        }));
    EXPECT_NE(e.find("tokenizer.ggml.eos_token_id = 5000 is outside the vocabulary of 1024"),
              std::string::npos)
        << e;
  }
  {
    const fs::path f = variant("no-embedding", copy_key, [](GgufWriter&, const GgufTensor& t) {
      return t.name == "token_embd.weight";
    });
    const std::string e = expect_error_of(f);
    EXPECT_NE(e.find("missing tensor token_embd.weight"), std::string::npos) << e;
  }
  {
    // A layer beyond block_count: the metadata and the tensors disagree.
    const fs::path f = variant("extra-layer", copy_key, [](GgufWriter& w, const GgufTensor& t) {
      if (t.name == "output_norm.weight") {
        w.add_tensor("blk.2.attn_norm.weight", static_cast<GgmlType>(t.type), t.ne,
                     std::string(reinterpret_cast<const char*>(t.data), t.nbytes));
      }
      return false;
    });
    const std::string e = expect_error_of(f);
    EXPECT_NE(e.find("tensor blk.2.attn_norm.weight is beyond olmoe.block_count = 2"),
              std::string::npos)
        << e;
  }
  {
    const fs::path f = variant("missing-tensor", copy_key, [](GgufWriter&, const GgufTensor& t) {
      return t.name == "blk.1.attn_k.weight";
    });
    const std::string e = expect_error_of(f);
    EXPECT_NE(e.find("missing tensor blk.1.attn_k.weight"), std::string::npos) << e;
  }
  {
    const fs::path f = variant("wrong-shape", copy_key, [](GgufWriter& w, const GgufTensor& t) {
      if (t.name != "blk.0.ffn_up_exps.weight") return false;
      // The same bytes as {32, 64, 8} (experts 32 x 64 instead of 64 x 32... rows and cols
      // swapped).
      w.add_tensor(t.name, static_cast<GgmlType>(t.type), {t.ne[1], t.ne[0], t.ne[2]},
                   std::string(reinterpret_cast<const char*>(t.data), t.nbytes));
      return true;
    });
    const std::string e = expect_error_of(f);
    EXPECT_NE(e.find("blk.0.ffn_up_exps.weight has ggml shape {32, 64, 8}, expected {64, 32, 8}"),
              std::string::npos)
        << e;
  }
  {
    const fs::path f = variant("unrun-type", copy_key, [](GgufWriter& w, const GgufTensor& t) {
      if (t.name != "blk.0.attn_q.weight") return false;
      // Q4_1: 20 bytes per 32 values, a type bhmoe has no kernel for.
      w.add_tensor(t.name, GgmlType::Q4_1, t.ne, std::string(64 * 64 / 32 * 20, '\0'));
      return true;
    });
    const std::string e = expect_error_of(f);
    EXPECT_NE(e.find("blk.0.attn_q.weight has type Q4_1, which bhmoe does not run"),
              std::string::npos)
        << e;
  }
  {
    const fs::path f = with_key("pre", "tokenizer.ggml.pre", [](GgufWriter& w) {
      w.add_string("tokenizer.ggml.pre", "deepseek-v3");
    });
    const std::string e = expect_error_of(f);
    EXPECT_NE(e.find("tokenizer.ggml.pre = \"deepseek-v3\""), std::string::npos) << e;
  }
}

}  // namespace
}  // namespace bhmoe::model
