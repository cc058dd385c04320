// Writes complete Mistral 4 checkpoints with seeded random weights: the
// embedded default model, benchmark models, and shape checks of the real
// configuration. Output is what transformers' save_pretrained writes
// (config.json + model.safetensors, sharded with an index when large), so the
// reference implementation loads it unchanged.
//
// Thread-safety: stateless functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/dtype.h"

namespace sirocco::engine {

// Named configurations:
//   tiny          every feature at small width: q_lora, 4 expert groups with
//                 group-limited top-k, a shared expert, one dense first
//                 layer, YaRN with original_max_position_embeddings 16 (the
//                 llama-4 query scale moves within a short prompt); the real
//                 131072-token vocabulary.
//   tiny-noqlora  tiny with q = q_proj(x) and no expert groups.
//   small         the real model's proportions at about 1.1B parameters.
//   mistral-small-4  the released configuration (119B; shape checks).
absl::StatusOr<ModelConfig> PresetConfig(const std::string& name);
std::vector<std::string> PresetNames();

struct ParameterCount {
  std::int64_t total = 0;
  std::int64_t active = 0;  // per token: shared + top-k routed experts only
};
ParameterCount CountParameters(const ModelConfig& config);

struct MakeModelOptions {
  std::uint64_t seed = 0;
  DType dtype = DType::kBF16;                  // F32, BF16 or F16
  std::size_t max_shard_bytes = 4ull << 30;    // larger checkpoints are sharded
};

// Writes config.json, generation_config.json and the weights into `dir`.
absl::Status MakeModel(const ModelConfig& config, const MakeModelOptions& options, const std::string& dir);

}  // namespace sirocco::engine
