// Large anonymous allocations for weights the engine creates at load time (quantised copies) and
// for benchmarks that must see the same memory the weights live in.
#pragma once

#include <cstddef>
#include <cstdint>

namespace bhmoe {

// An owning, zero-initialised, read-write anonymous mapping whose start is aligned to 2 MiB and
// which is advised for transparent huge pages (madvise MADV_HUGEPAGE). Streaming reads over
// gigabytes of weights miss the TLB on every 4 KiB page; on a VM each miss is a two-level page
// walk (measured on this project's VM: +14% prefill for the bf16 weight copy; `bhmoe bench model`
// prints the read bandwidth of both page sizes). Where the kernel refuses the advice, the memory is
// still usable with ordinary pages. Pages are allocated on first
// touch. Movable, not copyable; unmaps on destruction.
class HugePageBuffer {
 public:
  static constexpr size_t kHugePage = size_t{2} << 20;

  HugePageBuffer() = default;
  // Throws bhmoe::Error naming `what` and the size when the mapping fails.
  HugePageBuffer(size_t bytes, const char* what);
  ~HugePageBuffer();
  HugePageBuffer(HugePageBuffer&& other) noexcept;
  HugePageBuffer& operator=(HugePageBuffer&& other) noexcept;
  HugePageBuffer(const HugePageBuffer&) = delete;
  HugePageBuffer& operator=(const HugePageBuffer&) = delete;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }  // as requested

 private:
  void release();

  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_ = 0;  // size_ rounded up to kHugePage
};

}  // namespace bhmoe
