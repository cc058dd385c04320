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

// ---------------------------------------------------------------- prefix cache

std::unique_ptr<KvPool> CachingPool(std::int64_t num_blocks, std::int64_t block_size = 2) {
  return *KvPool::Create(KvPoolOptions{
      .num_layers = 1, .num_blocks = num_blocks, .block_size = block_size, .entry_dim = 1, .prefix_caching = true});
}

// Allocates one block per full block of `tokens` and publishes them as one
// sequence would; returns the blocks (held once).
std::vector<BlockId> PublishChain(KvPool& pool, const std::vector<std::int32_t>& tokens) {
  const auto bs = static_cast<std::size_t>(pool.block_size());
  std::vector<BlockId> blocks = *pool.Allocate(static_cast<std::int64_t>(tokens.size() / bs));
  PrefixKey key = PrefixKey::Root();
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    key = pool.Publish(key, blocks[i], std::span<const std::int32_t>(tokens).subspan(i * bs, bs));
  }
  return blocks;
}

TEST(PrefixCache, MatchesTheLongestRunOfWholeBlocksExactly) {
  auto pool = CachingPool(8);
  const std::vector<BlockId> chain = PublishChain(*pool, {1, 2, 3, 4, 5, 6});
  EXPECT_EQ(pool->num_cached(), 3);

  PrefixMatch m = pool->MatchPrefix(std::vector<std::int32_t>{1, 2, 3, 4, 5, 6, 7});
  EXPECT_EQ(m.blocks, chain);
  EXPECT_EQ(m.evictable, 0) << "the chain is still held";
  // A partial last block, a different token, a different start.
  EXPECT_EQ(pool->MatchPrefix(std::vector<std::int32_t>{1, 2, 3, 4, 5}).blocks.size(), 2u);
  EXPECT_EQ(pool->MatchPrefix(std::vector<std::int32_t>{1, 2, 3, 9, 5, 6}).blocks.size(), 1u);
  EXPECT_TRUE(pool->MatchPrefix(std::vector<std::int32_t>{3, 4, 5, 6}).blocks.empty())
      << "a block matches only after the same prefix";
  EXPECT_TRUE(pool->MatchPrefix(std::vector<std::int32_t>{1}).blocks.empty());
  pool->Free(chain);
}

TEST(PrefixCache, FreedPublishedBlocksStayFindableCountAsFreeAndAreEvictedLast) {
  auto pool = CachingPool(4);
  std::vector<BlockId> chain = PublishChain(*pool, {1, 2, 3, 4});  // 2 blocks
  std::vector<BlockId> plain = *pool->Allocate(1);                 // never published
  pool->Free(chain);
  pool->Free(plain);
  EXPECT_EQ(pool->num_free(), 4);
  EXPECT_EQ(pool->num_evictable(), 2);
  PrefixMatch m = pool->MatchPrefix(std::vector<std::int32_t>{1, 2, 3, 4});
  EXPECT_EQ(m.blocks, chain);
  EXPECT_EQ(m.evictable, 2);

  // Unpublished free blocks go first; then the evictable chain, its tail first.
  std::vector<BlockId> a = *pool->Allocate(2);
  EXPECT_EQ(pool->MatchPrefix(std::vector<std::int32_t>{1, 2, 3, 4}).blocks.size(), 2u);
  std::vector<BlockId> b = *pool->Allocate(1);
  EXPECT_EQ(b[0], chain[1]) << "the chain's tail is evicted before its head";
  EXPECT_EQ(pool->MatchPrefix(std::vector<std::int32_t>{1, 2, 3, 4}).blocks.size(), 1u);
  EXPECT_EQ(pool->num_cached(), 1);
  pool->Free(a);
  pool->Free(b);
  EXPECT_EQ(pool->num_free(), 4);
}

