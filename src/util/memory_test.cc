#include "util/memory.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <utility>

#include "util/error.h"

namespace bhmoe {
namespace {

TEST(HugePageBuffer, AlignedZeroedAndWritable) {
  const size_t bytes = HugePageBuffer::kHugePage * 3 + 12345;
  HugePageBuffer buffer(bytes, "test buffer");
  ASSERT_NE(buffer.data(), nullptr);
  EXPECT_EQ(buffer.size(), bytes);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer.data()) % HugePageBuffer::kHugePage, 0u);
  uint64_t sum = 0;
  for (size_t i = 0; i < bytes; i += 4096) sum += buffer.data()[i];
  sum += buffer.data()[bytes - 1];
  EXPECT_EQ(sum, 0u);
  for (size_t i = 0; i < bytes; ++i) buffer.data()[i] = static_cast<uint8_t>(i * 7);
  EXPECT_EQ(buffer.data()[bytes - 1], static_cast<uint8_t>((bytes - 1) * 7));
}

TEST(HugePageBuffer, EmptyAndMove) {
  HugePageBuffer empty(0, "empty");
  EXPECT_EQ(empty.data(), nullptr);
  EXPECT_EQ(empty.size(), 0u);

  HugePageBuffer a(1000, "a");
  a.data()[999] = 42;
  uint8_t* p = a.data();
  HugePageBuffer b(std::move(a));
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(b.data()[999], 42);
  HugePageBuffer c(5000, "c");
  c = std::move(b);
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(c.size(), 1000u);
}

TEST(HugePageBuffer, ImpossibleSizeNamesWhatAndSize) {
  try {
    HugePageBuffer huge(size_t{1} << 50, "q8 weights");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q8 weights"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("1125899906842624"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace bhmoe
