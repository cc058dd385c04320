#include "engine/pixtral.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/config_json.h"
#include "engine/safetensors.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace sirocco::engine {
namespace {

using Json = nlohmann::json;

// The encoder's norms are built with eps 1e-5 in the reference (ln_pre,
// attention_norm, ffn_norm), not from the config.
constexpr float kVisionNormEps = 1e-5f;

int I(std::int64_t v) { return static_cast<int>(v); }
std::size_t Z(std::int64_t v) { return static_cast<std::size_t>(v); }

using config_json::FieldError;
using config_json::GetDouble;
using config_json::GetInt;
using config_json::Positive;

absl::Status GetActivation(const Json& j, const char* key, const std::string& path, VisionActivation* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (it->is_string() && it->get<std::string>() == "silu") {
    *out = VisionActivation::kSilu;
  } else if (it->is_string() && it->get<std::string>() == "gelu") {
    *out = VisionActivation::kGelu;
  } else {
    return FieldError(path, absl::StrCat("(", it->dump(), ") is not supported (silu, gelu)"));
  }
  return absl::OkStatus();
}

const char* ActivationName(VisionActivation a) { return a == VisionActivation::kSilu ? "silu" : "gelu"; }

absl::Status ParseVision(const Json& v, VisionConfig* c) {
  if (auto it = v.find("model_type"); it != v.end() && !(it->is_string() && it->get<std::string>() == "pixtral")) {
    return FieldError("vision_config.model_type", absl::StrCat("(", it->dump(), ") is not supported (pixtral)"));
  }
  SIROCCO_RETURN_IF_ERROR(GetInt(v, "hidden_size", "vision_config.hidden_size", &c->hidden_size));
  SIROCCO_RETURN_IF_ERROR(GetInt(v, "intermediate_size", "vision_config.intermediate_size", &c->intermediate_size));
  SIROCCO_RETURN_IF_ERROR(GetInt(v, "num_hidden_layers", "vision_config.num_hidden_layers", &c->num_hidden_layers));
  SIROCCO_RETURN_IF_ERROR(
      GetInt(v, "num_attention_heads", "vision_config.num_attention_heads", &c->num_attention_heads));
  SIROCCO_RETURN_IF_ERROR(GetInt(v, "num_channels", "vision_config.num_channels", &c->num_channels));
  SIROCCO_RETURN_IF_ERROR(GetInt(v, "patch_size", "vision_config.patch_size", &c->patch_size));
  SIROCCO_RETURN_IF_ERROR(GetInt(v, "image_size", "vision_config.image_size", &c->image_size));
  SIROCCO_RETURN_IF_ERROR(GetActivation(v, "hidden_act", "vision_config.hidden_act", &c->hidden_act));
  // transformers derives the head width from hidden_size / num_attention_heads
  // for the projections, but the rope reads `head_dim`: they must agree.
  if (auto it = v.find("head_dim"); it != v.end() && !it->is_null()) {
    std::int64_t head_dim = 0;
    SIROCCO_RETURN_IF_ERROR(GetInt(v, "head_dim", "vision_config.head_dim", &head_dim));
    if (head_dim * c->num_attention_heads != c->hidden_size) {
      return FieldError("vision_config.head_dim",
                        absl::StrCat("(", head_dim, ") must equal hidden_size / ", "num_attention_heads (",
                                     c->hidden_size, " / ", c->num_attention_heads, ")"));
    }
  }
  // rope_parameters wins over a top-level rope_theta (transformers
  // standardises the latter into the former).
  SIROCCO_RETURN_IF_ERROR(GetDouble(v, "rope_theta", "vision_config.rope_theta", &c->rope_theta));
  if (auto it = v.find("rope_parameters"); it != v.end() && !it->is_null()) {
    if (!it->is_object()) return FieldError("vision_config.rope_parameters", "must be an object");
    if (auto t = it->find("rope_type"); t != it->end() && !(t->is_string() && t->get<std::string>() == "axial")) {
      return FieldError("vision_config.rope_parameters.rope_type",
                        absl::StrCat("(", t->dump(), ") is not supported (axial)"));
    }
    SIROCCO_RETURN_IF_ERROR(GetDouble(*it, "rope_theta", "vision_config.rope_parameters.rope_theta", &c->rope_theta));
  }
  return absl::OkStatus();
}

absl::Status ParseWrapper(const Json& root, VisionConfig* c) {
  // Mistral3Config maps image_token_id onto image_token_index.
  std::int64_t index = c->image_token_index, id = c->image_token_index;
  SIROCCO_RETURN_IF_ERROR(GetInt(root, "image_token_index", "image_token_index", &index));
  SIROCCO_RETURN_IF_ERROR(GetInt(root, "image_token_id", "image_token_id", &id));
  if (root.contains("image_token_index") && root.contains("image_token_id") && index != id) {
    return FieldError("image_token_id", absl::StrCat("(", id, ") disagrees with image_token_index (", index, ")"));
  }
  c->image_token_index = root.contains("image_token_index") ? index : id;
  SIROCCO_RETURN_IF_ERROR(GetInt(root, "spatial_merge_size", "spatial_merge_size", &c->spatial_merge_size));
  if (auto it = root.find("vision_feature_layer"); it != root.end() && it->is_array()) {
    return FieldError("vision_feature_layer", absl::StrCat("(", it->dump(),
                                                           ") is a list of layers; only one layer "
                                                           "(an integer) is supported"));
  }
  SIROCCO_RETURN_IF_ERROR(GetInt(root, "vision_feature_layer", "vision_feature_layer", &c->vision_feature_layer));
  SIROCCO_RETURN_IF_ERROR(
      GetActivation(root, "projector_hidden_act", "projector_hidden_act", &c->projector_hidden_act));
  if (auto it = root.find("multimodal_projector_bias"); it != root.end() && !it->is_null()) {
    if (!it->is_boolean()) {
      return FieldError("multimodal_projector_bias", absl::StrCat("must be true or false, got ", it->dump()));
    }
    if (it->get<bool>()) return FieldError("multimodal_projector_bias", "true is not supported");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateVisionConfig(const VisionConfig& c) {
  SIROCCO_RETURN_IF_ERROR(Positive("vision_config.hidden_size", c.hidden_size));
  SIROCCO_RETURN_IF_ERROR(Positive("vision_config.intermediate_size", c.intermediate_size));
  SIROCCO_RETURN_IF_ERROR(Positive("vision_config.num_hidden_layers", c.num_hidden_layers));
  SIROCCO_RETURN_IF_ERROR(Positive("vision_config.num_attention_heads", c.num_attention_heads));
  SIROCCO_RETURN_IF_ERROR(Positive("vision_config.num_channels", c.num_channels));
  SIROCCO_RETURN_IF_ERROR(Positive("vision_config.patch_size", c.patch_size));
  SIROCCO_RETURN_IF_ERROR(Positive("vision_config.image_size", c.image_size));
  SIROCCO_RETURN_IF_ERROR(Positive("spatial_merge_size", c.spatial_merge_size));
  if (c.hidden_size % c.num_attention_heads != 0) {
    return FieldError("vision_config.num_attention_heads",
                      absl::StrCat("(", c.num_attention_heads, ") must divide hidden_size (", c.hidden_size, ")"));
  }
  // The 2D rope gives each axis head_dim / 4 rotated pairs.
  if (c.head_dim() % 4 != 0) {
    return FieldError("vision_config.head_dim",
                      absl::StrCat("(", c.head_dim(), ") must be a multiple of 4 (2D rope: h and w halves of pairs)"));
  }
  if (!(c.rope_theta > 0)) return FieldError("vision_config.rope_parameters.rope_theta", "must be positive");
  if (c.vision_feature_layer < -(c.num_hidden_layers + 1) || c.vision_feature_layer > c.num_hidden_layers) {
    return FieldError("vision_feature_layer",
                      absl::StrCat("(", c.vision_feature_layer, ") is outside the ", c.num_hidden_layers + 1,
                                   " hidden states [", -(c.num_hidden_layers + 1), ", ", c.num_hidden_layers, "]"));
  }
  if (c.image_token_index < 0) return FieldError("image_token_index", "must not be negative");
  return absl::OkStatus();
}

absl::StatusOr<std::optional<VisionConfig>> ParseVisionConfig(std::string_view json_text) {
  const Json root = Json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return absl::InvalidArgumentError("config.json: not valid JSON");
  if (!root.is_object()) return absl::InvalidArgumentError("config.json: top level must be an object");
  auto vision = root.find("vision_config");
  if (vision == root.end() || vision->is_null()) return std::optional<VisionConfig>();
  if (!vision->is_object()) return FieldError("vision_config", "must be an object");
  std::string model_type;
  if (auto it = root.find("model_type"); it != root.end() && it->is_string()) model_type = it->get<std::string>();
  if (model_type != "mistral3") {
    return FieldError("model_type",
                      absl::StrCat("'", model_type, "' with a vision_config is not supported (mistral3)"));
  }
  VisionConfig c;
  SIROCCO_RETURN_IF_ERROR(ParseVision(*vision, &c));
  SIROCCO_RETURN_IF_ERROR(ParseWrapper(root, &c));
  SIROCCO_RETURN_IF_ERROR(ValidateVisionConfig(c));
  return std::optional<VisionConfig>(c);
}

absl::StatusOr<std::optional<VisionConfig>> LoadVisionConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  auto config = ParseVisionConfig(ss.str());
  if (!config.ok()) return absl::Status(config.status().code(), absl::StrCat(path, ": ", config.status().message()));
  return config;
}

std::string MultimodalConfigToJson(const ModelConfig& text, const VisionConfig& v) {
  Json text_json = Json::parse(ModelConfigToJson(text));
  text_json.erase("architectures");
  const Json vision = {
      {"model_type", "pixtral"},
      {"hidden_size", v.hidden_size},
      {"intermediate_size", v.intermediate_size},
      {"num_hidden_layers", v.num_hidden_layers},
      {"num_attention_heads", v.num_attention_heads},
      {"head_dim", v.head_dim()},
      {"num_channels", v.num_channels},
      {"patch_size", v.patch_size},
      {"image_size", v.image_size},
      {"hidden_act", ActivationName(v.hidden_act)},
      {"attention_dropout", 0.0},
      {"rope_parameters", {{"rope_type", "axial"}, {"rope_theta", v.rope_theta}}},
  };
  const Json j = {
      {"architectures", {"Mistral3ForConditionalGeneration"}},
      {"model_type", "mistral3"},
      {"text_config", text_json},
      {"vision_config", vision},
      {"image_token_index", v.image_token_index},
      {"spatial_merge_size", v.spatial_merge_size},
      {"vision_feature_layer", v.vision_feature_layer},
      {"projector_hidden_act", ActivationName(v.projector_hidden_act)},
      {"multimodal_projector_bias", false},
      {"tie_word_embeddings", text.tie_word_embeddings},
      {"dtype", "bfloat16"},
  };
  return j.dump(2) + "\n";
}

std::vector<TensorSpec> PixtralTensorSpecs(const VisionConfig& v, const ModelConfig& text) {
  const std::int64_t d = v.hidden_size, inter = v.intermediate_size, s2 = v.spatial_merge_size * v.spatial_merge_size;
  const std::string vt = "model.vision_tower.", mm = "model.multi_modal_projector.";
  std::vector<TensorSpec> specs = {
      {vt + "patch_conv.weight", {d, v.num_channels, v.patch_size, v.patch_size}},
      {vt + "ln_pre.weight", {d}},
  };
  for (std::int64_t l = 0; l < v.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat(vt, "transformer.layers.", l, ".");
    specs.push_back({p + "attention_norm.weight", {d}});
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "o_proj"}) {
      specs.push_back({absl::StrCat(p, "attention.", proj, ".weight"), {d, d}});
    }
    specs.push_back({p + "ffn_norm.weight", {d}});
    specs.push_back({p + "feed_forward.gate_proj.weight", {inter, d}});
    specs.push_back({p + "feed_forward.up_proj.weight", {inter, d}});
    specs.push_back({p + "feed_forward.down_proj.weight", {d, inter}});
  }
  specs.push_back({mm + "norm.weight", {d}});
  specs.push_back({mm + "patch_merger.merging_layer.weight", {d, d * s2}});
  specs.push_back({mm + "linear_1.weight", {text.hidden_size, d}});
  specs.push_back({mm + "linear_2.weight", {text.hidden_size, text.hidden_size}});
  return specs;
}

