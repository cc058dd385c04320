#include "services/signal_watcher.h"

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"

namespace sirocco::services {
namespace {

absl::Status ErrnoError(const char* what, int err) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<SignalWatcher>> SignalWatcher::Start(Callback on_signal) {
  if (!on_signal) return absl::InvalidArgumentError("SignalWatcher::Start: on_signal must be set");
  sigset_t watched;
  sigemptyset(&watched);
  sigaddset(&watched, SIGTERM);
  sigaddset(&watched, SIGINT);
  sigset_t old_mask;
  if (int err = pthread_sigmask(SIG_BLOCK, &watched, &old_mask); err != 0) {
    return ErrnoError("pthread_sigmask", err);
  }
  const int signal_fd = signalfd(-1, &watched, SFD_CLOEXEC);
  if (signal_fd < 0) {
    const int err = errno;
    pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    return ErrnoError("signalfd", err);
  }
  const int stop_fd = eventfd(0, EFD_CLOEXEC);
  if (stop_fd < 0) {
    const int err = errno;
    close(signal_fd);
    pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
    return ErrnoError("eventfd", err);
  }
  std::unique_ptr<SignalWatcher> watcher(new SignalWatcher(std::move(on_signal), old_mask, signal_fd, stop_fd));
  watcher->thread_ = std::thread([w = watcher.get()] { w->Run(); });
  return watcher;
}

SignalWatcher::SignalWatcher(Callback on_signal, sigset_t old_mask, int signal_fd, int stop_fd)
    : on_signal_(std::move(on_signal)), old_mask_(old_mask), signal_fd_(signal_fd), stop_fd_(stop_fd) {}

SignalWatcher::~SignalWatcher() {
  const std::uint64_t one = 1;
  // An eventfd write of 8 bytes cannot be short; it fails only on overflow.
  [[maybe_unused]] ssize_t written = write(stop_fd_, &one, sizeof(one));
  thread_.join();
  close(signal_fd_);
  close(stop_fd_);
  pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
}

void SignalWatcher::Run() {
  int count = 0;
  pollfd fds[2] = {{signal_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
  while (true) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;  // cannot happen with valid fds; stop watching rather than spin
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    signalfd_siginfo info;
    const ssize_t n = read(signal_fd_, &info, sizeof(info));
    if (n != static_cast<ssize_t>(sizeof(info))) continue;
    on_signal_(static_cast<int>(info.ssi_signo), ++count);
  }
}

}  // namespace sirocco::services
