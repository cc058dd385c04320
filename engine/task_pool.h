// TaskPool: a few long-lived threads that run posted tasks in order of
// posting, for work a worker must keep off its engine thread (decoding and
// resizing the images of a prompt while other requests decode). Unlike
// ParallelFor (parallel.h) it starts its threads once.
//
// Thread-safety: Post may be called from any thread, including from a task;
// Shutdown and the destructor from any thread but the pool's own.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace sirocco::engine {

class TaskPool {
 public:
  // INVALID_ARGUMENT unless 1 <= threads <= 256.
  static absl::StatusOr<std::unique_ptr<TaskPool>> Create(int threads);
  ~TaskPool();  // Shutdown()
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  // Queues `task`; false (task dropped, not run) once shut down.
  bool Post(std::function<void()> task);
  // Drops the tasks not yet started, waits for those running, joins the
  // threads. Idempotent.
  void Shutdown();

 private:
  explicit TaskPool(int threads);
  void Work();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;  // guarded by mu_
  bool shutdown_ = false;                    // guarded by mu_
  std::mutex join_mu_;
  std::vector<std::thread> threads_;  // guarded by join_mu_ after construction
};

}  // namespace sirocco::engine
