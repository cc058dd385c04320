// Region validation and coalescing, shared by every backend.
#include "transfer/write_plan.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sirocco::transfer {
namespace {

KvLayout Layout(std::uint32_t num_blocks) {
  KvLayout l;
  l.dtype_bytes = 2;
  l.num_layers = 3;
  l.num_blocks = num_blocks;
  l.block_size = 2;
  l.entry_bytes = 8;  // block_bytes 16
  return l;
}

TEST(WritePlanTest, CoalescesRunsContiguousOnBothSides) {
  const KvLayout local = Layout(10), remote = Layout(20);
  // Blocks 2,3,4 → 7,8,9 coalesce; 5 → 12 breaks the remote run; 6 → 13 joins it.
  auto plan = PlanWrite(local, LayerRegions(1, std::vector<std::int32_t>{2, 3, 4, 5, 6}), remote,
                        RemoteLayerRegions(1, std::vector<std::int32_t>{7, 8, 9, 12, 13}), 0);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->ops.size(), 2u);
  EXPECT_EQ(plan->ops[0].local_offset, local.RegionOffset(1, 2));
  EXPECT_EQ(plan->ops[0].remote_offset, remote.RegionOffset(1, 7));
  EXPECT_EQ(plan->ops[0].length, 48u);
  EXPECT_EQ(plan->ops[1].local_offset, local.RegionOffset(1, 5));
  EXPECT_EQ(plan->ops[1].remote_offset, remote.RegionOffset(1, 12));
  EXPECT_EQ(plan->ops[1].length, 32u);
  EXPECT_EQ(plan->bytes, 80u);
  EXPECT_EQ(plan->regions, 5u);
}

TEST(WritePlanTest, CoalescesAcrossLayersWhenPoolsAreAlike) {
  // The last block of layer 0 and block 0 of layer 1 are adjacent in both
  // pools when both have the same num_blocks.
  const KvLayout l = Layout(4);
  std::vector<Region> local = {{0, 2}, {0, 3}, {1, 0}};
  std::vector<RemoteRegion> remote = {{0, 2}, {0, 3}, {1, 0}};
  auto plan = PlanWrite(l, local, l, remote, 0);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->ops.size(), 1u);
  EXPECT_EQ(plan->ops[0].length, 48u);
}

TEST(WritePlanTest, MaxOpBytesCapsCoalescing) {
  const KvLayout l = Layout(10);
  auto plan = PlanWrite(l, LayerRegions(0, std::vector<std::int32_t>{0, 1, 2, 3, 4}), l,
                        RemoteLayerRegions(0, std::vector<std::int32_t>{0, 1, 2, 3, 4}), 32);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->ops.size(), 3u);  // 32 + 32 + 16
  EXPECT_EQ(plan->ops[2].length, 16u);
  std::uint64_t total = 0;
  for (const CopyOp& op : plan->ops) total += op.length;
  EXPECT_EQ(total, plan->bytes);
}

TEST(WritePlanTest, DifferentBlockBytesIsAMismatch) {
  KvLayout other = Layout(10);
  other.block_size = 4;
  auto plan = PlanWrite(Layout(10), std::vector<Region>{{0, 0}}, other,
                        std::vector<RemoteRegion>{{0, 0}}, 0);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace sirocco::transfer