// ---------------------------------------------------------------------------
// The encoder.

struct PixtralEncoder::Weights {
  struct Layer {
    const float *attention_norm = nullptr, *ffn_norm = nullptr;
    const float *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;  // [D, D]; q, k rope-permuted
    const float* gate_up = nullptr;                                      // [2I, D]: gate rows, then up
    const float* down = nullptr;                                         // [D, I]
  };
  std::vector<std::unique_ptr<DeviceMemory>> memory;
  // On a host-accessible device uploads are views of these.
  std::vector<std::vector<float>> host;
  const float* patch_conv = nullptr;  // [D, C * P * P]
  const float* ln_pre = nullptr;
  std::vector<Layer> layers;  // the layers_used() that run
  const float* projector_norm = nullptr;
  const float* merging = nullptr;     // [D, s^2 D], columns in gather order (see LoadWeights)
  const float* linear_1 = nullptr;    // [T, D]
  const float* linear_2 = nullptr;    // [T, T]
  const float* inv_freq_h = nullptr;  // [head_dim / 4]
  const float* inv_freq_w = nullptr;  // [head_dim / 4]
};

namespace {

// The encoder's temporaries; a Job holds an image's residual stream and
// index tables itself.
enum Buf : int { kPatches, kH, kQ, kK, kV, kAttn, kGateUp, kMerged, kMergedOut, kProj1, kProj2, kNumBufs };

}  // namespace

