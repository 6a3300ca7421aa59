// Elapsed wall time for timings that the outputs record.
#pragma once

#include <chrono>

namespace bhmoe {

// Seconds on the steady clock since `start`.
inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace bhmoe
