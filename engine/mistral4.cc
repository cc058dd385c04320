#include "engine/mistral4.h"

#include "engine/pixtral.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/pixtral.h"
#include "engine/safetensors.h"
#include "engine/status_macros.h"

namespace sirocco::engine {

// The q_a / kv_a norms are built with the module default eps in the reference,
// not config.rms_norm_eps.
constexpr float kLatentNormEps = 1e-6f;

// The weights' device addresses. On the CPU device they point into the host
// weights themselves (Upload is a view); on a GPU into device copies.
struct Mistral4Model::DeviceWeights {
  struct Layer {
    const float *input_norm = nullptr, *post_norm = nullptr, *q_a_norm = nullptr, *kv_a_norm = nullptr;
    WeightView q_proj, q_a_proj, q_b_proj, kv_a_proj, kv_b_proj, o_proj;
    WeightView gate, up, down;  // dense MLP, or the shared expert
    const float* router_f32 = nullptr;
    WeightView router, experts_gate_up, experts_down;
  };
  std::vector<std::unique_ptr<DeviceMemory>> memory;
  WeightView embed;
  WeightView head;
  const float* final_norm = nullptr;
  const float* inv_freq = nullptr;
  std::vector<Layer> layers;
};

namespace {

// Device buffers a Forward call uses; each grows to the largest call so far.
enum Buf : int {
  kX,
  kH,
  kQ,
  kQa,
  kKv,
  kAttn,
  kT0,
  kT1,
  kT2,
  kT3,  // activations, [tokens, ...]
  kRouter,
  kExpertIds,
  kExpertWeights,
  kCounts,
  kOffsets,
  kSorted,
  kPosition,
  kXs,
  kGu,
  kYs,  // MoE
  kInts,
  kPtrs,
  kFloats,     // the call's token layout, uploaded once
  kEmbedRows,  // rows replacing token embeddings
  kRows,
  kLogits,  // final norm and LM head
  kNumBufs
};

int I(std::int64_t v) { return static_cast<int>(v); }
std::size_t Z(std::int64_t v) { return static_cast<std::size_t>(v); }

}  // namespace

struct Mistral4Model::Scratch {
  std::unique_ptr<DeviceMemory> buf[kNumBufs];
};

// Token layout of one Forward call. Tokens of all items are concatenated: row
// t belongs to item item_of[t] at position pos[t]. Host vectors describe the
// layout; the d_* pointers are its device copies and the call's buffers.
struct Mistral4Model::Batch {
  Device* dev = nullptr;
  Scratch* scratch = nullptr;
  std::span<const ForwardItem> items;
  std::int64_t num_tokens = 0;
  std::vector<std::int32_t> pos;         // [T]
  std::vector<std::int32_t> item_of;     // [T]
  std::vector<std::int64_t> item_begin;  // [items + 1]
  std::vector<std::int64_t> key_begin;   // [items + 1] into d_key_slots (expanded form)
  std::int32_t max_ctx = 0;
  bool query_scaled = false;

  // Device copies of the layout.
  const std::int32_t* d_tokens = nullptr;         // [T]
  const std::int32_t* d_pos = nullptr;            // [T]
  const std::int32_t* d_slots = nullptr;          // [T] pool row of each new token (block * block_size + offset)
  const std::int32_t* d_logit_rows = nullptr;     // [logit rows] token rows that want logits
  const std::int32_t* d_ctx = nullptr;            // [T] context length of each query (pos + 1)
  const std::int32_t* const* d_tables = nullptr;  // [T] each query's block table
  const std::int32_t* d_key_slots = nullptr;      // pool rows of every item's keys, 0 .. start_pos + n
  const float* d_qscale = nullptr;                // [T] llama-4 query scale

