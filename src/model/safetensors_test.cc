#include "model/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "util/error.h"
#include "util/file.h"

namespace bhmoe::model {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           cat("bhmoe-safetensors-test-", ::getpid(), "-",
               ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A file made of an explicit header length, header text and data bytes.
  fs::path raw(uint64_t header_length, const std::string& header, const std::string& data) {
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header_length >> (8 * i)) & 0xff);
    bytes += header + data;
    fs::path path = dir_ / "t.safetensors";
    write_file_atomic(path, bytes);
    return path;
  }
  fs::path raw(const std::string& header, const std::string& data) {
    return raw(header.size(), header, data);
  }

  std::string error_of(const fs::path& path) {
    try {
      SafetensorsFile::open(path);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  }

  fs::path dir_;
};

std::string floats(std::initializer_list<float> values) {
  std::string out(values.size() * 4, '\0');
  size_t i = 0;
  for (float v : values) std::memcpy(out.data() + 4 * i++, &v, 4);
  return out;
}

TEST_F(SafetensorsTest, WriteThenReadRoundTrip) {
  std::vector<TensorSpec> specs = {
      {"a", "F32", {2, 2}}, {"b", "BF16", {3}}, {"empty", "F32", {0, 4}}};
  std::string a = floats({1.f, 2.f, 3.f, -4.f});
  std::string b = "\x80\x3f\x00\x40\x40\xc0";  // bf16 1, 2, -3
  std::string b_bytes(b.data(), 6);
  write_safetensors(dir_ / "x.safetensors", specs, {a, b_bytes, ""}, {{"format", "pt"}});

  SafetensorsFile f = SafetensorsFile::open(dir_ / "x.safetensors");
  EXPECT_EQ(f.header_size() % 8, 0u);  // data region 8-byte aligned
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const SafetensorsTensor* ta = f.find("a");
  ASSERT_NE(ta, nullptr);
  EXPECT_EQ(ta->dtype, "F32");
  EXPECT_EQ(ta->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(ta->numel(), 4);
  float values[4];
  std::memcpy(values, ta->data, 16);
  EXPECT_EQ(values[3], -4.f);
  const SafetensorsTensor* tb = f.find("b");
  ASSERT_NE(tb, nullptr);
  EXPECT_EQ(std::memcmp(tb->data, b_bytes.data(), 6), 0);
  EXPECT_EQ(tb->begin, 16u);
  EXPECT_EQ(f.find("empty")->nbytes(), 0u);
  EXPECT_EQ(f.find("missing"), nullptr);
  // Pointers go into one mapping of the file: zero-copy.
  EXPECT_EQ(tb->data - ta->data, 16);
  EXPECT_EQ(f.file_size(), 8 + f.header_size() + 22);
}

TEST_F(SafetensorsTest, DTypeTables) {
  EXPECT_EQ(safetensors_dtype_size("BF16"), 2u);
  EXPECT_EQ(safetensors_dtype_size("F64"), 8u);
  EXPECT_EQ(safetensors_dtype_size("bf16"), 0u);
  EXPECT_EQ(kernel_dtype("F16"), kernels::DType::F16);
  EXPECT_FALSE(kernel_dtype("I8").has_value());
  EXPECT_STREQ(safetensors_dtype_name(kernels::DType::BF16), "BF16");
}

TEST_F(SafetensorsTest, TruncatedBeforeHeaderLength) {
  fs::path path = dir_ / "short.safetensors";
  write_file_atomic(path, std::string("\x10\x00\x00", 3));
  EXPECT_THAT(error_of(path), AllOf(HasSubstr("short.safetensors"), HasSubstr("truncated")));
}

TEST_F(SafetensorsTest, EmptyFile) {
  fs::path path = dir_ / "empty.safetensors";
  write_file_atomic(path, "");
  EXPECT_THAT(error_of(path), AllOf(HasSubstr("empty.safetensors"), HasSubstr("truncated")));
}

TEST_F(SafetensorsTest, HeaderLengthPastEnd) {
  EXPECT_THAT(error_of(raw(1000, "{}", "")),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("header length 1000"),
                    HasSubstr("past the end")));
}

TEST_F(SafetensorsTest, HugeHeaderLength) {
  EXPECT_THAT(error_of(raw(~uint64_t{0}, "{}", "")), HasSubstr("past the end"));
}

