#include "util/npz.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "util/error.h"
#include "util/npy.h"

namespace bhmoe {
namespace {

std::vector<NpzMember> sample_members() {
  NpyArray weights;
  weights.shape = {2, 3};
  weights.data = {0.5f, -1.0f, 2.0f, 3.25f, 0.0f, 1e-3f};
  const std::vector<int32_t> ids = {3, -1, 7, 63};
  return {{"weights", npy_bytes(weights)}, {"ids", npy_bytes_int32({2, 2}, ids)}};
}

TEST(Crc32, MatchesTheStandardCheckValue) {
  // The CRC-32 catalogue's check value for "123456789".
  EXPECT_EQ(crc32("123456789"), 0xCBF43926u);
  EXPECT_EQ(crc32(""), 0u);
}

TEST(Npz, RoundTripsEveryMemberByName) {
  const std::vector<NpzMember> members = sample_members();
  const auto parsed = parse_npz(npz_bytes(members), "t.npz");
  ASSERT_EQ(parsed.size(), 2u);
  EXPECT_EQ(parsed.at("weights"), members[0].second);
  EXPECT_EQ(parsed.at("ids"), members[1].second);
  const NpyArray w = parse_npy(parsed.at("weights"), "t.npz:weights");
  EXPECT_EQ(w.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_FLOAT_EQ(w.data[3], 3.25f);
}

TEST(Npz, WritesAtomicallyAndReadsBackFromDisk) {
  const auto path = std::filesystem::path(::testing::TempDir()) / "npz_roundtrip.npz";
  write_npz(path, sample_members());
  EXPECT_EQ(read_npz(path).size(), 2u);
  std::filesystem::remove(path);
}

TEST(Npz, RefusesBadMemberNames) {
  EXPECT_THROW(npz_bytes({{"", "x"}}), Error);
  EXPECT_THROW(npz_bytes({{"a/b", "x"}}), Error);
  EXPECT_THROW(npz_bytes({{"a", "x"}, {"a", "y"}}), Error);
}

// Each corruption is an error naming the archive, never a crash or a silently wrong array.
TEST(Npz, NamesTheFaultInCorruptArchives) {
  const std::string good = npz_bytes(sample_members());
  auto message = [](const std::string& bytes) {
    try {
      parse_npz(bytes, "bad.npz");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("PK").find("too short"), std::string::npos);
  EXPECT_NE(message(std::string(100, 'x')).find("not a .npz"), std::string::npos);

  std::string flipped = good;
  flipped[80] ^= 0x55;  // inside the first member's data
  EXPECT_NE(message(flipped).find("CRC-32"), std::string::npos);

  std::string compressed = good;
  compressed[8] = 8;  // local header method: deflate
  const size_t central = good.find("PK\x01\x02");
  ASSERT_NE(central, std::string::npos);
  compressed[central + 10] = 8;  // central directory method: deflate
  EXPECT_NE(message(compressed).find("savez_compressed"), std::string::npos);

  // Cut the archive: the directory now points past the end.
  std::string cut = good.substr(0, 40) + good.substr(good.size() - 22);
  const std::string text = message(cut);
  EXPECT_NE(text.find("bad.npz"), std::string::npos);
  EXPECT_NE(text.find("past the end"), std::string::npos) << text;

  // A member name with a NUL (found by fuzzing: it cut the error messages that quote it).
  std::string nul = good;
  const size_t name_at = good.find("weights.npy", central);
  ASSERT_NE(name_at, std::string::npos);
  nul[name_at] = '\0';
  EXPECT_NE(message(nul).find("member 0 has a control character"), std::string::npos) << message(nul);

  // Every truncation of a valid archive is refused or parses; none crashes.
  for (size_t n = 0; n < good.size(); n += 7) message(good.substr(0, n));
}

}  // namespace
}  // namespace bhmoe
