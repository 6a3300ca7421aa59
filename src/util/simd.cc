#include "util/simd.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "util/error.h"

namespace bhmoe {
namespace {

SimdLevel detect() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  // F16C from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports has no "f16c".
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  if (!avx2) return SimdLevel::Scalar;
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (!avx512) return SimdLevel::Avx2;
  if (__builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni")) {
    return SimdLevel::Avx512Bf16;
  }
  return SimdLevel::Avx512;
#else
  return SimdLevel::Scalar;
#endif
}

// The CPU's level, capped by the environment variable BHMOE_SIMD ("scalar", "avx2", "avx512" or
// "avx512bf16") when set: e.g. BHMOE_SIMD=avx512 keeps every activation fp32 on an AVX512-BF16
// machine, for comparisons with fp32 references. An unknown value is ignored with a warning.
SimdLevel capped_by_environment(SimdLevel level) {
  const char* env = std::getenv("BHMOE_SIMD");
  if (env == nullptr || *env == '\0') return level;
  for (SimdLevel cap :
       {SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512, SimdLevel::Avx512Bf16}) {
    if (std::strcmp(env, simd_level_name(cap)) == 0)
      return static_cast<int>(cap) < static_cast<int>(level) ? cap : level;
  }
  std::fprintf(stderr,
               "bhmoe: warning: BHMOE_SIMD=%s is not scalar, avx2, avx512 or avx512bf16; ignored\n",
               env);
  return level;
}

const SimdLevel kDetected = capped_by_environment(detect());

}  // namespace

std::atomic<SimdLevel> detail::g_simd_level{kDetected};

SimdLevel detected_simd_level() {
  return kDetected;
}

void set_simd_level(SimdLevel level) {
  if (static_cast<int>(level) > static_cast<int>(kDetected)) {
    fail("SIMD level ", simd_level_name(level),
         " is not supported by this CPU (best: ", simd_level_name(kDetected), ")");
  }
  detail::g_simd_level.store(level);
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::Scalar:
      return "scalar";
    case SimdLevel::Avx2:
      return "avx2";
    case SimdLevel::Avx512:
      return "avx512";
    case SimdLevel::Avx512Bf16:
      return "avx512bf16";
  }
  return "?";
}

}  // namespace bhmoe
