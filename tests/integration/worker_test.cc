// End-to-end tests of a colocated worker (role both): the real sirocco-decode
// binary as a subprocess on 127.0.0.1, called through the C++ stub.
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "engine/device_loader.h"
#include "engine/generator.h"
#include "engine/kv_cache.h"
#include "engine/mistral4.h"
#include "tests/integration/worker_process.h"

namespace sirocco::integration {
namespace {

namespace wv1 = sirocco::worker::v1;
using std::chrono::milliseconds;
using std::chrono::seconds;

std::vector<std::int32_t> TestPrompt(int n, int salt) {
  std::vector<std::int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back(3 + (i * 37 + salt * 11) % 500);
  return p;
}

class WorkerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_dir_ = new std::string(MakeTestModelDir("worker"));
    ASSERT_FALSE(model_dir_->empty());
    worker_ = new WorkerProcess(SIROCCO_DECODE_BINARY, Args("both"));
  }
  static void TearDownTestSuite() {
    delete worker_;
    std::filesystem::remove_all(*model_dir_);
    delete model_dir_;
  }
  void SetUp() override { ASSERT_TRUE(worker_->ok()) << "the worker did not start"; }

  static std::vector<std::string> Args(const std::string& role) {
    return {"--role=" + role,   "--model=" + *model_dir_, "--kernels=ref",
            "--num-blocks=256", "--block-size=8",         std::string("--auth-token=") + kTestToken};
  }

  static std::vector<std::int32_t> Reference(const std::vector<std::int32_t>& prompt, int max_tokens) {
    return GreedyReference(*model_dir_, prompt, max_tokens, 64, 8);
  }

  void ExpectServesWeightType(engine::WeightType type);

  static wv1::Load GetLoad(WorkerProcess& w) {
    auto ctx = WorkerContext();
    wv1::Load load;
    EXPECT_TRUE(w.stub().GetLoad(ctx.get(), wv1::GetLoadRequest(), &load).ok());
    return load;
  }
  static bool EventuallyWhole(WorkerProcess& w) {
    for (int i = 0; i < 500; ++i) {
      wv1::Load l = GetLoad(w);
      if (l.free_blocks() == l.total_blocks() && l.running() == 0 && l.waiting() == 0) return true;
      std::this_thread::sleep_for(milliseconds(10));
    }
    return false;
  }

  static wv1::DecodeRequest DecodeReq(const std::string& id, const std::vector<std::int32_t>& prompt,
                                      std::int32_t first, int max_tokens) {
    wv1::DecodeRequest d;
    d.set_request_id(id);
    for (auto t : prompt) d.add_prompt_token_ids(t);
    d.add_output_token_ids(first);
    *d.mutable_sampling() = Greedy();
    d.mutable_stop()->set_max_tokens(static_cast<std::uint32_t>(max_tokens));
    d.mutable_stop()->set_ignore_eos(true);
    return d;
  }

  static std::string* model_dir_;
  static WorkerProcess* worker_;
};
std::string* WorkerTest::model_dir_ = nullptr;
WorkerProcess* WorkerTest::worker_ = nullptr;