TEST(PrefixCache, SharedBlocksLeaveTheFreeCountAndComeBackWithTheLastHolder) {
  auto pool = CachingPool(4);
  std::vector<BlockId> chain = PublishChain(*pool, {1, 2, 3, 4});
  pool->Free(chain);
  PrefixMatch m = pool->MatchPrefix(std::vector<std::int32_t>{1, 2, 3, 4});
  BlockTable first(pool.get());
  first.Share(m.blocks);
  EXPECT_EQ(pool->num_free(), 2) << "shared blocks are held again";
  {
    BlockTable second(pool.get());
    second.Share(pool->MatchPrefix(std::vector<std::int32_t>{1, 2, 9}).blocks);
    EXPECT_EQ(second.num_blocks(), 1);
    ASSERT_TRUE(second.Reserve(4).ok());
    EXPECT_EQ(pool->num_free(), 1);
    // Everything else is held: the shared blocks cannot be evicted.
    EXPECT_EQ(pool->Allocate(2).status().code(), absl::StatusCode::kResourceExhausted);
  }
  EXPECT_EQ(pool->num_free(), 2) << "the first table still holds both";
  first.Release();
  EXPECT_EQ(pool->num_free(), 4);
  EXPECT_EQ(pool->num_evictable(), 2);
}

TEST(PrefixCache, TheSameContentIsPublishedOnceAndItsKeyContinuesTheChain) {
  auto pool = CachingPool(6);
  std::vector<BlockId> a = PublishChain(*pool, {1, 2});
  std::vector<BlockId> b = *pool->Allocate(2);
  const PrefixKey key = pool->Publish(PrefixKey::Root(), b[0], std::vector<std::int32_t>{1, 2});
  EXPECT_EQ(pool->num_cached(), 1) << "a duplicate stays private";
  EXPECT_EQ(key, pool->MatchPrefix(std::vector<std::int32_t>{1, 2}).key);
  // The duplicate's successor is published after the existing entry.
  (void)pool->Publish(key, b[1], std::vector<std::int32_t>{3, 4});
  PrefixMatch m = pool->MatchPrefix(std::vector<std::int32_t>{1, 2, 3, 4});
  ASSERT_EQ(m.blocks.size(), 2u);
  EXPECT_EQ(m.blocks[0], a[0]);
  EXPECT_EQ(m.blocks[1], b[1]);
  pool->Free(a);
  pool->Free(b);
  EXPECT_EQ(pool->num_free(), 6);
  EXPECT_EQ(pool->num_evictable(), 2) << "the private duplicate went back to the free list";
}

TEST(PrefixCache, BlocksAfterAnEvictedOneAreNeverFoundAgain) {
  auto pool = CachingPool(3);
  std::vector<BlockId> chain = PublishChain(*pool, {1, 2, 3, 4});
  // Free the head only (held once more by nobody); keep the tail held.
  pool->Free({chain[0]});
  std::vector<BlockId> other = *pool->Allocate(2);  // the unpublished free block, then the evicted head
  EXPECT_EQ(other[1], chain[0]);
  // Republish the head's block id with other content: the old tail must not
  // be reachable through it, though its parent's block id is the same.
  const PrefixKey key = pool->Publish(PrefixKey::Root(), other[1], std::vector<std::int32_t>{1, 2});
  EXPECT_NE(key, PrefixKey::Broken());
  PrefixMatch m = pool->MatchPrefix(std::vector<std::int32_t>{1, 2, 3, 4});
  ASSERT_EQ(m.blocks.size(), 1u) << "the tail was published after the evicted entry";
  EXPECT_EQ(m.blocks[0], other[1]);
  pool->Free({chain[1]});
  pool->Free(other);
  EXPECT_EQ(pool->num_free(), 3);
}

TEST(PrefixCache, WithoutPrefixCachingNothingIsPublishedOrFound) {
  auto pool = *KvPool::Create({1, 4, 2, 1});
  std::vector<BlockId> chain = PublishChain(*pool, {1, 2, 3, 4});
  EXPECT_EQ(pool->num_cached(), 0);
  EXPECT_TRUE(pool->MatchPrefix(std::vector<std::int32_t>{1, 2, 3, 4}).blocks.empty());
  pool->Free(chain);
  EXPECT_EQ(pool->num_evictable(), 0);
}

TEST(PrefixCacheDeath, SharingAFreeUnpublishedBlockIsABug) {
  auto pool = CachingPool(2);
  std::vector<BlockId> b = *pool->Allocate(1);
  pool->Free(b);
  EXPECT_DEATH(pool->Share(b), "not published");
}

}  // namespace
}  // namespace sirocco::engine
