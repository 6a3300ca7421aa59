// Measures the machine's memory read bandwidth, for benchmarks that print a roofline bound beside
// their figures.
#pragma once

#include <cstddef>

#include "kernels/thread_pool.h"

namespace bhmoe::kernels {

enum class PageSize { Small, Huge };

// Reads a freshly allocated buffer of `bytes` (rounded up to 4 KiB; use well above the last-level
// cache, e.g. 1 GiB) with every thread of the pool, each streaming its own contiguous part with
// vector loads, and returns the best of several passes in GB/s (1e9 bytes per second).
// PageSize::Huge reads a HugePageBuffer (what the engine's bf16/q8 copies live in); Small reads
// 4 KiB pages, as a file mapping has them (the zero-copy weights). On a VM each TLB miss is a
// two-level page walk, so the two can differ: report both. The best pass catches bursts; on a VM
// whose bandwidth drifts, it can sit well above what a long stream sustains.
// Takes about 10 passes x bytes / bandwidth; throws bhmoe::Error if the buffer cannot be allocated.
double measure_read_bandwidth_gbs(ThreadPool& pool, size_t bytes, PageSize pages = PageSize::Huge);

}  // namespace bhmoe::kernels
