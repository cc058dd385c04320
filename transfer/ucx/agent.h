// UcxAgent: the UCX implementation of TransferAgent (public face:
// transfer/ucx_agent.h). Internal to transfer/.
//
// Two kinds of state, kept apart on purpose:
//   * "shared" state (pools, peers, transfer states, notices, commands) is
//     guarded by mu_ and read by API threads;
//   * "loop" state (every UCX handle, in-flight operations, receive
//     bookkeeping) belongs to the progress thread alone and has no lock.
// API threads change loop state only by queueing a command for the progress
// thread; the progress thread publishes results into shared state.
//
// Files: agent.cc (API side, lifetime), progress.cc (the loop, completions,
// pools), send.cc (connect, issue, flush, acks, deadlines), receive.cc
// (listener, incoming messages).
#pragma once

#include <ucp/api/ucp.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transfer/transfer_agent.h"
#include "transfer/ucx/messages.h"
#include "transfer/ucx_agent.h"
#include "transfer/write_plan.h"

namespace sirocco::transfer::ucx {

// A UCX failure as a Status: UNAVAILABLE when the peer is unreachable or
// gone, INTERNAL otherwise; the message names `what` and UCX's reason.
absl::Status UcsStatus(const std::string& what, ucs_status_t status);

class UcxAgent final : public TransferAgent {
 public:
  static absl::StatusOr<std::unique_ptr<TransferAgent>> Create(const UcxOptions& options);
  ~UcxAgent() override;

  BackendKind backend() const override { return BackendKind::kUcx; }
  Capabilities capabilities() const override {
    return {.one_sided = true, .device_memory = false};
  }
  std::uint64_t agent_id() const override { return id_; }
  absl::StatusOr<PoolHandle> RegisterPool(void* base, std::size_t bytes,
                                          const KvLayout& layout) override;
  absl::StatusOr<AllocatedPool> AllocatePool(const KvLayout& layout) override;
  absl::Status UnregisterPool(PoolHandle pool) override;
  absl::StatusOr<TargetDescriptor> LocalDescriptor(PoolHandle pool) const override;
  absl::StatusOr<PeerHandle> Connect(PoolHandle local_pool,
                                     const TargetDescriptor& target) override;
  absl::StatusOr<PeerInfo> GetPeerInfo(PeerHandle peer) const override;
  absl::StatusOr<TransferId> PostWrite(PeerHandle peer, std::span<const Region> local_regions,
                                       std::span<const RemoteRegion> remote,
                                       const WriteOptions& options) override;
  TransferState Poll(TransferId id) override;
  absl::Status Flush(PeerHandle peer, absl::Time deadline) override;
  absl::Status Cancel(TransferId id) override;
  absl::Status Release(PeerHandle peer) override;
  std::vector<WriteNotice> CompletedWrites() override;

 private:
  explicit UcxAgent(const UcxOptions& options);
  absl::Status Init();

  // ===================== shared state (mu_) =====================
  enum class PeerPhase { kConnecting, kReady, kLost };
  struct SharedPool {
    char* base = nullptr;  // for AllocatePool: set by the loop once mapped
    std::size_t bytes = 0;
    KvLayout layout;
    bool mapped = false;
    absl::Status map_status;  // set by the loop once mapping ended
    std::string rkey;
  };
  struct SharedPeer {
    PeerPhase phase = PeerPhase::kConnecting;
    absl::Status status;  // why the peer is lost
    PeerInfo info;
    std::uint64_t local_pool = 0;
    KvLayout local_layout;
    TargetDescriptor remote;
  };
  struct SharedTransfer {
    std::uint64_t peer = 0;
    TransferState state = TransferState::Pending();
    bool cancelled = false;
  };

  // Queues `command` for the progress thread and wakes it.
  void Enqueue(std::function<void()> command);

