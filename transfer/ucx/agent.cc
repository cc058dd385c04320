// UcxAgent: creation, destruction and the API-thread side of every method.
// Nothing here calls UCX after Init(); work goes to the progress thread as
// commands (see agent.h).
#include "transfer/ucx/agent.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "transfer/random_id.h"

namespace sirocco::transfer {

const char* UcxTransportsName(UcxTransports t) {
  switch (t) {
    case UcxTransports::kDefault:
      return "default";
    case UcxTransports::kSharedMemory:
      return "shm";
    case UcxTransports::kCmaTcp:
      return "cma+tcp";
    case UcxTransports::kTcp:
      return "tcp";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<TransferAgent>> CreateUcxAgent(const UcxOptions& options) {
  return ucx::UcxAgent::Create(options);
}

}  // namespace sirocco::transfer

namespace sirocco::transfer::ucx {
namespace {

// Pools register quickly (no pinning on shm/tcp); this only bounds a stuck loop.
constexpr absl::Duration kSetupTimeout = absl::Seconds(30);

absl::Status PoolNotFound(PoolHandle pool) {
  return absl::NotFoundError(absl::StrCat("pool ", pool.value, " is not registered"));
}
absl::Status PeerNotFound(PeerHandle peer) {
  return absl::NotFoundError(absl::StrCat("peer ", peer.value, " is not connected"));
}
TransferState UnknownTransfer(TransferId id) {
  return TransferState::Failed(absl::NotFoundError(
      absl::StrCat("transfer ", id.value, " is unknown or already reported")));
}

const char* TlsFor(UcxTransports t) {
  switch (t) {
    case UcxTransports::kDefault:
      return nullptr;
    case UcxTransports::kSharedMemory:
      return "posix,sysv,cma,self,tcp";
    case UcxTransports::kCmaTcp:
      return "cma,tcp,self";
    case UcxTransports::kTcp:
      return "tcp,self";
  }
  return nullptr;
}

}  // namespace

UcxAgent::UcxAgent(const UcxOptions& options) : options_(options), id_(NewRandomId()) {}

absl::StatusOr<std::unique_ptr<TransferAgent>> UcxAgent::Create(const UcxOptions& options) {
  if (options.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("UcxOptions.connect_timeout must be > 0");
  }
  if (options.transfer_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("UcxOptions.transfer_timeout must be > 0");
  }
  if (options.max_ops_in_flight < 1) {
    return absl::InvalidArgumentError("UcxOptions.max_ops_in_flight must be >= 1");
  }
  std::unique_ptr<UcxAgent> agent(new UcxAgent(options));
  if (absl::Status s = agent->Init(); !s.ok()) return s;
  return std::unique_ptr<TransferAgent>(std::move(agent));
}

absl::Status UcxAgent::Init() {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(options_.listen_port);
  if (inet_pton(AF_INET, options_.listen_host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("UcxOptions.listen_host '", options_.listen_host, "' is not an IPv4 address"));
  }
  const std::string advertise =
      options_.advertise_host.empty() ? options_.listen_host : options_.advertise_host;
  if (advertise == "0.0.0.0") {
    return absl::InvalidArgumentError(
        "UcxOptions.advertise_host must be set when listening on 0.0.0.0");
  }

  ucp_config_t* config = nullptr;
  if (ucs_status_t s = ucp_config_read(nullptr, nullptr, &config); s != UCS_OK) {
    return UcsStatus("ucp_config_read", s);
  }
  if (const char* tls = TlsFor(options_.transports); tls != nullptr) {
    if (ucs_status_t s = ucp_config_modify(config, "TLS", tls); s != UCS_OK) {
      ucp_config_release(config);
      return UcsStatus("ucp_config_modify(TLS)", s);
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM;
  ucs_status_t s = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  if (s != UCS_OK) return UcsStatus("ucp_init", s);

  ucp_worker_params_t worker_params{};
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  worker_params.thread_mode = UCS_THREAD_MODE_SINGLE;  // only the progress thread uses it
  if (s = ucp_worker_create(context_, &worker_params, &worker_); s != UCS_OK) {
    return UcsStatus("ucp_worker_create", s);
  }

  ucp_worker_attr_t worker_attr{};
  worker_attr.field_mask = UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER;
  if (s = ucp_worker_query(worker_, &worker_attr); s != UCS_OK) {
    return UcsStatus("ucp_worker_query", s);
  }
  for (max_segments_ = 256; max_segments_ > 1; max_segments_ /= 2) {
    if (DataMsgBytes(max_segments_) <= worker_attr.max_am_header) break;
  }

  const std::pair<unsigned, ucp_am_recv_callback_t> handlers[] = {
      {kAmHello, &AmCallback<kAmHello>},   {kAmHelloReply, &AmCallback<kAmHelloReply>},
      {kAmData, &AmCallback<kAmData>},     {kAmDone, &AmCallback<kAmDone>},
      {kAmAck, &AmCallback<kAmAck>},       {kAmCancel, &AmCallback<kAmCancel>},
  };
  for (const auto& [am_id, cb] : handlers) {
    ucp_am_handler_param_t hp{};
    hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                    UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
    hp.id = am_id;
    hp.cb = cb;
    hp.arg = this;
    hp.flags = UCP_AM_FLAG_WHOLE_MSG;
    if (s = ucp_worker_set_am_recv_handler(worker_, &hp); s != UCS_OK) {
      return UcsStatus("ucp_worker_set_am_recv_handler", s);
    }
  }

  ucp_listener_params_t lp{};
  lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
  lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr);
  lp.sockaddr.addrlen = sizeof(addr);
  lp.conn_handler.cb = &ConnCallback;
  lp.conn_handler.arg = this;
  if (s = ucp_listener_create(worker_, &lp, &listener_); s != UCS_OK) {
    return UcsStatus(absl::StrCat("listen on ", options_.listen_host, ":", options_.listen_port),
                     s);
  }
  ucp_listener_attr_t attr{};
  attr.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
  if (s = ucp_listener_query(listener_, &attr); s != UCS_OK) {
    return UcsStatus("ucp_listener_query", s);
  }
  const auto* bound = reinterpret_cast<const sockaddr_in*>(&attr.sockaddr);
  address_ = absl::StrCat(advertise, ":", ntohs(bound->sin_port));

  seen_drop_generation_ = options_.faults ? options_.faults->drop_generation() : 0;
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

UcxAgent::~UcxAgent() {
  if (thread_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    work_cv_.notify_all();
    thread_.join();  // the loop closes endpoints, the listener and the pools
  }
  // Only this thread remains: tear down what Init built (some may be null
  // when Init failed half-way).
  if (listener_ != nullptr) ucp_listener_destroy(listener_);
  if (worker_ != nullptr) ucp_worker_destroy(worker_);
  for (OpCtx* op : live_ops_) delete op;  // requests the worker dropped
  if (context_ != nullptr) ucp_cleanup(context_);
}

void UcxAgent::Enqueue(std::function<void()> command) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    commands_.push_back(std::move(command));
  }
  work_cv_.notify_one();
}

absl::StatusOr<PoolHandle> UcxAgent::RegisterPool(void* base, std::size_t bytes,
                                                  const KvLayout& layout) {
  if (absl::Status s = layout.Validate(); !s.ok()) return s;
  if (base == nullptr) return absl::InvalidArgumentError("RegisterPool: base is null");
  if (bytes < layout.pool_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("RegisterPool: ", bytes,
                                                   " bytes is less than the layout's ",
                                                   layout.pool_bytes()));
  }
  return MapPool(static_cast<char*>(base), bytes, layout);
}

absl::StatusOr<AllocatedPool> UcxAgent::AllocatePool(const KvLayout& layout) {
  if (absl::Status s = layout.Validate(); !s.ok()) return s;
  const std::size_t bytes = (layout.pool_bytes() + 63) / 64 * 64;
  absl::StatusOr<PoolHandle> handle = MapPool(nullptr, bytes, layout);
  if (!handle.ok()) return handle.status();
  std::lock_guard<std::mutex> lock(mu_);
  return AllocatedPool{*handle, pools_[handle->value].base, bytes};
}

absl::StatusOr<PoolHandle> UcxAgent::MapPool(char* base, std::size_t bytes,
                                             const KvLayout& layout) {
  std::uint64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = next_pool_++;
    pools_[id] = SharedPool{base, bytes, layout, false, absl::OkStatus(), {}};
  }
  Enqueue([this, id, base, bytes, layout] { DoMapPool(id, base, bytes, layout); });
  std::unique_lock<std::mutex> lock(mu_);
  const bool ended = state_cv_.wait_for(lock, absl::ToChronoNanoseconds(kSetupTimeout), [&] {
    return pools_[id].mapped || !pools_[id].map_status.ok();
  });
  if (!ended) return absl::DeadlineExceededError("ucp_mem_map did not finish");
  if (!pools_[id].map_status.ok()) {
    absl::Status s = pools_[id].map_status;
    pools_.erase(id);
    return s;
  }
  return PoolHandle{id};
}

absl::Status UcxAgent::UnregisterPool(PoolHandle pool) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!pools_.contains(pool.value)) return PoolNotFound(pool);
    for (const auto& [peer_id, peer] : peers_) {
      if (peer.local_pool == pool.value) {
        return absl::FailedPreconditionError(
            absl::StrCat("pool ", pool.value, " is the source of connected peer ", peer_id));
      }
    }
    pools_.erase(pool.value);
  }
  Enqueue([this, id = pool.value] { DoUnmapPool(id); });
  return absl::OkStatus();
}

