#include <charconv>
#include <cmath>
#include <cstdint>
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

CLI::Validator finite_range(double min, double max) {
  return CLI::Validator(
      [min, max](std::string& text) -> std::string {
        double value = 0;
        if (!CLI::detail::lexical_cast(text, value)) return "\"" + text + "\" is not a number";
        if (!std::isfinite(value) || value < min || value > max) {
          return "value " + text + " is not a finite number in [" + CLI::detail::to_string(min) +
                 ", " + CLI::detail::to_string(max) + "]";
        }
        return {};
      },
      "FINITE in [" + CLI::detail::to_string(min) + " - " + CLI::detail::to_string(max) + "]");
}

CLI::Validator unsigned_integer() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        uint64_t value = 0;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (text.empty() || ec != std::errc() || end != text.data() + text.size()) {
          return "value " + text + " is not an integer in [0, 18446744073709551615]";
        }
        return {};
      },
      "UINT64");
}

}  // namespace bhmoe::cli