  // ===================== loop state (progress thread) =====================
  struct LoopPool {
    char* base = nullptr;
    std::size_t bytes = 0;
    KvLayout layout;
    ucp_mem_h memh = nullptr;
  };
  struct LoopPeer {
    ucp_ep_h ep = nullptr;
    ucp_rkey_h rkey = nullptr;
    std::string rkey_bytes;
    TransportMode mode = TransportMode::kAuto;
    bool ready = false;
    std::string address;
    std::uint64_t remote_base = 0;
    std::uint64_t remote_pool = 0;
    std::uint64_t local_pool = 0;
    int ops_in_flight = 0;
    std::deque<std::uint64_t> queue;  // transfers with operations left to issue
  };
  enum class Phase { kDelayed, kIssuing, kFlushing, kAwaitAck };
  // One put (RMA) or one message (gathering plan.ops[first, first + count)).
  struct OpGroup {
    std::uint32_t first = 0;
    std::uint32_t count = 0;
  };
  struct LoopTransfer {
    std::uint64_t peer = 0;
    WritePlan plan;
    std::vector<OpGroup> groups;  // set when the transfer starts
    std::size_t next_group = 0;
    std::size_t groups_done = 0;
    std::uint64_t tag = 0;
    absl::Time start_at;
    absl::Time deadline;
    absl::Duration timeout;
    Phase phase = Phase::kDelayed;
  };
  struct Incoming {
    std::uint64_t peer_id = 0;  // the sender's PeerHandle, echoed in the Ack
    std::uint64_t pool = 0;
    std::uint32_t expected = 0;
    std::uint32_t landed = 0;
    std::uint32_t regions = 0;
    std::uint64_t tag = 0;
    std::uint64_t bytes = 0;
    absl::Status error;
  };
  struct Conn {
    ucp_ep_h ep = nullptr;
    std::uint64_t sender_agent = 0;
    std::map<std::uint64_t, Incoming> incoming;  // by the sender's transfer id
    std::set<std::uint64_t> cancelled;           // recent cancels (bounded)
    std::deque<std::uint64_t> cancelled_order;
  };
  // Everything a UCX callback needs; heap-allocated per operation.
  struct OpCtx {
    enum class Kind { kData, kFlush, kControl, kRecv };
    UcxAgent* agent = nullptr;
    Kind kind = Kind::kData;
    std::uint64_t peer = 0;      // client side
    std::uint64_t conn = 0;      // server side
    std::uint64_t transfer = 0;
    std::string header;          // must outlive the send
    std::vector<ucp_dt_iov_t> iov;  // gather/scatter list, same lifetime
    void* request = nullptr;     // the UCX request while in flight
  };
  struct EpCtx {
    UcxAgent* agent = nullptr;
    bool server = false;
    std::uint64_t id = 0;  // peer or conn id
  };
  struct Event {
    OpCtx* op = nullptr;  // an operation completed...
    EpCtx* ep = nullptr;  // ...or an endpoint failed
    ucs_status_t status = UCS_OK;
  };
  struct Control {
    bool server = false;
    std::uint64_t id = 0;  // peer or conn id
    unsigned am_id = 0;
    std::string header;
  };

  // progress.cc
  void Loop();
  void RunCommands(std::deque<std::function<void()>>& commands);
  bool ProcessEvents();
  bool PumpPeers();
  bool SendControls();
  void CheckDeadlines(absl::Time now);
  bool HasLiveWork() const;
  bool ReapClosing(bool all);
  void Shutdown();
  // base == nullptr: allocate (UCP_MEM_MAP_ALLOCATE).
  void DoMapPool(std::uint64_t id, char* base, std::size_t bytes, const KvLayout& layout);
  absl::StatusOr<PoolHandle> MapPool(char* base, std::size_t bytes, const KvLayout& layout);
  void DoUnmapPool(std::uint64_t id);
  void DoConnect(std::uint64_t id, const TargetDescriptor& target, std::uint64_t local_pool);
  void DoStartTransfer(std::uint64_t id, LoopTransfer transfer);
  void DoCancel(std::uint64_t id);  // stops issuing; tells a messages-mode target
  void DoClosePeer(std::uint64_t id);
  void OnHelloReply(const ReplyMsg& reply);
  void OnAck(std::uint64_t peer, std::uint64_t transfer, absl::Status status);
  void IssueGroup(std::uint64_t peer_id, LoopPeer& peer, std::uint64_t transfer_id,
                  LoopTransfer& transfer);
  void OnDataOpDone(OpCtx* ctx, ucs_status_t status);
  void OnFlushDone(OpCtx* ctx, ucs_status_t status);
  void PeerLost(std::uint64_t id, absl::Status why);
  void FailTransfer(std::uint64_t id, absl::Status why);
  void CloseEp(ucp_ep_h ep, bool force);
  void Track(void* request, OpCtx* ctx);
  OpCtx* NewOp(OpCtx::Kind kind);
  void FreeOp(OpCtx* ctx);
  void PublishTransfer(std::uint64_t id, TransferState state);
  void PublishPeer(std::uint64_t id, PeerPhase phase, absl::Status status, PeerInfo info);

