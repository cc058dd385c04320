// The in-process transfer backend: agents attached to one InProcessFabric
// write into each other's pools with memcpy. Used by tests (both "workers"
// in one process) and by the single-process serving mode.
//
// Each agent runs one copy thread, so PostWrite returns at once and a write
// completes asynchronously, exactly as with UCX; the FaultInjector in the
// options can fail, delay or cut off writes.
//
// Thread-safety: InProcessFabric and the agents are thread-safe (see the
// contract in transfer_agent.h).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transfer/fault_injector.h"
#include "transfer/transfer_agent.h"

namespace sirocco::transfer {

class InProcessTarget;  // an agent's receiving side (in_process_agent.cc)

// The "network" of in-process agents: a directory from agent id to the
// receiving side of a live agent. Agents attach on creation and detach on
// destruction; a descriptor names its fabric so agents of two fabrics
// never reach each other.
class InProcessFabric {
 public:
  InProcessFabric();
  std::uint64_t id() const { return id_; }

  // Backend-internal.
  void Attach(std::uint64_t agent_id, std::shared_ptr<InProcessTarget> target);
  void Detach(std::uint64_t agent_id);
  std::shared_ptr<InProcessTarget> Find(std::uint64_t agent_id) const;

 private:
  const std::uint64_t id_;
  mutable std::mutex mu_;
  std::map<std::uint64_t, std::shared_ptr<InProcessTarget>> targets_;
};

struct InProcessOptions {
  std::shared_ptr<InProcessFabric> fabric;  // required
  std::shared_ptr<FaultInjector> faults;    // optional, tests only
  absl::Duration transfer_timeout = absl::Seconds(30);
};

absl::StatusOr<std::unique_ptr<TransferAgent>> CreateInProcessAgent(
    const InProcessOptions& options);

}  // namespace sirocco::transfer
