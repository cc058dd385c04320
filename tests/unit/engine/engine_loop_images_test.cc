// Requests with images through the engine thread, on the tiny preset's
// multimodal checkpoint. The reference for every token is the model run
// directly: the vision encoder's rows put in place of the [IMG] tokens of a
// one-shot prefill, then greedy decode steps. The loop chunks the prompt
// (through the image), batches requests together, and with the prefix cache
// must not reuse KV computed for another image; bad images fail their
// request alone and leave the pool whole. Image threads prepare the pixels
// while the engine thread runs other requests; cancelling, stopping and
// draining reach requests still being prepared.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <future>
#include <random>
#include <thread>

#include "engine/engine_loop.h"
#include "engine/pixtral.h"
#include "gtest/gtest.h"
#include "tests/unit/engine/test_models.h"

namespace sirocco::engine {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr std::int32_t kImg = 10, kBreak = 12, kEnd = 13;

struct Result {
  std::vector<std::int32_t> tokens;
  bool ended = false;
  ExitReason reason = ExitReason::kFailed;
  absl::Status status;
};

Result Collect(RequestStream& stream, std::chrono::steady_clock::duration timeout = seconds(120)) {
  Result r;
  const auto give_up = std::chrono::steady_clock::now() + timeout;
  while (!r.ended && std::chrono::steady_clock::now() < give_up) {
    if (!stream.Wait(milliseconds(100))) continue;
    for (StreamEvent& e : stream.Drain()) {
      if (e.type == StreamEvent::Type::kToken) {
        r.tokens.push_back(e.sample.token);
      } else {
        r.ended = true;
        r.reason = e.reason;
        r.status = e.status;
      }
    }
  }
  return r;
}

// Normalised-looking pixels, [3, height, width].
std::vector<float> Pixels(int height, int width, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> p(static_cast<std::size_t>(3 * height * width));
  for (float& v : p) v = n(rng);
  return p;
}

// `before` text tokens, an image's placeholder grid (cols x rows), `after`
// text tokens.
std::vector<std::int32_t> Prompt(int before, int cols, int rows, int after, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto text = [&] { return static_cast<std::int32_t>(20 + rng() % 480); };
  std::vector<std::int32_t> p;
  for (int i = 0; i < before; ++i) p.push_back(text());
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) p.push_back(kImg);
    p.push_back(r + 1 == rows ? kEnd : kBreak);
  }
  for (int i = 0; i < after; ++i) p.push_back(text());
  return p;
}

class EngineLoopImagesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = testing::TempDir("engine_loop_images");
    MakeModelOptions o;
    o.seed = 7;
    o.dtype = DType::kF32;
    o.vision = PresetVisionConfig("tiny");
    ASSERT_TRUE(o.vision.has_value());
    ASSERT_TRUE(MakeModel(testing::SmallVocabTiny(), o, dir).ok());
    auto model = Mistral4Model::Load(dir, ModelOptions{.backend = kernels::Backend::kRef, .device = nullptr});
    std::filesystem::remove_all(dir);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = model->release();
    ASSERT_NE(model_->vision(), nullptr);
    ASSERT_EQ(model_->vision()->config().image_token_index, kImg);
    ASSERT_EQ(model_->vision()->config().token_pixels(), 28);
  }
  static void TearDownTestSuite() { delete model_; }

  static EngineOptions Options(bool prefix_caching = false, int image_threads = 2) {
    EngineOptions o;
    o.image_threads = image_threads;
    o.model = model_;
    o.num_blocks = 64;
    o.block_size = 4;
    o.max_tokens_per_step = 8;  // prompts are chunked, through the image
    o.max_seqs_per_step = 4;
    o.prefix_caching = prefix_caching;
    return o;
  }
  // `hash`: ImageInput::content_hash (0: unknown).
  static ImageInput Image(int height, int width, std::uint64_t seed, std::atomic<int>* calls = nullptr,
                          std::uint64_t hash = 0) {
    return ImageInput{.height = height,
                      .width = width,
                      .pixels = [height, width, seed, calls]() -> absl::StatusOr<std::vector<float>> {
                        if (calls != nullptr) ++*calls;
                        return Pixels(height, width, seed);
                      },
                      .content_hash = hash};
  }
  static RequestSpec Spec(std::vector<std::int32_t> prompt, std::vector<ImageInput> images, int max_tokens) {
    RequestSpec r;
    r.prompt = std::move(prompt);
    r.images = std::move(images);
    r.stop.max_tokens = max_tokens;
    r.stop.ignore_eos = true;
    r.sampling.temperature = 0.0f;
    return r;
  }

  // The model run directly: one prefill with the image rows, then greedy
  // decode steps.
  static std::vector<std::int32_t> Reference(const std::vector<std::int32_t>& prompt,
                                             const std::vector<std::pair<int, int>>& sizes,
                                             const std::vector<std::uint64_t>& seeds, int max_tokens) {
    std::vector<float> rows;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      auto f =
          model_->vision()->Encode(Pixels(sizes[i].first, sizes[i].second, seeds[i]), sizes[i].first, sizes[i].second);
      EXPECT_TRUE(f.ok()) << f.status();
      if (!f.ok()) return {};
      rows.insert(rows.end(), f->begin(), f->end());
    }
    std::vector<std::int32_t> at;
    for (std::size_t p = 0; p < prompt.size(); ++p) {
      if (prompt[p] == kImg) at.push_back(static_cast<std::int32_t>(p));
    }
    auto pool = *KvPool::Create(model_->PoolOptions(64, 4));
    BlockTable bt(pool.get());
    EXPECT_TRUE(bt.Reserve(static_cast<std::int64_t>(prompt.size()) + max_tokens).ok());
    const auto vocab = static_cast<std::size_t>(model_->config().vocab_size);
    auto argmax = [&](const std::vector<float>& l) {
      return static_cast<std::int32_t>(std::max_element(l.begin(), l.begin() + static_cast<std::ptrdiff_t>(vocab)) -
                                       l.begin());
    };
    ForwardItem first{prompt, 0, &bt, false};
    first.embed_at = at;
    first.embed_rows = rows;
    std::vector<float> logits;
    EXPECT_TRUE(model_->Forward({&first, 1}, *pool, AttentionForm::kAbsorbed, &logits).ok());
    std::vector<std::int32_t> out = {argmax(logits)};
    while (static_cast<int>(out.size()) < max_tokens) {
      const std::int64_t pos = static_cast<std::int64_t>(prompt.size() + out.size()) - 1;
      ForwardItem step{std::span<const std::int32_t>(&out.back(), 1), pos, &bt, false};
      EXPECT_TRUE(model_->Forward({&step, 1}, *pool, AttentionForm::kAbsorbed, &logits).ok());
      out.push_back(argmax(logits));
    }
    return out;
  }

  static bool PoolWhole(EngineLoop& loop) {
    for (int i = 0; i < 2000; ++i) {
      const SchedulerStats s = loop.Stats().scheduler;
      if (s.free_blocks == s.total_blocks && s.running() == 0 && s.waiting == 0) return true;
      std::this_thread::sleep_for(milliseconds(5));
    }
    return false;
  }

  // An image whose pixels are held back until the gate opens (or 60 s pass,
  // so that a broken engine fails the test instead of hanging it).
  static ImageInput GatedImage(int height, int width, std::uint64_t seed, std::shared_future<void> gate) {
    return ImageInput{.height = height,
                      .width = width,
                      .pixels = [height, width, seed, gate]() -> absl::StatusOr<std::vector<float>> {
                        if (gate.wait_for(seconds(60)) != std::future_status::ready) {
                          return absl::DeadlineExceededError("the test's gate never opened");
                        }
                        return Pixels(height, width, seed);
                      }};
  }
  static bool PreparingIs(EngineLoop& loop, std::int64_t n) {
    for (int i = 0; i < 2000; ++i) {
      if (loop.Stats().preparing == n) return true;
      std::this_thread::sleep_for(milliseconds(5));
    }
    return false;
  }

  static Mistral4Model* model_;
};
Mistral4Model* EngineLoopImagesTest::model_ = nullptr;

