#include "transfer/in_process_agent.h"

#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <shared_mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "transfer/random_id.h"
#include "transfer/write_plan.h"

namespace sirocco::transfer {

// The receiving side of one agent. Senders copy into its pools while holding
// `mu` shared; the owning agent takes it exclusively to change the pool table
// or to die, so a pool never disappears under a copy in progress.
class InProcessTarget {
 public:
  struct Pool {
    char* base = nullptr;
    std::size_t bytes = 0;
    KvLayout layout;
  };

  std::shared_mutex mu;
  bool alive = true;                      // guarded by mu
  std::map<std::uint64_t, Pool> pools;    // guarded by mu

  void Deliver(const WriteNotice& notice) {
    std::lock_guard<std::mutex> lock(notices_mu_);
    notices_.push_back(notice);
  }
  std::vector<WriteNotice> TakeNotices() {
    std::lock_guard<std::mutex> lock(notices_mu_);
    return std::exchange(notices_, {});
  }

 private:
  std::mutex notices_mu_;
  std::vector<WriteNotice> notices_;
};

InProcessFabric::InProcessFabric() : id_(NewRandomId()) {}

void InProcessFabric::Attach(std::uint64_t agent_id, std::shared_ptr<InProcessTarget> target) {
  std::lock_guard<std::mutex> lock(mu_);
  targets_[agent_id] = std::move(target);
}

void InProcessFabric::Detach(std::uint64_t agent_id) {
  std::lock_guard<std::mutex> lock(mu_);
  targets_.erase(agent_id);
}

std::shared_ptr<InProcessTarget> InProcessFabric::Find(std::uint64_t agent_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = targets_.find(agent_id);
  return it == targets_.end() ? nullptr : it->second;
}

namespace {

class InProcessAgent final : public TransferAgent {
 public:
  explicit InProcessAgent(const InProcessOptions& options)
      : options_(options),
        id_(NewRandomId()),
        address_(absl::StrCat("inproc:", options.fabric->id())),
        target_(std::make_shared<InProcessTarget>()) {
    options_.fabric->Attach(id_, target_);
    thread_ = std::thread([this] { CopyLoop(); });
  }

  ~InProcessAgent() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    work_cv_.notify_all();
    thread_.join();
    options_.fabric->Detach(id_);
    std::unique_lock<std::shared_mutex> lock(target_->mu);  // waits for copies into us
    target_->alive = false;
  }

  BackendKind backend() const override { return BackendKind::kInProcess; }
  Capabilities capabilities() const override { return {.one_sided = true, .device_memory = false}; }
  std::uint64_t agent_id() const override { return id_; }

  absl::StatusOr<PoolHandle> RegisterPool(void* base, std::size_t bytes,
                                          const KvLayout& layout) override {
    if (absl::Status s = layout.Validate(); !s.ok()) return s;
    if (base == nullptr) return absl::InvalidArgumentError("RegisterPool: base is null");
    if (bytes < layout.pool_bytes()) {
      return absl::InvalidArgumentError(absl::StrCat("RegisterPool: ", bytes,
                                                     " bytes is less than the layout's ",
                                                     layout.pool_bytes()));
    }
    std::unique_lock<std::shared_mutex> lock(target_->mu);
    const std::uint64_t id = next_pool_++;
    target_->pools[id] = {static_cast<char*>(base), bytes, layout};
    return PoolHandle{id};
  }

  absl::StatusOr<AllocatedPool> AllocatePool(const KvLayout& layout) override {
    if (absl::Status s = layout.Validate(); !s.ok()) return s;
    const std::size_t bytes = (layout.pool_bytes() + 63) / 64 * 64;
    std::unique_ptr<void, decltype(&std::free)> memory(std::aligned_alloc(64, bytes), &std::free);
    if (memory == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate a ", bytes, " byte pool"));
    }
    absl::StatusOr<PoolHandle> handle = RegisterPool(memory.get(), bytes, layout);
    if (!handle.ok()) return handle.status();
    void* base = memory.get();
    std::lock_guard<std::mutex> lock(mu_);
    owned_.emplace(handle->value, std::move(memory));
    return AllocatedPool{*handle, base, bytes};
  }

