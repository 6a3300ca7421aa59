#include "model/make_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>

#include "model/checkpoint.h"
#include "model/tokenizer.h"
#include "util/error.h"
#include "util/file.h"

namespace bhmoe::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::HasSubstr;

class MakeModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           cat("bhmoe-make-model-test-", ::getpid(), "-",
               ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

float value_at(const TensorView& v, int64_t i) {
  const uint8_t* p = static_cast<const uint8_t*>(v.data);
  if (v.dtype == DType::F32) {
    float f;
    std::memcpy(&f, p + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
  if (v.dtype == DType::BF16) {
    uint32_t bits = uint32_t{h} << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
  }
  // F16
  int exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  float magnitude = exponent == 0 ? std::ldexp(float(mantissa), -24)
                                  : std::ldexp(float(mantissa | 0x400), exponent - 25);
  return (h & 0x8000) ? -magnitude : magnitude;
}

bool same_bytes(const TensorView& a, const TensorView& b) {
  if (a.rows != b.rows || a.cols != b.cols || a.dtype != b.dtype) return false;
  size_t element = a.dtype == DType::F32 ? 4 : 2;
  return std::memcmp(a.data, b.data, a.numel() * element) == 0;
}

TEST_F(MakeModelTest, TinyRoundTrip) {
  MakeModelOptions options;
  options.dtype = DType::F32;
  options.seed = 7;
  MakeModelResult result = make_model(dir_ / "m", options);
  EXPECT_EQ(result.parameters, 263744);
  ASSERT_EQ(result.weight_files.size(), 1u);
  EXPECT_EQ(result.weight_files[0].filename(), "model.safetensors");
  EXPECT_TRUE(fs::exists(dir_ / "m" / "tokenizer.json"));

  auto ckpt = Checkpoint::open(dir_ / "m");
  const ModelConfig& c = ckpt->config();
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_heads, 4);
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.intermediate_size, 32);
  EXPECT_EQ(c.vocab_size, 1024);
  EXPECT_EQ(c.eos_token_id, kByteTokenizerEos);
  EXPECT_EQ(c.torch_dtype, "float32");
  EXPECT_EQ(ckpt->mapped_bytes(), result.weight_bytes);

  // Initial weights: mean 0, standard deviation 0.02; norm weights exactly 1.
  const TensorView& up = ckpt->weights().layers[1].experts[5].up;
  double sum = 0, sum2 = 0;
  for (int64_t i = 0; i < up.numel(); ++i) {
    double v = value_at(up, i);
    sum += v;
    sum2 += v * v;
  }
  double mean = sum / up.numel(), sd = std::sqrt(sum2 / up.numel() - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.002);
  EXPECT_NEAR(sd, 0.02, 0.001);
  for (int64_t i = 0; i < 64; ++i) EXPECT_EQ(value_at(ckpt->weights().layers[0].q_norm, i), 1.0f);
  EXPECT_EQ(value_at(ckpt->weights().final_norm, 63), 1.0f);
  // Different tensors get different streams.
  EXPECT_FALSE(same_bytes(ckpt->weights().layers[0].q_proj, ckpt->weights().layers[0].o_proj));
  EXPECT_FALSE(same_bytes(ckpt->weights().layers[0].experts[0].gate,
                          ckpt->weights().layers[0].experts[1].gate));
}

TEST_F(MakeModelTest, Bf16AndF16Values) {
  for (DType dtype : {DType::BF16, DType::F16}) {
    MakeModelOptions options;
    options.dtype = dtype;
    fs::path out = dir_ / cat("m", int(dtype));
    make_model(out, options);
    auto ckpt = Checkpoint::open(out);
    EXPECT_EQ(ckpt->weights().embed.dtype, dtype);
    EXPECT_EQ(value_at(ckpt->weights().layers[1].post_norm, 3), 1.0f);
    const TensorView& q = ckpt->weights().layers[0].q_proj;
    double sum2 = 0;
    for (int64_t i = 0; i < q.numel(); ++i) sum2 += value_at(q, i) * value_at(q, i);
    EXPECT_NEAR(std::sqrt(sum2 / q.numel()), 0.02, 0.002) << int(dtype);
  }
}

TEST_F(MakeModelTest, SameValuesWhateverTheLayoutShardsAndThreads) {
  MakeModelOptions base;
  base.seed = 3;
  base.threads = 1;
  make_model(dir_ / "base", base);

  MakeModelOptions fused = base;
  fused.fused = true;
  fused.threads = 2;
  make_model(dir_ / "fused", fused);

  MakeModelOptions sharded = base;
  sharded.max_shard_bytes = 200'000;  // ~0.5 MB of bf16 weights: several shards
  sharded.threads = 3;
  MakeModelResult sharded_result = make_model(dir_ / "sharded", sharded);
  EXPECT_GT(sharded_result.weight_files.size(), 1u);
  EXPECT_EQ(sharded_result.weight_files[0].filename().string(),
            cat("model-00001-of-0000", sharded_result.weight_files.size(), ".safetensors"));
  EXPECT_TRUE(fs::exists(dir_ / "sharded" / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir_ / "sharded" / "model.safetensors"));

  auto a = Checkpoint::open(dir_ / "base");
  auto b = Checkpoint::open(dir_ / "fused");
  auto s = Checkpoint::open(dir_ / "sharded");
  EXPECT_EQ(b->expert_layout(), ExpertLayout::Fused);
  EXPECT_EQ(s->weight_files().size(), sharded_result.weight_files.size());
  for (const auto* other : {b.get(), s.get()}) {
    EXPECT_TRUE(same_bytes(a->weights().embed, other->weights().embed));
    EXPECT_TRUE(same_bytes(a->weights().lm_head, other->weights().lm_head));
    for (int l = 0; l < 2; ++l) {
      const auto& x = a->weights().layers[l];
      const auto& y = other->weights().layers[l];
      EXPECT_TRUE(same_bytes(x.q_proj, y.q_proj));
      EXPECT_TRUE(same_bytes(x.router, y.router));
      for (int e = 0; e < 8; ++e) {
        EXPECT_TRUE(same_bytes(x.experts[e].gate, y.experts[e].gate)) << l << " " << e;
        EXPECT_TRUE(same_bytes(x.experts[e].up, y.experts[e].up)) << l << " " << e;
        EXPECT_TRUE(same_bytes(x.experts[e].down, y.experts[e].down)) << l << " " << e;
      }
    }
  }
}

TEST_F(MakeModelTest, SeedChangesValues) {
  MakeModelOptions one, two;
  two.seed = 1;
  make_model(dir_ / "one", one);
  make_model(dir_ / "two", two);
  make_model(dir_ / "one-again", one);
  auto a = Checkpoint::open(dir_ / "one"), b = Checkpoint::open(dir_ / "two"),
       c = Checkpoint::open(dir_ / "one-again");
  EXPECT_FALSE(same_bytes(a->weights().embed, b->weights().embed));
  EXPECT_TRUE(same_bytes(a->weights().embed, c->weights().embed));
  EXPECT_EQ(read_file(dir_ / "one" / "model.safetensors"),
            read_file(dir_ / "one-again" / "model.safetensors"));
}

TEST_F(MakeModelTest, LayersOverride) {
  MakeModelOptions options;
  options.layers = 5;
  make_model(dir_ / "m", options);
  auto ckpt = Checkpoint::open(dir_ / "m");
  EXPECT_EQ(ckpt->config().num_layers, 5);
  EXPECT_EQ(ckpt->weights().layers.size(), 5u);
}

TEST_F(MakeModelTest, OlmoePresetShape) {
  ModelConfig c = preset_config("olmoe-1b-7b");
  ModelConfig published = load_config(fs::path(BHMOE_SHARED_DIR) / "olmoe" / "config.json");
  EXPECT_EQ(c.hidden_size, published.hidden_size);
  EXPECT_EQ(c.intermediate_size, published.intermediate_size);
  EXPECT_EQ(c.num_layers, published.num_layers);
  EXPECT_EQ(c.num_heads, published.num_heads);
  EXPECT_EQ(c.num_experts, published.num_experts);
  EXPECT_EQ(c.num_experts_per_tok, published.num_experts_per_tok);
  EXPECT_EQ(c.vocab_size, published.vocab_size);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(count_parameters(c).total, 6919161856);
  std::vector<TensorSpec> specs = checkpoint_tensor_specs(c, DType::BF16, false);
  uint64_t bytes = 0;
  for (const auto& s : specs) bytes += s.nbytes();
  EXPECT_EQ(bytes, 2 * 6919161856ull);  // 13.8 GB
  EXPECT_EQ(specs.size(), 2u + 16 * (9 + 64 * 3) + 1);
  EXPECT_EQ(checkpoint_tensor_specs(c, DType::BF16, true).size(), 2u + 16 * (9 + 2) + 1);
}

TEST_F(MakeModelTest, UnknownPreset) {
  try {
    preset_config("olmoe-7b");
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), AllOf(HasSubstr("olmoe-7b"), HasSubstr("tiny")));
  }
}

