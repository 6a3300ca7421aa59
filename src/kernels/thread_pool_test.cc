// ThreadPool: range coverage, every thread used, exceptions carried to the caller, no reentrancy,
// memory visibility across many loops, waking from sleep, clean shutdown.
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "kernels/bandwidth.h"
#include "kernels/thread_pool.h"
#include "util/error.h"

namespace bhmoe::kernels {
namespace {

TEST(ThreadPool, RangesCoverEveryIndexExactlyOnce) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.num_threads(), threads);
    for (int64_t n : {0, 1, 2, 3, 4, 7, 64, 1001}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::mutex mutex;
      std::set<int> indices;
      std::atomic<int> calls{0};
      pool.parallel_for(n, [&](int index, int64_t begin, int64_t end) {
        EXPECT_LT(begin, end) << "empty ranges are not called";
        EXPECT_EQ(begin, n * index / threads);
        EXPECT_EQ(end, n * (index + 1) / threads);
        {
          std::lock_guard<std::mutex> lock(mutex);
          EXPECT_TRUE(indices.insert(index).second) << "one call per thread";
        }
        for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
        calls.fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i) EXPECT_EQ(hits[i].load(), 1) << "index " << i;
      EXPECT_EQ(calls.load(), std::min<int64_t>(n, threads));
    }
  }
}

TEST(ThreadPool, RunOnAllUsesDistinctThreads) {
  ThreadPool pool(3);
  std::mutex mutex;
  std::set<std::thread::id> ids;
  std::set<int> indices;
  pool.run_on_all([&](int index) {
    std::lock_guard<std::mutex> lock(mutex);
    ids.insert(std::this_thread::get_id());
    indices.insert(index);
  });
  EXPECT_EQ(ids.size(), 3u);
  EXPECT_EQ(indices, (std::set<int>{0, 1, 2}));
  EXPECT_TRUE(ids.count(std::this_thread::get_id())) << "the caller takes part";
}

TEST(ThreadPool, DefaultUsesAllHardwareThreads) {
  ThreadPool pool;
  EXPECT_EQ(pool.num_threads(),
            static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  EXPECT_THROW(ThreadPool(-1), Error);
}

TEST(ThreadPool, ExceptionsReachTheCallerAndThePoolStaysUsable) {
  ThreadPool pool(2);
  for (int thrower : {0, 1}) {
    std::atomic<int> finished{0};
    try {
      pool.parallel_for(10, [&](int index, int64_t, int64_t) {
        if (index == thrower) throw std::runtime_error("boom " + std::to_string(index));
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        finished.fetch_add(1);
      });
      FAIL() << "expected an exception";
    } catch (const std::runtime_error& e) {
      EXPECT_EQ(std::string(e.what()), "boom " + std::to_string(thrower));
    }
    EXPECT_EQ(finished.load(), 1) << "the other thread's range still ran to completion";
  }
  std::atomic<int64_t> sum{0};
  pool.parallel_for(100, [&](int, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) sum += i;
  });
  EXPECT_EQ(sum.load(), 4950);
  ThreadPool single(1);
  EXPECT_THROW(single.parallel_for(3, [](int, int64_t, int64_t) { throw std::logic_error("x"); }),
               std::logic_error);
  single.parallel_for(1, [](int, int64_t, int64_t) {});
}

TEST(ThreadPool, NestedLoopsThrowInsteadOfDeadlocking) {
  for (int threads : {1, 2}) {
    ThreadPool pool(threads);
    EXPECT_THROW(
        pool.parallel_for(
            4, [&](int, int64_t, int64_t) { pool.parallel_for(2, [](int, int64_t, int64_t) {}); }),
        Error);
    int calls = 0;
    pool.run_on_all([&](int index) {
      if (index == 0) ++calls;
    });
    EXPECT_EQ(calls, 1);
  }
}

TEST(ThreadPool, ManyLoopsSeeEachOthersWrites) {
  // Plain (non-atomic) writes in one loop must be visible to every thread in the next.
  ThreadPool pool(2);
  std::vector<int64_t> data(1000, 0);
  for (int round = 0; round < 500; ++round) {
    pool.parallel_for(static_cast<int64_t>(data.size()), [&](int, int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) data[i] += 1;
    });
    // Reverse the split so each element is written by the other thread next time.
    const int64_t n = static_cast<int64_t>(data.size());
    pool.parallel_for(n, [&](int, int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) data[n - 1 - i] += 1;
    });
  }
  for (int64_t v : data) ASSERT_EQ(v, 1000);
}

TEST(ThreadPool, WakesSleepingWorkers) {
  ThreadPool pool(2);
  for (int round = 0; round < 5; ++round) {
    // Longer than the spin time, so the worker has gone to sleep.
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    std::atomic<int> calls{0};
    pool.run_on_all([&](int) { calls.fetch_add(1); });
    EXPECT_EQ(calls.load(), 2);
  }
}

TEST(ThreadPool, ConstructAndDestroyRepeatedly) {
  for (int i = 0; i < 50; ++i) {
    ThreadPool pool(1 + i % 4);
    if (i % 2) pool.parallel_for(8, [](int, int64_t, int64_t) {});
  }
}

TEST(Bandwidth, MeasuresAPlausibleFigure) {
  ThreadPool pool(2);
  for (PageSize pages : {PageSize::Huge, PageSize::Small}) {
    double gbs = measure_read_bandwidth_gbs(pool, 16 << 20, pages);
    EXPECT_GT(gbs, 0.1);
    EXPECT_LT(gbs, 100000.0);
  }
}

// Under a process limit a worker thread cannot start: the constructor must fail with a clear
// error, not leave started workers waiting on a destroyed pool (which hung). The child drops to an
// unprivileged user (root ignores RLIMIT_NPROC) with a limit of 0 processes, so no thread starts.
TEST(ThreadPool, AFailedThreadStartIsAClearErrorNotAHang) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a child as an unprivileged user";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    alarm(30);  // a hang becomes SIGALRM, which the parent sees
    if (setgid(65534) != 0 || setuid(65534) != 0) _exit(3);
    const rlimit none{0, 0};
    if (setrlimit(RLIMIT_NPROC, &none) != 0) _exit(4);
    try {
      ThreadPool pool(4);
      _exit(5);  // threads started despite the limit: the test could not see the failure
    } catch (const Error& e) {
      _exit(std::string(e.what()).find("could not start worker thread 1 of 3") != std::string::npos ? 0 : 6);
    }
    _exit(7);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "the child hung or crashed (signal " << WTERMSIG(status) << ")";
  // 3, 4: this container does not let root drop privileges or set the limit; 5: threads started
  // anyway (no limit enforced). Either way the failure cannot be provoked here.
  if (WEXITSTATUS(status) >= 3 && WEXITSTATUS(status) <= 5) {
    GTEST_SKIP() << "cannot provoke a failed thread start here (child status " << WEXITSTATUS(status) << ")";
  }
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace bhmoe::kernels