struct PixtralEncoder::Scratch {
  Device* dev = nullptr;
  std::unique_ptr<DeviceMemory> buf[kNumBufs];

  // Buffer `which` with room for `count` values of T; grows, never shrinks, so
  // the largest image so far sets the encoder's memory.
  template <typename T>
  absl::StatusOr<T*> Get(Buf which, std::int64_t count) {
    auto& m = buf[which];
    const std::size_t bytes = Z(std::max<std::int64_t>(count, 1)) * sizeof(T);
    if (m == nullptr || m->size() < bytes) {
      m.reset();
      SIROCCO_ASSIGN_OR_RETURN(m, dev->Allocate(bytes));
    }
    return m->as<T>();
  }
  template <typename T>
  T* Ptr(Buf which) const {
    return buf[which]->as<T>();
  }
};

PixtralEncoder::PixtralEncoder(const VisionConfig& vision, const ModelConfig& text, Device* device)
    : config_(vision),
      text_hidden_(text.hidden_size),
      projector_eps_(static_cast<float>(text.rms_norm_eps)),
      device_(device),
      w_(std::make_unique<Weights>()),
      scratch_(std::make_unique<Scratch>()) {
  scratch_->dev = device;
}

PixtralEncoder::~PixtralEncoder() = default;

absl::StatusOr<std::unique_ptr<PixtralEncoder>> PixtralEncoder::Load(const Checkpoint& checkpoint,
                                                                     const ModelConfig& text,
                                                                     const VisionConfig& vision, Device* device) {
  if (device == nullptr) return absl::InvalidArgumentError("PixtralEncoder::Load: no device");
  SIROCCO_RETURN_IF_ERROR(ValidateVisionConfig(vision));
  std::unique_ptr<PixtralEncoder> encoder(new PixtralEncoder(vision, text, device));
  SIROCCO_RETURN_IF_ERROR(encoder->LoadWeights(checkpoint, text));
  return encoder;
}