TEST_F(MakeModelTest, RefusesNonEmptyDirectory) {
  fs::create_directories(dir_ / "full");
  write_file_atomic(dir_ / "full" / "keep.txt", "mine");
  try {
    make_model(dir_ / "full", {});
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), AllOf(HasSubstr("full"), HasSubstr("not an empty directory")));
  }
  EXPECT_EQ(read_file(dir_ / "full" / "keep.txt"), "mine");
  // An existing empty directory is fine.
  fs::create_directories(dir_ / "empty");
  make_model(dir_ / "empty", {});
  EXPECT_TRUE(fs::exists(dir_ / "empty" / "model.safetensors"));
}

TEST_F(MakeModelTest, FailureLeavesNothingBehind) {
  MakeModelOptions options;
  options.tokenizer = dir_ / "no-such-tokenizer.json";
  EXPECT_THROW(make_model(dir_ / "m", options), Error);
  EXPECT_FALSE(fs::exists(dir_ / "m"));
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir_)) ++entries;
  EXPECT_EQ(entries, 0u);  // no temporary directory left either
}

TEST_F(MakeModelTest, CopiesAGivenTokenizer) {
  fs::path golden_tokenizer = fs::path(BHMOE_SHARED_DIR) / "golden" / "tiny-f32" / "tokenizer.json";
  MakeModelOptions options;
  options.tokenizer = golden_tokenizer;
  make_model(dir_ / "m", options);
  EXPECT_EQ(read_file(dir_ / "m" / "tokenizer.json"), read_file(golden_tokenizer));
  ModelConfig c = load_config(dir_ / "m" / "config.json");
  EXPECT_EQ(c.pad_token_id, 1);  // <|padding|> of the OLMoE vocabulary
}