  absl::Status UnregisterPool(PoolHandle pool) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [peer_id, peer] : peers_) {
        if (peer.local_pool == pool.value) {
          return absl::FailedPreconditionError(absl::StrCat(
              "pool ", pool.value, " is the source of connected peer ", peer_id));
        }
      }
    }
    {
      std::unique_lock<std::shared_mutex> lock(target_->mu);  // waits for copies into it
      if (target_->pools.erase(pool.value) == 0) return PoolNotFound(pool);
    }
    std::lock_guard<std::mutex> lock(mu_);
    owned_.erase(pool.value);
    return absl::OkStatus();
  }

  absl::StatusOr<TargetDescriptor> LocalDescriptor(PoolHandle pool) const override {
    std::shared_lock<std::shared_mutex> lock(target_->mu);
    auto it = target_->pools.find(pool.value);
    if (it == target_->pools.end()) return PoolNotFound(pool);
    TargetDescriptor d;
    d.backend = BackendKind::kInProcess;
    d.agent_id = id_;
    d.pool_id = pool.value;
    d.address = address_;
    d.base_address = reinterpret_cast<std::uintptr_t>(it->second.base);
    d.pool_bytes = it->second.bytes;
    d.layout = it->second.layout;
    return d;
  }

  absl::StatusOr<PeerHandle> Connect(PoolHandle local_pool,
                                     const TargetDescriptor& target) override {
    if (target.backend != BackendKind::kInProcess) {
      return absl::InvalidArgumentError(absl::StrCat("descriptor is for the ",
                                                     BackendName(target.backend),
                                                     " backend, this agent is in-process"));
    }
    if (target.address != address_) {
      return absl::InvalidArgumentError(absl::StrCat("descriptor names fabric '", target.address,
                                                     "', this agent is on '", address_, "'"));
    }
    Peer peer;
    {
      std::shared_lock<std::shared_mutex> lock(target_->mu);
      auto it = target_->pools.find(local_pool.value);
      if (it == target_->pools.end()) return PoolNotFound(local_pool);
      if (absl::Status s = CheckCompatible(it->second.layout, target.layout); !s.ok()) return s;
      peer.local_base = it->second.base;
      peer.local_layout = it->second.layout;
    }
    peer.target = options_.fabric->Find(target.agent_id);
    if (peer.target == nullptr) {
      return absl::UnavailableError(absl::StrCat("in-process agent ", target.agent_id,
                                                 " is gone"));
    }
    {
      // The target's own check: its pool must still be what the descriptor says.
      std::shared_lock<std::shared_mutex> lock(peer.target->mu);
      auto it = peer.target->pools.find(target.pool_id);
      if (!peer.target->alive || it == peer.target->pools.end()) {
        return absl::UnavailableError(absl::StrCat("pool ", target.pool_id, " of agent ",
                                                   target.agent_id, " is not registered"));
      }
      if (absl::Status s = CheckCompatible(it->second.layout, peer.local_layout); !s.ok()) {
        return absl::FailedPreconditionError(absl::StrCat("target refused: ", s.message()));
      }
    }
    peer.local_pool = local_pool.value;
    peer.remote = target;
    peer.drop_generation = options_.faults ? options_.faults->drop_generation() : 0;
    std::lock_guard<std::mutex> lock(mu_);
    const std::uint64_t id = next_peer_++;
    peers_.emplace(id, std::move(peer));
    return PeerHandle{id};
  }

  absl::StatusOr<PeerInfo> GetPeerInfo(PeerHandle peer) const override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(peer.value);
    if (it == peers_.end()) return PeerNotFound(peer);
    return PeerInfo{TransportMode::kRma, "memcpy", it->second.remote.agent_id,
                    it->second.remote.address};
  }

  absl::StatusOr<TransferId> PostWrite(PeerHandle peer_handle,
                                       std::span<const Region> local_regions,
                                       std::span<const RemoteRegion> remote,
                                       const WriteOptions& options) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(peer_handle.value);
    if (it == peers_.end()) return PeerNotFound(peer_handle);
    Peer& peer = it->second;
    CheckInjectedDrop(peer);
    if (!peer.lost.ok()) return peer.lost;
    absl::StatusOr<WritePlan> plan =
        PlanWrite(peer.local_layout, local_regions, peer.remote.layout, remote, 0);
    if (!plan.ok()) return plan.status();

    const std::uint64_t id = next_transfer_++;
    Transfer& t = transfers_[id];
    t.peer = peer_handle.value;
    t.plan = *std::move(plan);
    t.tag = options.tag;
    const absl::Time now = absl::Now();
    t.deadline = now + (options.timeout > absl::ZeroDuration() ? options.timeout
                                                                : options_.transfer_timeout);
    t.ready_at = now;
    if (options_.faults) {
      t.ready_at += options_.faults->write_delay();
      if (absl::Status s = options_.faults->OnPostWrite(); !s.ok()) {
        t.state = TransferState::Failed(std::move(s));
        return TransferId{id};
      }
    }
    queue_.push_back(id);
    work_cv_.notify_all();
    return TransferId{id};
  }

  TransferState Poll(TransferId id) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = transfers_.find(id.value);
    if (it == transfers_.end()) return UnknownTransfer(id);
    TransferState state = it->second.state;
    if (!state.pending()) transfers_.erase(it);
    return state;
  }

  absl::Status Flush(PeerHandle peer, absl::Time deadline) override {
    std::unique_lock<std::mutex> lock(mu_);
    if (!peers_.contains(peer.value)) return PeerNotFound(peer);
    std::vector<std::uint64_t> watched;
    for (const auto& [id, t] : transfers_) {
      if (t.peer == peer.value) watched.push_back(id);
    }
    for (;;) {
      bool pending = false;
      for (std::uint64_t id : watched) {
        auto it = transfers_.find(id);
        if (it == transfers_.end()) continue;  // reported by Poll meanwhile
        if (it->second.state.pending()) {
          pending = true;
        } else if (it->second.state.failed() && !it->second.cancelled) {
          return absl::Status(it->second.state.status.code(),
                              absl::StrCat("transfer ", id, ": ",
                                           it->second.state.status.message()));
        }
      }
      if (!pending) return absl::OkStatus();
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError("Flush: transfers still pending at the deadline");
      }
      done_cv_.wait_until(lock, absl::ToChronoTime(deadline));
    }
  }

  absl::Status Cancel(TransferId id) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = transfers_.find(id.value);
    if (it == transfers_.end()) return absl::NotFoundError(UnknownTransfer(id).status.message());
    if (!it->second.state.pending()) {
      return absl::FailedPreconditionError(absl::StrCat("transfer ", id.value, " already ended"));
    }
    it->second.cancelled = true;
    it->second.state = TransferState::Failed(
        absl::CancelledError(absl::StrCat("transfer ", id.value, " cancelled")));
    done_cv_.notify_all();
    return absl::OkStatus();
  }

  absl::Status Release(PeerHandle peer) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (peers_.erase(peer.value) == 0) return PeerNotFound(peer);
    for (auto it = transfers_.begin(); it != transfers_.end();) {
      if (it->second.peer == peer.value) {
        it->second.cancelled = true;  // a copy in progress then skips its notice
        it = transfers_.erase(it);
      } else {
        ++it;
      }
    }
    done_cv_.notify_all();
    return absl::OkStatus();
  }

  std::vector<WriteNotice> CompletedWrites() override { return target_->TakeNotices(); }

 private:
  struct Peer {
    std::uint64_t local_pool = 0;
    char* local_base = nullptr;
    KvLayout local_layout;
    TargetDescriptor remote;
    std::shared_ptr<InProcessTarget> target;
    std::uint64_t drop_generation = 0;
    absl::Status lost;  // non-OK once the peer is gone
  };
  struct Transfer {
    std::uint64_t peer = 0;
    WritePlan plan;
    std::uint64_t tag = 0;
    absl::Time ready_at;
    absl::Time deadline;
    bool cancelled = false;
    TransferState state = TransferState::Pending();
  };

  static absl::Status PoolNotFound(PoolHandle pool) {
    return absl::NotFoundError(absl::StrCat("pool ", pool.value, " is not registered"));
  }
  static absl::Status PeerNotFound(PeerHandle peer) {
    return absl::NotFoundError(absl::StrCat("peer ", peer.value, " is not connected"));
  }
  static TransferState UnknownTransfer(TransferId id) {
    return TransferState::Failed(
        absl::NotFoundError(absl::StrCat("transfer ", id.value, " is unknown or already reported")));
  }

  // Requires mu_.
  void CheckInjectedDrop(Peer& peer) {
    if (options_.faults && peer.lost.ok() &&
        options_.faults->drop_generation() != peer.drop_generation) {
      peer.lost = absl::UnavailableError(
          absl::StrCat("peer ", peer.remote.agent_id, " lost (injected)"));
    }
  }

  // Requires mu_. A transfer ends once; a later outcome (e.g. a copy that
  // finishes after Cancel) does not overwrite the first.
  void Finish(Transfer& t, TransferState state) {
    if (t.state.pending()) t.state = std::move(state);
    done_cv_.notify_all();
  }

  // Moves one transfer's bytes; runs on the copy thread without mu_.
  absl::Status Copy(const Peer& peer, const Transfer& t) {
    std::shared_lock<std::shared_mutex> lock(peer.target->mu);
    if (!peer.target->alive) {
      return absl::UnavailableError(absl::StrCat("peer ", peer.remote.agent_id, " is gone"));
    }
    auto it = peer.target->pools.find(peer.remote.pool_id);
    if (it == peer.target->pools.end()) {
      return absl::UnavailableError(absl::StrCat("pool ", peer.remote.pool_id, " of peer ",
                                                 peer.remote.agent_id, " was unregistered"));
    }
    char* remote_base = it->second.base;
    for (const CopyOp& op : t.plan.ops) {
      std::memcpy(remote_base + op.remote_offset, peer.local_base + op.local_offset, op.length);
    }
    return absl::OkStatus();
  }

  void CopyLoop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
      const absl::Time now = absl::Now();
      absl::Time wake = absl::InfiniteFuture();
      std::uint64_t ready = 0;
      for (auto qit = queue_.begin(); qit != queue_.end();) {
        auto it = transfers_.find(*qit);
        if (it == transfers_.end() || !it->second.state.pending()) {
          qit = queue_.erase(qit);
          continue;
        }
        Transfer& t = it->second;
        auto pit = peers_.find(t.peer);
        if (pit != peers_.end()) CheckInjectedDrop(pit->second);
        if (pit != peers_.end() && !pit->second.lost.ok()) {
          Finish(t, TransferState::Failed(pit->second.lost));
        } else if (now >= t.deadline) {
          Finish(t, TransferState::Failed(absl::DeadlineExceededError(
                        absl::StrCat("transfer ", *qit, " timed out before its data moved"))));
        } else if (ready == 0 && now >= t.ready_at) {
          ready = *qit;
        } else {
          wake = std::min(wake, std::min(t.ready_at, t.deadline));
        }
        if (!t.state.pending()) {
          qit = queue_.erase(qit);
        } else {
          ++qit;
        }
      }
      if (ready == 0) {
        if (wake == absl::InfiniteFuture()) {
          work_cv_.wait(lock);
        } else {
          work_cv_.wait_until(lock, absl::ToChronoTime(wake));
        }
        continue;
      }
      std::erase(queue_, ready);
      // Copy without mu_: Poll/Cancel stay prompt. The records are copied
      // because Release may erase them meanwhile.
      const Transfer t = transfers_.at(ready);
      const Peer peer = peers_.at(t.peer);
      lock.unlock();
      absl::Status s = Copy(peer, t);
      lock.lock();
      auto it = transfers_.find(ready);
      if (it == transfers_.end() || it->second.cancelled) continue;  // cancel won: no notice
      if (!s.ok()) {
        auto pit = peers_.find(t.peer);
        if (pit != peers_.end() && s.code() == absl::StatusCode::kUnavailable) pit->second.lost = s;
        Finish(it->second, TransferState::Failed(std::move(s)));
        continue;
      }
      peer.target->Deliver(WriteNotice{id_, TransferId{ready}, PoolHandle{peer.remote.pool_id},
                                       t.tag, t.plan.bytes, t.plan.regions});
      Finish(it->second, TransferState::Done());
    }
  }

  const InProcessOptions options_;
  const std::uint64_t id_;
  const std::string address_;
  const std::shared_ptr<InProcessTarget> target_;
  std::uint64_t next_pool_ = 1;  // guarded by target_->mu

  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // the copy thread waits here
  std::condition_variable done_cv_;  // Flush waits here
  bool stopping_ = false;
  std::map<std::uint64_t, Peer> peers_;
  std::map<std::uint64_t, Transfer> transfers_;
  std::deque<std::uint64_t> queue_;
  std::uint64_t next_peer_ = 1;
  std::uint64_t next_transfer_ = 1;
  std::map<std::uint64_t, std::unique_ptr<void, decltype(&std::free)>> owned_;  // AllocatePool
  std::thread thread_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TransferAgent>> CreateInProcessAgent(
    const InProcessOptions& options) {
  if (options.fabric == nullptr) {
    return absl::InvalidArgumentError("InProcessOptions.fabric is required");
  }
  if (options.transfer_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("InProcessOptions.transfer_timeout must be > 0");
  }
  return std::unique_ptr<TransferAgent>(new InProcessAgent(options));
}

}  // namespace sirocco::transfer