TEST_F(EngineLoopImagesTest, ImagesGiveTheTokensOfTheModelRunDirectly) {
  // 56x84 pixels: 2 x 3 cells; 84x28: 3 x 1.
  const auto a = Prompt(5, 2, 3, 4, 1);
  auto b = Prompt(3, 3, 1, 2, 2);
  const auto b2 = Prompt(2, 2, 3, 3, 3);
  b.insert(b.end(), b2.begin(), b2.end());  // two images in one prompt
  const auto ref_a = Reference(a, {{84, 56}}, {11}, 6);
  const auto ref_b = Reference(b, {{28, 84}, {84, 56}}, {12, 13}, 6);
  ASSERT_EQ(ref_a.size(), 6u);

  // Pixels prepared by image threads, and by the engine thread itself.
  for (int threads : {2, 0}) {
    SCOPED_TRACE(threads);
    auto loop = EngineLoop::Create(Options(false, threads));
    ASSERT_TRUE(loop.ok()) << loop.status();
    auto sa = (*loop)->Submit(RequestId{1}, Spec(a, {Image(84, 56, 11)}, 6));
    auto sb = (*loop)->Submit(RequestId{2}, Spec(b, {Image(28, 84, 12), Image(84, 56, 13)}, 6));
    ASSERT_TRUE(sa.ok() && sb.ok());
    const Result ra = Collect(**sa), rb = Collect(**sb);
    EXPECT_TRUE(ra.status.ok()) << ra.status;
    EXPECT_TRUE(rb.status.ok()) << rb.status;
    EXPECT_EQ(ra.tokens, ref_a);
    EXPECT_EQ(rb.tokens, ref_b);
    EXPECT_TRUE(PoolWhole(**loop));
  }
}

TEST_F(EngineLoopImagesTest, TheEncoderIsSpreadOverStepsAndGivesTheSameTokens) {
  // Two images of 2 layers each (the tiny encoder): 4 layers. With a budget
  // of L layers a step they take ceil(4 / L) steps; a text request decodes
  // alongside; every token is the model run directly.
  const int layers = static_cast<int>(model_->vision()->layers());
  ASSERT_EQ(layers, 2);
  auto with_images = Prompt(3, 3, 1, 2, 13);
  const auto second = Prompt(1, 2, 3, 2, 14);
  with_images.insert(with_images.end(), second.begin(), second.end());
  const auto text = Prompt(5, 0, 0, 0, 15);
  const auto ref_images = Reference(with_images, {{28, 84}, {84, 56}}, {41, 42}, 5);
  const auto ref_text = Reference(text, {}, {}, 12);
  for (int budget : {1, 3, 0}) {
    SCOPED_TRACE(budget);
    EngineOptions o = Options();
    o.vision_layers_per_step = budget;
    o.max_tokens_per_step = 64;
    auto loop = EngineLoop::Create(o);
    ASSERT_TRUE(loop.ok()) << loop.status();
    auto st = (*loop)->Submit(RequestId{1}, Spec(text, {}, 12));
    auto si = (*loop)->Submit(RequestId{2}, Spec(with_images, {Image(28, 84, 41), Image(84, 56, 42)}, 5));
    ASSERT_TRUE(st.ok() && si.ok());
    const Result ri = Collect(**si), rt = Collect(**st);
    EXPECT_TRUE(ri.status.ok()) << ri.status;
    EXPECT_EQ(ri.tokens, ref_images);
    EXPECT_EQ(rt.tokens, ref_text);
    const EngineStats stats = (*loop)->Stats();
    EXPECT_EQ(stats.vision_layers, 2 * layers);
    EXPECT_EQ(stats.vision_steps, budget == 1 ? 4 : budget == 3 ? 2 : 1);
    EXPECT_TRUE(PoolWhole(**loop));
  }
}

