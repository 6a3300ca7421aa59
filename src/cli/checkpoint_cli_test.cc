// make-model and inspect through the real executable: exit status, stdout and stderr.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

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
              AllOf(HasSubstr("bhmoe: error:"), HasSubstr("absent"), HasSubstr("not a directory")));
  EXPECT_EQ(r.out, "");
}

TEST_F(CheckpointCli, InspectDirectoryWithoutConfig) {
  fs::create_directories(dir_ / "empty");
  CliResult r = run("inspect --model " + path("empty"));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, AllOf(HasSubstr("bhmoe: error:"), HasSubstr("no config.json")));
}

TEST_F(CheckpointCli, InspectCorruptWeights) {
  ASSERT_EQ(run("make-model " + path("m")).status, 0);
  fs::resize_file(dir_ / "m" / "model.safetensors", 4);
  CliResult r = run("inspect --model " + path("m"));
  EXPECT_EQ(r.status, 1);
  EXPECT_THAT(r.err, AllOf(HasSubstr("model.safetensors"), HasSubstr("truncated")));
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
  CliResult tokenizer = run("make-model " + path("m") + " --tokenizer " + path("none.json"));
  EXPECT_EQ(tokenizer.status, 1);
  EXPECT_THAT(tokenizer.err, HasSubstr("none.json"));
  EXPECT_FALSE(fs::exists(dir_ / "m"));
}

}  // namespace
