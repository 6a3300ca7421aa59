#include "util/gguf.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "util/error.h"

namespace bhmoe {
namespace {

std::string f32_bytes(const std::vector<float>& v) {
  std::string out(v.size() * 4, '\0');
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

// A small valid file: metadata of every kind the model loader reads, a float matrix, a Q8_0 row
// and a Q4_K block (the bytes are arbitrary: layout only).
GgufWriter sample_writer() {
  GgufWriter w;
  w.add_string("general.architecture", "olmoe");
  w.add_uint32("olmoe.block_count", 2);
  w.add_uint64("olmoe.context_length", 4096);
  w.add_int32("tokenizer.ggml.bos_token_id", -1);
  w.add_float32("olmoe.attention.layer_norm_rms_epsilon", 1e-5f);
  w.add_bool("tokenizer.ggml.add_bos_token", false);
  w.add_string_array("tokenizer.ggml.tokens", {"a", "b", "\xc4\xa0the"});
  w.add_int32_array("tokenizer.ggml.token_type", {1, 1, 3});
  w.add_float32_array("tokenizer.ggml.scores", {0.5f, -1.0f, 2.0f});
  w.add_tensor("token_embd.weight", GgmlType::F32, {2, 3}, f32_bytes({1, 2, 3, 4, 5, 6}));
  w.add_tensor("blk.0.q8", GgmlType::Q8_0, {32, 1}, std::string(34, '\x01'));
  w.add_tensor("blk.0.q4k", GgmlType::Q4_K, {256}, std::string(144, '\x02'));
  return w;
}

// Byte position just after the first occurrence of `name` as a length-prefixed GGUF string.
size_t after_string(const std::string& bytes, const std::string& name) {
  std::string prefixed(8, '\0');
  for (int i = 0; i < 8; ++i) prefixed[i] = static_cast<char>((name.size() >> (8 * i)) & 0xff);
  prefixed += name;
  const size_t at = bytes.find(prefixed);
  EXPECT_NE(at, std::string::npos) << name;
  return at + prefixed.size();
}

void patch(std::string& bytes, size_t at, uint64_t value, size_t width) {
  for (size_t i = 0; i < width; ++i) bytes[at + i] = static_cast<char>((value >> (8 * i)) & 0xff);
}

// Parsing must fail with a bhmoe::Error whose message contains `needle`.
void expect_error(const std::string& bytes, const std::string& needle) {
  try {
    GgufFile::parse(bytes, "m.gguf");
    ADD_FAILURE() << "no error; expected one containing: " << needle;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("m.gguf"), std::string::npos) << e.what();
  }
}

TEST(Gguf, RoundTripsMetadataAndTensors) {
  const std::string bytes = sample_writer().bytes();
  const GgufFile g = GgufFile::parse(bytes, "m.gguf");
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.alignment(), 32u);
  EXPECT_EQ(g.data_offset() % 32, 0u);
  EXPECT_EQ(g.keys().front(), "general.architecture");
  EXPECT_EQ(g.get_string("general.architecture"), "olmoe");
  EXPECT_EQ(g.get_uint("olmoe.block_count"), 2u);
  EXPECT_EQ(g.get_uint("olmoe.context_length"), 4096u);
  EXPECT_FLOAT_EQ(static_cast<float>(g.get_real("olmoe.attention.layer_norm_rms_epsilon")), 1e-5f);
  EXPECT_DOUBLE_EQ(g.get_real("olmoe.block_count"), 2.0);  // integers are reals too
  EXPECT_FALSE(g.get_bool_or("tokenizer.ggml.add_bos_token", true));
  EXPECT_TRUE(g.get_bool_or("absent", true));
  EXPECT_EQ(g.get_uint_or("absent", 7), 7u);
  EXPECT_EQ(g.get_string_array("tokenizer.ggml.tokens"),
            (std::vector<std::string>{"a", "b", "\xc4\xa0the"}));
  EXPECT_EQ(g.get_int_array("tokenizer.ggml.token_type"), (std::vector<int64_t>{1, 1, 3}));
  EXPECT_EQ(g.get_real_array("tokenizer.ggml.scores"), (std::vector<double>{0.5, -1.0, 2.0}));

