// The load generator end to end against the scripted server
// (scripted_server.h): timed metrics match the known schedule within a
// jitter tolerance, and everything computed from the recorded timestamps
// (TPOT, ITL pooling, goodput, errors by code, cancellations, warm-up
// exclusion, open-loop send schedule) matches exactly.
#include "tools/bench/runner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <string>

#include "tests/unit/bench/scripted_server.h"
#include "tools/bench/metrics.h"
#include "tools/bench/workload.h"

namespace sirocco::bench {
namespace {

// Scheduling jitter allowed on timed values: a loaded 2-core machine may
// delay a sleep or a callback by several milliseconds.
constexpr double kTolMs = 30;

// direct_worker: talk to the scripted worker API with `worker_token`.
std::unique_ptr<Runner> MakeRunner(const std::string& target, bool direct_worker = false,
                                   const std::string& worker_token = "", const RunnerOptions& base = {}) {
  RunnerOptions o = base;
  o.target = target;
  o.progress = false;
  o.timeout_s = 30;
  o.direct_worker = direct_worker;
  o.worker_token = worker_token;
  auto r = Runner::Create(o);
  EXPECT_TRUE(r.ok()) << r.status();
  return std::move(*r);
}

std::unique_ptr<Workload> MakeWorkload(WorkloadOptions o) {
  if (o.vocab_size == 0) o.vocab_size = 32000;
  auto w = Workload::Create(o);
  EXPECT_TRUE(w.ok()) << w.status();
  return std::move(*w);
}

LengthDist Fixed(int n) {
  LengthDist d;
  d.a = n;
  return d;
}

TEST(RunnerTest, ClosedLoopMatchesTheScriptedSchedule) {
  testing::ScriptedServer server;
  auto runner = MakeRunner(server.target());
  auto model = runner->GetModelInfo(10);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->vocab_size, 32000);

  WorkloadOptions wo;
  wo.input_len = Fixed(16);
  wo.output_len = Fixed(5);
  auto workload = MakeWorkload(wo);
  LoadOptions load;
  load.concurrency = 4;
  load.num_requests = 12;
  auto result = runner->Run(load, *workload);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->records.size(), 12u);

  for (const RequestRecord& r : result->records) {
    ASSERT_EQ(r.status_code, 0) << r.status_message;
    ASSERT_EQ(r.chunk_s.size(), 5u);
    EXPECT_EQ(r.output_tokens, 5);
    EXPECT_EQ(r.prompt_tokens, 16);
    EXPECT_EQ(r.finish_reason, "FINISH_REASON_LENGTH");
    // Schedule: first chunk 50 ms after the server saw the request, then
    // every 20 ms, the Final right after the last chunk.
    const double ttft = *TtftMs(r);
    EXPECT_GE(ttft, 49.0);
    EXPECT_LE(ttft, 50 + kTolMs);
    const double span = (r.chunk_s.back() - r.chunk_s.front()) * 1e3;  // 4 gaps of 20 ms, no drift
    EXPECT_NEAR(span, 80, kTolMs);
    EXPECT_NEAR(*TpotMs(r), 20, kTolMs / 4);
    EXPECT_NEAR(E2eMs(r), 130, kTolMs);
    // Exact arithmetic on the recorded timestamps.
    EXPECT_DOUBLE_EQ(*TpotMs(r), (E2eMs(r) - ttft) / 4);
    EXPECT_TRUE(r.has_timing);
    EXPECT_EQ(r.timing.queue_us, 1100);
    EXPECT_EQ(r.timing.prefill_us, 2200);
    EXPECT_EQ(r.timing.kv_transfer_us, 330);
    EXPECT_EQ(r.timing.first_decode_step_us, 4400);
    EXPECT_EQ(r.timing.ttft_us, 50500);
    EXPECT_EQ(r.timing.e2e_us, 90900);
    EXPECT_EQ(r.callbacks, 7);  // 5 deltas, the Final, the end of the stream
    EXPECT_GE(r.send_s, r.scheduled_s);
  }
  const Aggregates a = Aggregate(result->records, result->duration_s, Slo{}, result->client_cpu_s);
  EXPECT_EQ(a.completed, 12);
  EXPECT_EQ(a.failed, 0);
  EXPECT_EQ(a.output_tokens, 60);
  EXPECT_EQ(a.input_tokens, 12 * 16);
  EXPECT_EQ(a.itl_ms.count, 12 * 4);  // every gap, pooled
  EXPECT_NEAR(a.itl_ms.median, 20, 5);
  EXPECT_NEAR(a.ttft_ms.median, 50, kTolMs);
  // 12 requests of ~130 ms, 4 at a time: three waves.
  EXPECT_NEAR(result->duration_s, 3 * 0.130, 3 * kTolMs / 1e3);
  EXPECT_DOUBLE_EQ(a.request_throughput, 12 / result->duration_s);
  EXPECT_DOUBLE_EQ(a.output_throughput, 60 / result->duration_s);
  EXPECT_DOUBLE_EQ(a.total_token_throughput, (60 + 12 * 16) / result->duration_s);
  EXPECT_EQ(a.server_queue_ms.count, 12);
  EXPECT_DOUBLE_EQ(a.server_queue_ms.mean, 1.1);
  EXPECT_DOUBLE_EQ(a.server_kv_transfer_ms.p99, 0.33);
  EXPECT_DOUBLE_EQ(a.server_ttft_ms.median, 50.5);
  // Never more than 4 in flight: the in-flight count at each send.
  for (const RequestRecord& r : result->records) {
    int in_flight = 0;
    for (const RequestRecord& o : result->records)
      if (o.send_s <= r.send_s && o.end_s > r.send_s) ++in_flight;
    EXPECT_LE(in_flight, 4);
  }
}

