#include "engine/mistral4_weights.h"

#include <algorithm>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "absl/strings/str_join.h"
#include "engine/dtype.h"
#include "engine/parallel.h"
#include "engine/safetensors.h"

namespace sirocco::engine {
namespace {

std::string ShapeString(const std::vector<std::int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::int64_t CeilDiv(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// Resolves tensor names across checkpoint layouts and converts to float32.
class Reader {
 public:
  Reader(const Checkpoint& ckpt, const ModelConfig& config) : ckpt_(ckpt), config_(config) {}

  absl::Status DetectPrefix() {
    for (const char* prefix : {"model.", "model.language_model.", "language_model.model."}) {
      if (ckpt_.Find(absl::StrCat(prefix, "embed_tokens.weight")) != nullptr) {
        prefix_ = prefix;
        return absl::OkStatus();
      }
    }
    return absl::NotFoundError(
        "checkpoint is missing tensor 'model.embed_tokens.weight' (also looked for "
        "'model.language_model.embed_tokens.weight' and 'language_model.model.embed_tokens.weight')");
  }

  std::string Name(std::string_view suffix) const { return prefix_ + std::string(suffix); }
  bool Has(const std::string& name) const { return ckpt_.Find(name) != nullptr; }

  // Loads `name` of exactly `shape` into `out` (resized) as float32; a large
  // tensor is widened on every core unless `parallel` is false (the caller
  // already runs loads in parallel).
  absl::Status Load(const std::string& name, const std::vector<std::int64_t>& shape, std::vector<float>* out,
                    bool parallel = true) {
    const TensorInfo* t = ckpt_.Find(name);
    if (t == nullptr) return absl::NotFoundError(absl::StrCat("checkpoint is missing tensor '", name, "'"));
    if (t->shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has shape ", ShapeString(t->shape),
                                                     ", expected ", ShapeString(shape)));
    }
    out->resize(static_cast<std::size_t>(t->numel()));
    switch (t->dtype) {
      case DType::kF32:
      case DType::kBF16:
      case DType::kF16:
        Widen(*t, out->data(), parallel);
        return absl::OkStatus();
      case DType::kF8E4M3:
        Widen(*t, out->data(), parallel);
        return ApplyFp8Scale(*t, out->data(), parallel);
      default:
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has dtype ", DTypeName(t->dtype),
                                                       ", expected F32, BF16, F16 or F8_E4M3"));
    }
  }

  absl::Status LoadMatrix(const std::string& name, std::int64_t rows, std::int64_t cols, Matrix* m) {
    m->rows = rows;
    m->cols = cols;
    return Load(name, {rows, cols}, &m->data);
  }

 private:
  // ConvertToFloat32 of a float tensor (the caller checked the dtype), in
  // chunks of 1M elements spread over the cores.
  static void Widen(const TensorInfo& t, float* out, bool parallel) {
    constexpr std::int64_t kChunk = std::int64_t{1} << 20;
    const std::int64_t n = t.numel(), chunks = (n + kChunk - 1) / kChunk;
    const std::size_t size = DTypeSize(t.dtype);
    ParallelFor(chunks, parallel ? n : 0, [&](std::int64_t i) {
      const std::int64_t begin = i * kChunk, count = std::min(kChunk, n - begin);
      (void)ConvertToFloat32(t.dtype, t.data + begin * static_cast<std::int64_t>(size),
                             static_cast<std::size_t>(count), out + begin);
    });
  }