  // receive.cc
  void AcceptConn(ucp_conn_request_h request);
  ucs_status_t OnAm(unsigned am_id, const void* header, std::size_t header_length, void* data,
                    std::size_t length, const ucp_am_recv_param_t* param);
  void OnHello(std::uint64_t conn_id, std::string_view header);
  ucs_status_t OnData(std::uint64_t conn_id, std::string_view header, void* data,
                      std::size_t length, const ucp_am_recv_param_t* param);
  void OnDone(std::uint64_t conn_id, std::string_view header);
  void OnCancelMsg(std::uint64_t conn_id, std::string_view header);
  void OnRecvDone(OpCtx* ctx, ucs_status_t status);
  void MaybeCompleteIncoming(std::uint64_t conn_id, Conn& conn, std::uint64_t transfer);
  void ConnLost(std::uint64_t conn_id);
  void Reply(std::uint64_t conn_id, unsigned am_id, std::uint64_t peer,
             std::uint64_t transfer, const absl::Status& status);

  // Static trampolines for UCX callbacks.
  static void SendCallback(void* request, ucs_status_t status, void* user_data);
  static void RecvCallback(void* request, ucs_status_t status, std::size_t length,
                           void* user_data);
  static void EpErrorCallback(void* arg, ucp_ep_h ep, ucs_status_t status);
  static void ConnCallback(ucp_conn_request_h request, void* arg);
  template <unsigned kId>
  static ucs_status_t AmCallback(void* arg, const void* header, std::size_t header_length,
                                 void* data, std::size_t length,
                                 const ucp_am_recv_param_t* param) {
    return static_cast<UcxAgent*>(arg)->OnAm(kId, header, header_length, data, length, param);
  }

  // ===================== members =====================
  const UcxOptions options_;
  const std::uint64_t id_;
  std::string address_;  // "host:port" peers dial
  std::size_t max_segments_ = 1;  // per message, from the worker's max AM header

  mutable std::mutex mu_;
  std::condition_variable work_cv_;   // the progress thread idles here
  std::condition_variable state_cv_;  // Connect/RegisterPool/Flush wait here
  std::deque<std::function<void()>> commands_;
  bool stopping_ = false;
  std::map<std::uint64_t, SharedPool> pools_;
  std::map<std::uint64_t, SharedPeer> peers_;
  std::map<std::uint64_t, SharedTransfer> transfers_;
  std::vector<WriteNotice> notices_;
  std::uint64_t next_pool_ = 1;
  std::uint64_t next_peer_ = 1;
  std::uint64_t next_transfer_ = 1;

  // Loop state.
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  ucp_listener_h listener_ = nullptr;
  std::map<std::uint64_t, LoopPool> loop_pools_;
  std::map<std::uint64_t, LoopPeer> loop_peers_;
  std::map<std::uint64_t, LoopTransfer> loop_transfers_;
  std::map<std::uint64_t, Conn> conns_;
  std::unordered_map<ucp_ep_h, std::uint64_t> conn_by_ep_;
  std::uint64_t next_conn_ = 1;
  std::vector<Event> events_;
  std::deque<Control> controls_;
  struct Closing {
    void* request = nullptr;
    absl::Time give_up;
  };
  std::vector<Closing> closing_;  // ep close requests in flight
  // Work that must not run inside a UCX callback (it may close endpoints).
  std::vector<std::function<void()>> deferred_;
  std::set<OpCtx*> live_ops_;
  std::vector<std::unique_ptr<EpCtx>> ep_ctxs_;
  std::uint64_t seen_drop_generation_ = 0;
  absl::Time next_deadline_check_;

  std::thread thread_;
};

}  // namespace sirocco::transfer::ucx
