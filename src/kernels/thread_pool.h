// A fixed pool of worker threads for data-parallel loops with low dispatch latency (decode issues
// hundreds of small parallel loops per token, so workers spin briefly before sleeping).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

namespace bhmoe::kernels {

class ThreadPool {
 public:
  // num_threads includes the calling thread; 0 means all hardware threads.
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const;

  // Calls fn(thread_index, begin, end) on every thread over a static split of [0, n) into
  // num_threads() contiguous ranges (a thread whose range is empty is not called); returns when all
  // are done. The calling thread takes part. Not reentrant.
  void parallel_for(int64_t n, const std::function<void(int, int64_t, int64_t)>& fn);

  // Calls fn(thread_index) once on every thread and waits.
  void run_on_all(const std::function<void(int)>& fn);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bhmoe::kernels
