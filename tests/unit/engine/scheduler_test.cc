// The scheduler as plain logic: a real KvPool (one layer, one float per
// entry), a fake clock, and a fake runner that fills in sampled tokens. Every
// scenario ends by checking that the pool is whole again.
#include "engine/scheduler.h"

#include <map>
#include <random>
#include <set>

#include "gtest/gtest.h"

namespace sirocco::engine {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr std::int32_t kEos = 2;
constexpr std::int32_t kToken = 7;  // what the fake runner samples unless told otherwise

class SchedulerTest : public ::testing::Test {
 protected:
  void Make(std::int64_t num_blocks, std::int64_t block_size, std::int64_t budget = 16, std::int64_t max_seqs = 8,
            bool prefix_caching = false) {
    sched_.reset();
    pool_ = *KvPool::Create(KvPoolOptions{.num_layers = 1,
                                          .num_blocks = num_blocks,
                                          .block_size = block_size,
                                          .entry_dim = 1,
                                          .prefix_caching = prefix_caching});
    opts_.max_tokens_per_step = budget;
    opts_.max_seqs_per_step = max_seqs;
    opts_.max_model_len = 1024;
    opts_.vocab_size = 100;
    opts_.eos_token_ids = {kEos};
    auto s = Scheduler::Create(opts_, pool_.get());
    ASSERT_TRUE(s.ok()) << s.status();
    sched_ = std::move(*s);
  }
  void SetUp() override { Make(64, 4); }

  static RequestSpec Spec(std::int64_t prompt_len, std::int32_t max_tokens) {
    RequestSpec r;
    for (std::int64_t i = 0; i < prompt_len; ++i) r.prompt.push_back(static_cast<std::int32_t>(10 + i % 50));
    r.stop.max_tokens = max_tokens;
    r.sampling.temperature = 0.0f;
    return r;
  }
  absl::Status Add(std::uint64_t id, RequestSpec spec) { return sched_->AddRequest(RequestId{id}, std::move(spec), now_); }

  // Schedules one step and completes it, sampling `token` (or token_for(id)).
  StepPlan Step(std::int32_t token = kToken) {
    StepPlan plan = sched_->Schedule(now_);
    for (DecodeItem& d : plan.decode) d.token = TokenFor(d.id, token);
    for (PrefillChunk& c : plan.prefill) {
      if (c.samples) c.token = TokenFor(c.id, token);
    }
    sched_->OnStepDone(plan);
    return plan;
  }
  std::int32_t TokenFor(RequestId id, std::int32_t fallback) {
    auto it = token_for_.find(id.value);
    return it == token_for_.end() ? fallback : it->second;
  }
  // Runs steps until the scheduler has nothing runnable; returns how many.
  int RunToIdle(int limit = 10000) {
    int n = 0;
    for (; n < limit; ++n) {
      if (Step().empty()) break;
    }
    return n;
  }
  std::map<std::uint64_t, Exit> ExitsById() {
    std::map<std::uint64_t, Exit> out;
    for (Exit& e : sched_->TakeExits()) {
      EXPECT_FALSE(out.contains(e.id.value)) << "request " << e.id.value << " exited twice";
      out[e.id.value] = e;
    }
    return out;
  }
  RequestState StateOf(std::uint64_t id) { return sched_->Find(RequestId{id})->state; }
  void ExpectPoolWhole() {
    EXPECT_TRUE(sched_->idle());
    EXPECT_EQ(pool_->num_free(), pool_->num_blocks());
    SchedulerStats st = sched_->Stats();
    EXPECT_EQ(st.free_blocks, st.total_blocks);
    EXPECT_EQ(st.running() + st.waiting + st.transferring + st.reservations, 0);
  }

  // Random submits, reservations, arrivals, cancels, transfers, deadlines
  // and steps over many seeds, checking the invariants after every operation.
  void RunRandomOperations(bool prefix_caching);

