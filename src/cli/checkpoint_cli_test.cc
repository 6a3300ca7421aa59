// make-model and inspect through the real executable: exit status, stdout and stderr.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "util/gguf.h"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

struct CliResult {
  int status = -1;
  std::string out, err;
};

std::string slurp(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class CheckpointCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("bhmoe-checkpoint-cli-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  CliResult run(const std::string& args) {
    std::string command = std::string("'") + BHMOE_BINARY + "' " + args + " >'" +
                          (dir_ / "out").string() + "' 2>'" + (dir_ / "err").string() + "'";
    int raw = std::system(command.c_str());
    CliResult r;
    r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    r.out = slurp(dir_ / "out");
    r.err = slurp(dir_ / "err");
    return r;
  }
  std::string path(const std::string& name) { return (dir_ / name).string(); }

  fs::path dir_;
};

TEST_F(CheckpointCli, MakeTinyThenInspect) {
  CliResult made = run("make-model " + path("m") + " --preset tiny --seed 5");
  ASSERT_EQ(made.status, 0) << made.err;
  EXPECT_THAT(made.out, AllOf(HasSubstr("preset tiny"), HasSubstr("263744 parameters")));
  EXPECT_TRUE(fs::exists(dir_ / "m" / "config.json"));
  EXPECT_TRUE(fs::exists(dir_ / "m" / "model.safetensors"));
  EXPECT_TRUE(fs::exists(dir_ / "m" / "tokenizer.json"));

  CliResult shown = run("inspect --model " + path("m"));
  ASSERT_EQ(shown.status, 0) << shown.err;
  EXPECT_THAT(shown.out,
              AllOf(HasSubstr("2 layers, hidden 64"), HasSubstr("total 263744"),
                    HasSubstr("active per token 190016"), HasSubstr("topk:k=2,renorm=false"),
                    HasSubstr("BF16"), HasSubstr("per-expert"), HasSubstr("model.safetensors")));

  CliResult json_run = run("inspect --model " + path("m") + " --json");
  ASSERT_EQ(json_run.status, 0) << json_run.err;
  nlohmann::json j = nlohmann::json::parse(json_run.out);
  EXPECT_EQ(j["parameters"]["total"], 263744);
  EXPECT_EQ(j["parameters"]["active"], 190016);
  EXPECT_EQ(j["config"]["hidden_size"], 64);
  EXPECT_EQ(j["dtypes"], nlohmann::json::array({"BF16"}));
  EXPECT_EQ(j["expert_layout"], "per-expert");
  EXPECT_EQ(j["files"][0]["name"], "model.safetensors");
  EXPECT_EQ(j["files"][0]["bytes"], fs::file_size(dir_ / "m" / "model.safetensors"));
  EXPECT_EQ(j["native_router"], "topk:k=2,renorm=false");
  EXPECT_EQ(j["tokenizer"]["name"], "tokenizer.json");
}

TEST_F(CheckpointCli, MakeFusedShardedF32) {
  CliResult made = run("make-model " + path("m") +
                       " --preset tiny --dtype f32 --fused --layers 3 --max-shard-bytes 300000");
  ASSERT_EQ(made.status, 0) << made.err;
  EXPECT_TRUE(fs::exists(dir_ / "m" / "model.safetensors.index.json"));
  CliResult j = run("inspect --json --model " + path("m"));
  ASSERT_EQ(j.status, 0) << j.err;
  auto info = nlohmann::json::parse(j.out);
  EXPECT_EQ(info["expert_layout"], "fused");
  EXPECT_EQ(info["dtypes"], nlohmann::json::array({"F32"}));
  EXPECT_EQ(info["config"]["num_hidden_layers"], 3);
  EXPECT_GT(info["files"].size(), 1u);
}

// The fused layout holds the per-expert layout's values, so the engine computes identical logits.
TEST_F(CheckpointCli, FusedAndPerExpertGiveIdenticalLogits) {
  ASSERT_EQ(run("make-model " + path("a") + " --seed 11").status, 0);
  ASSERT_EQ(run("make-model " + path("b") + " --seed 11 --fused").status, 0);
  CliResult a = run("logits --model " + path("a") + " --ids '1 2 3 300' --out " + path("a.npy"));
  ASSERT_EQ(a.status, 0) << a.err;
  CliResult b = run("logits --model " + path("b") + " --ids '1 2 3 300' --out " + path("b.npy"));
  ASSERT_EQ(b.status, 0) << b.err;
  std::string la = slurp(dir_ / "a.npy"), lb = slurp(dir_ / "b.npy");
  EXPECT_GT(la.size(), 4u * 1024 * 4);
  EXPECT_EQ(la, lb);
}

