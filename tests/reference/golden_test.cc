// Checks the engine against logits and greedy continuations computed by
// transformers' Mistral4ForCausalLM in float32 (tests/reference/README.md).
// Pass criteria, per case, per kernel backend, per attention form:
//   max |logit - reference| <= 1e-4 * max |reference logit|, over every
//   position, for one full prefill and for prefill-1 + decode steps;
//   the 32-token greedy continuation is identical. A case may ask for the
//   engine's block-FP8 weights (case.json "engine_weights"); its reference
//   then computes with those weights (mistral4_reference.py).
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/generator.h"
#include "engine/mistral4.h"
#include "engine/npy.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sirocco::engine {
namespace {

namespace fs = std::filesystem;

struct Case {
  std::string name;
  std::string dir;
  std::vector<std::int32_t> prompt;
  std::vector<std::int32_t> greedy;
  std::vector<float> logits;  // [n, vocab], prompt followed by greedy tokens
  std::int64_t rows = 0, vocab = 0;
  WeightType weights = WeightType::kF32;  // how the engine holds the weights (--weights)
};

std::vector<std::string> CaseNames() {
  std::vector<std::string> names;
  if (!fs::exists(SIROCCO_GOLDEN_DIR)) return names;
  for (const auto& e : fs::directory_iterator(SIROCCO_GOLDEN_DIR)) {
    if (e.is_directory() && fs::exists(e.path() / "case.json")) names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

Case LoadCase(const std::string& name) {
  Case c;
  c.name = name;
  c.dir = std::string(SIROCCO_GOLDEN_DIR) + "/" + name;
  std::ifstream in(c.dir + "/case.json");
  std::stringstream ss;
  ss << in.rdbuf();
  auto j = nlohmann::json::parse(ss.str());
  c.prompt = j.at("prompt").get<std::vector<std::int32_t>>();
  c.greedy = j.at("greedy").get<std::vector<std::int32_t>>();
  auto weights = ParseWeightType(j.value("engine_weights", std::string("f32")));
  EXPECT_TRUE(weights.ok()) << weights.status();
  if (weights.ok()) c.weights = *weights;
  auto npy = ReadNpy(c.dir + "/logits.npy");
  EXPECT_TRUE(npy.ok()) << npy.status().ToString();
  if (!npy.ok()) return c;
  EXPECT_EQ(npy->dtype, DType::kF32);
  EXPECT_EQ(npy->shape.size(), 2u);
  c.rows = npy->shape[0];
  c.vocab = npy->shape[1];
  c.logits.resize(static_cast<std::size_t>(c.rows * c.vocab));
  std::memcpy(c.logits.data(), npy->data.data(), c.logits.size() * sizeof(float));
  return c;
}

void ExpectClose(const std::vector<float>& got, const Case& c, const std::string& what) {
  ASSERT_EQ(got.size(), c.logits.size()) << what;
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(got[i] - c.logits[i])));
    scale = std::max(scale, static_cast<double>(std::abs(c.logits[i])));
  }
  EXPECT_LE(diff, 1e-4 * scale) << c.name << " " << what << ": max diff " << diff << ", max |logit| " << scale;
}

class Golden : public ::testing::TestWithParam<std::tuple<std::string, kernels::Backend>> {};

TEST_P(Golden, LogitsAndGreedyMatchTransformers) {
  const auto& [name, backend] = GetParam();
  if (!kernels::Available(backend)) GTEST_SKIP() << kernels::BackendName(backend) << " not available on this CPU";
  Case c = LoadCase(name);
  ASSERT_FALSE(c.logits.empty());
  // The decoder only: multimodal_per_expert carries dummy vision tensors (a
  // partial tower) that a text-only load must skip.
  auto model = Mistral4Model::Load(
      c.dir, ModelOptions{.backend = backend, .device = nullptr, .weight_type = c.weights, .load_vision = false});
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  ASSERT_EQ((*model)->config().vocab_size, c.vocab);
  std::vector<std::int32_t> seq = c.prompt;
  seq.insert(seq.end(), c.greedy.begin(), c.greedy.end());
  ASSERT_EQ(static_cast<std::int64_t>(seq.size()), c.rows);
  auto pool = *KvPool::Create((*model)->PoolOptions(64, 16));

  for (AttentionForm form : {AttentionForm::kExpanded, AttentionForm::kAbsorbed}) {
    const std::string label = form == AttentionForm::kExpanded ? "expanded" : "absorbed";
    // One prefill of the whole sequence.
    {
      BlockTable bt(pool.get());
      ASSERT_TRUE(bt.Reserve(c.rows).ok());
      ForwardItem item{seq, 0, &bt, true};
      std::vector<float> logits;
      ASSERT_TRUE((*model)->Forward({&item, 1}, *pool, form, &logits).ok());
      ExpectClose(logits, c, "prefill/" + label);
    }
    // First token prefilled, every next one decoded against the cache.
    {
      BlockTable bt(pool.get());
      ASSERT_TRUE(bt.Reserve(c.rows).ok());
      std::vector<float> all, logits;
      for (std::size_t i = 0; i < seq.size(); ++i) {
        ForwardItem item{std::span<const std::int32_t>(seq).subspan(i, 1), static_cast<std::int64_t>(i), &bt, true};
        ASSERT_TRUE((*model)->Forward({&item, 1}, *pool, i == 0 ? form : AttentionForm::kAbsorbed, &logits).ok());
        all.insert(all.end(), logits.begin(), logits.end());
      }
      ExpectClose(all, c, "incremental/" + label);
    }
    // Greedy continuation through the generator.
    GenerateRequest req;
    req.prompt = c.prompt;
    req.sampling.temperature = 0.0f;
    req.stop.max_tokens = static_cast<std::int32_t>(c.greedy.size());
    req.stop.ignore_eos = true;
    auto out = Generate(**model, *pool, {&req, 1}, GeneratorOptions{form, 0});
    ASSERT_TRUE(out.ok()) << out.status().ToString();
    EXPECT_EQ((*out)[0].tokens, c.greedy) << c.name << " greedy/" << label;
  }
  EXPECT_EQ(pool->num_free(), pool->num_blocks()) << "blocks leaked";
}

INSTANTIATE_TEST_SUITE_P(
    Cases, Golden,
    ::testing::Combine(::testing::ValuesIn(CaseNames()),
                       ::testing::Values(kernels::Backend::kRef, kernels::Backend::kAvx2)),
    [](const auto& p) {
      std::string n = std::get<0>(p.param) + "_" + kernels::BackendName(std::get<1>(p.param));
      for (char& ch : n) {
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      }
      return n;
    });

// An empty golden folder must fail loudly, not pass vacuously.
TEST(GoldenCases, Present) { EXPECT_GE(CaseNames().size(), 6u) << "golden cases missing under " << SIROCCO_GOLDEN_DIR; }

}  // namespace
}  // namespace sirocco::engine
