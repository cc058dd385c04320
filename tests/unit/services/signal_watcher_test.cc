// SignalWatcher with real signals sent to this process. A binary of its own:
// a process-directed SIGTERM is safe only while every thread blocks it, and
// this binary starts no thread except the watcher's.
#include "services/signal_watcher.h"

#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace sirocco::services {
namespace {

struct Seen {
  absl::Mutex mu;
  std::vector<std::pair<int, int>> calls ABSL_GUARDED_BY(mu);  // (signal, count)

  bool WaitFor(std::size_t n) {
    absl::MutexLock lock(&mu);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return calls.size() >= n; };
    return mu.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
  }
};

TEST(SignalWatcherTest, CallsBackForEachSignalWithARunningCount) {
  Seen seen;
  auto watcher = SignalWatcher::Start([&seen](int signal, int count) {
    absl::MutexLock lock(&seen.mu);
    seen.calls.emplace_back(signal, count);
  });
  ASSERT_TRUE(watcher.ok()) << watcher.status();

  ASSERT_EQ(kill(getpid(), SIGTERM), 0);
  ASSERT_TRUE(seen.WaitFor(1));
  ASSERT_EQ(kill(getpid(), SIGINT), 0);
  ASSERT_TRUE(seen.WaitFor(2));

  absl::MutexLock lock(&seen.mu);
  ASSERT_EQ(seen.calls.size(), 2u);
  EXPECT_EQ(seen.calls[0], std::make_pair(SIGTERM, 1));
  EXPECT_EQ(seen.calls[1], std::make_pair(SIGINT, 2));
}

TEST(SignalWatcherTest, StopsCleanlyAndRestoresTheMask) {
  sigset_t before;
  ASSERT_EQ(pthread_sigmask(SIG_SETMASK, nullptr, &before), 0);
  ASSERT_EQ(sigismember(&before, SIGTERM), 0);
  {
    auto watcher = SignalWatcher::Start([](int, int) {});
    ASSERT_TRUE(watcher.ok()) << watcher.status();
    sigset_t during;
    ASSERT_EQ(pthread_sigmask(SIG_SETMASK, nullptr, &during), 0);
    EXPECT_EQ(sigismember(&during, SIGTERM), 1);
    EXPECT_EQ(sigismember(&during, SIGINT), 1);
  }  // destructor joins the thread without any signal
  sigset_t after;
  ASSERT_EQ(pthread_sigmask(SIG_SETMASK, nullptr, &after), 0);
  EXPECT_EQ(sigismember(&after, SIGTERM), 0);
}

TEST(SignalWatcherTest, NeedsACallback) {
  EXPECT_EQ(SignalWatcher::Start(nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sirocco::services