TEST_F(CheckpointCli, InspectGolden) {
  CliResult shown = run(std::string("inspect --model '") + BHMOE_SHARED_DIR + "/golden/tiny-f32'");
  ASSERT_EQ(shown.status, 0) << shown.err;
  EXPECT_THAT(shown.out,
              AllOf(HasSubstr("F32"), HasSubstr("eos 0, pad 1"), HasSubstr("1062992 bytes")));
}

TEST_F(CheckpointCli, InspectMissingDirectory) {
  CliResult r = run("inspect --model " + path("absent"));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err,
              AllOf(HasSubstr("bhmoe: error:"), HasSubstr("absent"),
                    HasSubstr("no such file or directory")));
  EXPECT_EQ(r.out, "");
}

TEST_F(CheckpointCli, InspectDirectoryWithoutConfig) {
  fs::create_directories(dir_ / "empty");
  CliResult r = run("inspect --model " + path("empty"));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, AllOf(HasSubstr("bhmoe: error:"), HasSubstr("no config.json")));
}

TEST_F(CheckpointCli, InspectShowsAGgufFilesMetadataAndTensors) {
  bhmoe::GgufWriter w;
  w.add_string("general.architecture", "olmoe");
  w.add_uint32("olmoe.expert_count", 64);
  w.add_string_array("tokenizer.ggml.tokens", {"a", "b", "c"});
  w.add_tensor("blk.0.ffn_gate_inp.weight", bhmoe::GgmlType::F32, {2, 2}, std::string(16, '\0'));
  w.add_tensor("blk.0.attn_q.weight", bhmoe::GgmlType::Q8_0, {32, 2}, std::string(68, '\1'));
  w.write(path("m.bin"));  // recognised by content, not by name

  CliResult r = run("inspect --model " + path("m.bin"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("GGUF v3, alignment 32"));
  EXPECT_THAT(r.out, HasSubstr("architecture olmoe"));
  EXPECT_THAT(r.out, HasSubstr("olmoe.expert_count"));
  EXPECT_THAT(r.out, HasSubstr("[string x 3] \"a\", \"b\", \"c\""));
  EXPECT_THAT(r.out, HasSubstr("Q8_0"));

  r = run("inspect --json --model " + path("m.bin"));
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["format"], "gguf");
  EXPECT_EQ(j["metadata"]["olmoe.expert_count"], "64");
  EXPECT_EQ(j["tensor_types"]["Q8_0"]["tensors"], 1);
  EXPECT_EQ(j["tensor_types"]["Q8_0"]["bytes"], 68);
  EXPECT_EQ(j["tensors"][1]["ne"], nlohmann::json::array({32, 2}));

  // Running it: the metadata lacks what a model needs, named with the file.
  std::ofstream(path("t.txt")) << "Some text to score.";
  r = run("score --model " + path("m.bin") + " --text-file " + path("t.txt"));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, AllOf(HasSubstr("m.bin"), HasSubstr("olmoe.embedding_length")));

  // --check-weights reads every value, block types dequantised: all finite here...
  r = run("inspect --check-weights --model " + path("m.bin"));
  EXPECT_EQ(r.status, 0) << r.err;
  // ...and a NaN in an F32 tensor or an infinite Q8_0 block scale is named.
  bhmoe::GgufWriter nan;
  const float values[4] = {1.0f, 2.0f, std::numeric_limits<float>::quiet_NaN(), 4.0f};
  nan.add_tensor("blk.0.ffn_gate_inp.weight", bhmoe::GgmlType::F32, {2, 2},
                 std::string(reinterpret_cast<const char*>(values), sizeof values));
  nan.write(path("nan.gguf"));
  r = run("inspect --check-weights --model " + path("nan.gguf"));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, AllOf(HasSubstr("blk.0.ffn_gate_inp.weight"), HasSubstr("is nan")));
  bhmoe::GgufWriter inf;
  std::string block(34, '\1');
  block[0] = '\x00';
  block[1] = '\x7c';  // f16 +inf as the block's scale
  inf.add_tensor("blk.0.attn_q.weight", bhmoe::GgmlType::Q8_0, {32, 1}, block);
  inf.write(path("inf.gguf"));
  r = run("inspect --check-weights --model " + path("inf.gguf"));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, AllOf(HasSubstr("blk.0.attn_q.weight"), HasSubstr("is inf")));

  // A truncated GGUF file: an error naming the file and the tensor.
  std::string bytes = w.bytes();
  bytes.resize(bytes.size() - 10);
  std::ofstream(path("cut.gguf"), std::ios::binary) << bytes;
  r = run("inspect --model " + path("cut.gguf"));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, HasSubstr("cut.gguf"));
  EXPECT_THAT(r.err, HasSubstr("tensor 'blk.0.attn_q.weight'"));
  EXPECT_THAT(r.err, HasSubstr("truncated"));
}

