// Loading checkpoints: every layout the engine accepts gives the same model,
// and every defect is an error that names the tensor.
#include "engine/mistral4_weights.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "engine/dtype.h"
#include "engine/generator.h"
#include "engine/model_maker.h"
#include "engine/safetensors.h"
#include "gtest/gtest.h"
#include "tests/unit/engine/test_models.h"

namespace sirocco::engine {
namespace {

using testing::SmallVocabTiny;
using testing::TempDir;

std::vector<std::byte> F32Bytes(const std::vector<float>& v) {
  std::vector<std::byte> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// Writes `config` with weights from `source`, letting `edit` rename, reshape
// or retype tensors on the way.
template <typename Edit>
std::string Rewrite(const ModelConfig& config, const Checkpoint& source, const std::string& name, Edit edit) {
  SafetensorsWriter w;
  for (const std::string& n : source.Names()) {
    const TensorInfo* t = source.Find(n);
    std::vector<float> v(static_cast<std::size_t>(t->numel()));
    EXPECT_TRUE(ConvertToFloat32(t->dtype, t->data, v.size(), v.data()).ok());
    edit(w, n, t->shape, v);
  }
  const std::string dir = TempDir(name);
  EXPECT_TRUE(w.WriteFile(dir + "/model.safetensors").ok());
  std::ofstream(dir + "/config.json") << ModelConfigToJson(config);
  return dir;
}

class WeightsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = SmallVocabTiny();
    dir_ = TempDir("weights_src");
    MakeModelOptions o;
    o.dtype = DType::kF32;
    ASSERT_TRUE(MakeModel(config_, o, dir_).ok());
    src_ = std::move(*Checkpoint::Open(dir_));
  }
  absl::Status LoadDir(const std::string& dir) {
    auto ck = Checkpoint::Open(dir);
    if (!ck.ok()) return ck.status();
    return LoadMistral4Weights(**ck, config_).status();
  }
  ModelConfig config_;
  std::string dir_;
  std::unique_ptr<Checkpoint> src_;
};

TEST_F(WeightsTest, MissingTensorIsNamed) {
  const std::string victim = "model.layers.1.self_attn.kv_b_proj.weight";
  auto dir = Rewrite(config_, *src_, "missing", [&](SafetensorsWriter& w, const std::string& n, auto shape, auto v) {
    if (n != victim) w.Add(n, DType::kF32, shape, F32Bytes(v));
  });
  absl::Status s = LoadDir(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(s.message()).find(victim), std::string::npos) << s.ToString();
}

TEST_F(WeightsTest, MisshapenTensorIsNamed) {
  const std::string victim = "model.layers.2.mlp.experts.down_proj";
  auto dir = Rewrite(config_, *src_, "shape", [&](SafetensorsWriter& w, const std::string& n, auto shape, auto v) {
    if (n == victim) shape = {shape[0], shape[2], shape[1]};
    w.Add(n, DType::kF32, shape, F32Bytes(v));
  });
  absl::Status s = LoadDir(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find(victim), std::string::npos) << s.ToString();
}

TEST_F(WeightsTest, MistypedTensorIsNamed) {
  const std::string victim = "model.norm.weight";
  auto dir = Rewrite(config_, *src_, "dtype", [&](SafetensorsWriter& w, const std::string& n, auto shape, auto v) {
    if (n == victim) {
      w.Add(n, DType::kI32, shape, F32Bytes(v));
    } else {
      w.Add(n, DType::kF32, shape, F32Bytes(v));
    }
  });
  absl::Status s = LoadDir(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find(victim), std::string::npos) << s.ToString();
  EXPECT_NE(std::string(s.message()).find("I32"), std::string::npos) << s.ToString();
}

TEST_F(WeightsTest, Fp8WithoutScaleIsNamed) {
  const std::string victim = "model.layers.0.self_attn.o_proj.weight";
  auto dir = Rewrite(config_, *src_, "fp8", [&](SafetensorsWriter& w, const std::string& n, auto shape, auto v) {
    if (n == victim) {
      std::vector<std::byte> b(v.size());
      for (std::size_t i = 0; i < v.size(); ++i) b[i] = static_cast<std::byte>(FloatToF8E4M3(v[i]));
      w.Add(n, DType::kF8E4M3, shape, b);
    } else {
      w.Add(n, DType::kF32, shape, F32Bytes(v));
    }
  });
  absl::Status s = LoadDir(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(s.message()).find(victim + "_scale_inv"), std::string::npos) << s.ToString();
}

// Per-expert tensors under the multimodal prefix load to the same weights as
// the stacked layout save_pretrained writes.
TEST_F(WeightsTest, PerExpertMultimodalLayoutEqualsStacked) {
  const std::int64_t E = config_.n_routed_experts, I = config_.moe_intermediate_size, H = config_.hidden_size;
  auto dir = Rewrite(config_, *src_, "per_expert", [&](SafetensorsWriter& w, const std::string& n, auto shape,
                                                       const std::vector<float>& v) {
    std::string name = n;
    if (name.rfind("model.", 0) == 0) name = "model.language_model." + name.substr(6);
    const auto gu = name.find(".experts.gate_up_proj"), dn = name.find(".experts.down_proj");
    if (gu != std::string::npos) {
      const std::string stem = name.substr(0, gu) + ".experts.";
      for (std::int64_t e = 0; e < E; ++e) {
        const float* base = v.data() + e * 2 * I * H;
        w.Add(stem + std::to_string(e) + ".gate_proj.weight", DType::kF32, {I, H},
              F32Bytes(std::vector<float>(base, base + I * H)));
        w.Add(stem + std::to_string(e) + ".up_proj.weight", DType::kF32, {I, H},
              F32Bytes(std::vector<float>(base + I * H, base + 2 * I * H)));
      }
    } else if (dn != std::string::npos) {
      const std::string stem = name.substr(0, dn) + ".experts.";
      for (std::int64_t e = 0; e < E; ++e) {
        const float* base = v.data() + e * H * I;
        w.Add(stem + std::to_string(e) + ".down_proj.weight", DType::kF32, {H, I},
              F32Bytes(std::vector<float>(base, base + H * I)));
      }
    } else {
      w.Add(name, DType::kF32, shape, F32Bytes(v));
    }
  });
  // The wrapper config, with a vision tower tensor that text serving ignores.
  std::ofstream(dir + "/config.json") << R"({"model_type": "mistral3", "text_config": )"
                                      << ModelConfigToJson(config_) << "}";
  auto ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  auto cfg = LoadModelConfig(dir + "/config.json");
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  auto got = LoadMistral4Weights(**ck, *cfg);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  auto want = LoadMistral4Weights(*src_, config_);
  ASSERT_TRUE(want.ok());
  for (std::size_t l = 1; l < (*want)->layers.size(); ++l) {
    EXPECT_EQ((*got)->layers[l].moe.gate_up, (*want)->layers[l].moe.gate_up) << l;
    EXPECT_EQ((*got)->layers[l].moe.down, (*want)->layers[l].moe.down) << l;
  }
  EXPECT_EQ((*got)->embed.data, (*want)->embed.data);
}

// Large FP8 layers load on every core (experts in parallel, big tensors in
// chunks): layer 0 stores its experts one tensor each, layer 1 stacked, all
// as e4m3 with 128x128 block scales. Every loaded value is its code times its
// block's scale, computed here element by element.
TEST(LargeWeightsTest, Fp8ExpertsLoadInParallelToCodeTimesScale) {
  ModelConfig c = SmallVocabTiny();
  c.hidden_size = 512;
  c.moe_intermediate_size = 256;
  c.n_routed_experts = 16;
  c.n_group = 1;
  c.topk_group = 1;
  c.num_hidden_layers = 2;
  c.first_k_dense_replace = 0;
  const std::int64_t E = c.n_routed_experts, I = c.moe_intermediate_size, H = c.hidden_size;
  ASSERT_GE(E * 3 * I * H, std::int64_t{1} << 22) << "below the size that loads in parallel";
  ASSERT_GE(E * 2 * I * H, std::int64_t{1} << 22);
  const std::string src_dir = TempDir("large_src");
  MakeModelOptions o;
  o.dtype = DType::kBF16;
  ASSERT_TRUE(MakeModel(c, o, src_dir).ok());
  auto src = Checkpoint::Open(src_dir);
  ASSERT_TRUE(src.ok());
  std::map<std::string, std::vector<float>> want;  // expected float32 values per stacked tensor
  auto add_fp8 = [&](SafetensorsWriter& w, const std::string& name, std::vector<std::int64_t> shape,
                     std::int64_t batch, std::int64_t rows, std::int64_t cols, const float* v,
                     std::vector<float>* expect) {
    const Fp8BlockWeights q = QuantizeFp8Blocks(batch, rows, cols, v);
    std::vector<std::byte> codes(q.codes.size());
    std::memcpy(codes.data(), q.codes.data(), codes.size());
    w.Add(name, DType::kF8E4M3, shape, codes);
    // [batch,] scale rows, scale columns (built front to back: GCC 12's
    // -Wnull-dereference misfires on vector::insert under -fsanitize=thread).
    std::vector<std::int64_t> sshape;
    sshape.reserve(3);
    if (shape.size() == 3) sshape.push_back(batch);
    sshape.push_back(q.scale_rows());
    sshape.push_back(q.scale_cols());
    w.Add(name + "_scale_inv", DType::kF32, sshape, F32Bytes(q.scales));
    for (std::int64_t b = 0; b < batch; ++b) {
      for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t col = 0; col < cols; ++col) {
          const std::size_t at = static_cast<std::size_t>((b * rows + r) * cols + col);
          const float scale = q.scales[static_cast<std::size_t>((b * q.scale_rows() + r / 128) * q.scale_cols() + col / 128)];
          expect->push_back(F8E4M3ToFloat(q.codes[at]) * scale);
        }
      }
    }
  };
  const std::string dir = Rewrite(c, **src, "large_fp8", [&](SafetensorsWriter& w, const std::string& n, auto shape,
                                                               const std::vector<float>& v) {
    if (n == "model.layers.0.mlp.experts.gate_up_proj") {
      std::vector<float>& expect = want[n];
      for (std::int64_t e = 0; e < E; ++e) {
        const std::string stem = "model.layers.0.mlp.experts." + std::to_string(e);
        add_fp8(w, stem + ".gate_proj.weight", {I, H}, 1, I, H, v.data() + e * 2 * I * H, &expect);
        add_fp8(w, stem + ".up_proj.weight", {I, H}, 1, I, H, v.data() + e * 2 * I * H + I * H, &expect);
      }
    } else if (n == "model.layers.0.mlp.experts.down_proj") {
      std::vector<float>& expect = want[n];
      for (std::int64_t e = 0; e < E; ++e) {
        add_fp8(w, "model.layers.0.mlp.experts." + std::to_string(e) + ".down_proj.weight", {H, I}, 1, H, I,
                v.data() + e * H * I, &expect);
      }
    } else if (n == "model.layers.1.mlp.experts.gate_up_proj") {
      add_fp8(w, n, shape, E, 2 * I, H, v.data(), &want[n]);
    } else if (n == "model.layers.1.mlp.experts.down_proj") {
      add_fp8(w, n, shape, E, H, I, v.data(), &want[n]);
    } else {
      w.Add(n, DType::kF32, shape, F32Bytes(v));
    }
  });
  auto ck = Checkpoint::Open(dir);
  ASSERT_TRUE(ck.ok()) << ck.status();
  auto got = LoadMistral4Weights(**ck, c);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)->layers[0].moe.gate_up, want["model.layers.0.mlp.experts.gate_up_proj"]);
  EXPECT_EQ((*got)->layers[0].moe.down, want["model.layers.0.mlp.experts.down_proj"]);
  EXPECT_EQ((*got)->layers[1].moe.gate_up, want["model.layers.1.mlp.experts.gate_up_proj"]);
  EXPECT_EQ((*got)->layers[1].moe.down, want["model.layers.1.mlp.experts.down_proj"]);
  // A missing expert tensor is still named, whichever thread met it.
  const std::string victim = "model.layers.0.mlp.experts.11.up_proj.weight";
  const std::string broken = Rewrite(c, **ck, "large_missing", [&](SafetensorsWriter& w, const std::string& n,
                                                                    auto shape, const std::vector<float>& v) {
    if (n != victim) w.Add(n, DType::kF32, shape, F32Bytes(v));
  });
  auto ck2 = Checkpoint::Open(broken);
  ASSERT_TRUE(ck2.ok());
  const absl::Status st = LoadMistral4Weights(**ck2, c).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(st.message()).find(victim), std::string::npos) << st;
  std::filesystem::remove_all(src_dir);
  std::filesystem::remove_all(dir);
  std::filesystem::remove_all(broken);
}

}  // namespace
}  // namespace sirocco::engine