TEST(RunnerTest, GoodputCountsRequestsMeetingEverySlo) {
  testing::ScriptedServer server;
  auto runner = MakeRunner(server.target());
  // Output 3 tokens (E2E ~90 ms) or 9 tokens (E2E ~210 ms).
  WorkloadOptions wo;
  wo.input_len = Fixed(8);
  auto mix = LengthDist::Parse("mix:3@1,9@1");
  ASSERT_TRUE(mix.ok());
  wo.output_len = *mix;
  wo.seed = 7;
  auto workload = MakeWorkload(wo);
  LoadOptions load;
  load.concurrency = 8;
  load.num_requests = 16;
  auto result = runner->Run(load, *workload);
  ASSERT_TRUE(result.ok());
  int short_ones = 0;
  for (const RequestRecord& r : result->records) short_ones += r.max_tokens == 3;
  ASSERT_GT(short_ones, 0);
  ASSERT_LT(short_ones, 16);

  Slo slo;
  ASSERT_TRUE(slo.Add("e2e_ms=150").ok());
  Aggregates a = Aggregate(result->records, result->duration_s, slo);
  EXPECT_EQ(a.good, short_ones);
  EXPECT_DOUBLE_EQ(a.goodput, short_ones / result->duration_s);
  // TTFT ~50 for all, TPOT 20 for all: adding those SLOs changes nothing...
  ASSERT_TRUE(slo.Add("ttft_ms=500,tpot_ms=100").ok());
  EXPECT_EQ(Aggregate(result->records, result->duration_s, slo).good, short_ones);
  // ...while a TPOT SLO below 20 ms fails everyone.
  Slo strict;
  ASSERT_TRUE(strict.Add("tpot_ms=5").ok());
  EXPECT_EQ(Aggregate(result->records, result->duration_s, strict).good, 0);
}

TEST(RunnerTest, ErrorsAreCountedByStatusCode) {
  testing::ScriptedServer server(
      {.first_chunk = std::chrono::milliseconds(5), .interval = std::chrono::milliseconds(2), .fail_every = 5});
  auto runner = MakeRunner(server.target());
  WorkloadOptions wo;
  wo.input_len = Fixed(4);
  wo.output_len = Fixed(3);
  wo.image_share = 0;
  auto workload = MakeWorkload(wo);
  LoadOptions load;
  load.concurrency = 3;
  load.num_requests = 20;  // indices 4, 9, 14, 19 fail
  auto result = runner->Run(load, *workload);
  ASSERT_TRUE(result.ok());
  const Aggregates a = Aggregate(result->records, result->duration_s, Slo{});
  EXPECT_EQ(a.failed, 4);
  EXPECT_EQ(a.completed, 16);
  ASSERT_EQ(a.errors.size(), 1u);
  EXPECT_EQ(a.errors.at("RESOURCE_EXHAUSTED"), 4);
  for (const RequestRecord& r : result->records) {
    EXPECT_EQ(r.status_code != 0, r.index % 5 == 4) << r.index;
  }
}