absl::StatusOr<const float*> PixtralEncoder::Put(std::vector<float> host) {
  SIROCCO_ASSIGN_OR_RETURN(auto memory, device_->Upload(host));
  const float* p = memory->as<const float>();
  w_->memory.push_back(std::move(memory));
  if (device_->host_accessible()) {
    w_->host.push_back(std::move(host));  // the upload may be a view: keep the data (moving keeps its address)
  } else {
    SIROCCO_RETURN_IF_ERROR(device_->Synchronize());  // the copy has landed before `host` goes
  }
  return p;
}

namespace {

// q_proj / k_proj rows, per head of width d: row j of the head moves to 2j
// and row j + d/2 to 2j + 1, so the reference's rotate_half pairs (j, j + d/2)
// become the interleaved pairs RopeInterleaved rotates. Its de-interleaved
// output permutes q and k alike, which leaves every q . k unchanged.
std::vector<float> InterleaveRopeRows(const std::vector<float>& w, std::int64_t heads, std::int64_t d,
                                      std::int64_t cols) {
  std::vector<float> out(w.size());
  for (std::int64_t h = 0; h < heads; ++h) {
    for (std::int64_t j = 0; j < d / 2; ++j) {
      const float* first = w.data() + (h * d + j) * cols;
      const float* second = w.data() + (h * d + j + d / 2) * cols;
      std::memcpy(out.data() + (h * d + 2 * j) * cols, first, Z(cols) * sizeof(float));
      std::memcpy(out.data() + (h * d + 2 * j + 1) * cols, second, Z(cols) * sizeof(float));
    }
  }
  return out;
}

}  // namespace

