// KV-cache transfer between workers: the interface every backend implements.
//
// One TransferAgent per worker. The flow follows NIXL:
//   receiver: RegisterPool → LocalDescriptor → (descriptor bytes travel over
//             gRPC) → CompletedWrites() tells it which writes have landed;
//   sender:   RegisterPool → Connect(local pool, descriptor) → PostWrite
//             (non-blocking) → Poll / Flush → Release.
// A write names regions, (layer, block) pairs that both ends resolve through
// their own KvLayout: "layer L of blocks [a...] here into blocks [b...] there".
//
// Completion semantics (all backends): a transfer is kDone only once its
// bytes are visible in the target pool AND the target agent has recorded a
// WriteNotice for it. A peer that goes away, a transfer that outlives its
// timeout, or a cancel ends the transfer in kFailed; nothing waits forever.
//
// Threading contract
// * Every method is thread-safe.
// * No method waits on the network except Connect (bounded by the backend's
//   connect timeout) and Flush (bounded by its deadline). PostWrite, Poll,
//   Cancel, Release and CompletedWrites return promptly, so an engine thread
//   may call them between steps.
// * Each agent runs one internal progress thread. It alone touches the
//   transport and it drives both directions, so a receiver never has to call
//   anything for incoming writes to land; a decode engine thread only drains
//   CompletedWrites() when convenient and never blocks on transfers.
// * Pools are the caller's memory. A pool must stay allocated while it is
//   registered; a sender's pool regions are read asynchronously until the
//   transfer is terminal, and a receiver's regions change under it until it
//   sees the WriteNotice (the engine must not read reserved blocks earlier).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transfer/descriptor.h"
#include "transfer/kv_layout.h"

namespace sirocco::transfer {

// Distinct handle types; 0 is never a valid handle.
struct PoolHandle {
  std::uint64_t value = 0;
  friend bool operator==(PoolHandle, PoolHandle) = default;
};
struct PeerHandle {
  std::uint64_t value = 0;
  friend bool operator==(PeerHandle, PeerHandle) = default;
};
struct TransferId {
  std::uint64_t value = 0;
  friend bool operator==(TransferId, TransferId) = default;
};

// A region of the sender's own pool and of the peer's pool: one
// (layer, block), block_bytes() bytes. Distinct types so they cannot swap.
struct Region {
  std::uint32_t layer = 0;
  std::uint32_t block = 0;
};
struct RemoteRegion {
  std::uint32_t layer = 0;
  std::uint32_t block = 0;
};

// The regions of `layer` for `blocks`, in order: the usual per-layer post.
std::vector<Region> LayerRegions(std::uint32_t layer, std::span<const std::int32_t> blocks);
std::vector<RemoteRegion> RemoteLayerRegions(std::uint32_t layer,
                                             std::span<const std::int32_t> blocks);

struct TransferState {
  enum class Kind { kPending, kDone, kFailed };
  Kind kind = Kind::kPending;
  absl::Status status;  // OK unless kind == kFailed

  static TransferState Pending() { return {Kind::kPending, absl::OkStatus()}; }
  static TransferState Done() { return {Kind::kDone, absl::OkStatus()}; }
  static TransferState Failed(absl::Status s) { return {Kind::kFailed, std::move(s)}; }
  bool pending() const { return kind == Kind::kPending; }
  bool done() const { return kind == Kind::kDone; }
  bool failed() const { return kind == Kind::kFailed; }
};

// What a backend can do. one_sided: data lands without the receiver's CPU
// taking part (RMA). device_memory: pools may live in GPU memory.
struct Capabilities {
  bool one_sided = false;
  bool device_memory = false;
};

// How the UCX backend moves bytes to one peer (see ucx_agent.h for kAuto).
enum class TransportMode { kAuto, kRma, kMessages };
const char* TransportModeName(TransportMode mode);

struct PeerInfo {
  TransportMode mode = TransportMode::kAuto;  // resolved: kRma or kMessages
  std::string transport;                      // e.g. "memcpy", "rma:cma", "am:tcp"
  std::uint64_t remote_agent_id = 0;
  std::string remote_address;
};

struct WriteOptions {
  // Copied into the target's WriteNotice (e.g. the request id).
  std::uint64_t tag = 0;
  // Fails the transfer with DEADLINE_EXCEEDED once exceeded; zero means the
  // backend's default transfer timeout.
  absl::Duration timeout = absl::ZeroDuration();
};

// A pool whose memory the agent allocated (see TransferAgent::AllocatePool).
struct AllocatedPool {
  PoolHandle handle;
  void* base = nullptr;  // 64-byte aligned; owned by the agent
  std::size_t bytes = 0;
};

// Recorded at the target once a write's bytes are in its pool.
struct WriteNotice {
  std::uint64_t sender_agent_id = 0;
  TransferId transfer;  // the sender's id for the write
  PoolHandle pool;      // the target's pool that was written
  std::uint64_t tag = 0;
  std::uint64_t bytes = 0;
  std::uint32_t regions = 0;
};

class TransferAgent {
 public:
  virtual ~TransferAgent() = default;

