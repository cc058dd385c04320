// The UCX backend's control and data messages (active messages). Internal.
//
//   sender                                  target
//   Hello{layout, pool}            ─────►   checks pool + layout
//                                  ◄─────   HelloReply{status}
//   messages mode: Data{offset,len} × n ─►  receives each payload straight
//                                           into pool + offset
//   RMA mode: put × n, ep flush, Done ───►  (data already there)
//                                  ◄─────   Ack{status} once all n landed:
//                                           the target recorded a WriteNotice
//   Cancel ──────────────────────────────►  drops the partial transfer
//
// Ack closes every transfer, even over RMA: it is what makes kDone mean
// "visible at the target and noticed by it", and a dead target (whose shared
// memory would swallow puts silently) shows up as a missing Ack.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "transfer/kv_layout.h"

namespace sirocco::transfer::ucx {

enum AmId : unsigned {
  kAmHello = 11,
  kAmHelloReply = 12,
  kAmData = 13,  // payload = region bytes
  kAmDone = 14,  // RMA mode: all puts of a transfer are flushed
  kAmAck = 15,
  kAmCancel = 16,
};

inline constexpr std::uint32_t kProtocolMagic = 0x4b565853;  // "SXVK"
inline constexpr std::uint32_t kProtocolVersion = 1;

struct HelloMsg {
  std::uint64_t sender_agent = 0;
  std::uint64_t peer_id = 0;      // the sender's PeerHandle, echoed in replies
  std::uint64_t target_pool = 0;
  KvLayout layout;                // the sender's pool layout
};

// HelloReply and Ack.
struct ReplyMsg {
  std::uint64_t peer_id = 0;
  std::uint64_t transfer = 0;     // 0 for HelloReply
  std::int32_t code = 0;          // absl::StatusCode
  std::string message;
};

// Where a Data payload goes: consecutive payload bytes fill the segments in
// order (one message may gather several non-adjacent regions).
struct Segment {
  std::uint64_t offset = 0;  // from the target pool base
  std::uint64_t length = 0;
};

// Data and Done.
struct DataMsg {
  std::uint64_t peer_id = 0;
  std::uint64_t transfer = 0;
  std::uint64_t pool = 0;         // target pool
  std::uint32_t op_count = 0;     // Data messages (or puts) in this transfer
  std::uint32_t regions = 0;
  std::uint64_t tag = 0;
  std::uint64_t bytes = 0;        // the whole transfer
  std::vector<Segment> segments;  // Data only
};

// Encoded size of a DataMsg with `segments` segments.
constexpr std::size_t DataMsgBytes(std::size_t segments) { return 52 + 16 * segments; }

struct CancelMsg {
  std::uint64_t peer_id = 0;
  std::uint64_t transfer = 0;
};

std::string Encode(const HelloMsg& m);
std::string Encode(const ReplyMsg& m);
std::string Encode(const DataMsg& m);
std::string Encode(const CancelMsg& m);
absl::StatusOr<HelloMsg> DecodeHello(std::string_view bytes);
absl::StatusOr<ReplyMsg> DecodeReply(std::string_view bytes);
absl::StatusOr<DataMsg> DecodeData(std::string_view bytes);
absl::StatusOr<CancelMsg> DecodeCancel(std::string_view bytes);

}  // namespace sirocco::transfer::ucx
