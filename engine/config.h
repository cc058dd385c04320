// Model configuration of the Mistral 4 text decoder, parsed from a Hugging Face
// `config.json` (model type `mistral4`, or the multimodal wrapper whose
// `text_config` is one) and validated once. Everything downstream trusts a
// ModelConfig that came out of ParseModelConfig: the dimensions are positive and
// consistent, and every feature it names is one the engine implements.
//
// Thread-safety: plain values; safe to share read-only.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sirocco::engine {

// Rotary embedding parameters (`rope_parameters`, or the older `rope_scaling`
// + `rope_theta`). Only YaRN and plain rope exist in this model family.
struct RopeConfig {
  enum class Type : std::uint8_t { kDefault, kYarn };
  Type type = Type::kYarn;
  double theta = 10000.0;
  std::optional<double> factor;             // YaRN; absent = max_pos / original
  std::int64_t original_max_position_embeddings = 8192;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 1.0;
  std::optional<double> attention_factor;   // explicit cos/sin scale
  bool truncate = true;
  // Query scale 1 + beta * log(1 + floor(pos / original_max_position_embeddings)).
  std::optional<double> llama_4_scaling_beta;
};

// FP8 weight quantization declared by the checkpoint (`quantization_config`).
struct QuantizationConfig {
  bool fp8 = false;
  std::vector<std::int64_t> weight_block_size;  // [rows, cols]; empty = infer
};

struct ModelConfig {
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;      // dense (first_k_dense_replace) layers
  std::int64_t moe_intermediate_size = 0;  // each routed expert
  std::int64_t num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t n_shared_experts = 0;
  std::int64_t n_routed_experts = 0;
  double routed_scaling_factor = 1.0;
  std::int64_t kv_lora_rank = 0;
  std::int64_t q_lora_rank = 0;            // 0: no q_lora, q = q_proj(x)
  std::int64_t qk_rope_head_dim = 0;
  std::int64_t qk_nope_head_dim = 0;
  std::int64_t v_head_dim = 0;
  std::int64_t n_group = 1;
  std::int64_t topk_group = 1;
  std::int64_t num_experts_per_tok = 1;
  std::int64_t first_k_dense_replace = 0;
  bool norm_topk_prob = true;
  std::int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  std::int64_t bos_token_id = 1;
  std::vector<std::int64_t> eos_token_ids = {2};
  std::int64_t pad_token_id = 11;
  RopeConfig rope;
  QuantizationConfig quantization;
  // Set when the file is the multimodal wrapper (`text_config` inside).
  bool multimodal_wrapper = false;

  std::int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(std::int64_t layer) const { return layer >= first_k_dense_replace; }
  // Values cached per token and layer: latent + rotated key.
  std::int64_t kv_entry_dim() const { return kv_lora_rank + qk_rope_head_dim; }
};

// Parses and validates config.json text. Errors name the offending field, e.g.
// "config.json: num_experts_per_tok (9) exceeds the experts in topk_group groups (8)".
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);
// Checks the invariants ParseModelConfig enforces (for configs built in code).
absl::Status ValidateModelConfig(const ModelConfig& config);
// Writes the config as transformers' Mistral4Config would (model type mistral4).
std::string ModelConfigToJson(const ModelConfig& config);

// Derived attention constants, computed as the reference model computes them.
struct RopeTables {
  std::vector<float> inv_freq;  // [qk_rope_head_dim / 2]
  float attention_factor = 1.0f;  // multiplies cos and sin
  float softmax_scale = 1.0f;     // qk_head_dim^-0.5, times YaRN mscale^2
};
RopeTables ComputeRopeTables(const ModelConfig& config);
// Query multiplier of the llama-4 scaling at `pos` (1 when beta is unset).
float Llama4QueryScale(const ModelConfig& config, std::int64_t pos);

}  // namespace sirocco::engine