  // FP8 weights carry either block scales `<name>_scale_inv` (multiply each
  // [br, bc] block) or a per-tensor / per-row `<stem>.weight_scale`.
  absl::Status ApplyFp8Scale(const TensorInfo& t, float* w, bool parallel) {
    std::string scale_name = absl::StrCat(t.name, "_scale_inv");
    const TensorInfo* s = ckpt_.Find(scale_name);
    if (s == nullptr && EndsWith(t.name, ".weight")) {
      scale_name = absl::StrCat(t.name, "_scale");
      s = ckpt_.Find(scale_name);
    }
    if (s == nullptr) {
      return absl::NotFoundError(absl::StrCat("FP8 tensor '", t.name, "' has no scale tensor ('", t.name,
                                              "_scale_inv' or '", t.name, "_scale')"));
    }
    std::vector<float> scale(static_cast<std::size_t>(s->numel()));
    if (auto st = ConvertToFloat32(s->dtype, s->data, scale.size(), scale.data()); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("scale tensor '", scale_name, "' has dtype ",
                                                     DTypeName(s->dtype), ", expected a float type"));
    }
    const auto rank = t.shape.size();
    if (rank < 2) return absl::InvalidArgumentError(absl::StrCat("FP8 tensor '", t.name, "' must be 2-D or 3-D"));
    const std::int64_t rows = t.shape[rank - 2], cols = t.shape[rank - 1];
    const std::int64_t batch = t.numel() / (rows * cols);
    if (s->numel() == 1) {
      for (std::int64_t i = 0; i < t.numel(); ++i) w[i] *= scale[0];
      return absl::OkStatus();
    }
    if (s->shape.size() != rank) {
      return absl::InvalidArgumentError(absl::StrCat("scale tensor '", scale_name, "' has shape ",
                                                     ShapeString(s->shape), " for FP8 tensor of shape ",
                                                     ShapeString(t.shape)));
    }
    const std::int64_t sr = s->shape[rank - 2], sc = s->shape[rank - 1];
    std::int64_t br = CeilDiv(rows, sr), bc = CeilDiv(cols, sc);
    if (config_.quantization.weight_block_size.size() == 2) {
      br = config_.quantization.weight_block_size[0];
      bc = config_.quantization.weight_block_size[1];
    }
    if (CeilDiv(rows, br) != sr || CeilDiv(cols, bc) != sc || s->numel() != batch * sr * sc) {
      return absl::InvalidArgumentError(absl::StrCat("scale tensor '", scale_name, "' has shape ",
                                                     ShapeString(s->shape), ", which does not tile ",
                                                     ShapeString(t.shape), " in blocks of [", br, ", ", bc, "]"));
    }
    ParallelFor(batch * rows, parallel ? t.numel() : 0, [&](std::int64_t i) {
      const std::int64_t b = i / rows, r = i % rows;
      float* row = w + i * cols;
      const float* srow = scale.data() + (b * sr + r / br) * sc;
      for (std::int64_t c = 0; c < cols; ++c) row[c] *= srow[c / bc];
    });
    return absl::OkStatus();
  }

  const Checkpoint& ckpt_;
  const ModelConfig& config_;
  std::string prefix_;
};

absl::Status LoadMlp(Reader& r, const std::string& stem, std::int64_t hidden, std::int64_t inter, MlpWeights* m) {
  SIROCCO_RETURN_IF_ERROR(r.LoadMatrix(r.Name(stem + ".gate_proj.weight"), inter, hidden, &m->gate));
  SIROCCO_RETURN_IF_ERROR(r.LoadMatrix(r.Name(stem + ".up_proj.weight"), inter, hidden, &m->up));
  return r.LoadMatrix(r.Name(stem + ".down_proj.weight"), hidden, inter, &m->down);
}

absl::Status LoadExperts(Reader& r, const std::string& stem, const ModelConfig& c, MoeWeights* moe) {
  const std::int64_t e = c.n_routed_experts, h = c.hidden_size, i = c.moe_intermediate_size;
  const std::string stacked = r.Name(stem + ".experts.gate_up_proj");
  if (r.Has(stacked)) {
    SIROCCO_RETURN_IF_ERROR(r.Load(stacked, {e, 2 * i, h}, &moe->gate_up));
    return r.Load(r.Name(stem + ".experts.down_proj"), {e, h, i}, &moe->down);
  }
  // One tensor per expert, as in the released checkpoint: experts are read
  // in parallel (a real layer has 128 of them, 25M values each).
  moe->gate_up.assign(static_cast<std::size_t>(e * 2 * i * h), 0.0f);
  moe->down.assign(static_cast<std::size_t>(e * h * i), 0.0f);
  std::vector<absl::Status> status(static_cast<std::size_t>(e));
  ParallelFor(e, e * 3 * i * h, [&](std::int64_t x) {
    const std::string base = r.Name(absl::StrCat(stem, ".experts.", x));
    float* gu = moe->gate_up.data() + x * 2 * i * h;
    std::vector<float> tmp;
    absl::Status& st = status[static_cast<std::size_t>(x)];
    st = r.Load(base + ".gate_proj.weight", {i, h}, &tmp, false);
    if (!st.ok()) return;
    std::copy(tmp.begin(), tmp.end(), gu);
    st = r.Load(base + ".up_proj.weight", {i, h}, &tmp, false);
    if (!st.ok()) return;
    std::copy(tmp.begin(), tmp.end(), gu + i * h);
    st = r.Load(base + ".down_proj.weight", {h, i}, &tmp, false);
    if (!st.ok()) return;
    std::copy(tmp.begin(), tmp.end(), moe->down.data() + x * h * i);
  });
  // The first failing expert's error, as a one-by-one load would report.
  for (const absl::Status& st : status) SIROCCO_RETURN_IF_ERROR(st);
  return absl::OkStatus();
}

