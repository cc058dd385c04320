// UcxAgent's receiving side, on the progress thread: the listener accepts
// connections, Hello is checked against the target pool, Data payloads are
// received straight into the pool, Done (RMA) and the last Data message
// (messages mode) produce a WriteNotice and an Ack. Also dispatches the
// replies a sender receives (HelloReply, Ack).
#include <cstring>

#include "absl/strings/str_cat.h"
#include "transfer/ucx/agent.h"

namespace sirocco::transfer::ucx {
namespace {

constexpr std::size_t kMaxRememberedCancels = 1024;
constexpr std::size_t kMaxReplyMessage = 512;

}  // namespace

void UcxAgent::ConnCallback(ucp_conn_request_h request, void* arg) {
  static_cast<UcxAgent*>(arg)->AcceptConn(request);
}

void UcxAgent::AcceptConn(ucp_conn_request_h request) {
  const std::uint64_t id = next_conn_++;
  auto& ep_ctx = ep_ctxs_.emplace_back(std::make_unique<EpCtx>(EpCtx{this, true, id}));
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLER |
                      UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  params.conn_request = request;
  params.err_handler.cb = &EpErrorCallback;
  params.err_handler.arg = ep_ctx.get();
  params.err_mode = UCP_ERR_HANDLING_MODE_NONE;  // must match the client's (see DoConnect)
  ucp_ep_h ep = nullptr;
  if (ucp_ep_create(worker_, &params, &ep) != UCS_OK) return;  // the client sees a failure
  conns_[id].ep = ep;
  conn_by_ep_[ep] = id;
}

void UcxAgent::ConnLost(std::uint64_t conn_id) {
  auto it = conns_.find(conn_id);
  if (it == conns_.end()) return;
  // A partial transfer never produces a notice. Rendezvous receives from a
  // dead sender would wait forever: cancel them (their completions then find
  // no connection and are ignored).
  for (OpCtx* op : live_ops_) {
    if (op->kind == OpCtx::Kind::kRecv && op->conn == conn_id && op->request != nullptr) {
      ucp_request_cancel(worker_, op->request);
    }
  }
  std::erase_if(controls_, [&](const Control& c) { return c.server && c.id == conn_id; });
  CloseEp(it->second.ep, /*force=*/true);
  conns_.erase(it);
}

ucs_status_t UcxAgent::OnAm(unsigned am_id, const void* header, std::size_t header_length,
                            void* data, std::size_t length, const ucp_am_recv_param_t* param) {
  const std::string_view h(static_cast<const char*>(header), header_length);
  if (am_id == kAmHelloReply || am_id == kAmAck) {
    absl::StatusOr<ReplyMsg> reply = DecodeReply(h);
    if (!reply.ok()) return UCS_OK;  // garbage from a peer: ignore
    // Handled outside the callback: a refusal closes this very endpoint.
    deferred_.push_back([this, am_id, r = *std::move(reply)] {
      if (am_id == kAmHelloReply) {
        OnHelloReply(r);
      } else {
        OnAck(r.peer_id, r.transfer,
              r.code == 0 ? absl::OkStatus()
                          : absl::Status(static_cast<absl::StatusCode>(r.code),
                                         absl::StrCat("target: ", r.message)));
      }
    });
    return UCS_OK;
  }
  // Sender → target messages carry a reply endpoint: it names the connection.
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) == 0) return UCS_OK;
  auto cit = conn_by_ep_.find(param->reply_ep);
  if (cit == conn_by_ep_.end()) return UCS_OK;
  const std::uint64_t conn_id = cit->second;
  switch (am_id) {
    case kAmHello:
      OnHello(conn_id, h);
      return UCS_OK;
    case kAmData:
      return OnData(conn_id, h, data, length, param);
    case kAmDone:
      OnDone(conn_id, h);
      return UCS_OK;
    case kAmCancel:
      OnCancelMsg(conn_id, h);
      return UCS_OK;
    default:
      return UCS_OK;
  }
}

