#include "util/npy.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>

#include "util/error.h"
#include "util/file.h"

namespace bhmoe {
namespace {

namespace fs = std::filesystem;

// A .npy file by hand: version, header dict, raw data bytes.
std::string npy_file(const std::string& dict, const std::string& data, int major = 1) {
  std::string header = dict;
  const size_t prefix = major == 1 ? 10 : 12;
  while ((prefix + header.size() + 1) % 64) header.push_back(' ');
  header.push_back('\n');
  std::string out("\x93NUMPY", 6);
  out.push_back(static_cast<char>(major));
  out.push_back(0);
  const size_t len = header.size();
  out.push_back(static_cast<char>(len & 0xff));
  out.push_back(static_cast<char>((len >> 8) & 0xff));
  if (major != 1) {
    out.push_back(static_cast<char>((len >> 16) & 0xff));
    out.push_back(static_cast<char>((len >> 24) & 0xff));
  }
  return out + header + data;
}

std::string u16_bytes(std::initializer_list<uint16_t> values) {
  std::string out;
  for (uint16_t v : values) {
    out.push_back(static_cast<char>(v & 0xff));
    out.push_back(static_cast<char>(v >> 8));
  }
  return out;
}

std::string f32_bytes(std::initializer_list<float> values) {
  std::string out;
  for (float v : values) out.append(reinterpret_cast<const char*>(&v), 4);
  return out;
}

void expect_error(const std::string& bytes, std::initializer_list<const char*> parts) {
  try {
    parse_npy(bytes, "x.npy");
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("x.npy"), std::string::npos) << message;
    for (const char* part : parts) {
      EXPECT_NE(message.find(part), std::string::npos)
          << "\"" << message << "\" lacks \"" << part << "\"";
    }
  }
}

TEST(Npy, Float32RoundTripThroughAFile) {
  NpyArray a{{2, 3}, {1.5f, -2.0f, 0.0f, 3.25f, 1e-30f, -7.0f}};
  const fs::path path = fs::temp_directory_path() / "bhmoe_npy_test.npy";
  write_npy(path, a);
  NpyArray b = read_npy(path);
  EXPECT_EQ(b.shape, a.shape);
  EXPECT_EQ(b.data, a.data);
  EXPECT_EQ(b.rank(), 2);
  EXPECT_EQ(b.dim(1), 3);
  // Header: version 1.0, data aligned to 64 bytes, the numpy dict format.
  std::string bytes = read_file(path);
  EXPECT_EQ(bytes[6], 1);
  EXPECT_EQ((bytes.size() - 24) % 64, 0u);
  EXPECT_NE(bytes.find("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"),
            std::string::npos);
  fs::remove(path);
}

TEST(Npy, OneDimensionalScalarAndEmptyShapes) {
  for (const NpyArray& a : {NpyArray{{4}, {1, 2, 3, 4}}, NpyArray{{}, {42.0f}},
                            NpyArray{{0, 64}, {}}, NpyArray{{2, 1, 3}, {1, 2, 3, 4, 5, 6}}}) {
    NpyArray b = parse_npy(npy_bytes(a), "mem");
    EXPECT_EQ(b.shape, a.shape);
    EXPECT_EQ(b.data, a.data);
  }
  EXPECT_NE(npy_bytes(NpyArray{{4}, {1, 2, 3, 4}}).find("'shape': (4,)"), std::string::npos);
  EXPECT_THROW(npy_bytes(NpyArray{{2, 2}, {1, 2, 3}}), Error);
  EXPECT_THROW(write_npy(fs::temp_directory_path() / "bhmoe_bad.npy", NpyArray{{3}, {1}}), Error);
}

TEST(Npy, Float16) {
  // 1, -2, 0.5, smallest subnormal, largest finite, +inf, -0
  std::string data = u16_bytes({0x3c00, 0xc000, 0x3800, 0x0001, 0x7bff, 0x7c00, 0x8000});
  NpyArray a =
      parse_npy(npy_file("{'descr': '<f2', 'fortran_order': False, 'shape': (7,), }", data), "h");
  ASSERT_EQ(a.data.size(), 7u);
  EXPECT_EQ(a.data[0], 1.0f);
  EXPECT_EQ(a.data[1], -2.0f);
  EXPECT_EQ(a.data[2], 0.5f);
  EXPECT_EQ(a.data[3], std::ldexp(1.0f, -24));
  EXPECT_EQ(a.data[4], 65504.0f);
  EXPECT_TRUE(std::isinf(a.data[5]));
  EXPECT_TRUE(std::signbit(a.data[6]));
  EXPECT_TRUE(std::isnan(half_to_float(0x7e00)));
}

TEST(Npy, BFloat16StoredAsUint16) {
  std::string data = u16_bytes({0x3f80, 0xc040, 0x4049});
  std::string file = npy_file("{'descr': '<u2', 'fortran_order': False, 'shape': (1, 3), }", data);
  NpyArray a = parse_npy(file, "b");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(a.data[0], 1.0f);
  EXPECT_EQ(a.data[1], -3.0f);
  EXPECT_FLOAT_EQ(a.data[2], 3.140625f);
  NpyArray ints = parse_npy(file, "b", NpyU16::kInteger);
  EXPECT_EQ(ints.data[0], 16256.0f);
}

TEST(Npy, HeaderVersionsTwoAndThree) {
  std::string data = f32_bytes({1.0f, 2.0f});
  for (int major : {2, 3}) {
    NpyArray a = parse_npy(
        npy_file("{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2,)}", data, major),
        "v");
    EXPECT_EQ(a.data, (std::vector<float>{1.0f, 2.0f}));
  }
}

TEST(Npy, RejectsWhatItCannotRead) {
  const std::string data = f32_bytes({1, 2, 3, 4});
  expect_error(npy_file("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", data),
               {"Fortran order"});
  expect_error(npy_file("{'descr': '>f4', 'fortran_order': False, 'shape': (4,), }", data),
               {"'>f4'", "unsupported"});
  expect_error(npy_file("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", data),
               {"'<f8'"});
  expect_error(npy_file("{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }", data),
               {"'<i4'"});
  expect_error(npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", data),
               {"truncated .npy data"});
  expect_error(npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", data),
               {"after the data"});
  expect_error(npy_file("{'descr': '<f4', 'fortran_order': False, }", data), {"'shape'"});
  expect_error(npy_file("{'fortran_order': False, 'shape': (4,), }", data), {"'descr'"});
  expect_error(npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (a,), }", data),
               {"shape"});
  std::string file = npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", data);
  expect_error(file.substr(0, 40), {"truncated .npy header"});
  expect_error("not an npy file at all", {"magic"});
  std::string v9 = file;
  v9[6] = 9;
  expect_error(v9, {"version 9"});
  EXPECT_THROW(read_npy("/nonexistent/logits.npy"), Error);
}

