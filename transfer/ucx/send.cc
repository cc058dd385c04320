// UcxAgent's sending side, on the progress thread: connecting (Hello and
// the kAuto decision), issuing a transfer's puts or messages within the
// per-peer window, flush + Done for RMA, Acks, deadlines and cancels.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "transfer/ucx/agent.h"
#include "transfer/ucx/lanes.h"

namespace sirocco::transfer::ucx {
namespace {

std::string EpInfoText(ucp_ep_h ep) {
  char* buf = nullptr;
  std::size_t size = 0;
  FILE* f = open_memstream(&buf, &size);
  if (f == nullptr) return {};
  ucp_ep_print_info(ep, f);
  fclose(f);
  std::string text(buf, size);
  free(buf);
  return text;
}

}  // namespace

// ------------------------------ connecting ------------------------------

void UcxAgent::DoConnect(std::uint64_t id, const TargetDescriptor& target,
                         std::uint64_t local_pool) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  const std::size_t colon = target.address.rfind(':');
  std::uint32_t port = 0;
  if (colon == std::string::npos ||
      inet_pton(AF_INET, target.address.substr(0, colon).c_str(), &addr.sin_addr) != 1 ||
      !absl::SimpleAtoi(target.address.substr(colon + 1), &port) || port == 0 || port > 65535) {
    PublishPeer(id, PeerPhase::kLost,
                absl::InvalidArgumentError(absl::StrCat("descriptor address '", target.address,
                                                        "' is not ipv4:port")),
                {});
    return;
  }
  addr.sin_port = htons(static_cast<std::uint16_t>(port));

  auto& ep_ctx = ep_ctxs_.emplace_back(std::make_unique<EpCtx>(EpCtx{this, false, id}));
  ucp_ep_params_t ep_params{};
  ep_params.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                         UCP_EP_PARAM_FIELD_ERR_HANDLER | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  ep_params.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  ep_params.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr);
  ep_params.sockaddr.addrlen = sizeof(addr);
  ep_params.err_handler.cb = &EpErrorCallback;
  ep_params.err_handler.arg = ep_ctx.get();
  // NONE, not PEER: UCX 1.13 leaves shared memory out of PEER-mode
  // endpoints; the connection manager still reports a lost peer.
  ep_params.err_mode = UCP_ERR_HANDLING_MODE_NONE;
  ucp_ep_h ep = nullptr;
  if (ucs_status_t s = ucp_ep_create(worker_, &ep_params, &ep); s != UCS_OK) {
    PublishPeer(id, PeerPhase::kLost, UcsStatus(absl::StrCat("connect to ", target.address), s),
                {});
    return;
  }
  LoopPeer& peer = loop_peers_[id];
  peer.ep = ep;
  peer.address = target.address;
  peer.rkey_bytes = target.rkey;
  peer.remote_base = target.base_address;
  peer.remote_pool = target.pool_id;
  peer.local_pool = local_pool;
  const auto pool_it = loop_pools_.find(local_pool);
  HelloMsg hello;
  hello.sender_agent = id_;
  hello.peer_id = id;
  hello.target_pool = target.pool_id;
  hello.layout = pool_it == loop_pools_.end() ? KvLayout{} : pool_it->second.layout;
  controls_.push_back({false, id, kAmHello, Encode(hello)});
}

void UcxAgent::OnHelloReply(const ReplyMsg& reply) {
  auto it = loop_peers_.find(reply.peer_id);
  if (it == loop_peers_.end() || it->second.ready) return;
  LoopPeer& peer = it->second;
  if (reply.code != 0) {
    PeerLost(reply.peer_id,
             absl::Status(static_cast<absl::StatusCode>(reply.code),
                          absl::StrCat("target ", peer.address, " refused: ", reply.message)));
    return;
  }
  const EpLanes lanes = ParseEpInfo(EpInfoText(peer.ep));
  // The rkey is unpacked in every mode: ucp_rkey_ptr tells whether the
  // target pool is mappable here, which kAuto needs (see lanes.h).
  bool mappable = false;
  if (!peer.rkey_bytes.empty()) {
    if (ucs_status_t s = ucp_ep_rkey_unpack(peer.ep, peer.rkey_bytes.data(), &peer.rkey);
        s != UCS_OK) {
      PeerLost(reply.peer_id, UcsStatus("ucp_ep_rkey_unpack", s));
      return;
    }
    void* local = nullptr;
    mappable = ucp_rkey_ptr(peer.rkey, peer.remote_base, &local) == UCS_OK;
  }
  peer.mode = ResolveMode(options_.mode, lanes, mappable);
  if (peer.mode == TransportMode::kRma && peer.rkey == nullptr) {
    PeerLost(reply.peer_id, absl::FailedPreconditionError("RMA needs the target's rkey"));
    return;
  }
  peer.ready = true;
  PeerInfo info;
  info.mode = peer.mode;
  info.transport = DescribeTransport(peer.mode, lanes, mappable);
  info.remote_address = peer.address;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto sit = peers_.find(reply.peer_id);
    if (sit != peers_.end()) info.remote_agent_id = sit->second.remote.agent_id;
  }
  PublishPeer(reply.peer_id, PeerPhase::kReady, absl::OkStatus(), std::move(info));
}

