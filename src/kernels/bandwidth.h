// Measures the machine's memory read bandwidth, for benchmarks that print a roofline bound beside
// their figures.
#pragma once

#include <cstddef>

#include "kernels/thread_pool.h"

namespace bhmoe::kernels {

// Reads a freshly allocated buffer of `bytes` (rounded up to 4 KiB; use well above the last-level
// cache, e.g. 1 GiB) with every thread of the pool, each streaming its own contiguous part with
// vector loads, and returns the best of several passes in GB/s (1e9 bytes per second).
// Takes about 10 passes x bytes / bandwidth; throws bhmoe::Error if the buffer cannot be allocated.
double measure_read_bandwidth_gbs(ThreadPool& pool, size_t bytes);

}  // namespace bhmoe::kernels
