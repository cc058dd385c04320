// End-to-end tests of disaggregated serving: a sirocco-prefill and a
// sirocco-decode process on 127.0.0.1; the KV moves between them over UCX
// (cma + tcp), driven the way the router drives it (Reserve → Prefill with
// the KvTarget → Decode with the reservation).
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "decode/worker_service.h"
#include "engine/generator.h"
#include "engine/kv_cache.h"
#include "engine/mistral4.h"
#include "tests/integration/worker_process.h"
#include "transfer/kv_layout.h"

namespace sirocco::integration {
namespace {

namespace wv1 = sirocco::worker::v1;
using std::chrono::milliseconds;
using std::chrono::seconds;

class DisaggTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_dir_ = new std::string(MakeTestModelDir("disagg"));
    ASSERT_FALSE(model_dir_->empty());
    fingerprint_ = new std::string(*decode::ModelFingerprint(*model_dir_));
    decode_ = new WorkerProcess(SIROCCO_DECODE_BINARY, Args("decode", 8));
    prefill_ = new WorkerProcess(SIROCCO_PREFILL_BINARY, Args("prefill", 8));
  }
  static void TearDownTestSuite() {
    delete prefill_;
    delete decode_;
    std::filesystem::remove_all(*model_dir_);
    delete model_dir_;
    delete fingerprint_;
  }
  void SetUp() override {
    ASSERT_TRUE(decode_->ok()) << "the decode worker did not start";
    ASSERT_TRUE(prefill_->ok()) << "the prefill worker did not start";
  }

  static std::vector<std::string> Args(const std::string& role, int block_size) {
    return {"--role=" + role, "--model=" + *model_dir_, "--kernels=ref", "--num-blocks=128",
            "--block-size=" + std::to_string(block_size), std::string("--auth-token=") + kTestToken};
  }

  static std::vector<std::int32_t> Reference(const std::vector<std::int32_t>& prompt, int max_tokens) {
    return GreedyReference(*model_dir_, prompt, max_tokens, 128, 8);
  }