absl::StatusOr<TargetDescriptor> UcxAgent::LocalDescriptor(PoolHandle pool) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pools_.find(pool.value);
  if (it == pools_.end()) return PoolNotFound(pool);
  TargetDescriptor d;
  d.backend = BackendKind::kUcx;
  d.agent_id = id_;
  d.pool_id = pool.value;
  d.address = address_;
  d.rkey = it->second.rkey;
  d.base_address = reinterpret_cast<std::uintptr_t>(it->second.base);
  d.pool_bytes = it->second.bytes;
  d.layout = it->second.layout;
  return d;
}

absl::StatusOr<PeerHandle> UcxAgent::Connect(PoolHandle local_pool,
                                             const TargetDescriptor& target) {
  if (target.backend != BackendKind::kUcx) {
    return absl::InvalidArgumentError(absl::StrCat(
        "descriptor is for the ", BackendName(target.backend), " backend, this agent is ucx"));
  }
  std::uint64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pools_.find(local_pool.value);
    if (it == pools_.end()) return PoolNotFound(local_pool);
    if (absl::Status s = CheckCompatible(it->second.layout, target.layout); !s.ok()) return s;
    id = next_peer_++;
    SharedPeer& peer = peers_[id];
    peer.local_pool = local_pool.value;
    peer.local_layout = it->second.layout;
    peer.remote = target;
  }
  Enqueue([this, id, target, pool = local_pool.value] { DoConnect(id, target, pool); });

  std::unique_lock<std::mutex> lock(mu_);
  const bool ended = state_cv_.wait_for(
      lock, absl::ToChronoNanoseconds(options_.connect_timeout),
      [&] { return peers_[id].phase != PeerPhase::kConnecting; });
  if (!ended || peers_[id].phase == PeerPhase::kLost) {
    absl::Status s = ended ? peers_[id].status
                           : absl::DeadlineExceededError(absl::StrCat(
                                 "connect to ", target.address, " timed out after ",
                                 absl::FormatDuration(options_.connect_timeout)));
    peers_.erase(id);
    lock.unlock();
    Enqueue([this, id] { DoClosePeer(id); });
    return s;
  }
  return PeerHandle{id};
}

