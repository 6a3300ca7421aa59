// bhmoe tokenize / detokenize through the real executable: output, exit status, error messages.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "util/shell.h"

namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

const std::string kShared = BHMOE_SHARED_DIR;
const std::string kOlmoe = kShared + "/olmoe/tokenizer.json";
const std::string kTinyDir = kShared + "/golden/tiny-f32";

struct Result {
  int status = -1;
  std::string out;
  std::string err;
};

std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class TokenizerCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("bhmoe-tokenizer-cli-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  Result run(const std::string& args) {
    std::string command = bhmoe::shell_quote(BHMOE_BINARY) + " " + args + " >" +
                          bhmoe::shell_quote((dir_ / "out").string()) + " 2>" +
                          bhmoe::shell_quote((dir_ / "err").string());
    int raw = std::system(command.c_str());
    Result r;
    r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    r.out = slurp(dir_ / "out");
    r.err = slurp(dir_ / "err");
    return r;
  }

  std::string write(const std::string& name, const std::string& contents) {
    fs::path file = dir_ / name;
    std::ofstream(file, std::ios::binary) << contents;
    return file.string();
  }

  fs::path dir_;
};

std::vector<int32_t> parse_ids(const std::string& json_line) {
  return nlohmann::json::parse(json_line).get<std::vector<int32_t>>();
}

TEST_F(TokenizerCli, TokenizePrintsAJsonArrayOnOneLine) {
  Result r = run("tokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --text 'Hello world'");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "[12092,1533]\n");
  EXPECT_EQ(r.err, "");

  Result special = run("tokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) +
                       " --text 'Hi  Hello<|endoftext|>'");
  ASSERT_EQ(special.status, 0) << special.err;
  EXPECT_EQ(special.out, "[12764,50276,12092,50279]\n");
}

TEST_F(TokenizerCli, TokenizeFromATextFileAndAModelDirectory) {
  // A shared case with newlines, spaces and emoji, from a file.
  const std::string text = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal)";
  std::string file = write("text.txt", text);
  Result from_file = run("tokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --text-file " +
                         bhmoe::shell_quote(file));
  ASSERT_EQ(from_file.status, 0) << from_file.err;
  EXPECT_EQ(
      parse_ids(from_file.out),
      (std::vector<int32_t>{586, 1744,  33525, 186,   209, 623,   28910, 187, 50276, 187,  50275,
                            187, 50274, 187,   50273, 187, 14931, 237,   211, 313,   6320, 10}));

  // --model DIR reads DIR/tokenizer.json.
  Result by_model =
      run("tokenize --model " + bhmoe::shell_quote(kTinyDir) + " --text ' the theory'");
  Result by_file = run("tokenize --tokenizer " + bhmoe::shell_quote(kTinyDir + "/tokenizer.json") +
                       " --text ' the theory'");
  ASSERT_EQ(by_model.status, 0) << by_model.err;
  EXPECT_EQ(by_model.out, by_file.out);
  for (int32_t id : parse_ids(by_model.out)) EXPECT_LT(id, 1024);
}

TEST_F(TokenizerCli, EmptyTextGivesAnEmptyArray) {
  Result r = run("tokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --text ''");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "[]\n");
  Result file = run("tokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --text-file " +
                    bhmoe::shell_quote(write("empty.txt", "")));
  ASSERT_EQ(file.status, 0) << file.err;
  EXPECT_EQ(file.out, "[]\n");
}

TEST_F(TokenizerCli, StatsGoToStandardError) {
  Result r =
      run("tokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --text 'Hello world' --stats");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "[12092,1533]\n");
  EXPECT_THAT(r.err, HasSubstr("tokens 2,"));
  EXPECT_THAT(r.err, HasSubstr("tokens/s"));
}

TEST_F(TokenizerCli, DetokenizeAcceptsSpacesCommasAndJsonArrays) {
  for (const std::string ids :
       {"12092 1533 2", "12092,1533,2", "12092, 1533 ,2", "[12092, 1533, 2]", " [12092,1533,2] "}) {
    Result r = run("detokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --ids " +
                   bhmoe::shell_quote(ids));
    ASSERT_EQ(r.status, 0) << ids << ": " << r.err;
    EXPECT_EQ(r.out, "Hello world!\n") << ids;
  }
  Result exact = run("detokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) +
                     " --ids '50276 12092' --no-newline");
  ASSERT_EQ(exact.status, 0) << exact.err;
  EXPECT_EQ(exact.out, "  Hello");
  Result empty = run("detokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --ids '' -n");
  ASSERT_EQ(empty.status, 0) << empty.err;
  EXPECT_EQ(empty.out, "");
}

