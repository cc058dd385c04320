// The engine thread with the tiny test model. The reference for every token
// is engine::Generate running the same request alone on its own pool: the
// continuous-batching loop (chunked prefill mixed with decode, requests
// arriving from several threads, preemption) must not change any request's
// tokens. Every test also checks that the pool ends whole.
#include "engine/engine_loop.h"

#include <atomic>
#include <cstring>
#include <future>
#include <random>
#include <thread>

#include "engine/generator.h"
#include "gtest/gtest.h"
#include "tests/unit/engine/test_models.h"

namespace sirocco::engine {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

struct Collected {
  std::vector<std::int32_t> tokens;
  std::vector<SampleResult> samples;
  bool ended = false;
  ExitReason reason = ExitReason::kFailed;
  absl::Status status;
};

// Drains a stream until its end event (or a generous timeout).
Collected Collect(RequestStream& stream, std::chrono::steady_clock::duration timeout = seconds(120)) {
  Collected c;
  const auto give_up = std::chrono::steady_clock::now() + timeout;
  while (!c.ended && std::chrono::steady_clock::now() < give_up) {
    if (!stream.Wait(milliseconds(100))) continue;
    for (StreamEvent& e : stream.Drain()) {
      EXPECT_FALSE(c.ended) << "event after the end";
      if (e.type == StreamEvent::Type::kToken) {
        c.tokens.push_back(e.sample.token);
        c.samples.push_back(std::move(e.sample));
      } else {
        c.ended = true;
        c.reason = e.reason;
        c.status = e.status;
      }
    }
  }
  return c;
}

class EngineLoopTest : public ::testing::TestWithParam<AttentionForm> {
 protected:
  // The loop's model, and a second instance of the same checkpoint for the
  // references: a model belongs to one thread at a time (its buffers are
  // reused across calls), and the references are computed while a loop may
  // still be running requests on its own.
  static void SetUpTestSuite() {
    model_ = testing::MakeTestModel(testing::SmallVocabTiny(), "engine_loop").release();
    reference_ = testing::MakeTestModel(testing::SmallVocabTiny(), "engine_loop_reference").release();
  }
  static void TearDownTestSuite() {
    delete model_;
    delete reference_;
  }
  void SetUp() override {
    ASSERT_NE(model_, nullptr);
    ASSERT_NE(reference_, nullptr);
  }

  EngineOptions Options(std::int64_t num_blocks = 64, std::int64_t block_size = 8) const {
    EngineOptions o;
    o.model = model_;
    o.num_blocks = num_blocks;
    o.block_size = block_size;
    o.max_tokens_per_step = 16;  // small: prompts are chunked and mixed with decode
    o.max_seqs_per_step = 6;
    o.prefill_form = GetParam();
    return o;
  }
  static RequestSpec Spec(std::vector<std::int32_t> prompt, std::int32_t max_tokens) {
    RequestSpec r;
    r.prompt = std::move(prompt);
    r.stop.max_tokens = max_tokens;
    r.sampling.temperature = 0.0f;
    return r;
  }
  static std::vector<std::int32_t> Prompt(std::int64_t n, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<std::int32_t> p(static_cast<std::size_t>(n));
    for (auto& t : p) t = static_cast<std::int32_t>(3 + rng() % 500);
    return p;
  }
  // The request alone through engine::Generate, on a pool of its own (and
  // the reference instance of the model: callable while a loop runs).
  GenerateOutput Alone(const RequestSpec& spec) const {
    auto pool = *KvPool::Create(reference_->PoolOptions(600, 8));
    GenerateRequest g{spec.prompt, spec.sampling, spec.stop};
    auto out = Generate(*reference_, *pool, {&g, 1}, GeneratorOptions{GetParam(), 0});
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? (*out)[0] : GenerateOutput{};
  }
  static ExitReason Expected(FinishReason f) { return f == FinishReason::kStop ? ExitReason::kStop : ExitReason::kLength; }
  // The engine publishes stats after each iteration: poll for a condition.
  static bool Eventually(EngineLoop& loop, const std::function<bool(const EngineStats&)>& pred) {
    for (int i = 0; i < 2000; ++i) {
      if (pred(loop.Stats())) return true;
      std::this_thread::sleep_for(milliseconds(5));
    }
    return false;
  }
  static bool PoolWhole(const EngineStats& s) {
    return s.scheduler.free_blocks == s.scheduler.total_blocks && s.scheduler.running() == 0 &&
           s.scheduler.waiting == 0 && s.scheduler.transferring == 0 && s.scheduler.reservations == 0;
  }