absl::StatusOr<PeerInfo> UcxAgent::GetPeerInfo(PeerHandle peer) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peers_.find(peer.value);
  if (it == peers_.end()) return PeerNotFound(peer);
  return it->second.info;
}

absl::StatusOr<TransferId> UcxAgent::PostWrite(PeerHandle peer_handle,
                                               std::span<const Region> local_regions,
                                               std::span<const RemoteRegion> remote,
                                               const WriteOptions& options) {
  std::uint64_t id = 0;
  LoopTransfer t;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(peer_handle.value);
    if (it == peers_.end()) return PeerNotFound(peer_handle);
    const SharedPeer& peer = it->second;
    if (peer.phase == PeerPhase::kLost) return peer.status;
    absl::StatusOr<WritePlan> plan = PlanWrite(peer.local_layout, local_regions,
                                               peer.remote.layout, remote, options_.max_op_bytes);
    if (!plan.ok()) return plan.status();
    id = next_transfer_++;
    SharedTransfer& shared = transfers_[id];
    shared.peer = peer_handle.value;
    t.peer = peer_handle.value;
    t.plan = *std::move(plan);
    t.tag = options.tag;
    t.timeout = options.timeout > absl::ZeroDuration() ? options.timeout
                                                        : options_.transfer_timeout;
    const absl::Time now = absl::Now();
    t.deadline = now + t.timeout;
    t.start_at = now;
    if (options_.faults) {
      t.start_at += options_.faults->write_delay();
      if (absl::Status s = options_.faults->OnPostWrite(); !s.ok()) {
        shared.state = TransferState::Failed(std::move(s));
        return TransferId{id};
      }
    }
  }
  Enqueue([this, id, t = std::move(t)]() mutable { DoStartTransfer(id, std::move(t)); });
  return TransferId{id};
}