TEST_F(EngineLoopImagesTest, OtherRequestsRunWhileAnImageIsPrepared) {
  // The image's pixels are held back: a text request submitted after it
  // must still run to its end, which it could not if the engine thread
  // were the one waiting for the pixels.
  const auto with_image = Prompt(3, 2, 3, 2, 8);
  const auto text = Prompt(6, 0, 0, 0, 9);
  const auto ref_image = Reference(with_image, {{84, 56}}, {61}, 4);
  const auto ref_text = Reference(text, {}, {}, 4);
  auto loop = EngineLoop::Create(Options());
  ASSERT_TRUE(loop.ok()) << loop.status();
  std::promise<void> open;
  auto si = (*loop)->Submit(RequestId{1}, Spec(with_image, {GatedImage(84, 56, 61, open.get_future().share())}, 4));
  ASSERT_TRUE(si.ok()) << si.status();
  ASSERT_TRUE(PreparingIs(**loop, 1));
  EXPECT_EQ((*loop)->Stats().preparing_tokens, static_cast<std::int64_t>(with_image.size()));
  auto st = (*loop)->Submit(RequestId{2}, Spec(text, {}, 4));
  ASSERT_TRUE(st.ok()) << st.status();
  const Result rt = Collect(**st, seconds(30));
  EXPECT_TRUE(rt.ended && rt.status.ok()) << rt.status;
  EXPECT_EQ(rt.tokens, ref_text);
  EXPECT_FALSE((*si)->ended());
  EXPECT_EQ((*loop)->Stats().preparing, 1);
  open.set_value();
  const Result ri = Collect(**si);
  EXPECT_TRUE(ri.status.ok()) << ri.status;
  EXPECT_EQ(ri.tokens, ref_image);
  EXPECT_TRUE(PreparingIs(**loop, 0));
  EXPECT_EQ((*loop)->Stats().preparing_tokens, 0);
  EXPECT_TRUE(PoolWhole(**loop));
}

TEST_F(EngineLoopImagesTest, CancellingARequestWhoseImageIsPreparedEndsItAtOnce) {
  // The cancelled request's late pixels must not reach a new request that
  // reuses its id: the new one gets its own image's answer.
  const auto prompt = Prompt(3, 2, 3, 2, 10);
  const auto ref_old = Reference(prompt, {{84, 56}}, {71}, 4);
  const auto ref_new = Reference(prompt, {{84, 56}}, {72}, 4);
  ASSERT_NE(ref_old, ref_new);
  auto loop = EngineLoop::Create(Options());
  ASSERT_TRUE(loop.ok()) << loop.status();
  std::promise<void> open_old, open_new;
  auto s1 = (*loop)->Submit(RequestId{1}, Spec(prompt, {GatedImage(84, 56, 71, open_old.get_future().share())}, 4));
  ASSERT_TRUE(s1.ok());
  ASSERT_TRUE(PreparingIs(**loop, 1));
  (*loop)->Cancel(RequestId{1});
  const Result r1 = Collect(**s1, seconds(30));
  EXPECT_TRUE(r1.ended);
  EXPECT_EQ(r1.reason, ExitReason::kCancelled);
  EXPECT_EQ(r1.status.code(), absl::StatusCode::kCancelled) << r1.status;
  EXPECT_TRUE(PreparingIs(**loop, 0));

  auto s2 = (*loop)->Submit(RequestId{1}, Spec(prompt, {GatedImage(84, 56, 72, open_new.get_future().share())}, 4));
  ASSERT_TRUE(s2.ok());
  ASSERT_TRUE(PreparingIs(**loop, 1));
  open_old.set_value();  // the cancelled request's pixels arrive first
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_EQ((*loop)->Stats().preparing, 1) << "the old pixels were taken for the new request";
  open_new.set_value();
  const Result r2 = Collect(**s2);
  EXPECT_TRUE(r2.status.ok()) << r2.status;
  EXPECT_EQ(r2.tokens, ref_new);
  EXPECT_TRUE(PoolWhole(**loop));
}

