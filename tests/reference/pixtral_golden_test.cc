// Checks the Pixtral encoder + projector (engine/pixtral) against the image
// features transformers' Mistral3ForConditionalGeneration computes in float32
// (pixtral_reference.py; tests/reference/README.md, "Pixtral"). Pass
// criterion, per case, per CPU kernel backend, per image:
//   max |Encode(pixels) - features_<i>.npy| <= 1e-4 * max |features_<i>.npy|.
// Where a case holds logits.npy and greedy.json (a prompt with both images),
// the whole model -- the encoder's rows in place of the [IMG] tokens' embeddings
// -- must give those logits to 1e-4 * max |logit| at every position, prefilled
// at once and in chunks that cut through an image, and the same greedy
// continuation.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/device.h"
#include "engine/kv_cache.h"
#include "engine/mistral4.h"
#include "engine/npy.h"
#include "engine/pixtral.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sirocco::engine {
namespace {

namespace fs = std::filesystem;

// Golden folders written by pixtral_reference.py: they hold images.json.
std::vector<std::string> PixtralCaseNames() {
  std::vector<std::string> names;
  if (!fs::exists(SIROCCO_GOLDEN_DIR)) return names;
  for (const auto& e : fs::directory_iterator(SIROCCO_GOLDEN_DIR)) {
    if (e.is_directory() && fs::exists(e.path() / "images.json")) names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

std::vector<float> ReadFloats(const std::string& path, std::vector<std::int64_t>* shape) {
  auto npy = ReadNpy(path);
  EXPECT_TRUE(npy.ok()) << npy.status();
  if (!npy.ok()) return {};
  EXPECT_EQ(npy->dtype, DType::kF32) << path;
  *shape = npy->shape;
  std::vector<float> out(static_cast<std::size_t>(npy->numel()));
  std::memcpy(out.data(), npy->data.data(), out.size() * sizeof(float));
  return out;
}

using CaseParam = std::tuple<std::string, kernels::Backend>;

// "<case>_<backend>", as a test name.
std::string CaseName(const ::testing::TestParamInfo<CaseParam>& p) {
  std::string n = std::get<0>(p.param) + "_" + kernels::BackendName(std::get<1>(p.param));
  for (char& ch : n) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return n;
}

class PixtralGolden : public ::testing::TestWithParam<CaseParam> {};

TEST_P(PixtralGolden, FeaturesMatchTransformers) {
  const auto& [name, backend] = GetParam();
  if (!kernels::Available(backend)) GTEST_SKIP() << kernels::BackendName(backend) << " not available on this CPU";
  const std::string dir = std::string(SIROCCO_GOLDEN_DIR) + "/" + name;
  const nlohmann::json meta = ReadJson(dir + "/images.json");
  std::unique_ptr<Device> device = MakeHostDevice(backend);
  auto encoder = LoadPixtralEncoder(dir, device.get());
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  EXPECT_EQ((*encoder)->config().vision_feature_layer, meta.at("vision_feature_layer").get<std::int64_t>());
  EXPECT_EQ((*encoder)->config().image_token_index, meta.at("image_token_index").get<std::int64_t>());

  ASSERT_FALSE(meta.at("images").empty());
  for (const auto& image : meta.at("images")) {
    const int height = image.at("height").get<int>(), width = image.at("width").get<int>();
    const std::int64_t tokens = image.at("tokens").get<std::int64_t>();
    std::vector<std::int64_t> pixel_shape, feature_shape;
    const std::vector<float> pixels = ReadFloats(dir + "/" + image.at("pixels").get<std::string>(), &pixel_shape);
    const std::vector<float> want = ReadFloats(dir + "/" + image.at("features").get<std::string>(), &feature_shape);
    ASSERT_EQ(pixel_shape, (std::vector<std::int64_t>{3, height, width}));
    ASSERT_EQ(feature_shape, (std::vector<std::int64_t>{tokens, (*encoder)->output_dim()}));
    EXPECT_EQ((*encoder)->tokens_for(height, width), tokens);

    auto got = (*encoder)->Encode(pixels, height, width);
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_EQ(got->size(), want.size());
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
      diff = std::max(diff, static_cast<double>(std::abs((*got)[i] - want[i])));
      scale = std::max(scale, static_cast<double>(std::abs(want[i])));
    }
    const std::string label = absl::StrCat(name, "/", kernels::BackendName(backend), " ", height, "x", width);
    std::cout << "[ measured ] " << label << ": max|diff| " << diff << ", max|ref| " << scale << ", ratio "
              << diff / scale << "\n";
    EXPECT_LE(diff, 1e-4 * scale) << label;
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, PixtralGolden,
                         ::testing::Combine(::testing::ValuesIn(PixtralCaseNames()),
                                            ::testing::Values(kernels::Backend::kRef, kernels::Backend::kAvx2)),
                         CaseName);

class PixtralLogitsGolden : public ::testing::TestWithParam<CaseParam> {};

TEST_P(PixtralLogitsGolden, LogitsWithImagesMatchTransformers) {
  const auto& [name, backend] = GetParam();
  if (!kernels::Available(backend)) GTEST_SKIP() << kernels::BackendName(backend) << " not available on this CPU";
  const std::string dir = std::string(SIROCCO_GOLDEN_DIR) + "/" + name;
  const nlohmann::json meta = ReadJson(dir + "/images.json");
  const nlohmann::json greedy = ReadJson(dir + "/greedy.json");
  const std::vector<std::int32_t> prompt = greedy.at("prompt").get<std::vector<std::int32_t>>();
  const std::vector<std::int32_t> want_greedy = greedy.at("greedy").get<std::vector<std::int32_t>>();
  std::vector<std::int64_t> logits_shape;
  const std::vector<float> want = ReadFloats(dir + "/logits.npy", &logits_shape);

  auto model = Mistral4Model::Load(dir, ModelOptions{.backend = backend, .device = nullptr});
  ASSERT_TRUE(model.ok()) << model.status();
  PixtralEncoder* vision = (*model)->vision();
  ASSERT_NE(vision, nullptr);
  const std::int64_t vocab = (*model)->config().vocab_size;
  // logits.npy covers the prompt and the greedy continuation fed back.
  std::vector<std::int32_t> seq = prompt;
  seq.insert(seq.end(), want_greedy.begin(), want_greedy.end());
  ASSERT_EQ(logits_shape, (std::vector<std::int64_t>{static_cast<std::int64_t>(seq.size()), vocab}));

  std::vector<float> rows;
  for (const auto& image : meta.at("images")) {
    const int height = image.at("height").get<int>(), width = image.at("width").get<int>();
    std::vector<std::int64_t> shape;
    auto f = vision->Encode(ReadFloats(dir + "/" + image.at("pixels").get<std::string>(), &shape), height, width);
    ASSERT_TRUE(f.ok()) << f.status();
    rows.insert(rows.end(), f->begin(), f->end());
  }
  std::vector<std::int32_t> at;
  for (std::size_t p = 0; p < prompt.size(); ++p) {
    if (prompt[p] == vision->config().image_token_index) at.push_back(static_cast<std::int32_t>(p));
  }
  const auto H = static_cast<std::size_t>((*model)->config().hidden_size);
  ASSERT_EQ(rows.size(), at.size() * H);

  auto pool = *KvPool::Create((*model)->PoolOptions(64, 4));
  auto check = [&](const std::vector<float>& got, const std::string& label) {
    ASSERT_EQ(got.size(), want.size()) << label;
    double diff = 0, scale = 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
      diff = std::max(diff, static_cast<double>(std::abs(got[i] - want[i])));
      scale = std::max(scale, static_cast<double>(std::abs(want[i])));
    }
    std::cout << "[ measured ] " << name << "/" << kernels::BackendName(backend) << " " << label << ": max|diff| "
              << diff << ", max|ref| " << scale << ", ratio " << diff / scale << "\n";
    EXPECT_LE(diff, 1e-4 * scale) << label;
  };
  for (AttentionForm form : {AttentionForm::kExpanded, AttentionForm::kAbsorbed}) {
    const std::string form_name = form == AttentionForm::kExpanded ? "expanded" : "absorbed";
    // One prefill.
    BlockTable whole(pool.get());
    ASSERT_TRUE(whole.Reserve(static_cast<std::int64_t>(seq.size())).ok());
    ForwardItem item{seq, 0, &whole, true};
    item.embed_at = at;
    item.embed_rows = rows;
    std::vector<float> got;
    ASSERT_TRUE((*model)->Forward({&item, 1}, *pool, form, &got).ok());
    check(got, form_name + " prefill");
    // Chunks of 8 tokens: the first image's grid is cut after its first row.
    BlockTable chunked(pool.get());
    ASSERT_TRUE(chunked.Reserve(static_cast<std::int64_t>(seq.size())).ok());
    std::vector<float> all, part;
    std::size_t used = 0;  // image rows consumed
    for (std::size_t begin = 0; begin < seq.size(); begin += 8) {
      const std::size_t len = std::min<std::size_t>(8, seq.size() - begin);
      std::vector<std::int32_t> local;
      for (std::int32_t p : at) {
        if (static_cast<std::size_t>(p) >= begin && static_cast<std::size_t>(p) < begin + len) {
          local.push_back(p - static_cast<std::int32_t>(begin));
        }
      }
      ForwardItem chunk{std::span<const std::int32_t>(seq).subspan(begin, len), static_cast<std::int64_t>(begin),
                        &chunked, true};
      chunk.embed_at = local;
      chunk.embed_rows = std::span<const float>(rows).subspan(used * H, local.size() * H);
      used += local.size();
      ASSERT_TRUE((*model)->Forward({&chunk, 1}, *pool, form, &part).ok());
      all.insert(all.end(), part.begin(), part.end());
    }
    check(all, form_name + " chunks of 8");
  }

  // Greedy: the prefill, then decode steps over the cache.
  BlockTable bt(pool.get());
  ASSERT_TRUE(bt.Reserve(static_cast<std::int64_t>(prompt.size() + want_greedy.size())).ok());
  ForwardItem first{prompt, 0, &bt, false};
  first.embed_at = at;
  first.embed_rows = rows;
  std::vector<float> logits;
  ASSERT_TRUE((*model)->Forward({&first, 1}, *pool, AttentionForm::kAbsorbed, &logits).ok());
  auto argmax = [&] {
    return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.begin() + vocab) - logits.begin());
  };
  std::vector<std::int32_t> out = {argmax()};
  while (out.size() < want_greedy.size()) {
    ForwardItem step{std::span<const std::int32_t>(&out.back(), 1),
                     static_cast<std::int64_t>(prompt.size() + out.size()) - 1, &bt, false};
    ASSERT_TRUE((*model)->Forward({&step, 1}, *pool, AttentionForm::kAbsorbed, &logits).ok());
    out.push_back(argmax());
  }
  EXPECT_EQ(out, want_greedy);
}

// The cases that hold a whole-model check (the others hold features only).
std::vector<std::string> PixtralLogitsCaseNames() {
  std::vector<std::string> names = PixtralCaseNames();
  std::erase_if(names, [](const std::string& n) {
    return !fs::exists(std::string(SIROCCO_GOLDEN_DIR) + "/" + n + "/logits.npy");
  });
  return names;
}

INSTANTIATE_TEST_SUITE_P(Cases, PixtralLogitsGolden,
                         ::testing::Combine(::testing::ValuesIn(PixtralLogitsCaseNames()),
                                            ::testing::Values(kernels::Backend::kRef, kernels::Backend::kAvx2)),
                         CaseName);

// An empty golden folder must fail loudly, not pass vacuously.
TEST(PixtralGoldenCases, Present) {
  EXPECT_GE(PixtralCaseNames().size(), 2u) << "pixtral golden cases missing under " << SIROCCO_GOLDEN_DIR;
  EXPECT_GE(PixtralLogitsCaseNames().size(), 1u) << "no pixtral case with logits under " << SIROCCO_GOLDEN_DIR;
}

}  // namespace
}  // namespace sirocco::engine
