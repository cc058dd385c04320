#include "engine/generator.h"

#include "gtest/gtest.h"
#include "tests/unit/engine/test_models.h"

namespace sirocco::engine {
namespace {

class GeneratorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { model_ = testing::MakeTestModel(testing::SmallVocabTiny(), "gen").release(); }
  static void TearDownTestSuite() { delete model_; }
  void SetUp() override {
    ASSERT_NE(model_, nullptr);
    pool_ = *KvPool::Create(model_->PoolOptions(64, 8));
  }
  GenerateRequest Req(std::vector<std::int32_t> prompt, int max_tokens, float temperature = 0.0f) {
    GenerateRequest r;
    r.prompt = std::move(prompt);
    r.stop.max_tokens = max_tokens;
    r.stop.ignore_eos = true;
    r.sampling.temperature = temperature;
    return r;
  }
  static Mistral4Model* model_;
  std::unique_ptr<KvPool> pool_;
};
Mistral4Model* GeneratorTest::model_ = nullptr;

TEST_F(GeneratorTest, BatchedEqualsOneByOne) {
  std::vector<GenerateRequest> reqs = {Req({5, 6, 7}, 12), Req({100}, 5), Req({9, 8, 7, 6, 5, 4, 3, 2, 1, 0}, 9)};
  reqs[1].sampling.temperature = 0.8f;
  reqs[1].sampling.seed = 42;
  auto batched = Generate(*model_, *pool_, reqs);
  ASSERT_TRUE(batched.ok()) << batched.status().ToString();
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    auto alone = Generate(*model_, *pool_, {&reqs[i], 1});
    ASSERT_TRUE(alone.ok());
    EXPECT_EQ((*alone)[0].tokens, (*batched)[i].tokens) << i;
    EXPECT_EQ((*batched)[i].tokens.size(), static_cast<std::size_t>(reqs[i].stop.max_tokens));
    EXPECT_EQ((*batched)[i].finish, FinishReason::kLength);
  }
  EXPECT_EQ(pool_->num_free(), pool_->num_blocks());
}

TEST_F(GeneratorTest, ChunkedPrefillAndBothFormsGiveSameGreedyTokens) {
  GenerateRequest r = Req({3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6}, 10);
  auto base = *Generate(*model_, *pool_, {&r, 1}, GeneratorOptions{AttentionForm::kExpanded, 0});
  auto chunked = *Generate(*model_, *pool_, {&r, 1}, GeneratorOptions{AttentionForm::kExpanded, 4});
  auto absorbed = *Generate(*model_, *pool_, {&r, 1}, GeneratorOptions{AttentionForm::kAbsorbed, 7});
  EXPECT_EQ(base[0].tokens, chunked[0].tokens);
  EXPECT_EQ(base[0].tokens, absorbed[0].tokens);
}

TEST_F(GeneratorTest, SeedMakesSamplingReproducible) {
  GenerateRequest a = Req({11, 12, 13}, 16, 1.0f);
  a.sampling.seed = 7;
  GenerateRequest b = a;
  GenerateRequest c = a;
  c.sampling.seed = 8;
  auto ra = *Generate(*model_, *pool_, {&a, 1});
  auto rb = *Generate(*model_, *pool_, {&b, 1});
  auto rc = *Generate(*model_, *pool_, {&c, 1});
  EXPECT_EQ(ra[0].tokens, rb[0].tokens);
  EXPECT_NE(ra[0].tokens, rc[0].tokens);
}

TEST_F(GeneratorTest, StopTokenEndsGeneration) {
  GenerateRequest r = Req({1, 2, 3}, 20);
  auto free_run = *Generate(*model_, *pool_, {&r, 1});
  const std::int32_t stop = free_run[0].tokens[3];
  r.stop.stop_token_ids = {stop};
  auto stopped = *Generate(*model_, *pool_, {&r, 1});
  ASSERT_FALSE(stopped[0].tokens.empty());
  EXPECT_EQ(stopped[0].tokens.back(), stop);
  EXPECT_LE(stopped[0].tokens.size(), 4u);
  EXPECT_EQ(stopped[0].finish, FinishReason::kStop);
}

TEST_F(GeneratorTest, LogprobsAreReturnedWhenAsked) {
  GenerateRequest r = Req({1, 2, 3}, 4);
  r.sampling.logprobs = 3;
  auto out = *Generate(*model_, *pool_, {&r, 1});
  ASSERT_EQ(out[0].samples.size(), 4u);
  for (const SampleResult& s : out[0].samples) {
    EXPECT_LE(s.logprob, 0.0f);
    ASSERT_EQ(s.top.size(), 3u);
    EXPECT_EQ(s.top[0].token, s.token) << "greedy picks the most likely token";
  }
}

TEST_F(GeneratorTest, ErrorsLeaveNoBlocksBehind) {
  std::vector<GenerateRequest> too_big = {Req(std::vector<std::int32_t>(300, 1), 300), Req({1}, 400)};
  EXPECT_EQ(Generate(*model_, *pool_, too_big).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool_->num_free(), pool_->num_blocks());
  std::vector<GenerateRequest> bad = {Req({1, 2}, 4), Req({1, 99999}, 4)};
  auto s = Generate(*model_, *pool_, bad).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("request 1"), std::string::npos) << s.ToString();
  EXPECT_EQ(pool_->num_free(), pool_->num_blocks());
  std::vector<GenerateRequest> empty = {Req({}, 4)};
  EXPECT_EQ(Generate(*model_, *pool_, empty).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace sirocco::engine