TEST_F(MakeModelTest, MalformedOrNonRegularTokenizerIsNamed) {
  MakeModelOptions options;
  options.tokenizer = dir_ / "bad-tokenizer.json";
  write_file_atomic(*options.tokenizer, R"({"model": {"vocab": {"a": 1e400}}})");
  try {
    make_model(dir_ / "m", options);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), options.tokenizer->string() +
                                         ": number 1e400 at key path model.vocab.a is not finite "
                                         "as a double (beyond +-1.8e308)");
  }
  fs::remove(*options.tokenizer);
  ASSERT_EQ(::mkfifo(options.tokenizer->c_str(), 0600), 0);
  try {
    make_model(dir_ / "m", options);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              options.tokenizer->string() + " is a FIFO (named pipe), not a regular file");
  }
  fs::remove(*options.tokenizer);
  EXPECT_FALSE(fs::exists(dir_ / "m"));
}

TEST_F(MakeModelTest, TokenizerLargerThanVocab) {
  MakeModelOptions options;
  options.tokenizer = fs::path(BHMOE_SHARED_DIR) / "olmoe" / "tokenizer.json";
  try {
    make_model(dir_ / "m", options);
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), AllOf(HasSubstr("tokenizer.json"), HasSubstr("50279"),
                                HasSubstr("vocab_size 1024")));
  }
  EXPECT_FALSE(fs::exists(dir_ / "m"));
}