TEST_F(EngineLoopImagesTest, RequestsBeingPreparedCountAgainstTheQueueLimit) {
  const auto prompt = Prompt(3, 2, 3, 2, 11);
  const auto ref = Reference(prompt, {{84, 56}}, {81}, 3);
  EngineOptions o = Options();
  o.max_waiting = 1;
  auto loop = EngineLoop::Create(o);
  ASSERT_TRUE(loop.ok()) << loop.status();
  std::promise<void> open;
  auto s1 = (*loop)->Submit(RequestId{1}, Spec(prompt, {GatedImage(84, 56, 81, open.get_future().share())}, 3));
  ASSERT_TRUE(s1.ok());
  ASSERT_TRUE(PreparingIs(**loop, 1));
  for (std::uint64_t id : {2, 3}) {  // another image, and text alone
    auto s = (*loop)->Submit(RequestId{id}, id == 2 ? Spec(prompt, {Image(84, 56, 81)}, 3) : Spec({20, 21, 22}, {}, 3));
    ASSERT_TRUE(s.ok());
    const Result r = Collect(**s, seconds(30));
    EXPECT_EQ(r.status.code(), absl::StatusCode::kResourceExhausted) << id << ": " << r.status;
  }
  open.set_value();
  EXPECT_EQ(Collect(**s1).tokens, ref);
  EXPECT_TRUE(PoolWhole(**loop));
}

TEST_F(EngineLoopImagesTest, StoppingEndsRequestsWhoseImagesArePrepared) {
  const auto prompt = Prompt(3, 2, 3, 2, 12);
  const auto ref = Reference(prompt, {{84, 56}}, {91}, 3);
  for (StopMode mode : {StopMode::kCancel, StopMode::kDrain}) {
    SCOPED_TRACE(static_cast<int>(mode));
    auto loop = EngineLoop::Create(Options());
    ASSERT_TRUE(loop.ok()) << loop.status();
    std::promise<void> open;
    auto s = (*loop)->Submit(RequestId{1}, Spec(prompt, {GatedImage(84, 56, 91, open.get_future().share())}, 3));
    ASSERT_TRUE(s.ok());
    ASSERT_TRUE(PreparingIs(**loop, 1));
    std::thread stopper([&] { (*loop)->Stop(mode); });
    if (mode == StopMode::kCancel) {
      // Ends now, pixels or not; Stop then waits for the image thread.
      const Result r = Collect(**s, seconds(30));
      EXPECT_EQ(r.reason, ExitReason::kCancelled);
      EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable) << r.status;
      open.set_value();
    } else {
      // A drain finishes it once its pixels come.
      for (int i = 0; i < 2000 && (*loop)->Submit(RequestId{2}, Spec({20, 21}, {}, 1)).ok(); ++i) {
        std::this_thread::sleep_for(milliseconds(5));
      }
      EXPECT_FALSE((*s)->ended());
      open.set_value();
      const Result r = Collect(**s);
      EXPECT_TRUE(r.status.ok()) << r.status;
      EXPECT_EQ(r.tokens, ref);
    }
    stopper.join();
    EXPECT_FALSE((*loop)->Stats().running);
    EXPECT_EQ((*loop)->Stats().preparing, 0);
  }
}

