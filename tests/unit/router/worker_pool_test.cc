#include "router/worker_pool.h"

#include "gtest/gtest.h"

namespace sirocco::router {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1000);

// `n` token ids fixed by `seed`.
std::vector<std::int32_t> Tokens(int n, std::uint32_t seed) {
  std::vector<std::int32_t> out(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i)
    out[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((seed * 7919u + i * 104729u) % 50000u);
  return out;
}

WorkerLoad Load(std::int64_t free_blocks, std::int64_t running = 0, std::int64_t queued = 0) {
  WorkerLoad l;
  l.free_blocks = free_blocks;
  l.total_blocks = 100;
  l.running = running;
  l.prefill_tokens_queued = queued;
  l.prefix_caching = true;
  l.cached_blocks = 100;
  return l;
}

TEST(WorkerPool, NewWorkersAreUnusableUntilTheyReport) {
  WorkerPool pool;
  pool.Upsert({"d1:1"}, WorkerRole::kDecode);
  EXPECT_EQ(pool.PickDecode(1).status().code(), absl::StatusCode::kUnavailable);
  pool.ReportLoad({"d1:1"}, Load(10), kNow);
  EXPECT_EQ(pool.PickDecode(1)->address, "d1:1");
}

TEST(WorkerPool, DecodeGoesToMostFreeBlocksAndSpreadsBursts) {
  WorkerPool pool;
  pool.Upsert({"a:1"}, WorkerRole::kDecode);
  pool.Upsert({"b:1"}, WorkerRole::kDecode);
  pool.ReportLoad({"a:1"}, Load(50), kNow);
  pool.ReportLoad({"b:1"}, Load(40), kNow);
  EXPECT_EQ(pool.PickDecode(20)->address, "a:1");  // a: 50 -> 30 in flight-adjusted
  EXPECT_EQ(pool.PickDecode(20)->address, "b:1");  // b: 40 beats a's 30
  EXPECT_EQ(pool.PickDecode(20)->address, "a:1");  // a 30 vs b 20
  // Neither has 25 left: RESOURCE_EXHAUSTED, not UNAVAILABLE.
  EXPECT_EQ(pool.PickDecode(25).status().code(), absl::StatusCode::kResourceExhausted);
  pool.DoneDecode({"a:1"}, 40);
  EXPECT_EQ(pool.PickDecode(25)->address, "a:1");
}

TEST(WorkerPool, TiesBreakOnLoadThenId) {
  WorkerPool pool;
  for (const char* a : {"c:1", "a:1", "b:1"}) pool.Upsert({a}, WorkerRole::kDecode);
  pool.ReportLoad({"a:1"}, Load(10, 5), kNow);
  pool.ReportLoad({"b:1"}, Load(10, 1), kNow);
  pool.ReportLoad({"c:1"}, Load(10, 1), kNow);
  EXPECT_EQ(pool.PickDecode(0)->address, "b:1");
}

TEST(WorkerPool, DrainingUnhealthyAndStaleWorkersAreSkipped) {
  WorkerPool pool;
  pool.Upsert({"a:1"}, WorkerRole::kBoth);
  pool.Upsert({"b:1"}, WorkerRole::kBoth);
  pool.Upsert({"c:1"}, WorkerRole::kBoth);
  WorkerLoad draining = Load(90);
  draining.draining = true;
  pool.ReportLoad({"a:1"}, draining, kNow);
  pool.ReportLoad({"b:1"}, Load(80), kNow);
  pool.ReportLoad({"c:1"}, Load(10), kNow - absl::Seconds(30));
  pool.MarkUnhealthy({"b:1"});
  pool.ExpireStale(kNow, absl::Seconds(10));
  EXPECT_EQ(pool.PickDecode(1).status().code(), absl::StatusCode::kUnavailable);
  pool.ReportLoad({"c:1"}, Load(10), kNow);
  EXPECT_EQ(pool.PickDecode(1)->address, "c:1");
}

TEST(WorkerPool, PrefillByQueuedTokensWithExclusionForRetries) {
  WorkerPool pool;
  pool.Upsert({"p1:1"}, WorkerRole::kPrefill);
  pool.Upsert({"p2:1"}, WorkerRole::kPrefill);
  pool.Upsert({"d:1"}, WorkerRole::kDecode);
  pool.ReportLoad({"p1:1"}, Load(0, 0, 1000), kNow);
  pool.ReportLoad({"p2:1"}, Load(0, 0, 200), kNow);
  pool.ReportLoad({"d:1"}, Load(100), kNow);
  EXPECT_EQ(pool.PickPrefill(Tokens(900, 1), {})->address, "p2:1");  // p2 -> 1100 queued
  EXPECT_EQ(pool.PickPrefill(Tokens(10, 2), {})->address, "p1:1");   // 1000 < 1100
  EXPECT_EQ(pool.PickPrefill(Tokens(10, 3), {{"p1:1"}})->address, "p2:1");
  auto none = pool.PickPrefill(Tokens(10, 4), {{"p1:1"}, {"p2:1"}});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
  // A decode-only worker is never chosen for prefill.
  EXPECT_NE(std::string(none.status().message()).find("prefill"), std::string::npos);
}

TEST(WorkerPool, PrefillFollowsTheCachedPrefixUntilTheQueueOutweighsIt) {
  WorkerPool pool;
  pool.Upsert({"p1:1"}, WorkerRole::kPrefill);
  pool.Upsert({"p2:1"}, WorkerRole::kPrefill);
  pool.ReportLoad({"p1:1"}, Load(0, 0, 0), kNow);  // block size 16
  pool.ReportLoad({"p2:1"}, Load(0, 0, 0), kNow);
  const std::vector<std::int32_t> system = Tokens(640, 7);  // 40 blocks
  auto with_tail = [&](std::uint32_t seed) {
    std::vector<std::int32_t> p = system;
    const std::vector<std::int32_t> tail = Tokens(40, seed);
    p.insert(p.end(), tail.begin(), tail.end());
    return p;
  };
  // The first goes to p1 (a tie, broken by id). For the second, p1 holds the
  // prefix but has the first in its queue: 680 queued + 40 to compute = 720
  // against p2's 0 + 680.
  EXPECT_EQ(pool.PickPrefill(with_tail(1), {})->address, "p1:1");
  EXPECT_EQ(pool.PickPrefill(with_tail(2), {})->address, "p2:1");
  // Both now hold the prefix: the less loaded one wins, each computing 40.
  pool.ReportLoad({"p1:1"}, Load(0, 0, 300), kNow);
  pool.ReportLoad({"p2:1"}, Load(0, 0, 500), kNow);
  EXPECT_EQ(pool.PickPrefill(with_tail(3), {})->address, "p1:1");
  // A new prefix: p2 knows nothing of it either, so load decides...
  const std::vector<std::int32_t> other = Tokens(800, 9);
  pool.ReportLoad({"p1:1"}, Load(0, 0, 600), kNow);
  pool.ReportLoad({"p2:1"}, Load(0, 0, 0), kNow);
  EXPECT_EQ(pool.PickPrefill(other, {})->address, "p2:1");
  // ...and then the cache does: p2 queues 700, p1 600, but p2 computes 16
  // tokens of the same prompt (the last block) and p1 all 800.
  pool.ReportLoad({"p2:1"}, Load(0, 0, 700), kNow);
  EXPECT_EQ(pool.PickPrefill(other, {})->address, "p2:1");
  // A worker marked unhealthy is forgotten: it may return with an empty cache.
  pool.MarkUnhealthy({"p2:1"});
  pool.ReportLoad({"p2:1"}, Load(0, 0, 700), kNow);
  EXPECT_EQ(pool.PickPrefill(other, {})->address, "p1:1") << "p1: 600 + 800 against p2: 700 + 800";
}

TEST(WorkerPool, WithoutPrefixRoutingTheQueueAloneDecides) {
  for (bool routing : {true, false}) {
    WorkerPool pool;
    pool.set_prefix_routing(routing);
    pool.Upsert({"p1:1"}, WorkerRole::kPrefill);
    pool.Upsert({"p2:1"}, WorkerRole::kPrefill);
    pool.ReportLoad({"p1:1"}, Load(0, 0, 100), kNow);
    pool.ReportLoad({"p2:1"}, Load(0, 0, 0), kNow);
    const std::vector<std::int32_t> prompt = Tokens(400, 5);
    EXPECT_EQ(pool.PickPrefill(prompt, {})->address, "p2:1");
    pool.ReportLoad({"p2:1"}, Load(0, 0, 200), kNow);
    // p2 holds 384 of the 400 tokens: 200 + 16 beats p1's 100 + 400, unless
    // prefixes are not counted.
    EXPECT_EQ(pool.PickPrefill(prompt, {})->address, routing ? "p2:1" : "p1:1") << "routing " << routing;
  }
}

TEST(WorkerPool, ADecodeWorkersCacheIsWhatFinishedThere) {
  WorkerPool pool;
  pool.Upsert({"d1:1"}, WorkerRole::kDecode);
  pool.Upsert({"d2:1"}, WorkerRole::kDecode);
  pool.ReportLoad({"d1:1"}, Load(100), kNow);
  WorkerLoad no_cache = Load(100);
  no_cache.prefix_caching = false;
  pool.ReportLoad({"d2:1"}, no_cache, kNow);
  const std::vector<std::int32_t> held = Tokens(100, 3);  // 6 blocks of 16
  pool.RecordDecoded({"d1:1"}, held);
  pool.RecordDecoded({"d2:1"}, held);
  std::vector<std::int32_t> next = held;
  next.push_back(5);
  EXPECT_EQ(pool.CachedOnDecode({"d1:1"}, next), 96);
  EXPECT_EQ(pool.CachedOnDecode({"d1:1"}, std::span<const std::int32_t>(held).first(96)), 80)
      << "the last token is always computed";
  EXPECT_EQ(pool.CachedOnDecode({"d2:1"}, next), 0) << "a worker without a prefix cache holds nothing";
  EXPECT_EQ(pool.CachedOnDecode({"d1:1"}, Tokens(100, 4)), 0);
  WorkerLoad evicted = Load(100);
  evicted.cached_blocks = 2;  // the worker has evicted most of it since
  pool.ReportLoad({"d1:1"}, evicted, kNow);
  EXPECT_EQ(pool.CachedOnDecode({"d1:1"}, next), 32);
  pool.ReportLoad({"d1:1"}, Load(100), kNow);
  pool.set_prefix_routing(false);
  EXPECT_EQ(pool.CachedOnDecode({"d1:1"}, next), 0);
  pool.set_prefix_routing(true);
  pool.MarkUnhealthy({"d1:1"});
  pool.ReportLoad({"d1:1"}, Load(100), kNow);
  EXPECT_EQ(pool.CachedOnDecode({"d1:1"}, next), 0) << "forgotten with its health";
}

TEST(PrefixIndex, RemembersWholePrefixesUpToTheWorkersCapacity) {
  PrefixIndex index;
  const std::vector<std::int32_t> a = Tokens(64, 1);       // 4 blocks of 16
  std::vector<std::int32_t> b(a.begin(), a.begin() + 32);  // a's first 2 blocks, then its own
  const std::vector<std::int32_t> b_tail = Tokens(40, 2);
  b.insert(b.end(), b_tail.begin(), b_tail.end());
  const auto ha = PrefixIndex::BlockHashes(a, 16), hb = PrefixIndex::BlockHashes(b, 16);
  ASSERT_EQ(ha.size(), 4u);
  ASSERT_EQ(hb.size(), 4u) << "72 tokens: 4 full blocks, the partial fifth has no hash";
  EXPECT_EQ(ha[1], hb[1]);
  EXPECT_NE(ha[2], hb[2]);
  EXPECT_NE(PrefixIndex::BlockHashes(a, 8)[1], ha[0]) << "hashes depend on the block size";
  // The same block content after a different prefix is a different block.
  const std::vector<std::int32_t> shifted(a.begin() + 16, a.end());
  EXPECT_NE(PrefixIndex::BlockHashes(shifted, 16)[0], ha[1]);

  index.Record("w", ha, 4);
  EXPECT_EQ(index.Overlap("w", ha), 4);
  EXPECT_EQ(index.Overlap("w", hb), 2);
  EXPECT_EQ(index.Overlap("other", ha), 0);
  // Capacity 4: b's two new blocks push out a's last two (least recent, the
  // tail of a's prefix).
  index.Record("w", hb, 4);
  EXPECT_EQ(index.size("w"), 4);
  EXPECT_EQ(index.Overlap("w", hb), 4);
  EXPECT_EQ(index.Overlap("w", ha), 2);
  index.Forget("w");
  EXPECT_EQ(index.Overlap("w", hb), 0);
}

TEST(WorkerPool, RetainDropsWorkersDnsNoLongerReturns) {
  WorkerPool pool;
  pool.Upsert({"a:1"}, WorkerRole::kDecode);
  pool.Upsert({"b:1"}, WorkerRole::kDecode);
  pool.Retain({{"b:1"}});
  EXPECT_FALSE(pool.Find({"a:1"}).has_value());
  EXPECT_TRUE(pool.Find({"b:1"}).has_value());
}

TEST(Admission, RefusesBeyondLimitsWithGrowingRetryHint) {
  AdmissionController ac({2, 1000, absl::Milliseconds(100)});
  EXPECT_TRUE(ac.TryAdmit(400).admitted);
  EXPECT_TRUE(ac.TryAdmit(400).admitted);
  const Admission third = ac.TryAdmit(10);
  EXPECT_FALSE(third.admitted);
  EXPECT_GE(third.retry_after, absl::Milliseconds(100));
  ac.Release(400);
  const Admission big = ac.TryAdmit(5000);  // tokens over the limit while busy
  EXPECT_FALSE(big.admitted);
  EXPECT_GT(big.retry_after, third.retry_after);
  ac.Release(400);
  // An idle system admits one oversized prompt rather than refusing forever.
  EXPECT_TRUE(ac.TryAdmit(5000).admitted);
  EXPECT_EQ(ac.in_flight(), 1);
}

}  // namespace
}  // namespace sirocco::router