TEST_F(CheckpointCli, InspectCorruptWeights) {
  ASSERT_EQ(run("make-model " + path("m")).status, 0);
  fs::resize_file(dir_ / "m" / "model.safetensors", 4);
  CliResult r = run("inspect --model " + path("m"));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, AllOf(HasSubstr("model.safetensors"), HasSubstr("truncated")));
}

// Writes the f32 `value` over flat element `index` of `tensor` in a safetensors file, in place.
void plant_f32(const fs::path& file, const std::string& tensor, int64_t index, float value) {
  std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
  uint64_t header_size = 0;
  io.read(reinterpret_cast<char*>(&header_size), 8);
  std::string header(header_size, '\0');
  io.read(header.data(), static_cast<std::streamsize>(header_size));
  const nlohmann::json entry = nlohmann::json::parse(header).at(tensor);
  ASSERT_EQ(entry.at("dtype"), "F32");
  const uint64_t begin = entry.at("data_offsets")[0].get<uint64_t>();
  io.seekp(static_cast<std::streamoff>(8 + header_size + begin + index * 4));
  io.write(reinterpret_cast<const char*>(&value), 4);
  ASSERT_TRUE(io.good());
}

TEST_F(CheckpointCli, InspectCheckWeightsFindsTheFirstNonFiniteValue) {
  ASSERT_EQ(run("make-model " + path("m") + " --dtype f32").status, 0);
  CliResult clean = run("inspect --model " + path("m") + " --check-weights");
  ASSERT_EQ(clean.status, 0) << clean.err;
  EXPECT_THAT(clean.out, HasSubstr("all finite"));
  CliResult clean_json = run("inspect --model " + path("m") + " --check-weights --json");
  ASSERT_EQ(clean_json.status, 0) << clean_json.err;
  EXPECT_EQ(nlohmann::json::parse(clean_json.out)["weights_finite"], true);

  // Expert 3's up projection of layer 1 is [F 32, D 64]: [2, 5] is flat element 133. An infinity
  // planted later in the file must not be the one reported.
  const std::string tensor = "model.layers.1.mlp.experts.3.up_proj.weight";
  plant_f32(dir_ / "m" / "model.safetensors", tensor, 133, std::nanf(""));
  plant_f32(dir_ / "m" / "model.safetensors", "lm_head.weight", 9,
            std::numeric_limits<float>::infinity());
  // Without the flag the values are not read.
  EXPECT_EQ(run("inspect --model " + path("m")).status, 0);
  CliResult r = run("inspect --model " + path("m") + " --check-weights");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, AllOf(HasSubstr("bhmoe: error: --check-weights: "),
                           HasSubstr("model.safetensors: tensor " + tensor +
                                     " element [2, 5] (flat index 133) is nan")));
  EXPECT_EQ(r.out, "");
}

// A NaN in the weights that reaches the logits is an error naming the position, not garbage text
// or a perplexity of nan.
TEST_F(CheckpointCli, NonFiniteLogitsAreAnErrorNotGarbage) {
  ASSERT_EQ(run("make-model " + path("m") + " --dtype f32").status, 0);
  plant_f32(dir_ / "m" / "model.safetensors", "lm_head.weight", 65, std::nanf(""));  // row 1
  CliResult generated =
      run("generate --model " + path("m") + " --threads 1 --prompt abc --max-new-tokens 4");
  EXPECT_EQ(generated.status, 1);
  EXPECT_THAT(generated.err, AllOf(HasSubstr("bhmoe: error:"), HasSubstr("non-finite logit"),
                                   HasSubstr("at position 2"), HasSubstr("--check-weights")));
  std::ofstream(dir_ / "text.txt") << "some text to score";
  CliResult scored =
      run("score --model " + path("m") + " --threads 1 --text-file " + path("text.txt"));
  EXPECT_EQ(scored.status, 1);
  EXPECT_THAT(scored.err, AllOf(HasSubstr("non-finite logit"), HasSubstr("at position 0")));
  EXPECT_THAT(scored.out, Not(HasSubstr("perplexity")));
}