TEST_F(EngineLoopImagesTest, ThePrefixCacheDoesNotReuseAnotherImagesKv) {
  // Same ids, different pixels: only the text before the image may come
  // from the cache.
  const auto prompt = Prompt(9, 2, 3, 4, 4);
  const auto ref1 = Reference(prompt, {{84, 56}}, {21}, 5);
  const auto ref2 = Reference(prompt, {{84, 56}}, {22}, 5);
  ASSERT_NE(ref1, ref2) << "the images should change the answer for this test to mean anything";
  auto loop = EngineLoop::Create(Options(/*prefix_caching=*/true));
  ASSERT_TRUE(loop.ok()) << loop.status();
  auto s1 = (*loop)->Submit(RequestId{1}, Spec(prompt, {Image(84, 56, 21)}, 5));
  ASSERT_TRUE(s1.ok());
  const Result r1 = Collect(**s1);
  auto s2 = (*loop)->Submit(RequestId{2}, Spec(prompt, {Image(84, 56, 22)}, 5));
  ASSERT_TRUE(s2.ok());
  const Result r2 = Collect(**s2);
  EXPECT_EQ(r1.tokens, ref1);
  EXPECT_EQ(r2.tokens, ref2);
  EXPECT_EQ((*s2)->cached_tokens(), 8) << "two full blocks of text before the image";
  EXPECT_TRUE(PoolWhole(**loop));
}

TEST_F(EngineLoopImagesTest, BadImagesFailTheirRequestOnly) {
  const auto prompt = Prompt(3, 2, 3, 2, 5);
  // Before the loop exists: the model is the engine thread's once it runs.
  const auto ref = Reference(prompt, {{84, 56}}, {3}, 3);
  auto loop = EngineLoop::Create(Options());
  ASSERT_TRUE(loop.ok()) << loop.status();
  auto expect_invalid = [&](std::uint64_t id, RequestSpec spec, const std::string& says) {
    auto s = (*loop)->Submit(RequestId{id}, std::move(spec));
    ASSERT_TRUE(s.ok()) << s.status();
    const Result r = Collect(**s);
    EXPECT_EQ(r.reason, ExitReason::kFailed);
    EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument) << r.status;
    EXPECT_NE(r.status.message().find(says), std::string::npos) << r.status;
  };
  ImageInput corrupt{.height = 84, .width = 56, .pixels = []() -> absl::StatusOr<std::vector<float>> {
                       return absl::InvalidArgumentError("PNG data is corrupt");
                     }};
  expect_invalid(1, Spec(prompt, {corrupt}, 3), "images[0]: PNG data is corrupt");
  expect_invalid(2, Spec(prompt, {Image(56, 56, 1)}, 3), "image tokens");    // 4 rows for 6 placeholders
  expect_invalid(3, Spec(prompt, {}, 3), "image tokens");                    // placeholders, no image
  expect_invalid(4, Spec(prompt, {Image(84, 50, 1)}, 3), "28-pixel cells");  // not whole cells
  // Wrongly sized pixels are the encoder's error.
  ImageInput short_pixels{.height = 84, .width = 56, .pixels = []() -> absl::StatusOr<std::vector<float>> {
                            return std::vector<float>(10, 0.0f);
                          }};
  auto s = (*loop)->Submit(RequestId{5}, Spec(prompt, {short_pixels}, 3));
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(Collect(**s).reason, ExitReason::kFailed);
  // A good request still runs.
  auto good = (*loop)->Submit(RequestId{6}, Spec(prompt, {Image(84, 56, 3)}, 3));
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(Collect(**good).tokens, ref);
  EXPECT_TRUE(PoolWhole(**loop));
}

TEST_F(EngineLoopImagesTest, AModelWithoutAVisionEncoderRefusesImages) {
  auto text_only = testing::MakeTestModel(testing::SmallVocabTiny(), "engine_loop_text_only");
  ASSERT_NE(text_only, nullptr);
  ASSERT_EQ(text_only->vision(), nullptr);
  EngineOptions o = Options();
  o.model = text_only.get();
  auto loop = EngineLoop::Create(o);
  ASSERT_TRUE(loop.ok()) << loop.status();
  auto s = (*loop)->Submit(RequestId{1}, Spec(Prompt(3, 2, 3, 2, 6), {Image(84, 56, 1)}, 3));
  ASSERT_TRUE(s.ok());
  const Result r = Collect(**s);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument) << r.status;
  EXPECT_NE(r.status.message().find("no vision encoder"), std::string::npos) << r.status;
  (*loop)->Stop();
}

