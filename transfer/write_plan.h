// Turns a region list into byte-range copy operations: validates every
// region against both layouts, then coalesces runs that are contiguous on
// both sides into one operation (bounded by max_op_bytes). Shared by all
// backends so they accept and reject exactly the same writes.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "transfer/kv_layout.h"
#include "transfer/transfer_agent.h"

namespace sirocco::transfer {

struct CopyOp {
  std::uint64_t local_offset = 0;   // from the sender's pool base
  std::uint64_t remote_offset = 0;  // from the target's pool base
  std::uint64_t length = 0;
};

struct WritePlan {
  std::vector<CopyOp> ops;
  std::uint64_t bytes = 0;
  std::uint32_t regions = 0;
};

// `max_op_bytes` caps coalescing (0: no cap); a single region is never split.
absl::StatusOr<WritePlan> PlanWrite(const KvLayout& local_layout,
                                    std::span<const Region> local_regions,
                                    const KvLayout& remote_layout,
                                    std::span<const RemoteRegion> remote_regions,
                                    std::uint64_t max_op_bytes);

}  // namespace sirocco::transfer
