// Kernel throughput: matvec (decode, memory-bound) and matmul (prefill / grouped experts,
// compute-bound) at OLMoE expert shapes, per ISA level, with the machine's read bandwidth.
//
//   build-*/src/kernels/kernels_bench [--benchmark_filter=...]
//
// Counters: GB/s = weight bytes streamed per second; GFLOP/s = 2 * rows * cols * tokens per second.
// "cold" variants cycle through 512 MiB of distinct matrices so every call reads DRAM (as decode
// does); "hot" ones reuse one matrix (it stays in L2/L3).
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/bandwidth.h"
#include "kernels/kernels_impl.h"
#include "kernels/ops.h"
#include "kernels/thread_pool.h"

namespace bhmoe::kernels {
namespace {

constexpr size_t kColdBytes = size_t{512} << 20;

// Weights for `copies` distinct [rows, cols] matrices of one dtype.
struct WeightPool {
  std::vector<uint16_t> half;
  std::vector<int8_t> q8;
  std::vector<float> scales;
  std::vector<uint8_t> blocks;  // GGUF block types
  std::vector<Matrix> matrices;

  WeightPool(DType dtype, int64_t rows, int64_t cols, int copies) {
    const int64_t n = rows * cols * copies;
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> dist(-0.05f, 0.05f);
    if (is_block_dtype(dtype)) {
      std::vector<float> source(rows * cols);
      for (auto& v : source) v = dist(rng);
      const size_t bytes = static_cast<size_t>(rows) * row_bytes(dtype, cols);
      blocks.resize(bytes * copies);
      quantize_rows(Matrix{source.data(), DType::F32, rows, cols, nullptr}, dtype, blocks.data());
      for (int c = 1; c < copies; ++c) {
        std::copy(blocks.begin(), blocks.begin() + bytes, blocks.begin() + c * bytes);
      }
      for (int c = 0; c < copies; ++c) {
        matrices.push_back(block_matrix(blocks.data() + c * bytes, dtype, rows, cols));
      }
      return;
    }
    if (dtype == DType::BF16) {
      half.resize(n);
      for (auto& v : half) v = f32_to_bf16(dist(rng));
    } else {
      std::vector<float> source(rows * cols);
      for (auto& v : source) v = dist(rng);
      Matrix src{source.data(), DType::F32, rows, cols, nullptr};
      q8.resize(n);
      scales.resize(n / kQ8Block);
      quantize_q8(src, q8.data(), scales.data());
      for (int c = 1; c < copies; ++c) {
        std::copy(q8.begin(), q8.begin() + rows * cols, q8.begin() + c * rows * cols);
        std::copy(scales.begin(), scales.begin() + rows * cols / kQ8Block,
                  scales.begin() + c * rows * cols / kQ8Block);
      }
    }
    for (int c = 0; c < copies; ++c) {
      if (dtype == DType::BF16) {
        matrices.push_back(Matrix{half.data() + c * rows * cols, DType::BF16, rows, cols, nullptr});
      } else {
        matrices.push_back(q8_matrix(q8.data() + c * rows * cols,
                                     scales.data() + c * rows * cols / kQ8Block, rows, cols));
      }
    }
  }
};

size_t weight_bytes(DType dtype, int64_t rows, int64_t cols) {
  size_t bytes = static_cast<size_t>(rows) * row_bytes(dtype, cols);
  if (dtype == DType::Q8) bytes += static_cast<size_t>(rows * cols / kQ8Block) * sizeof(float);
  return bytes;
}

void set_counters(benchmark::State& state, DType dtype, int64_t rows, int64_t cols,
                  int64_t tokens) {
  const double iterations = static_cast<double>(state.iterations());
  state.counters["GB/s"] =
      benchmark::Counter(iterations * static_cast<double>(weight_bytes(dtype, rows, cols)) / 1e9,
                         benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(iterations * 2.0 * static_cast<double>(rows * cols * tokens) / 1e9,
                         benchmark::Counter::kIsRate);
}

// args: rows, cols, isa, cold (0/1)
void matvec_bench(benchmark::State& state, DType dtype) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const Isa isa = static_cast<Isa>(state.range(2));
  const bool cold = state.range(3) != 0;
  if (static_cast<int>(isa) > static_cast<int>(detected_isa())) {
    state.SkipWithError("ISA not supported by this CPU");
    return;
  }
  set_active_isa(isa);
  const int copies = cold ? static_cast<int>(kColdBytes / weight_bytes(dtype, rows, cols)) : 1;
  WeightPool pool(dtype, rows, cols, copies);
  std::vector<float> x(cols, 0.5f), y(rows);
  size_t next = 0;
  for (auto _ : state) {
    matvec(pool.matrices[next], x.data(), y.data(), 0, rows);
    benchmark::DoNotOptimize(y.data());
    next = next + 1 == pool.matrices.size() ? 0 : next + 1;
  }
  set_counters(state, dtype, rows, cols, 1);
  set_active_isa(detected_isa());
}

// args: rows, cols, tokens, isa, threads, exact (0/1)
void matmul_bench(benchmark::State& state, DType dtype) {
  const int64_t rows = state.range(0), cols = state.range(1), tokens = state.range(2);
  const Isa isa = static_cast<Isa>(state.range(3));
  const int threads = static_cast<int>(state.range(4));
  const bool exact = state.range(5) != 0;
  if (static_cast<int>(isa) > static_cast<int>(detected_isa())) {
    state.SkipWithError("ISA not supported by this CPU");
    return;
  }
  set_active_isa(isa);
  WeightPool weights(dtype, rows, cols, 1);
  const Matrix& w = weights.matrices[0];
  std::vector<float> x(tokens * cols);
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (auto& v : x) v = dist(rng);
  std::vector<float> y(tokens * rows);
  ThreadPool pool(threads);
  for (auto _ : state) {
    pool.parallel_for(rows, [&](int, int64_t begin, int64_t end) {
      if (exact) {
        matmul_exact(w, x.data(), cols, tokens, y.data() + begin, rows, begin, end);
      } else {
        matmul(w, x.data(), cols, tokens, y.data() + begin, rows, begin, end);
      }
    });
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, dtype, rows, cols, tokens);
  set_active_isa(detected_isa());
}

void BM_MatvecBf16(benchmark::State& state) {
  matvec_bench(state, DType::BF16);
}
void BM_MatvecQ8(benchmark::State& state) {
  matvec_bench(state, DType::Q8);
}
void BM_MatvecQ8_0(benchmark::State& state) {
  matvec_bench(state, DType::Q8_0);
}
void BM_MatvecQ4_0(benchmark::State& state) {
  matvec_bench(state, DType::Q4_0);
}
void BM_MatvecQ4_K(benchmark::State& state) {
  matvec_bench(state, DType::Q4_K);
}
void BM_MatvecQ6_K(benchmark::State& state) {
  matvec_bench(state, DType::Q6_K);
}
void BM_MatmulBf16(benchmark::State& state) {
  matmul_bench(state, DType::BF16);
}
void BM_MatmulQ8(benchmark::State& state) {
  matmul_bench(state, DType::Q8);
}
void BM_MatmulQ4_K(benchmark::State& state) {
  matmul_bench(state, DType::Q4_K);
}
void BM_MatmulQ6_K(benchmark::State& state) {
  matmul_bench(state, DType::Q6_K);
}

const int kAvx2 = static_cast<int>(Isa::Avx2);
const int kAvx512 = static_cast<int>(Isa::Avx512);
const int kBf16 = static_cast<int>(Isa::Avx512Bf16);

void matvec_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"rows", "cols", "isa", "cold"});
  for (auto [rows, cols] : {std::pair{1024, 2048}, std::pair{2048, 1024}}) {
    for (int isa : {kAvx2, kAvx512, kBf16}) {
      for (int cold : {0, 1}) b->Args({rows, cols, isa, cold});
    }
  }
}