  // Returns buffer `which` with room for `count` values of T.
  template <typename T>
  absl::StatusOr<T*> Get(Buf which, std::int64_t count) {
    auto& m = scratch->buf[which];
    const std::size_t bytes = Z(std::max<std::int64_t>(count, 1)) * sizeof(T);
    if (m == nullptr || m->size() < bytes) {
      m.reset();
      // Grow by half again so slowly rising batch sizes do not reallocate every call.
      SIROCCO_ASSIGN_OR_RETURN(m, dev->Allocate(bytes + bytes / 2));
    }
    return m->as<T>();
  }
  template <typename T>
  T* Ptr(Buf which) const {
    return scratch->buf[which]->as<T>();
  }
};

Mistral4Model::Mistral4Model(const ModelConfig& config, std::unique_ptr<Mistral4Weights> weights,
                             std::shared_ptr<Device> device, WeightType weight_type)
    : config_(config),
      w_(std::move(weights)),
      device_(std::move(device)),
      weight_type_(weight_type),
      dw_(std::make_unique<DeviceWeights>()),
      rope_(ComputeRopeTables(config)),
      scratch_(std::make_unique<Scratch>()) {}

Mistral4Model::~Mistral4Model() = default;

namespace {

// The device a model with `options` runs on: options.device, or the CPU
// device over options.backend.
absl::StatusOr<std::shared_ptr<Device>> ResolveDevice(const ModelOptions& options) {
  if (options.weight_type == WeightType::kBF16AsF32) {
    return absl::InvalidArgumentError("weight_type: ask for kF32, kBF16 or kFP8 (kBF16AsF32 is a device's storage)");
  }
  if (options.device != nullptr) return options.device;
  if (!kernels::Available(options.backend)) {
    return absl::FailedPreconditionError(
        absl::StrCat("kernel backend ", kernels::BackendName(options.backend), " is not available on this machine"));
  }
  return std::shared_ptr<Device>(MakeHostDevice(options.backend));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Mistral4Model>> Mistral4Model::Load(const std::string& dir,
                                                                   const ModelOptions& options) {
  SIROCCO_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir + "/config.json"));
  SIROCCO_RETURN_IF_ERROR(ValidateModelConfig(config));
  SIROCCO_ASSIGN_OR_RETURN(std::shared_ptr<Device> device, ResolveDevice(options));
  SIROCCO_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(dir));
  SIROCCO_ASSIGN_OR_RETURN(std::optional<VisionConfig> vision, LoadVisionConfig(dir + "/config.json"));
  auto with_vision = [&](std::unique_ptr<Mistral4Model> model) -> absl::StatusOr<std::unique_ptr<Mistral4Model>> {
    if (vision.has_value() && options.load_vision) {
      SIROCCO_ASSIGN_OR_RETURN(model->vision_,
                               PixtralEncoder::Load(*checkpoint, config, *vision, model->device_.get()));
    }
    return model;
  };
  if (device->host_accessible()) {
    // The CPU computes on the host weights in place: load them all.
    SIROCCO_ASSIGN_OR_RETURN(auto weights, LoadMistral4Weights(*checkpoint, config));
    SIROCCO_ASSIGN_OR_RETURN(auto model, FromWeights(config, std::move(weights), options));
    return with_vision(std::move(model));
  }
  // A device with its own memory: each layer goes to the device as soon as it
  // is read, and its host float32 copy is dropped before the next layer is
  // read, so the host holds one layer (plus the embedding and LM head) at a
  // time, not the whole model.
  auto kinds = std::make_unique<Mistral4Weights>();
  kinds->layers.resize(static_cast<std::size_t>(config.num_hidden_layers));
  std::unique_ptr<Mistral4Model> model(new Mistral4Model(config, std::move(kinds), device, options.weight_type));
  model->dw_->layers.resize(static_cast<std::size_t>(config.num_hidden_layers));
  SIROCCO_ASSIGN_OR_RETURN(
      std::unique_ptr<Mistral4Weights> globals,
      LoadMistral4WeightsByLayer(*checkpoint, config, [&](std::int64_t l, LayerWeights& lw) -> absl::Status {
        model->w_->layers[static_cast<std::size_t>(l)].is_moe = lw.is_moe;
        SIROCCO_RETURN_IF_ERROR(model->UploadLayer(l, lw));
        // Uploads may still read `lw` until the device has them.
        return model->device_->Synchronize();
      }));
  SIROCCO_RETURN_IF_ERROR(model->UploadGlobals(*globals));
  SIROCCO_RETURN_IF_ERROR(model->device_->Synchronize());
  return with_vision(std::move(model));
}

absl::StatusOr<std::unique_ptr<Mistral4Model>> Mistral4Model::FromWeights(const ModelConfig& config,
                                                                          std::unique_ptr<Mistral4Weights> weights,
                                                                          const ModelOptions& options) {
  SIROCCO_RETURN_IF_ERROR(ValidateModelConfig(config));
  SIROCCO_ASSIGN_OR_RETURN(std::shared_ptr<Device> device, ResolveDevice(options));
  if (weights == nullptr || static_cast<std::int64_t>(weights->layers.size()) != config.num_hidden_layers) {
    return absl::InvalidArgumentError("weights do not match the config's num_hidden_layers");
  }
  std::unique_ptr<Mistral4Model> model(
      new Mistral4Model(config, std::move(weights), std::move(device), options.weight_type));
  SIROCCO_RETURN_IF_ERROR(model->UploadGlobals(*model->w_));
  model->dw_->layers.resize(model->w_->layers.size());
  for (std::size_t l = 0; l < model->w_->layers.size(); ++l) {
    SIROCCO_RETURN_IF_ERROR(model->UploadLayer(static_cast<std::int64_t>(l), model->w_->layers[l]));
  }
  if (!model->device_->host_accessible()) {
    // The device holds its own copies: the host float32 weights (4 bytes a
    // parameter) go once the uploads have landed; only the layer kinds stay.
    SIROCCO_RETURN_IF_ERROR(model->device_->Synchronize());
    auto kinds = std::make_unique<Mistral4Weights>();
    kinds->layers.resize(model->w_->layers.size());
    for (std::size_t l = 0; l < kinds->layers.size(); ++l) kinds->layers[l].is_moe = model->w_->layers[l].is_moe;
    model->w_ = std::move(kinds);
  }
  return model;
}

// With FP8 weights the linear layers and experts (nearly all parameters) are
// block-FP8, the embedding and LM head (row gathers and the logits) bf16, and
// kv_b_proj float32: it is sliced per head by absorbed attention, and in
// float32 (0.2% of the parameters) both attention forms compute the same
// function. Norm weights, the router and the rope tables stay float32.
WeightType Mistral4Model::PlainType() const {
  return weight_type_ == WeightType::kFP8 ? WeightType::kBF16 : weight_type_;
}
WeightType Mistral4Model::KvBType() const {
  return weight_type_ == WeightType::kFP8 ? WeightType::kF32 : weight_type_;
}

absl::Status Mistral4Model::PutVector(std::span<const float> host, const float** out) {
  if (host.empty()) return absl::OkStatus();
  SIROCCO_ASSIGN_OR_RETURN(auto mem, device_->Upload(host));
  *out = mem->as<const float>();
  dw_->memory.push_back(std::move(mem));
  return absl::OkStatus();
}