TEST_F(WorkerTest, GreedyPrefillThenDecodeMatchesGenerate) {
  const std::vector<std::int32_t> prompt = TestPrompt(21, 1);
  const int max_tokens = 10;
  const std::vector<std::int32_t> expected = Reference(prompt, max_tokens);
  ASSERT_EQ(expected.size(), static_cast<std::size_t>(max_tokens));

  wv1::PrefillRequest p;
  p.set_request_id("greedy-1");
  for (auto t : prompt) p.add_token_ids(t);
  *p.mutable_sampling() = Greedy();
  wv1::PrefillResponse pr;
  auto pctx = WorkerContext();
  grpc::Status ps = worker_->stub().Prefill(pctx.get(), p, &pr);
  ASSERT_TRUE(ps.ok()) << ps.error_message();
  EXPECT_EQ(pr.first_token_id(), expected[0]);
  EXPECT_FALSE(pr.prefill_worker_id().empty());

  auto dctx = WorkerContext();
  auto reader = worker_->stub().Decode(dctx.get(), DecodeReq("greedy-1", prompt, pr.first_token_id(), max_tokens));
  std::vector<std::int32_t> got = {pr.first_token_id()};
  wv1::DecodeResponse r;
  bool finished = false;
  while (reader->Read(&r)) {
    EXPECT_FALSE(finished) << "message after the finish";
    got.insert(got.end(), r.token_ids().begin(), r.token_ids().end());
    if (r.has_finish()) {
      finished = true;
      EXPECT_EQ(r.finish().reason(), wv1::DecodeFinish::REASON_LENGTH);
      EXPECT_FALSE(r.finish().decode_worker_id().empty());
    }
  }
  grpc::Status ds = reader->Finish();
  ASSERT_TRUE(ds.ok()) << ds.error_message();
  EXPECT_TRUE(finished);
  EXPECT_EQ(got, expected);
  EXPECT_TRUE(EventuallyWhole(*worker_));
}

// A worker started with --weights=`type` serves the greedy tokens the engine
// computes with `type` weights.
void WorkerTest::ExpectServesWeightType(engine::WeightType type) {
  const std::string name = engine::WeightTypeName(type);
  std::vector<std::string> args = Args("both");
  args.push_back("--weights=" + name);
  WorkerProcess w(SIROCCO_DECODE_BINARY, args);
  ASSERT_TRUE(w.ok());
  // A prompt whose greedy continuation differs between float32 weights and
  // `type`, so that the comparison below tells which the worker used.
  const int max_tokens = 16;
  std::vector<std::int32_t> prompt, expected;
  for (int salt = 1; salt <= 40 && expected.empty(); ++salt) {
    prompt = TestPrompt(17, salt);
    std::vector<std::int32_t> typed = GreedyReference(*model_dir_, prompt, max_tokens, 64, 8, type);
    if (typed != Reference(prompt, max_tokens)) expected = std::move(typed);
  }
  ASSERT_EQ(expected.size(), static_cast<std::size_t>(max_tokens)) << "no prompt tells " << name << " from f32 apart";
  wv1::PrefillRequest p;
  p.set_request_id(name + "-1");
  for (auto t : prompt) p.add_token_ids(t);
  *p.mutable_sampling() = Greedy();
  wv1::PrefillResponse pr;
  auto pctx = WorkerContext();
  ASSERT_TRUE(w.stub().Prefill(pctx.get(), p, &pr).ok());
  auto dctx = WorkerContext();
  auto reader = w.stub().Decode(dctx.get(), DecodeReq(name + "-1", prompt, pr.first_token_id(), max_tokens));
  std::vector<std::int32_t> got = {pr.first_token_id()};
  wv1::DecodeResponse r;
  while (reader->Read(&r)) got.insert(got.end(), r.token_ids().begin(), r.token_ids().end());
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_EQ(got, expected);
}

TEST_F(WorkerTest, Bf16WeightsServeWhatTheEngineComputesWithBf16Weights) {
  ExpectServesWeightType(engine::WeightType::kBF16);
}

TEST_F(WorkerTest, Fp8WeightsServeWhatTheEngineComputesWithFp8Weights) {
  ExpectServesWeightType(engine::WeightType::kFP8);
}

TEST_F(WorkerTest, UnknownWeightTypeOrMissingGpuRefusesToStart) {
  std::vector<std::string> args = Args("both");
  args.push_back("--weights=fp16");
  WorkerProcess bad_weights(SIROCCO_DECODE_BINARY, args);
  EXPECT_FALSE(bad_weights.ok());
  if (engine::LoadCudaDevice().ok()) GTEST_SKIP() << "a GPU is present: --kernels cuda would start";
  args = Args("both");
  for (std::string& a : args) {
    if (a == "--kernels=ref") a = "--kernels=cuda";
  }
  WorkerProcess no_gpu(SIROCCO_DECODE_BINARY, args);
  EXPECT_FALSE(no_gpu.ok());
}

