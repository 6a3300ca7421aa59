#include <charconv>
#include <string_view>

#include "cli/command.h"
#include "util/error.h"

namespace bhmoe::cli {

std::vector<int> parse_positive_int_list(const std::string& text, const char* option) {
  std::vector<int> out;
  std::string_view rest = text;
  while (true) {
    const size_t comma = rest.find(',');
    const std::string_view item = rest.substr(0, comma);
    int value = 0;
    auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
    if (item.empty() || ec != std::errc() || ptr != item.data() + item.size()) {
      fail(option, " \"", text, "\": \"", item, "\" is not an integer (expected e.g. 8,16,32,64)");
    }
    if (value < 1) fail(option, " \"", text, "\": ", value, " must be >= 1");
    out.push_back(value);
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  return out;
}

}  // namespace bhmoe::cli
