// The aggregation on synthetic records with exactly known values, and the
// percentile method against numpy.percentile's default (linear) results.
#include "tools/bench/metrics.h"

#include <gtest/gtest.h>

#include <cmath>

namespace sirocco::bench {
namespace {

TEST(PercentileTest, MatchesNumpyLinear) {
  // numpy.percentile([1, 2, 3, 4], [0, 50, 90, 99, 100]) = 1, 2.5, 3.7, 3.97, 4
  const std::vector<double> v = {1, 2, 3, 4};
  EXPECT_DOUBLE_EQ(Percentile(v, 0), 1);
  EXPECT_DOUBLE_EQ(Percentile(v, 50), 2.5);
  EXPECT_NEAR(Percentile(v, 90), 3.7, 1e-12);
  EXPECT_NEAR(Percentile(v, 99), 3.97, 1e-12);
  EXPECT_DOUBLE_EQ(Percentile(v, 100), 4);
  // numpy.percentile([15, 20, 35, 40, 50], 40) = 29; 95 -> 48
  const std::vector<double> w = {15, 20, 35, 40, 50};
  EXPECT_NEAR(Percentile(w, 40), 29, 1e-12);
  EXPECT_NEAR(Percentile(w, 95), 48, 1e-12);
  EXPECT_DOUBLE_EQ(Percentile({7}, 99), 7);
}

TEST(StatsTest, UnsortedInputAndEmpty) {
  const Stats s = ComputeStats({10, 0, 30, 20});
  EXPECT_EQ(s.count, 4);
  EXPECT_DOUBLE_EQ(s.mean, 15);
  EXPECT_DOUBLE_EQ(s.min, 0);
  EXPECT_DOUBLE_EQ(s.max, 30);
  EXPECT_DOUBLE_EQ(s.median, 15);
  EXPECT_NEAR(s.p90, 27, 1e-12);  // rank 2.7: 20 + 0.7 * 10
  EXPECT_NEAR(s.p99, 29.7, 1e-12);
  EXPECT_NEAR(s.stddev, std::sqrt(125.0), 1e-12);  // population std
  const Stats e = ComputeStats({});
  EXPECT_EQ(e.count, 0);
  EXPECT_TRUE(std::isnan(e.mean));
  EXPECT_TRUE(std::isnan(e.p99));
}

RequestRecord Rec(std::int64_t index, double send, std::vector<double> chunks, double end, int out, int prompt) {
  RequestRecord r;
  r.index = index;
  r.send_s = send;
  r.scheduled_s = send;
  r.chunk_s = std::move(chunks);
  r.chunk_tokens.assign(r.chunk_s.size(), 1);
  r.end_s = end;
  r.output_tokens = out;
  r.prompt_tokens = prompt;
  r.finish_reason = "FINISH_REASON_LENGTH";
  return r;
}

TEST(AggregateTest, ExactValuesOnSyntheticRecords) {
  std::vector<RequestRecord> records;
  // TTFT 100 ms, chunks every 50 ms, 5 tokens, E2E 300 ms: TPOT (300-100)/4 = 50.
  records.push_back(Rec(0, 0.0, {0.1, 0.15, 0.2, 0.25, 0.3}, 0.3, 5, 10));
  // TTFT 200 ms, 3 tokens, E2E 400 ms: TPOT 100; gaps 100, 100.
  records.push_back(Rec(1, 1.0, {1.2, 1.3, 1.4}, 1.4, 3, 20));
  // One token: no TPOT, no ITL; TTFT 50, E2E 60.
  records.push_back(Rec(2, 2.0, {2.05}, 2.06, 1, 30));
  // An error and a cancellation: in neither latency nor throughput.
  RequestRecord err = Rec(3, 3.0, {}, 3.01, 0, 0);
  err.status_code = 8;  // RESOURCE_EXHAUSTED
  err.finish_reason = "";
  records.push_back(err);
  RequestRecord late_err = Rec(4, 3.0, {3.1}, 3.2, 1, 5);
  late_err.finish_reason = "FINISH_REASON_ERROR";
  records.push_back(late_err);
  RequestRecord cancelled = Rec(5, 3.0, {3.5, 3.6}, 3.6, 2, 5);
  cancelled.cancelled = true;
  cancelled.status_code = 1;
  records.push_back(cancelled);
  records[1].scheduled_s = 0.99;  // 10 ms send lag
  records[1].cached_tokens = 16;
  records[4].cached_tokens = 5;  // a failed request: not counted
  records[0].callbacks = 6;
  records[0].callback_total_us = 60;
  records[0].callback_max_us = 25;

  Slo slo;
  ASSERT_TRUE(slo.Add("ttft_ms=150").ok());
  ASSERT_TRUE(slo.Add("tpot_ms=60").ok());
  const Aggregates a = Aggregate(records, 4.0, slo, 0.5);
  EXPECT_EQ(a.requests, 6);
  EXPECT_EQ(a.completed, 3);
  EXPECT_EQ(a.failed, 2);
  EXPECT_EQ(a.cancelled, 1);
  EXPECT_EQ(a.errors.at("RESOURCE_EXHAUSTED"), 1);
  EXPECT_EQ(a.errors.at("FINISH_REASON_ERROR"), 1);
  EXPECT_EQ(a.input_tokens, 60);
  EXPECT_EQ(a.cached_tokens, 16);
  EXPECT_EQ(a.output_tokens, 9);
  EXPECT_DOUBLE_EQ(a.request_throughput, 0.75);
  EXPECT_DOUBLE_EQ(a.output_throughput, 2.25);
  EXPECT_DOUBLE_EQ(a.total_token_throughput, 69 / 4.0);
  // Good: #0 (TTFT 100, TPOT 50) and #2 (TTFT 50, TPOT counts as 0); #1 has TTFT 200.
  EXPECT_EQ(a.good, 2);
  EXPECT_DOUBLE_EQ(a.goodput, 0.5);

  EXPECT_EQ(a.ttft_ms.count, 3);
  EXPECT_NEAR(a.ttft_ms.mean, (100 + 200 + 50) / 3.0, 1e-9);
  EXPECT_NEAR(a.ttft_ms.median, 100, 1e-9);
  EXPECT_NEAR(a.ttft_ms.p90, 180, 1e-9);  // sorted 50,100,200: rank 1.8
  EXPECT_EQ(a.tpot_ms.count, 2);
  EXPECT_NEAR(a.tpot_ms.mean, 75, 1e-9);
  EXPECT_NEAR(a.tpot_ms.p99, 99.5, 1e-9);
  EXPECT_EQ(a.itl_ms.count, 6);  // 4 + 2 gaps
  EXPECT_NEAR(a.itl_ms.mean, (4 * 50 + 2 * 100) / 6.0, 1e-9);
  EXPECT_NEAR(a.itl_ms.median, 50, 1e-9);
  EXPECT_NEAR(a.itl_ms.max, 100, 1e-9);
  EXPECT_EQ(a.e2e_ms.count, 3);
  EXPECT_NEAR(a.e2e_ms.median, 300, 1e-9);
  EXPECT_NEAR(a.e2e_ms.max, 400, 1e-9);

  EXPECT_EQ(a.send_lag_ms.count, 6);
  EXPECT_NEAR(a.send_lag_ms.max, 10, 1e-9);
  EXPECT_EQ(a.callback_mean_us.count, 1);
  EXPECT_DOUBLE_EQ(a.callback_mean_us.mean, 10);
  EXPECT_DOUBLE_EQ(a.callback_max_us, 25);
  EXPECT_DOUBLE_EQ(a.client_cpu_share, 0.125);
  EXPECT_EQ(a.server_queue_ms.count, 0);

  // No SLO: every completed request is good.
  EXPECT_EQ(Aggregate(records, 4.0, Slo{}).good, 3);
  // E2E SLO alone.
  Slo e2e;
  ASSERT_TRUE(e2e.Add("e2e_ms=350").ok());
  EXPECT_EQ(Aggregate(records, 4.0, e2e).good, 2);
}

TEST(AggregateTest, ByClassSplitsTextFromImageRequests) {
  std::vector<RequestRecord> records;
  records.push_back(Rec(0, 0.0, {0.1, 0.15, 0.2}, 0.2, 3, 10));  // text: TTFT 100, gaps 50, 50
  records.push_back(Rec(1, 0.0, {0.5, 0.9}, 0.9, 2, 40));        // image: TTFT 500, gap 400
  records[1].image = true;
  records.push_back(Rec(2, 1.0, {1.2, 1.3}, 1.3, 2, 10));  // text: TTFT 200, gap 100
  const auto classes = AggregateByClass(records, 2.0, Slo{});
  ASSERT_EQ(classes.size(), 2u);
  EXPECT_EQ(classes[0].first, "text");
  EXPECT_EQ(classes[1].first, "image");
  const Aggregates& text = classes[0].second;
  const Aggregates& image = classes[1].second;
  EXPECT_EQ(text.completed, 2);
  EXPECT_EQ(image.completed, 1);
  EXPECT_NEAR(text.ttft_ms.mean, 150, 1e-9);
  EXPECT_NEAR(text.itl_ms.max, 100, 1e-9);
  EXPECT_EQ(text.itl_ms.count, 3);
  EXPECT_NEAR(image.ttft_ms.mean, 500, 1e-9);
  EXPECT_NEAR(image.itl_ms.max, 400, 1e-9);
  EXPECT_DOUBLE_EQ(image.request_throughput, 0.5);  // over the whole run's 2 s
  EXPECT_EQ(text.input_tokens + image.input_tokens, Aggregate(records, 2.0, Slo{}).input_tokens);
  // One kind only: nothing to split.
  records[1].image = false;
  EXPECT_TRUE(AggregateByClass(records, 2.0, Slo{}).empty());
}

TEST(AggregateTest, ServerTimingInMilliseconds) {
  RequestRecord r = Rec(0, 0, {0.1, 0.2}, 0.2, 2, 3);
  r.has_timing = true;
  r.timing = {.queue_us = 1500,
              .prefill_us = 2500,
              .kv_transfer_us = 10,
              .first_decode_step_us = 4000,
              .ttft_us = 90000,
              .e2e_us = 190000};
  const Aggregates a = Aggregate({r}, 1.0, Slo{});
  EXPECT_DOUBLE_EQ(a.server_queue_ms.mean, 1.5);
  EXPECT_DOUBLE_EQ(a.server_prefill_ms.mean, 2.5);
  EXPECT_DOUBLE_EQ(a.server_kv_transfer_ms.mean, 0.01);
  EXPECT_DOUBLE_EQ(a.server_first_decode_step_ms.mean, 4);
  EXPECT_DOUBLE_EQ(a.server_ttft_ms.mean, 90);
  EXPECT_DOUBLE_EQ(a.server_e2e_ms.mean, 190);
}

TEST(SloTest, ParsesAndRejects) {
  Slo s;
  EXPECT_TRUE(s.Add("ttft_ms=500,tpot_ms=50").ok());
  EXPECT_TRUE(s.Add("e2e_ms=1e4").ok());
  EXPECT_EQ(*s.ttft_ms, 500);
  EXPECT_EQ(*s.tpot_ms, 50);
  EXPECT_EQ(*s.e2e_ms, 10000);
  EXPECT_FALSE(s.Add("itl_ms=5").ok());
  EXPECT_FALSE(s.Add("ttft_ms=-1").ok());
  EXPECT_FALSE(s.Add("ttft_ms").ok());
}

}  // namespace
}  // namespace sirocco::bench
