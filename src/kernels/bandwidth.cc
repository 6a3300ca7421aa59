#include "kernels/bandwidth.h"

// GCC 12 warns inside its own AVX-512 reduction/conversion intrinsics (their _mm*_undefined_*()
// placeholders); the warnings are false positives.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/ops.h"
#include "util/error.h"
#include "util/memory.h"

namespace bhmoe::kernels {
namespace {

// XOR of every 64-byte line (keeps the loads live); 4 independent streams of loads.
__attribute__((target("avx512f"))) uint64_t read_avx512(const uint8_t* p, size_t bytes) {
  __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
  for (size_t i = 0; i + 256 <= bytes; i += 256) {
    a = _mm512_xor_si512(a, _mm512_load_si512(p + i));
    b = _mm512_xor_si512(b, _mm512_load_si512(p + i + 64));
    c = _mm512_xor_si512(c, _mm512_load_si512(p + i + 128));
    d = _mm512_xor_si512(d, _mm512_load_si512(p + i + 192));
  }
  __m512i x = _mm512_xor_si512(_mm512_xor_si512(a, b), _mm512_xor_si512(c, d));
  return static_cast<uint64_t>(_mm512_reduce_or_epi64(x));
}

__attribute__((target("avx2"))) uint64_t read_avx2(const uint8_t* p, size_t bytes) {
  __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
  for (size_t i = 0; i + 128 <= bytes; i += 128) {
    a = _mm256_xor_si256(a, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
    b = _mm256_xor_si256(b, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    c = _mm256_xor_si256(c, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    d = _mm256_xor_si256(d, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  __m256i x = _mm256_xor_si256(_mm256_xor_si256(a, b), _mm256_xor_si256(c, d));
  return static_cast<uint64_t>(_mm256_extract_epi64(x, 0) | _mm256_extract_epi64(x, 1) |
                               _mm256_extract_epi64(x, 2) | _mm256_extract_epi64(x, 3));
}

uint64_t read_scalar(const uint8_t* p, size_t bytes) {
  uint64_t x = 0;
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    uint64_t v;
    std::memcpy(&v, p + i, 8);
    x ^= v;
  }
  return x;
}

}  // namespace

double measure_read_bandwidth_gbs(ThreadPool& pool, size_t bytes, PageSize page_size) {
  constexpr size_t kAlign = 4096;
  bytes = std::max<size_t>(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
  HugePageBuffer buffer(bytes, "read-bandwidth probe");
  if (page_size == PageSize::Small) {
    // Undo the advice (the system default may still be THP "always"): 4 KiB pages only.
    if (::madvise(buffer.data(), bytes, MADV_NOHUGEPAGE) != 0) {
      fail("read-bandwidth probe: madvise(MADV_NOHUGEPAGE) failed: ", std::strerror(errno));
    }
  }
  uint8_t* data = buffer.data();
  const int64_t pages = static_cast<int64_t>(bytes / kAlign);
  // First touch by the thread that later reads each part (NUMA placement), non-zero contents.
  pool.parallel_for(pages, [&](int, int64_t begin, int64_t end) {
    for (int64_t page = begin; page < end; ++page) {
      std::memset(data + page * kAlign, static_cast<int>(page & 0x7f) + 1, kAlign);
    }
  });
  const Isa isa = active_isa();
  std::atomic<uint64_t> sink{0};
  double best = 0.0;
  for (int pass = 0; pass < 10; ++pass) {
    auto start = std::chrono::steady_clock::now();
    pool.parallel_for(pages, [&](int, int64_t begin, int64_t end) {
      const uint8_t* p = data + begin * kAlign;
      const size_t n = static_cast<size_t>(end - begin) * kAlign;
      uint64_t x;
      if (isa >= Isa::Avx512) {
        x = read_avx512(p, n);
      } else if (isa == Isa::Avx2) {
        x = read_avx2(p, n);
      } else {
        x = read_scalar(p, n);
      }
      sink.fetch_xor(x, std::memory_order_relaxed);
    });
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    best = std::max(best, static_cast<double>(bytes) / seconds / 1e9);
  }
  return best;
}

}  // namespace bhmoe::kernels