absl::Status PixtralEncoder::LoadWeights(const Checkpoint& ckpt, const ModelConfig& text) {
  const VisionConfig& v = config_;
  const std::int64_t d = v.hidden_size, inter = v.intermediate_size, heads = v.num_attention_heads;
  const std::int64_t head_dim = v.head_dim(), s2 = v.spatial_merge_size * v.spatial_merge_size;
  const std::int64_t t = text.hidden_size;

  // The current transformers layout, else the older one.
  const auto prefix = [&](const char* current, const char* older, const char* probe) -> absl::StatusOr<std::string> {
    if (ckpt.Has(absl::StrCat(current, probe))) return std::string(current);
    if (ckpt.Has(absl::StrCat(older, probe))) return std::string(older);
    return absl::NotFoundError(
        absl::StrCat("checkpoint is missing tensor '", current, probe, "' (also looked for '", older, probe, "')"));
  };
  SIROCCO_ASSIGN_OR_RETURN(const std::string vt, prefix("model.vision_tower.", "vision_tower.", "patch_conv.weight"));
  SIROCCO_ASSIGN_OR_RETURN(const std::string mm,
                           prefix("model.multi_modal_projector.", "multi_modal_projector.", "norm.weight"));
  const auto read = [&](const std::string& name,
                        std::vector<std::int64_t> shape) -> absl::StatusOr<std::vector<float>> {
    std::vector<float> out;
    SIROCCO_RETURN_IF_ERROR(LoadCheckpointTensor(ckpt, text, name, shape, &out));
    return out;
  };
  const auto put = [&](const std::string& name, std::vector<std::int64_t> shape) -> absl::StatusOr<const float*> {
    SIROCCO_ASSIGN_OR_RETURN(std::vector<float> host, read(name, std::move(shape)));
    return Put(std::move(host));
  };

  Weights& w = *w_;
  // [D, C, P, P] is already [D, C * P * P] in the patch order Encode builds.
  SIROCCO_ASSIGN_OR_RETURN(w.patch_conv,
                           put(vt + "patch_conv.weight", {d, v.num_channels, v.patch_size, v.patch_size}));
  SIROCCO_ASSIGN_OR_RETURN(w.ln_pre, put(vt + "ln_pre.weight", {d}));
  // Only the layers up to vision_feature_layer run, so only they are loaded.
  w.layers.resize(Z(v.layers_used()));
  for (std::int64_t l = 0; l < v.layers_used(); ++l) {
    Weights::Layer& lw = w.layers[Z(l)];
    const std::string p = absl::StrCat(vt, "transformer.layers.", l, ".");
    SIROCCO_ASSIGN_OR_RETURN(lw.attention_norm, put(p + "attention_norm.weight", {d}));
    SIROCCO_ASSIGN_OR_RETURN(std::vector<float> q, read(p + "attention.q_proj.weight", {d, d}));
    SIROCCO_ASSIGN_OR_RETURN(lw.q, Put(InterleaveRopeRows(q, heads, head_dim, d)));
    SIROCCO_ASSIGN_OR_RETURN(std::vector<float> k, read(p + "attention.k_proj.weight", {d, d}));
    SIROCCO_ASSIGN_OR_RETURN(lw.k, Put(InterleaveRopeRows(k, heads, head_dim, d)));
    SIROCCO_ASSIGN_OR_RETURN(lw.v, put(p + "attention.v_proj.weight", {d, d}));
    SIROCCO_ASSIGN_OR_RETURN(lw.o, put(p + "attention.o_proj.weight", {d, d}));
    SIROCCO_ASSIGN_OR_RETURN(lw.ffn_norm, put(p + "ffn_norm.weight", {d}));
    SIROCCO_ASSIGN_OR_RETURN(std::vector<float> gate_up, read(p + "feed_forward.gate_proj.weight", {inter, d}));
    SIROCCO_ASSIGN_OR_RETURN(std::vector<float> up, read(p + "feed_forward.up_proj.weight", {inter, d}));
    gate_up.insert(gate_up.end(), up.begin(), up.end());
    SIROCCO_ASSIGN_OR_RETURN(lw.gate_up, Put(std::move(gate_up)));
    SIROCCO_ASSIGN_OR_RETURN(lw.down, put(p + "feed_forward.down_proj.weight", {d, inter}));
  }

  SIROCCO_ASSIGN_OR_RETURN(w.projector_norm, put(mm + "norm.weight", {d}));
  // merging_layer reads torch's unfold of each s x s block: column c * s^2 + q
  // is channel c of the block's patch q (row-major within the block). Encode
  // gathers the block's patches side by side instead (column q * D + c), so
  // the columns are reordered to match.
  SIROCCO_ASSIGN_OR_RETURN(std::vector<float> merging, read(mm + "patch_merger.merging_layer.weight", {d, d * s2}));
  std::vector<float> reordered(merging.size());
  for (std::int64_t o = 0; o < d; ++o) {
    for (std::int64_t c = 0; c < d; ++c) {
      for (std::int64_t q = 0; q < s2; ++q) reordered[Z(o * d * s2 + q * d + c)] = merging[Z(o * d * s2 + c * s2 + q)];
    }
  }
  SIROCCO_ASSIGN_OR_RETURN(w.merging, Put(std::move(reordered)));
  SIROCCO_ASSIGN_OR_RETURN(w.linear_1, put(mm + "linear_1.weight", {t, d}));
  SIROCCO_ASSIGN_OR_RETURN(w.linear_2, put(mm + "linear_2.weight", {t, t}));

  // PixtralVisionRotaryEmbedding: inv_freq = 1 / theta^(2i / head_dim) in
  // float32; rows use inv_freq[0::2] with their h position and inv_freq[1::2]
  // with their w position.
  std::vector<float> inv_h, inv_w;
  for (std::int64_t i = 0; i < head_dim / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float inv = 1.0f / std::pow(static_cast<float>(v.rope_theta), e);
    (i % 2 == 0 ? inv_h : inv_w).push_back(inv);
  }
  SIROCCO_ASSIGN_OR_RETURN(w.inv_freq_h, Put(std::move(inv_h)));
  SIROCCO_ASSIGN_OR_RETURN(w.inv_freq_w, Put(std::move(inv_w)));
  return absl::OkStatus();
}

std::int64_t PixtralEncoder::tokens_for(std::int64_t height, std::int64_t width) const {
  const std::int64_t cell = config_.token_pixels();
  return (height / cell) * (width / cell);
}

