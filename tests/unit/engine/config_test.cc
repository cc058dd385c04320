#include "engine/config.h"

#include <cmath>

#include "gtest/gtest.h"
#include "engine/model_maker.h"

namespace sirocco::engine {
namespace {

constexpr const char* kMinimal = R"({
  "model_type": "mistral4", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 96,
  "moe_intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
  "n_routed_experts": 8, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2, "kv_lora_rank": 32,
  "q_lora_rank": null, "qk_rope_head_dim": 16, "qk_nope_head_dim": 16, "v_head_dim": 24,
  "first_k_dense_replace": 1, "eos_token_id": [2, 5],
  "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
    "original_max_position_embeddings": 8, "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0,
    "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1, "partial_rotary_factor": 0.5}
})";

std::string With(const std::string& key, const std::string& value) {
  std::string s = kMinimal;
  const std::string needle = "\"" + key + "\": ";
  auto at = s.find(needle);
  EXPECT_NE(at, std::string::npos) << key;
  const std::size_t begin = at + needle.size();
  auto end = s[begin] == '[' ? s.find(']', begin) + 1 : s.find_first_of(",}", begin);
  return s.substr(0, at + needle.size()) + value + s.substr(end);
}

TEST(Config, ParsesMinimal) {
  auto c = ParseModelConfig(kMinimal);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->q_lora_rank, 0);
  EXPECT_EQ(c->qk_head_dim(), 32);
  EXPECT_EQ(c->kv_entry_dim(), 48);
  EXPECT_EQ(c->eos_token_ids, (std::vector<std::int64_t>{2, 5}));
  EXPECT_FALSE(c->is_moe_layer(0));
  EXPECT_TRUE(c->is_moe_layer(1));
  EXPECT_EQ(c->rope.type, RopeConfig::Type::kYarn);
  EXPECT_DOUBLE_EQ(*c->rope.llama_4_scaling_beta, 0.1);
}

TEST(Config, MultimodalWrapperUsesTextConfig) {
  std::string wrapped = std::string(R"({"model_type": "mistral3", "vision_config": {"hidden_size": 8}, "text_config": )") +
                        kMinimal + "}";
  auto c = ParseModelConfig(wrapped);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->multimodal_wrapper);
  EXPECT_EQ(c->hidden_size, 64);
}

struct BadCase {
  const char* key;
  const char* value;
  const char* field_in_message;
};

class ConfigRejects : public ::testing::TestWithParam<BadCase> {};

TEST_P(ConfigRejects, NamesTheField) {
  const BadCase& b = GetParam();
  auto c = ParseModelConfig(With(b.key, b.value));
  ASSERT_FALSE(c.ok()) << b.key << "=" << b.value;
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(c.status().message()).find(b.field_in_message), std::string::npos) << c.status().ToString();
}

INSTANTIATE_TEST_SUITE_P(
    Fields, ConfigRejects,
    ::testing::Values(BadCase{"model_type", "\"llama\"", "model_type"},
                      BadCase{"hidden_size", "0", "hidden_size"},
                      BadCase{"hidden_size", "\"big\"", "hidden_size"},
                      BadCase{"num_key_value_heads", "2", "num_key_value_heads"},
                      BadCase{"n_group", "3", "n_group"},
                      BadCase{"topk_group", "3", "topk_group"},
                      BadCase{"num_experts_per_tok", "5", "num_experts_per_tok"},
                      BadCase{"qk_rope_head_dim", "15", "qk_rope_head_dim"},
                      BadCase{"eos_token_id", "1000", "eos_token_id"},
                      BadCase{"q_lora_rank", "-3", "q_lora_rank"},
                      BadCase{"kv_lora_rank", "-1", "kv_lora_rank"},
                      BadCase{"first_k_dense_replace", "-1", "first_k_dense_replace"}),
    [](const auto& p) { return std::to_string(p.index) + "_" + p.param.key; });