TEST(RunnerTest, ImageRequestsRejectedByTheServerAreErrors) {
  testing::ScriptedServer server(
      {.first_chunk = std::chrono::milliseconds(5), .interval = std::chrono::milliseconds(2), .fail_every = 0});
  auto runner = MakeRunner(server.target());
  WorkloadOptions wo;
  wo.api = Api::kChat;
  wo.input_len = Fixed(4);
  wo.output_len = Fixed(3);
  wo.image_share = 0.5;
  auto effort = ParseEffortMix("none:1,high:1");
  ASSERT_TRUE(effort.ok());
  wo.effort_mix = *effort;
  auto workload = MakeWorkload(wo);
  LoadOptions load;
  load.concurrency = 4;
  load.num_requests = 30;
  load.warmup_requests = 0;
  auto result = runner->Run(load, *workload);
  ASSERT_TRUE(result.ok());
  int images = 0, high = 0;
  for (const RequestRecord& r : result->records) {
    images += r.image;
    high += !r.image && r.effort == "high";
    EXPECT_EQ(r.api, "chat");
    EXPECT_EQ(r.status_code != 0, r.image);
    if (r.image) {
      EXPECT_EQ(r.status_code, static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT));
    }
  }
  ASSERT_GT(images, 0);
  ASSERT_LT(images, 30);
  EXPECT_EQ(server.service().high_effort_calls(), high);
  const Aggregates a = Aggregate(result->records, result->duration_s, Slo{});
  EXPECT_EQ(a.errors.at("INVALID_ARGUMENT"), images);
  EXPECT_EQ(a.completed, 30 - images);
}

TEST(RunnerTest, ImageRequestsCarryTheChosenImageAsManyTimesAsAsked) {
  testing::ScriptedServer server(
      {.first_chunk = std::chrono::milliseconds(1), .interval = std::chrono::milliseconds(1), .fail_every = 0});
  for (int per_request : {1, 3}) {
    RunnerOptions base;
    base.image_data = std::string(1234, 'x');
    base.image_mime_type = "image/jpeg";
    base.images_per_request = per_request;
    auto runner = MakeRunner(server.target(), false, "", base);
    WorkloadOptions wo;
    wo.api = Api::kChat;
    wo.input_len = Fixed(4);
    wo.output_len = Fixed(2);
    wo.image_share = 1;
    auto workload = MakeWorkload(wo);
    LoadOptions load;
    load.concurrency = 2;
    load.num_requests = 4;
    load.warmup_requests = 0;
    ASSERT_TRUE(runner->Run(load, *workload).ok());
  }
  EXPECT_EQ(server.service().image_kinds(), std::set<std::string>{"image/jpeg:1234"});
  EXPECT_EQ(server.service().images_per_request(), (std::set<int>{1, 3}));
}

TEST(RunnerTest, CancelledRequestsAreCountedApartFromErrors) {
  testing::ScriptedServer server(
      {.first_chunk = std::chrono::milliseconds(5), .interval = std::chrono::milliseconds(5), .fail_every = 0});
  auto runner = MakeRunner(server.target());
  WorkloadOptions wo;
  wo.input_len = Fixed(4);
  wo.output_len = Fixed(10);
  wo.cancel_share = 0.5;
  wo.cancel_max_chunks = 4;
  auto workload = MakeWorkload(wo);
  LoadOptions load;
  load.concurrency = 4;
  load.num_requests = 20;
  auto result = runner->Run(load, *workload);
  ASSERT_TRUE(result.ok());
  int planned = 0;
  for (const RequestRecord& r : result->records) {
    if (r.cancel_after_chunks == 0) {
      EXPECT_FALSE(r.cancelled);
      EXPECT_EQ(r.status_code, 0);
      EXPECT_EQ(r.chunk_s.size(), 10u);
      continue;
    }
    ++planned;
    EXPECT_GE(r.cancel_after_chunks, 1);
    EXPECT_LE(r.cancel_after_chunks, 4);
    EXPECT_TRUE(r.cancelled);
    EXPECT_EQ(r.status_code, static_cast<int>(grpc::StatusCode::CANCELLED));
    EXPECT_EQ(static_cast<int>(r.chunk_s.size()), r.cancel_after_chunks);
    EXPECT_EQ(r.output_tokens, r.cancel_after_chunks);
  }
  ASSERT_GT(planned, 0);
  ASSERT_LT(planned, 20);
  const Aggregates a = Aggregate(result->records, result->duration_s, Slo{});
  EXPECT_EQ(a.cancelled, planned);
  EXPECT_EQ(a.failed, 0);
  EXPECT_TRUE(a.errors.empty());
  EXPECT_EQ(a.completed, 20 - planned);
}

TEST(RunnerTest, WarmupRequestsAreExcluded) {
  testing::ScriptedServer server(
      {.first_chunk = std::chrono::milliseconds(2), .interval = std::chrono::milliseconds(1), .fail_every = 0});
  auto runner = MakeRunner(server.target());
  WorkloadOptions wo;
  wo.input_len = Fixed(4);
  wo.output_len = Fixed(2);
  auto workload = MakeWorkload(wo);
  LoadOptions load;
  load.concurrency = 2;
  load.num_requests = 6;
  load.warmup_requests = 3;
  auto result = runner->Run(load, *workload);
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(server.service().generate_calls(), 9);
  EXPECT_EQ(result->warmup_requests, 3);
  ASSERT_EQ(result->records.size(), 6u);
  for (std::size_t i = 0; i < 6; ++i) EXPECT_EQ(result->records[i].index, static_cast<std::int64_t>(i));
}