TEST_F(CheckpointCli, MakeModelRefusesNonEmptyDirectory) {
  ASSERT_EQ(run("make-model " + path("m")).status, 0);
  std::string before = slurp(dir_ / "m" / "model.safetensors");
  CliResult r = run("make-model " + path("m") + " --seed 9");
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, AllOf(HasSubstr("bhmoe: error:"), HasSubstr("not an empty directory")));
  EXPECT_EQ(slurp(dir_ / "m" / "model.safetensors"), before);
}

TEST_F(CheckpointCli, MakeModelBadOptions) {
  CliResult preset = run("make-model " + path("m") + " --preset huge");
  EXPECT_NE(preset.status, 0);
  EXPECT_THAT(preset.err, HasSubstr("huge"));
  CliResult dtype = run("make-model " + path("m") + " --dtype int8");
  EXPECT_NE(dtype.status, 0);
  EXPECT_THAT(dtype.err, HasSubstr("int8"));
  for (const char* args : {"--seed -1", "--seed 18446744073709551616", "--threads 5000"}) {
    CliResult r = run("make-model " + path("m") + " " + args);
    EXPECT_EQ(r.status, 1) << args;
    EXPECT_THAT(r.err, HasSubstr(std::string("bhmoe: error: ") + std::string(args).substr(0, 6)))
        << args;
  }
  CliResult tokenizer = run("make-model " + path("m") + " --tokenizer " + path("none.json"));
  EXPECT_EQ(tokenizer.status, 1);
  EXPECT_THAT(tokenizer.err, HasSubstr("none.json"));
  EXPECT_FALSE(fs::exists(dir_ / "m"));
}

}  // namespace

namespace {

TEST_F(CheckpointCli, ConvertWritesAGgufFileThatRunsAndRefusesBadRequests) {
  const std::string golden = std::string(BHMOE_SHARED_DIR) + "/golden/tiny-f32";
  CliResult r = run("convert --model '" + golden + "' --type q8_0 --out " + path("t.gguf"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("Q8_0 matrices"));
  r = run("inspect --json --model " + path("t.gguf"));
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["architecture"], "olmoe");
  EXPECT_EQ(j["metadata"]["general.file_type"], "7");
  EXPECT_GT(j["tensor_types"]["Q8_0"]["tensors"].get<int>(), 0);
  EXPECT_GT(j["tensor_types"]["F32"]["tensors"].get<int>(), 0);  // norms and routers
  // It runs: logits of a few ids.
  r = run("logits --model " + path("t.gguf") + " --ids \"1 2 3\" --out " + path("l.npy"));
  EXPECT_EQ(r.status, 0) << r.err;
  // An existing --out is kept unless --force.
  r = run("convert --model '" + golden + "' --out " + path("t.gguf"));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, HasSubstr("exists (--force replaces it)"));
  r = run("convert --model '" + golden + "' --out " + path("t.gguf") + " --force --type bf16");
  EXPECT_EQ(r.status, 0) << r.err;
  // A type it cannot write, a K type whose blocks do not divide the rows, a GGUF input.
  r = run("convert --model '" + golden + "' --type q5_k --out " + path("u.gguf"));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, HasSubstr("expected f32, f16, bf16, q8_0, q4_0, q4_k or q6_k"));
  r = run("convert --model '" + golden + "' --type q4_k --out " + path("u.gguf"));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, HasSubstr("do not divide hidden_size 64"));
  EXPECT_FALSE(fs::exists(dir_ / "u.gguf"));
  EXPECT_FALSE(fs::exists(dir_ / "u.gguf.partial"));
  r = run("convert --model " + path("t.gguf") + " --out " + path("v.gguf"));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, HasSubstr("is a file; convert reads a checkpoint folder"));
}

}  // namespace