absl::Status Mistral4Model::PutPlain(std::span<const float> host, WeightType type, WeightView* out) {
  if (host.empty()) return absl::OkStatus();
  SIROCCO_ASSIGN_OR_RETURN(auto mem, device_->UploadWeight(host, type));
  *out = WeightView(mem->data(), device_->StoredType(type));
  dw_->memory.push_back(std::move(mem));
  return absl::OkStatus();
}

absl::Status Mistral4Model::PutLinear(std::span<const float> host, std::int64_t batch, std::int64_t rows,
                                      std::int64_t cols, WeightView* out) {
  if (weight_type_ != WeightType::kFP8) return PutPlain(host, weight_type_, out);
  if (host.empty()) return absl::OkStatus();
  const Fp8BlockWeights q = QuantizeFp8Blocks(batch, rows, cols, host.data());
  SIROCCO_ASSIGN_OR_RETURN(auto mem, device_->UploadFp8Weight(q, out));
  dw_->memory.push_back(std::move(mem));
  // UploadFp8Weight's copies have landed when it returns: q may go.
  return absl::OkStatus();
}

absl::Status Mistral4Model::UploadGlobals(const Mistral4Weights& w) {
  DeviceWeights& d = *dw_;
  SIROCCO_RETURN_IF_ERROR(PutPlain(w.embed.data, PlainType(), &d.embed));
  SIROCCO_RETURN_IF_ERROR(PutVector(w.final_norm, &d.final_norm));
  d.head = d.embed;
  if (!w.lm_head.empty()) SIROCCO_RETURN_IF_ERROR(PutPlain(w.lm_head.data, PlainType(), &d.head));
  return PutVector(rope_.inv_freq, &d.inv_freq);
}

absl::Status Mistral4Model::UploadLayer(std::int64_t l, const LayerWeights& lw) {
  DeviceWeights::Layer& dl = dw_->layers[static_cast<std::size_t>(l)];
  auto put_matrix = [&](const Matrix& m, WeightView* out) { return PutLinear(m.data, 1, m.rows, m.cols, out); };
  SIROCCO_RETURN_IF_ERROR(PutVector(lw.input_norm, &dl.input_norm));
  SIROCCO_RETURN_IF_ERROR(PutVector(lw.post_norm, &dl.post_norm));
  SIROCCO_RETURN_IF_ERROR(put_matrix(lw.attn.q_proj, &dl.q_proj));
  SIROCCO_RETURN_IF_ERROR(put_matrix(lw.attn.q_a_proj, &dl.q_a_proj));
  SIROCCO_RETURN_IF_ERROR(PutVector(lw.attn.q_a_norm, &dl.q_a_norm));
  SIROCCO_RETURN_IF_ERROR(put_matrix(lw.attn.q_b_proj, &dl.q_b_proj));
  SIROCCO_RETURN_IF_ERROR(put_matrix(lw.attn.kv_a_proj, &dl.kv_a_proj));
  SIROCCO_RETURN_IF_ERROR(PutVector(lw.attn.kv_a_norm, &dl.kv_a_norm));
  SIROCCO_RETURN_IF_ERROR(PutPlain(lw.attn.kv_b_proj.data, KvBType(), &dl.kv_b_proj));
  SIROCCO_RETURN_IF_ERROR(put_matrix(lw.attn.o_proj, &dl.o_proj));
  const MlpWeights& mlp = lw.is_moe ? lw.moe.shared : lw.dense;
  SIROCCO_RETURN_IF_ERROR(put_matrix(mlp.gate, &dl.gate));
  SIROCCO_RETURN_IF_ERROR(put_matrix(mlp.up, &dl.up));
  SIROCCO_RETURN_IF_ERROR(put_matrix(mlp.down, &dl.down));
  if (lw.is_moe) {
    // The router decides which experts run: it stays float32, so reduced
    // precision never changes a routing decision by the weights' rounding.
    SIROCCO_RETURN_IF_ERROR(PutVector(lw.moe.router.data, &dl.router_f32));
    dl.router = WeightView(dl.router_f32);
    const std::int64_t E = config_.n_routed_experts, H = config_.hidden_size, I2 = config_.moe_intermediate_size;
    SIROCCO_RETURN_IF_ERROR(PutLinear(lw.moe.gate_up, E, 2 * I2, H, &dl.experts_gate_up));
    SIROCCO_RETURN_IF_ERROR(PutLinear(lw.moe.down, E, H, I2, &dl.experts_down));
  }
  return absl::OkStatus();
}

KvPoolOptions Mistral4Model::PoolOptions(std::int64_t num_blocks, std::int64_t block_size) const {
  return KvPoolOptions{.num_layers = config_.num_hidden_layers,
                       .num_blocks = num_blocks,
                       .block_size = block_size,
                       .entry_dim = config_.kv_entry_dim(),
                       .prefix_caching = false};
}

absl::Status Mistral4Model::Forward(std::span<const ForwardItem> items, KvPool& pool, AttentionForm form,
                                    std::vector<float>* logits, const LayerDoneFn& on_layer_done) const {
  return Run(items, pool, form, on_layer_done, logits, nullptr);
}

absl::StatusOr<const float*> Mistral4Model::ForwardOnDevice(std::span<const ForwardItem> items, KvPool& pool,
                                                            AttentionForm form,
                                                            const LayerDoneFn& on_layer_done) const {
  const float* device_logits = nullptr;
  SIROCCO_RETURN_IF_ERROR(Run(items, pool, form, on_layer_done, nullptr, &device_logits));
  return device_logits;
}

