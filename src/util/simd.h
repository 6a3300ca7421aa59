// The SIMD level every vectorised loop of bhmoe runs at (kernels/ and routing/ alike): detected once
// from the CPU at start-up; tests and benchmarks may lower it to exercise the narrower paths on a
// wider CPU. One detection and one switch, read with a relaxed atomic load per call.
#pragma once

#include <atomic>
#include <cstdint>

namespace bhmoe {

// Ordered: each level implies the ones below it.
//   Avx2: AVX2 + FMA + F16C.  Avx512: AVX-512 F, BW, VL, DQ.  Avx512Bf16: also AVX512-BF16 and VNNI.
enum class SimdLevel : uint8_t { Scalar, Avx2, Avx512, Avx512Bf16 };

namespace detail {
// The active level. Dynamically initialised to the detected level before main (util/simd.cc); a
// static initialiser elsewhere that ran earlier would read Scalar, which is correct, only slower.
extern std::atomic<SimdLevel> g_simd_level;
}  // namespace detail

// The best this CPU supports, capped by the environment variable BHMOE_SIMD when it names a level
// (BHMOE_SIMD=avx512: fp32 activations throughout, as fp32 references compute).
SimdLevel detected_simd_level();
// What the vectorised code uses now. Inline: kernels dispatch on it per call, some calls per key of
// the attention loop.
inline SimdLevel simd_level() {
  return detail::g_simd_level.load(std::memory_order_relaxed);
}
// Throws bhmoe::Error when `level` is above detected_simd_level().
void set_simd_level(SimdLevel level);
const char* simd_level_name(SimdLevel level);  // "scalar", "avx2", "avx512", "avx512bf16"

}  // namespace bhmoe
