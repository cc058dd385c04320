// Mistral 4 decoder weights in float32, loaded from a checkpoint and checked
// tensor by tensor against the config. Accepts what transformers'
// Mistral4ForCausalLM.save_pretrained writes (stacked experts under `model.`)
// and the released multimodal layout (`model.language_model.` or
// `language_model.model.`, experts stored one by one), in f32, bf16, f16 or
// FP8 e4m3 with per-block (`*_scale_inv`) or per-tensor (`*_scale`) scales.
//
// Thread-safety: immutable after loading; share freely.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config.h"

namespace sirocco::engine {

class Checkpoint;

// A row-major float32 matrix [rows, cols] (nn.Linear layout: [out, in]).
struct Matrix {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::vector<float> data;
  const float* ptr() const { return data.data(); }
  bool empty() const { return data.empty(); }
};

struct AttentionWeights {
  Matrix q_proj;              // [heads * qk_head_dim, hidden]   (no q_lora)
  Matrix q_a_proj;            // [q_lora_rank, hidden]
  std::vector<float> q_a_norm;  // [q_lora_rank]
  Matrix q_b_proj;            // [heads * qk_head_dim, q_lora_rank]
  Matrix kv_a_proj;           // [kv_lora_rank + rope, hidden]
  std::vector<float> kv_a_norm;  // [kv_lora_rank]
  Matrix kv_b_proj;           // [heads * (nope + v), kv_lora_rank]
  Matrix o_proj;              // [hidden, heads * v]
};

struct MlpWeights {  // SwiGLU: down(silu(gate x) * up x)
  Matrix gate;  // [inter, hidden]
  Matrix up;    // [inter, hidden]
  Matrix down;  // [hidden, inter]
};

struct MoeWeights {
  Matrix router;                 // [experts, hidden]
  std::vector<float> gate_up;    // [experts, 2 * moe_inter, hidden]; gate rows first
  std::vector<float> down;       // [experts, hidden, moe_inter]
  MlpWeights shared;             // inter = moe_inter * n_shared_experts; empty if none
};

struct LayerWeights {
  std::vector<float> input_norm;  // [hidden]
  std::vector<float> post_norm;   // [hidden]
  AttentionWeights attn;
  bool is_moe = false;
  MlpWeights dense;               // when !is_moe
  MoeWeights moe;                 // when is_moe
};

struct Mistral4Weights {
  Matrix embed;                   // [vocab, hidden]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [hidden]
  Matrix lm_head;                 // [vocab, hidden]; empty when tied
  const Matrix& head() const { return lm_head.empty() ? embed : lm_head; }
};

absl::StatusOr<std::unique_ptr<Mistral4Weights>> LoadMistral4Weights(const Checkpoint& checkpoint,
                                                                     const ModelConfig& config);

// The same, one layer at a time: each layer is read, checked and handed to
// `on_layer` (which may move from it; it is dropped when the call returns)
// before the next is read, so a caller that uploads layers to a device holds
// one layer in host float32 at a time. The result holds the embedding, final
// norm and LM head, and per layer only is_moe. An error from on_layer stops
// the load and is returned.
using LayerSink = std::function<absl::Status(std::int64_t layer, LayerWeights& weights)>;
absl::StatusOr<std::unique_ptr<Mistral4Weights>> LoadMistral4WeightsByLayer(const Checkpoint& checkpoint,
                                                                            const ModelConfig& config,
                                                                            const LayerSink& on_layer);

// One tensor of exactly `shape` as float32 (F32, BF16, F16, or F8_E4M3 with
// its scale tensor; `config` supplies the FP8 block size). Errors name the
// tensor. For the checkpoint's other models (the vision encoder).
absl::Status LoadCheckpointTensor(const Checkpoint& checkpoint, const ModelConfig& config, const std::string& name,
                                  const std::vector<std::int64_t>& shape, std::vector<float>* out);

// Every tensor name and shape a checkpoint of `config` holds, in the layout
// save_pretrained writes (stacked experts, prefix `model.`). Used by the model
// maker and for shape checks of the real config.
struct TensorSpec {
  std::string name;
  std::vector<std::int64_t> shape;
};
std::vector<TensorSpec> Mistral4TensorSpecs(const ModelConfig& config);

}  // namespace sirocco::engine