absl::Status Mistral4Model::Run(std::span<const ForwardItem> items, KvPool& pool, AttentionForm form,
                                const LayerDoneFn& on_layer_done, std::vector<float>* logits,
                                const float** device_logits) const {
  const ModelConfig& c = config_;
  if (pool.entry_dim() != c.kv_entry_dim() || pool.num_layers() != c.num_hidden_layers) {
    return absl::InvalidArgumentError("KV pool layout does not match the model");
  }
  if (device_->host_accessible() && !pool.host_accessible()) {
    return absl::InvalidArgumentError("the KV pool is device memory but the model runs on the host");
  }
  absl::MutexLock lock(&mu_);
  Device& dev = *device_;
  Batch b;
  b.dev = &dev;
  b.scratch = scratch_.get();
  b.items = items;
  b.item_begin.push_back(0);
  b.key_begin.push_back(0);
  const std::int64_t bs = pool.block_size();
  std::vector<std::int32_t> tokens, slots, logit_rows, key_slots, embed_at;
  std::vector<float> embed_rows;
  std::int64_t max_blocks = 1;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const ForwardItem& it = items[i];
    if (it.tokens.empty()) return absl::InvalidArgumentError(absl::StrCat("item ", i, " has no tokens"));
    if (it.blocks == nullptr || it.blocks->pool() != &pool) {
      return absl::InvalidArgumentError(absl::StrCat("item ", i, " has no block table in this pool"));
    }
    const std::int64_t end = it.start_pos + static_cast<std::int64_t>(it.tokens.size());
    if (it.start_pos < 0 || end > it.blocks->capacity()) {
      return absl::InvalidArgumentError(
          absl::StrCat("item ", i, ": positions up to ", end, " exceed its KV capacity ", it.blocks->capacity()));
    }
    if (end > c.max_position_embeddings) {
      return absl::InvalidArgumentError(
          absl::StrCat("item ", i, ": ", end, " tokens exceed max_position_embeddings ", c.max_position_embeddings));
    }
    for (std::size_t j = 0; j < it.tokens.size(); ++j) {
      const std::int32_t tok = it.tokens[j];
      if (tok < 0 || tok >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("item ", i, ": token id ", tok, " is outside the vocabulary [0, ", c.vocab_size, ")"));
      }
      const std::int64_t p = it.start_pos + static_cast<std::int64_t>(j);
      tokens.push_back(tok);
      b.pos.push_back(static_cast<std::int32_t>(p));
      b.item_of.push_back(static_cast<std::int32_t>(i));
      slots.push_back(static_cast<std::int32_t>(it.blocks->block(p / bs).value * bs + p % bs));
    }
    if (it.embed_rows.size() != it.embed_at.size() * Z(c.hidden_size)) {
      return absl::InvalidArgumentError(absl::StrCat("item ", i, ": ", it.embed_at.size(), " embedding rows need ",
                                                     it.embed_at.size() * Z(c.hidden_size), " floats, got ",
                                                     it.embed_rows.size()));
    }
    for (std::size_t r = 0; r < it.embed_at.size(); ++r) {
      const std::int32_t at = it.embed_at[r];
      if (at < 0 || Z(at) >= it.tokens.size() || (r > 0 && at <= it.embed_at[r - 1])) {
        return absl::InvalidArgumentError(
            absl::StrCat("item ", i, ": embedding row ", r, " replaces token ", at, ", not an ascending new token"));
      }
      embed_at.push_back(static_cast<std::int32_t>(b.item_begin[i]) + at);
    }
    embed_rows.insert(embed_rows.end(), it.embed_rows.begin(), it.embed_rows.end());
    b.item_begin.push_back(static_cast<std::int64_t>(b.pos.size()));
    for (std::int64_t t = it.all_logits ? b.item_begin[i] : b.item_begin[i + 1] - 1; t < b.item_begin[i + 1]; ++t) {
      logit_rows.push_back(static_cast<std::int32_t>(t));
    }
    if (form == AttentionForm::kExpanded) {
      for (std::int64_t p = 0; p < end; ++p) {
        key_slots.push_back(static_cast<std::int32_t>(it.blocks->block(p / bs).value * bs + p % bs));
      }
      b.key_begin.push_back(static_cast<std::int64_t>(key_slots.size()));
    }
    max_blocks = std::max(max_blocks, it.blocks->num_blocks());
    b.max_ctx = std::max(b.max_ctx, static_cast<std::int32_t>(end));
  }
  const std::int64_t T = b.num_tokens = static_cast<std::int64_t>(b.pos.size());
  const std::int64_t LR = static_cast<std::int64_t>(logit_rows.size());
  const std::int64_t H = c.hidden_size;
  const std::int64_t n_items = static_cast<std::int64_t>(items.size());

  // The layout, uploaded once: ints = tokens | pos | slots | logit rows | ctx
  // | block tables [items, max_blocks] | key slots; then one block-table
  // pointer per query and the llama-4 query scales.
  std::vector<std::int32_t> ints;
  ints.reserve(Z(5 * T + n_items * max_blocks) + key_slots.size());
  const std::size_t o_tokens = 0, o_pos = Z(T), o_slots = Z(2 * T), o_logit = Z(3 * T), o_ctx = Z(3 * T + LR);
  const std::size_t o_tables = Z(4 * T + LR), o_keys = o_tables + Z(n_items * max_blocks);
  ints.insert(ints.end(), tokens.begin(), tokens.end());
  ints.insert(ints.end(), b.pos.begin(), b.pos.end());
  ints.insert(ints.end(), slots.begin(), slots.end());
  ints.insert(ints.end(), logit_rows.begin(), logit_rows.end());
  for (std::int32_t p : b.pos) ints.push_back(p + 1);
  for (const ForwardItem& it : items) {
    ints.insert(ints.end(), it.blocks->data(), it.blocks->data() + it.blocks->num_blocks());
    ints.resize(ints.size() + Z(max_blocks - it.blocks->num_blocks()), 0);
  }
  ints.insert(ints.end(), key_slots.begin(), key_slots.end());
  const std::size_t o_embed_at = ints.size();
  ints.insert(ints.end(), embed_at.begin(), embed_at.end());
  SIROCCO_ASSIGN_OR_RETURN(std::int32_t * d_ints, b.Get<std::int32_t>(kInts, static_cast<std::int64_t>(ints.size())));
  SIROCCO_RETURN_IF_ERROR(dev.CopyToDevice(d_ints, ints.data(), ints.size() * sizeof(std::int32_t)));
  b.d_tokens = d_ints + o_tokens;
  b.d_pos = d_ints + o_pos;
  b.d_slots = d_ints + o_slots;
  b.d_logit_rows = d_ints + o_logit;
  b.d_ctx = d_ints + o_ctx;
  b.d_key_slots = d_ints + o_keys;
  std::vector<const std::int32_t*> tables(Z(T));
  for (std::int64_t t = 0; t < T; ++t) {
    tables[Z(t)] = d_ints + o_tables + Z(b.item_of[Z(t)] * max_blocks);
  }
  SIROCCO_ASSIGN_OR_RETURN(auto d_tables, b.Get<const std::int32_t*>(kPtrs, T));
  SIROCCO_RETURN_IF_ERROR(dev.CopyToDevice(d_tables, tables.data(), tables.size() * sizeof(tables[0])));
  b.d_tables = d_tables;
  if (c.rope.llama_4_scaling_beta) {
    std::vector<float> qscale(Z(T));
    for (std::int64_t t = 0; t < T; ++t) {
      qscale[Z(t)] = Llama4QueryScale(c, b.pos[Z(t)]);
      b.query_scaled |= qscale[Z(t)] != 1.0f;
    }
    SIROCCO_ASSIGN_OR_RETURN(float* d_qscale, b.Get<float>(kFloats, T));
    SIROCCO_RETURN_IF_ERROR(dev.CopyToDevice(d_qscale, qscale.data(), qscale.size() * sizeof(float)));
    b.d_qscale = d_qscale;
  }

  // Embedding.
  SIROCCO_ASSIGN_OR_RETURN(float* x, b.Get<float>(kX, T * H));
  SIROCCO_ASSIGN_OR_RETURN(float* h, b.Get<float>(kH, T * H));
  SIROCCO_RETURN_IF_ERROR(dev.GatherRows(I(T), I(H), dw_->embed, I(H), b.d_tokens, x, I(H)));
  if (!embed_at.empty()) {
    const auto n = static_cast<std::int64_t>(embed_at.size());
    SIROCCO_ASSIGN_OR_RETURN(float* d_rows, b.Get<float>(kEmbedRows, n * H));
    SIROCCO_RETURN_IF_ERROR(dev.CopyToDevice(d_rows, embed_rows.data(), embed_rows.size() * sizeof(float)));
    SIROCCO_RETURN_IF_ERROR(dev.ScatterRows(I(n), I(H), d_rows, I(H), d_ints + o_embed_at, x, I(H)));
  }

  const float eps = static_cast<float>(c.rms_norm_eps);
  const std::int64_t attn_width = c.num_attention_heads * c.v_head_dim;
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const DeviceWeights::Layer& dl = dw_->layers[Z(l)];
    SIROCCO_RETURN_IF_ERROR(dev.RmsNorm(I(T), I(H), x, I(H), dl.input_norm, eps, h, I(H)));
    SIROCCO_RETURN_IF_ERROR(Attention(l, b, pool, form));
    if (on_layer_done) {
      // A KV transfer reads the pool outside the device's stream: on a GPU the
      // layer's writes must have landed first. Only steps that stream their KV
      // out layer by layer (prefill workers) pay this wait.
      if (!dev.host_accessible()) SIROCCO_RETURN_IF_ERROR(dev.Synchronize());
      on_layer_done(l);
    }
    // x += attn · o_proj^T
    SIROCCO_RETURN_IF_ERROR(dev.GemmNt(I(T), I(H), I(attn_width), b.Ptr<float>(kAttn), I(attn_width), dl.o_proj,
                                       I(attn_width), 1.0f, x, I(H)));
    SIROCCO_RETURN_IF_ERROR(dev.RmsNorm(I(T), I(H), x, I(H), dl.post_norm, eps, h, I(H)));
    if (w_->layers[Z(l)].is_moe) {
      SIROCCO_RETURN_IF_ERROR(Moe(l, b));
    } else {
      SIROCCO_RETURN_IF_ERROR(Mlp(dl.gate, dl.up, dl.down, c.intermediate_size, h, T, x, b));
    }
  }

  // Final norm and LM head on the rows that want logits.
  SIROCCO_ASSIGN_OR_RETURN(float* rows, b.Get<float>(kRows, LR * H));
  SIROCCO_RETURN_IF_ERROR(dev.GatherRows(I(LR), I(H), x, I(H), b.d_logit_rows, rows, I(H)));
  SIROCCO_RETURN_IF_ERROR(dev.RmsNorm(I(LR), I(H), rows, I(H), dw_->final_norm, eps, rows, I(H)));
  if (logits != nullptr && dev.host_accessible()) {
    logits->resize(Z(LR * c.vocab_size));
    return dev.GemmNt(I(LR), I(c.vocab_size), I(H), rows, I(H), dw_->head, I(H), 0.0f, logits->data(), I(c.vocab_size));
  }
  SIROCCO_ASSIGN_OR_RETURN(float* d_logits, b.Get<float>(kLogits, LR * c.vocab_size));
  if (logits == nullptr) {
    *device_logits = d_logits;
    return dev.GemmNt(I(LR), I(c.vocab_size), I(H), rows, I(H), dw_->head, I(H), 0.0f, d_logits, I(c.vocab_size));
  }
  logits->resize(Z(LR * c.vocab_size));
  SIROCCO_RETURN_IF_ERROR(
      dev.GemmNt(I(LR), I(c.vocab_size), I(H), rows, I(H), dw_->head, I(H), 0.0f, d_logits, I(c.vocab_size)));
  return dev.CopyToHost(logits->data(), d_logits, logits->size() * sizeof(float));
}