  static Mistral4Model* model_;
  static Mistral4Model* reference_;
};
Mistral4Model* EngineLoopTest::model_ = nullptr;
Mistral4Model* EngineLoopTest::reference_ = nullptr;

// Mixed greedy and seeded-sampling requests of many lengths.
std::vector<RequestSpec> MixedRequests(int n) {
  std::vector<RequestSpec> reqs;
  for (int i = 0; i < n; ++i) {
    const std::int64_t len = 1 + (i * 7) % 37;
    RequestSpec r;
    std::mt19937_64 rng(static_cast<std::uint64_t>(100 + i));
    for (std::int64_t t = 0; t < len; ++t) r.prompt.push_back(static_cast<std::int32_t>(3 + rng() % 500));
    r.stop.max_tokens = 3 + i % 9;
    if (i % 3 == 1) {
      r.sampling.temperature = 0.9f;
      r.sampling.top_k = 40;
      r.sampling.seed = static_cast<std::uint64_t>(1000 + i);
    } else if (i % 3 == 2) {
      r.sampling.temperature = 0.7f;
      r.sampling.repetition_penalty = 1.2f;
      r.sampling.seed = static_cast<std::uint64_t>(2000 + i);
      r.sampling.logprobs = 2;
    } else {
      r.sampling.temperature = 0.0f;
    }
    reqs.push_back(std::move(r));
  }
  return reqs;
}

TEST_P(EngineLoopTest, ConcurrentStaggeredRequestsGiveTheTokensOfEachAlone) {
  const std::vector<RequestSpec> reqs = MixedRequests(16);
  std::vector<GenerateOutput> alone;
  for (const RequestSpec& r : reqs) alone.push_back(Alone(r));

  auto loop = EngineLoop::Create(Options());
  ASSERT_TRUE(loop.ok()) << loop.status();
  std::vector<Collected> got(reqs.size());
  std::vector<std::thread> threads;
  constexpr int kThreads = 4;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(static_cast<std::uint64_t>(t));
      std::vector<std::pair<std::size_t, std::shared_ptr<RequestStream>>> mine;
      for (std::size_t i = static_cast<std::size_t>(t); i < reqs.size(); i += kThreads) {
        std::this_thread::sleep_for(milliseconds(rng() % 15));
        auto stream = (*loop)->Submit(RequestId{i + 1}, reqs[i]);
        ASSERT_TRUE(stream.ok()) << stream.status();
        mine.emplace_back(i, *stream);
      }
      for (auto& [i, stream] : mine) got[i] = Collect(*stream);
    });
  }
  for (std::thread& th : threads) th.join();
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_TRUE(got[i].ended) << i;
    EXPECT_TRUE(got[i].status.ok()) << i << ": " << got[i].status;
    EXPECT_EQ(got[i].tokens, alone[i].tokens) << "request " << i;
    EXPECT_EQ(got[i].reason, Expected(alone[i].finish)) << i;
    if (reqs[i].sampling.logprobs >= 0) {
      ASSERT_EQ(got[i].samples.size(), alone[i].samples.size());
      for (std::size_t k = 0; k < got[i].samples.size(); ++k) {
        EXPECT_NEAR(got[i].samples[k].logprob, alone[i].samples[k].logprob, 1e-4f) << i << "/" << k;
        EXPECT_EQ(got[i].samples[k].top.size(), 2u);
      }
    }
  }
  EXPECT_TRUE(Eventually(**loop, PoolWhole));
  EngineStats st = (*loop)->Stats();
  EXPECT_GT(st.steps, 0);
  std::int64_t total = 0;
  for (const Collected& c : got) total += static_cast<std::int64_t>(c.tokens.size());
  EXPECT_EQ(st.tokens_sampled, total);
  (*loop)->Stop();
  EXPECT_FALSE((*loop)->Stats().running);
}

// started() marks the end of a request's queue time: unset while it waits
// behind a request that fills every step, set once its prefill begins, and
// never after its first token.
TEST_P(EngineLoopTest, StartedMarksTheFirstPrefillStep) {
  EngineOptions o = Options();
  o.max_seqs_per_step = 1;
  auto loop = EngineLoop::Create(o);
  ASSERT_TRUE(loop.ok());
  const auto before = std::chrono::steady_clock::now();
  auto first = (*loop)->Submit(RequestId{1}, Spec(Prompt(9, 1), 20));
  auto second = (*loop)->Submit(RequestId{2}, Spec(Prompt(7, 2), 2));
  ASSERT_TRUE(first.ok() && second.ok());
  ASSERT_TRUE((*first)->Wait(seconds(60)));
  std::vector<StreamEvent> events = (*first)->Drain();
  const auto first_token_seen = std::chrono::steady_clock::now();
  ASSERT_FALSE(events.empty());
  ASSERT_TRUE((*first)->started().has_value());
  EXPECT_GE(*(*first)->started(), before);
  EXPECT_LE(*(*first)->started(), first_token_seen);
  EXPECT_TRUE(Collect(**first).ended);
  EXPECT_TRUE(Collect(**second).ended);
  ASSERT_TRUE((*second)->started().has_value());
  // One sequence per step: the second waited for the first to finish.
  EXPECT_GT(*(*second)->started(), *(*first)->started());
}