void UcxAgent::Reply(std::uint64_t conn_id, unsigned am_id, std::uint64_t peer,
                     std::uint64_t transfer, const absl::Status& status) {
  ReplyMsg reply;
  reply.peer_id = peer;
  reply.transfer = transfer;
  reply.code = static_cast<std::int32_t>(status.code());
  reply.message = std::string(status.message().substr(0, kMaxReplyMessage));
  controls_.push_back({true, conn_id, am_id, Encode(reply)});
}

void UcxAgent::OnHello(std::uint64_t conn_id, std::string_view header) {
  absl::StatusOr<HelloMsg> hello = DecodeHello(header);
  if (!hello.ok()) {
    // The peer id is unknown when the header is unreadable; reply anyway so a
    // same-version sender fails fast rather than at its connect timeout.
    Reply(conn_id, kAmHelloReply, 0, 0, hello.status());
    return;
  }
  Conn& conn = conns_[conn_id];
  conn.sender_agent = hello->sender_agent;
  absl::Status status;
  auto pit = loop_pools_.find(hello->target_pool);
  if (pit == loop_pools_.end()) {
    status = absl::NotFoundError(
        absl::StrCat("pool ", hello->target_pool, " is not registered at the target"));
  } else {
    // The target's own view: its pool is "here", the sender is "the peer".
    status = CheckCompatible(pit->second.layout, hello->layout);
  }
  Reply(conn_id, kAmHelloReply, hello->peer_id, 0, status);
}

ucs_status_t UcxAgent::OnData(std::uint64_t conn_id, std::string_view header, void* data,
                              std::size_t length, const ucp_am_recv_param_t* param) {
  absl::StatusOr<DataMsg> msg = DecodeData(header);
  if (!msg.ok()) return UCS_OK;
  Conn& conn = conns_.at(conn_id);
  if (conn.cancelled.contains(msg->transfer)) return UCS_OK;  // dropped (rendezvous: not fetched)
  Incoming& in = conn.incoming[msg->transfer];
  if (in.expected == 0) {
    in.peer_id = msg->peer_id;
    in.pool = msg->pool;
    in.expected = msg->op_count;
    in.regions = msg->regions;
    in.tag = msg->tag;
    in.bytes = msg->bytes;
  }
  auto pit = loop_pools_.find(msg->pool);
  std::uint64_t total = 0;
  if (pit == loop_pools_.end()) {
    in.error = absl::NotFoundError(absl::StrCat("pool ", msg->pool, " is not registered"));
  } else {
    for (const Segment& seg : msg->segments) {
      if (seg.offset > pit->second.bytes || seg.length > pit->second.bytes - seg.offset) {
        in.error = absl::OutOfRangeError(absl::StrCat(
            "write of ", seg.length, " bytes at offset ", seg.offset, " overruns pool ",
            msg->pool, " (", pit->second.bytes, " bytes)"));
      }
      total += seg.length;
    }
    if (in.error.ok() && (msg->segments.empty() || total != length)) {
      in.error = absl::InvalidArgumentError(absl::StrCat(
          "data message of ", length, " bytes names segments of ", total, " bytes"));
    }
  }
  if (!in.error.ok()) {
    ++in.landed;  // counted, not stored
    MaybeCompleteIncoming(conn_id, conn, msg->transfer);
    return UCS_OK;
  }
  char* const base = pit->second.base;
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) == 0 && options_.pool_in_device_memory) {
    in.error = absl::FailedPreconditionError(
        "an eager KV message cannot be copied into a pool in GPU memory (UCX has no CUDA-aware lane to this peer)");
    ++in.landed;
    MaybeCompleteIncoming(conn_id, conn, msg->transfer);
    return UCS_OK;
  }
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) == 0) {
    // Eager: the payload is already here; scatter it.
    const char* src = static_cast<const char*>(data);
    for (const Segment& seg : msg->segments) {
      std::memcpy(base + seg.offset, src, seg.length);
      src += seg.length;
    }
    ++in.landed;
    MaybeCompleteIncoming(conn_id, conn, msg->transfer);
    return UCS_OK;
  }
  // Rendezvous: UCX fetches the payload straight into the pool regions.
  OpCtx* ctx = NewOp(OpCtx::Kind::kRecv);
  ctx->conn = conn_id;
  ctx->transfer = msg->transfer;
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  rp.cb.recv_am = &RecvCallback;
  rp.user_data = ctx;
  void* request = nullptr;
  if (msg->segments.size() == 1) {
    rp.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
    rp.memh = pit->second.memh;
    request = ucp_am_recv_data_nbx(worker_, data, base + msg->segments[0].offset, length, &rp);
  } else {
    for (const Segment& seg : msg->segments) ctx->iov.push_back({base + seg.offset, seg.length});
    rp.op_attr_mask |= UCP_OP_ATTR_FIELD_DATATYPE;
    rp.datatype = ucp_dt_make_iov();
    request = ucp_am_recv_data_nbx(worker_, data, ctx->iov.data(), ctx->iov.size(), &rp);
  }
  Track(request, ctx);
  return UCS_OK;
}