TEST(Config, RejectsUnsupportedFeatures) {
  std::string s = kMinimal;
  auto act = ParseModelConfig(s.substr(0, s.size() - 2) + ", \"hidden_act\": \"gelu\"}");
  ASSERT_FALSE(act.ok());
  EXPECT_NE(std::string(act.status().message()).find("hidden_act"), std::string::npos);
  auto inter = ParseModelConfig(s.substr(0, s.size() - 2) + ", \"rope_interleave\": false}");
  ASSERT_FALSE(inter.ok());
  EXPECT_NE(std::string(inter.status().message()).find("rope_interleave"), std::string::npos);
  auto rope = ParseModelConfig(With("rope_type", "\"longrope\""));
  ASSERT_FALSE(rope.ok());
  EXPECT_NE(std::string(rope.status().message()).find("rope_type"), std::string::npos);
  EXPECT_FALSE(ParseModelConfig("{not json").ok());
  EXPECT_FALSE(ParseModelConfig("[]").ok());
}

// YaRN tables against the formulas evaluated independently in double.
TEST(Config, YarnTablesMatchFormula) {
  ModelConfig c = *ParseModelConfig(kMinimal);
  c.rope.mscale = 0.707;
  c.rope.mscale_all_dim = 1.0;
  c.rope.factor = 32.0;
  const RopeTables t = ComputeRopeTables(c);
  const double dim = 16, base = 10000, factor = 32;
  auto mscale = [](double s, double m) { return s <= 1 ? 1.0 : 0.1 * m * std::log(s) + 1.0; };
  EXPECT_NEAR(t.attention_factor, mscale(factor, 0.707) / mscale(factor, 1.0), 1e-6);
  EXPECT_NEAR(t.softmax_scale, std::pow(32.0, -0.5) * mscale(factor, 1.0) * mscale(factor, 1.0), 1e-6);
  auto corr = [&](double rot) { return dim * std::log(8 / (rot * 2 * M_PI)) / (2 * std::log(base)); };
  const double low = std::max(std::floor(corr(32)), 0.0), high = std::min(std::ceil(corr(1)), dim - 1);
  ASSERT_EQ(t.inv_freq.size(), 8u);
  for (int i = 0; i < 8; ++i) {
    const double pf = std::pow(base, 2.0 * i / dim);
    double ramp = std::clamp((i - low) / (high - low == 0 ? 0.001 : high - low), 0.0, 1.0);
    const double expected = (1 / (factor * pf)) * ramp + (1 / pf) * (1 - ramp);
    EXPECT_NEAR(t.inv_freq[static_cast<std::size_t>(i)], expected, 1e-6 * expected) << i;
  }
}

TEST(Config, Llama4QueryScale) {
  ModelConfig c = *ParseModelConfig(kMinimal);  // original 8, beta 0.1
  EXPECT_FLOAT_EQ(Llama4QueryScale(c, 0), 1.0f);
  EXPECT_FLOAT_EQ(Llama4QueryScale(c, 7), 1.0f);
  EXPECT_NEAR(Llama4QueryScale(c, 8), 1.0 + 0.1 * std::log(2.0), 1e-7);
  EXPECT_NEAR(Llama4QueryScale(c, 31), 1.0 + 0.1 * std::log(4.0), 1e-7);
}

TEST(Config, JsonRoundTrip) {
  for (const std::string& name : PresetNames()) {
    ModelConfig c = *PresetConfig(name);
    auto back = ParseModelConfig(ModelConfigToJson(c));
    ASSERT_TRUE(back.ok()) << name << ": " << back.status().ToString();
    EXPECT_EQ(back->hidden_size, c.hidden_size);
    EXPECT_EQ(back->q_lora_rank, c.q_lora_rank);
    EXPECT_EQ(back->n_group, c.n_group);
    EXPECT_EQ(back->rope.original_max_position_embeddings, c.rope.original_max_position_embeddings);
    EXPECT_EQ(*back->rope.factor, *c.rope.factor);
  }
}

// The released model: 119B parameters, about 6.5B active per token.
TEST(Config, RealConfigParameterCounts) {
  const ParameterCount n = CountParameters(*PresetConfig("mistral-small-4"));
  EXPECT_GT(n.total, 118'000'000'000);
  EXPECT_LT(n.total, 120'000'000'000);
  EXPECT_GT(n.active, 6'000'000'000);
  EXPECT_LT(n.active, 7'000'000'000);
  const ParameterCount small = CountParameters(*PresetConfig("small"));
  EXPECT_GT(small.total, 900'000'000);
  EXPECT_LT(small.total, 1'300'000'000);
}

}  // namespace
}  // namespace sirocco::engine