  virtual BackendKind backend() const = 0;
  virtual Capabilities capabilities() const = 0;
  // Random, unique per agent instance; appears in descriptors and notices.
  virtual std::uint64_t agent_id() const = 0;

  // Registers `bytes` bytes at `base` laid out as `layout` (bytes must be at
  // least layout.pool_bytes()). The memory stays the caller's.
  [[nodiscard]] virtual absl::StatusOr<PoolHandle> RegisterPool(void* base, std::size_t bytes,
                                                                const KvLayout& layout) = 0;
  // Allocates and registers a pool the agent owns; the memory lives until
  // UnregisterPool or the agent's destruction. Prefer it to RegisterPool
  // where the engine can place its KV cache in it: UCX then allocates shared
  // memory that same-host senders map, so their puts are native instead of
  // emulated (see ucx/lanes.h).
  [[nodiscard]] virtual absl::StatusOr<AllocatedPool> AllocatePool(const KvLayout& layout) = 0;
  // Refused (FAILED_PRECONDITION) while a connected peer writes from it.
  // Remote writers must be told first: RMA puts bypass this agent.
  [[nodiscard]] virtual absl::Status UnregisterPool(PoolHandle pool) = 0;
  [[nodiscard]] virtual absl::StatusOr<TargetDescriptor> LocalDescriptor(PoolHandle pool) const = 0;

  // Connects `local_pool` (the source of later writes) to the pool a
  // descriptor describes. FAILED_PRECONDITION with "KV layout mismatch: ..."
  // when the layouts disagree (checked here and again by the target),
  // INVALID_ARGUMENT for a descriptor of another backend, UNAVAILABLE or
  // DEADLINE_EXCEEDED when the target cannot be reached.
  [[nodiscard]] virtual absl::StatusOr<PeerHandle> Connect(PoolHandle local_pool,
                                                           const TargetDescriptor& target) = 0;
  [[nodiscard]] virtual absl::StatusOr<PeerInfo> GetPeerInfo(PeerHandle peer) const = 0;

  // Starts writing local_regions[i] into remote[i] for every i. Adjacent
  // regions are coalesced. INVALID_ARGUMENT (naming the index) for sizes that
  // differ, an empty list, a region out of range or a remote region listed
  // twice; UNAVAILABLE for a lost or released peer. Never waits.
  [[nodiscard]] virtual absl::StatusOr<TransferId> PostWrite(
      PeerHandle peer, std::span<const Region> local_regions,
      std::span<const RemoteRegion> remote, const WriteOptions& options) = 0;
  [[nodiscard]] absl::StatusOr<TransferId> PostWrite(PeerHandle peer,
                                                     std::span<const Region> local_regions,
                                                     std::span<const RemoteRegion> remote) {
    return PostWrite(peer, local_regions, remote, WriteOptions{});
  }

  // The state of a transfer. A terminal state (kDone/kFailed) is reported
  // once and the record is then dropped; later polls, like polls of an
  // unknown id, return kFailed(NOT_FOUND).
  virtual TransferState Poll(TransferId id) = 0;

  // Waits until every transfer posted to `peer` so far is terminal, or until
  // `deadline` (DEADLINE_EXCEEDED). OK when all of them (cancelled ones
  // aside) are kDone: their bytes are then visible at the target. Otherwise
  // the first failure. Does not consume the states Poll reports.
  [[nodiscard]] virtual absl::Status Flush(PeerHandle peer, absl::Time deadline) = 0;

  // Ends a pending transfer as kFailed(CANCELLED) and stops issuing its
  // remaining operations. Bytes already issued may still land in the target
  // pool, but the target records no WriteNotice once the cancel reached it
  // first. FAILED_PRECONDITION when the transfer already ended.
  [[nodiscard]] virtual absl::Status Cancel(TransferId id) = 0;

  // Drops the peer: pending transfers end as kFailed(CANCELLED) and their
  // records are dropped; the connection closes in the background.
  [[nodiscard]] virtual absl::Status Release(PeerHandle peer) = 0;

  // Receiver side: notices of writes that landed in this agent's pools since
  // the last call, in arrival order. Never waits.
  virtual std::vector<WriteNotice> CompletedWrites() = 0;
};

}  // namespace sirocco::transfer
