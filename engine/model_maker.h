// Writes complete Mistral 4 checkpoints with seeded random weights: the
// embedded default model, benchmark models, and shape checks of the real
// configuration. Output is config.json + model.safetensors (sharded with an
// index when large) under the reference model's parameter names, so
// transformers loads it unchanged: Mistral4ForCausalLM's for a text model,
// Mistral3ForConditionalGeneration's (mistral3 config.json, decoder under
// `model.language_model.`, vision tower and projector) for a multimodal one.
//
// Thread-safety: stateless functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/dtype.h"
#include "engine/pixtral.h"

namespace sirocco::engine {

// Named configurations:
//   tiny          every feature at small width: q_lora, 4 expert groups with
//                 group-limited top-k, a shared expert, one dense first
//                 layer, YaRN with original_max_position_embeddings 16 (the
//                 llama-4 query scale moves within a short prompt); the real
//                 131072-token vocabulary; and a small Pixtral vision tower
//                 and projector (PresetVisionConfig), so it is written in
//                 the multimodal layout.
//   tiny-noqlora  tiny with q = q_proj(x) and no expert groups; text only
//                 (the plain mistral4 layout).
//   small         the real model's proportions at about 1.1B parameters;
//                 text only.
//   mistral-small-4  the released configuration (119B; shape checks), with
//                 its vision encoder.
absl::StatusOr<ModelConfig> PresetConfig(const std::string& name);
// The preset's vision encoder; nullopt for a text-only (or unknown) preset.
std::optional<VisionConfig> PresetVisionConfig(const std::string& name);
std::vector<std::string> PresetNames();

struct ParameterCount {
  std::int64_t total = 0;
  std::int64_t active = 0;  // per token: shared + top-k routed experts only
};
// The text decoder's parameters.
ParameterCount CountParameters(const ModelConfig& config);
// The vision tower's and projector's (all of them run for every image).
std::int64_t CountVisionParameters(const VisionConfig& vision, const ModelConfig& text);

struct MakeModelOptions {
  std::uint64_t seed = 0;
  DType dtype = DType::kBF16;                  // F32, BF16 or F16
  std::size_t max_shard_bytes = 4ull << 30;    // larger checkpoints are sharded
  // Set: the multimodal checkpoint with this vision encoder. The decoder's
  // values are the same either way (they depend on the seed and the
  // decoder-layout tensor name only).
  std::optional<VisionConfig> vision;
};

// Writes config.json, generation_config.json and the weights into `dir`.
// `config` is the text decoder's configuration (options.vision adds the rest).
absl::Status MakeModel(const ModelConfig& config, const MakeModelOptions& options, const std::string& dir);

}  // namespace sirocco::engine