  ASSERT_EQ(g.tensors().size(), 3u);
  const GgufTensor* emb = g.find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->ne, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(emb->numel(), 6);
  EXPECT_EQ(emb->nbytes, 24u);
  float values[6];
  std::memcpy(values, emb->data, 24);
  EXPECT_EQ(values[5], 6.0f);
  const GgufTensor* q8 = g.find_tensor("blk.0.q8");
  ASSERT_NE(q8, nullptr);
  EXPECT_EQ(q8->nbytes, 34u);
  EXPECT_EQ(q8->offset % 32, 0u);
  EXPECT_EQ(q8->data[33], 1);
  EXPECT_EQ(g.find_tensor("blk.0.q4k")->nbytes, 144u);
  EXPECT_EQ(g.find_tensor("absent"), nullptr);
}

// Copying every key of a file gives its metadata byte for byte, whatever the value types
// (negative, 64-bit, float, bool, string and numeric arrays).
TEST(Gguf, CopiedKeysReproduceTheMetadataExactly) {
  GgufWriter original = sample_writer();
  original.add_float32_array("x.floats", {-0.0f, 1e-30f, 3.5f});
  const std::string bytes = original.bytes();
  const GgufFile g = GgufFile::parse(bytes, "m.gguf");
  GgufWriter copy;
  for (const std::string& key : g.keys()) copy.add_copy(g, key);
  for (const GgufTensor& t : g.tensors()) {
    copy.add_tensor(t.name, static_cast<GgmlType>(t.type), t.ne,
                    std::string(reinterpret_cast<const char*>(t.data), t.nbytes));
  }
  EXPECT_EQ(copy.bytes(), bytes);
  EXPECT_THROW(copy.add_copy(g, "no.such.key"), Error);
}

TEST(Gguf, OpensAFileAndNamesItInErrors) {
  const auto dir = std::filesystem::path(::testing::TempDir());
  sample_writer().write(dir / "ok.gguf");
  const GgufFile g = GgufFile::open(dir / "ok.gguf");
  EXPECT_EQ(g.tensors().size(), 3u);
  EXPECT_EQ(g.find_tensor("blk.0.q8")->data[0], 1);
  write_file_atomic(dir / "not.gguf", "{\"a\": 1}");
  try {
    GgufFile::open(dir / "not.gguf");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not.gguf"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not a GGUF file"), std::string::npos) << e.what();
  }
}

TEST(Gguf, HonoursAnotherAlignment) {
  GgufWriter w;
  w.set_alignment(64);
  w.add_tensor("a", GgmlType::F32, {3}, f32_bytes({1, 2, 3}));
  w.add_tensor("b", GgmlType::F32, {1}, f32_bytes({9}));
  const std::string bytes = w.bytes();
  const GgufFile g = GgufFile::parse(bytes, "m.gguf");
  EXPECT_EQ(g.alignment(), 64u);
  EXPECT_EQ(g.data_offset() % 64, 0u);
  EXPECT_EQ(g.find_tensor("b")->offset, 64u);
  float b;
  std::memcpy(&b, g.find_tensor("b")->data, 4);
  EXPECT_EQ(b, 9.0f);
}

TEST(Gguf, EveryTruncationIsAnErrorNotACrash) {
  const std::string bytes = sample_writer().bytes();
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_THROW(GgufFile::parse(std::string_view(bytes).substr(0, n), "m.gguf"), Error)
        << "prefix of " << n << " bytes";
  }
}

TEST(Gguf, RejectsBadHeaders) {
  std::string bytes = sample_writer().bytes();
  std::string bad = bytes;
  bad[0] = 'X';
  expect_error(bad, "not a GGUF file");
  bad = bytes;
  patch(bad, 4, 1, 4);
  expect_error(bad, "version 1 is not supported");
  bad = bytes;
  patch(bad, 4, 0x03000000u, 4);
  expect_error(bad, "big-endian");
  bad = bytes;
  patch(bad, 4, 4, 4);
  expect_error(bad, "version 4 is not supported");
  bad = bytes;
  patch(bad, 8, uint64_t{1} << 40, 8);  // tensor count
  expect_error(bad, "tensor count 1099511627776 is impossible");
  bad = bytes;
  patch(bad, 16, ~uint64_t{0}, 8);  // metadata count
  expect_error(bad, "metadata count");
}

TEST(Gguf, RejectsBadMetadata) {
  const std::string bytes = sample_writer().bytes();
  std::string bad = bytes;
  // A key's length larger than the file.
  patch(bad, after_string(bytes, "general.architecture") - 20 - 8, uint64_t{1} << 50, 8);
  expect_error(bad, "has length 1125899906842624, more than the");

  bad = bytes;
  patch(bad, after_string(bytes, "olmoe.block_count"), 77, 4);
  expect_error(bad, "metadata key 'olmoe.block_count' has unknown value type 77");

  // A string array claiming 2^40 strings: refused before anything is reserved.
  bad = bytes;
  const size_t tokens = after_string(bytes, "tokenizer.ggml.tokens");
  patch(bad, tokens + 8, uint64_t{1} << 40, 8);
  expect_error(bad, "claims 1099511627776 strings");
  // A numeric array past the end.
  bad = bytes;
  patch(bad, after_string(bytes, "tokenizer.ggml.scores") + 8, uint64_t{1} << 61, 8);
  expect_error(bad, "float32 values, more than the bytes left");
  // An array of arrays.
  bad = bytes;
  patch(bad, tokens + 4, 9, 4);
  expect_error(bad, "array of arrays");
  // A bool that is neither 0 nor 1.
  bad = bytes;
  patch(bad, after_string(bytes, "tokenizer.ggml.add_bos_token") + 4, 2, 1);
  expect_error(bad, "bool value 2");
  // The same key twice.
  GgufWriter w;
  w.add_uint32("k", 1);
  w.add_uint32("k", 2);
  expect_error(w.bytes(), "metadata key 'k' appears twice");
}