absl::Status PixtralEncoder::Layer(std::int64_t layer, std::int64_t n, float* x, const std::int32_t* pos_h,
                                   const std::int32_t* pos_w) {
  Device& dev = *device_;
  const Weights::Layer& lw = w_->layers[Z(layer)];
  const std::int64_t d = config_.hidden_size, inter = config_.intermediate_size, heads = config_.num_attention_heads;
  const std::int64_t hd = config_.head_dim();
  float* h = scratch_->Ptr<float>(kH);
  float* q = scratch_->Ptr<float>(kQ);
  float* k = scratch_->Ptr<float>(kK);
  float* v = scratch_->Ptr<float>(kV);
  float* attn = scratch_->Ptr<float>(kAttn);
  float* gu = scratch_->Ptr<float>(kGateUp);

  SIROCCO_RETURN_IF_ERROR(dev.RmsNorm(I(n), I(d), x, I(d), lw.attention_norm, kVisionNormEps, h, I(d)));
  SIROCCO_RETURN_IF_ERROR(dev.GemmNt(I(n), I(d), I(d), h, I(d), lw.q, I(d), 0.0f, q, I(d)));
  SIROCCO_RETURN_IF_ERROR(dev.GemmNt(I(n), I(d), I(d), h, I(d), lw.k, I(d), 0.0f, k, I(d)));
  SIROCCO_RETURN_IF_ERROR(dev.GemmNt(I(n), I(d), I(d), h, I(d), lw.v, I(d), 0.0f, v, I(d)));
  // 2D rope: the first half of each (permuted) head rotates by the patch's
  // row, the second half by its column. Rows are [patch, head].
  for (float* x_rot : {q, k}) {
    SIROCCO_RETURN_IF_ERROR(
        dev.RopeInterleaved(I(n * heads), I(heads), I(hd / 2), x_rot, I(hd), pos_h, w_->inv_freq_h, 1.0f));
    SIROCCO_RETURN_IF_ERROR(
        dev.RopeInterleaved(I(n * heads), I(heads), I(hd / 2), x_rot + hd / 2, I(hd), pos_w, w_->inv_freq_w, 1.0f));
  }
  kernels::AttentionParams p;
  p.num_queries = I(n);
  p.num_keys = I(n);
  p.num_heads = I(heads);
  p.qk_dim = I(hd);
  p.v_dim = I(hd);
  p.q = q;
  p.k = k;
  p.v = v;
  p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  p.out = attn;
  p.causal = false;  // every patch of the image sees every other
  SIROCCO_RETURN_IF_ERROR(dev.Attention(p));
  SIROCCO_RETURN_IF_ERROR(dev.GemmNt(I(n), I(d), I(d), attn, I(d), lw.o, I(d), 1.0f, x, I(d)));  // residual

  SIROCCO_RETURN_IF_ERROR(dev.RmsNorm(I(n), I(d), x, I(d), lw.ffn_norm, kVisionNormEps, h, I(d)));
  SIROCCO_RETURN_IF_ERROR(dev.GemmNt(I(n), I(2 * inter), I(d), h, I(d), lw.gate_up, I(d), 0.0f, gu, I(2 * inter)));
  if (config_.hidden_act == VisionActivation::kSilu) {
    SIROCCO_RETURN_IF_ERROR(dev.SiluMul(I(n), I(inter), gu, I(2 * inter), gu + inter, I(2 * inter), gu, I(2 * inter)));
  } else {
    SIROCCO_RETURN_IF_ERROR(dev.GeluMul(I(n), I(inter), gu, I(2 * inter), gu + inter, I(2 * inter), gu, I(2 * inter)));
  }
  return dev.GemmNt(I(n), I(d), I(inter), gu, I(2 * inter), lw.down, I(inter), 1.0f, x, I(d));  // residual
}

PixtralEncoder::Job::~Job() {
  if (x_ != nullptr) owner_->ReturnJobBuffer(std::move(x_));
  if (ints_ != nullptr) owner_->ReturnJobBuffer(std::move(ints_));
}

absl::StatusOr<std::unique_ptr<DeviceMemory>> PixtralEncoder::JobBuffer(std::size_t bytes) {
  // The smallest spare that fits.
  auto best = spare_.end();
  for (auto it = spare_.begin(); it != spare_.end(); ++it) {
    if ((*it)->size() >= bytes && (best == spare_.end() || (*it)->size() < (*best)->size())) best = it;
  }
  if (best != spare_.end()) {
    std::unique_ptr<DeviceMemory> m = std::move(*best);
    spare_.erase(best);
    return m;
  }
  return device_->Allocate(bytes);
}

void PixtralEncoder::ReturnJobBuffer(std::unique_ptr<DeviceMemory> buffer) {
  // Two jobs' worth (activations and index tables each); the smallest go
  // first when more come back.
  constexpr std::size_t kKeep = 4;
  spare_.push_back(std::move(buffer));
  if (spare_.size() > kKeep) {
    auto smallest = std::min_element(spare_.begin(), spare_.end(),
                                     [](const auto& a, const auto& b) { return a->size() < b->size(); });
    spare_.erase(smallest);
  }
}

