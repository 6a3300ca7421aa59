#include "util/shell.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

namespace bhmoe {
namespace {

TEST(ShellQuote, QuotesAndEscapesSingleQuotes) {
  EXPECT_EQ(shell_quote(""), "''");
  EXPECT_EQ(shell_quote("a b"), "'a b'");
  EXPECT_EQ(shell_quote("it's"), "'it'\\''s'");
}

// The shell gives back every byte: spaces, quotes, $, backslashes, newlines.
TEST(ShellQuote, ShellEchoesTheTextBack) {
  const std::string text = "a 'b' \"c\" $HOME \\n `x` *\nend";
  FILE* pipe = ::popen(("printf %s " + shell_quote(text)).c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  char buffer[256];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) out.append(buffer, n);
  EXPECT_EQ(::pclose(pipe), 0);
  EXPECT_EQ(out, text);
}

}  // namespace
}  // namespace bhmoe