absl::Status Mistral4Model::Attention(std::int64_t layer, Batch& b, KvPool& pool, AttentionForm form) const {
  const ModelConfig& c = config_;
  const DeviceWeights::Layer& dl = dw_->layers[Z(layer)];
  Device& dev = *b.dev;
  const std::int64_t T = b.num_tokens, H = c.hidden_size, heads = c.num_attention_heads;
  const std::int64_t qk = c.qk_head_dim(), nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
  const std::int64_t R = c.kv_lora_rank, E = c.kv_entry_dim();
  const float* h = b.Ptr<float>(kH);

  // Queries: [T, heads, qk].
  SIROCCO_ASSIGN_OR_RETURN(float* q, b.Get<float>(kQ, T * heads * qk));
  if (c.q_lora_rank > 0) {
    const std::int64_t QR = c.q_lora_rank;
    SIROCCO_ASSIGN_OR_RETURN(float* qa, b.Get<float>(kQa, T * QR));
    SIROCCO_RETURN_IF_ERROR(dev.GemmNt(I(T), I(QR), I(H), h, I(H), dl.q_a_proj, I(H), 0.0f, qa, I(QR)));
    SIROCCO_RETURN_IF_ERROR(dev.RmsNorm(I(T), I(QR), qa, I(QR), dl.q_a_norm, kLatentNormEps, qa, I(QR)));
    SIROCCO_RETURN_IF_ERROR(
        dev.GemmNt(I(T), I(heads * qk), I(QR), qa, I(QR), dl.q_b_proj, I(QR), 0.0f, q, I(heads * qk)));
  } else {
    SIROCCO_RETURN_IF_ERROR(dev.GemmNt(I(T), I(heads * qk), I(H), h, I(H), dl.q_proj, I(H), 0.0f, q, I(heads * qk)));
  }
  // Latent and rope key: [T, R + rope]; norm the latent, rotate the key.
  SIROCCO_ASSIGN_OR_RETURN(float* kv, b.Get<float>(kKv, T * E));
  SIROCCO_RETURN_IF_ERROR(dev.GemmNt(I(T), I(E), I(H), h, I(H), dl.kv_a_proj, I(H), 0.0f, kv, I(E)));
  SIROCCO_RETURN_IF_ERROR(dev.RmsNorm(I(T), I(R), kv, I(E), dl.kv_a_norm, kLatentNormEps, kv, I(E)));
  SIROCCO_RETURN_IF_ERROR(
      dev.RopeInterleaved(I(T), 1, I(rope), kv + R, I(E), b.d_pos, dw_->inv_freq, rope_.attention_factor));
  SIROCCO_RETURN_IF_ERROR(dev.RopeInterleaved(I(T * heads), I(heads), I(rope), q + nope, I(qk), b.d_pos, dw_->inv_freq,
                                              rope_.attention_factor));
  // llama-4 position-dependent query scale (whole query, all heads).
  if (b.query_scaled) {
    SIROCCO_RETURN_IF_ERROR(dev.ScaleRows(I(T), I(heads * qk), q, I(heads * qk), b.d_qscale));
  }
  // Write every new token's entry into its sequence's blocks.
  SIROCCO_RETURN_IF_ERROR(dev.ScatterRows(I(T), I(E), kv, I(E), b.d_slots, pool.layer(layer), I(E)));
  SIROCCO_RETURN_IF_ERROR(b.Get<float>(kAttn, T * heads * c.v_head_dim).status());
  return form == AttentionForm::kExpanded ? AttentionExpanded(layer, b, pool) : AttentionAbsorbed(layer, b, pool);
}