// (2^40, 2^40) used to overflow int64 (UBSan: signed overflow) and read as an empty array.
TEST(Npy, ShapeProductsThatOverflowAreErrors) {
  const std::string data = f32_bytes({1, 2, 3, 4});
  expect_error(npy_file("{'descr': '<f4', 'fortran_order': False, "
                        "'shape': (1099511627776, 1099511627776), }",
                        data),
               {"truncated .npy data: shape (1099511627776, 1099511627776) needs more than 2^63 "
                "values of 4 bytes, the file has 16 data bytes"});
  // Fits 64 bits but not the file: named before anything is allocated.
  expect_error(npy_file("{'descr': '<u2', 'fortran_order': False, 'shape': (1073741824, 64), }",
                        data),
               {"shape (1073741824, 64) needs 68719476736 values of 2 bytes, the file has 16"});
  // A zero dim makes any shape empty, however large the others.
  NpyArray empty = parse_npy(npy_file("{'descr': '<f4', 'fortran_order': False, "
                                      "'shape': (1099511627776, 1099511627776, 0), }",
                                      ""),
                             "x.npy");
  EXPECT_EQ(empty.size(), 0);
  EXPECT_TRUE(empty.data.empty());
  NpyArray huge;
  huge.shape = {int64_t{1} << 40, int64_t{1} << 40};
  try {
    (void)huge.size();
    ADD_FAILURE() << "overflowing size() accepted";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "npy shape (1099511627776, 1099511627776) is too large (its product overflows 64 "
                 "bits)");
  }
}

TEST(Npy, ReadsTheSharedRoutingCases) {
  const fs::path path = fs::path(BHMOE_SHARED_DIR) / "routing-cases/boosted_seed42.logits.npy";
  if (!fs::exists(path)) GTEST_SKIP();
  NpyArray a = read_npy(path);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{100, 64}));
  for (float v : a.data) EXPECT_TRUE(std::isfinite(v));
}

TEST(NpyInt32, RoundTripsAndWidensInt64WhenEveryValueFits) {
  const std::vector<int32_t> values = {-1, 0, 7, INT32_MAX, INT32_MIN};
  const NpyInt32Array a = parse_npy_int32(npy_bytes_int32({5}, values), "ids.npy");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{5}));
  EXPECT_EQ(a.data, values);

  std::string wide;
  for (int64_t v : {int64_t{3}, int64_t{-2}}) wide.append(reinterpret_cast<const char*>(&v), 8);
  EXPECT_EQ(parse_npy_int32(npy_file("{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", wide),
                            "w.npy")
                .data,
            (std::vector<int32_t>{3, -2}));
  std::string big;
  const int64_t too_big = int64_t{1} << 40;
  big.append(reinterpret_cast<const char*>(&too_big), 8);
  EXPECT_THROW(parse_npy_int32(npy_file("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }", big),
                               "w.npy"),
               Error);
  // Floats are not silently read as ids.
  EXPECT_THROW(parse_npy_int32(npy_bytes(NpyArray{{1}, {1.0f}}), "f.npy"), Error);
  // A shape that needs more bytes than the file has.
  EXPECT_THROW(parse_npy_int32(npy_file("{'descr': '<i4', 'fortran_order': False, 'shape': (9,), }",
                                        std::string(8, '\0')),
                               "short.npy"),
               Error);
}

TEST(NpyString, RoundTripsAZeroDimensionalUnicodeArray) {
  const std::string spec = "bh:alpha=0.05,max_k=16";
  const std::string bytes = npy_bytes_string(spec);
  EXPECT_NE(bytes.find("'descr': '<U22'"), std::string::npos);
  EXPECT_NE(bytes.find("'shape': ()"), std::string::npos);
  EXPECT_EQ(parse_npy_string(bytes, "s.npy"), spec);
  EXPECT_EQ(parse_npy_string(npy_bytes_string(""), "e.npy"), "");
  EXPECT_THROW(npy_bytes_string("caf\xc3\xa9"), Error);
  EXPECT_THROW(parse_npy_string(npy_bytes(NpyArray{{}, {1.0f}}), "f.npy"), Error);
}

}  // namespace
}  // namespace bhmoe
