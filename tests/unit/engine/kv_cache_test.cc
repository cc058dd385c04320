#include "engine/kv_cache.h"

#include <set>

#include "gtest/gtest.h"

namespace sirocco::engine {
namespace {

TEST(KvPool, AllocatesFreesAndNeverLeaks) {
  auto pool = *KvPool::Create({2, 10, 4, 8});
  EXPECT_EQ(pool->num_free(), 10);
  auto a = *pool->Allocate(3);
  auto b = *pool->Allocate(7);
  std::set<std::int32_t> ids;
  for (auto x : a) ids.insert(x.value);
  for (auto x : b) ids.insert(x.value);
  EXPECT_EQ(ids.size(), 10u) << "blocks handed out twice";
  EXPECT_EQ(pool->Allocate(1).status().code(), absl::StatusCode::kResourceExhausted);
  pool->Free(a);
  EXPECT_EQ(pool->num_free(), 3);
  EXPECT_EQ(pool->Allocate(4).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool->num_free(), 3) << "a failed allocation took blocks";
  pool->Free(b);
  EXPECT_EQ(pool->num_free(), 10);
}

TEST(KvPool, RejectsBadOptions) {
  EXPECT_FALSE(KvPool::Create({0, 10, 4, 8}).ok());
  EXPECT_FALSE(KvPool::Create({2, 0, 4, 8}).ok());
  EXPECT_FALSE(KvPool::Create({2, 10, 0, 8}).ok());
}

TEST(KvPool, LayoutIsLayerBlockSlotEntry) {
  auto pool = *KvPool::Create({3, 5, 4, 6});
  // Each (layer, block) is one contiguous region of block_size * entry_dim.
  EXPECT_EQ(pool->entry(0, BlockId{1}, 0) - pool->entry(0, BlockId{0}, 0), 4 * 6);
  EXPECT_EQ(pool->entry(0, BlockId{0}, 1) - pool->entry(0, BlockId{0}, 0), 6);
  EXPECT_EQ(pool->entry(1, BlockId{0}, 0) - pool->entry(0, BlockId{0}, 0), 5 * 4 * 6);
  EXPECT_EQ(pool->bytes(), sizeof(float) * 3 * 5 * 4 * 6);
}

TEST(BlockTable, ReservesWholeBlocksAndReleasesOnDestruction) {
  auto pool = *KvPool::Create({1, 8, 4, 2});
  {
    BlockTable t(pool.get());
    ASSERT_TRUE(t.Reserve(5).ok());
    EXPECT_EQ(t.num_blocks(), 2);
    EXPECT_EQ(t.capacity(), 8);
    ASSERT_TRUE(t.Reserve(8).ok());
    EXPECT_EQ(t.num_blocks(), 2);
    ASSERT_TRUE(t.Reserve(9).ok());
    EXPECT_EQ(t.num_blocks(), 3);
    EXPECT_EQ(t.Reserve(100).code(), absl::StatusCode::kResourceExhausted);
    EXPECT_EQ(t.num_blocks(), 3);
    BlockTable moved = std::move(t);
    EXPECT_EQ(moved.num_blocks(), 3);
    EXPECT_EQ(pool->num_free(), 5);
  }
  EXPECT_EQ(pool->num_free(), 8);
}

TEST(KvPoolDeath, DoubleFreeIsABug) {
  auto pool = *KvPool::Create({1, 4, 4, 2});
  auto a = *pool->Allocate(1);
  pool->Free(a);
  EXPECT_DEATH(pool->Free(a), "freed twice");
}

}  // namespace
}  // namespace sirocco::engine
