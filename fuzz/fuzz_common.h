// Shared by the libFuzzer targets (see scripts/fuzz.sh). Each target feeds its input to one parser
// and accepts exactly two outcomes: success (then checks what was parsed) or bhmoe::Error whose
// message is in our words. Any other exception escapes and libFuzzer reports it as a crash, as it
// does for sanitizer reports and allocations beyond -malloc_limit_mb.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "util/error.h"

namespace bhmoe::fuzz {

[[noreturn]] inline void crash(std::string_view what, std::string_view detail) {
  std::fprintf(stderr, "fuzz check failed: %.*s: %.*s\n", static_cast<int>(what.size()),
               what.data(), static_cast<int>(detail.size()), detail.data());
  std::abort();
}

// User-facing messages must not leak library wording ("[json.exception...]", "std::bad_alloc",
// "std::length_error", "vector::_M_default_append", "basic_string::_M_create") and must say
// something. Messages quote the input, so a word the input itself contains is not counted as a
// leak. Not "std::" alone: a quoted name ending in "std:" followed by the message's ": " spells it
// (an npz member "idstd:" did).
inline void check_message(const Error& e, std::string_view input) {
  std::string_view m = e.what();
  if (m.empty()) crash("empty error message", "");
  for (std::string_view leak :
       {"json.exception", "std::bad", "std::length", "std::out_of", "std::invalid", "std::logic",
        "std::runtime", "std::range", "std::system", "std::future", "vector::", "basic_string",
        "bad_alloc"}) {
    if (m.find(leak) != std::string_view::npos && input.find(leak) == std::string_view::npos)
      crash("library text in an error message", m);
  }
}

// An in-memory regular file with a path, for parsers that take a path (they open and stat it, so
// it must be a real regular file: a memfd is one). Rewritten for every input.
class MemFile {
 public:
  MemFile() {
    fd_ = ::memfd_create("bhmoe-fuzz", 0);
    if (fd_ < 0) crash("memfd_create", "failed");
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  const std::string& write(const uint8_t* data, size_t size) {
    if (::ftruncate(fd_, 0) != 0) crash("ftruncate", "failed");
    size_t done = 0;
    while (done < size) {
      ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      if (n <= 0) crash("pwrite", "failed");
      done += static_cast<size_t>(n);
    }
    return path_;
  }

 private:
  int fd_ = -1;
  std::string path_;
};

}  // namespace bhmoe::fuzz
