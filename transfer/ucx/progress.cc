// UcxAgent's progress thread: the loop, completion dispatch, endpoint
// closing, publishing into shared state, and pool mapping. The sending side
// is in send.cc, the receiving side in receive.cc. Everything here runs on
// the progress thread; shared state is touched only under mu_.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "transfer/ucx/agent.h"

namespace sirocco::transfer::ucx {
namespace {

constexpr absl::Duration kDeadlineCheckPeriod = absl::Milliseconds(1);
constexpr absl::Duration kShutdownGrace = absl::Seconds(2);
constexpr absl::Duration kCloseTimeout = absl::Seconds(2);
// While work is in flight the loop spins (yielding); after this many empty
// rounds it sleeps briefly between rounds, and when nothing is in flight it
// waits on work_cv_ with a growing timeout (incoming messages are then seen
// within kMaxIdleWait).
constexpr int kSpinRounds = 2000;
constexpr absl::Duration kBusyNap = absl::Microseconds(20);
constexpr absl::Duration kMaxIdleWait = absl::Milliseconds(1);

}  // namespace

absl::Status UcsStatus(const std::string& what, ucs_status_t status) {
  const std::string msg = absl::StrCat(what, ": ", ucs_status_string(status));
  switch (status) {
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_ENDPOINT_TIMEOUT:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_REJECTED:
    case UCS_ERR_CANCELED:
      return absl::UnavailableError(msg);
    case UCS_ERR_TIMED_OUT:
      return absl::DeadlineExceededError(msg);
    default:
      return absl::InternalError(msg);
  }
}

// ------------------------------ the loop ------------------------------

void UcxAgent::Loop() {
  int empty_rounds = 0;
  absl::Duration idle_wait = absl::Microseconds(50);
  next_deadline_check_ = absl::Now();
  for (;;) {
    std::deque<std::function<void()>> commands;
    bool stop = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      commands.swap(commands_);
      stop = stopping_;
    }
    RunCommands(commands);
    if (stop) break;

    bool busy = !commands.empty();
    for (int i = 0; i < 32; ++i) {
      const unsigned n = ucp_worker_progress(worker_);
      if (n == 0) break;
      busy = true;
    }
    busy |= ProcessEvents();
    if (options_.faults && options_.faults->drop_generation() != seen_drop_generation_) {
      seen_drop_generation_ = options_.faults->drop_generation();
      std::vector<std::uint64_t> ids;
      for (const auto& [id, peer] : loop_peers_) ids.push_back(id);
      for (std::uint64_t id : ids) PeerLost(id, absl::UnavailableError("peer lost (injected)"));
      busy = true;
    }
    busy |= PumpPeers();
    busy |= ProcessEvents();
    busy |= SendControls();
    busy |= ReapClosing(false);
    const absl::Time now = absl::Now();
    if (now >= next_deadline_check_) {
      CheckDeadlines(now);
      next_deadline_check_ = now + kDeadlineCheckPeriod;
    }

    if (busy) {
      empty_rounds = 0;
      idle_wait = absl::Microseconds(50);
      continue;
    }
    if (HasLiveWork()) {
      if (++empty_rounds < kSpinRounds) {
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(absl::ToChronoNanoseconds(kBusyNap));
      }
      continue;
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (commands_.empty() && !stopping_) {
      work_cv_.wait_for(lock, absl::ToChronoNanoseconds(idle_wait));
      idle_wait = std::min(idle_wait * 2, kMaxIdleWait);
    }
  }
  Shutdown();
}

void UcxAgent::RunCommands(std::deque<std::function<void()>>& commands) {
  for (auto& command : commands) command();
}

bool UcxAgent::HasLiveWork() const {
  if (!loop_transfers_.empty() || !closing_.empty() || !controls_.empty()) return true;
  for (const auto& [id, conn] : conns_) {
    if (!conn.incoming.empty()) return true;
  }
  for (const auto& [id, peer] : loop_peers_) {
    if (!peer.ready) return true;  // connecting
  }
  return false;
}

void UcxAgent::Shutdown() {
  for (auto& [id, peer] : loop_peers_) {
    if (peer.rkey != nullptr) ucp_rkey_destroy(peer.rkey);
    peer.rkey = nullptr;
    CloseEp(peer.ep, /*force=*/false);
  }
  loop_peers_.clear();
  for (auto& [id, conn] : conns_) CloseEp(conn.ep, /*force=*/false);
  conns_.clear();
  conn_by_ep_.clear();
  const absl::Time give_up = absl::Now() + kShutdownGrace;
  while (!closing_.empty() && absl::Now() < give_up) {
    ucp_worker_progress(worker_);
    ReapClosing(false);
  }
  ReapClosing(true);  // what is left is released by ucp_worker_destroy
  ProcessEvents();
  for (auto& [id, pool] : loop_pools_) ucp_mem_unmap(context_, pool.memh);
  loop_pools_.clear();
}

// ------------------------------ helpers ------------------------------

UcxAgent::OpCtx* UcxAgent::NewOp(OpCtx::Kind kind) {
  auto* ctx = new OpCtx;
  ctx->agent = this;
  ctx->kind = kind;
  live_ops_.insert(ctx);
  return ctx;
}

void UcxAgent::FreeOp(OpCtx* ctx) {
  live_ops_.erase(ctx);
  delete ctx;
}

void UcxAgent::Track(void* request, OpCtx* ctx) {
  // Immediate completions are queued like callbacks, so that no state
  // changes under a caller that is iterating over it.
  if (request == nullptr) {
    events_.push_back({ctx, nullptr, UCS_OK});
  } else if (UCS_PTR_IS_ERR(request)) {
    events_.push_back({ctx, nullptr, UCS_PTR_STATUS(request)});
  } else {
    ctx->request = request;
  }
}

void UcxAgent::SendCallback(void* request, ucs_status_t status, void* user_data) {
  auto* ctx = static_cast<OpCtx*>(user_data);
  ctx->request = nullptr;
  ctx->agent->events_.push_back({ctx, nullptr, status});
  ucp_request_free(request);
}

void UcxAgent::RecvCallback(void* request, ucs_status_t status, std::size_t /*length*/,
                            void* user_data) {
  auto* ctx = static_cast<OpCtx*>(user_data);
  ctx->request = nullptr;
  ctx->agent->events_.push_back({ctx, nullptr, status});
  ucp_request_free(request);
}

void UcxAgent::EpErrorCallback(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
  auto* ctx = static_cast<EpCtx*>(arg);
  ctx->agent->events_.push_back({nullptr, ctx, status});
}

bool UcxAgent::ProcessEvents() {
  bool any = false;
  while (!events_.empty() || !deferred_.empty()) {
    std::vector<std::function<void()>> deferred;
    deferred.swap(deferred_);
    for (auto& work : deferred) work();
    any = true;
    std::vector<Event> events;
    events.swap(events_);
    any = true;
    for (const Event& e : events) {
      if (e.ep != nullptr) {
        if (e.ep->server) {
          ConnLost(e.ep->id);
        } else {
          auto it = loop_peers_.find(e.ep->id);
          const std::string who = it == loop_peers_.end() ? "peer" : it->second.address;
          PeerLost(e.ep->id, UcsStatus(absl::StrCat("connection to ", who, " lost"), e.status));
        }
        continue;
      }
      OpCtx* ctx = e.op;
      switch (ctx->kind) {
        case OpCtx::Kind::kData:
          OnDataOpDone(ctx, e.status);
          break;
        case OpCtx::Kind::kFlush:
          OnFlushDone(ctx, e.status);
          break;
        case OpCtx::Kind::kRecv:
          OnRecvDone(ctx, e.status);
          break;
        case OpCtx::Kind::kControl:
          if (e.status != UCS_OK && ctx->peer != 0) {
            PeerLost(ctx->peer, UcsStatus("control message", e.status));
          }
          break;
      }
      FreeOp(ctx);
    }
  }
  return any;
}

void UcxAgent::CloseEp(ucp_ep_h ep, bool force) {
  if (ep == nullptr) return;
  conn_by_ep_.erase(ep);
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  void* request = ucp_ep_close_nbx(ep, &param);
  if (request != nullptr && UCS_PTR_IS_PTR(request)) {
    closing_.push_back({request, absl::Now() + kCloseTimeout});
  }
}

bool UcxAgent::ReapClosing(bool all) {
  const absl::Time now = absl::Now();
  const std::size_t before = closing_.size();
  std::erase_if(closing_, [&](const Closing& c) {
    // A close that outlives its timeout (a peer that vanished mid-flush) is
    // abandoned: freeing the request lets UCX release it whenever it ends.
    if (!all && now < c.give_up && ucp_request_check_status(c.request) == UCS_INPROGRESS) {
      return false;
    }
    ucp_request_free(c.request);
    return true;
  });
  return closing_.size() != before;
}

void UcxAgent::PublishTransfer(std::uint64_t id, TransferState state) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = transfers_.find(id);
    if (it == transfers_.end() || !it->second.state.pending()) return;
    it->second.state = std::move(state);
  }
  state_cv_.notify_all();
}