  static wv1::Load GetLoad(WorkerProcess& w) {
    auto ctx = WorkerContext();
    wv1::Load load;
    EXPECT_TRUE(w.stub().GetLoad(ctx.get(), wv1::GetLoadRequest(), &load).ok());
    return load;
  }
  static bool EventuallyWhole(WorkerProcess& w) {
    for (int i = 0; i < 500; ++i) {
      wv1::Load l = GetLoad(w);
      if (l.free_blocks() == l.total_blocks() && l.running() == 0 && l.waiting() == 0 && l.reservations() == 0) {
        return true;
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
    return false;
  }

  static wv1::ReserveRequest ReserveReq(const std::string& id, int prompt_tokens, int max_output, int ttl_ms = 0) {
    wv1::ReserveRequest r;
    r.set_request_id(id);
    r.set_prompt_tokens(static_cast<std::uint32_t>(prompt_tokens));
    r.set_max_output_tokens(static_cast<std::uint32_t>(max_output));
    r.set_layout_version(transfer::kKvLayoutVersion);
    r.set_model_fingerprint(*fingerprint_);
    r.set_ttl_ms(static_cast<std::uint32_t>(ttl_ms));
    return r;
  }

  static std::string* model_dir_;
  static std::string* fingerprint_;
  static WorkerProcess* decode_;
  static WorkerProcess* prefill_;
};
std::string* DisaggTest::model_dir_ = nullptr;
std::string* DisaggTest::fingerprint_ = nullptr;
WorkerProcess* DisaggTest::decode_ = nullptr;
WorkerProcess* DisaggTest::prefill_ = nullptr;

std::vector<std::int32_t> TestPrompt(int n, int salt) {
  std::vector<std::int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back(3 + (i * 41 + salt * 13) % 500);
  return p;
}

TEST_F(DisaggTest, GreedyTokensEqualColocated) {
  const std::vector<std::int32_t> prompt = TestPrompt(29, 1);  // 4 blocks, the last partial
  const int max_tokens = 12;
  const std::vector<std::int32_t> expected = Reference(prompt, max_tokens);
  ASSERT_EQ(expected.size(), static_cast<std::size_t>(max_tokens));

  wv1::KvTarget target;
  {
    auto ctx = WorkerContext();
    grpc::Status s = decode_->stub().Reserve(ctx.get(), ReserveReq("dis-1", 29, max_tokens), &target);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_EQ(target.block_ids_size(), 4);
  EXPECT_EQ(target.layout().block_size_tokens(), 8u);
  EXPECT_FALSE(target.reservation_id().empty());
  EXPECT_EQ(GetLoad(*decode_).reservations(), 1u);

  wv1::PrefillResponse pr;
  {
    wv1::PrefillRequest p;
    p.set_request_id("dis-1");
    for (auto t : prompt) p.add_token_ids(t);
    *p.mutable_sampling() = Greedy();
    *p.mutable_target() = target;
    auto ctx = WorkerContext();
    grpc::Status s = prefill_->stub().Prefill(ctx.get(), p, &pr);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  EXPECT_EQ(pr.first_token_id(), expected[0]);
  EXPECT_GT(pr.kv_transfer_bytes(), 0u);
  EXPECT_TRUE(EventuallyWhole(*prefill_));

  wv1::DecodeRequest d;
  d.set_request_id("dis-1");
  d.set_reservation_id(target.reservation_id());
  for (auto t : prompt) d.add_prompt_token_ids(t);
  d.add_output_token_ids(pr.first_token_id());
  *d.mutable_sampling() = Greedy();
  d.mutable_stop()->set_max_tokens(max_tokens);
  d.mutable_stop()->set_ignore_eos(true);
  auto ctx = WorkerContext();
  auto reader = decode_->stub().Decode(ctx.get(), d);
  std::vector<std::int32_t> got = {pr.first_token_id()};
  wv1::DecodeResponse r;
  bool finished = false;
  while (reader->Read(&r)) {
    got.insert(got.end(), r.token_ids().begin(), r.token_ids().end());
    finished = finished || r.has_finish();
  }
  grpc::Status s = reader->Finish();
  ASSERT_TRUE(s.ok()) << s.error_message();
  EXPECT_TRUE(finished);
  EXPECT_EQ(got, expected);
  EXPECT_TRUE(EventuallyWhole(*decode_));
  EXPECT_GT(GetLoad(*decode_).transfer().bytes_received(), 0u);
  EXPECT_GT(GetLoad(*prefill_).transfer().bytes_sent(), 0u);
}

// Reserve (with the prompt's ids) → Prefill into the target → Decode, as the
// router does; every token, the first included.
struct DisaggRun {
  wv1::KvTarget target;
  wv1::PrefillResponse prefill;
  std::vector<std::int32_t> tokens;
};
DisaggRun RunWithIds(WorkerProcess& decode, WorkerProcess& prefill, const std::string& id,
                     const std::vector<std::int32_t>& prompt, int max_tokens, wv1::ReserveRequest reserve) {
  DisaggRun run;
  for (auto t : prompt) reserve.add_prompt_token_ids(t);
  {
    auto ctx = WorkerContext();
    grpc::Status s = decode.stub().Reserve(ctx.get(), reserve, &run.target);
    EXPECT_TRUE(s.ok()) << s.error_message();
    if (!s.ok()) return run;
  }
  {
    wv1::PrefillRequest p;
    p.set_request_id(id);
    for (auto t : prompt) p.add_token_ids(t);
    *p.mutable_sampling() = Greedy();
    *p.mutable_target() = run.target;
    auto ctx = WorkerContext();
    grpc::Status s = prefill.stub().Prefill(ctx.get(), p, &run.prefill);
    EXPECT_TRUE(s.ok()) << s.error_message();
    if (!s.ok()) return run;
  }
  wv1::DecodeRequest d;
  d.set_request_id(id);
  d.set_reservation_id(run.target.reservation_id());
  for (auto t : prompt) d.add_prompt_token_ids(t);
  d.add_output_token_ids(run.prefill.first_token_id());
  *d.mutable_sampling() = Greedy();
  d.mutable_stop()->set_max_tokens(static_cast<std::uint32_t>(max_tokens));
  d.mutable_stop()->set_ignore_eos(true);
  auto ctx = WorkerContext();
  auto reader = decode.stub().Decode(ctx.get(), d);
  run.tokens = {run.prefill.first_token_id()};
  wv1::DecodeResponse r;
  while (reader->Read(&r)) run.tokens.insert(run.tokens.end(), r.token_ids().begin(), r.token_ids().end());
  grpc::Status s = reader->Finish();
  EXPECT_TRUE(s.ok()) << s.error_message();
  return run;
}

// The decode worker shares the blocks of a prompt prefix it holds (from an
// earlier request) and the prefill worker does not send them again.
TEST_F(DisaggTest, BlocksTheDecodeWorkerHoldsAreNotSentAgain) {
  const std::vector<std::int32_t> first = TestPrompt(29, 7);  // 3 full blocks of 8, then 5 tokens
  DisaggRun a = RunWithIds(*decode_, *prefill_, "dis-c1", first, 6, ReserveReq("dis-c1", 29, 6));
  EXPECT_EQ(a.target.cached_tokens(), 0u);
  EXPECT_EQ(a.tokens, Reference(first, 6));
  ASSERT_TRUE(EventuallyWhole(*decode_));
  // The same 29 tokens and 10 more: the decode worker holds blocks 0..2 (its
  // block 3 holds first's answer, not these tokens).
  std::vector<std::int32_t> second = first;
  const std::vector<std::int32_t> more = TestPrompt(10, 8);
  second.insert(second.end(), more.begin(), more.end());  // 39 tokens: 5 blocks
  DisaggRun b = RunWithIds(*decode_, *prefill_, "dis-c2", second, 6, ReserveReq("dis-c2", 39, 6));
  EXPECT_EQ(b.target.cached_tokens(), 24u);
  EXPECT_EQ(b.tokens, Reference(second, 6));
  // 4 blocks per layer sent the first time, 5 - 3 the second.
  EXPECT_EQ(b.prefill.kv_transfer_bytes() * 2, a.prefill.kv_transfer_bytes());
  EXPECT_TRUE(EventuallyWhole(*decode_));
  EXPECT_TRUE(EventuallyWhole(*prefill_));
}

TEST_F(DisaggTest, BadPromptIdsAndCachedTokensAreInvalidArguments) {
  wv1::ReserveRequest r = ReserveReq("dis-bad", 5, 2);
  for (auto t : TestPrompt(4, 1)) r.add_prompt_token_ids(t);
  wv1::KvTarget target;
  {
    auto ctx = WorkerContext();
    grpc::Status s = decode_->stub().Reserve(ctx.get(), r, &target);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("prompt_token_ids"), std::string::npos) << s.error_message();
  }
  r.add_prompt_token_ids(1 << 30);
  {
    auto ctx = WorkerContext();
    grpc::Status s = decode_->stub().Reserve(ctx.get(), r, &target);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("prompt_token_ids[4]"), std::string::npos) << s.error_message();
  }
  {
    auto ctx = WorkerContext();
    grpc::Status s = decode_->stub().Reserve(ctx.get(), ReserveReq("dis-bad", 20, 2), &target);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  for (std::uint32_t cached : {5u, 24u}) {  // not whole blocks; not fewer than the prompt
    wv1::PrefillRequest p;
    p.set_request_id("dis-bad-p");
    for (auto t : TestPrompt(20, 2)) p.add_token_ids(t);
    *p.mutable_sampling() = Greedy();
    *p.mutable_target() = target;
    p.mutable_target()->set_cached_tokens(cached);
    wv1::PrefillResponse pr;
    auto ctx = WorkerContext();
    grpc::Status s = prefill_->stub().Prefill(ctx.get(), p, &pr);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << cached;
    EXPECT_NE(s.error_message().find("target.cached_tokens"), std::string::npos) << s.error_message();
  }
  wv1::CancelRequest c;
  c.set_request_id("dis-bad");
  wv1::CancelResponse cr;
  auto ctx = WorkerContext();
  ASSERT_TRUE(decode_->stub().Cancel(ctx.get(), c, &cr).ok());
  EXPECT_TRUE(EventuallyWhole(*decode_));
  EXPECT_TRUE(EventuallyWhole(*prefill_));
}

TEST_F(DisaggTest, UnusedReservationExpires) {
  wv1::KvTarget target;
  auto ctx = WorkerContext();
  ASSERT_TRUE(decode_->stub().Reserve(ctx.get(), ReserveReq("dis-expire", 20, 4, /*ttl_ms=*/200), &target).ok());
  EXPECT_LT(GetLoad(*decode_).free_blocks(), GetLoad(*decode_).total_blocks());
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_TRUE(EventuallyWhole(*decode_));
  // A Decode that comes too late is refused.
  wv1::DecodeRequest d;
  d.set_request_id("dis-expire");
  d.set_reservation_id(target.reservation_id());
  d.add_prompt_token_ids(5);
  d.add_output_token_ids(6);
  *d.mutable_sampling() = Greedy();
  d.mutable_stop()->set_max_tokens(4);
  auto dctx = WorkerContext();
  auto reader = decode_->stub().Decode(dctx.get(), d);
  wv1::DecodeResponse r;
  while (reader->Read(&r)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  // The request id is free again.
  auto ctx2 = WorkerContext();
  ASSERT_TRUE(decode_->stub().Reserve(ctx2.get(), ReserveReq("dis-expire", 20, 4, 200), &target).ok());
  auto cctx = WorkerContext();
  wv1::CancelRequest c;
  c.set_request_id("dis-expire");
  wv1::CancelResponse cr;
  ASSERT_TRUE(decode_->stub().Cancel(cctx.get(), c, &cr).ok());
  EXPECT_TRUE(cr.found());
  EXPECT_TRUE(EventuallyWhole(*decode_));
}

TEST_F(DisaggTest, LayoutMismatchIsFailedPrecondition) {
  WorkerProcess other(SIROCCO_DECODE_BINARY, Args("decode", 16));
  ASSERT_TRUE(other.ok());
  wv1::KvTarget target;
  {
    auto ctx = WorkerContext();
    ASSERT_TRUE(other.stub().Reserve(ctx.get(), ReserveReq("dis-layout", 10, 4), &target).ok());
  }
  wv1::PrefillRequest p;
  p.set_request_id("dis-layout");
  for (auto t : TestPrompt(10, 2)) p.add_token_ids(t);
  *p.mutable_sampling() = Greedy();
  *p.mutable_target() = target;
  wv1::PrefillResponse pr;
  auto ctx = WorkerContext();
  grpc::Status s = prefill_->stub().Prefill(ctx.get(), p, &pr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << s.error_message();
  EXPECT_NE(s.error_message().find("block_size"), std::string::npos) << s.error_message();
  EXPECT_TRUE(EventuallyWhole(*prefill_));
}

TEST_F(DisaggTest, RolesRefuseOtherSidesRpcs) {
  wv1::KvTarget target;
  auto ctx = WorkerContext();
  EXPECT_EQ(prefill_->stub().Reserve(ctx.get(), ReserveReq("dis-role", 10, 4), &target).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  wv1::PrefillRequest p;
  p.set_request_id("dis-role");
  p.add_token_ids(5);
  *p.mutable_sampling() = Greedy();
  wv1::PrefillResponse pr;
  auto ctx2 = WorkerContext();
  EXPECT_EQ(decode_->stub().Prefill(ctx2.get(), p, &pr).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

}  // namespace
}  // namespace sirocco::integration
