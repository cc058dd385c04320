// Invariants of the forward pass that hold whatever the weights: the same
// logits however a batch is split, however blocks are scattered, whether a
// sequence is prefilled at once or decoded token by token, in either
// attention form and on every kernel backend.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

#include "engine/mistral4_weights.h"
#include "engine/safetensors.h"
#include "gtest/gtest.h"
#include "tests/unit/engine/test_models.h"

namespace sirocco::engine {
namespace {

using testing::MakeTestModel;
using testing::SmallVocabTiny;

// max |a - b| / max |b|: the normalized error the reference checks use.
double RelErr(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::abs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::abs(b[i])));
  }
  return diff / std::max(scale, 1e-30);
}

std::vector<std::int32_t> Tokens(int n, int seed, int vocab) {
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::vector<std::int32_t> t(static_cast<std::size_t>(n));
  for (auto& x : t) x = static_cast<std::int32_t>(rng() % static_cast<unsigned>(vocab));
  return t;
}

struct Fixture {
  std::unique_ptr<Mistral4Model> model;
  std::unique_ptr<KvPool> pool;
};

Fixture Make(bool q_lora, kernels::Backend backend = kernels::Backend::kRef) {
  Fixture f;
  f.model = MakeTestModel(SmallVocabTiny(q_lora), q_lora ? "inv_q" : "inv_noq", backend);
  if (f.model) f.pool = *KvPool::Create(f.model->PoolOptions(256, 4));
  return f;
}

// Full-prefill logits of one sequence, every position.
std::vector<float> Prefill(Fixture& f, const std::vector<std::int32_t>& toks, AttentionForm form) {
  BlockTable bt(f.pool.get());
  EXPECT_TRUE(bt.Reserve(static_cast<std::int64_t>(toks.size())).ok());
  ForwardItem item{toks, 0, &bt, true};
  std::vector<float> logits;
  EXPECT_TRUE(f.model->Forward({&item, 1}, *f.pool, form, &logits).ok());
  return logits;
}

class ModelInvariants : public ::testing::TestWithParam<bool> {};

TEST_P(ModelInvariants, ExpandedEqualsAbsorbed) {
  Fixture f = Make(GetParam());
  ASSERT_NE(f.model, nullptr);
  auto toks = Tokens(40, 1, 512);
  EXPECT_LT(RelErr(Prefill(f, toks, AttentionForm::kAbsorbed), Prefill(f, toks, AttentionForm::kExpanded)), 1e-5);
}

TEST_P(ModelInvariants, PrefillThenDecodeEqualsFullPrefill) {
  Fixture f = Make(GetParam());
  ASSERT_NE(f.model, nullptr);
  auto toks = Tokens(37, 2, 512);
  const auto full = Prefill(f, toks, AttentionForm::kExpanded);
  for (std::size_t split : {std::size_t{1}, std::size_t{5}, std::size_t{16}, std::size_t{36}}) {
    BlockTable bt(f.pool.get());
    ASSERT_TRUE(bt.Reserve(static_cast<std::int64_t>(toks.size())).ok());
    std::vector<float> got, logits;
    ForwardItem first{std::span<const std::int32_t>(toks).first(split), 0, &bt, true};
    ASSERT_TRUE(f.model->Forward({&first, 1}, *f.pool, AttentionForm::kExpanded, &logits).ok());
    got = logits;
    for (std::size_t i = split; i < toks.size(); ++i) {
      ForwardItem step{std::span<const std::int32_t>(toks).subspan(i, 1), static_cast<std::int64_t>(i), &bt, true};
      ASSERT_TRUE(f.model->Forward({&step, 1}, *f.pool, AttentionForm::kAbsorbed, &logits).ok());
      got.insert(got.end(), logits.begin(), logits.end());
    }
    EXPECT_LT(RelErr(got, full), 1e-5) << "split at " << split;
  }
}

