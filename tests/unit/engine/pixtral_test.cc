// The vision side of a multimodal checkpoint: VisionConfig parsing (values,
// transformers' defaults, errors that name the field), the model maker's
// multimodal `tiny` preset, and PixtralEncoder's loading and argument checks.
// Numerics against transformers: tests/reference/pixtral_golden_test.cc.
#include "engine/pixtral.h"

#include <cmath>
#include <filesystem>
#include <string>

#include "engine/mistral4_weights.h"
#include "engine/model_maker.h"
#include "engine/safetensors.h"
#include "gtest/gtest.h"
#include "tests/unit/engine/test_models.h"

namespace sirocco::engine {
namespace {

// A mistral3 wrapper around `text`, with vision fields `vision` and top-level
// fields `top` (JSON object bodies without braces).
std::string Wrapper(const std::string& vision, const std::string& top = "") {
  const std::string text = ModelConfigToJson(testing::SmallVocabTiny());
  return R"({"model_type": "mistral3", "text_config": )" + text + R"(, "vision_config": {)" + vision + "}" +
         (top.empty() ? "" : ", " + top) + "}";
}

constexpr const char* kTinyVision = R"("model_type": "pixtral", "hidden_size": 32, "intermediate_size": 64,
  "num_hidden_layers": 2, "num_attention_heads": 2, "head_dim": 16, "num_channels": 3, "patch_size": 14,
  "image_size": 1540, "hidden_act": "silu", "rope_parameters": {"rope_type": "axial", "rope_theta": 10000.0})";

TEST(VisionConfig, TextOnlyConfigHasNoVisionEncoder) {
  auto c = ParseVisionConfig(ModelConfigToJson(testing::SmallVocabTiny()));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->has_value());
  // A wrapper whose vision_config is null is text-only too.
  c = ParseVisionConfig(R"({"model_type": "mistral3", "vision_config": null})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->has_value());
}

TEST(VisionConfig, ParsesEveryField) {
  auto c = ParseVisionConfig(Wrapper(kTinyVision, R"("image_token_index": 11, "spatial_merge_size": 2,
      "vision_feature_layer": -2, "projector_hidden_act": "silu", "multimodal_projector_bias": false)"));
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->has_value());
  const VisionConfig& v = **c;
  EXPECT_EQ(v.hidden_size, 32);
  EXPECT_EQ(v.intermediate_size, 64);
  EXPECT_EQ(v.num_hidden_layers, 2);
  EXPECT_EQ(v.num_attention_heads, 2);
  EXPECT_EQ(v.head_dim(), 16);
  EXPECT_EQ(v.num_channels, 3);
  EXPECT_EQ(v.patch_size, 14);
  EXPECT_EQ(v.image_size, 1540);
  EXPECT_EQ(v.hidden_act, VisionActivation::kSilu);
  EXPECT_EQ(v.rope_theta, 10000.0);
  EXPECT_EQ(v.image_token_index, 11);
  EXPECT_EQ(v.spatial_merge_size, 2);
  EXPECT_EQ(v.vision_feature_layer, -2);
  EXPECT_EQ(v.layers_used(), 1);  // hidden_states[-2] of 3: after the first layer
  EXPECT_EQ(v.projector_hidden_act, VisionActivation::kSilu);
  EXPECT_EQ(v.token_pixels(), 28);
}

TEST(VisionConfig, DefaultsAreTransformers) {
  // PixtralVisionConfig's and Mistral3Config's defaults for what a file omits.
  auto c = ParseVisionConfig(Wrapper(""));
  ASSERT_TRUE(c.ok()) << c.status();
  const VisionConfig& v = **c;
  EXPECT_EQ(v.hidden_size, 1024);
  EXPECT_EQ(v.intermediate_size, 4096);
  EXPECT_EQ(v.num_hidden_layers, 24);
  EXPECT_EQ(v.num_attention_heads, 16);
  EXPECT_EQ(v.patch_size, 16);
  EXPECT_EQ(v.hidden_act, VisionActivation::kGelu);
  EXPECT_EQ(v.rope_theta, 10000.0);
  EXPECT_EQ(v.image_token_index, 10);
  EXPECT_EQ(v.spatial_merge_size, 2);
  EXPECT_EQ(v.vision_feature_layer, -1);
  EXPECT_EQ(v.layers_used(), 24);
  EXPECT_EQ(v.projector_hidden_act, VisionActivation::kGelu);
}

TEST(VisionConfig, RopeThetaAndImageTokenSpellings) {
  // A top-level rope_theta is read; rope_parameters wins over it.
  auto c = ParseVisionConfig(Wrapper(R"("rope_theta": 500.0)"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->rope_theta, 500.0);
  c = ParseVisionConfig(
      Wrapper(R"("rope_theta": 500.0, "rope_parameters": {"rope_type": "axial", "rope_theta": 77.0})"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->rope_theta, 77.0);
  // image_token_id is Mistral3Config's alias of image_token_index.
  c = ParseVisionConfig(Wrapper(kTinyVision, R"("image_token_id": 7)"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->image_token_index, 7);
  c = ParseVisionConfig(Wrapper(kTinyVision, R"("image_token_id": 7, "image_token_index": 7)"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->image_token_index, 7);
}

struct BadVision {
  std::string vision;
  std::string top;
  std::string field;  // must appear in the message
};

class VisionConfigRejects : public ::testing::TestWithParam<BadVision> {};

TEST_P(VisionConfigRejects, NamingTheField) {
  const BadVision& b = GetParam();
  auto c = ParseVisionConfig(Wrapper(b.vision, b.top));
  ASSERT_FALSE(c.ok()) << b.field;
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find(b.field), std::string_view::npos) << c.status().message();
}

INSTANTIATE_TEST_SUITE_P(
    Fields, VisionConfigRejects,
    ::testing::Values(
        BadVision{R"("hidden_act": "gelu_new")", "", "vision_config.hidden_act"},
        BadVision{R"("model_type": "siglip_vision_model")", "", "vision_config.model_type"},
        BadVision{R"("hidden_size": 0)", "", "vision_config.hidden_size"},
        BadVision{R"("hidden_size": 32, "num_attention_heads": 3)", "", "vision_config.num_attention_heads"},
        BadVision{R"("hidden_size": 24, "num_attention_heads": 4)", "", "vision_config.head_dim"},  // 6: not 4k
        BadVision{R"("hidden_size": 32, "num_attention_heads": 2, "head_dim": 8)", "", "vision_config.head_dim"},
        BadVision{R"("patch_size": [14, 14])", "", "vision_config.patch_size"},
        BadVision{R"("image_size": "big")", "", "vision_config.image_size"},
        BadVision{R"("intermediate_size": -1)", "", "vision_config.intermediate_size"},
        BadVision{R"("rope_parameters": {"rope_type": "default", "rope_theta": 10000.0})", "",
                  "vision_config.rope_parameters.rope_type"},
        BadVision{R"("rope_parameters": {"rope_type": "axial", "rope_theta": 0})", "", "rope_theta"},
        BadVision{kTinyVision, R"("projector_hidden_act": "relu")", "projector_hidden_act"},
        BadVision{kTinyVision, R"("multimodal_projector_bias": true)", "multimodal_projector_bias"},
        BadVision{kTinyVision, R"("vision_feature_layer": [-1, -2])", "vision_feature_layer"},
        BadVision{kTinyVision, R"("vision_feature_layer": 3)", "vision_feature_layer"},   // 2 layers: 0..2
        BadVision{kTinyVision, R"("vision_feature_layer": -4)", "vision_feature_layer"},  // -3..-1
        BadVision{kTinyVision, R"("spatial_merge_size": 0)", "spatial_merge_size"},
        BadVision{kTinyVision, R"("image_token_index": 10, "image_token_id": 11)", "image_token_id"},
        BadVision{kTinyVision, R"("image_token_index": -1)", "image_token_index"}));

TEST(VisionConfig, RejectsAVisionConfigOutsideTheMistral3Wrapper) {
  auto c = ParseVisionConfig(R"({"model_type": "llava", "vision_config": {}})");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("model_type"), std::string_view::npos) << c.status().message();
  c = ParseVisionConfig(R"({"model_type": "mistral3", "vision_config": 3})");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("vision_config"), std::string_view::npos) << c.status().message();
}

TEST(VisionConfig, MultimodalJsonRoundTrip) {
  for (const std::string& name : PresetNames()) {
    const std::optional<VisionConfig> v = PresetVisionConfig(name);
    if (!v) continue;
    const ModelConfig text = *PresetConfig(name);
    const std::string json = MultimodalConfigToJson(text, *v);
    auto back = ParseVisionConfig(json);
    ASSERT_TRUE(back.ok()) << name << ": " << back.status();
    ASSERT_TRUE(back->has_value());
    EXPECT_EQ((*back)->hidden_size, v->hidden_size);
    EXPECT_EQ((*back)->num_hidden_layers, v->num_hidden_layers);
    EXPECT_EQ((*back)->patch_size, v->patch_size);
    EXPECT_EQ((*back)->hidden_act, v->hidden_act);
    EXPECT_EQ((*back)->vision_feature_layer, v->vision_feature_layer);
    EXPECT_EQ((*back)->projector_hidden_act, v->projector_hidden_act);
    // The text side of the same file parses as the decoder's config.
    auto text_back = ParseModelConfig(json);
    ASSERT_TRUE(text_back.ok()) << text_back.status();
    EXPECT_TRUE(text_back->multimodal_wrapper);
    EXPECT_EQ(text_back->hidden_size, text.hidden_size);
  }
}

TEST(VisionConfig, PresetsWithVision) {
  EXPECT_TRUE(PresetVisionConfig("tiny").has_value());
  EXPECT_TRUE(PresetVisionConfig("mistral-small-4").has_value());
  EXPECT_FALSE(PresetVisionConfig("tiny-noqlora").has_value());
  EXPECT_FALSE(PresetVisionConfig("small").has_value());
  // tiny: patch 14 conv 32*3*14*14, ln_pre 32, 2 layers of (2 norms + 4 * 32^2
  // + 3 * 32 * 64), projector norm 32 + merging 32 * 128 + 128 * 32 + 128^2.
  const VisionConfig tiny = *PresetVisionConfig("tiny");
  EXPECT_EQ(CountVisionParameters(tiny, *PresetConfig("tiny")),
            18816 + 32 + 2 * (64 + 4096 + 6144) + (32 + 4096 + 4096 + 16384));
  // The released encoder: 24 layers at width 1024, projector to 4096.
  const std::int64_t layer = 2 * 1024 + 4 * 1024 * 1024 + 3 * 1024 * 4096;
  EXPECT_EQ(CountVisionParameters(*PresetVisionConfig("mistral-small-4"), *PresetConfig("mistral-small-4")),
            1024 * 3 * 14 * 14 + 1024 + 24 * layer + (1024 + 1024 * 4096 + 4096 * 1024 + 4096 * 4096));
}

// ---------------------------------------------------------------------------
// The model maker's multimodal checkpoint and the encoder on it.

class TinyMultimodal : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir("pixtral_tiny");
    MakeModelOptions o;
    o.seed = 7;
    o.dtype = DType::kF32;
    o.vision = PresetVisionConfig("tiny");
    ASSERT_TRUE(MakeModel(testing::SmallVocabTiny(), o, dir_).ok());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string dir_;
};

TEST_F(TinyMultimodal, WritesTheMistral3LayoutAndTheDecoderStillLoads) {
  auto ckpt = Checkpoint::Open(dir_);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE((*ckpt)->Has("model.language_model.embed_tokens.weight"));
  EXPECT_TRUE((*ckpt)->Has("lm_head.weight"));
  EXPECT_TRUE((*ckpt)->Has("model.vision_tower.patch_conv.weight"));
  EXPECT_TRUE((*ckpt)->Has("model.vision_tower.transformer.layers.1.feed_forward.down_proj.weight"));
  EXPECT_TRUE((*ckpt)->Has("model.multi_modal_projector.patch_merger.merging_layer.weight"));
  EXPECT_FALSE((*ckpt)->Has("model.embed_tokens.weight"));
  auto text = LoadModelConfig(dir_ + "/config.json");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_TRUE(text->multimodal_wrapper);
  auto weights = LoadMistral4Weights(**ckpt, *text);
  ASSERT_TRUE(weights.ok()) << weights.status();

  // The decoder's values do not depend on the layout: the text-only
  // checkpoint of the same seed holds the same numbers.
  const std::string text_dir = testing::TempDir("pixtral_tiny_text");
  MakeModelOptions o;
  o.seed = 7;
  o.dtype = DType::kF32;
  ASSERT_TRUE(MakeModel(testing::SmallVocabTiny(), o, text_dir).ok());
  auto text_ckpt = Checkpoint::Open(text_dir);
  ASSERT_TRUE(text_ckpt.ok());
  auto text_weights = LoadMistral4Weights(**text_ckpt, *text);
  ASSERT_TRUE(text_weights.ok());
  EXPECT_EQ((*weights)->embed.data, (*text_weights)->embed.data);
  EXPECT_EQ((*weights)->layers[1].attn.kv_b_proj.data, (*text_weights)->layers[1].attn.kv_b_proj.data);
  EXPECT_EQ((*weights)->lm_head.data, (*text_weights)->lm_head.data);
  std::filesystem::remove_all(text_dir);
}

TEST_F(TinyMultimodal, EncoderLoadsAndEncodesOnEveryBackend) {
  // 56 x 28 pixels: a 4 x 2 patch grid, merged to 2 x 1 tokens.
  const int height = 56, width = 28;
  std::vector<float> pixels(static_cast<std::size_t>(3 * height * width));
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = std::sin(0.37f * static_cast<float>(i));
  std::vector<float> first;
  for (kernels::Backend backend : kernels::AvailableBackends()) {
    std::unique_ptr<Device> device = MakeHostDevice(backend);
    auto encoder = LoadPixtralEncoder(dir_, device.get());
    ASSERT_TRUE(encoder.ok()) << encoder.status();
    PixtralEncoder& e = **encoder;
    EXPECT_EQ(e.config().hidden_size, 32);
    EXPECT_EQ(e.output_dim(), 128);  // the decoder's hidden size
    EXPECT_EQ(e.tokens_for(height, width), 2);
    EXPECT_EQ(e.tokens_for(1540, 1540), 55 * 55);
    auto out = e.Encode(pixels, height, width);
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_EQ(out->size(), 2u * 128u);
    for (float x : *out) ASSERT_TRUE(std::isfinite(x));
    // The two tokens see different pixels.
    EXPECT_NE(std::vector<float>(out->begin(), out->begin() + 128), std::vector<float>(out->begin() + 128, out->end()));
    // Encoding again (scratch reused) gives the same rows.
    auto again = e.Encode(pixels, height, width);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(*again, *out);
    if (first.empty()) {
      first = *out;
    } else {
      double diff = 0, scale = 0;
      for (std::size_t i = 0; i < first.size(); ++i) {
        diff = std::max(diff, static_cast<double>(std::abs((*out)[i] - first[i])));
        scale = std::max(scale, static_cast<double>(std::abs(first[i])));
      }
      EXPECT_LE(diff, 1e-5 * scale) << kernels::BackendName(backend) << " vs ref";
    }
  }
}

TEST_F(TinyMultimodal, EncodeRejectsImagesOffTheTokenGrid) {
  std::unique_ptr<Device> device = MakeHostDevice(kernels::Backend::kRef);
  auto encoder = LoadPixtralEncoder(dir_, device.get());
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  const std::vector<float> pixels(3 * 28 * 56, 0.5f);
  for (auto [h, w] : {std::pair{27, 56}, std::pair{28, 42}, std::pair{0, 56}, std::pair{-28, 56}}) {
    auto out = (*encoder)->Encode(pixels, h, w);
    ASSERT_FALSE(out.ok()) << h << "x" << w;
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(out.status().message().find("multiples of 28"), std::string_view::npos) << out.status().message();
  }
  auto out = (*encoder)->Encode(std::span<const float>(pixels).first(100), 28, 56);  // too few values
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE((*encoder)->Encode(pixels, 28, 56).ok());
}

TEST_F(TinyMultimodal, EncodingInPartsInterleavedGivesEncodesRows) {
  // Two images encoded a layer at a time, their jobs interleaved (sharing
  // the encoder's temporaries), give exactly what Encode gives each (Encode
  // is checked against transformers by pixtral_golden_test).
  std::unique_ptr<Device> device = MakeHostDevice(kernels::Backend::kRef);
  auto encoder = LoadPixtralEncoder(dir_, device.get());
  ASSERT_TRUE(encoder.ok()) << encoder.status();
  PixtralEncoder& e = **encoder;
  ASSERT_GE(e.layers(), 2);
  const std::pair<int, int> sizes[2] = {{56, 28}, {28, 84}};
  std::vector<float> pixels[2];
  std::vector<float> whole[2];
  for (int k = 0; k < 2; ++k) {
    pixels[k].resize(static_cast<std::size_t>(3 * sizes[k].first * sizes[k].second));
    for (std::size_t i = 0; i < pixels[k].size(); ++i) pixels[k][i] = std::cos(0.11f * static_cast<float>(i + 7 * k));
    auto out = e.Encode(pixels[k], sizes[k].first, sizes[k].second);
    ASSERT_TRUE(out.ok()) << out.status();
    whole[k] = *out;
  }
  auto a = e.Start(pixels[0], sizes[0].first, sizes[0].second);
  auto b = e.Start(pixels[1], sizes[1].first, sizes[1].second);
  ASSERT_TRUE(a.ok() && b.ok());
  auto early = e.Finish(**a);
  EXPECT_EQ(early.status().code(), absl::StatusCode::kFailedPrecondition) << early.status();
  for (std::int64_t l = 0; l < e.layers(); ++l) {
    for (auto* job : {&*a, &*b}) {
      auto done = e.Step(**job, 1);
      ASSERT_TRUE(done.ok()) << done.status();
      EXPECT_EQ(*done, l + 1 == e.layers());
      EXPECT_EQ((*job)->layers_done(), l + 1);
    }
  }
  auto done = e.Step(**a, 1);  // nothing left: still done
  ASSERT_TRUE(done.ok() && *done);
  auto ra = e.Finish(**a), rb = e.Finish(**b);
  ASSERT_TRUE(ra.ok() && rb.ok());
  EXPECT_EQ(*ra, whole[0]);
  EXPECT_EQ(*rb, whole[1]);
  // Start checks as Encode does.
  EXPECT_EQ(e.Start(pixels[0], 27, 28).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(TinyMultimodal, MissingOrMisshapenTensorsAreNamed) {
  // A config that disagrees with the checkpoint's shapes: the error names
  // the tensor.
  auto ckpt = Checkpoint::Open(dir_);
  ASSERT_TRUE(ckpt.ok());
  const ModelConfig text = *LoadModelConfig(dir_ + "/config.json");
  VisionConfig wide = *PresetVisionConfig("tiny");
  wide.intermediate_size = 96;  // the checkpoint's feed-forward is 64 wide
  std::unique_ptr<Device> device = MakeHostDevice(kernels::Backend::kRef);
  auto encoder = PixtralEncoder::Load(**ckpt, text, wide, device.get());
  ASSERT_FALSE(encoder.ok());
  EXPECT_NE(encoder.status().message().find("model.vision_tower.transformer.layers.0.feed_forward.gate_proj.weight"),
            std::string_view::npos)
      << encoder.status().message();
}

TEST(PixtralEncoderLoad, TextOnlyCheckpointHasNoVisionEncoder) {
  const std::string dir = testing::TempDir("pixtral_text_only");
  MakeModelOptions o;
  o.dtype = DType::kF32;
  ASSERT_TRUE(MakeModel(testing::SmallVocabTiny(false), o, dir).ok());
  std::unique_ptr<Device> device = MakeHostDevice(kernels::Backend::kRef);
  auto encoder = LoadPixtralEncoder(dir, device.get());
  ASSERT_FALSE(encoder.ok());
  EXPECT_EQ(encoder.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(encoder.status().message().find("no vision encoder"), std::string_view::npos) << encoder.status().message();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sirocco::engine