TEST_F(WorkerTest, MissingTokenIsUnauthenticated) {
  auto ctx = WorkerContext(seconds(10), "");
  wv1::Load load;
  EXPECT_EQ(worker_->stub().GetLoad(ctx.get(), wv1::GetLoadRequest(), &load).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  auto bad = WorkerContext(seconds(10), "wrong");
  EXPECT_EQ(worker_->stub().GetLoad(bad.get(), wv1::GetLoadRequest(), &load).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(WorkerTest, BadRequestsNameTheField) {
  wv1::PrefillRequest p;
  p.set_request_id("bad-1");
  p.add_token_ids(100000);
  *p.mutable_sampling() = Greedy();
  wv1::PrefillResponse pr;
  auto ctx = WorkerContext();
  grpc::Status s = worker_->stub().Prefill(ctx.get(), p, &pr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("token_ids[0]"), std::string::npos) << s.error_message();
  EXPECT_TRUE(EventuallyWhole(*worker_));
}

TEST_F(WorkerTest, CancelFreesBlocks) {
  const std::vector<std::int32_t> prompt = TestPrompt(12, 2);
  auto dctx = WorkerContext();
  auto reader = worker_->stub().Decode(dctx.get(), DecodeReq("cancel-1", prompt, 5, 2000));
  wv1::DecodeResponse r;
  ASSERT_TRUE(reader->Read(&r));  // decoding has started
  bool holds_blocks = false;      // stats are published once per engine iteration
  for (int i = 0; i < 200 && !holds_blocks; ++i) {
    const wv1::Load l = GetLoad(*worker_);
    holds_blocks = l.free_blocks() < l.total_blocks();
    if (!holds_blocks) std::this_thread::sleep_for(milliseconds(1));
  }
  EXPECT_TRUE(holds_blocks);
  wv1::CancelRequest c;
  c.set_request_id("cancel-1");
  wv1::CancelResponse cr;
  auto cctx = WorkerContext();
  ASSERT_TRUE(worker_->stub().Cancel(cctx.get(), c, &cr).ok());
  EXPECT_TRUE(cr.found());
  while (reader->Read(&r)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(EventuallyWhole(*worker_));
  // Idempotent, and unknown ids are not an error.
  auto cctx2 = WorkerContext();
  ASSERT_TRUE(worker_->stub().Cancel(cctx2.get(), c, &cr).ok());
  EXPECT_FALSE(cr.found());
}

TEST_F(WorkerTest, DeadlineExpiryFreesBlocks) {
  const std::vector<std::int32_t> prompt = TestPrompt(12, 3);
  auto dctx = WorkerContext(milliseconds(300));
  auto reader = worker_->stub().Decode(dctx.get(), DecodeReq("deadline-1", prompt, 5, 2000));
  wv1::DecodeResponse r;
  while (reader->Read(&r)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(EventuallyWhole(*worker_));
}

TEST_F(WorkerTest, WatchLoadReportsAtOnce) {
  auto ctx = WorkerContext(seconds(5));
  wv1::WatchLoadRequest req;
  req.set_min_interval_ms(10);
  req.set_max_interval_ms(50);
  auto reader = worker_->stub().WatchLoad(ctx.get(), req);
  wv1::Load load;
  ASSERT_TRUE(reader->Read(&load));
  EXPECT_EQ(load.role(), wv1::WORKER_ROLE_BOTH);
  EXPECT_EQ(load.total_blocks(), 256u);
  ASSERT_TRUE(reader->Read(&load));  // the heartbeat
  ctx->TryCancel();
  while (reader->Read(&load)) {
  }
  reader->Finish();
}

TEST_F(WorkerTest, MetricsEndpointServesCountersAndReadiness) {
  const std::string port_file =
      (std::filesystem::temp_directory_path() / ("sirocco_it_metrics_" + std::to_string(::getpid()))).string();
  std::vector<std::string> args = Args("both");
  args.push_back("--metrics-port=0");
  args.push_back("--metrics-port-file=" + port_file);
  WorkerProcess w(SIROCCO_DECODE_BINARY, args);
  ASSERT_TRUE(w.ok());
  int metrics_port = 0;
  std::ifstream(port_file) >> metrics_port;
  std::filesystem::remove(port_file);
  ASSERT_GT(metrics_port, 0);
  wv1::PrefillRequest p;
  p.set_request_id("metrics-1");
  for (auto t : TestPrompt(7, 5)) p.add_token_ids(t);
  *p.mutable_sampling() = Greedy();
  wv1::PrefillResponse pr;
  auto ctx = WorkerContext();
  ASSERT_TRUE(w.stub().Prefill(ctx.get(), p, &pr).ok());
  const std::string metrics = HttpGet(metrics_port, "/metrics");
  EXPECT_NE(metrics.find("sirocco:prompt_tokens_total"), std::string::npos) << metrics.substr(0, 300);
  EXPECT_NE(metrics.find("role=\"both\""), std::string::npos);
  EXPECT_NE(HttpGet(metrics_port, "/readyz").find("200"), std::string::npos);
  // Another path is a 404, and the worker keeps serving: its HTTP threads'
  // small stacks once overflowed writing a response.
  EXPECT_EQ(HttpGet(metrics_port, "/nope").rfind("HTTP/1.1 404", 0), 0u);
  EXPECT_FALSE(GetLoad(w).draining());
  wv1::DrainResponse dr;
  auto dctx = WorkerContext();
  ASSERT_TRUE(w.stub().Drain(dctx.get(), wv1::DrainRequest(), &dr).ok());
  EXPECT_NE(HttpGet(metrics_port, "/readyz").find("503"), std::string::npos);
  EXPECT_TRUE(GetLoad(w).draining());
}

TEST_F(WorkerTest, SigtermDrainsThenExits) {
  WorkerProcess w(SIROCCO_DECODE_BINARY, Args("both"));
  ASSERT_TRUE(w.ok());
  const std::vector<std::int32_t> prompt = TestPrompt(10, 4);
  auto dctx = WorkerContext();
  auto reader = w.stub().Decode(dctx.get(), DecodeReq("drain-1", prompt, 5, 40));
  wv1::DecodeResponse r;
  ASSERT_TRUE(reader->Read(&r));
  int tokens = r.token_ids_size();
  w.Signal(SIGTERM);
  bool not_serving = false;
  for (int i = 0; i < 200 && !not_serving; ++i) {
    not_serving = w.Health() == grpc::health::v1::HealthCheckResponse::NOT_SERVING;
    if (!not_serving) std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_TRUE(not_serving);
  // New work is refused while draining.
  {
    auto ctx = WorkerContext(seconds(10));
    wv1::PrefillRequest p;
    p.set_request_id("late");
    p.add_token_ids(5);
    *p.mutable_sampling() = Greedy();
    wv1::PrefillResponse pr;
    EXPECT_EQ(w.stub().Prefill(ctx.get(), p, &pr).error_code(), grpc::StatusCode::UNAVAILABLE);
  }
  bool finished = r.has_finish();
  while (reader->Read(&r)) {
    tokens += r.token_ids_size();
    finished = finished || r.has_finish();
  }
  grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(finished);
  EXPECT_EQ(tokens, 39);  // max_tokens 40, one given
  const int status = w.WaitExit(seconds(30));
  ASSERT_NE(status, -1) << "the worker did not exit";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

}  // namespace
}  // namespace sirocco::integration