TEST_P(ModelInvariants, ChunkedPrefillEqualsFullPrefill) {
  Fixture f = Make(GetParam());
  ASSERT_NE(f.model, nullptr);
  auto toks = Tokens(45, 3, 512);
  const auto full = Prefill(f, toks, AttentionForm::kExpanded);
  for (AttentionForm form : {AttentionForm::kExpanded, AttentionForm::kAbsorbed}) {
    BlockTable bt(f.pool.get());
    ASSERT_TRUE(bt.Reserve(45).ok());
    std::vector<float> got, logits;
    for (std::size_t begin = 0; begin < toks.size(); begin += 13) {
      const std::size_t len = std::min<std::size_t>(13, toks.size() - begin);
      ForwardItem chunk{std::span<const std::int32_t>(toks).subspan(begin, len), static_cast<std::int64_t>(begin),
                        &bt, true};
      ASSERT_TRUE(f.model->Forward({&chunk, 1}, *f.pool, form, &logits).ok());
      got.insert(got.end(), logits.begin(), logits.end());
    }
    EXPECT_LT(RelErr(got, full), 1e-5);
  }
}

TEST_P(ModelInvariants, BatchedEqualsOneByOne) {
  Fixture f = Make(GetParam());
  ASSERT_NE(f.model, nullptr);
  const std::vector<std::vector<std::int32_t>> seqs = {Tokens(1, 4, 512), Tokens(23, 5, 512), Tokens(9, 6, 512),
                                                       Tokens(40, 7, 512)};
  for (AttentionForm form : {AttentionForm::kExpanded, AttentionForm::kAbsorbed}) {
    std::vector<float> alone;
    for (const auto& s : seqs) {
      auto l = Prefill(f, s, form);
      alone.insert(alone.end(), l.begin(), l.end());
    }
    std::vector<BlockTable> tables;
    tables.reserve(seqs.size());
    std::vector<ForwardItem> items;
    for (const auto& s : seqs) {
      tables.emplace_back(f.pool.get());
      ASSERT_TRUE(tables.back().Reserve(static_cast<std::int64_t>(s.size())).ok());
      items.push_back(ForwardItem{s, 0, &tables.back(), true});
    }
    std::vector<float> batched;
    ASSERT_TRUE(f.model->Forward(items, *f.pool, form, &batched).ok());
    EXPECT_LT(RelErr(batched, alone), 1e-5);
  }
}

TEST_P(ModelInvariants, BatchedDecodeEqualsOneByOne) {
  Fixture f = Make(GetParam());
  ASSERT_NE(f.model, nullptr);
  // Three sequences at different lengths each decode one more token, together.
  const std::vector<std::vector<std::int32_t>> seqs = {Tokens(6, 8, 512), Tokens(19, 9, 512), Tokens(33, 10, 512)};
  std::vector<float> expected;
  for (const auto& s : seqs) {
    auto l = Prefill(f, s, AttentionForm::kExpanded);
    expected.insert(expected.end(), l.end() - 512, l.end());
  }
  std::vector<BlockTable> tables;
  tables.reserve(seqs.size());
  std::vector<ForwardItem> steps;
  std::vector<float> logits;
  for (const auto& s : seqs) {
    tables.emplace_back(f.pool.get());
    ASSERT_TRUE(tables.back().Reserve(static_cast<std::int64_t>(s.size())).ok());
    ForwardItem pre{std::span<const std::int32_t>(s).first(s.size() - 1), 0, &tables.back(), false};
    ASSERT_TRUE(f.model->Forward({&pre, 1}, *f.pool, AttentionForm::kExpanded, &logits).ok());
    steps.push_back(ForwardItem{std::span<const std::int32_t>(s).last(1), static_cast<std::int64_t>(s.size()) - 1,
                                &tables.back(), false});
  }
  ASSERT_TRUE(f.model->Forward(steps, *f.pool, AttentionForm::kAbsorbed, &logits).ok());
  EXPECT_LT(RelErr(logits, expected), 1e-5);
}