TEST_P(EngineLoopTest, OnReadyLetsAConsumerDrainWithoutBlocking) {
  auto loop = EngineLoop::Create(Options());
  ASSERT_TRUE(loop.ok());
  RequestSpec spec = Spec(Prompt(9, 1), 12);
  std::mutex mu;
  std::condition_variable cv;
  int notified = 0;
  std::thread::id notifier;
  auto stream = (*loop)->Submit(RequestId{1}, spec, [&] {
    std::lock_guard<std::mutex> lock(mu);
    ++notified;
    notifier = std::this_thread::get_id();
    cv.notify_all();
  });
  ASSERT_TRUE(stream.ok());
  std::vector<std::int32_t> tokens;
  bool ended = false;
  int seen = 0;
  while (!ended) {
    {
      std::unique_lock<std::mutex> lock(mu);
      ASSERT_TRUE(cv.wait_for(lock, seconds(60), [&] { return notified > seen; }));
      seen = notified;
    }
    for (StreamEvent& e : (*stream)->Drain()) {  // never waits
      if (e.type == StreamEvent::Type::kToken) tokens.push_back(e.sample.token);
      if (e.type == StreamEvent::Type::kEnd) ended = true;
    }
  }
  EXPECT_EQ(tokens, Alone(spec).tokens);
  EXPECT_NE(notifier, std::this_thread::get_id()) << "on_ready runs on the engine thread";
  EXPECT_TRUE((*stream)->ended());
  EXPECT_TRUE((*stream)->Drain().empty());
}

TEST_P(EngineLoopTest, PreemptionUnderAFullPoolKeepsEveryRequestsTokens) {
  // 12 blocks of 4 = 48 slots for six requests that need up to 19 each.
  EngineOptions o = Options(/*num_blocks=*/12, /*block_size=*/4);
  std::vector<RequestSpec> reqs;
  for (int i = 0; i < 6; ++i) {
    RequestSpec r = Spec(Prompt(3 + i, static_cast<std::uint64_t>(50 + i)), 16);
    r.stop.ignore_eos = true;
    if (i % 2 == 1) {
      r.sampling.temperature = 1.0f;
      r.sampling.seed = static_cast<std::uint64_t>(77 + i);
    }
    reqs.push_back(std::move(r));
  }
  auto loop = EngineLoop::Create(o);
  ASSERT_TRUE(loop.ok());
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (std::size_t i = 0; i < reqs.size(); ++i) streams.push_back(*(*loop)->Submit(RequestId{i + 1}, reqs[i]));
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    Collected c = Collect(*streams[i]);
    ASSERT_TRUE(c.ended);
    EXPECT_EQ(c.reason, ExitReason::kLength);
    EXPECT_EQ(c.tokens, Alone(reqs[i]).tokens) << "request " << i;
  }
  EXPECT_TRUE(Eventually(**loop, PoolWhole));
  EXPECT_GT((*loop)->Stats().scheduler.preemptions, 0) << "the pool was meant to be too small";
}

TEST_P(EngineLoopTest, CancelMidStreamEndsTheRequestAndFreesItsBlocks) {
  auto loop = EngineLoop::Create(Options(/*num_blocks=*/520, 8));
  ASSERT_TRUE(loop.ok());
  RequestSpec long_one = Spec(Prompt(20, 3), 4000);
  long_one.stop.ignore_eos = true;
  auto stream = (*loop)->Submit(RequestId{1}, long_one);
  auto other = (*loop)->Submit(RequestId{2}, Spec(Prompt(5, 4), 6));
  ASSERT_TRUE(stream.ok() && other.ok());
  ASSERT_TRUE((*stream)->Wait(seconds(60)));  // a token arrived: it is decoding
  (*loop)->Cancel(RequestId{1});
  Collected c = Collect(**stream);
  ASSERT_TRUE(c.ended);
  EXPECT_EQ(c.reason, ExitReason::kCancelled);
  EXPECT_EQ(c.status.code(), absl::StatusCode::kCancelled);
  EXPECT_GE(c.tokens.size(), 1u);
  EXPECT_LT(c.tokens.size(), 4000u);
  RequestSpec prefix = long_one;
  prefix.stop.max_tokens = static_cast<std::int32_t>(c.tokens.size());
  EXPECT_EQ(c.tokens, Alone(prefix).tokens) << "what was streamed before the cancel is right";
  EXPECT_EQ(Collect(**other).reason, Expected(Alone(Spec(Prompt(5, 4), 6)).finish));
  (*loop)->Cancel(RequestId{1});  // again, and an unknown id: ignored
  (*loop)->Cancel(RequestId{99});
  EXPECT_TRUE(Eventually(**loop, PoolWhole));
}