TEST_F(EngineLoopImagesTest, ADecodeWorkerDecodesImagesOnlyToRecomputeAPreemptedRequest) {
  // Decode role: each prompt's KV arrives in a reservation (copied here from
  // a direct prefill), the first token with it. The two reservations fill
  // the pool, so whichever request first needs another block preempts one
  // of them (which, depends on timing), and that one is recomputed: only then
  // are its image's pixels asked for, once however often it is preempted.
  EngineOptions o = Options();
  o.num_blocks = 10;
  o.max_tokens_per_step = 64;
  auto loop = EngineLoop::Create(o);
  ASSERT_TRUE(loop.ok()) << loop.status();
  constexpr int kMaxTokens = 14;
  const auto H = static_cast<std::size_t>(model_->config().hidden_size);
  std::vector<std::shared_ptr<RequestStream>> streams;
  std::vector<std::vector<std::int32_t>> refs;
  std::vector<std::pair<ReservationId, DecodeSpec>> decodes;  // started together once both KVs are in
  std::atomic<int> calls[2] = {0, 0};
  // The loop runs no request until the Decodes below (Reserve and WriteKv
  // do not touch the model), so this thread may use the model until then.
  for (std::uint64_t k = 0; k < 2; ++k) {
    const auto prompt = Prompt(6, 2, 3, 4, 40 + k);  // 19 tokens: 5 blocks of 4
    const std::uint64_t seed = 50 + k;
    refs.push_back(Reference(prompt, {{84, 56}}, {seed}, kMaxTokens));
    ASSERT_EQ(refs.back().size(), static_cast<std::size_t>(kMaxTokens));

    // The prompt's KV, computed directly on a pool of the same block size.
    auto src_pool = *KvPool::Create(model_->PoolOptions(16, 4));
    BlockTable src(src_pool.get());
    ASSERT_TRUE(src.Reserve(static_cast<std::int64_t>(prompt.size())).ok());
    auto rows = model_->vision()->Encode(Pixels(84, 56, seed), 84, 56);
    ASSERT_TRUE(rows.ok());
    std::vector<std::int32_t> at;
    for (std::size_t p = 0; p < prompt.size(); ++p) {
      if (prompt[p] == kImg) at.push_back(static_cast<std::int32_t>(p));
    }
    ForwardItem item{prompt, 0, &src, false};
    item.embed_at = at;
    item.embed_rows = *rows;
    std::vector<float> logits;
    ASSERT_TRUE(model_->Forward({&item, 1}, *src_pool, AttentionForm::kAbsorbed, &logits).ok());
    ASSERT_EQ(rows->size(), at.size() * H);

    std::promise<absl::StatusOr<Reservation>> reserved;
    ASSERT_TRUE((*loop)
                    ->Reserve(ReserveSpec{RequestId{k + 1}, prompt, 0, seconds(60), false},
                              [&](absl::StatusOr<Reservation> r) { reserved.set_value(std::move(r)); })
                    .ok());
    absl::StatusOr<Reservation> target = reserved.get_future().get();
    ASSERT_TRUE(target.ok()) << target.status();
    std::promise<absl::Status> written;
    const KvPool* from = src_pool.get();
    const std::int64_t n = static_cast<std::int64_t>(prompt.size());
    ASSERT_TRUE((*loop)
                    ->WriteKv(
                        target->id,
                        [&](KvPool& pool, std::span<const BlockId> blocks) {
                          const std::int64_t bs = pool.block_size(), dim = pool.entry_dim();
                          for (std::int64_t l = 0; l < pool.num_layers(); ++l) {
                            for (std::int64_t t = 0; t < n; ++t) {
                              const float* e = from->layer(l) + (src.block(t / bs).value * bs + t % bs) * dim;
                              std::memcpy(pool.entry(l, blocks[static_cast<std::size_t>(t / bs)], t % bs), e,
                                          sizeof(float) * static_cast<std::size_t>(dim));
                            }
                          }
                          return absl::OkStatus();
                        },
                        [&](absl::Status st) { written.set_value(st); })
                    .ok());
    ASSERT_TRUE(written.get_future().get().ok());

    DecodeSpec ds;
    ds.prompt = prompt;
    ds.sampling.temperature = 0.0f;
    ds.stop.max_tokens = kMaxTokens;
    ds.stop.ignore_eos = true;
    ds.images.push_back(Image(84, 56, seed, &calls[k]));
    decodes.emplace_back(target->id, std::move(ds));
  }
  for (std::uint64_t k = 0; k < 2; ++k) {
    auto stream = (*loop)->Decode(decodes[k].first, RequestId{k + 1}, refs[k][0], std::move(decodes[k].second));
    ASSERT_TRUE(stream.ok()) << stream.status();
    streams.push_back(*stream);
  }
  for (std::size_t k = 0; k < 2; ++k) {
    const Result r = Collect(*streams[k]);
    EXPECT_TRUE(r.status.ok()) << k << ": " << r.status;
    EXPECT_EQ(r.tokens, std::vector<std::int32_t>(refs[k].begin() + 1, refs[k].end())) << "request " << k + 1;
  }
  EXPECT_GT((*loop)->Stats().scheduler.preemptions, 0);
  EXPECT_GE(calls[0].load() + calls[1].load(), 1) << "a preempted request decodes its image to recompute";
  EXPECT_LE(calls[0].load(), 1);
  EXPECT_LE(calls[1].load(), 1);
  EXPECT_TRUE(PoolWhole(**loop));
}