TEST_F(SafetensorsTest, HeaderLengthOverLimit) {
  // A sparse file large enough to hold the claimed header, so only the limit can reject it.
  const uint64_t claimed = kMaxSafetensorsHeader + 1;
  fs::path path = raw(claimed, "{}", "");
  fs::resize_file(path, 8 + claimed);
  EXPECT_THAT(error_of(path),
              AllOf(HasSubstr("t.safetensors"), HasSubstr("exceeds"), HasSubstr("limit")));
}

TEST_F(SafetensorsTest, HeaderNotJson) {
  EXPECT_THAT(error_of(raw("{\"a\": [1, 2}", "")),
              AllOf(HasSubstr("t.safetensors: header: malformed JSON at line 1, column"),
                    Not(HasSubstr("json.exception"))));
}

// The header length 4 bytes short, pointing into the space padding: the JSON still parses, but the
// data region would start 4 bytes early and shift every tensor.
TEST_F(SafetensorsTest, HeaderLengthShortIntoPadding) {
  std::string json = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::string header = json + std::string(8, ' ');
  EXPECT_EQ(error_of(raw(header.size() - 4, header, floats({1, 2}))),
            (dir_ / "t.safetensors").string() +
                ": the tensors cover 8 bytes of data but the data region after the " +
                std::to_string(header.size() - 4) +
                "-byte header holds 12 (wrong header length, or bytes not indexed by any tensor)");
  // With the padding exactly right the same bytes load.
  EXPECT_EQ(error_of(raw(header.size(), header, floats({1, 2}))), "(no error)");
}

// The header length pointing past the JSON into the data: the bytes after the closing brace are
// not padding.
TEST_F(SafetensorsTest, HeaderLengthLongIntoData) {
  std::string header = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  EXPECT_THAT(error_of(raw(header.size() + 4, header, floats({1, 2}))),
              AllOf(HasSubstr("t.safetensors: the header's JSON does not end at its stated length " +
                              std::to_string(header.size() + 4)),
                    HasSubstr("not the closing brace or space padding")));
}

TEST_F(SafetensorsTest, OnlySpacesMayPadTheHeader) {
  std::string header = std::string(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})") +
                       "\n\t  ";
  EXPECT_THAT(error_of(raw(header, floats({1}))),
              AllOf(HasSubstr("does not end at its stated length"), HasSubstr("0x09")));
}

TEST_F(SafetensorsTest, GapBetweenTensors) {
  std::string header = R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}})";
  EXPECT_EQ(error_of(raw(header, floats({1, 2, 3, 4, 5}))),
            (dir_ / "t.safetensors").string() +
                ": tensor b begins at data offset 12 but the previous tensor a ends at 8; the data "
                "must be covered without gaps");
}

TEST_F(SafetensorsTest, DataNotStartingAtZero) {
  std::string header = R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})";
  EXPECT_THAT(error_of(raw(header, floats({1, 2}))),
              AllOf(HasSubstr("tensor a begins at data offset 4"),
                    HasSubstr("the data region begins at 0")));
}

TEST_F(SafetensorsTest, BytesAfterTheLastTensor) {
  std::string header = R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})";
  EXPECT_THAT(error_of(raw(header, floats({1, 2}))),
              AllOf(HasSubstr("t.safetensors: the tensors cover 4 bytes"), HasSubstr("holds 8")));
}

TEST_F(SafetensorsTest, DuplicateTensorNames) {
  std::string header = R"({"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                           "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})";
  EXPECT_EQ(error_of(raw(header, floats({1, 2}))),
            (dir_ / "t.safetensors").string() +
                ": header: key \"w\" appears twice in the object at the top level (a file must "
                "not say two things at once)");
}

TEST_F(SafetensorsTest, OutOfRangeNumberInHeader) {
  std::string header = R"({"w": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}})";
  EXPECT_EQ(error_of(raw(header, floats({1}))),
            (dir_ / "t.safetensors").string() +
                ": header: number 1e400 at key path w.shape[0] is not finite as a double (beyond "
                "+-1.8e308)");
}

TEST_F(SafetensorsTest, FifoIsRejected) {
  fs::path path = dir_ / "fifo.safetensors";
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  EXPECT_EQ(error_of(path), path.string() + " is a FIFO (named pipe), not a regular file");
}