void UcxAgent::PublishPeer(std::uint64_t id, PeerPhase phase, absl::Status status,
                           PeerInfo info) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(id);
    if (it == peers_.end()) return;
    it->second.phase = phase;
    it->second.status = std::move(status);
    if (phase == PeerPhase::kReady) it->second.info = std::move(info);
  }
  state_cv_.notify_all();
}

// ------------------------------ pools ------------------------------

void UcxAgent::DoMapPool(std::uint64_t id, char* base, std::size_t bytes,
                         const KvLayout& layout) {
  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                  UCP_MEM_MAP_PARAM_FIELD_FLAGS;
  mp.address = base;
  mp.length = bytes;
  mp.flags = base == nullptr ? UCP_MEM_MAP_ALLOCATE : 0;
  ucp_mem_h memh = nullptr;
  absl::Status status;
  std::string rkey;
  if (ucs_status_t s = ucp_mem_map(context_, &mp, &memh); s != UCS_OK) {
    status = UcsStatus("ucp_mem_map", s);
  } else if (base == nullptr) {
    ucp_mem_attr_t attr{};
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS;
    if (s = ucp_mem_query(memh, &attr); s != UCS_OK) {
      status = UcsStatus("ucp_mem_query", s);
      ucp_mem_unmap(context_, memh);
    } else {
      base = static_cast<char*>(attr.address);
    }
  }
  if (status.ok()) {
    void* buffer = nullptr;
    std::size_t size = 0;
    if (ucs_status_t s = ucp_rkey_pack(context_, memh, &buffer, &size); s != UCS_OK) {
      status = UcsStatus("ucp_rkey_pack", s);
      ucp_mem_unmap(context_, memh);
    } else {
      rkey.assign(static_cast<const char*>(buffer), size);
      ucp_rkey_buffer_release(buffer);
      loop_pools_[id] = LoopPool{base, bytes, layout, memh};
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    SharedPool& pool = pools_[id];
    if (status.ok()) {
      pool.mapped = true;
      pool.base = base;
      pool.rkey = std::move(rkey);
    } else {
      pool.map_status = status;
    }
  }
  state_cv_.notify_all();
}

void UcxAgent::DoUnmapPool(std::uint64_t id) {
  auto it = loop_pools_.find(id);
  if (it == loop_pools_.end()) return;
  ucp_mem_unmap(context_, it->second.memh);
  loop_pools_.erase(it);
}

}  // namespace sirocco::transfer::ucx
