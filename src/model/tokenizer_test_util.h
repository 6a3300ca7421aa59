// Helpers shared by the tokenizer tests (tokenizer_test.cc, tokenizer_families_test.cc).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>
#include <utf8proc.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "util/error.h"
#include "util/file.h"

namespace bhmoe::model::tokenizer_test {

inline nlohmann::json read_json(const std::filesystem::path& path) {
  return nlohmann::json::parse(read_file(path));
}

// `text` in Unicode normal form C.
inline std::string nfc(const std::string& text) {
  auto* out = utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(text.c_str()));
  EXPECT_NE(out, nullptr);
  std::string result(reinterpret_cast<const char*>(out));
  std::free(out);
  return result;
}

// A scratch folder per test (named by the test), removed at the end.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ =
        std::filesystem::temp_directory_path() /
        cat("bhmoe-tokenizer-test-", ::getpid(), "-", info->test_suite_name(), "-", info->name());
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::filesystem::path write(const std::string& name, const std::string& contents) const {
    std::filesystem::path file = path_ / name;
    std::ofstream(file, std::ios::binary) << contents;
    return file;
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Loads a copy of a tokenizer.json changed by `modify`.
inline std::unique_ptr<Tokenizer> load_modified(
    const TempDir& dir, const std::filesystem::path& source,
    const std::function<void(nlohmann::json&)>& modify) {
  nlohmann::json root = read_json(source);
  modify(root);
  return Tokenizer::load(dir.write("tokenizer.json", root.dump()));
}

// Runs `body`, which must throw bhmoe::Error whose message contains every one of `parts`.
inline void expect_error(const std::function<void()>& body, const std::vector<std::string>& parts) {
  try {
    body();
    ADD_FAILURE() << "no error was thrown";
  } catch (const Error& e) {
    for (const auto& part : parts) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
          << "message \"" << e.what() << "\" lacks \"" << part << "\"";
    }
  }
}

}  // namespace bhmoe::model::tokenizer_test
