#include "engine/model_maker.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/atomic_file.h"
#include "engine/mistral4_weights.h"
#include "engine/safetensors.h"
#include "engine/status_macros.h"

namespace sirocco::engine {
namespace {

ModelConfig RealConfig() {
  ModelConfig c;
  c.vocab_size = 131072;
  c.hidden_size = 4096;
  c.intermediate_size = 12288;
  c.moe_intermediate_size = 2048;
  c.num_hidden_layers = 36;
  c.num_attention_heads = 32;
  c.n_shared_experts = 1;
  c.n_routed_experts = 128;
  c.routed_scaling_factor = 1.0;
  c.kv_lora_rank = 256;
  c.q_lora_rank = 1024;
  c.qk_rope_head_dim = 64;
  c.qk_nope_head_dim = 64;
  c.v_head_dim = 128;
  c.n_group = 1;
  c.topk_group = 1;
  c.num_experts_per_tok = 4;
  c.first_k_dense_replace = 0;
  c.norm_topk_prob = true;
  c.max_position_embeddings = 1048576;
  c.rms_norm_eps = 1e-6;
  c.rope.type = RopeConfig::Type::kYarn;
  c.rope.theta = 10000.0;
  c.rope.factor = 128.0;
  c.rope.original_max_position_embeddings = 8192;
  c.rope.beta_fast = 32.0;
  c.rope.beta_slow = 1.0;
  c.rope.mscale = 1.0;
  c.rope.mscale_all_dim = 1.0;
  c.rope.llama_4_scaling_beta = 0.1;
  return c;
}

// Every feature of the real model at small width; rope as the release but
// with original_max_position_embeddings 16, so the llama-4 query scale moves
// within a short prompt.
ModelConfig TinyBase() {
  ModelConfig c = RealConfig();
  c.hidden_size = 128;
  c.intermediate_size = 256;
  c.moe_intermediate_size = 64;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.n_routed_experts = 16;
  c.kv_lora_rank = 64;
  c.q_lora_rank = 96;
  c.qk_rope_head_dim = 32;
  c.qk_nope_head_dim = 32;
  c.v_head_dim = 48;
  c.n_group = 4;
  c.topk_group = 2;
  c.first_k_dense_replace = 1;
  c.max_position_embeddings = 4096;
  c.rope.factor = 256.0;  // = max_position_embeddings / original
  c.rope.original_max_position_embeddings = 16;
  return c;
}

// Counter-based generator: value i of a tensor depends only on (seed, tensor
// name, i), so checkpoints are reproducible bit for bit on any machine.
std::uint64_t SplitMix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

std::uint64_t HashName(const std::string& s) {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  return h;
}

// Standard normal via Box-Muller on two 53-bit uniforms.
void FillNormal(std::uint64_t stream, float mean, float stddev, std::vector<float>* out) {
  const std::size_t n = out->size();
  for (std::size_t i = 0; i < n; i += 2) {
    const std::uint64_t a = SplitMix(stream + 2 * i), b2 = SplitMix(stream + 2 * i + 1);
    const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
    const double u2 = static_cast<double>(b2 >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    (*out)[i] = mean + stddev * static_cast<float>(r * std::cos(2 * M_PI * u2));
    if (i + 1 < n) (*out)[i + 1] = mean + stddev * static_cast<float>(r * std::sin(2 * M_PI * u2));
  }
}

std::vector<std::byte> Encode(const std::vector<float>& v, DType dtype) {
  std::vector<std::byte> bytes(v.size() * DTypeSize(dtype));
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(bytes.data() + 4 * i, &v[i], 4);
    } else {
      const std::uint16_t h = dtype == DType::kBF16 ? FloatToBf16(v[i]) : FloatToF16(v[i]);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
  }
  return bytes;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  return WriteFileAtomically(path, {text});
}

// Mistral Small 3.1's Pixtral encoder and projector (Mistral3Config's
// defaults for it), which Mistral Small 4 is assumed to share.
VisionConfig RealVisionConfig() {
  VisionConfig v;
  v.hidden_size = 1024;
  v.intermediate_size = 4096;
  v.num_hidden_layers = 24;
  v.num_attention_heads = 16;
  v.num_channels = 3;
  v.patch_size = 14;
  v.image_size = 1540;
  v.hidden_act = VisionActivation::kSilu;
  v.rope_theta = 10000.0;
  v.image_token_index = 10;
  v.spatial_merge_size = 2;
  v.vision_feature_layer = -1;
  v.projector_hidden_act = VisionActivation::kGelu;
  return v;
}

// Every part of the real encoder at small width: 2 layers of 2 heads
// (head_dim 16), the real patch size, merge size and image token.
VisionConfig TinyVisionConfig() {
  VisionConfig v = RealVisionConfig();
  v.hidden_size = 32;
  v.intermediate_size = 64;
  v.num_hidden_layers = 2;
  v.num_attention_heads = 2;
  return v;
}

// A tensor's values: normal with a scale that keeps activations O(1) through
// depth, so the random model's outputs are far from uniform and greedy choices
// are well separated. `stream` depends on the seed and the tensor's name.
void FillTensor(const TensorSpec& t, std::uint64_t stream, std::vector<float>* values) {
  if (EndsWith(t.name, "norm.weight") || EndsWith(t.name, "ln_pre.weight")) {
    FillNormal(stream, 1.0f, 0.1f, values);
  } else if (EndsWith(t.name, "embed_tokens.weight")) {
    FillNormal(stream, 0.0f, 1.0f, values);
  } else {
    // A conv kernel [out, channels, kh, kw] reads channels * kh * kw inputs.
    std::int64_t fan_in = t.shape.back();
    if (EndsWith(t.name, "patch_conv.weight")) fan_in = t.shape[1] * t.shape[2] * t.shape[3];
    const float gain = EndsWith(t.name, "gate.weight") ? 4.0f : 1.0f;
    FillNormal(stream, 0.0f, gain / std::sqrt(static_cast<float>(fan_in)), values);
  }
}

}  // namespace

std::vector<std::string> PresetNames() { return {"tiny", "tiny-noqlora", "small", "mistral-small-4"}; }

std::optional<VisionConfig> PresetVisionConfig(const std::string& name) {
  if (name == "tiny") return TinyVisionConfig();
  if (name == "mistral-small-4") return RealVisionConfig();
  return std::nullopt;
}

absl::StatusOr<ModelConfig> PresetConfig(const std::string& name) {
  if (name == "tiny") return TinyBase();
  if (name == "tiny-noqlora") {
    ModelConfig c = TinyBase();
    c.q_lora_rank = 0;
    c.n_group = 1;
    c.topk_group = 1;
    c.norm_topk_prob = false;
    c.routed_scaling_factor = 2.0;
    return c;
  }
  if (name == "small") {
    ModelConfig c = RealConfig();
    c.hidden_size = 1024;
    c.intermediate_size = 3072;
    c.moe_intermediate_size = 512;
    c.num_hidden_layers = 16;
    c.num_attention_heads = 8;
    c.n_routed_experts = 32;
    c.kv_lora_rank = 64;
    c.q_lora_rank = 256;
    return c;
  }
  if (name == "mistral-small-4") return RealConfig();
  return absl::InvalidArgumentError(
      absl::StrCat("unknown preset '", name, "' (", absl::StrJoin(PresetNames(), ", "), ")"));
}

ParameterCount CountParameters(const ModelConfig& c) {
  ParameterCount n;
  for (const TensorSpec& t : Mistral4TensorSpecs(c)) {
    std::int64_t numel = 1;
    for (std::int64_t d : t.shape) numel *= d;
    n.total += numel;
    if (EndsWith(t.name, ".experts.gate_up_proj") || EndsWith(t.name, ".experts.down_proj")) {
      n.active += numel / c.n_routed_experts * c.num_experts_per_tok;
    } else {
      n.active += numel;
    }
  }
  return n;
}

std::int64_t CountVisionParameters(const VisionConfig& vision, const ModelConfig& text) {
  std::int64_t n = 0;
  for (const TensorSpec& t : PixtralTensorSpecs(vision, text)) {
    std::int64_t numel = 1;
    for (std::int64_t d : t.shape) numel *= d;
    n += numel;
  }
  return n;
}

absl::Status MakeModel(const ModelConfig& c, const MakeModelOptions& o, const std::string& dir) {
  SIROCCO_RETURN_IF_ERROR(ValidateModelConfig(c));
  if (o.vision) SIROCCO_RETURN_IF_ERROR(ValidateVisionConfig(*o.vision));
  if (o.dtype != DType::kF32 && o.dtype != DType::kBF16 && o.dtype != DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat("make-model: dtype ", DTypeName(o.dtype),
                                                   " is not supported (F32, BF16, F16)"));
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));

  SafetensorsWriter writer;
  std::vector<float> values;
  std::vector<TensorSpec> specs = Mistral4TensorSpecs(c);
  const std::size_t num_text = specs.size();
  if (o.vision) {
    for (TensorSpec& t : PixtralTensorSpecs(*o.vision, c)) specs.push_back(std::move(t));
  }
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& t = specs[i];
    std::int64_t numel = 1;
    for (std::int64_t d : t.shape) numel *= d;
    values.assign(static_cast<std::size_t>(numel), 0.0f);
    FillTensor(t, SplitMix(o.seed ^ HashName(t.name)) & ~0xFFFFFFFFFFull, &values);
    // The multimodal layout keeps the decoder under model.language_model.
    // (lm_head stays); its values come from the decoder-layout name above.
    std::string name = t.name;
    if (o.vision && i < num_text && name.rfind("model.", 0) == 0) name = "model.language_model." + name.substr(6);
    writer.Add(name, o.dtype, t.shape, Encode(values, o.dtype));
  }
  SIROCCO_RETURN_IF_ERROR(writer.WriteSharded(dir, o.max_shard_bytes, {{"format", "pt"}}));
  SIROCCO_RETURN_IF_ERROR(
      WriteText(dir + "/config.json", o.vision ? MultimodalConfigToJson(c, *o.vision) : ModelConfigToJson(c)));
  std::string eos = c.eos_token_ids.size() == 1 ? absl::StrCat(c.eos_token_ids[0])
                                                : absl::StrCat("[", absl::StrJoin(c.eos_token_ids, ", "), "]");
  return WriteText(dir + "/generation_config.json",
                   absl::StrCat("{\n  \"bos_token_id\": ", c.bos_token_id, ",\n  \"eos_token_id\": ", eos,
                                ",\n  \"pad_token_id\": ", c.pad_token_id, "\n}\n"));
}

}  // namespace sirocco::engine