TEST_F(SafetensorsTest, HeaderNotAnObject) {
  EXPECT_THAT(error_of(raw("[1, 2, 3]", "")), HasSubstr("not a JSON object"));
}

TEST_F(SafetensorsTest, DataOffsetsPastEnd) {
  std::string header = R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})";
  EXPECT_THAT(error_of(raw(header, floats({1.f, 2.f}))),
              AllOf(HasSubstr("tensor w"), HasSubstr("[0, 16]"), HasSubstr("past the end")));
}

TEST_F(SafetensorsTest, TruncatedData) {
  std::vector<TensorSpec> specs = {{"a", "F32", {4}}, {"b", "F32", {4}}};
  write_safetensors(dir_ / "t.safetensors", specs, {floats({1, 2, 3, 4}), floats({5, 6, 7, 8})});
  fs::resize_file(dir_ / "t.safetensors", fs::file_size(dir_ / "t.safetensors") - 3);
  EXPECT_THAT(error_of(dir_ / "t.safetensors"),
              AllOf(HasSubstr("tensor b"), HasSubstr("truncated")));
}

TEST_F(SafetensorsTest, OverlappingOffsets) {
  std::string header = R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})";
  EXPECT_THAT(error_of(raw(header, floats({1, 2, 3}))),
              AllOf(HasSubstr("tensors a"), HasSubstr(" b "), HasSubstr("overlap")));
}

TEST_F(SafetensorsTest, OffsetsInconsistentWithShape) {
  std::string header = R"({"a": {"dtype": "BF16", "shape": [3, 2], "data_offsets": [0, 8]}})";
  EXPECT_THAT(error_of(raw(header, floats({1, 2, 3}))),
              AllOf(HasSubstr("tensor a"), HasSubstr("hold 8 bytes"), HasSubstr("[3, 2]"),
                    HasSubstr("needs 12")));
}

TEST_F(SafetensorsTest, OffsetsEndBeforeBegin) {
  std::string header = R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})";
  EXPECT_THAT(error_of(raw(header, floats({1, 2, 3}))),
              AllOf(HasSubstr("tensor a"), HasSubstr("end before")));
}

TEST_F(SafetensorsTest, UnknownDType) {
  std::string header = R"({"w": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}})";
  EXPECT_THAT(error_of(raw(header, floats({1, 2}))),
              AllOf(HasSubstr("tensor w"), HasSubstr("unknown dtype \"F33\"")));
}

TEST_F(SafetensorsTest, NegativeShape) {
  std::string header = R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})";
  EXPECT_THAT(error_of(raw(header, floats({1, 2}))),
              AllOf(HasSubstr("tensor w"), HasSubstr("shape")));
}

TEST_F(SafetensorsTest, OverflowingShape) {
  std::string header =
      R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})";
  EXPECT_THAT(error_of(raw(header, floats({1, 2}))),
              AllOf(HasSubstr("tensor w"), HasSubstr("too large")));
}

TEST_F(SafetensorsTest, MissingOffsets) {
  std::string header = R"({"w": {"dtype": "F32", "shape": [2]}})";
  EXPECT_THAT(error_of(raw(header, floats({1, 2}))),
              AllOf(HasSubstr("tensor w"), HasSubstr("data_offsets")));
}

TEST_F(SafetensorsTest, BadMetadata) {
  std::string header = R"({"__metadata__": {"format": 3}})";
  EXPECT_THAT(error_of(raw(header, "")), HasSubstr("__metadata__"));
}

TEST_F(SafetensorsTest, MissingFile) {
  EXPECT_THAT(error_of(dir_ / "nope.safetensors"),
              AllOf(HasSubstr("nope.safetensors"), HasSubstr("cannot open")));
}

TEST_F(SafetensorsTest, WriterRejectsWrongSizedData) {
  std::vector<TensorSpec> specs = {{"a", "F32", {4}}};
  try {
    write_safetensors(dir_ / "w.safetensors", specs, {floats({1, 2})});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), AllOf(HasSubstr("tensor a"), HasSubstr("8 bytes")));
  }
  EXPECT_FALSE(fs::exists(dir_ / "w.safetensors"));
}

}  // namespace
}  // namespace bhmoe::model