absl::Status Mistral4Model::AttentionExpanded(std::int64_t layer, Batch& b, KvPool& pool) const {
  const ModelConfig& c = config_;
  const DeviceWeights::Layer& dl = dw_->layers[Z(layer)];
  Device& dev = *b.dev;
  const std::int64_t heads = c.num_attention_heads, qk = c.qk_head_dim(), nope = c.qk_nope_head_dim;
  const std::int64_t rope = c.qk_rope_head_dim, vd = c.v_head_dim, R = c.kv_lora_rank, E = c.kv_entry_dim();
  const std::int64_t kvw = nope + vd;
  std::int64_t max_keys = 1;
  for (std::size_t i = 0; i < b.items.size(); ++i) max_keys = std::max(max_keys, b.key_begin[i + 1] - b.key_begin[i]);
  SIROCCO_ASSIGN_OR_RETURN(float* ent, b.Get<float>(kT0, max_keys * E));
  SIROCCO_ASSIGN_OR_RETURN(float* expd, b.Get<float>(kT1, max_keys * heads * kvw));
  SIROCCO_ASSIGN_OR_RETURN(float* keys, b.Get<float>(kT2, max_keys * heads * qk));
  SIROCCO_ASSIGN_OR_RETURN(float* vals, b.Get<float>(kT3, max_keys * heads * vd));
  for (std::size_t i = 0; i < b.items.size(); ++i) {
    const ForwardItem& it = b.items[i];
    const std::int64_t n_q = static_cast<std::int64_t>(it.tokens.size());
    const std::int64_t n_k = it.start_pos + n_q;
    // Gather the sequence's cached entries [n_k, E] and expand them into
    // [n_k, heads, nope + v].
    SIROCCO_RETURN_IF_ERROR(
        dev.GatherRows(I(n_k), I(E), pool.layer(layer), I(E), b.d_key_slots + b.key_begin[i], ent, I(E)));
    SIROCCO_RETURN_IF_ERROR(
        dev.GemmNt(I(n_k), I(heads * kvw), I(R), ent, I(E), dl.kv_b_proj, I(R), 0.0f, expd, I(heads * kvw)));
    // Keys [n_k, heads, nope | rope] (the rope key is shared by all heads) and
    // values [n_k, heads, v].
    SIROCCO_RETURN_IF_ERROR(dev.Copy2D(I(n_k * heads), I(nope), expd, I(kvw), keys, I(qk)));
    for (std::int64_t hd = 0; hd < heads; ++hd) {
      SIROCCO_RETURN_IF_ERROR(dev.Copy2D(I(n_k), I(rope), ent + R, I(E), keys + hd * qk + nope, I(heads * qk)));
    }
    SIROCCO_RETURN_IF_ERROR(dev.Copy2D(I(n_k * heads), I(vd), expd + nope, I(kvw), vals, I(vd)));
    kernels::AttentionParams p;
    p.num_queries = I(n_q);
    p.num_keys = I(n_k);
    p.q_offset = I(it.start_pos);
    p.num_heads = I(heads);
    p.qk_dim = I(qk);
    p.v_dim = I(vd);
    p.q = b.Ptr<float>(kQ) + b.item_begin[i] * heads * qk;
    p.k = keys;
    p.v = vals;
    p.scale = rope_.softmax_scale;
    p.out = b.Ptr<float>(kAttn) + b.item_begin[i] * heads * vd;
    SIROCCO_RETURN_IF_ERROR(dev.Attention(p));
  }
  return absl::OkStatus();
}