TEST_F(EngineLoopImagesTest, ThePrefixCacheSharesTheBlocksOfTheSameImage) {
  // A conversation's next turn: the same image (same content hash) in the
  // same place. Its blocks come from the cache, the answer is unchanged; a
  // different image (another hash) with the same ids reuses only the text
  // before it.
  const auto prompt = Prompt(9, 2, 3, 4, 7);
  const auto ref = Reference(prompt, {{84, 56}}, {31}, 5);
  const auto other_ref = Reference(prompt, {{84, 56}}, {32}, 5);
  ASSERT_NE(ref, other_ref);
  auto loop = EngineLoop::Create(Options(/*prefix_caching=*/true));
  ASSERT_TRUE(loop.ok()) << loop.status();
  std::atomic<int> calls = 0;
  auto run = [&](std::uint64_t id, std::uint64_t seed, std::uint64_t hash) {
    auto s = (*loop)->Submit(RequestId{id}, Spec(prompt, {Image(84, 56, seed, &calls, hash)}, 5));
    EXPECT_TRUE(s.ok()) << s.status();
    const Result r = Collect(**s);
    EXPECT_TRUE(r.status.ok()) << r.status;
    return std::make_pair(r.tokens, (*s)->cached_tokens());
  };
  EXPECT_EQ(run(1, 31, 0xabc), std::make_pair(ref, std::int64_t{0}));
  // 9 text tokens + 3 rows of (2 [IMG] + 1) + 4 = 22 tokens: 5 full blocks,
  // all cached but the one holding the last token.
  EXPECT_EQ(run(2, 31, 0xabc), std::make_pair(ref, std::int64_t{20}));
  EXPECT_EQ(run(3, 32, 0xdef), std::make_pair(other_ref, std::int64_t{8}));
  EXPECT_EQ(calls.load(), 2) << "the second request's image tokens all came from the cache: never decoded";
  EXPECT_TRUE(PoolWhole(**loop));
}

}  // namespace
}  // namespace sirocco::engine
