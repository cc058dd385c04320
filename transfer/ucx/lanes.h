// How TransportMode::kAuto decides for one peer, once its endpoint is wired
// up, from the lanes UCX chose (the text ucp_ep_print_info() prints) and
// from whether the target pool can be mapped into this process
// (ucp_rkey_ptr succeeds: shared memory UCX allocated, or xpmem):
//
//   RMA      when ucp_put would be native:
//            * the target pool is mappable and a shared-memory put lane
//              (sysv/posix) exists: a put is one memcpy into the mapping; or
//            * a put lane runs on an RDMA/IPC transport (rc, dc, ud,
//              cuda_ipc, ...; anything but tcp and the mm/cma family),
//              which registers arbitrary memory.
//   messages otherwise. UCX 1.13 then emulates put with active messages
//            (rma_am): over tcp at tens to hundreds of MB/s, and over
//            sysv/posix into caller-allocated (unmappable) memory at well
//            below what an active-message rendezvous reaches, since the
//            rendezvous fetches with cma or tcp zero-copy.
//
// Internal to the UCX backend; pure functions, tested on captured text.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "transfer/transfer_agent.h"

namespace sirocco::transfer::ucx {

struct EpLanes {
  std::vector<std::string> put;     // transports of the lanes ucp_put uses ("put[i]:" lines)
  std::vector<std::string> rma_bw;  // transports of the rendezvous zero-copy lanes
  std::string am;                   // the am lane's transport
};

EpLanes ParseEpInfo(std::string_view text);

// kRma / kMessages pass through; kAuto applies the rule above.
TransportMode ResolveMode(TransportMode requested, const EpLanes& lanes, bool target_mappable);

// For logs and PeerInfo: "rma:sysv", "rma:am-emulated/tcp", "am:tcp+rndv:cma".
std::string DescribeTransport(TransportMode resolved, const EpLanes& lanes,
                              bool target_mappable);

}  // namespace sirocco::transfer::ucx