void UcxAgent::OnRecvDone(OpCtx* ctx, ucs_status_t status) {
  auto it = conns_.find(ctx->conn);
  if (it == conns_.end()) return;
  auto in = it->second.incoming.find(ctx->transfer);
  if (in == it->second.incoming.end()) return;  // cancelled meanwhile
  if (status != UCS_OK && in->second.error.ok()) {
    in->second.error = UcsStatus("receive into the pool", status);
  }
  ++in->second.landed;
  MaybeCompleteIncoming(ctx->conn, it->second, ctx->transfer);
}

void UcxAgent::MaybeCompleteIncoming(std::uint64_t conn_id, Conn& conn,
                                     std::uint64_t transfer) {
  auto it = conn.incoming.find(transfer);
  if (it == conn.incoming.end() || it->second.landed < it->second.expected) return;
  const Incoming in = it->second;
  conn.incoming.erase(it);
  if (in.error.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    notices_.push_back(WriteNotice{conn.sender_agent, TransferId{transfer}, PoolHandle{in.pool},
                                   in.tag, in.bytes, in.regions});
  }
  Reply(conn_id, kAmAck, in.peer_id, transfer, in.error);
}

void UcxAgent::OnDone(std::uint64_t conn_id, std::string_view header) {
  absl::StatusOr<DataMsg> msg = DecodeData(header);
  if (!msg.ok()) return;
  Conn& conn = conns_.at(conn_id);
  absl::Status status;
  if (!loop_pools_.contains(msg->pool)) {
    status = absl::NotFoundError(absl::StrCat("pool ", msg->pool, " is not registered"));
  } else {
    std::lock_guard<std::mutex> lock(mu_);
    notices_.push_back(WriteNotice{conn.sender_agent, TransferId{msg->transfer},
                                   PoolHandle{msg->pool}, msg->tag, msg->bytes, msg->regions});
  }
  Reply(conn_id, kAmAck, msg->peer_id, msg->transfer, status);
}

void UcxAgent::OnCancelMsg(std::uint64_t conn_id, std::string_view header) {
  absl::StatusOr<CancelMsg> msg = DecodeCancel(header);
  if (!msg.ok()) return;
  Conn& conn = conns_.at(conn_id);
  conn.incoming.erase(msg->transfer);
  if (conn.cancelled.insert(msg->transfer).second) {
    conn.cancelled_order.push_back(msg->transfer);
    if (conn.cancelled_order.size() > kMaxRememberedCancels) {
      conn.cancelled.erase(conn.cancelled_order.front());
      conn.cancelled_order.pop_front();
    }
  }
}

}  // namespace sirocco::transfer::ucx
