// bf16/f16 <-> f32 conversions: exhaustive round trips, rounding ties, NaN, inf, subnormals.
#include <gtest/gtest.h>

#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/ops.h"
#include "util/error.h"

namespace bhmoe::kernels {
namespace {

float from_bits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint32_t to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

TEST(Bf16, EveryValueRoundTrips) {
  for (uint32_t v = 0; v <= 0xffff; ++v) {
    float f = bf16_to_f32(static_cast<uint16_t>(v));
    EXPECT_EQ(to_bits(f), v << 16);
    uint16_t back = f32_to_bf16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(back))) << v;
      EXPECT_EQ(back & 0x8000, v & 0x8000);
    } else {
      EXPECT_EQ(back, v);
    }
  }
}

TEST(Bf16, RoundsToNearestEven) {
  // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
  EXPECT_EQ(f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
  // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up.
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
  EXPECT_EQ(f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);  // above the tie
  EXPECT_EQ(f32_to_bf16(-(1.0f + 3 * 0x1p-8f)), 0xbf82);
  // The largest float rounds to infinity; infinities and zeros are kept.
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(f32_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  // Subnormals round like any other value (no flush to zero).
  EXPECT_EQ(f32_to_bf16(from_bits(0x00010000)), 0x0001);
  EXPECT_EQ(f32_to_bf16(from_bits(0x00008000)), 0x0000);  // tie to even
  EXPECT_EQ(f32_to_bf16(from_bits(0x00018000)), 0x0002);  // tie to even (up)
  EXPECT_EQ(f32_to_bf16(from_bits(0x00008001)), 0x0001);
}

TEST(Bf16, NanStaysNan) {
  // A signalling NaN whose payload lives only in the low 16 bits must not become infinity.
  for (uint32_t bits : {0x7f800001u, 0x7fc00000u, 0xff800001u, 0x7fffffffu, 0x7f80ffffu}) {
    uint16_t b = f32_to_bf16(from_bits(bits));
    EXPECT_TRUE(std::isnan(bf16_to_f32(b))) << std::hex << bits;
    EXPECT_EQ(b & 0x8000, (bits >> 16) & 0x8000);
  }
}

TEST(Bf16, RandomValuesRoundToANearestNeighbour) {
  std::mt19937 rng(42);
  for (int i = 0; i < 200000; ++i) {
    uint32_t bits = rng();
    float f = from_bits(bits);
    if (!std::isfinite(f)) continue;
    uint16_t b = f32_to_bf16(f);
    uint32_t down = bits & 0xffff0000u;
    double d_down = std::fabs(static_cast<double>(from_bits(down)) - f);
    double d_up = std::fabs(static_cast<double>(from_bits(down + 0x10000u)) - f);
    if (std::isinf(from_bits(down + 0x10000u))) d_up = std::ldexp(1.0, 128) - std::fabs(f);
    uint16_t expected;
    if (d_down < d_up) {
      expected = static_cast<uint16_t>(down >> 16);
    } else if (d_up < d_down) {
      expected = static_cast<uint16_t>((down + 0x10000u) >> 16);
    } else {
      expected = static_cast<uint16_t>(((down >> 16) & 1) ? (down + 0x10000u) >> 16 : down >> 16);
    }
    ASSERT_EQ(b, expected) << std::hex << bits;
  }
}

__attribute__((target("f16c"))) uint16_t hardware_f32_to_f16(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}
__attribute__((target("f16c"))) float hardware_f16_to_f32(uint16_t h) {
  return _cvtsh_ss(h);
}

bool cpu_has_f16c() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("f16c");
}

TEST(F16, EveryValueRoundTrips) {
  for (uint32_t v = 0; v <= 0xffff; ++v) {
    float f = f16_to_f32(static_cast<uint16_t>(v));
    uint16_t back = f32_to_f16(f);
    if (std::isnan(f)) {
      EXPECT_EQ((v >> 10) & 0x1f, 0x1fu);
      EXPECT_NE(v & 0x3ff, 0u);
      EXPECT_EQ(back & 0x7c00, 0x7c00);
      EXPECT_NE(back & 0x3ff, 0);
      EXPECT_EQ(back & 0x8000, v & 0x8000);
    } else {
      EXPECT_EQ(back, v) << std::hex << v;
    }
    if (cpu_has_f16c() && !std::isnan(f)) {
      EXPECT_EQ(to_bits(f), to_bits(hardware_f16_to_f32(static_cast<uint16_t>(v)))) << v;
    }
  }
}

TEST(F16, EdgeCases) {
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);   // largest finite
  EXPECT_EQ(f32_to_f16(65519.99f), 0x7bff);  // just below the tie
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);   // tie with odd 65504 -> inf
  EXPECT_EQ(f32_to_f16(1e10f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(f32_to_f16(0x1p-24f), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);  // tie to even 0
  EXPECT_EQ(f32_to_f16(0x1p-25f * 1.0001f), 0x0001);
  EXPECT_EQ(f32_to_f16(3 * 0x1p-25f), 0x0002);         // tie 1.5 ulp -> even 2
  EXPECT_EQ(f32_to_f16(0x1p-14f - 0x1p-26f), 0x0400);  // rounds up into the normals
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3c00);      // tie to even
  EXPECT_EQ(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(from_bits(0x00000001)), 0x0000);  // f32 subnormal
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(from_bits(0x7f800001)))));
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::nanf("")))));
  EXPECT_FLOAT_EQ(f16_to_f32(0x0001), 0x1p-24f);
  EXPECT_FLOAT_EQ(f16_to_f32(0x03ff), 1023 * 0x1p-24f);
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)));
}

TEST(F16, RandomValuesMatchTheF16cInstruction) {
  if (!cpu_has_f16c()) GTEST_SKIP() << "no F16C";
  std::mt19937 rng(3);
  for (int i = 0; i < 300000; ++i) {
    uint32_t bits = rng();
    // Bias towards the f16 range so subnormal, normal and overflow cases all occur often.
    if (i % 2) bits = (bits & 0x807fffffu) | ((100 + rng() % 45) << 23);
    float f = from_bits(bits);
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), hardware_f32_to_f16(f)) << std::hex << bits;
  }
}

TEST(ConvertToBf16, EachStoredDtype) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const int64_t rows = 3, cols = 37;
  std::vector<float> f32(rows * cols);
  for (auto& v : f32) v = normal(rng);
  std::vector<uint16_t> bf16(f32.size()), f16(f32.size()), out(f32.size());
  for (size_t i = 0; i < f32.size(); ++i) {
    bf16[i] = f32_to_bf16(f32[i]);
    f16[i] = f32_to_f16(f32[i]);
  }
  convert_to_bf16(Matrix{f32.data(), DType::F32, rows, cols, nullptr}, out.data());
  EXPECT_EQ(out, bf16);
  out.assign(out.size(), 0);
  convert_to_bf16(Matrix{bf16.data(), DType::BF16, rows, cols, nullptr}, out.data());
  EXPECT_EQ(out, bf16);
  convert_to_bf16(Matrix{f16.data(), DType::F16, rows, cols, nullptr}, out.data());
  for (size_t i = 0; i < f32.size(); ++i) {
    ASSERT_EQ(out[i], f32_to_bf16(f16_to_f32(f16[i]))) << i;
  }
  std::vector<int8_t> q(rows * cols);
  std::vector<float> scales(rows * 2);
  EXPECT_THROW(convert_to_bf16(q8_matrix(q.data(), scales.data(), rows, 32), out.data()), Error);
}

}  // namespace
}  // namespace bhmoe::kernels