TEST_P(ModelInvariants, FragmentedBlocksEqualContiguous) {
  Fixture f = Make(GetParam());
  ASSERT_NE(f.model, nullptr);
  auto toks = Tokens(30, 11, 512);
  const auto contiguous = Prefill(f, toks, AttentionForm::kExpanded);
  // Scatter: take every block, shuffle, and hand out a non-monotonic subset.
  auto all = *f.pool->Allocate(f.pool->num_free());
  std::mt19937 rng(3);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<BlockId> mine(all.begin(), all.begin() + 8), rest(all.begin() + 8, all.end());
  f.pool->Free(rest);
  // One table holds the scattered blocks; rerunning the same tokens rewrites
  // the same entries, so both forms can use it in turn.
  BlockTable bt(f.pool.get());
  bt.Adopt(mine);
  for (AttentionForm form : {AttentionForm::kExpanded, AttentionForm::kAbsorbed}) {
    ForwardItem item{toks, 0, &bt, true};
    std::vector<float> logits;
    ASSERT_TRUE(f.model->Forward({&item, 1}, *f.pool, form, &logits).ok());
    EXPECT_LT(RelErr(logits, contiguous), 1e-5);
  }
}

TEST_P(ModelInvariants, EveryBackendMatchesReference) {
  Fixture ref = Make(GetParam(), kernels::Backend::kRef);
  ASSERT_NE(ref.model, nullptr);
  auto toks = Tokens(33, 12, 512);
  const auto expected = Prefill(ref, toks, AttentionForm::kExpanded);
  for (kernels::Backend b : kernels::AvailableBackends()) {
    if (b == kernels::Backend::kRef) continue;
    Fixture other = Make(GetParam(), b);
    ASSERT_NE(other.model, nullptr);
    for (AttentionForm form : {AttentionForm::kExpanded, AttentionForm::kAbsorbed}) {
      EXPECT_LT(RelErr(Prefill(other, toks, form), expected), 1e-5) << kernels::BackendName(b);
    }
  }
}

// The per-layer hook fires once per layer, in order, and when it fires that
// layer's KV for every token is already in the pool (a prefill worker posts
// the layer's transfer from it).
TEST_P(ModelInvariants, LayerHookSeesThatLayersKv) {
  Fixture f = Make(GetParam());
  ASSERT_NE(f.model, nullptr);
  auto toks = Tokens(9, 13, 512);
  BlockTable bt(f.pool.get());
  ASSERT_TRUE(bt.Reserve(9).ok());
  const std::int64_t entry = f.pool->entry_dim(), layers = f.model->config().num_hidden_layers;
  // Poison every entry so "written" is observable.
  for (std::int64_t l = 0; l < layers; ++l) {
    for (std::int64_t t = 0; t < 9; ++t) {
      std::fill_n(f.pool->entry(l, bt.block(t / 4), t % 4), entry, std::nanf(""));
    }
  }
  std::vector<std::int64_t> seen;
  auto hook = [&](std::int64_t layer) {
    seen.push_back(layer);
    for (std::int64_t t = 0; t < 9; ++t) {
      const float* e = f.pool->entry(layer, bt.block(t / 4), t % 4);
      EXPECT_TRUE(std::all_of(e, e + entry, [](float v) { return std::isfinite(v); })) << layer << "/" << t;
      if (layer + 1 < layers) {
        EXPECT_TRUE(std::isnan(f.pool->entry(layer + 1, bt.block(t / 4), t % 4)[0])) << "next layer already written";
      }
    }
  };
  ForwardItem item{toks, 0, &bt, false};
  std::vector<float> logits;
  ASSERT_TRUE(f.model->Forward({&item, 1}, *f.pool, AttentionForm::kExpanded, &logits, hook).ok());
  std::vector<std::int64_t> expected(static_cast<std::size_t>(layers));
  for (std::int64_t l = 0; l < layers; ++l) expected[static_cast<std::size_t>(l)] = l;
  EXPECT_EQ(seen, expected);
}

