#include "kernels/thread_pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "util/error.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace bhmoe::kernels {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

// How long a worker spins for the next loop before sleeping: longer than the gaps between the
// parallel loops of one decode step, short enough not to burn a core while the engine is idle.
constexpr std::chrono::microseconds kSpinTime{200};

}  // namespace

struct ThreadPool::Impl {
  int num_threads = 1;
  std::vector<std::thread> workers;

  // The current loop: workers run task(task_context, index) once per generation. A plain function
  // pointer and context, so starting a loop never allocates.
  using Task = void (*)(const void* context, int index);
  Task task = nullptr;
  const void* task_context = nullptr;
  std::atomic<uint32_t> generation{0};
  std::atomic<int> remaining{0};  // workers that have not finished the current generation
  std::atomic<bool> stopping{false};
  std::atomic<bool> busy{false};

  // Sleeping: a worker announces itself in `sleepers` before checking the generation under `mutex`,
  // and the dispatcher reads `sleepers` after publishing the generation (both seq_cst), so either
  // the worker sees the new generation or the dispatcher sees the sleeper and notifies.
  std::mutex mutex;
  std::condition_variable wake;
  std::atomic<int> sleepers{0};

  std::mutex error_mutex;
  std::exception_ptr error;

  void record_error() {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (!error) error = std::current_exception();
  }

  uint32_t wait_for_generation(uint32_t seen) {
    auto spin_start = std::chrono::steady_clock::now();
    for (uint32_t spins = 1;; ++spins) {
      uint32_t now = generation.load(std::memory_order_acquire);
      if (now != seen) return now;
      cpu_relax();
      if (spins % 64 == 0 && std::chrono::steady_clock::now() - spin_start > kSpinTime) break;
    }
    sleepers.fetch_add(1);
    {
      std::unique_lock<std::mutex> lock(mutex);
      wake.wait(lock, [&] { return generation.load() != seen; });
    }
    sleepers.fetch_sub(1);
    return generation.load(std::memory_order_acquire);
  }

  void worker_main(int index) {
    uint32_t seen = 0;
    for (;;) {
      seen = wait_for_generation(seen);
      if (stopping.load(std::memory_order_acquire)) return;
      try {
        task(task_context, index);
      } catch (...) {
        record_error();
      }
      remaining.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  void publish_generation() {
    generation.fetch_add(1);
    if (sleepers.load() > 0) {
      std::lock_guard<std::mutex> lock(mutex);
      wake.notify_all();
    }
  }

  void run(Task fn, const void* context) {
    if (busy.exchange(true, std::memory_order_acquire)) {
      fail(
          "ThreadPool: parallel loop started while another is running (the pool is not reentrant)");
    }
    if (num_threads == 1) {
      try {
        fn(context, 0);
      } catch (...) {
        busy.store(false, std::memory_order_release);
        throw;
      }
      busy.store(false, std::memory_order_release);
      return;
    }
    task = fn;
    task_context = context;
    remaining.store(num_threads - 1, std::memory_order_relaxed);
    publish_generation();
    try {
      fn(context, 0);
    } catch (...) {
      record_error();
    }
    auto wait_start = std::chrono::steady_clock::now();
    for (uint32_t spins = 1; remaining.load(std::memory_order_acquire) != 0; ++spins) {
      cpu_relax();
      // A worker that was descheduled (the machine is shared) should get the core back.
      if (spins % 64 == 0 && std::chrono::steady_clock::now() - wait_start > kSpinTime) {
        std::this_thread::yield();
      }
    }
    task = nullptr;
    task_context = nullptr;
    std::exception_ptr failure;
    {
      std::lock_guard<std::mutex> lock(error_mutex);
      failure = error;
      error = nullptr;
    }
    busy.store(false, std::memory_order_release);
    if (failure) std::rethrow_exception(failure);
  }
};

ThreadPool::ThreadPool(int num_threads) : impl_(std::make_unique<Impl>()) {
  if (num_threads < 0 || num_threads > kMaxThreads) {
    fail("ThreadPool: thread count ", num_threads, " is outside [0, ", kMaxThreads, "]");
  }
  if (num_threads == 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  if (num_threads <= 0) num_threads = 1;
  impl_->num_threads = num_threads;
  impl_->workers.reserve(num_threads - 1);
  try {
    for (int i = 1; i < num_threads; ++i) {
      impl_->workers.emplace_back([impl = impl_.get(), i] { impl->worker_main(i); });
    }
  } catch (const std::system_error& e) {
    // A thread could not start (a process limit, as Slurm or containers set). The workers already
    // running wait on the pool's state: stop and join them before the pool is destroyed, or they
    // would wait for ever (the destructor does not run for a constructor that throws).
    const size_t started = impl_->workers.size();
    impl_->stopping.store(true, std::memory_order_release);
    impl_->publish_generation();
    for (auto& worker : impl_->workers) worker.join();
    fail("ThreadPool: could not start worker thread ", started + 1, " of ", num_threads - 1, " (",
         e.code().message(), "); use fewer --threads or raise the process limit (ulimit -u)");
  }
}

ThreadPool::~ThreadPool() {
  impl_->stopping.store(true, std::memory_order_release);
  impl_->publish_generation();
  for (auto& worker : impl_->workers) worker.join();
}

int ThreadPool::num_threads() const {
  return impl_->num_threads;
}

void ThreadPool::parallel_for(int64_t n, FunctionRef<void(int, int64_t, int64_t)> fn) {
  struct Loop {
    int64_t n;
    int64_t threads;
    FunctionRef<void(int, int64_t, int64_t)> fn;
  };
  const Loop loop{n, impl_->num_threads, fn};
  impl_->run(
      [](const void* context, int index) {
        const Loop& l = *static_cast<const Loop*>(context);
        int64_t begin = l.n * index / l.threads;
        int64_t end = l.n * (index + 1) / l.threads;
        if (begin < end) l.fn(index, begin, end);
      },
      &loop);
}

void ThreadPool::run_on_all(FunctionRef<void(int)> fn) {
  impl_->run(
      [](const void* context, int index) { (*static_cast<const FunctionRef<void(int)>*>(context))(index); },
      &fn);
}

}  // namespace bhmoe::kernels
