#include "util/memory.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "util/error.h"

namespace bhmoe {

HugePageBuffer::HugePageBuffer(size_t bytes, const char* what) {
  if (bytes == 0) return;
  if (bytes > (size_t{1} << 46)) fail(what, ": cannot allocate ", bytes, " bytes (too large)");
  mapped_ = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  // Over-map by one huge page, then trim both ends so the kept range starts on a 2 MiB boundary
  // (mmap only promises 4 KiB alignment, and a THP needs an aligned 2 MiB range).
  const size_t reserve = mapped_ + kHugePage;
  void* raw = ::mmap(nullptr, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    fail(what, ": cannot allocate ", bytes, " bytes: ", std::strerror(errno));
  }
  const auto begin = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (begin + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > begin) ::munmap(raw, aligned - begin);
  const uintptr_t tail = aligned + mapped_;
  if (begin + reserve > tail) ::munmap(reinterpret_cast<void*>(tail), begin + reserve - tail);
  data_ = reinterpret_cast<uint8_t*>(aligned);
  size_ = bytes;
  // Best effort: where THP is off, the memory works with ordinary pages.
  ::madvise(data_, mapped_, MADV_HUGEPAGE);
}

HugePageBuffer::~HugePageBuffer() {
  release();
}

HugePageBuffer::HugePageBuffer(HugePageBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, 0)) {}

HugePageBuffer& HugePageBuffer::operator=(HugePageBuffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_ = std::exchange(other.mapped_, 0);
  }
  return *this;
}

void HugePageBuffer::release() {
  if (data_ != nullptr) ::munmap(data_, mapped_);
  data_ = nullptr;
  size_ = mapped_ = 0;
}

}  // namespace bhmoe