TEST_P(EngineLoopTest, DeadlineEndsARequestWhereverItIs) {
  auto loop = EngineLoop::Create(Options(/*num_blocks=*/520, 8));
  ASSERT_TRUE(loop.ok());
  RequestSpec spec = Spec(Prompt(12, 5), 4000);  // far more than 100 ms of decoding
  spec.stop.ignore_eos = true;
  spec.deadline = SchedClock::now() + milliseconds(100);
  auto stream = (*loop)->Submit(RequestId{1}, spec);
  ASSERT_TRUE(stream.ok());
  Collected c = Collect(**stream);
  ASSERT_TRUE(c.ended);
  EXPECT_EQ(c.reason, ExitReason::kDeadlineExceeded);
  EXPECT_EQ(c.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(c.tokens.size(), 4000u);
  // A deadline that passes while the engine is idle still fires (timer wake).
  RequestSpec pre = Spec(Prompt(4, 6), 4);
  pre.prefill_only = true;  // parks in `transferring`: nothing left to run
  pre.deadline = SchedClock::now() + milliseconds(100);
  auto parked = (*loop)->Submit(RequestId{2}, pre);
  ASSERT_TRUE(parked.ok());
  Collected p = Collect(**parked);
  EXPECT_EQ(p.reason, ExitReason::kDeadlineExceeded);
  EXPECT_TRUE(p.tokens.empty()) << "the held first token is never reported";
  // Already past when submitted.
  RequestSpec late = Spec(Prompt(4, 7), 4);
  late.deadline = SchedClock::now();
  Collected l = Collect(**(*loop)->Submit(RequestId{3}, late));
  EXPECT_EQ(l.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Eventually(**loop, PoolWhole));
}

TEST_P(EngineLoopTest, StopTokensEndTheStream) {
  auto loop = EngineLoop::Create(Options());
  ASSERT_TRUE(loop.ok());
  RequestSpec spec = Spec(Prompt(7, 8), 20);
  spec.stop.ignore_eos = true;
  const std::vector<std::int32_t> free_run = Alone(spec).tokens;
  ASSERT_GE(free_run.size(), 5u);
  spec.stop.stop_token_ids = {free_run[4]};
  Collected c = Collect(**(*loop)->Submit(RequestId{1}, spec));
  EXPECT_EQ(c.reason, ExitReason::kStop);
  ASSERT_FALSE(c.tokens.empty());
  EXPECT_EQ(c.tokens.back(), free_run[4]);
  EXPECT_LE(c.tokens.size(), 5u);
  EXPECT_EQ(c.tokens, Alone(spec).tokens);
  EXPECT_TRUE(Eventually(**loop, PoolWhole));
}

TEST_P(EngineLoopTest, BadAndOversizedRequestsAreRefused) {
  auto loop = EngineLoop::Create(Options(/*num_blocks=*/8, /*block_size=*/8));
  ASSERT_TRUE(loop.ok());
  // 8 blocks of 8 hold 64 tokens.
  auto too_big = (*loop)->Submit(RequestId{1}, Spec(Prompt(40, 1), 30));
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted);
  auto bad_token = (*loop)->Submit(RequestId{2}, Spec({1, 512}, 3));
  EXPECT_EQ(bad_token.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(bad_token.status().message()).find("prompt[1]"), std::string::npos);
  RequestSpec bad_temp = Spec({1, 2}, 3);
  bad_temp.sampling.temperature = -1.0f;
  EXPECT_EQ((*loop)->Submit(RequestId{3}, bad_temp).status().code(), absl::StatusCode::kInvalidArgument);
  // A duplicate id is found on the engine thread and ends the second stream.
  RequestSpec slow = Spec(Prompt(4, 2), 30);
  slow.stop.ignore_eos = true;
  auto first = (*loop)->Submit(RequestId{4}, slow);
  auto dup = (*loop)->Submit(RequestId{4}, Spec({1, 2}, 3));
  ASSERT_TRUE(first.ok() && dup.ok());
  Collected d = Collect(**dup);
  EXPECT_EQ(d.status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(d.tokens.empty());
  Collected f = Collect(**first);
  EXPECT_EQ(f.reason, ExitReason::kLength);
  EXPECT_EQ(f.tokens.size(), 30u);
  EXPECT_TRUE(Eventually(**loop, PoolWhole));
}

TEST_P(EngineLoopTest, StopCancellingInFlightLeavesNoBlocksAllocated) {
  auto loop = EngineLoop::Create(Options());
  ASSERT_TRUE(loop.ok());
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (std::uint64_t i = 1; i <= 10; ++i) {
    RequestSpec r = Spec(Prompt(5 + static_cast<std::int64_t>(i) * 3, i), 300);
    r.stop.ignore_eos = true;
    streams.push_back(*(*loop)->Submit(RequestId{i}, r));
  }
  RequestSpec pre = Spec(Prompt(6, 11), 4);
  pre.prefill_only = true;
  streams.push_back(*(*loop)->Submit(RequestId{11}, pre));
  std::atomic<int> reserved{0};
  ASSERT_TRUE((*loop)->Reserve(ReserveSpec{RequestId{12}, Prompt(9, 12), 4, seconds(60)},
                               [&](absl::StatusOr<Reservation> r) { reserved = r.ok() ? 1 : -1; })
                  .ok());
  ASSERT_TRUE(streams[0]->Wait(seconds(60)));
  (*loop)->Stop(StopMode::kCancel);
  EXPECT_EQ(reserved.load(), 1);
  for (auto& s : streams) {
    Collected c = Collect(*s, seconds(1));
    ASSERT_TRUE(c.ended);
    EXPECT_EQ(c.reason, ExitReason::kCancelled);
    EXPECT_EQ(c.status.code(), absl::StatusCode::kUnavailable);
  }
  EngineStats st = (*loop)->Stats();
  EXPECT_FALSE(st.running);
  EXPECT_TRUE(PoolWhole(st));
  EXPECT_EQ((*loop)->Submit(RequestId{20}, Spec({1, 2}, 2)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ((*loop)->Reserve(ReserveSpec{RequestId{21}, {1}, 0, seconds(1)}, [](absl::StatusOr<Reservation>) {})
                .code(),
            absl::StatusCode::kUnavailable);
  (*loop)->Stop();  // idempotent
}

TEST_P(EngineLoopTest, StopDrainingFinishesInFlightAndRefusesNewWork) {
  auto loop = EngineLoop::Create(Options());
  ASSERT_TRUE(loop.ok());
  std::vector<RequestSpec> reqs;
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (std::uint64_t i = 1; i <= 5; ++i) {
    reqs.push_back(Spec(Prompt(4 + static_cast<std::int64_t>(i), 30 + i), 8));
    streams.push_back(*(*loop)->Submit(RequestId{i}, reqs.back()));
  }
  std::thread stopper([&] { (*loop)->Stop(StopMode::kDrain); });
  for (std::size_t i = 0; i < streams.size(); ++i) {
    Collected c = Collect(*streams[i]);
    EXPECT_TRUE(c.status.ok()) << c.status;
    EXPECT_EQ(c.tokens, Alone(reqs[i]).tokens);
  }
  stopper.join();
  EXPECT_EQ((*loop)->Submit(RequestId{9}, Spec({1, 2}, 2)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(PoolWhole((*loop)->Stats()));
}

TEST_P(EngineLoopTest, ExpiredReservationIsGoneWhenDecodeArrives) {
  auto loop = EngineLoop::Create(Options());
  ASSERT_TRUE(loop.ok());
  std::promise<absl::StatusOr<Reservation>> promise;
  ASSERT_TRUE((*loop)->Reserve(ReserveSpec{RequestId{1}, Prompt(10, 1), 0, milliseconds(30)},
                               [&](absl::StatusOr<Reservation> r) { promise.set_value(std::move(r)); })
                  .ok());
  absl::StatusOr<Reservation> r = promise.get_future().get();
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(Eventually(**loop, [](const EngineStats& s) { return s.scheduler.reservations_expired == 1; }));
  Collected c = Collect(**(*loop)->Decode(r->id, RequestId{1}, 5, DecodeSpec{}));
  EXPECT_EQ(c.status.code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Eventually(**loop, PoolWhole));
}

// Prefill role alone: the hook reports every layer of every chunk in order;
// the first token is reported only after TransferDone.
TEST_P(EngineLoopTest, PrefillRoleReportsLayersThenTheFirstTokenAfterTransfer) {
  std::mutex mu;
  std::vector<LayerKvWritten> seen;
  EngineOptions o = Options();
  o.on_layer_kv_written = [&](const LayerKvWritten& w) {
    std::lock_guard<std::mutex> lock(mu);
    seen.push_back(w);
  };
  auto loop = EngineLoop::Create(o);
  ASSERT_TRUE(loop.ok());
  RequestSpec spec = Spec(Prompt(37, 9), 5);
  spec.prefill_only = true;
  auto stream = (*loop)->Submit(RequestId{1}, spec);
  ASSERT_TRUE(stream.ok());
  ASSERT_TRUE(Eventually(**loop, [](const EngineStats& s) { return s.scheduler.transferring == 1; }));
  EXPECT_TRUE((*stream)->Drain().empty()) << "no token before the transfer completes";
  {
    std::lock_guard<std::mutex> lock(mu);
    const std::int64_t layers = model_->config().num_hidden_layers;
    ASSERT_EQ(seen.size() % static_cast<std::size_t>(layers), 0u);
    std::int64_t covered = 0;  // chunks cover the prompt in order, layer by layer
    for (std::size_t i = 0; i < seen.size(); ++i) {
      EXPECT_EQ(seen[i].request, RequestId{1});
      EXPECT_EQ(seen[i].layer, static_cast<std::int64_t>(i) % layers);
      EXPECT_EQ(seen[i].token_begin, covered);
      if (seen[i].layer == layers - 1) covered = seen[i].token_end;
    }
    EXPECT_EQ(covered, 37);
    EXPECT_GT(seen.size(), static_cast<std::size_t>(layers)) << "a 37-token prompt takes several chunks of 16";
  }
  ASSERT_TRUE((*loop)->TransferDone(RequestId{1}, absl::OkStatus()).ok());
  Collected c = Collect(**stream);
  EXPECT_EQ(c.reason, ExitReason::kPrefillDone);
  ASSERT_EQ(c.tokens.size(), 1u);
  EXPECT_EQ(c.tokens[0], Alone(spec).tokens[0]);
  // A failed transfer fails the request.
  auto second = (*loop)->Submit(RequestId{2}, spec);
  ASSERT_TRUE(Eventually(**loop, [](const EngineStats& s) { return s.scheduler.transferring == 1; }));
  ASSERT_TRUE((*loop)->TransferDone(RequestId{2}, absl::UnavailableError("peer lost")).ok());
  Collected f = Collect(**second);
  EXPECT_EQ(f.reason, ExitReason::kFailed);
  EXPECT_EQ(f.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(f.tokens.empty());
  EXPECT_TRUE(Eventually(**loop, PoolWhole));
}

// Disaggregation in one process: a prefill engine writes each layer's KV into
// a decode engine's reservation (through WriteKv, as the in-process transfer
// backend would) while later layers compute; the decode engine continues from
// the first token. Greedy tokens equal the colocated ones.
TEST_P(EngineLoopTest, PrefillAndDecodeEnginesTogetherMatchColocated) {
  auto decode = EngineLoop::Create(Options(64, 8));
  ASSERT_TRUE(decode.ok());
  for (std::uint64_t id = 1; id <= 3; ++id) {
    RequestSpec spec = Spec(Prompt(5 + static_cast<std::int64_t>(id) * 11, id), 10);
    spec.stop.ignore_eos = true;
    std::promise<absl::StatusOr<Reservation>> reserved;
    ASSERT_TRUE((*decode)->Reserve(ReserveSpec{RequestId{id}, spec.prompt, 4, seconds(60)},
                                   [&](absl::StatusOr<Reservation> r) { reserved.set_value(std::move(r)); })
                    .ok());
    absl::StatusOr<Reservation> target = reserved.get_future().get();
    ASSERT_TRUE(target.ok()) << target.status();

    const std::int64_t layers = model_->config().num_hidden_layers;
    std::atomic<std::int64_t> written{0};
    std::atomic<std::int64_t> layer_events{0};
    std::atomic<bool> all_posted{false};
    std::atomic<bool> write_failed{false};
    EngineLoop* prefill_raw = nullptr;
    EngineOptions po = Options(64, 8);
    // Runs on the prefill engine thread: post the copy to the decode engine.
    po.on_layer_kv_written = [&](const LayerKvWritten& w) {
      ++layer_events;
      const ReservationId rid = target->id;
      const std::vector<BlockId> dst = target->blocks;
      LayerKvWritten src = w;
      std::vector<std::int32_t> src_blocks(w.blocks->data(), w.blocks->data() + w.blocks->num_blocks());
      auto status = (*decode)->WriteKv(
          rid,
          [src, src_blocks, dst](KvPool& pool, std::span<const BlockId> blocks) {
            if (blocks.size() != dst.size()) return absl::InternalError("reservation changed");
            const std::int64_t bs = pool.block_size(), dim = pool.entry_dim();
            for (std::int64_t t = src.token_begin; t < src.token_end; ++t) {
              const std::size_t b = static_cast<std::size_t>(t / bs);
              const float* from =
                  src.pool->layer(src.layer) + (src_blocks[b] * src.pool->block_size() + t % bs) * dim;
              std::memcpy(pool.entry(src.layer, blocks[b], t % bs), from, sizeof(float) * static_cast<std::size_t>(dim));
            }
            return absl::OkStatus();
          },
          [&, id](absl::Status s) {
            if (!s.ok()) write_failed = true;
            // The last layer's write of the last chunk completes the transfer.
            if (++written == layer_events.load() && all_posted.load()) {
              (void)prefill_raw->TransferDone(RequestId{id}, absl::OkStatus());
            }
          });
      EXPECT_TRUE(status.ok());
    };
    // Same block size on both sides, so a token's slot is the same.
    auto prefill = EngineLoop::Create(po);
    ASSERT_TRUE(prefill.ok());
    prefill_raw = prefill->get();
    RequestSpec pre = spec;
    pre.prefill_only = true;
    auto pstream = (*prefill)->Submit(RequestId{id}, pre);
    ASSERT_TRUE(pstream.ok());
    // Once the request is transferring every layer has been posted; if the
    // writes all finished before that, complete the transfer here.
    ASSERT_TRUE(Eventually(**prefill, [](const EngineStats& s) { return s.scheduler.transferring == 1; }));
    all_posted = true;
    if (written.load() == layer_events.load()) {
      (void)(*prefill)->TransferDone(RequestId{id}, absl::OkStatus());
    }
    Collected first = Collect(**pstream);
    ASSERT_EQ(first.reason, ExitReason::kPrefillDone) << first.status;
    ASSERT_EQ(first.tokens.size(), 1u);
    EXPECT_FALSE(write_failed.load());
    EXPECT_EQ(layer_events.load() % layers, 0);

    DecodeSpec ds;
    ds.sampling = spec.sampling;
    ds.stop = spec.stop;
    Collected rest = Collect(**(*decode)->Decode(target->id, RequestId{id}, first.tokens[0], ds));
    ASSERT_EQ(rest.reason, ExitReason::kLength) << rest.status;
    std::vector<std::int32_t> all = first.tokens;
    all.insert(all.end(), rest.tokens.begin(), rest.tokens.end());
    EXPECT_EQ(all, Alone(spec).tokens) << "request " << id;
    (*prefill)->Stop();
    EXPECT_TRUE(PoolWhole((*prefill)->Stats()));
  }
  EXPECT_TRUE(Eventually(**decode, PoolWhole));
}

// Requests sharing prefixes of several lengths (a common "system prompt",
// the same prompt twice, a prompt that is another's prefix), greedy and
// sampled with logprobs.
std::vector<RequestSpec> SharedPrefixRequests(const std::vector<std::int32_t>& system) {
  std::vector<RequestSpec> reqs;
  auto with = [&](std::vector<std::int32_t> tail, std::int32_t max_tokens, bool sampled) {
    RequestSpec r;
    r.prompt = system;
    r.prompt.insert(r.prompt.end(), tail.begin(), tail.end());
    r.stop.max_tokens = max_tokens;
    r.stop.ignore_eos = true;
    r.sampling.logprobs = 2;
    if (sampled) {
      r.sampling.temperature = 0.8f;
      r.sampling.seed = 77 + reqs.size();
    } else {
      r.sampling.temperature = 0.0f;
    }
    reqs.push_back(std::move(r));
  };
  with({11, 12, 13}, 6, false);
  with({11, 12, 13}, 6, false);  // the same prompt again
  with({21, 22, 23, 24, 25, 26, 27, 28, 29}, 5, true);
  with({}, 4, false);  // the shared part alone
  with({11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21}, 7, true);
  return reqs;
}

void ExpectSameSamples(const std::vector<SampleResult>& got, const std::vector<SampleResult>& want,
                       const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].token, want[i].token) << what << " token " << i;
    EXPECT_NEAR(got[i].logprob, want[i].logprob, 1e-4) << what << " token " << i;
  }
}

TEST_P(EngineLoopTest, PrefixCacheGivesTheTokensAndLogprobsOfEachAlone) {
  EngineOptions o = Options(64, 8);
  o.prefix_caching = true;
  auto loop = EngineLoop::Create(o);
  ASSERT_TRUE(loop.ok());
  const std::vector<std::int32_t> system = Prompt(37, 9);  // 4 full blocks and a bit
  const std::vector<RequestSpec> reqs = SharedPrefixRequests(system);
  // One at a time: each finds what the earlier ones published.
  std::vector<std::int64_t> cached;
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    auto stream = (*loop)->Submit(RequestId{i + 1}, reqs[i]);
    ASSERT_TRUE(stream.ok());
    Collected c = Collect(**stream);
    ASSERT_EQ(c.reason, ExitReason::kLength) << c.status;
    ExpectSameSamples(c.samples, Alone(reqs[i]).samples, "request " + std::to_string(i));
    cached.push_back((*stream)->cached_tokens());
  }
  EXPECT_EQ(cached[0], 0);
  EXPECT_EQ(cached[1], 32) << "the same 40-token prompt: 4 of its 5 blocks (the last token is computed)";
  EXPECT_EQ(cached[2], 32);
  EXPECT_EQ(cached[3], 32) << "37 tokens: the 4 full blocks";
  EXPECT_EQ(cached[4], 40) << "the first request's output tokens were published too";
  // All at once, while their prefixes are being published.
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    RequestSpec r = reqs[i];
    r.prompt.push_back(400 + static_cast<std::int32_t>(i));
    streams.push_back(*(*loop)->Submit(RequestId{100 + i}, r));
  }
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    RequestSpec r = reqs[i];
    r.prompt.push_back(400 + static_cast<std::int32_t>(i));
    Collected c = Collect(*streams[i]);
    ASSERT_EQ(c.reason, ExitReason::kLength) << c.status;
    ExpectSameSamples(c.samples, Alone(r).samples, "concurrent request " + std::to_string(i));
  }
  EXPECT_TRUE(Eventually(**loop, PoolWhole));
  const EngineStats st = (*loop)->Stats();
  EXPECT_GT(st.scheduler.prefix_cache_hits, 5 * 32);
  EXPECT_GT(st.scheduler.cached_blocks, 0);
}