void matmul_args(benchmark::internal::Benchmark* b, int threads) {
  b->ArgNames({"rows", "cols", "tokens", "isa", "threads", "exact"});
  for (auto [rows, cols] : {std::pair{1024, 2048}, std::pair{2048, 1024}}) {
    b->Args({rows, cols, 64, kBf16, threads, 0});
    if (threads == 1) {
      b->Args({rows, cols, 64, kBf16, threads, 1});
      b->Args({rows, cols, 64, kAvx512, threads, 0});
      b->Args({rows, cols, 64, kAvx2, threads, 0});
      b->Args({rows, cols, 8, kBf16, threads, 0});
    }
  }
}

// Single-threaded figures use CPU time (robust when the machine is shared); two-thread figures
// need wall time.
BENCHMARK(BM_MatvecBf16)->Apply(matvec_args);
BENCHMARK(BM_MatvecQ8)->Apply(matvec_args);
// GGUF block types at the same shapes (GB/s counts the blocks as stored).
BENCHMARK(BM_MatvecQ8_0)->Apply(matvec_args);
BENCHMARK(BM_MatvecQ4_0)->Apply(matvec_args);
BENCHMARK(BM_MatvecQ4_K)->Apply(matvec_args);
BENCHMARK(BM_MatvecQ6_K)->Apply(matvec_args);
BENCHMARK(BM_MatmulBf16)->Apply([](auto* b) { matmul_args(b, 1); });
BENCHMARK(BM_MatmulBf16)->Apply([](auto* b) { matmul_args(b, 2); }) -> UseRealTime();
BENCHMARK(BM_MatmulQ8)
    ->ArgNames({"rows", "cols", "tokens", "isa", "threads", "exact"})
    ->Args({1024, 2048, 64, kBf16, 1, 0});
