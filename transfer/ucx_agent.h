// The UCX transfer backend.
//
// One agent = one ucp_context + ucp_worker (single-threaded mode, driven only
// by the agent's progress thread) + a listener on host:port. A pool is
// ucp_mem_map'ed and its rkey packed into the TargetDescriptor. Connect opens
// a client-server endpoint to the target's listener and exchanges a Hello in
// which the target checks the sender's KvLayout against its pool.
//
// Moving bytes, per peer (TransportMode):
//   kRma      ucp_put_nbx of each coalesced region, ucp_ep_flush_nbx, then a
//             Done message; the target answers with an Ack.
//   kMessages each coalesced region is one active message whose header says
//             (pool, offset); the target receives the payload (rendezvous for
//             large ones) straight into pool + offset, then Acks.
//   kAuto     (default) decides per peer after wire-up, see ucx/lanes.h: RMA
//             when UCX has a native (non-tcp) RMA lane to the peer, messages
//             when tcp is all there is.
//
// Failure handling: endpoints use UCP_ERR_HANDLING_MODE_NONE, because UCX
// 1.13 drops the shared-memory transports from endpoints with PEER mode. The
// connection manager still reports a peer that disappears (the endpoint's
// error callback fires), and every transfer has a deadline, so a lost peer
// fails its transfers with UNAVAILABLE or DEADLINE_EXCEEDED, never hangs;
// the agent keeps serving other peers.
//
// Library code reads no environment variables; UCX itself still reads
// UCX_* variables, and `transports` below overrides UCX_TLS when set.
//
// Thread-safety: see transfer_agent.h.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transfer/fault_injector.h"
#include "transfer/transfer_agent.h"

namespace sirocco::transfer {

// UCX_TLS choices (typed, not free-form strings).
//
// Same-host peers get RMA over cma (process_vm_writev) with every profile
// but kTcp: UCX cannot put into user memory through posix/sysv, whose lanes
// then carry only active messages. Those lanes share one receive FIFO per
// worker, and a sender process killed half-way through writing a FIFO slot
// stalls that FIFO for good (seen with UCX 1.13: later same-host peers of
// the target cannot even connect). kCmaTcp keeps messages on tcp loopback
// and survives that; prefer it for same-host deployments.
enum class UcxTransports {
  kDefault,       // UCX's own choice (UCX_TLS from the environment, or "all")
  kSharedMemory,  // posix,sysv,cma,self + tcp, which the sockaddr connection
                  // manager needs; same-host peers then get shm lanes only
  kCmaTcp,        // cma,tcp,self: RMA over cma, messages over tcp
  kTcp,           // tcp,self
};
const char* UcxTransportsName(UcxTransports t);

struct UcxOptions {
  std::string listen_host = "127.0.0.1";  // IPv4 address to listen on
  std::uint16_t listen_port = 0;          // 0: the OS picks; descriptors carry the real one
  std::string advertise_host;             // address peers dial; empty: listen_host
  UcxTransports transports = UcxTransports::kDefault;
  TransportMode mode = TransportMode::kAuto;
  absl::Duration connect_timeout = absl::Seconds(10);
  absl::Duration transfer_timeout = absl::Seconds(60);  // WriteOptions may override
  std::uint64_t max_op_bytes = std::uint64_t{8} << 20;  // coalescing cap per put/message
  int max_ops_in_flight = 16;                           // per peer
  std::shared_ptr<FaultInjector> faults;                // tests only
  // The registered pool is GPU memory. UCX moves data into it itself (RMA,
  // rendezvous fetches); small eager messages, which would be copied on the
  // host, are refused and their transfer fails (the decode side then
  // prefills the prompt itself).
  bool pool_in_device_memory = false;
};

absl::StatusOr<std::unique_ptr<TransferAgent>> CreateUcxAgent(const UcxOptions& options);

}  // namespace sirocco::transfer
