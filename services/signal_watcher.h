// SIGTERM / SIGINT without work in a signal handler: the signals are blocked
// and read from a signalfd on a thread of the watcher's own, which calls a
// plain callback. The usual callback asks the server to drain and stop
// (Server::RequestShutdown) on the first signal; what a second one does
// (e.g. exit at once) is main's choice.
//
// Start() blocks the signals in the calling thread, and threads inherit the
// mask, so call it in main() before anything starts a thread (gRPC, the
// engine); a thread started earlier would still take the default action
// (terminate) for a signal sent to the process.
//
// Thread-safety: Start and the destructor from main's thread. The callback
// runs on the watcher's thread, one signal at a time, and must not block for
// long (it delays the next signal) nor destroy the watcher.
#pragma once

#include <functional>
#include <memory>
#include <thread>

#include <signal.h>

#include "absl/status/statusor.h"

namespace sirocco::services {

class SignalWatcher {
 public:
  // `signal` is SIGTERM or SIGINT; `count` is how many of either have
  // arrived so far, this one included (1 for the first).
  using Callback = std::function<void(int signal, int count)>;

  [[nodiscard]] static absl::StatusOr<std::unique_ptr<SignalWatcher>> Start(Callback on_signal);
  // Stops the thread and restores the calling thread's signal mask. Signals
  // that arrive afterwards get their default action again.
  ~SignalWatcher();
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

 private:
  SignalWatcher(Callback on_signal, sigset_t old_mask, int signal_fd, int stop_fd);
  void Run();

  const Callback on_signal_;
  const sigset_t old_mask_;
  const int signal_fd_;
  const int stop_fd_;  // an eventfd: written by the destructor to end Run()
  std::thread thread_;
};

}  // namespace sirocco::services