  SchedulerOptions opts_;
  std::unique_ptr<KvPool> pool_;
  std::unique_ptr<Scheduler> sched_;
  SchedTime now_ = SchedTime{} + std::chrono::hours(1);
  std::map<std::uint64_t, std::int32_t> token_for_;
};

TEST_F(SchedulerTest, BadRequestsAreRefusedNamingTheField) {
  auto code_and_message = [&](std::uint64_t id, RequestSpec spec) {
    absl::Status s = Add(id, std::move(spec));
    return std::make_pair(s.code(), std::string(s.message()));
  };
  auto [c1, m1] = code_and_message(1, Spec(0, 4));
  EXPECT_EQ(c1, absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m1.find("prompt"), std::string::npos) << m1;
  RequestSpec bad_token = Spec(3, 4);
  bad_token.prompt[1] = 100;
  auto [c2, m2] = code_and_message(2, bad_token);
  EXPECT_EQ(c2, absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m2.find("prompt[1]"), std::string::npos) << m2;
  auto [c3, m3] = code_and_message(3, Spec(3, 0));
  EXPECT_EQ(c3, absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m3.find("max_tokens"), std::string::npos) << m3;
  RequestSpec bad_top_p = Spec(3, 4);
  bad_top_p.sampling.top_p = 0.0f;
  auto [c4, m4] = code_and_message(4, bad_top_p);
  EXPECT_EQ(c4, absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m4.find("top_p"), std::string::npos) << m4;
  auto [c5, m5] = code_and_message(5, Spec(1000, 25));  // 1025 > max_model_len
  EXPECT_EQ(c5, absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m5.find("context length"), std::string::npos) << m5;
  // 64 blocks of 4 hold 256 tokens: 200 + 57 - 1 = 256 fits, one more does not.
  EXPECT_TRUE(sched_->ValidateRequest(Spec(200, 57)).ok());
  auto [c6, m6] = code_and_message(6, Spec(200, 58));
  EXPECT_EQ(c6, absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(sched_->Stats().waiting, 0);
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, DuplicatesPastDeadlinesAndAFullQueueAreRefused) {
  opts_.max_waiting = 2;
  Make(64, 4);
  ASSERT_TRUE(Add(1, Spec(3, 2)).ok());
  EXPECT_EQ(Add(1, Spec(3, 2)).code(), absl::StatusCode::kAlreadyExists);
  RequestSpec late = Spec(3, 2);
  late.deadline = now_;
  EXPECT_EQ(Add(2, late).code(), absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(Add(3, Spec(3, 2)).ok());
  EXPECT_EQ(Add(4, Spec(3, 2)).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(sched_->Stats().waiting, 2);
  RunToIdle();
  auto exits = ExitsById();
  EXPECT_EQ(exits.size(), 2u);
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, OneRequestRunsPrefillThenDecodeToLength) {
  ASSERT_TRUE(Add(1, Spec(5, 3)).ok());
  EXPECT_EQ(StateOf(1), RequestState::kQueued);
  StepPlan p1 = Step(40);
  ASSERT_EQ(p1.prefill.size(), 1u);
  EXPECT_TRUE(p1.decode.empty());
  EXPECT_EQ(p1.prefill[0].start, 0);
  EXPECT_EQ(p1.prefill[0].len, 5);
  EXPECT_TRUE(p1.prefill[0].samples);
  EXPECT_EQ(StateOf(1), RequestState::kDecoding);
  EXPECT_EQ(sched_->Find(RequestId{1})->num_computed, 5);
  StepPlan p2 = Step(41);
  ASSERT_EQ(p2.decode.size(), 1u);
  EXPECT_EQ(p2.decode[0].pos, 5);  // the first sampled token is fed at position 5
  EXPECT_TRUE(p2.prefill.empty());
  StepPlan p3 = Step(42);
  ASSERT_EQ(p3.decode.size(), 1u);
  EXPECT_EQ(p3.decode[0].pos, 6);
  auto exits = ExitsById();
  ASSERT_EQ(exits.size(), 1u);
  EXPECT_EQ(exits[1].reason, ExitReason::kLength);
  EXPECT_EQ(exits[1].num_output_tokens, 3);
  EXPECT_TRUE(exits[1].status.ok());
  EXPECT_TRUE(Step().empty());
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, StopTokensEndGeneration) {
  ASSERT_TRUE(Add(1, Spec(3, 10)).ok());
  RequestSpec custom = Spec(3, 10);
  custom.stop.stop_token_ids = {55};
  ASSERT_TRUE(Add(2, custom).ok());
  RequestSpec ignore = Spec(3, 3);
  ignore.stop.ignore_eos = true;
  ASSERT_TRUE(Add(3, ignore).ok());
  Step();  // prefill all three
  token_for_[1] = kEos;
  token_for_[2] = 55;
  token_for_[3] = kEos;
  Step();
  auto exits = ExitsById();
  ASSERT_EQ(exits.size(), 2u);
  EXPECT_EQ(exits[1].reason, ExitReason::kStop);
  EXPECT_EQ(exits[1].num_output_tokens, 2);
  EXPECT_EQ(exits[2].reason, ExitReason::kStop);
  RunToIdle();
  exits = ExitsById();
  EXPECT_EQ(exits[3].reason, ExitReason::kLength) << "ignore_eos runs to max_tokens";
  EXPECT_EQ(exits[3].num_output_tokens, 3);
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, TokenBudgetSplitsPromptsIntoChunks) {
  Make(64, 4, /*budget=*/4);
  ASSERT_TRUE(Add(1, Spec(10, 2)).ok());
  StepPlan p1 = Step();
  ASSERT_EQ(p1.prefill.size(), 1u);
  EXPECT_EQ(p1.prefill[0].start, 0);
  EXPECT_EQ(p1.prefill[0].len, 4);
  EXPECT_FALSE(p1.prefill[0].samples);
  EXPECT_EQ(StateOf(1), RequestState::kPrefilling);
  // Admission took blocks for the whole prompt: ceil(10 / 4) = 3.
  EXPECT_EQ(sched_->Find(RequestId{1})->blocks.num_blocks(), 3);
  StepPlan p2 = Step();
  EXPECT_EQ(p2.prefill[0].start, 4);
  EXPECT_EQ(p2.prefill[0].len, 4);
  StepPlan p3 = Step();
  EXPECT_EQ(p3.prefill[0].start, 8);
  EXPECT_EQ(p3.prefill[0].len, 2);
  EXPECT_TRUE(p3.prefill[0].samples);
  EXPECT_EQ(StateOf(1), RequestState::kDecoding);
  RunToIdle();
  EXPECT_EQ(ExitsById()[1].num_output_tokens, 2);
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, BudgetIsSharedFcfsAcrossPrompts) {
  Make(64, 4, /*budget=*/8);
  ASSERT_TRUE(Add(1, Spec(6, 4)).ok());
  ASSERT_TRUE(Add(2, Spec(6, 4)).ok());
  ASSERT_TRUE(Add(3, Spec(6, 4)).ok());
  StepPlan p1 = Step();
  ASSERT_EQ(p1.prefill.size(), 2u);
  EXPECT_EQ(p1.prefill[0].id, RequestId{1});
  EXPECT_EQ(p1.prefill[0].len, 6);
  EXPECT_EQ(p1.prefill[1].id, RequestId{2});
  EXPECT_EQ(p1.prefill[1].len, 2);
  EXPECT_EQ(StateOf(3), RequestState::kQueued);
  StepPlan p2 = Step();
  // Decode first (request 1), then 2's remaining 4 tokens, then 3 gets 3.
  ASSERT_EQ(p2.decode.size(), 1u);
  EXPECT_EQ(p2.decode[0].id, RequestId{1});
  ASSERT_EQ(p2.prefill.size(), 2u);
  EXPECT_EQ(p2.prefill[0].id, RequestId{2});
  EXPECT_EQ(p2.prefill[0].start, 2);
  EXPECT_EQ(p2.prefill[0].len, 4);
  EXPECT_EQ(p2.prefill[1].id, RequestId{3});
  EXPECT_EQ(p2.prefill[1].len, 3);
  EXPECT_EQ(p2.num_tokens(), 8);
  RunToIdle();
  EXPECT_EQ(ExitsById().size(), 3u);
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, DecodeComesFirstAndLimitsHold) {
  Make(64, 4, /*budget=*/4, /*max_seqs=*/3);
  for (std::uint64_t id = 1; id <= 3; ++id) ASSERT_TRUE(Add(id, Spec(1, 10)).ok());
  Step();  // three one-token prompts fit the budget; all decode from now on
  ASSERT_TRUE(Add(4, Spec(10, 2)).ok());
  StepPlan p = Step();
  ASSERT_EQ(p.decode.size(), 3u);
  EXPECT_TRUE(p.prefill.empty()) << "max_seqs (3) is taken by decode";
  Make(64, 4, /*budget=*/4, /*max_seqs=*/8);
  for (std::uint64_t id = 1; id <= 3; ++id) ASSERT_TRUE(Add(id, Spec(1, 10)).ok());
  Step();
  ASSERT_TRUE(Add(4, Spec(10, 2)).ok());
  p = Step();
  ASSERT_EQ(p.decode.size(), 3u);
  ASSERT_EQ(p.prefill.size(), 1u);
  EXPECT_EQ(p.prefill[0].len, 1) << "the prompt gets what the decodes left of the budget";
  Make(64, 4, /*budget=*/2, /*max_seqs=*/8);
  for (std::uint64_t id = 1; id <= 3; ++id) ASSERT_TRUE(Add(id, Spec(1, 10)).ok());
  Step();  // 1 and 2 prefilled; the budget is spent
  p = Step();
  ASSERT_EQ(p.decode.size(), 2u);
  EXPECT_EQ(p.decode[0].id, RequestId{1});
  EXPECT_EQ(p.decode[1].id, RequestId{2});
  EXPECT_TRUE(p.prefill.empty()) << "decoding takes the whole budget; 3 waits";
  EXPECT_EQ(StateOf(3), RequestState::kQueued);
  RunToIdle();
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, NewestRequestIsPreemptedAndRecomputed) {
  Make(/*num_blocks=*/2, /*block_size=*/4);
  ASSERT_TRUE(Add(1, Spec(4, 5)).ok());  // 4 + 4 cached tokens: 2 blocks
  ASSERT_TRUE(Add(2, Spec(4, 5)).ok());
  token_for_[1] = 31;
  token_for_[2] = 32;
  StepPlan p1 = Step();
  EXPECT_EQ(p1.prefill.size(), 2u);
  EXPECT_EQ(pool_->num_free(), 0);
  // Request 1 needs a second block for position 4: request 2 (newest) yields.
  StepPlan p2 = Step();
  ASSERT_EQ(p2.decode.size(), 1u);
  EXPECT_EQ(p2.decode[0].id, RequestId{1});
  ASSERT_EQ(p2.preempted.size(), 1u);
  EXPECT_EQ(p2.preempted[0], RequestId{2});
  EXPECT_TRUE(p2.prefill.empty()) << "nothing is admitted in a step that preempted";
  const Scheduler::Sequence* two = sched_->Find(RequestId{2});
  EXPECT_EQ(two->state, RequestState::kQueued);
  EXPECT_EQ(two->num_computed, 0);
  EXPECT_EQ(two->blocks.num_blocks(), 0);
  EXPECT_EQ(two->output().size(), 1u) << "its sampled token is kept for recompute";
  EXPECT_EQ(two->num_preemptions, 1);
  EXPECT_EQ(sched_->Stats().preemptions, 1);
  // Request 1 finishes; then 2 is recomputed over prompt + its first token.
  StepPlan p = Step();
  while (sched_->Find(RequestId{1}) != nullptr) p = Step();
  auto exits = ExitsById();
  EXPECT_EQ(exits[1].reason, ExitReason::kLength);
  EXPECT_EQ(exits[1].num_output_tokens, 5);
  p = Step();
  ASSERT_EQ(p.prefill.size(), 1u);
  EXPECT_EQ(p.prefill[0].id, RequestId{2});
  EXPECT_EQ(p.prefill[0].start, 0);
  EXPECT_EQ(p.prefill[0].len, 5);
  EXPECT_TRUE(p.prefill[0].samples);
  EXPECT_EQ(sched_->Find(RequestId{2})->output().size(), 2u);
  EXPECT_EQ(sched_->Find(RequestId{2})->num_computed, 5);
  RunToIdle();
  exits = ExitsById();
  EXPECT_EQ(exits[2].reason, ExitReason::kLength);
  EXPECT_EQ(exits[2].num_output_tokens, 5) << "no token lost or repeated by the preemption";
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, ARequestPreemptsItselfWhenItIsTheNewest) {
  Make(/*num_blocks=*/3, /*block_size=*/4);
  ASSERT_TRUE(Add(1, Spec(4, 8)).ok());
  ASSERT_TRUE(Add(2, Spec(4, 8)).ok());
  Step();  // both prefilled: one free block left
  StepPlan p = Step();
  ASSERT_EQ(p.decode.size(), 1u) << "1 takes the free block; 2 finds none and is the newest";
  EXPECT_EQ(p.decode[0].id, RequestId{1});
  ASSERT_EQ(p.preempted.size(), 1u);
  EXPECT_EQ(p.preempted[0], RequestId{2});
  RunToIdle();
  auto exits = ExitsById();
  EXPECT_EQ(exits[1].num_output_tokens, 8);
  EXPECT_EQ(exits[2].num_output_tokens, 8);
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, PriorityOrdersAdmissionAndProtectsFromPreemption) {
  Make(/*num_blocks=*/2, /*block_size=*/4);
  RequestSpec low = Spec(4, 5);
  RequestSpec high = Spec(4, 5);
  high.priority = 1;
  ASSERT_TRUE(Add(1, low).ok());
  ASSERT_TRUE(Add(2, high).ok());
  StepPlan p1 = Step();
  ASSERT_EQ(p1.prefill.size(), 2u);
  EXPECT_EQ(p1.prefill[0].id, RequestId{2}) << "higher priority is admitted first";
  StepPlan p2 = Step();
  ASSERT_EQ(p2.preempted.size(), 1u);
  EXPECT_EQ(p2.preempted[0], RequestId{1}) << "the lower-priority request yields although it is older";
  RunToIdle();
  EXPECT_EQ(ExitsById().size(), 2u);
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, QueueHeadThatDoesNotFitBlocksTheQueue) {
  Make(/*num_blocks=*/4, /*block_size=*/4);
  ASSERT_TRUE(Add(1, Spec(8, 2)).ok());   // 2 blocks
  Step();                                  // admitted
  ASSERT_TRUE(Add(2, Spec(12, 2)).ok());  // needs 3 blocks, 2 free
  ASSERT_TRUE(Add(3, Spec(2, 2)).ok());   // would fit, but waits behind 2
  StepPlan p = Step();
  EXPECT_TRUE(p.prefill.empty());
  EXPECT_EQ(StateOf(2), RequestState::kQueued);
  EXPECT_EQ(StateOf(3), RequestState::kQueued);
  RunToIdle();
  auto exits = ExitsById();
  EXPECT_EQ(exits.size(), 3u);
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, CancelWorksInEveryState) {
  Make(64, 4, /*budget=*/4);
  RequestSpec pre = Spec(2, 10);
  pre.prefill_only = true;
  ASSERT_TRUE(Add(4, pre).ok());
  Step();  // 4: prefilled, now transferring
  ASSERT_TRUE(Add(1, Spec(2, 50)).ok());
  Step();  // 1: decoding
  ASSERT_TRUE(Add(2, Spec(12, 50)).ok());
  Step();  // 2: its first chunk of 3
  ASSERT_TRUE(Add(3, Spec(3, 50)).ok());
  auto reservation = sched_->Reserve(ReserveSpec{RequestId{5}, {1, 2, 3}, 4, seconds(5)}, now_);
  ASSERT_TRUE(reservation.ok());
  ASSERT_TRUE(Add(6, Spec(3, 10)).ok());
  EXPECT_EQ(StateOf(1), RequestState::kDecoding);
  EXPECT_EQ(StateOf(2), RequestState::kPrefilling);
  EXPECT_EQ(StateOf(3), RequestState::kQueued);
  EXPECT_EQ(StateOf(4), RequestState::kTransferring);
  EXPECT_EQ(StateOf(6), RequestState::kQueued);
  for (std::uint64_t id : {1, 2, 3, 4, 5, 6}) EXPECT_TRUE(sched_->Cancel(RequestId{id}).ok()) << id;
  EXPECT_EQ(sched_->Cancel(RequestId{1}).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(sched_->Cancel(RequestId{77}).code(), absl::StatusCode::kNotFound);
  auto exits = ExitsById();
  EXPECT_EQ(exits.size(), 5u) << "a reservation has no stream to end";
  for (auto& [id, e] : exits) {
    EXPECT_EQ(e.reason, ExitReason::kCancelled) << id;
    EXPECT_EQ(e.status.code(), absl::StatusCode::kCancelled) << id;
  }
  EXPECT_TRUE(Step().empty());
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, DeadlinesEndRequestsInAnyState) {
  Make(64, 4, /*budget=*/4);
  auto with_deadline = [&](std::int64_t prompt, SchedClock::duration in) {
    RequestSpec r = Spec(prompt, 50);
    r.deadline = now_ + in;
    return r;
  };
  ASSERT_TRUE(Add(1, with_deadline(2, seconds(5))).ok());
  Step();
  ASSERT_TRUE(Add(2, with_deadline(12, seconds(5))).ok());
  Step();
  ASSERT_TRUE(Add(3, with_deadline(12, seconds(9))).ok());
  ASSERT_TRUE(Add(4, Spec(2, 3)).ok());  // no deadline
  EXPECT_EQ(StateOf(1), RequestState::kDecoding);
  EXPECT_EQ(StateOf(2), RequestState::kPrefilling);
  EXPECT_EQ(StateOf(3), RequestState::kQueued);
  ASSERT_TRUE(sched_->NextExpiry().has_value());
  EXPECT_EQ(*sched_->NextExpiry(), now_ + seconds(5));
  now_ += seconds(5) - milliseconds(1);
  sched_->Expire(now_);
  EXPECT_TRUE(sched_->TakeExits().empty());
  now_ += milliseconds(1);
  sched_->Expire(now_);
  auto exits = ExitsById();
  ASSERT_EQ(exits.size(), 2u);
  EXPECT_EQ(exits[1].reason, ExitReason::kDeadlineExceeded);
  EXPECT_EQ(exits[1].status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(exits[2].reason, ExitReason::kDeadlineExceeded);
  now_ += seconds(10);
  sched_->Expire(now_);
  exits = ExitsById();
  ASSERT_EQ(exits.size(), 1u);
  EXPECT_EQ(exits[3].reason, ExitReason::kDeadlineExceeded);
  RunToIdle();
  EXPECT_EQ(ExitsById()[4].reason, ExitReason::kLength);
  EXPECT_FALSE(sched_->NextExpiry().has_value());
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, ReservationHoldsBlocksUntilItsTtl) {
  auto r = sched_->Reserve(ReserveSpec{RequestId{9}, std::vector<std::int32_t>(10, 3), 6, seconds(2)}, now_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request, RequestId{9});
  EXPECT_EQ(r->blocks.size(), 4u);  // ceil(16 / 4)
  std::set<std::int32_t> distinct;
  for (BlockId b : r->blocks) distinct.insert(b.value);
  EXPECT_EQ(distinct.size(), 4u);
  EXPECT_EQ(r->expires, now_ + seconds(2));
  SchedulerStats st = sched_->Stats();
  EXPECT_EQ(st.reservations, 1);
  EXPECT_EQ(st.reserved_blocks, 4);
  EXPECT_EQ(st.free_blocks, 60);
  EXPECT_EQ(sched_->Reserve(ReserveSpec{RequestId{9}, {1}, 0, seconds(2)}, now_).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(Add(9, Spec(3, 3)).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(Step().empty()) << "a reservation is not runnable";
  EXPECT_TRUE(sched_->Expire(now_ + seconds(2) - milliseconds(1)).empty());
  std::vector<ReservationId> expired = sched_->Expire(now_ + seconds(2));
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(expired[0], r->id);
  EXPECT_EQ(sched_->Stats().reservations_expired, 1);
  EXPECT_EQ(sched_->MarkKvArrived(r->id, 5, DecodeSpec{}, now_).code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(sched_->TakeExits().empty());
  ExpectPoolWhole();
}

// With a quarantine, a dropped reservation's blocks are neither free nor
// reserved until it passes: writes in flight cannot reach another request.
TEST_F(SchedulerTest, DroppedReservationsAreQuarantinedThenFreed) {
  opts_.reservation_quarantine = milliseconds(500);
  Make(64, 4);
  auto cancelled = sched_->Reserve(ReserveSpec{RequestId{1}, std::vector<std::int32_t>(8, 3), 0, seconds(2)}, now_);
  auto expiring = sched_->Reserve(ReserveSpec{RequestId{2}, std::vector<std::int32_t>(4, 3), 0, seconds(1)}, now_);
  ASSERT_TRUE(cancelled.ok() && expiring.ok());
  ASSERT_TRUE(sched_->Cancel(RequestId{1}).ok());
  SchedulerStats st = sched_->Stats();
  EXPECT_EQ(st.reservations, 1);
  EXPECT_EQ(st.reserved_blocks, 1);
  EXPECT_EQ(st.quarantined_blocks, 2);
  EXPECT_EQ(st.free_blocks, 61);
  // The cancelled reservation's blocks are not handed out meanwhile.
  ASSERT_TRUE(Add(3, Spec(245, 4)).ok());
  EXPECT_TRUE(Step().prefill.empty()) << "61 free blocks cannot hold a 245-token prompt";
  EXPECT_EQ(sched_->NextExpiry(), now_ + milliseconds(500));
  sched_->Expire(now_ + milliseconds(499));
  EXPECT_EQ(sched_->Stats().quarantined_blocks, 2);
  sched_->Expire(now_ + milliseconds(500));
  EXPECT_EQ(sched_->Stats().quarantined_blocks, 0);
  EXPECT_EQ(sched_->Stats().free_blocks, 63);
  // The expired one is quarantined from its expiry on.
  ASSERT_EQ(sched_->Expire(now_ + seconds(1)).size(), 1u);
  EXPECT_EQ(sched_->Stats().quarantined_blocks, 1);
  EXPECT_EQ(sched_->NextExpiry(), now_ + seconds(1) + milliseconds(500));
  sched_->Expire(now_ + seconds(2));
  EXPECT_EQ(sched_->Stats().quarantined_blocks, 0);
  EXPECT_TRUE(sched_->Cancel(RequestId{3}).ok());
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, ReservationsThatCannotFitAreRefusedTakingNothing) {
  Make(/*num_blocks=*/8, /*block_size=*/4);
  EXPECT_EQ(sched_->Reserve(ReserveSpec{RequestId{1}, std::vector<std::int32_t>(30, 3), 10, seconds(2)}, now_)
                .status()
                .code(),
            absl::StatusCode::kResourceExhausted);
  auto big = sched_->Reserve(ReserveSpec{RequestId{2}, std::vector<std::int32_t>(20, 3), 0, seconds(2)}, now_);
  ASSERT_TRUE(big.ok());
  auto no_room = sched_->Reserve(ReserveSpec{RequestId{3}, std::vector<std::int32_t>(13, 3), 0, seconds(2)}, now_);
  EXPECT_EQ(no_room.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool_->num_free(), 3);
  EXPECT_EQ(sched_->Reserve(ReserveSpec{RequestId{4}, {}, 0, seconds(2)}, now_).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sched_->Reserve(ReserveSpec{RequestId{4}, {1}, -1, seconds(2)}, now_).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sched_->Reserve(ReserveSpec{RequestId{4}, {1}, 0, seconds(0)}, now_).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(sched_->Cancel(RequestId{2}).ok());
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, ArrivedKvDecodesFromTheFirstToken) {
  auto r = sched_->Reserve(ReserveSpec{RequestId{1}, {4, 5, 6, 7}, 0, seconds(2)}, now_);
  ASSERT_TRUE(r.ok());
  DecodeSpec d;
  d.stop.max_tokens = 3;
  EXPECT_EQ(sched_->MarkKvArrived(r->id, 100, d, now_).code(), absl::StatusCode::kInvalidArgument);
  DecodeSpec bad = d;
  bad.stop.max_tokens = 0;
  EXPECT_EQ(sched_->MarkKvArrived(r->id, 9, bad, now_).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sched_->Stats().reservations, 1) << "a refused arrival leaves the reservation in place";
  ASSERT_TRUE(sched_->MarkKvArrived(r->id, 9, d, now_).ok());
  EXPECT_EQ(sched_->Stats().reservations, 0);
  const Scheduler::Sequence* s = sched_->Find(RequestId{1});
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->state, RequestState::kDecoding);
  EXPECT_EQ(s->num_computed, 4);
  EXPECT_EQ(s->blocks.num_blocks(), 1);
  ASSERT_EQ(s->output().size(), 1u);
  EXPECT_EQ(s->output()[0], 9);
  StepPlan p = Step();
  ASSERT_EQ(p.decode.size(), 1u);
  EXPECT_EQ(p.decode[0].pos, 4);
  EXPECT_EQ(sched_->Find(RequestId{1})->blocks.num_blocks(), 2) << "grew past the reserved prompt block";
  Step();
  auto exits = ExitsById();
  EXPECT_EQ(exits[1].reason, ExitReason::kLength);
  EXPECT_EQ(exits[1].num_output_tokens, 3) << "max_tokens counts the first token";
  ExpectPoolWhole();
}

// The router sends the real prompt with Decode; it replaces the ids the
// reservation was made with (what a recompute after preemption feeds).
TEST_F(SchedulerTest, ArrivedKvTakesTheDecodersPromptIds) {
  auto r = sched_->Reserve(ReserveSpec{RequestId{1}, {0, 0, 0}, 0, seconds(2)}, now_);
  ASSERT_TRUE(r.ok());
  DecodeSpec d;
  d.stop.max_tokens = 3;
  d.prompt = {4, 5};
  EXPECT_EQ(sched_->MarkKvArrived(r->id, 9, d, now_).code(), absl::StatusCode::kInvalidArgument) << "length";
  d.prompt = {4, 5, -1};
  EXPECT_EQ(sched_->MarkKvArrived(r->id, 9, d, now_).code(), absl::StatusCode::kInvalidArgument) << "range";
  d.prompt = {4, 5, 6};
  ASSERT_TRUE(sched_->MarkKvArrived(r->id, 9, d, now_).ok());
  const Scheduler::Sequence* s = sched_->Find(RequestId{1});
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(std::vector<std::int32_t>(s->prompt().begin(), s->prompt().end()), (std::vector<std::int32_t>{4, 5, 6}));
  EXPECT_TRUE(sched_->Cancel(RequestId{1}).ok());
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, ReplayedMustLeaveAPrompt) {
  RequestSpec spec = Spec(3, 4);
  spec.replayed = 3;
  EXPECT_EQ(sched_->AddRequest(RequestId{1}, spec, now_).code(), absl::StatusCode::kInvalidArgument);
  spec.replayed = -1;
  EXPECT_EQ(sched_->AddRequest(RequestId{1}, spec, now_).code(), absl::StatusCode::kInvalidArgument);
  spec.replayed = 2;
  ASSERT_TRUE(sched_->AddRequest(RequestId{1}, spec, now_).ok());
  EXPECT_EQ(sched_->Find(RequestId{1})->replayed, 2);
  EXPECT_TRUE(sched_->Cancel(RequestId{1}).ok());
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, AFirstTokenThatStopsEndsAtOnce) {
  auto r = sched_->Reserve(ReserveSpec{RequestId{1}, {4, 5}, 8, seconds(2)}, now_);
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(sched_->MarkKvArrived(r->id, kEos, DecodeSpec{}, now_).ok());
  auto exits = ExitsById();
  EXPECT_EQ(exits[1].reason, ExitReason::kStop);
  EXPECT_EQ(exits[1].num_output_tokens, 1);
  r = sched_->Reserve(ReserveSpec{RequestId{2}, {4, 5}, 8, seconds(2)}, now_);
  DecodeSpec one;
  one.stop.max_tokens = 1;
  ASSERT_TRUE(sched_->MarkKvArrived(r->id, 9, one, now_).ok());
  EXPECT_EQ(ExitsById()[2].reason, ExitReason::kLength);
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, PrefillOnlyHoldsBlocksUntilTheTransferEnds) {
  RequestSpec pre = Spec(6, 10);
  pre.prefill_only = true;
  ASSERT_TRUE(Add(1, pre).ok());
  ASSERT_TRUE(Add(2, pre).ok());
  EXPECT_EQ(sched_->OnTransferDone(RequestId{1}, absl::OkStatus()).code(), absl::StatusCode::kFailedPrecondition);
  token_for_[1] = kEos;  // not checked: the router applies stop rules to the first token
  Step();
  EXPECT_EQ(StateOf(1), RequestState::kTransferring);
  EXPECT_EQ(StateOf(2), RequestState::kTransferring);
  EXPECT_EQ(sched_->Find(RequestId{1})->output().size(), 1u);
  EXPECT_EQ(sched_->Stats().transferring, 2);
  EXPECT_EQ(pool_->num_free(), 64 - 4);
  EXPECT_TRUE(Step().empty()) << "a transferring request does not run";
  EXPECT_TRUE(sched_->TakeExits().empty());
  ASSERT_TRUE(sched_->OnTransferDone(RequestId{1}, absl::OkStatus()).ok());
  ASSERT_TRUE(sched_->OnTransferDone(RequestId{2}, absl::UnavailableError("peer lost")).ok());
  auto exits = ExitsById();
  EXPECT_EQ(exits[1].reason, ExitReason::kPrefillDone);
  EXPECT_EQ(exits[1].num_output_tokens, 1);
  EXPECT_EQ(exits[2].reason, ExitReason::kFailed);
  EXPECT_EQ(exits[2].status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(sched_->OnTransferDone(RequestId{1}, absl::OkStatus()).code(), absl::StatusCode::kNotFound);
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, AFailedStepFailsItsRequestsOnly) {
  Make(64, 4, /*budget=*/4);
  ASSERT_TRUE(Add(1, Spec(2, 5)).ok());
  ASSERT_TRUE(Add(2, Spec(2, 5)).ok());
  Step();
  ASSERT_TRUE(Add(3, Spec(20, 5)).ok());  // not in the next plan beyond a chunk
  ASSERT_TRUE(Add(4, Spec(20, 5)).ok());  // not in the next plan at all
  StepPlan p = sched_->Schedule(now_);
  EXPECT_EQ(p.decode.size(), 2u);
  ASSERT_EQ(p.prefill.size(), 1u);
  sched_->OnStepFailed(p, absl::InternalError("device lost"));
  auto exits = ExitsById();
  ASSERT_EQ(exits.size(), 3u);
  for (std::uint64_t id : {1, 2, 3}) {
    EXPECT_EQ(exits[id].reason, ExitReason::kFailed);
    EXPECT_EQ(exits[id].status.code(), absl::StatusCode::kInternal);
  }
  RunToIdle();
  EXPECT_EQ(ExitsById()[4].reason, ExitReason::kLength);
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, CancelAllAndDestructionReturnEveryBlock) {
  ASSERT_TRUE(Add(1, Spec(5, 9)).ok());
  Step();
  ASSERT_TRUE(Add(2, Spec(30, 9)).ok());
  ASSERT_TRUE(sched_->Reserve(ReserveSpec{RequestId{3}, {1, 2}, 3, seconds(1)}, now_).ok());
  EXPECT_LT(pool_->num_free(), pool_->num_blocks());
  sched_->CancelAll(absl::UnavailableError("stopping"));
  auto exits = ExitsById();
  EXPECT_EQ(exits.size(), 2u);
  EXPECT_EQ(exits[1].status.code(), absl::StatusCode::kUnavailable);
  ExpectPoolWhole();
  ASSERT_TRUE(Add(4, Spec(5, 9)).ok());
  Step();
  EXPECT_LT(pool_->num_free(), pool_->num_blocks());
  sched_.reset();
  EXPECT_EQ(pool_->num_free(), pool_->num_blocks());
}

// Random operations against the invariants: blocks are conserved, plans
// respect the limits, every request exits exactly once with no more than
// max_tokens outputs, and the pool is whole when all is done.
void SchedulerTest::RunRandomOperations(bool prefix_caching) {
  std::map<ExitReason, int> reasons;  // over all seeds: the run must reach every exit path
  std::int64_t preemptions = 0, hits = 0, shared_reservations = 0;
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    std::mt19937_64 rng(seed);
    auto uniform = [&](std::int64_t lo, std::int64_t hi) {
      return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng);
    };
    Make(/*num_blocks=*/uniform(8, 24), /*block_size=*/uniform(1, 4), /*budget=*/uniform(1, 12),
         /*max_seqs=*/uniform(1, 5), prefix_caching);
    std::map<std::uint64_t, std::int32_t> max_tokens;     // submitted requests
    std::map<std::uint64_t, ReservationId> reservations;  // reserved, not yet arrived
    std::vector<ReservationId> every_reservation;         // made, live or not
    std::set<std::uint64_t> exited;
    std::uint64_t next_id = 1;
    for (int op = 0; op < 400; ++op) {
      const std::int64_t what = uniform(0, 9);
      if (what <= 1) {
        RequestSpec r = Spec(uniform(1, 12), static_cast<std::int32_t>(uniform(1, 8)));
        r.priority = static_cast<std::int32_t>(uniform(0, 1));
        r.prefill_only = uniform(0, 5) == 0;
        if (uniform(0, 3) == 0) r.deadline = now_ + milliseconds(uniform(1, 200));
        if (Add(next_id, r).ok()) max_tokens[next_id] = r.stop.max_tokens;
        ++next_id;
      } else if (what == 2) {
        // Prompts like Spec's (they share prefixes with the requests'), ids
        // known or a length alone.
        RequestSpec shape = Spec(uniform(1, 12), 1);
        auto res = sched_->Reserve(ReserveSpec{RequestId{next_id}, shape.prompt, uniform(0, 4),
                                               milliseconds(uniform(1, 100)), uniform(0, 1) == 1},
                                   now_);
        if (res.ok()) {
          reservations[next_id] = res->id;
          every_reservation.push_back(res->id);
          if (res->cached_tokens > 0) ++shared_reservations;
        }
        ++next_id;
      } else if (what == 3 && !reservations.empty()) {
        auto it = reservations.begin();
        std::advance(it, uniform(0, static_cast<std::int64_t>(reservations.size()) - 1));
        DecodeSpec d;
        d.stop.max_tokens = static_cast<std::int32_t>(uniform(1, 8));
        if (sched_->MarkKvArrived(it->second, kToken, d, now_).ok()) max_tokens[it->first] = d.stop.max_tokens;
        reservations.erase(it);
      } else if (what == 4 && next_id > 1) {
        (void)sched_->Cancel(RequestId{static_cast<std::uint64_t>(uniform(1, static_cast<std::int64_t>(next_id)))});
      } else if (what == 5) {
        for (std::uint64_t id = 1; id < next_id; ++id) {
          const Scheduler::Sequence* s = sched_->Find(RequestId{id});
          if (s != nullptr && s->state == RequestState::kTransferring) {
            (void)sched_->OnTransferDone(RequestId{id}, absl::OkStatus());
          }
        }
      } else {
        now_ += milliseconds(uniform(0, 10));
        sched_->Expire(now_);
        token_for_.clear();
        StepPlan plan = sched_->Schedule(now_);
        // Every block a step writes into belongs to its sequence alone and is
        // not published (shared prefix blocks are only read).
        std::map<std::int32_t, int> holders;
        for (std::uint64_t id = 1; id < next_id; ++id) {
          if (const Scheduler::Sequence* s = sched_->Find(RequestId{id})) {
            for (std::int64_t b = 0; b < s->blocks.num_blocks(); ++b) ++holders[s->blocks.block(b).value];
          }
        }
        for (ReservationId res : every_reservation) {
          if (const Reservation* r = sched_->FindReservation(res)) {
            for (BlockId b : r->blocks) ++holders[b.value];
          }
        }
        // What a prefill worker writes into a reservation is its alone too.
        for (ReservationId res : every_reservation) {
          if (const Reservation* r = sched_->FindReservation(res)) {
            const auto first = static_cast<std::size_t>(r->cached_tokens / pool_->block_size());
            for (std::size_t b = first; b < r->blocks.size(); ++b) {
              EXPECT_EQ(holders[r->blocks[b].value], 1) << "seed " << seed << ": a reservation shares a block it gets";
            }
          }
        }
        auto expect_private = [&](RequestId id, std::int64_t begin, std::int64_t end) {
          const Scheduler::Sequence* s = sched_->Find(id);
          const std::int64_t bs = pool_->block_size();
          for (std::int64_t b = begin / bs; b <= (end - 1) / bs; ++b) {
            EXPECT_EQ(holders[s->blocks.block(b).value], 1) << "seed " << seed << ": a shared block is written";
            EXPECT_GE(b, s->num_published) << "seed " << seed << ": a published block is written";
          }
        };
        for (const DecodeItem& d : plan.decode) expect_private(d.id, d.pos, d.pos + 1);
        for (const PrefillChunk& c : plan.prefill) expect_private(c.id, c.start, c.start + c.len);
        EXPECT_LE(plan.num_tokens(), opts_.max_tokens_per_step);
        EXPECT_LE(static_cast<std::int64_t>(plan.decode.size() + plan.prefill.size()), opts_.max_seqs_per_step);
        std::set<std::uint64_t> in_plan;
        for (DecodeItem& d : plan.decode) {
          EXPECT_TRUE(in_plan.insert(d.id.value).second);
          const Scheduler::Sequence* s = sched_->Find(d.id);
          EXPECT_GE(s->blocks.capacity(), d.pos + 1);
          d.token = uniform(0, 20) == 0 ? kEos : kToken;
        }
        for (PrefillChunk& c : plan.prefill) {
          EXPECT_TRUE(in_plan.insert(c.id.value).second);
          const Scheduler::Sequence* s = sched_->Find(c.id);
          EXPECT_GE(s->blocks.capacity(), c.start + c.len);
          EXPECT_GE(c.len, 1);
          if (c.samples) c.token = kToken;
        }
        sched_->OnStepDone(plan);
      }
      for (Exit& e : sched_->TakeExits()) {
        ++reasons[e.reason];
        EXPECT_TRUE(exited.insert(e.id.value).second) << "seed " << seed << ": " << e.id.value << " exited twice";
        ASSERT_TRUE(max_tokens.contains(e.id.value));
        EXPECT_LE(e.num_output_tokens, max_tokens[e.id.value]);
        if (e.reason == ExitReason::kLength) {
          EXPECT_EQ(e.num_output_tokens, max_tokens[e.id.value]);
        }
      }
      // Conservation: free + held (by requests and reservations, once
      // however many share a block) = total.
      std::set<std::int32_t> held_blocks;
      for (std::uint64_t id = 1; id < next_id; ++id) {
        if (const Scheduler::Sequence* s = sched_->Find(RequestId{id})) {
          for (std::int64_t b = 0; b < s->blocks.num_blocks(); ++b) held_blocks.insert(s->blocks.block(b).value);
          if (s->state == RequestState::kQueued) {
            EXPECT_EQ(s->blocks.num_blocks(), 0);
          }
        }
      }
      std::int64_t reserved = 0;
      for (ReservationId res : every_reservation) {
        if (const Reservation* r = sched_->FindReservation(res)) {
          for (BlockId b : r->blocks) held_blocks.insert(b.value);
          reserved += static_cast<std::int64_t>(r->blocks.size());
        }
      }
      EXPECT_EQ(reserved, sched_->Stats().reserved_blocks) << "seed " << seed << " op " << op;
      const auto held = static_cast<std::int64_t>(held_blocks.size());
      ASSERT_EQ(held + pool_->num_free(), pool_->num_blocks()) << "seed " << seed << " op " << op;
    }
    // Drain: finish transfers, let everything run out, then expire the rest.
    for (int i = 0; i < 10000 && !sched_->idle(); ++i) {
      for (std::uint64_t id = 1; id < next_id; ++id) {
        const Scheduler::Sequence* s = sched_->Find(RequestId{id});
        if (s != nullptr && s->state == RequestState::kTransferring) {
          (void)sched_->OnTransferDone(RequestId{id}, absl::OkStatus());
        }
      }
      now_ += milliseconds(50);
      sched_->Expire(now_);
      Step();
    }
    for (Exit& e : sched_->TakeExits()) {
      ++reasons[e.reason];
      EXPECT_TRUE(exited.insert(e.id.value).second);
    }
    EXPECT_EQ(exited.size(), max_tokens.size()) << "seed " << seed << ": every request exits exactly once";
    preemptions += sched_->Stats().preemptions;
    hits += sched_->Stats().prefix_cache_hits;
    ExpectPoolWhole();
  }
  if (prefix_caching) {
    EXPECT_GT(hits, 0) << "the prompts share prefixes: some admissions must hit";
    EXPECT_GT(shared_reservations, 0) << "and some reservations";
  } else {
    EXPECT_EQ(hits, 0);
    EXPECT_EQ(shared_reservations, 0);
  }
  for (ExitReason r : {ExitReason::kStop, ExitReason::kLength, ExitReason::kPrefillDone, ExitReason::kCancelled,
                       ExitReason::kDeadlineExceeded}) {
    EXPECT_GT(reasons[r], 0) << ExitReasonName(r);
  }
  EXPECT_GT(preemptions, 0);
}

TEST_F(SchedulerTest, RandomOperationsKeepTheInvariants) { RunRandomOperations(false); }

TEST_F(SchedulerTest, RandomOperationsWithPrefixCachingKeepTheInvariants) { RunRandomOperations(true); }

TEST_F(SchedulerTest, PrefixCacheSkipsTheBlocksAnEarlierRequestComputed) {
  Make(64, 4, /*budget=*/16, /*max_seqs=*/8, /*prefix_caching=*/true);
  ASSERT_TRUE(Add(1, Spec(10, 3)).ok());
  StepPlan p = Step();  // prefills all 10 tokens: blocks 0 and 1 are full and published
  ASSERT_EQ(p.prefill.size(), 1u);
  EXPECT_EQ(sched_->Stats().cached_blocks, 2);

  // Same 10 tokens while request 1 still runs: 8 come from the cache; the
  // last block (tokens 8, 9) is computed, as the last token must be.
  ASSERT_TRUE(Add(2, Spec(10, 3)).ok());
  p = Step();
  ASSERT_EQ(p.prefill.size(), 1u);
  EXPECT_EQ(p.prefill[0].id.value, 2u);
  EXPECT_EQ(p.prefill[0].start, 8);
  EXPECT_EQ(p.prefill[0].len, 2);
  EXPECT_EQ(sched_->Find(RequestId{2})->num_cached, 8);
  EXPECT_EQ(sched_->Find(RequestId{2})->blocks.block(0), sched_->Find(RequestId{1})->blocks.block(0));

  // A prompt of exactly two blocks: only the first is reused.
  ASSERT_TRUE(Add(3, Spec(8, 1)).ok());
  p = Step();
  ASSERT_EQ(p.prefill.size(), 1u);
  EXPECT_EQ(p.prefill[0].start, 4);
  EXPECT_EQ(p.prefill[0].len, 4);
  RunToIdle();
  ExitsById();
  SchedulerStats st = sched_->Stats();
  EXPECT_EQ(st.prefix_cache_queries, 10 + 10 + 8);
  EXPECT_EQ(st.prefix_cache_hits, 8 + 4);
  EXPECT_GT(st.cached_blocks, 2) << "output blocks are published too";
  ExpectPoolWhole();
  EXPECT_EQ(pool_->num_evictable(), st.cached_blocks);

  // After everyone left, the cache still serves a new request.
  ASSERT_TRUE(Add(4, Spec(12, 1)).ok());
  p = Step();
  EXPECT_EQ(p.prefill[0].start, 8);
  RunToIdle();
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, PreemptedRequestsResumeFromTheirOwnPublishedBlocks) {
  Make(/*num_blocks=*/6, /*block_size=*/2, /*budget=*/16, /*max_seqs=*/8, /*prefix_caching=*/true);
  // Two requests that together outgrow the pool: the newer one is preempted,
  // and its recompute finds the blocks it had published.
  RequestSpec a = Spec(4, 6), b = Spec(4, 6);
  for (std::int32_t& t : b.prompt) t += 50;  // no prefix in common with a
  ASSERT_TRUE(Add(1, a).ok());
  ASSERT_TRUE(Add(2, b).ok());
  std::int64_t resumed_from = -1;
  for (int i = 0; i < 100 && !sched_->idle(); ++i) {
    StepPlan p = Step();
    for (const PrefillChunk& c : p.prefill) {
      if (c.id.value == 2 && sched_->Find(RequestId{2}) && sched_->Find(RequestId{2})->num_preemptions > 0) {
        resumed_from = std::max(resumed_from, c.start);
      }
    }
  }
  EXPECT_GT(sched_->Stats().preemptions, 0);
  EXPECT_GT(resumed_from, 0) << "the recompute started after cached blocks";
  ExitsById();
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, AReservationForKnownIdsSharesTheCachedBlocks) {
  Make(64, 4, /*budget=*/16, /*max_seqs=*/8, /*prefix_caching=*/true);
  ASSERT_TRUE(Add(1, Spec(10, 2)).ok());
  RunToIdle();  // blocks 0 and 1 (tokens 0..7) published, then evictable
  ExitsById();
  const std::int64_t free_before = pool_->num_free();
  RequestSpec same = Spec(10, 1);
  auto known = sched_->Reserve(ReserveSpec{RequestId{2}, same.prompt, 4, seconds(5), true}, now_);
  ASSERT_TRUE(known.ok()) << known.status();
  EXPECT_EQ(known->cached_tokens, 8);
  ASSERT_EQ(known->blocks.size(), 4u);  // 14 tokens: 2 shared + 2 fresh
  EXPECT_EQ(pool_->num_free(), free_before - 4) << "the shared blocks left the evictable set";
  // A length alone shares nothing.
  auto blind = sched_->Reserve(ReserveSpec{RequestId{3}, same.prompt, 4, seconds(5), false}, now_);
  ASSERT_TRUE(blind.ok());
  EXPECT_EQ(blind->cached_tokens, 0);
  // The decode must be for the ids reserved for.
  DecodeSpec wrong;
  wrong.stop.max_tokens = 2;
  wrong.prompt = same.prompt;
  wrong.prompt[9] += 1;
  EXPECT_EQ(sched_->MarkKvArrived(known->id, kToken, wrong, now_).code(), absl::StatusCode::kInvalidArgument);
  DecodeSpec right;
  right.stop.max_tokens = 2;
  ASSERT_TRUE(sched_->MarkKvArrived(known->id, kToken, right, now_).ok());
  EXPECT_EQ(sched_->Find(RequestId{2})->num_published, 2) << "block 2 is not full before the first decode step";
  ASSERT_TRUE(sched_->Cancel(RequestId{3}).ok());
  RunToIdle();
  ExitsById();
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, ThePrefixCacheStopsAtTheFirstImageToken) {
  constexpr std::int32_t kImg = 99;
  opts_.image_token_id = kImg;
  Make(64, 4, /*budget=*/32, /*max_seqs=*/8, /*prefix_caching=*/true);
  // Tokens 0..5 are text, 6.. an image's placeholders: only block 0 (tokens
  // 0..3) may be published; block 1 holds token 6.
  RequestSpec a = Spec(14, 2);
  for (std::size_t i = 6; i < 10; ++i) a.prompt[i] = kImg;
  ASSERT_TRUE(Add(1, a).ok());
  Step();
  EXPECT_EQ(sched_->Find(RequestId{1})->num_published, 1);
  EXPECT_EQ(sched_->Stats().cached_blocks, 1);

  // The same ids (another image, same placeholders) reuse block 0 only.
  ASSERT_TRUE(Add(2, a).ok());
  StepPlan p = Step();
  ASSERT_EQ(p.prefill.size(), 1u);
  EXPECT_EQ(p.prefill[0].start, 4);
  RunToIdle();
  ExitsById();
  EXPECT_EQ(sched_->Stats().cached_blocks, 1) << "nothing after an image token is published, output included";

  // A reservation for known ids shares block 0 only, too.
  auto r = sched_->Reserve(ReserveSpec{RequestId{3}, a.prompt, 2, seconds(5), true}, now_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->cached_tokens, 4);
  ASSERT_TRUE(sched_->Cancel(RequestId{3}).ok());
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, FailEndsARequestWithItsStatus) {
  ASSERT_TRUE(Add(1, Spec(6, 4)).ok());
  Step();
  ASSERT_TRUE(sched_->Fail(RequestId{1}, absl::InvalidArgumentError("images[0]: corrupt")).ok());
  auto exits = ExitsById();
  ASSERT_TRUE(exits.contains(1));
  EXPECT_EQ(exits[1].reason, ExitReason::kFailed);
  EXPECT_EQ(exits[1].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sched_->Fail(RequestId{1}, absl::InternalError("again")).code(), absl::StatusCode::kNotFound);
  ExpectPoolWhole();
}

TEST_F(SchedulerTest, ACacheKeyPromptSharesBlocksWithTheSameImageOnly) {
  constexpr std::int32_t kImg = 99;
  opts_.image_token_id = kImg;
  Make(64, 4, /*budget=*/32, /*max_seqs=*/8, /*prefix_caching=*/true);
  RequestSpec a = Spec(14, 2);
  for (std::size_t i = 6; i < 10; ++i) a.prompt[i] = kImg;
  auto keyed = [&](std::int32_t image_id) {
    RequestSpec r = a;
    r.cache_key_prompt = a.prompt;
    for (std::size_t i = 6; i < 10; ++i) r.cache_key_prompt[i] = image_id - static_cast<std::int32_t>(i);
    return r;
  };
  ASSERT_TRUE(Add(1, keyed(-100)).ok());
  Step();
  EXPECT_EQ(sched_->Find(RequestId{1})->num_published, 3) << "blocks 0..2 are full and keyed";
  // The same image: blocks 0..2 (tokens 0..11) come from the cache.
  ASSERT_TRUE(Add(2, keyed(-100)).ok());
  StepPlan p = Step();
  ASSERT_EQ(p.prefill.size(), 1u);
  EXPECT_EQ(p.prefill[0].start, 12);
  // Another image with the same ids: only block 0, before the image.
  ASSERT_TRUE(Add(3, keyed(-200)).ok());
  p = Step();
  ASSERT_EQ(p.prefill.size(), 1u);
  EXPECT_EQ(p.prefill[0].start, 4);
  RunToIdle();
  ExitsById();
  // A key that replaces a text token, or an image token by an id >= 0, is refused.
  RequestSpec bad = keyed(-100);
  bad.cache_key_prompt[0] = -5;
  EXPECT_EQ(Add(4, bad).code(), absl::StatusCode::kInvalidArgument);
  bad = keyed(-100);
  bad.cache_key_prompt[7] = 3;
  EXPECT_EQ(Add(5, bad).code(), absl::StatusCode::kInvalidArgument);
  bad = keyed(-100);
  bad.cache_key_prompt.pop_back();
  EXPECT_EQ(Add(6, bad).code(), absl::StatusCode::kInvalidArgument);
  ExpectPoolWhole();
}

}  // namespace
}  // namespace sirocco::engine