void UcxAgent::PeerLost(std::uint64_t id, absl::Status why) {
  auto it = loop_peers_.find(id);
  if (it == loop_peers_.end()) {
    PublishPeer(id, PeerPhase::kLost, why, {});
    return;
  }
  std::vector<std::uint64_t> doomed;
  for (const auto& [tid, t] : loop_transfers_) {
    if (t.peer == id) doomed.push_back(tid);
  }
  for (std::uint64_t tid : doomed) {
    PublishTransfer(tid, TransferState::Failed(why));
    loop_transfers_.erase(tid);
  }
  std::erase_if(controls_, [&](const Control& c) { return !c.server && c.id == id; });
  if (it->second.rkey != nullptr) ucp_rkey_destroy(it->second.rkey);
  CloseEp(it->second.ep, /*force=*/true);
  loop_peers_.erase(it);
  PublishPeer(id, PeerPhase::kLost, std::move(why), {});
}

void UcxAgent::DoClosePeer(std::uint64_t id) {
  auto it = loop_peers_.find(id);
  if (it == loop_peers_.end()) return;
  std::erase_if(loop_transfers_, [&](const auto& kv) { return kv.second.peer == id; });
  std::erase_if(controls_, [&](const Control& c) { return !c.server && c.id == id; });
  if (it->second.rkey != nullptr) ucp_rkey_destroy(it->second.rkey);
  CloseEp(it->second.ep, /*force=*/false);
  loop_peers_.erase(it);
}

// ------------------------------ transfers ------------------------------

void UcxAgent::DoStartTransfer(std::uint64_t id, LoopTransfer transfer) {
  auto pit = loop_peers_.find(transfer.peer);
  if (pit == loop_peers_.end()) {
    PublishTransfer(id, TransferState::Failed(absl::UnavailableError("peer is gone")));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = transfers_.find(id);
    if (it == transfers_.end() || it->second.cancelled) return;  // cancelled before it started
  }
  // RMA: one put per coalesced run. Messages: one message gathers several
  // runs (up to max_segments_ and max_op_bytes), so scattered blocks do not
  // cost one rendezvous each.
  const std::vector<CopyOp>& ops = transfer.plan.ops;
  for (std::uint32_t i = 0; i < ops.size();) {
    OpGroup g{i, 1};
    std::uint64_t bytes = ops[i].length;
    if (pit->second.mode == TransportMode::kMessages) {
      while (i + g.count < ops.size() && g.count < max_segments_ &&
             bytes + ops[i + g.count].length <= options_.max_op_bytes) {
        bytes += ops[i + g.count].length;
        ++g.count;
      }
    }
    transfer.groups.push_back(g);
    i += g.count;
  }
  transfer.phase = Phase::kDelayed;
  loop_transfers_[id] = std::move(transfer);
  pit->second.queue.push_back(id);
}

void UcxAgent::FailTransfer(std::uint64_t id, absl::Status why) {
  PublishTransfer(id, TransferState::Failed(std::move(why)));
  DoCancel(id);
}