absl::Status LoadLayer(Reader& r, const ModelConfig& c, std::int64_t l, LayerWeights* lw) {
  const std::string p = absl::StrCat("layers.", l);
  const std::int64_t h = c.hidden_size, heads = c.num_attention_heads;
  SIROCCO_RETURN_IF_ERROR(r.Load(r.Name(p + ".input_layernorm.weight"), {h}, &lw->input_norm));
  SIROCCO_RETURN_IF_ERROR(r.Load(r.Name(p + ".post_attention_layernorm.weight"), {h}, &lw->post_norm));
  AttentionWeights& a = lw->attn;
  const std::string at = p + ".self_attn";
  if (c.q_lora_rank > 0) {
    SIROCCO_RETURN_IF_ERROR(r.LoadMatrix(r.Name(at + ".q_a_proj.weight"), c.q_lora_rank, h, &a.q_a_proj));
    SIROCCO_RETURN_IF_ERROR(r.Load(r.Name(at + ".q_a_layernorm.weight"), {c.q_lora_rank}, &a.q_a_norm));
    SIROCCO_RETURN_IF_ERROR(
        r.LoadMatrix(r.Name(at + ".q_b_proj.weight"), heads * c.qk_head_dim(), c.q_lora_rank, &a.q_b_proj));
  } else {
    SIROCCO_RETURN_IF_ERROR(r.LoadMatrix(r.Name(at + ".q_proj.weight"), heads * c.qk_head_dim(), h, &a.q_proj));
  }
  SIROCCO_RETURN_IF_ERROR(r.LoadMatrix(r.Name(at + ".kv_a_proj_with_mqa.weight"), c.kv_entry_dim(), h, &a.kv_a_proj));
  SIROCCO_RETURN_IF_ERROR(r.Load(r.Name(at + ".kv_a_layernorm.weight"), {c.kv_lora_rank}, &a.kv_a_norm));
  SIROCCO_RETURN_IF_ERROR(r.LoadMatrix(r.Name(at + ".kv_b_proj.weight"),
                                       heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank, &a.kv_b_proj));
  SIROCCO_RETURN_IF_ERROR(r.LoadMatrix(r.Name(at + ".o_proj.weight"), h, heads * c.v_head_dim, &a.o_proj));
  lw->is_moe = c.is_moe_layer(l);
  const std::string mlp = p + ".mlp";
  if (!lw->is_moe) return LoadMlp(r, mlp, h, c.intermediate_size, &lw->dense);
  SIROCCO_RETURN_IF_ERROR(r.LoadMatrix(r.Name(mlp + ".gate.weight"), c.n_routed_experts, h, &lw->moe.router));
  SIROCCO_RETURN_IF_ERROR(LoadExperts(r, mlp, c, &lw->moe));
  if (c.n_shared_experts > 0) {
    SIROCCO_RETURN_IF_ERROR(
        LoadMlp(r, mlp + ".shared_experts", h, c.moe_intermediate_size * c.n_shared_experts, &lw->moe.shared));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LoadCheckpointTensor(const Checkpoint& checkpoint, const ModelConfig& config, const std::string& name,
                                  const std::vector<std::int64_t>& shape, std::vector<float>* out) {
  Reader r(checkpoint, config);
  return r.Load(name, shape, out);
}

absl::StatusOr<std::unique_ptr<Mistral4Weights>> LoadMistral4Weights(const Checkpoint& checkpoint,
                                                                     const ModelConfig& c) {
  std::vector<LayerWeights> layers(static_cast<std::size_t>(c.num_hidden_layers));
  SIROCCO_ASSIGN_OR_RETURN(auto w,
                           LoadMistral4WeightsByLayer(checkpoint, c, [&](std::int64_t l, LayerWeights& lw) {
                             layers[static_cast<std::size_t>(l)] = std::move(lw);
                             return absl::OkStatus();
                           }));
  w->layers = std::move(layers);
  return w;
}

absl::StatusOr<std::unique_ptr<Mistral4Weights>> LoadMistral4WeightsByLayer(const Checkpoint& checkpoint,
                                                                            const ModelConfig& c,
                                                                            const LayerSink& on_layer) {
  Reader r(checkpoint, c);
  SIROCCO_RETURN_IF_ERROR(r.DetectPrefix());
  auto w = std::make_unique<Mistral4Weights>();
  SIROCCO_RETURN_IF_ERROR(r.LoadMatrix(r.Name("embed_tokens.weight"), c.vocab_size, c.hidden_size, &w->embed));
  w->layers.resize(static_cast<std::size_t>(c.num_hidden_layers));
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights layer;
    SIROCCO_RETURN_IF_ERROR(LoadLayer(r, c, l, &layer));
    w->layers[static_cast<std::size_t>(l)].is_moe = layer.is_moe;
    SIROCCO_RETURN_IF_ERROR(on_layer(l, layer));
  }
  SIROCCO_RETURN_IF_ERROR(r.Load(r.Name("norm.weight"), {c.hidden_size}, &w->final_norm));
  std::string head;
  for (const char* name : {"lm_head.weight", "language_model.lm_head.weight"}) {
    if (r.Has(name)) head = name;
  }
  if (!head.empty()) {
    SIROCCO_RETURN_IF_ERROR(r.LoadMatrix(head, c.vocab_size, c.hidden_size, &w->lm_head));
  } else if (!c.tie_word_embeddings) {
    return absl::NotFoundError("checkpoint is missing tensor 'lm_head.weight' (tie_word_embeddings is false)");
  }
  return w;
}

std::vector<TensorSpec> Mistral4TensorSpecs(const ModelConfig& c) {
  std::vector<TensorSpec> specs;
  const std::int64_t h = c.hidden_size, heads = c.num_attention_heads;
  auto add = [&](std::string name, std::vector<std::int64_t> shape) {
    specs.push_back(TensorSpec{std::move(name), std::move(shape)});
  };
  add("model.embed_tokens.weight", {c.vocab_size, h});
  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l);
    add(p + ".input_layernorm.weight", {h});
    add(p + ".post_attention_layernorm.weight", {h});
    const std::string a = p + ".self_attn";
    if (c.q_lora_rank > 0) {
      add(a + ".q_a_proj.weight", {c.q_lora_rank, h});
      add(a + ".q_a_layernorm.weight", {c.q_lora_rank});
      add(a + ".q_b_proj.weight", {heads * c.qk_head_dim(), c.q_lora_rank});
    } else {
      add(a + ".q_proj.weight", {heads * c.qk_head_dim(), h});
    }
    add(a + ".kv_a_proj_with_mqa.weight", {c.kv_entry_dim(), h});
    add(a + ".kv_a_layernorm.weight", {c.kv_lora_rank});
    add(a + ".kv_b_proj.weight", {heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank});
    add(a + ".o_proj.weight", {h, heads * c.v_head_dim});
    const std::string m = p + ".mlp";
    if (!c.is_moe_layer(l)) {
      add(m + ".gate_proj.weight", {c.intermediate_size, h});
      add(m + ".up_proj.weight", {c.intermediate_size, h});
      add(m + ".down_proj.weight", {h, c.intermediate_size});
      continue;
    }
    add(m + ".gate.weight", {c.n_routed_experts, h});
    add(m + ".experts.gate_up_proj", {c.n_routed_experts, 2 * c.moe_intermediate_size, h});
    add(m + ".experts.down_proj", {c.n_routed_experts, h, c.moe_intermediate_size});
    if (c.n_shared_experts > 0) {
      const std::int64_t si = c.moe_intermediate_size * c.n_shared_experts;
      add(m + ".shared_experts.gate_proj.weight", {si, h});
      add(m + ".shared_experts.up_proj.weight", {si, h});
      add(m + ".shared_experts.down_proj.weight", {h, si});
    }
  }
  add("model.norm.weight", {h});
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, h});
  return specs;
}

}  // namespace sirocco::engine