BENCHMARK(BM_MatmulQ4_K)
    ->ArgNames({"rows", "cols", "tokens", "isa", "threads", "exact"})
    ->Args({1024, 2048, 64, kBf16, 1, 0})
    ->Args({1024, 2048, 64, kBf16, 1, 1});
BENCHMARK(BM_MatmulQ6_K)
    ->ArgNames({"rows", "cols", "tokens", "isa", "threads", "exact"})
    ->Args({1024, 2048, 64, kBf16, 1, 0});

// Decode-like: one matvec over a cold [rows, cols] matrix split by rows across 2 threads.
void matvec_threads_bench(benchmark::State& state, DType dtype) {
  const int64_t rows = state.range(0), cols = state.range(1);
  const int copies = static_cast<int>(kColdBytes / weight_bytes(dtype, rows, cols));
  WeightPool weights(dtype, rows, cols, copies);
  std::vector<float> x(cols, 0.5f), y(rows);
  ThreadPool pool(static_cast<int>(state.range(2)));
  size_t next = 0;
  for (auto _ : state) {
    const Matrix& w = weights.matrices[next];
    pool.parallel_for(rows, [&](int, int64_t begin, int64_t end) {
      matvec(w, x.data(), y.data() + begin, begin, end);
    });
    benchmark::DoNotOptimize(y.data());
    next = next + 1 == weights.matrices.size() ? 0 : next + 1;
  }
  set_counters(state, dtype, rows, cols, 1);
}
void BM_MatvecColdThreadsBf16(benchmark::State& state) {
  matvec_threads_bench(state, DType::BF16);
}
void BM_MatvecColdThreadsQ8(benchmark::State& state) {
  matvec_threads_bench(state, DType::Q8);
}
BENCHMARK(BM_MatvecColdThreadsBf16)
    ->ArgNames({"rows", "cols", "threads"})
    ->Args({1024, 2048, 2})
    ->Args({2048, 1024, 2})
    ->UseRealTime();
BENCHMARK(BM_MatvecColdThreadsQ8)
    ->ArgNames({"rows", "cols", "threads"})
    ->Args({1024, 2048, 2})
    ->Args({2048, 1024, 2})
    ->UseRealTime();

// The cost of starting one parallel loop (2 threads, empty body).
void BM_ParallelForDispatch(benchmark::State& state) {
  ThreadPool pool(static_cast<int>(state.range(0)));
  for (auto _ : state) {
    pool.parallel_for(2, [](int, int64_t, int64_t) {});
  }
}
BENCHMARK(BM_ParallelForDispatch)->Arg(2)->UseRealTime();

}  // namespace
}  // namespace bhmoe::kernels

int main(int argc, char** argv) {
  using namespace bhmoe::kernels;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  std::printf("detected ISA: %s\n", isa_name(detected_isa()));
  for (int threads : {1, 2}) {
    ThreadPool pool(threads);
    std::printf("memory read bandwidth, %d thread(s): %.1f GB/s (huge pages), %.1f GB/s (4 KiB)\n",
                threads, measure_read_bandwidth_gbs(pool, size_t{1} << 30, PageSize::Huge),
                measure_read_bandwidth_gbs(pool, size_t{1} << 30, PageSize::Small));
  }
  if (const char* prefetch = std::getenv("BHMOE_PREFETCH")) {
    detail::avx512::g_matvec_prefetch_bytes = std::atoll(prefetch);
    std::printf("matvec prefetch distance: %lld bytes\n",
                static_cast<long long>(detail::avx512::g_matvec_prefetch_bytes));
  }
  if (const char* rows = std::getenv("BHMOE_MATVEC_ROWS")) {
    detail::avx512::g_matvec_rows_at_once = std::atoll(rows);
    std::printf("matvec rows at once: %s\n", rows);
  }
  if (const char* ahead = std::getenv("BHMOE_MATMUL_PREFETCH")) {
    detail::avx512::g_matmul_prefetch_next = std::atoll(ahead);
    std::printf("matmul prefetch: %s row groups ahead\n", ahead);
  }
  if (const char* block = std::getenv("BHMOE_COL_BLOCK")) {
    detail::avx512::g_bf16_col_block = std::atoll(block);
    std::printf("bf16 matmul column block: %lld\n",
                static_cast<long long>(detail::avx512::g_bf16_col_block));
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