void UcxAgent::DoCancel(std::uint64_t id) {
  auto it = loop_transfers_.find(id);
  if (it == loop_transfers_.end()) return;
  LoopTransfer& t = it->second;
  auto pit = loop_peers_.find(t.peer);
  if (pit != loop_peers_.end()) {
    LoopPeer& peer = pit->second;
    std::erase(peer.queue, id);
    // Tell a messages-mode target to drop what it already has. Over RMA the
    // target only learns of a transfer from its Done, which now never comes.
    if (peer.mode == TransportMode::kMessages && t.next_group > 0) {
      controls_.push_back({false, t.peer, kAmCancel, Encode(CancelMsg{t.peer, id})});
    }
  }
  loop_transfers_.erase(it);
}

void UcxAgent::CheckDeadlines(absl::Time now) {
  std::vector<std::uint64_t> expired;
  for (const auto& [id, t] : loop_transfers_) {
    if (now >= t.deadline) expired.push_back(id);
  }
  for (std::uint64_t id : expired) {
    const LoopTransfer& t = loop_transfers_.at(id);
    auto pit = loop_peers_.find(t.peer);
    const std::string where = pit == loop_peers_.end() ? "peer" : pit->second.address;
    const char* phase = t.phase == Phase::kDelayed    ? "not started"
                        : t.phase == Phase::kIssuing  ? "sending"
                        : t.phase == Phase::kFlushing ? "flushing"
                                                      : "waiting for the target's ack";
    FailTransfer(id, absl::DeadlineExceededError(absl::StrCat(
                         "transfer ", id, " to ", where, " timed out after ",
                         absl::FormatDuration(t.timeout), " (", t.groups_done, " of ",
                         t.groups.size(), " operations done, ", phase, ")")));
  }
}

bool UcxAgent::PumpPeers() {
  bool any = false;
  const absl::Time now = absl::Now();
  for (auto& [peer_id, peer] : loop_peers_) {
    while (!peer.queue.empty() && peer.ops_in_flight < options_.max_ops_in_flight) {
      const std::uint64_t tid = peer.queue.front();
      auto it = loop_transfers_.find(tid);
      if (it == loop_transfers_.end()) {
        peer.queue.pop_front();
        continue;
      }
      LoopTransfer& t = it->second;
      if (t.phase == Phase::kDelayed) {
        if (now < t.start_at) break;
        t.phase = Phase::kIssuing;
      }
      while (t.next_group < t.groups.size() &&
             peer.ops_in_flight < options_.max_ops_in_flight) {
        IssueGroup(peer_id, peer, tid, t);
        any = true;
      }
      if (t.next_group < t.groups.size()) break;
      peer.queue.pop_front();
    }
  }
  return any;
}

void UcxAgent::IssueGroup(std::uint64_t peer_id, LoopPeer& peer, std::uint64_t transfer_id,
                          LoopTransfer& transfer) {
  const OpGroup group = transfer.groups[transfer.next_group++];
  const CopyOp& first = transfer.plan.ops[group.first];
  const LoopPool& pool = loop_pools_.at(peer.local_pool);
  OpCtx* ctx = NewOp(OpCtx::Kind::kData);
  ctx->peer = peer_id;
  ctx->transfer = transfer_id;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &SendCallback;
  param.user_data = ctx;
  ++peer.ops_in_flight;
  void* request = nullptr;
  if (peer.mode == TransportMode::kRma) {
    param.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
    param.memh = pool.memh;
    request = ucp_put_nbx(peer.ep, pool.base + first.local_offset, first.length,
                          peer.remote_base + first.remote_offset, peer.rkey, &param);
    Track(request, ctx);
    return;
  }
  DataMsg header;
  header.peer_id = peer_id;
  header.transfer = transfer_id;
  header.pool = peer.remote_pool;
  header.op_count = static_cast<std::uint32_t>(transfer.groups.size());
  header.regions = transfer.plan.regions;
  header.tag = transfer.tag;
  header.bytes = transfer.plan.bytes;
  for (std::uint32_t i = group.first; i < group.first + group.count; ++i) {
    const CopyOp& op = transfer.plan.ops[i];
    header.segments.push_back({op.remote_offset, op.length});
    ctx->iov.push_back({pool.base + op.local_offset, op.length});
  }
  ctx->header = Encode(header);
  param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_AM_SEND_FLAG_REPLY;
  if (group.count == 1) {
    param.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
    param.memh = pool.memh;
    request = ucp_am_send_nbx(peer.ep, kAmData, ctx->header.data(), ctx->header.size(),
                              ctx->iov[0].buffer, ctx->iov[0].length, &param);
  } else {
    param.op_attr_mask |= UCP_OP_ATTR_FIELD_DATATYPE;
    param.datatype = ucp_dt_make_iov();
    request = ucp_am_send_nbx(peer.ep, kAmData, ctx->header.data(), ctx->header.size(),
                              ctx->iov.data(), ctx->iov.size(), &param);
  }
  Track(request, ctx);
}