TransferState UcxAgent::Poll(TransferId id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = transfers_.find(id.value);
  if (it == transfers_.end()) return UnknownTransfer(id);
  TransferState state = it->second.state;
  if (!state.pending()) transfers_.erase(it);
  return state;
}

absl::Status UcxAgent::Flush(PeerHandle peer, absl::Time deadline) {
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
      if (it == transfers_.end()) continue;  // already reported by Poll
      if (it->second.state.pending()) {
        pending = true;
      } else if (it->second.state.failed() && !it->second.cancelled) {
        const absl::Status& s = it->second.state.status;
        return absl::Status(s.code(), absl::StrCat("transfer ", id, ": ", s.message()));
      }
    }
    if (!pending) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError("Flush: transfers still pending at the deadline");
    }
    state_cv_.wait_until(lock, absl::ToChronoTime(deadline));
  }
}

absl::Status UcxAgent::Cancel(TransferId id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = transfers_.find(id.value);
    if (it == transfers_.end()) return absl::NotFoundError(UnknownTransfer(id).status.message());
    if (!it->second.state.pending()) {
      return absl::FailedPreconditionError(absl::StrCat("transfer ", id.value, " already ended"));
    }
    it->second.cancelled = true;
    it->second.state = TransferState::Failed(
        absl::CancelledError(absl::StrCat("transfer ", id.value, " cancelled")));
  }
  state_cv_.notify_all();
  Enqueue([this, id = id.value] { DoCancel(id); });
  return absl::OkStatus();
}

absl::Status UcxAgent::Release(PeerHandle peer) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (peers_.erase(peer.value) == 0) return PeerNotFound(peer);
    std::erase_if(transfers_, [&](const auto& kv) { return kv.second.peer == peer.value; });
  }
  state_cv_.notify_all();
  Enqueue([this, id = peer.value] { DoClosePeer(id); });
  return absl::OkStatus();
}

std::vector<WriteNotice> UcxAgent::CompletedWrites() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(notices_, {});
}

}  // namespace sirocco::transfer::ucx