absl::Status Mistral4Model::AttentionAbsorbed(std::int64_t layer, Batch& b, KvPool& pool) const {
  const ModelConfig& c = config_;
  const DeviceWeights::Layer& dl = dw_->layers[Z(layer)];
  Device& dev = *b.dev;
  const std::int64_t T = b.num_tokens, heads = c.num_attention_heads, qk = c.qk_head_dim();
  const std::int64_t nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, vd = c.v_head_dim;
  const std::int64_t R = c.kv_lora_rank, kvw = nope + vd;
  const float* q = b.Ptr<float>(kQ);
  // Fold W_uk into the query, head by head: q_lat[t, h] = q_nope[t, h] · W_uk[h]
  // ([nope] x [nope, R]; W_uk[h] is rows h * kvw .. h * kvw + nope of kv_b_proj).
  SIROCCO_ASSIGN_OR_RETURN(float* q_lat, b.Get<float>(kT0, T * heads * R));
  SIROCCO_ASSIGN_OR_RETURN(float* q_rope, b.Get<float>(kT1, T * heads * rope));
  SIROCCO_ASSIGN_OR_RETURN(float* out_lat, b.Get<float>(kT2, T * heads * R));
  SIROCCO_RETURN_IF_ERROR(dev.GemmNnBatched(I(heads), I(T), I(R), I(nope), q, I(heads * qk), qk, dl.kv_b_proj, I(R),
                                            kvw * R, 0.0f, q_lat, I(heads * R), R));
  SIROCCO_RETURN_IF_ERROR(dev.Copy2D(I(T * heads), I(rope), q + nope, I(qk), q_rope, I(rope)));
  kernels::MlaAttentionParams p;
  p.num_queries = I(T);
  p.num_heads = I(heads);
  p.kv_rank = I(R);
  p.rope_dim = I(rope);
  p.block_size = I(pool.block_size());
  p.q_lat = q_lat;
  p.q_rope = q_rope;
  p.cache = pool.layer(layer);
  p.block_tables = b.d_tables;
  p.ctx_lens = b.d_ctx;
  p.scale = rope_.softmax_scale;
  p.out = out_lat;
  SIROCCO_RETURN_IF_ERROR(dev.MlaAttention(p, b.max_ctx));
  // Unfold W_uv: attn[t, h] = out_lat[t, h] · W_uv[h]^T  ([R] x [v, R]^T).
  return dev.GemmNtBatched(I(heads), I(T), I(vd), I(R), out_lat, I(heads * R), R, dl.kv_b_proj.Offset(nope * R), I(R),
                           kvw * R, 0.0f, b.Ptr<float>(kAttn), I(heads * vd), vd);
}