TEST(Gguf, RejectsBadAlignment) {
  GgufWriter w;
  w.add_uint32("general.alignment", 48);
  expect_error(w.bytes(), "general.alignment 48 is not a power of two");
  GgufWriter w2;
  w2.add_string("general.alignment", "32");
  expect_error(w2.bytes(), "'general.alignment' is string, not uint32");
}

TEST(Gguf, RejectsBadTensorInfos) {
  const std::string bytes = sample_writer().bytes();
  const size_t q8 = after_string(bytes, "blk.0.q8");  // dims u32, ne[2] u64, type u32, offset u64
  std::string bad = bytes;
  patch(bad, q8, 5, 4);
  expect_error(bad, "tensor 'blk.0.q8' has 5 dimensions");
  bad = bytes;
  patch(bad, q8 + 4, 33, 8);  // 33 elements per row of a 32-element block type
  expect_error(bad, "not a multiple of the block size 32");
  bad = bytes;
  patch(bad, q8 + 4 + 16, 200, 4);
  expect_error(bad, "tensor 'blk.0.q8' has unknown ggml type 200");
  bad = bytes;
  patch(bad, q8 + 4 + 16 + 4, 33, 8);
  expect_error(bad, "has offset 33, not a multiple of the alignment 32");
  bad = bytes;
  patch(bad, q8 + 4 + 16 + 4, 0, 8);  // onto token_embd.weight's bytes
  expect_error(bad, "overlap");
  bad = bytes;
  patch(bad, q8 + 4 + 8, uint64_t{1} << 40, 8);  // 2^40 rows
  expect_error(bad, "extends past the end of the file");
  bad = bytes;
  patch(bad, q8 + 4, uint64_t{1} << 62, 8);
  patch(bad, q8 + 4 + 8, uint64_t{1} << 62, 8);
  expect_error(bad, "impossible dimension");

  GgufWriter w;
  w.add_tensor("t", GgmlType::F32, {1}, f32_bytes({1}));
  w.add_tensor("t", GgmlType::F32, {1}, f32_bytes({2}));
  expect_error(w.bytes(), "tensor 't' appears twice");
}

TEST(Gguf, KeepsTensorsOfTypesItCannotReadButNamesThem) {
  std::string bytes = sample_writer().bytes();
  patch(bytes, after_string(bytes, "blk.0.q4k") + 4 + 8, 23, 4);  // IQ4_XS
  const GgufFile g = GgufFile::parse(bytes, "m.gguf");
  const GgufTensor* t = g.find_tensor("blk.0.q4k");
  EXPECT_EQ(ggml_type_name(t->type), "IQ4_XS");
  EXPECT_EQ(t->nbytes, 0u);
  EXPECT_FALSE(ggml_type_layout(t->type).has_value());
  EXPECT_EQ(ggml_type_name(99), "ggml type 99");
  EXPECT_EQ(ggml_type_layout(static_cast<uint32_t>(GgmlType::Q6_K))->block_bytes, 210);
}

TEST(Gguf, TypedGettersNameTheKeyAndTheTypeFound) {
  const std::string bytes = sample_writer().bytes();
  const GgufFile g = GgufFile::parse(bytes, "m.gguf");
  auto message = [&](auto&& call) {
    try {
      call();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message([&] { g.get_uint("olmoe.expert_count"); }),
            "m.gguf: metadata key 'olmoe.expert_count' is missing");
  EXPECT_EQ(
      message([&] { g.get_uint("tokenizer.ggml.bos_token_id"); }),
      "m.gguf: metadata key 'tokenizer.ggml.bos_token_id' is negative, not a non-negative integer");
  EXPECT_EQ(message([&] { g.get_uint("general.architecture"); }),
            "m.gguf: metadata key 'general.architecture' is string, not a non-negative integer");
  EXPECT_EQ(message([&] { g.get_string("olmoe.block_count"); }),
            "m.gguf: metadata key 'olmoe.block_count' is uint32, not string");
  EXPECT_EQ(message([&] { g.get_string_array("tokenizer.ggml.scores"); }),
            "m.gguf: metadata key 'tokenizer.ggml.scores' is an array of float32, not an array of "
            "strings");
  EXPECT_EQ(message([&] { g.get_int_array("tokenizer.ggml.scores"); }),
            "m.gguf: metadata key 'tokenizer.ggml.scores' is not an array of integers");
  EXPECT_EQ(message([&] { g.get_bool_or("olmoe.block_count", false); }),
            "m.gguf: metadata key 'olmoe.block_count' is uint32, not bool");
  EXPECT_EQ(g.describe("tokenizer.ggml.tokens", 2), "[string x 3] \"a\", \"b\", ...");
  EXPECT_EQ(g.describe("tokenizer.ggml.token_type"), "[int32 x 3] 1, 1, 3");
  EXPECT_EQ(g.describe("olmoe.block_count"), "2");
  EXPECT_EQ(g.describe("tokenizer.ggml.bos_token_id"), "-1");
  EXPECT_EQ(g.describe("tokenizer.ggml.add_bos_token"), "false");
  EXPECT_EQ(g.describe("general.architecture"), "\"olmoe\"");
}

}  // namespace
}  // namespace bhmoe
