#include "router/worker_pool.h"

#include "gtest/gtest.h"

namespace sirocco::router {
namespace {

const absl::Time kNow = absl::FromUnixSeconds(1000);

WorkerLoad Load(std::int64_t free_blocks, std::int64_t running = 0, std::int64_t queued = 0) {
  WorkerLoad l;
  l.free_blocks = free_blocks;
  l.total_blocks = 100;
  l.running = running;
  l.prefill_tokens_queued = queued;
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
  EXPECT_EQ(pool.PickPrefill(900, {})->address, "p2:1");   // p2 -> 1100 queued
  EXPECT_EQ(pool.PickPrefill(10, {})->address, "p1:1");    // 1000 < 1100
  EXPECT_EQ(pool.PickPrefill(10, {{"p1:1"}})->address, "p2:1");
  auto none = pool.PickPrefill(10, {{"p1:1"}, {"p2:1"}});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnavailable);
  // A decode-only worker is never chosen for prefill.
  EXPECT_NE(std::string(none.status().message()).find("prefill"), std::string::npos);
}

TEST(WorkerPool, PrefillScorerIsTheSeamForPrefixRouting) {
  WorkerPool pool;
  pool.Upsert({"p1:1"}, WorkerRole::kPrefill);
  pool.Upsert({"p2:1"}, WorkerRole::kPrefill);
  pool.ReportLoad({"p1:1"}, Load(0, 0, 0), kNow);
  pool.ReportLoad({"p2:1"}, Load(0, 0, 5000), kNow);
  pool.set_prefill_scorer([](const WorkerState& w, std::int64_t) { return w.id.address == "p2:1" ? 1.0 : 0.0; });
  EXPECT_EQ(pool.PickPrefill(10, {})->address, "p2:1");
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