void UcxAgent::OnDataOpDone(OpCtx* ctx, ucs_status_t status) {
  auto pit = loop_peers_.find(ctx->peer);
  if (pit != loop_peers_.end()) --pit->second.ops_in_flight;
  auto it = loop_transfers_.find(ctx->transfer);
  if (it == loop_transfers_.end() || pit == loop_peers_.end()) return;  // ended meanwhile
  LoopTransfer& t = it->second;
  if (status != UCS_OK) {
    FailTransfer(ctx->transfer,
                 UcsStatus(absl::StrCat(pit->second.mode == TransportMode::kRma ? "put" : "send",
                                        " to ", pit->second.address),
                           status));
    return;
  }
  ++t.groups_done;
  if (t.groups_done < t.groups.size()) return;
  if (pit->second.mode == TransportMode::kMessages) {
    t.phase = Phase::kAwaitAck;  // the target acks once every message landed
    return;
  }
  // RMA: make the puts visible at the target, then tell it (Done).
  t.phase = Phase::kFlushing;
  OpCtx* flush = NewOp(OpCtx::Kind::kFlush);
  flush->peer = ctx->peer;
  flush->transfer = ctx->transfer;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &SendCallback;
  param.user_data = flush;
  Track(ucp_ep_flush_nbx(pit->second.ep, &param), flush);
}

void UcxAgent::OnFlushDone(OpCtx* ctx, ucs_status_t status) {
  auto it = loop_transfers_.find(ctx->transfer);
  auto pit = loop_peers_.find(ctx->peer);
  if (it == loop_transfers_.end() || pit == loop_peers_.end()) return;
  if (status != UCS_OK) {
    FailTransfer(ctx->transfer, UcsStatus(absl::StrCat("flush to ", pit->second.address), status));
    return;
  }
  LoopTransfer& t = it->second;
  t.phase = Phase::kAwaitAck;
  DataMsg done;
  done.peer_id = ctx->peer;
  done.transfer = ctx->transfer;
  done.pool = pit->second.remote_pool;
  done.op_count = static_cast<std::uint32_t>(t.groups.size());
  done.regions = t.plan.regions;
  done.tag = t.tag;
  done.bytes = t.plan.bytes;
  controls_.push_back({false, ctx->peer, kAmDone, Encode(done)});
}

void UcxAgent::OnAck(std::uint64_t peer, std::uint64_t transfer, absl::Status status) {
  auto it = loop_transfers_.find(transfer);
  if (it == loop_transfers_.end() || it->second.peer != peer) return;
  PublishTransfer(transfer, status.ok() ? TransferState::Done() : TransferState::Failed(status));
  loop_transfers_.erase(it);
}

bool UcxAgent::SendControls() {
  bool any = false;
  while (!controls_.empty()) {
    Control c = std::move(controls_.front());
    controls_.pop_front();
    ucp_ep_h ep = nullptr;
    if (c.server) {
      auto it = conns_.find(c.id);
      if (it != conns_.end()) ep = it->second.ep;
    } else {
      auto it = loop_peers_.find(c.id);
      if (it != loop_peers_.end()) ep = it->second.ep;
    }
    if (ep == nullptr) continue;  // its endpoint is gone
    OpCtx* ctx = NewOp(OpCtx::Kind::kControl);
    ctx->peer = c.server ? 0 : c.id;
    ctx->conn = c.server ? c.id : 0;
    ctx->header = std::move(c.header);
    ucp_request_param_t param{};
    param.op_attr_mask =
        UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    param.cb.send = &SendCallback;
    param.user_data = ctx;
    param.flags = c.server ? 0 : UCP_AM_SEND_FLAG_REPLY;
    Track(ucp_am_send_nbx(ep, c.am_id, ctx->header.data(), ctx->header.size(), nullptr, 0,
                          &param),
          ctx);
    any = true;
  }
  return any;
}

}  // namespace sirocco::transfer::ucx
