// A fixed pool of worker threads for data-parallel loops with low dispatch latency (decode issues
// hundreds of small parallel loops per token, so workers spin briefly before sleeping).
#pragma once

#include <cstdint>
#include <memory>
#include <type_traits>
#include <utility>

namespace bhmoe::kernels {

// A non-owning reference to a callable: two words, never allocates, so a parallel loop body can be
// a lambda capturing [&] whatever it needs. The callable must outlive the reference (a loop body
// passed straight to parallel_for does) and is called as const.
template <typename Signature>
class FunctionRef;

template <typename R, typename... Args>
class FunctionRef<R(Args...)> {
 public:
  template <typename F>
    requires(!std::is_same_v<std::remove_cvref_t<F>, FunctionRef> &&
             std::is_invocable_r_v<R, const std::remove_reference_t<F>&, Args...>)
  FunctionRef(F&& f) noexcept  // NOLINT(google-explicit-constructor): binds like a function arg
      : object_(static_cast<const void*>(std::addressof(f))),
        call_([](const void* object, Args... args) -> R {
          return (*static_cast<const std::remove_reference_t<F>*>(object))(
              std::forward<Args>(args)...);
        }) {}

  R operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  const void* object_;
  R (*call_)(const void*, Args...);
};

// The most threads a pool takes: far beyond any core count this code runs on, low enough that a
// typo (--threads 100000) is an error instead of a process starting that many threads.
inline constexpr int kMaxThreads = 1024;

class ThreadPool {
 public:
  // num_threads includes the calling thread; 0 means all hardware threads. Outside
  // [0, kMaxThreads] it is a bhmoe::Error.
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
  void parallel_for(int64_t n, FunctionRef<void(int, int64_t, int64_t)> fn);

  // Calls fn(thread_index) once on every thread and waits.
  void run_on_all(FunctionRef<void(int)> fn);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bhmoe::kernels
