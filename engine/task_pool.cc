#include "engine/task_pool.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace sirocco::engine {

absl::StatusOr<std::unique_ptr<TaskPool>> TaskPool::Create(int threads) {
  if (threads < 1 || threads > 256) {
    return absl::InvalidArgumentError(absl::StrCat("TaskPool: threads must be in [1, 256], got ", threads));
  }
  return std::unique_ptr<TaskPool>(new TaskPool(threads));
}

TaskPool::TaskPool(int threads) {
  threads_.reserve(static_cast<std::size_t>(threads));
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
}

TaskPool::~TaskPool() { Shutdown(); }

bool TaskPool::Post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_) return false;
    tasks_.push_back(std::move(task));
  }
  cv_.notify_one();
  return true;
}

void TaskPool::Shutdown() {
  std::deque<std::function<void()>> dropped;  // destroyed outside the lock
  {
    std::lock_guard<std::mutex> lock(mu_);
    shutdown_ = true;
    dropped.swap(tasks_);
  }
  cv_.notify_all();
  std::lock_guard<std::mutex> lock(join_mu_);
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

void TaskPool::Work() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return shutdown_ || !tasks_.empty(); });
      if (shutdown_) return;
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

}  // namespace sirocco::engine
