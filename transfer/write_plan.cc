#include "transfer/write_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace sirocco::transfer {

std::vector<Region> LayerRegions(std::uint32_t layer, std::span<const std::int32_t> blocks) {
  std::vector<Region> out;
  out.reserve(blocks.size());
  for (std::int32_t b : blocks) out.push_back({layer, static_cast<std::uint32_t>(b)});
  return out;
}

std::vector<RemoteRegion> RemoteLayerRegions(std::uint32_t layer,
                                             std::span<const std::int32_t> blocks) {
  std::vector<RemoteRegion> out;
  out.reserve(blocks.size());
  for (std::int32_t b : blocks) out.push_back({layer, static_cast<std::uint32_t>(b)});
  return out;
}

const char* TransportModeName(TransportMode mode) {
  switch (mode) {
    case TransportMode::kAuto:
      return "auto";
    case TransportMode::kRma:
      return "rma";
    case TransportMode::kMessages:
      return "messages";
  }
  return "unknown";
}

namespace {

absl::Status CheckRegion(const char* list, std::size_t i, std::uint32_t layer,
                         std::uint32_t block, const KvLayout& layout) {
  if (layer >= layout.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat(list, "[", i, "].layer ", layer,
                                                   " is out of range [0, ", layout.num_layers,
                                                   ")"));
  }
  if (block >= layout.num_blocks) {
    return absl::InvalidArgumentError(absl::StrCat(list, "[", i, "].block ", block,
                                                   " is out of range [0, ", layout.num_blocks,
                                                   ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<WritePlan> PlanWrite(const KvLayout& local_layout,
                                    std::span<const Region> local_regions,
                                    const KvLayout& remote_layout,
                                    std::span<const RemoteRegion> remote_regions,
                                    std::uint64_t max_op_bytes) {
  if (local_regions.size() != remote_regions.size()) {
    return absl::InvalidArgumentError(absl::StrCat("local_regions has ", local_regions.size(),
                                                   " entries but remote_regions has ",
                                                   remote_regions.size()));
  }
  if (local_regions.empty()) return absl::InvalidArgumentError("the region list is empty");
  if (local_layout.block_bytes() != remote_layout.block_bytes()) {
    return absl::FailedPreconditionError(absl::StrCat("KV layout mismatch: block_bytes ",
                                                      local_layout.block_bytes(), " here, ",
                                                      remote_layout.block_bytes(), " at the peer"));
  }
  const std::uint64_t block_bytes = local_layout.block_bytes();

  WritePlan plan;
  std::vector<std::uint64_t> remote_offsets;
  remote_offsets.reserve(remote_regions.size());
  for (std::size_t i = 0; i < local_regions.size(); ++i) {
    const Region& l = local_regions[i];
    const RemoteRegion& r = remote_regions[i];
    if (absl::Status s = CheckRegion("local_regions", i, l.layer, l.block, local_layout); !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckRegion("remote_regions", i, r.layer, r.block, remote_layout);
        !s.ok()) {
      return s;
    }
    const CopyOp op{local_layout.RegionOffset(l.layer, l.block),
                    remote_layout.RegionOffset(r.layer, r.block), block_bytes};
    remote_offsets.push_back(op.remote_offset);
    CopyOp* last = plan.ops.empty() ? nullptr : &plan.ops.back();
    if (last != nullptr && last->local_offset + last->length == op.local_offset &&
        last->remote_offset + last->length == op.remote_offset &&
        (max_op_bytes == 0 || last->length + op.length <= max_op_bytes)) {
      last->length += op.length;
    } else {
      plan.ops.push_back(op);
    }
    plan.bytes += block_bytes;
  }
  plan.regions = static_cast<std::uint32_t>(local_regions.size());

  // Two writes of one remote region in one transfer would race each other.
  std::vector<std::uint64_t> sorted = remote_offsets;
  std::sort(sorted.begin(), sorted.end());
  auto dup = std::adjacent_find(sorted.begin(), sorted.end());
  if (dup != sorted.end()) {
    const std::size_t i = static_cast<std::size_t>(
        std::find(remote_offsets.begin(), remote_offsets.end(), *dup) - remote_offsets.begin());
    const std::size_t j = static_cast<std::size_t>(
        std::find(remote_offsets.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                  remote_offsets.end(), *dup) -
        remote_offsets.begin());
    return absl::InvalidArgumentError(absl::StrCat(
        "remote_regions[", j, "] repeats remote_regions[", i, "] (layer ",
        remote_regions[i].layer, ", block ", remote_regions[i].block, ")"));
  }
  return plan;
}

}  // namespace sirocco::transfer
