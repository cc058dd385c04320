// TargetDescriptor: what a receiver publishes about one registered KV pool so
// that a sender can write into it. Services carry the Serialize() bytes in a
// protobuf `bytes` field (the router's KvTarget); nothing here knows protobuf.
//
// Thread-safety: plain values.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "transfer/kv_layout.h"

namespace sirocco::transfer {

enum class BackendKind : std::uint8_t {
  kInProcess = 1,  // memcpy between agents of one process
  kUcx = 2,        // UCX: RMA put or active messages, see ucx_agent.h
};
const char* BackendName(BackendKind kind);

struct TargetDescriptor {
  BackendKind backend = BackendKind::kInProcess;
  std::uint64_t agent_id = 0;      // random per agent instance
  std::uint64_t pool_id = 0;       // PoolHandle value at the target
  std::string address;             // UCX: listener "ip:port"; in-process: "inproc:<fabric id>"
  std::string rkey;                // UCX: ucp_rkey_pack() bytes; empty otherwise
  std::uint64_t base_address = 0;  // pool base in the target's address space
  std::uint64_t pool_bytes = 0;
  KvLayout layout;

  // Versioned little-endian encoding (magic "SKVD", format 1).
  std::string Serialize() const;
  // INVALID_ARGUMENT for bad magic, unknown format or backend, truncation,
  // trailing bytes, an invalid layout, or pool_bytes smaller than the layout.
  static absl::StatusOr<TargetDescriptor> Parse(std::string_view bytes);

  friend bool operator==(const TargetDescriptor&, const TargetDescriptor&) = default;
};

}  // namespace sirocco::transfer
