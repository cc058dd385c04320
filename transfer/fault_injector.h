// Fault injection for transfer tests (the leveldb Env idea): a test hands the
// same FaultInjector to an agent's options and then makes writes fail, stall
// or lose their peer at a chosen moment. Production passes none.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace sirocco::transfer {

class FaultInjector {
 public:
  // --- Test side ---
  // The n-th write posted from now on (1-based) ends kFailed(INTERNAL) without
  // moving data, as a transport error would. 0 disarms.
  void FailNthWrite(std::int64_t n) { fail_countdown_.store(n); }
  // Every write posted from now on waits `delay` before moving any data.
  void DelayWrites(absl::Duration delay) {
    delay_ns_.store(absl::ToInt64Nanoseconds(delay));
  }
  // Every peer connected at this moment is lost, as if the process on the
  // other side had died: its pending transfers fail with UNAVAILABLE.
  void DropPeers() { drop_generation_.fetch_add(1); }

  // --- Backend side ---
  // Counts a posted write; non-OK for the one chosen by FailNthWrite.
  absl::Status OnPostWrite() {
    std::int64_t left = fail_countdown_.load();
    while (left > 0 && !fail_countdown_.compare_exchange_weak(left, left - 1)) {
    }
    if (left == 1) return absl::InternalError("injected transport failure");
    return absl::OkStatus();
  }
  absl::Duration write_delay() const { return absl::Nanoseconds(delay_ns_.load()); }
  std::uint64_t drop_generation() const { return drop_generation_.load(); }

 private:
  std::atomic<std::int64_t> fail_countdown_{0};
  std::atomic<std::int64_t> delay_ns_{0};
  std::atomic<std::uint64_t> drop_generation_{0};
};

}  // namespace sirocco::transfer
