// Errors that reach the user. Every failure the user can cause (bad file, bad key, bad value) is
// reported by throwing bhmoe::Error with a message that names the file, tensor, key or value at fault;
// the CLI prints it to stderr and exits non-zero. Programming errors use assert().
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace bhmoe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// Builds a message from streamable parts: throw Error(cat("tensor ", name, ": shape ", s)).
template <typename... Parts>
std::string cat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

template <typename... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  throw Error(cat(std::forward<Parts>(parts)...));
}

}  // namespace bhmoe
