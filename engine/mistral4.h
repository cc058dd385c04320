// The Mistral 4 text decoder (DeepSeek-V3-style MLA + group-limited MoE),
// written once against the Device interface (engine/device.h): the CPU device
// runs it on a kernel table over host memory, the CUDA device on a GPU with
// weights, activations and the KV pool in device memory and no host round
// trip inside a step. One Forward call runs a batch of
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
// Thread-safety: Forward mutates the pool and the model's scratch memory; call
// it from one thread at a time (the engine thread; concurrent calls are
// serialised). The weights are immutable after Load.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/config.h"
#include "engine/device.h"
#include "engine/kv_cache.h"
#include "engine/mistral4_weights.h"
#include "kernels/kernels.h"

namespace sirocco::engine {

enum class AttentionForm : std::uint8_t { kExpanded, kAbsorbed };

struct ModelOptions {
  // The CPU kernels, used when `device` is null.
  kernels::Backend backend = kernels::Backend::kRef;
  // Where the model runs; null: the CPU device over `backend`. Pools passed to
  // Forward must live on this device (KvPool::Create(options, device)).
  std::shared_ptr<Device> device;
  // How the weight matrices are held and multiplied (norm weights, the
  // residual stream and attention stay float32 either way). kBF16 halves
  // weight memory and bandwidth; products then see bf16 activations with
  // float32 accumulation. kFP8 stores the linear layers and experts as
  // block-FP8 (1 byte a parameter; weight-only: float32 activations), the
  // embedding and LM head as bf16 and kv_b_proj as float32. An FP8 checkpoint is
  // requantised from its float32 values: where each block's largest code is
  // 448 (how FP8 checkpoints are written) that gives back the same codes, with
  // scales equal to within one float32 ulp.
  WeightType weight_type = WeightType::kF32;
  // Load a multimodal checkpoint's vision encoder (vision()); false: text
  // only.
  bool load_vision = true;
};

class PixtralEncoder;

// One sequence's share of a forward step.
struct ForwardItem {
  std::span<const std::int32_t> tokens;  // new tokens, >= 1
  std::int64_t start_pos = 0;            // tokens already in the cache
  const BlockTable* blocks = nullptr;    // capacity >= start_pos + tokens.size()
  bool all_logits = false;               // logits for every token, else the last
  // Input rows that replace the embedding of some of `tokens` (an image's
  // features at its [IMG] tokens): row r, hidden_size floats of
  // `embed_rows` in host memory, is the input of tokens[embed_at[r]].
  // embed_at ascending, distinct, < tokens.size().
  std::span<const std::int32_t> embed_at = {};
  std::span<const float> embed_rows = {};
};

class Mistral4Model {
 public:
  // Loads config.json and the safetensors weights from a checkpoint folder.
  // On a device with its own memory (a GPU) the weights go there layer by
  // layer as they are read: the host never holds more than one layer, the
  // embedding and the LM head in float32.
  static absl::StatusOr<std::unique_ptr<Mistral4Model>> Load(const std::string& dir, const ModelOptions& options);
  ~Mistral4Model();
  Mistral4Model(const Mistral4Model&) = delete;
  Mistral4Model& operator=(const Mistral4Model&) = delete;

  static absl::StatusOr<std::unique_ptr<Mistral4Model>> FromWeights(const ModelConfig& config,
                                                                    std::unique_ptr<Mistral4Weights> weights,
                                                                    const ModelOptions& options);

  // Called on the engine thread as soon as layer `layer`'s KV of every item
  // is in the pool, while later layers still compute: a prefill worker posts
  // that layer's transfer from here. On a device that is not host-accessible
  // Forward waits for the device before each call, so the layer's KV is in
  // device memory when the callback runs.
  using LayerDoneFn = std::function<void(std::int64_t layer)>;

  // Runs the items as one batch. `logits` receives, item by item, one row of
  // vocab_size floats per token (all_logits) or for the last token.
  absl::Status Forward(std::span<const ForwardItem> items, KvPool& pool, AttentionForm form, std::vector<float>* logits,
                       const LayerDoneFn& on_layer_done = nullptr) const;
  // As Forward, with the logits left in the device's memory (rows as Forward
  // lays them out, vocab_size apart), for sampling on the device. The pointer
  // is the model's scratch: valid until the next Forward or ForwardOnDevice.
  absl::StatusOr<const float*> ForwardOnDevice(std::span<const ForwardItem> items, KvPool& pool, AttentionForm form,
                                               const LayerDoneFn& on_layer_done = nullptr) const;

  const ModelConfig& config() const { return config_; }
  Device& device() const { return *device_; }
  // The checkpoint's vision encoder and projector (a multimodal checkpoint),
  // on the same device; null for a text-only one. Engine thread only, as
  // Forward.
  PixtralEncoder* vision() const { return vision_.get(); }
  WeightType weight_type() const { return weight_type_; }
  // Options for a pool that fits this model.
  KvPoolOptions PoolOptions(std::int64_t num_blocks, std::int64_t block_size) const;

 private:
  Mistral4Model(const ModelConfig& config, std::unique_ptr<Mistral4Weights> weights, std::shared_ptr<Device> device,
                WeightType weight_type);
  // Device copies of the weights (views on a host-accessible device).
  absl::Status UploadGlobals(const Mistral4Weights& w);
  absl::Status UploadLayer(std::int64_t layer, const LayerWeights& lw);
  WeightType PlainType() const;  // the embedding and LM head
  WeightType KvBType() const;    // kv_b_proj
  absl::Status PutVector(std::span<const float> host, const float** out);
  absl::Status PutPlain(std::span<const float> host, WeightType type, WeightView* out);
  absl::Status PutLinear(std::span<const float> host, std::int64_t batch, std::int64_t rows, std::int64_t cols,
                         WeightView* out);

  // Forward's body: logits to the host (`logits`) or left on the device
  // (`device_logits`, when logits is null).
  absl::Status Run(std::span<const ForwardItem> items, KvPool& pool, AttentionForm form,
                   const LayerDoneFn& on_layer_done, std::vector<float>* logits, const float** device_logits) const;

  struct DeviceWeights;  // the weights' device addresses
  struct Batch;          // per-call token layout and device buffers
  struct Scratch;        // device buffers reused across calls
  absl::Status Attention(std::int64_t layer, Batch& b, KvPool& pool, AttentionForm form) const;
  absl::Status AttentionExpanded(std::int64_t layer, Batch& b, KvPool& pool) const;
  absl::Status AttentionAbsorbed(std::int64_t layer, Batch& b, KvPool& pool) const;
  absl::Status Moe(std::int64_t layer, Batch& b) const;
  absl::Status Mlp(WeightView gate, WeightView up, WeightView down, std::int64_t inter, const float* x,
                   std::int64_t rows, float* out, Batch& b) const;

  ModelConfig config_;
  // Host weights: the CPU device computes on them in place; on a GPU only the
  // layer kinds are kept once the device has its copies.
  std::unique_ptr<Mistral4Weights> w_;
  std::shared_ptr<Device> device_;
  WeightType weight_type_;
  std::unique_ptr<DeviceWeights> dw_;
  std::unique_ptr<PixtralEncoder> vision_;
  RopeTables rope_;
  mutable absl::Mutex mu_;
  std::unique_ptr<Scratch> scratch_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sirocco::engine