TEST_P(EngineLoopTest, APrefillEngineSendsItsCachedPrefixWithTheComputedKv) {
  auto decode = EngineLoop::Create(Options(64, 8));
  ASSERT_TRUE(decode.ok());
  // One prefill engine with a prefix cache serves every request in turn; the
  // decode engine (no cache) must receive the whole prompt's KV each time.
  struct Transfer {
    Reservation target;
    RequestId id;
    std::atomic<std::int64_t> events{0}, written{0};
    std::atomic<std::int64_t> tokens_sent{0};
    std::atomic<bool> all_posted{false}, failed{false};
  };
  std::atomic<Transfer*> current{nullptr};
  EngineLoop* prefill_raw = nullptr;
  auto finish = [&](Transfer* t) { (void)prefill_raw->TransferDone(t->id, absl::OkStatus()); };
  EngineOptions po = Options(64, 8);
  po.prefix_caching = true;
  po.on_layer_kv_written = [&](const LayerKvWritten& w) {
    Transfer* t = current.load();
    ++t->events;
    if (w.layer == 0) t->tokens_sent += w.token_end - w.token_begin;
    std::vector<std::int32_t> src_blocks(w.blocks->data(), w.blocks->data() + w.blocks->num_blocks());
    const std::vector<BlockId> dst = t->target.blocks;
    auto status = (*decode)->WriteKv(
        t->target.id,
        [w, src_blocks, dst](KvPool& pool, std::span<const BlockId> blocks) {
          if (blocks.size() != dst.size()) return absl::InternalError("reservation changed");
          const std::int64_t bs = pool.block_size(), dim = pool.entry_dim();
          for (std::int64_t tok = w.token_begin; tok < w.token_end; ++tok) {
            const auto b = static_cast<std::size_t>(tok / bs);
            const float* from = w.pool->layer(w.layer) + (src_blocks[b] * w.pool->block_size() + tok % bs) * dim;
            std::memcpy(pool.entry(w.layer, blocks[b], tok % bs), from, sizeof(float) * static_cast<std::size_t>(dim));
          }
          return absl::OkStatus();
        },
        [&, t](absl::Status st) {
          if (!st.ok()) t->failed = true;
          if (++t->written == t->events.load() && t->all_posted.load()) finish(t);
        });
    EXPECT_TRUE(status.ok());
  };
  auto prefill = EngineLoop::Create(po);
  ASSERT_TRUE(prefill.ok());
  prefill_raw = prefill->get();

  const std::vector<RequestSpec> reqs = SharedPrefixRequests(Prompt(37, 10));
  std::int64_t total_cached = 0;
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    const RequestSpec& spec = reqs[i];
    const RequestId id{i + 1};
    std::promise<absl::StatusOr<Reservation>> reserved;
    ASSERT_TRUE((*decode)
                    ->Reserve(ReserveSpec{id, spec.prompt, 8, seconds(60)},
                              [&](absl::StatusOr<Reservation> r) { reserved.set_value(std::move(r)); })
                    .ok());
    absl::StatusOr<Reservation> target = reserved.get_future().get();
    ASSERT_TRUE(target.ok()) << target.status();
    Transfer t;
    t.target = *target;
    t.id = id;
    current = &t;
    RequestSpec pre = spec;
    pre.prefill_only = true;
    auto pstream = (*prefill)->Submit(id, pre);
    ASSERT_TRUE(pstream.ok());
    ASSERT_TRUE(Eventually(**prefill, [](const EngineStats& s) { return s.scheduler.transferring == 1; }));
    t.all_posted = true;
    if (t.written.load() == t.events.load()) finish(&t);
    Collected first = Collect(**pstream);
    ASSERT_EQ(first.reason, ExitReason::kPrefillDone) << first.status;
    EXPECT_FALSE(t.failed.load());
    EXPECT_EQ(t.tokens_sent.load(), static_cast<std::int64_t>(spec.prompt.size()))
        << "request " << i << ": every prompt token's KV, cached or computed, is sent";
    total_cached += (*pstream)->cached_tokens();

    DecodeSpec ds;
    ds.sampling = spec.sampling;
    ds.stop = spec.stop;
    Collected rest = Collect(**(*decode)->Decode(target->id, id, first.tokens[0], ds));
    ASSERT_EQ(rest.reason, ExitReason::kLength) << rest.status;
    std::vector<SampleResult> all = first.samples;
    all.insert(all.end(), rest.samples.begin(), rest.samples.end());
    ExpectSameSamples(all, Alone(spec).samples, "request " + std::to_string(i));
    current = nullptr;
  }
  EXPECT_GE(total_cached, 4 * 32) << "requests after the first reused the shared prefix";
  (*prefill)->Stop();
  EXPECT_TRUE(PoolWhole((*prefill)->Stats()));
  EXPECT_TRUE(Eventually(**decode, PoolWhole));
}

INSTANTIATE_TEST_SUITE_P(Forms, EngineLoopTest, ::testing::Values(AttentionForm::kAbsorbed, AttentionForm::kExpanded),
                         [](const ::testing::TestParamInfo<AttentionForm>& p) {
                           return p.param == AttentionForm::kAbsorbed ? std::string("Absorbed")
                                                                         : std::string("Expanded");
                         });

}  // namespace
}  // namespace sirocco::engine
