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
  // are done. The calling thread takes part (as thread_index 0). Not reentrant.
  //
  // Contract: the ranges are [n*i/T, n*(i+1)/T) for thread i of T, so they cover [0, n) exactly
  // once and each thread gets the same range for the same n. Everything fn wrote is visible to the
  // caller on return. An exception thrown by fn never escapes a worker thread: it is caught there,
  // the loop still waits for every thread to finish its range, then the first exception caught is
  // rethrown on the calling thread. Calling parallel_for/run_on_all from inside fn, or from two
  // threads at once, throws bhmoe::Error instead of deadlocking. Dispatch costs ~1 us while workers
  // spin (they spin ~200 us after each loop, then sleep on a condition variable until the next
  // one).
  void parallel_for(int64_t n, const std::function<void(int, int64_t, int64_t)>& fn);

  // Calls fn(thread_index) once on every thread and waits.
  void run_on_all(const std::function<void(int)>& fn);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bhmoe::kernels