TEST_P(ModelInvariants, BadInputIsAnErrorNotACrash) {
  Fixture f = Make(GetParam());
  ASSERT_NE(f.model, nullptr);
  BlockTable bt(f.pool.get());
  ASSERT_TRUE(bt.Reserve(4).ok());
  std::vector<float> logits;
  std::vector<std::int32_t> bad = {1, 512};
  ForwardItem oov{bad, 0, &bt, false};
  EXPECT_EQ(f.model->Forward({&oov, 1}, *f.pool, AttentionForm::kExpanded, &logits).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<std::int32_t> many(9, 3);
  ForwardItem too_long{many, 0, &bt, false};
  EXPECT_EQ(f.model->Forward({&too_long, 1}, *f.pool, AttentionForm::kExpanded, &logits).code(),
            absl::StatusCode::kInvalidArgument);
  ForwardItem empty{{}, 0, &bt, false};
  EXPECT_EQ(f.model->Forward({&empty, 1}, *f.pool, AttentionForm::kExpanded, &logits).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(ModelInvariants, EmbeddingRowsReplaceThoseOfTheirTokens) {
  // Rows given for some tokens (an image's features at its placeholders)
  // act exactly as if those positions held tokens with those embeddings.
  const ModelConfig config = SmallVocabTiny(GetParam());
  const std::string dir = testing::TempDir("inv_embed");
  MakeModelOptions mo;
  mo.seed = 7;
  mo.dtype = DType::kF32;
  ASSERT_TRUE(MakeModel(config, mo, dir).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto weights = LoadMistral4Weights(**ckpt, config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const std::vector<float> embed = (*weights)->embed.data;
  auto model = Mistral4Model::FromWeights(config, *std::move(weights),
                                          ModelOptions{.backend = kernels::Backend::kRef, .device = nullptr});
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  auto pool = *KvPool::Create((*model)->PoolOptions(64, 4));
  const auto H = static_cast<std::size_t>(config.hidden_size);

  const std::vector<std::int32_t> a = Tokens(30, 4, 512);
  std::vector<std::int32_t> b = a;
  const std::vector<std::int32_t> at = {5, 6, 7, 20};
  std::vector<float> rows;
  for (std::int32_t p : at) {
    b[static_cast<std::size_t>(p)] = (a[static_cast<std::size_t>(p)] + 17) % 512;
    const auto* row = embed.data() + static_cast<std::size_t>(b[static_cast<std::size_t>(p)]) * H;
    rows.insert(rows.end(), row, row + H);
  }
  auto run = [&](std::span<const ForwardItem> items) {
    std::vector<float> logits;
    absl::Status st = (*model)->Forward(items, *pool, AttentionForm::kAbsorbed, &logits);
    EXPECT_TRUE(st.ok()) << st;
    return logits;
  };
  BlockTable tb(pool.get()), ta(pool.get()), tc(pool.get());
  ASSERT_TRUE(tb.Reserve(30).ok() && ta.Reserve(30).ok() && tc.Reserve(30).ok());
  ForwardItem plain{b, 0, &tb, true};
  const std::vector<float> want = run({&plain, 1});
  ForwardItem with_rows{a, 0, &ta, true};
  with_rows.embed_at = at;
  with_rows.embed_rows = rows;
  EXPECT_EQ(RelErr(run({&with_rows, 1}), want), 0.0);

  // In chunks, each taking the rows of its own tokens.
  const std::vector<std::int32_t> at0 = {5}, at1 = {0, 1, 14};
  ForwardItem c0{std::span<const std::int32_t>(a).first(6), 0, &tc, true};
  c0.embed_at = at0;
  c0.embed_rows = std::span<const float>(rows).first(H);
  std::vector<float> got = run({&c0, 1});
  ForwardItem c1{std::span<const std::int32_t>(a).subspan(6), 6, &tc, true};
  c1.embed_at = at1;
  c1.embed_rows = std::span<const float>(rows).subspan(H);
  const std::vector<float> rest = run({&c1, 1});
  got.insert(got.end(), rest.begin(), rest.end());
  EXPECT_LT(RelErr(got, want), 1e-5);

  // Rows that do not fit their tokens are an error.
  std::vector<float> logits;
  ForwardItem bad = with_rows;
  bad.embed_rows = std::span<const float>(rows).first(3 * H);
  EXPECT_EQ((*model)->Forward({&bad, 1}, *pool, AttentionForm::kAbsorbed, &logits).code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<std::int32_t> out_of_range = {5, 6, 7, 30};
  bad = with_rows;
  bad.embed_at = out_of_range;
  EXPECT_EQ((*model)->Forward({&bad, 1}, *pool, AttentionForm::kAbsorbed, &logits).code(),
            absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(QLora, ModelInvariants, ::testing::Bool(),
                         [](const auto& p) { return p.param ? "q_lora" : "no_q_lora"; });

}  // namespace
}  // namespace sirocco::engine
