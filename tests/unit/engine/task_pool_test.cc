// TaskPool: tasks run on the pool's own threads, concurrently up to the
// thread count; Shutdown waits for the running ones and drops the rest.
#include "engine/task_pool.h"

#include <atomic>
#include <chrono>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "gtest/gtest.h"

namespace sirocco::engine {
namespace {

using std::chrono::seconds;

TEST(TaskPoolTest, RejectsABadThreadCount) {
  EXPECT_EQ(TaskPool::Create(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TaskPool::Create(257).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TaskPoolTest, RunsEveryTaskOnItsOwnThreadsInParallel) {
  auto pool = TaskPool::Create(3);
  ASSERT_TRUE(pool.ok()) << pool.status();
  // Three tasks that each wait for all three to have started: they finish
  // only if the pool runs them at the same time.
  std::promise<void> all_started;
  std::shared_future<void> go = all_started.get_future().share();
  std::atomic<int> started = 0, finished = 0;
  std::mutex mu;
  std::set<std::thread::id> threads;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE((*pool)->Post([&] {
      {
        std::lock_guard<std::mutex> lock(mu);
        threads.insert(std::this_thread::get_id());
      }
      if (++started == 3) all_started.set_value();
      if (go.wait_for(seconds(30)) == std::future_status::ready) ++finished;
    }));
  }
  ASSERT_EQ(go.wait_for(seconds(30)), std::future_status::ready) << "the tasks did not all run at once";
  (*pool)->Shutdown();  // waits for the three to end
  EXPECT_EQ(finished.load(), 3);
  EXPECT_EQ(threads.size(), 3u);
  EXPECT_FALSE(threads.contains(std::this_thread::get_id()));
}

TEST(TaskPoolTest, ShutdownWaitsForRunningTasksAndDropsQueuedOnes) {
  auto pool = TaskPool::Create(1);
  ASSERT_TRUE(pool.ok());
  std::promise<void> running, release;
  std::atomic<int> ran = 0;
  ASSERT_TRUE((*pool)->Post([&] {
    running.set_value();
    release.get_future().wait();
    ++ran;
  }));
  ASSERT_TRUE((*pool)->Post([&] { ran += 100; }));  // queued behind the first
  running.get_future().wait();
  std::thread stopper([&] { (*pool)->Shutdown(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(ran.load(), 0) << "Shutdown returned before the running task ended";
  release.set_value();
  stopper.join();
  EXPECT_EQ(ran.load(), 1);
  EXPECT_FALSE((*pool)->Post([&] { ran += 1000; }));
  pool->reset();  // the destructor after Shutdown is fine
  EXPECT_EQ(ran.load(), 1);
}

}  // namespace
}  // namespace sirocco::engine