TEST_F(MakeModelTest, ByteLevelTokenizerJson) {
  json t = json::parse(byte_level_tokenizer_json());
  EXPECT_EQ(t["normalizer"]["type"], "NFC");
  EXPECT_EQ(t["pre_tokenizer"]["type"], "ByteLevel");
  EXPECT_EQ(t["pre_tokenizer"]["use_regex"], true);
  EXPECT_EQ(t["pre_tokenizer"]["add_prefix_space"], false);
  EXPECT_EQ(t["decoder"]["type"], "ByteLevel");
  EXPECT_EQ(t["post_processor"]["type"], "ByteLevel");
  EXPECT_EQ(t["model"]["type"], "BPE");
  EXPECT_TRUE(t["model"]["merges"].empty());
  const json& vocab = t["model"]["vocab"];
  ASSERT_EQ(vocab.size(), 257u);
  // GPT-2 byte-to-unicode: printable ASCII maps to itself, space to U+0120 'Ġ', newline to U+010A
  // 'Ċ', byte 0 to U+0100 'Ā', 0xAD (soft hyphen) to U+0143.
  EXPECT_EQ(vocab["A"], 'A');
  EXPECT_EQ(vocab["~"], '~');
  EXPECT_EQ(vocab["\xC4\xA0"], ' ');
  EXPECT_EQ(vocab["\xC4\x8A"], '\n');
  EXPECT_EQ(vocab["\xC4\x80"], 0);
  EXPECT_EQ(vocab["\xC5\x83"], 0xAD);
  EXPECT_EQ(vocab["\xC3\xBF"], 0xFF);
  EXPECT_EQ(vocab["<|endoftext|>"], 256);
  std::set<int> ids;
  for (auto& [token, id] : vocab.items()) ids.insert(id.get<int>());
  EXPECT_EQ(ids.size(), 257u);
  EXPECT_EQ(*ids.rbegin(), 256);
  ASSERT_EQ(t["added_tokens"].size(), 1u);
  EXPECT_EQ(t["added_tokens"][0]["content"], "<|endoftext|>");
  EXPECT_EQ(t["added_tokens"][0]["id"], 256);
  EXPECT_EQ(t["added_tokens"][0]["special"], true);
}

TEST_F(MakeModelTest, ByteLevelTokenizerLoadsAndRoundTrips) {
  make_model(dir_ / "m", {});
  auto tokenizer = Tokenizer::load(dir_ / "m" / "tokenizer.json");
  EXPECT_EQ(tokenizer->vocab_size(), 257);
  const std::string text = "Hello, w\xC3\xB6rld!\n  tabs\tand <|endoftext|>";
  std::vector<int32_t> ids = tokenizer->encode(text);
  // One id per byte, except the special token, which is matched whole.
  std::vector<int32_t> expected;
  const std::string before = "Hello, w\xC3\xB6rld!\n  tabs\tand ";
  for (unsigned char ch : before) expected.push_back(ch);
  expected.push_back(kByteTokenizerEos);
  EXPECT_EQ(ids, expected);
  EXPECT_EQ(tokenizer->decode(ids), text);
  EXPECT_EQ(tokenizer->token_to_id("<|endoftext|>"), kByteTokenizerEos);
}

}  // namespace
}  // namespace bhmoe::model