absl::StatusOr<std::vector<float>> PixtralEncoder::Encode(std::span<const float> pixels, int height, int width) {
  SIROCCO_ASSIGN_OR_RETURN(std::unique_ptr<Job> job, Start(pixels, height, width));
  SIROCCO_RETURN_IF_ERROR(Step(*job, 0).status());
  return Finish(*job);
}

absl::StatusOr<std::unique_ptr<PixtralEncoder::Job>> PixtralEncoder::Start(std::span<const float> pixels, int height,
                                                                           int width) {
  const VisionConfig& c = config_;
  const std::int64_t cell = c.token_pixels();
  if (height <= 0 || width <= 0 || height % cell != 0 || width % cell != 0) {
    return absl::InvalidArgumentError(absl::StrCat("image of ", height, "x", width,
                                                   " pixels: height and width must be positive multiples of ", cell,
                                                   " (patch_size * spatial_merge_size)"));
  }
  const std::int64_t channels = c.num_channels, ps = c.patch_size, s = c.spatial_merge_size;
  if (pixels.size() != Z(channels * height * width)) {
    return absl::InvalidArgumentError(absl::StrCat("image of ", channels, "x", height, "x", width, " needs ",
                                                   channels * height * width, " pixel values, got ", pixels.size()));
  }
  Device& dev = *device_;
  const std::int64_t grid_h = height / ps, grid_w = width / ps, n = grid_h * grid_w;
  const std::int64_t d = c.hidden_size, patch_len = channels * ps * ps;
  const std::int64_t blocks = n / (s * s);

  // Host-side layout, uploaded once: each patch's pixels in the conv
  // weight's (channel, row, column) order; each patch's grid row and column
  // (the rope positions); and for the patch merger, the patches of each s x s
  // block, blocks row-major over the merged grid, patches row-major within.
  std::vector<float> patches(Z(n * patch_len));
  for (std::int64_t i = 0; i < grid_h; ++i) {
    for (std::int64_t j = 0; j < grid_w; ++j) {
      float* dst = patches.data() + (i * grid_w + j) * patch_len;
      for (std::int64_t ch = 0; ch < channels; ++ch) {
        for (std::int64_t y = 0; y < ps; ++y) {
          const float* src = pixels.data() + (ch * height + i * ps + y) * width + j * ps;
          std::memcpy(dst + (ch * ps + y) * ps, src, Z(ps) * sizeof(float));
        }
      }
    }
  }
  std::vector<std::int32_t> ints(Z(3 * n));
  for (std::int64_t p = 0; p < n; ++p) {
    ints[Z(p)] = static_cast<std::int32_t>(p / grid_w);
    ints[Z(n + p)] = static_cast<std::int32_t>(p % grid_w);
  }
  const std::int64_t merged_w = grid_w / s;
  for (std::int64_t b = 0; b < blocks; ++b) {
    for (std::int64_t q = 0; q < s * s; ++q) {
      const std::int64_t row = (b / merged_w) * s + q / s, col = (b % merged_w) * s + q % s;
      ints[Z(2 * n + b * s * s + q)] = static_cast<std::int32_t>(row * grid_w + col);
    }
  }

  std::unique_ptr<Job> job(new Job(this));
  job->height_ = height;
  job->width_ = width;
  job->patches_ = n;
  job->grid_w_ = grid_w;
  SIROCCO_ASSIGN_OR_RETURN(job->x_, JobBuffer(Z(n * d) * sizeof(float)));
  SIROCCO_ASSIGN_OR_RETURN(job->ints_, JobBuffer(ints.size() * sizeof(std::int32_t)));
  float* x = job->x_->as<float>();
  SIROCCO_ASSIGN_OR_RETURN(float* d_patches, scratch_->Get<float>(kPatches, n * patch_len));
  SIROCCO_RETURN_IF_ERROR(dev.CopyToDevice(d_patches, patches.data(), patches.size() * sizeof(float)));
  SIROCCO_RETURN_IF_ERROR(dev.CopyToDevice(job->ints_->data(), ints.data(), ints.size() * sizeof(std::int32_t)));

  // patch_conv as a product over the patches, then ln_pre.
  SIROCCO_RETURN_IF_ERROR(
      dev.GemmNt(I(n), I(d), I(patch_len), d_patches, I(patch_len), w_->patch_conv, I(patch_len), 0.0f, x, I(d)));
  SIROCCO_RETURN_IF_ERROR(dev.RmsNorm(I(n), I(d), x, I(d), w_->ln_pre, kVisionNormEps, x, I(d)));
  return job;
}