// out += down(silu(gate x) * up x).
absl::Status Mistral4Model::Mlp(WeightView gate, WeightView up, WeightView down, std::int64_t inter, const float* x,
                                std::int64_t rows, float* out, Batch& b) const {
  Device& dev = *b.dev;
  const std::int64_t H = config_.hidden_size;
  SIROCCO_ASSIGN_OR_RETURN(float* g, b.Get<float>(kT0, rows * inter));
  SIROCCO_ASSIGN_OR_RETURN(float* u, b.Get<float>(kT1, rows * inter));
  SIROCCO_RETURN_IF_ERROR(dev.GemmNt(I(rows), I(inter), I(H), x, I(H), gate, I(H), 0.0f, g, I(inter)));
  SIROCCO_RETURN_IF_ERROR(dev.GemmNt(I(rows), I(inter), I(H), x, I(H), up, I(H), 0.0f, u, I(inter)));
  SIROCCO_RETURN_IF_ERROR(dev.SiluMul(I(rows), I(inter), g, I(inter), u, I(inter), g, I(inter)));
  return dev.GemmNt(I(rows), I(H), I(inter), g, I(inter), down, I(inter), 1.0f, out, I(H));
}

// x += routed experts (grouped by expert, one product per expert) + shared expert.
absl::Status Mistral4Model::Moe(std::int64_t layer, Batch& b) const {
  const ModelConfig& c = config_;
  const DeviceWeights::Layer& dl = dw_->layers[Z(layer)];
  Device& dev = *b.dev;
  const std::int64_t T = b.num_tokens, H = c.hidden_size, E = c.n_routed_experts;
  const std::int64_t K = c.num_experts_per_tok, I2 = c.moe_intermediate_size, A = T * K;
  const float* h = b.Ptr<float>(kH);
  float* x = b.Ptr<float>(kX);
  SIROCCO_ASSIGN_OR_RETURN(float* router_logits, b.Get<float>(kRouter, T * E));
  SIROCCO_ASSIGN_OR_RETURN(std::int32_t * ids, b.Get<std::int32_t>(kExpertIds, A));
  SIROCCO_ASSIGN_OR_RETURN(float* weights, b.Get<float>(kExpertWeights, A));
  SIROCCO_ASSIGN_OR_RETURN(std::int32_t * counts, b.Get<std::int32_t>(kCounts, E));
  SIROCCO_ASSIGN_OR_RETURN(std::int32_t * offsets, b.Get<std::int32_t>(kOffsets, E + 1));
  SIROCCO_ASSIGN_OR_RETURN(std::int32_t * sorted, b.Get<std::int32_t>(kSorted, A));
  SIROCCO_ASSIGN_OR_RETURN(std::int32_t * position, b.Get<std::int32_t>(kPosition, A));
  SIROCCO_ASSIGN_OR_RETURN(float* xs, b.Get<float>(kXs, A * H));
  SIROCCO_ASSIGN_OR_RETURN(float* gu, b.Get<float>(kGu, A * 2 * I2));
  SIROCCO_ASSIGN_OR_RETURN(float* ys, b.Get<float>(kYs, A * H));

  SIROCCO_RETURN_IF_ERROR(dev.GemmNt(I(T), I(E), I(H), h, I(H), dl.router, I(H), 0.0f, router_logits, I(E)));
  kernels::RouterParams rp;
  rp.num_tokens = I(T);
  rp.num_experts = I(E);
  rp.num_groups = I(c.n_group);
  rp.topk_group = I(c.topk_group);
  rp.top_k = I(K);
  rp.normalize = c.norm_topk_prob;
  rp.scaling = static_cast<float>(c.routed_scaling_factor);
  rp.logits = router_logits;
  rp.expert_ids = ids;
  rp.expert_weights = weights;
  SIROCCO_RETURN_IF_ERROR(dev.RouteTopk(rp));
  SIROCCO_RETURN_IF_ERROR(dev.MoeDispatch(I(T), I(K), I(E), ids, counts, offsets, sorted, position));
  SIROCCO_RETURN_IF_ERROR(dev.MoeGatherRows(I(A), I(H), h, I(H), sorted, I(K), xs, I(H)));
  // Each expert's rows: gate and up in one product ([2 * I2, H], gate rows
  // first), SwiGLU in place, then down.
  SIROCCO_RETURN_IF_ERROR(dev.GroupedGemmNt(I(E), I(A), I(2 * I2), I(H), xs, I(H), offsets, dl.experts_gate_up, I(H),
                                            2 * I2 * H, gu, I(2 * I2)));
  SIROCCO_RETURN_IF_ERROR(dev.SiluMul(I(A), I(I2), gu, I(2 * I2), gu + I2, I(2 * I2), gu, I(2 * I2)));
  SIROCCO_RETURN_IF_ERROR(
      dev.GroupedGemmNt(I(E), I(A), I(H), I(I2), gu, I(2 * I2), offsets, dl.experts_down, I(I2), H * I2, ys, I(H)));
  SIROCCO_RETURN_IF_ERROR(dev.MoeCombine(I(T), I(K), I(H), ys, I(H), position, weights, true, x, I(H)));
  if (c.n_shared_experts > 0) {
    SIROCCO_RETURN_IF_ERROR(Mlp(dl.gate, dl.up, dl.down, I2 * c.n_shared_experts, h, T, x, b));
  }
  return absl::OkStatus();
}

}  // namespace sirocco::engine