TEST(RunnerTest, OpenLoopSendsOnTheArrivalSchedule) {
  testing::ScriptedServer server(
      {.first_chunk = std::chrono::milliseconds(5), .interval = std::chrono::milliseconds(5), .fail_every = 0});
  auto runner = MakeRunner(server.target());
  WorkloadOptions wo;
  wo.input_len = Fixed(4);
  wo.output_len = Fixed(2);
  auto workload = MakeWorkload(wo);
  LoadOptions load;
  load.mode = LoadOptions::Mode::kOpen;
  load.concurrency = 0;
  load.arrival.kind = ArrivalKind::kConstant;
  load.arrival.rate = 20;  // one every 50 ms
  load.num_requests = 8;
  load.warmup_requests = 0;
  auto result = runner->Run(load, *workload);
  ASSERT_TRUE(result.ok());
  ASSERT_EQ(result->records.size(), 8u);
  for (std::size_t i = 0; i < 8; ++i) {
    const RequestRecord& r = result->records[i];
    EXPECT_NEAR(r.scheduled_s, 0.05 * static_cast<double>(i), 1e-9);
    EXPECT_GE(r.send_s, r.scheduled_s);
    EXPECT_LE(r.send_s - r.scheduled_s, kTolMs / 1e3);
    EXPECT_EQ(r.status_code, 0);
  }
}

TEST(RunnerTest, DurationBoundStopsSending) {
  testing::ScriptedServer server(
      {.first_chunk = std::chrono::milliseconds(20), .interval = std::chrono::milliseconds(10), .fail_every = 0});
  auto runner = MakeRunner(server.target());
  WorkloadOptions wo;
  wo.input_len = Fixed(4);
  wo.output_len = Fixed(3);  // ~40 ms each
  auto workload = MakeWorkload(wo);
  LoadOptions load;
  load.concurrency = 2;
  load.num_requests = 0;
  load.duration_s = 0.4;
  load.warmup_requests = 0;
  auto result = runner->Run(load, *workload);
  ASSERT_TRUE(result.ok());
  // About 2 * 400 / 40 = 20; the bound is what matters: no send after it.
  EXPECT_GE(result->records.size(), 4u);
  EXPECT_LE(result->records.size(), 24u);
  for (const RequestRecord& r : result->records) EXPECT_LT(r.send_s, 0.4 + kTolMs / 1e3);
}

TEST(RunnerTest, RejectsLoadWithoutBound) {
  testing::ScriptedServer server;
  auto runner = MakeRunner(server.target());
  WorkloadOptions wo;
  auto workload = MakeWorkload(wo);
  LoadOptions load;
  load.num_requests = 0;
  load.duration_s = 0;
  EXPECT_EQ(runner->Run(load, *workload).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sirocco::bench

namespace sirocco::bench {
namespace {

// --direct-worker: one Decode with local_prefill on the worker API, timed
// like a stream through a router.
TEST(RunnerTest, DirectWorkerDrivesOneLocalPrefillDecode) {
  testing::ScriptedServer server;
  auto runner = MakeRunner(server.target(), /*direct_worker=*/true, testing::kWorkerToken);
  auto model = runner->GetModelInfo(10);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ(model->vocab_size, 32000);

  WorkloadOptions wo;
  wo.input_len = Fixed(16);
  wo.output_len = Fixed(5);
  auto workload = MakeWorkload(wo);
  LoadOptions load;
  load.concurrency = 2;
  load.num_requests = 6;
  auto result = runner->Run(load, *workload);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->records.size(), 6u);
  for (const RequestRecord& r : result->records) {
    ASSERT_EQ(r.status_code, 0) << r.status_message;
    ASSERT_EQ(r.chunk_s.size(), 5u);
    EXPECT_EQ(r.output_tokens, 5);
    EXPECT_EQ(r.prompt_tokens, 16);
    EXPECT_EQ(r.finish_reason, "FINISH_REASON_LENGTH");
    EXPECT_GE(*TtftMs(r), 49.0);
    EXPECT_LE(*TtftMs(r), 50 + kTolMs);
    EXPECT_NEAR((r.chunk_s.back() - r.chunk_s.front()) * 1e3, 80, kTolMs);
    EXPECT_NEAR(*TpotMs(r), 20, kTolMs / 4);
  }
  EXPECT_EQ(server.worker().decodes(), 6);
}

TEST(RunnerTest, DirectWorkerWithoutTheTokenIsUnauthenticated) {
  testing::ScriptedServer server;
  auto runner = MakeRunner(server.target(), /*direct_worker=*/true);
  auto model = runner->GetModelInfo(10);
  EXPECT_EQ(model.status().code(), absl::StatusCode::kUnauthenticated) << model.status();
}

}  // namespace
}  // namespace sirocco::bench