TEST_F(TokenizerCli, RoundTripThroughBothCommands) {
  const std::string text =
      "Café 日本語 🦙🦙 3 33 333\n\n    indented(code) {x: 'y'}\t<|endoftext|>  y'all ½";
  Result ids = run("tokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --text-file " +
                   bhmoe::shell_quote(write("in.txt", text)));
  ASSERT_EQ(ids.status, 0) << ids.err;
  std::string id_list = ids.out.substr(0, ids.out.size() - 1);  // the JSON array itself
  Result back = run("detokenize --model " + bhmoe::shell_quote(kShared + "/olmoe") + " --ids " +
                    bhmoe::shell_quote(id_list) + " --no-newline");
  ASSERT_EQ(back.status, 0) << back.err;
  EXPECT_EQ(back.out, text);
}

// ---- Errors: exit status 1 and a message naming what is wrong ----------------------------

void expect_failure(const Result& r, const std::vector<std::string>& parts) {
  EXPECT_NE(r.status, 0);
  for (const auto& part : parts) EXPECT_THAT(r.err, HasSubstr(part));
}

TEST_F(TokenizerCli, MissingOrMalformedTokenizerFiles) {
  Result missing = run("tokenize --model " + bhmoe::shell_quote(dir_.string()) + " --text hi");
  expect_failure(missing, {"bhmoe: error:", (dir_ / "tokenizer.json").string()});
  EXPECT_EQ(missing.out, "");

  std::string bad = write("bad.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": ");
  expect_failure(run("tokenize --tokenizer " + bhmoe::shell_quote(bad) + " --text hi"),
                 {"bhmoe: error:", bad, "malformed JSON"});
  std::string wordpiece =
      write("wp.json", R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})");
  expect_failure(run("detokenize --tokenizer " + bhmoe::shell_quote(wordpiece) + " --ids 0"),
                 {wordpiece, "model.type", "WordPiece"});
}

TEST_F(TokenizerCli, BadIdsAreNamed) {
  expect_failure(
      run("detokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --ids '12092 50280'"),
      {"bhmoe: error:", "token id 50280", "outside the vocabulary"});
  expect_failure(run("detokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --ids '12092 -5'"),
                 {"token id -5"});
  expect_failure(run("detokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --ids '12 abc'"),
                 {"--ids", "\"abc\""});
  expect_failure(run("detokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --ids '1.5'"),
                 {"\"1.5\""});
  expect_failure(
      run("detokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --ids '99999999999'"),
      {"\"99999999999\"", "out of range"});
  expect_failure(run("detokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --ids '[1, 2'"),
                 {"JSON array"});
}

TEST_F(TokenizerCli, MissingOrConflictingOptions) {
  expect_failure(run("tokenize --text hi"), {"--model", "--tokenizer"});
  expect_failure(run("tokenize --tokenizer " + bhmoe::shell_quote(kOlmoe)), {"--text"});
  expect_failure(run("tokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --model " +
                     bhmoe::shell_quote(kTinyDir) + " --text hi"),
                 {"excludes"});
  expect_failure(
      run("tokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --text hi --text-file x"),
      {"excludes"});
  expect_failure(run("detokenize --tokenizer " + bhmoe::shell_quote(kOlmoe)), {"--ids"});
  std::string absent = (dir_ / "absent.txt").string();
  expect_failure(run("tokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --text-file " +
                     bhmoe::shell_quote(absent)),
                 {"bhmoe: error:", absent});
}

TEST_F(TokenizerCli, InvalidUtf8TextIsAnError) {
  std::string file = write("latin1.txt", "caf\xe9 cr\xe8me");
  expect_failure(run("tokenize --tokenizer " + bhmoe::shell_quote(kOlmoe) + " --text-file " +
                     bhmoe::shell_quote(file)),
                 {"bhmoe: error:", file, "not valid UTF-8", "byte offset 3"});
}

}  // namespace