absl::StatusOr<bool> PixtralEncoder::Step(Job& job, int max_layers) {
  const std::int64_t n = job.patches_, d = config_.hidden_size, inter = config_.intermediate_size;
  // The layers' temporaries, sized for this image.
  SIROCCO_RETURN_IF_ERROR(scratch_->Get<float>(kH, n * d).status());
  for (Buf b : {kQ, kK, kV, kAttn}) SIROCCO_RETURN_IF_ERROR(scratch_->Get<float>(b, n * d).status());
  SIROCCO_RETURN_IF_ERROR(scratch_->Get<float>(kGateUp, n * 2 * inter).status());
  const std::int32_t* ints = job.ints_->as<std::int32_t>();
  const std::int64_t end = max_layers <= 0 ? layers() : std::min(layers(), job.layers_done_ + max_layers);
  for (; job.layers_done_ < end; ++job.layers_done_) {
    SIROCCO_RETURN_IF_ERROR(Layer(job.layers_done_, n, job.x_->as<float>(), ints, ints + n));
  }
  return job.layers_done_ == layers();
}

absl::StatusOr<std::vector<float>> PixtralEncoder::Finish(Job& job) {
  if (job.layers_done_ != layers()) {
    return absl::FailedPreconditionError(
        absl::StrCat("PixtralEncoder::Finish: ", job.layers_done_, " of ", layers(), " layers have run"));
  }
  const VisionConfig& c = config_;
  Device& dev = *device_;
  const std::int64_t s = c.spatial_merge_size, n = job.patches_, d = c.hidden_size, t = text_hidden_;
  const std::int64_t blocks = n / (s * s);
  Scratch& sc = *scratch_;
  SIROCCO_ASSIGN_OR_RETURN(float* h, sc.Get<float>(kH, n * d));
  SIROCCO_ASSIGN_OR_RETURN(float* merged, sc.Get<float>(kMerged, n * d));
  SIROCCO_ASSIGN_OR_RETURN(float* merged_out, sc.Get<float>(kMergedOut, blocks * d));
  SIROCCO_ASSIGN_OR_RETURN(float* proj1, sc.Get<float>(kProj1, blocks * t));
  SIROCCO_ASSIGN_OR_RETURN(float* proj2, sc.Get<float>(kProj2, blocks * t));
  const float* x = job.x_->as<float>();
  const std::int32_t* ints = job.ints_->as<std::int32_t>();

  // Projector: norm, patch merger (gather each block's patches into one row
  // of s^2 D, then merging_layer), linear_1, act, linear_2.
  SIROCCO_RETURN_IF_ERROR(dev.RmsNorm(I(n), I(d), x, I(d), w_->projector_norm, projector_eps_, h, I(d)));
  SIROCCO_RETURN_IF_ERROR(dev.GatherRows(I(n), I(d), h, I(d), ints + 2 * n, merged, I(d)));
  const std::int64_t merged_dim = s * s * d;
  SIROCCO_RETURN_IF_ERROR(dev.GemmNt(I(blocks), I(d), I(merged_dim), merged, I(merged_dim), w_->merging, I(merged_dim),
                                     0.0f, merged_out, I(d)));
  SIROCCO_RETURN_IF_ERROR(dev.GemmNt(I(blocks), I(t), I(d), merged_out, I(d), w_->linear_1, I(d), 0.0f, proj1, I(t)));
  if (c.projector_hidden_act == VisionActivation::kGelu) {
    SIROCCO_RETURN_IF_ERROR(dev.GeluMul(I(blocks), I(t), proj1, I(t), nullptr, 0, proj1, I(t)));
  } else {
    SIROCCO_RETURN_IF_ERROR(dev.SiluMul(I(blocks), I(t), proj1, I(t), nullptr, 0, proj1, I(t)));
  }
  SIROCCO_RETURN_IF_ERROR(dev.GemmNt(I(blocks), I(t), I(t), proj1, I(t), w_->linear_2, I(t), 0.0f, proj2, I(t)));
  std::vector<float> out(Z(blocks * t));
  SIROCCO_RETURN_IF_ERROR(dev.CopyToHost(out.data(), proj2, out.size() * sizeof(float)));
  return out;
}

absl::StatusOr<std::unique_ptr<PixtralEncoder>> LoadPixtralEncoder(const std::string& dir, Device* device) {
  const std::string config_path = dir + "/config.json";
  SIROCCO_ASSIGN_OR_RETURN(std::optional<VisionConfig> vision, LoadVisionConfig(config_path));
  if (!vision.has_value()) return absl::NotFoundError(absl::StrCat(dir, " has no vision encoder (no vision_config)"));
  SIROCCO_ASSIGN_OR_RETURN(ModelConfig text, LoadModelConfig(config_path));
  SIROCCO_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(dir));
  return PixtralEncoder::Load(*checkpoint, text, *vision, device);
}

}  // namespace sirocco::engine
