// The Mistral 4 text decoder (DeepSeek-V3-style MLA + group-limited MoE),
// written once against the kernel table. One Forward call runs a batch of
// sequence chunks of any lengths: prompts being prefilled, single tokens being
// decoded, or chunks continuing a cached prefix. Every chunk's latent KV is
// written into the paged pool before attention reads it.
//
// Attention has two forms that compute the same function:
//   * expanded: the cached latents are expanded by kv_b_proj into per-head
//     keys and values, then ordinary causal attention (prefill);
//   * absorbed: kv_b_proj is folded into the query and the output, so
//     attention runs over the cached latent itself (decode, or prefill).
//
// Thread-safety: Forward mutates the pool; call it from the one engine thread.
// The model itself is immutable after Load.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/config.h"
#include "engine/kv_cache.h"
#include "engine/mistral4_weights.h"
#include "kernels/kernels.h"

namespace sirocco::engine {

enum class AttentionForm : std::uint8_t { kExpanded, kAbsorbed };

struct ModelOptions {
  kernels::Backend backend = kernels::Backend::kRef;
};

// One sequence's share of a forward step.
struct ForwardItem {
  std::span<const std::int32_t> tokens;  // new tokens, >= 1
  std::int64_t start_pos = 0;            // tokens already in the cache
  const BlockTable* blocks = nullptr;    // capacity >= start_pos + tokens.size()
  bool all_logits = false;               // logits for every token, else the last
};

class Mistral4Model {
 public:
  // Loads config.json and the safetensors weights from a checkpoint folder.
  static absl::StatusOr<std::unique_ptr<Mistral4Model>> Load(const std::string& dir, const ModelOptions& options);
  static absl::StatusOr<std::unique_ptr<Mistral4Model>> FromWeights(const ModelConfig& config,
                                                                    std::unique_ptr<Mistral4Weights> weights,
                                                                    const ModelOptions& options);

  // Called on the engine thread as soon as layer `layer`'s KV of every item
  // is in the pool, while later layers still compute: a prefill worker posts
  // that layer's transfer from here.
  using LayerDoneFn = std::function<void(std::int64_t layer)>;

  // Runs the items as one batch. `logits` receives, item by item, one row of
  // vocab_size floats per token (all_logits) or for the last token.
  absl::Status Forward(std::span<const ForwardItem> items, KvPool& pool, AttentionForm form,
                       std::vector<float>* logits, const LayerDoneFn& on_layer_done = nullptr) const;

  const ModelConfig& config() const { return config_; }
  const kernels::KernelTable& kernels() const { return k_; }
  // Options for a pool that fits this model.
  KvPoolOptions PoolOptions(std::int64_t num_blocks, std::int64_t block_size) const;

 private:
  Mistral4Model(const ModelConfig& config, std::unique_ptr<Mistral4Weights> weights, const ModelOptions& options);

  struct Batch;  // per-call token layout and scratch buffers
  void Attention(std::int64_t layer, Batch& b, KvPool& pool, AttentionForm form) const;
  void AttentionExpanded(std::int64_t layer, Batch& b, KvPool& pool) const;
  void AttentionAbsorbed(std::int64_t layer, Batch& b, KvPool& pool) const;
  void Moe(const LayerWeights& lw, Batch& b) const;
  void Mlp(const MlpWeights& w, std::int64_t inter, const float* x, std::int64_t rows, float beta, float* out,
           Batch& b) const;

  ModelConfig config_;
  std::unique_ptr<Mistral4Weights> w_;
  const kernels::KernelTable& k_;
  RopeTables rope_;
};

}  // namespace sirocco::engine
