#include "engine/mistral4.h"

#include <algorithm>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/safetensors.h"
#include "engine/status_macros.h"

namespace sirocco::engine {

// The q_a / kv_a norms are built with the module default eps in the reference,
// not config.rms_norm_eps.
constexpr float kLatentNormEps = 1e-6f;

// Token layout of one Forward call plus its scratch tensors. Tokens of all
// items are concatenated: row t belongs to item item_of[t] at position pos[t].
struct Mistral4Model::Batch {
  std::int64_t num_tokens = 0;
  std::vector<std::int32_t> pos;          // [T]
  std::vector<std::int32_t> item_of;      // [T]
  std::vector<std::int64_t> item_begin;   // [items + 1]
  std::span<const ForwardItem> items;

  std::vector<float> x;        // [T, hidden] residual stream
  std::vector<float> h;        // [T, hidden] normed input of a sub-block
  std::vector<float> q;        // [T, heads, qk_head_dim]
  std::vector<float> q_a;      // [T, q_lora_rank]
  std::vector<float> kv;       // [T, kv_rank + rope]
  std::vector<float> attn;     // [T, heads, v_head_dim]
  std::vector<float> tmp0, tmp1, tmp2, tmp3;  // op-local scratch
};

namespace {
float* Data(std::vector<float>& v, std::size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}
int I(std::int64_t v) { return static_cast<int>(v); }
}  // namespace

Mistral4Model::Mistral4Model(const ModelConfig& config, std::unique_ptr<Mistral4Weights> weights,
                             const ModelOptions& options)
    : config_(config), w_(std::move(weights)), k_(kernels::Get(options.backend)), rope_(ComputeRopeTables(config)) {}

absl::StatusOr<std::unique_ptr<Mistral4Model>> Mistral4Model::Load(const std::string& dir,
                                                                  const ModelOptions& options) {
  SIROCCO_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir + "/config.json"));
  SIROCCO_ASSIGN_OR_RETURN(auto checkpoint, Checkpoint::Open(dir));
  SIROCCO_ASSIGN_OR_RETURN(auto weights, LoadMistral4Weights(*checkpoint, config));
  return FromWeights(config, std::move(weights), options);
}

absl::StatusOr<std::unique_ptr<Mistral4Model>> Mistral4Model::FromWeights(const ModelConfig& config,
                                                                          std::unique_ptr<Mistral4Weights> weights,
                                                                          const ModelOptions& options) {
  SIROCCO_RETURN_IF_ERROR(ValidateModelConfig(config));
  if (!kernels::Available(options.backend)) {
    return absl::FailedPreconditionError(
        absl::StrCat("kernel backend ", kernels::BackendName(options.backend), " is not available on this machine"));
  }
  if (weights == nullptr || static_cast<std::int64_t>(weights->layers.size()) != config.num_hidden_layers) {
    return absl::InvalidArgumentError("weights do not match the config's num_hidden_layers");
  }
  return std::unique_ptr<Mistral4Model>(new Mistral4Model(config, std::move(weights), options));
}

KvPoolOptions Mistral4Model::PoolOptions(std::int64_t num_blocks, std::int64_t block_size) const {
  return KvPoolOptions{config_.num_hidden_layers, num_blocks, block_size, config_.kv_entry_dim()};
}

absl::Status Mistral4Model::Forward(std::span<const ForwardItem> items, KvPool& pool, AttentionForm form,
                                    std::vector<float>* logits, const LayerDoneFn& on_layer_done) const {
  const ModelConfig& c = config_;
  if (pool.entry_dim() != c.kv_entry_dim() || pool.num_layers() != c.num_hidden_layers) {
    return absl::InvalidArgumentError("KV pool layout does not match the model");
  }
  Batch b;
  b.items = items;
  b.item_begin.push_back(0);
  std::int64_t logit_rows = 0;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const ForwardItem& it = items[i];
    if (it.tokens.empty()) return absl::InvalidArgumentError(absl::StrCat("item ", i, " has no tokens"));
    if (it.blocks == nullptr || it.blocks->pool() != &pool) {
      return absl::InvalidArgumentError(absl::StrCat("item ", i, " has no block table in this pool"));
    }
    const std::int64_t end = it.start_pos + static_cast<std::int64_t>(it.tokens.size());
    if (it.start_pos < 0 || end > it.blocks->capacity()) {
      return absl::InvalidArgumentError(absl::StrCat("item ", i, ": positions up to ", end,
                                                     " exceed its KV capacity ", it.blocks->capacity()));
    }
    if (end > c.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("item ", i, ": ", end, " tokens exceed max_position_embeddings ",
                                                     c.max_position_embeddings));
    }
    for (std::size_t j = 0; j < it.tokens.size(); ++j) {
      const std::int32_t tok = it.tokens[j];
      if (tok < 0 || tok >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("item ", i, ": token id ", tok, " is outside the vocabulary [0, ", c.vocab_size, ")"));
      }
      b.pos.push_back(static_cast<std::int32_t>(it.start_pos + static_cast<std::int64_t>(j)));
      b.item_of.push_back(static_cast<std::int32_t>(i));
    }
    b.item_begin.push_back(static_cast<std::int64_t>(b.pos.size()));
    logit_rows += it.all_logits ? static_cast<std::int64_t>(it.tokens.size()) : 1;
  }
  const std::int64_t T = b.num_tokens = static_cast<std::int64_t>(b.pos.size());
  const std::int64_t H = c.hidden_size;

  // Embedding.
  float* x = Data(b.x, static_cast<std::size_t>(T * H));
  for (std::int64_t t = 0, r = 0; t < T; ++r) {
    for (std::int32_t tok : items[static_cast<std::size_t>(r)].tokens) {
      std::memcpy(x + t * H, w_->embed.ptr() + tok * H, sizeof(float) * static_cast<std::size_t>(H));
      ++t;
    }
  }

  for (std::int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& lw = w_->layers[static_cast<std::size_t>(l)];
    float* h = Data(b.h, static_cast<std::size_t>(T * H));
    k_.rms_norm(I(T), I(H), x, I(H), lw.input_norm.data(), static_cast<float>(c.rms_norm_eps), h, I(H));
    Attention(l, b, pool, form);
    if (on_layer_done) on_layer_done(l);
    // x += attn · o_proj^T
    k_.gemm_nt(I(T), I(H), I(c.num_attention_heads * c.v_head_dim), b.attn.data(),
               I(c.num_attention_heads * c.v_head_dim), lw.attn.o_proj.ptr(), I(lw.attn.o_proj.cols), 1.0f, x, I(H));
    k_.rms_norm(I(T), I(H), x, I(H), lw.post_norm.data(), static_cast<float>(c.rms_norm_eps), h, I(H));
    if (lw.is_moe) {
      Moe(lw, b);
    } else {
      Mlp(lw.dense, c.intermediate_size, h, T, 1.0f, x, b);
    }
  }

  // Final norm and LM head on the rows that want logits.
  std::vector<float> rows(static_cast<std::size_t>(logit_rows * H));
  std::int64_t r = 0;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const std::int64_t begin = items[i].all_logits ? b.item_begin[i] : b.item_begin[i + 1] - 1;
    for (std::int64_t t = begin; t < b.item_begin[i + 1]; ++t, ++r) {
      std::memcpy(rows.data() + r * H, x + t * H, sizeof(float) * static_cast<std::size_t>(H));
    }
  }
  k_.rms_norm(I(logit_rows), I(H), rows.data(), I(H), w_->final_norm.data(), static_cast<float>(c.rms_norm_eps),
              rows.data(), I(H));
  logits->resize(static_cast<std::size_t>(logit_rows * c.vocab_size));
  const Matrix& head = w_->head();
  k_.gemm_nt(I(logit_rows), I(c.vocab_size), I(H), rows.data(), I(H), head.ptr(), I(H), 0.0f, logits->data(),
             I(c.vocab_size));
  return absl::OkStatus();
}

void Mistral4Model::Attention(std::int64_t layer, Batch& b, KvPool& pool, AttentionForm form) const {
  const ModelConfig& c = config_;
  const AttentionWeights& a = w_->layers[static_cast<std::size_t>(layer)].attn;
  const std::int64_t T = b.num_tokens, H = c.hidden_size, heads = c.num_attention_heads;
  const std::int64_t qk = c.qk_head_dim(), nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
  const std::int64_t R = c.kv_lora_rank, E = c.kv_entry_dim();

  // Queries: [T, heads, qk].
  float* q = Data(b.q, static_cast<std::size_t>(T * heads * qk));
  if (c.q_lora_rank > 0) {
    float* qa = Data(b.q_a, static_cast<std::size_t>(T * c.q_lora_rank));
    k_.gemm_nt(I(T), I(c.q_lora_rank), I(H), b.h.data(), I(H), a.q_a_proj.ptr(), I(H), 0.0f, qa, I(c.q_lora_rank));
    k_.rms_norm(I(T), I(c.q_lora_rank), qa, I(c.q_lora_rank), a.q_a_norm.data(), kLatentNormEps, qa,
                I(c.q_lora_rank));
    k_.gemm_nt(I(T), I(heads * qk), I(c.q_lora_rank), qa, I(c.q_lora_rank), a.q_b_proj.ptr(), I(c.q_lora_rank),
               0.0f, q, I(heads * qk));
  } else {
    k_.gemm_nt(I(T), I(heads * qk), I(H), b.h.data(), I(H), a.q_proj.ptr(), I(H), 0.0f, q, I(heads * qk));
  }
  // Latent and rope key: [T, R + rope]; norm the latent, rotate the key.
  float* kv = Data(b.kv, static_cast<std::size_t>(T * E));
  k_.gemm_nt(I(T), I(E), I(H), b.h.data(), I(H), a.kv_a_proj.ptr(), I(H), 0.0f, kv, I(E));
  k_.rms_norm(I(T), I(R), kv, I(E), a.kv_a_norm.data(), kLatentNormEps, kv, I(E));
  k_.rope_interleaved(I(T), 1, I(rope), kv + R, I(E), b.pos.data(), rope_.inv_freq.data(), rope_.attention_factor);
  k_.rope_interleaved(I(T * heads), I(heads), I(rope), q + nope, I(qk), b.pos.data(), rope_.inv_freq.data(),
                      rope_.attention_factor);
  // llama-4 position-dependent query scale (whole query, all heads).
  if (c.rope.llama_4_scaling_beta) {
    for (std::int64_t t = 0; t < T; ++t) {
      const float s = Llama4QueryScale(c, b.pos[static_cast<std::size_t>(t)]);
      if (s == 1.0f) continue;
      float* row = q + t * heads * qk;
      for (std::int64_t i = 0; i < heads * qk; ++i) row[i] *= s;
    }
  }
  // Write every new token's entry into its sequence's blocks.
  const std::int64_t bs = pool.block_size();
  for (std::int64_t t = 0; t < T; ++t) {
    const ForwardItem& it = b.items[static_cast<std::size_t>(b.item_of[static_cast<std::size_t>(t)])];
    const std::int64_t p = b.pos[static_cast<std::size_t>(t)];
    float* dst = pool.entry(layer, it.blocks->block(p / bs), p % bs);
    std::memcpy(dst, kv + t * E, sizeof(float) * static_cast<std::size_t>(E));
  }
  Data(b.attn, static_cast<std::size_t>(T * heads * c.v_head_dim));
  if (form == AttentionForm::kExpanded) {
    AttentionExpanded(layer, b, pool);
  } else {
    AttentionAbsorbed(layer, b, pool);
  }
}

void Mistral4Model::AttentionExpanded(std::int64_t layer, Batch& b, KvPool& pool) const {
  const ModelConfig& c = config_;
  const AttentionWeights& a = w_->layers[static_cast<std::size_t>(layer)].attn;
  const std::int64_t heads = c.num_attention_heads, qk = c.qk_head_dim(), nope = c.qk_nope_head_dim;
  const std::int64_t rope = c.qk_rope_head_dim, vd = c.v_head_dim, R = c.kv_lora_rank, E = c.kv_entry_dim();
  const std::int64_t kvw = nope + vd, bs = pool.block_size();
  for (std::size_t i = 0; i < b.items.size(); ++i) {
    const ForwardItem& it = b.items[i];
    const std::int64_t n_q = static_cast<std::int64_t>(it.tokens.size());
    const std::int64_t n_k = it.start_pos + n_q;
    // Gather the sequence's cached entries [n_k, E].
    float* ent = Data(b.tmp0, static_cast<std::size_t>(n_k * E));
    for (std::int64_t j = 0; j < n_k; ++j) {
      std::memcpy(ent + j * E, pool.entry(layer, it.blocks->block(j / bs), j % bs),
                  sizeof(float) * static_cast<std::size_t>(E));
    }
    // Expand: [n_k, heads, nope + v].
    float* expd = Data(b.tmp1, static_cast<std::size_t>(n_k * heads * kvw));
    k_.gemm_nt(I(n_k), I(heads * kvw), I(R), ent, I(E), a.kv_b_proj.ptr(), I(R), 0.0f, expd, I(heads * kvw));
    float* keys = Data(b.tmp2, static_cast<std::size_t>(n_k * heads * qk));
    float* vals = Data(b.tmp3, static_cast<std::size_t>(n_k * heads * vd));
    for (std::int64_t j = 0; j < n_k; ++j) {
      for (std::int64_t hd = 0; hd < heads; ++hd) {
        const float* src = expd + (j * heads + hd) * kvw;
        float* kd = keys + (j * heads + hd) * qk;
        std::memcpy(kd, src, sizeof(float) * static_cast<std::size_t>(nope));
        std::memcpy(kd + nope, ent + j * E + R, sizeof(float) * static_cast<std::size_t>(rope));
        std::memcpy(vals + (j * heads + hd) * vd, src + nope, sizeof(float) * static_cast<std::size_t>(vd));
      }
    }
    kernels::AttentionParams p;
    p.num_queries = I(n_q);
    p.num_keys = I(n_k);
    p.q_offset = I(it.start_pos);
    p.num_heads = I(heads);
    p.qk_dim = I(qk);
    p.v_dim = I(vd);
    p.q = b.q.data() + b.item_begin[i] * heads * qk;
    p.k = keys;
    p.v = vals;
    p.scale = rope_.softmax_scale;
    p.out = b.attn.data() + b.item_begin[i] * heads * vd;
    k_.attention(p);
  }
}

void Mistral4Model::AttentionAbsorbed(std::int64_t layer, Batch& b, KvPool& pool) const {
  const ModelConfig& c = config_;
  const AttentionWeights& a = w_->layers[static_cast<std::size_t>(layer)].attn;
  const std::int64_t T = b.num_tokens, heads = c.num_attention_heads, qk = c.qk_head_dim();
  const std::int64_t nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, vd = c.v_head_dim;
  const std::int64_t R = c.kv_lora_rank, kvw = nope + vd;
  // Fold W_uk into the query: q_lat[t, h] = q_nope[t, h] · W_uk[h]  ([nope] x [nope, R]).
  float* q_lat = Data(b.tmp0, static_cast<std::size_t>(T * heads * R));
  float* q_rope = Data(b.tmp1, static_cast<std::size_t>(T * heads * rope));
  for (std::int64_t hd = 0; hd < heads; ++hd) {
    k_.gemm_nn(I(T), I(R), I(nope), b.q.data() + hd * qk, I(heads * qk), a.kv_b_proj.ptr() + hd * kvw * R, I(R),
               0.0f, q_lat + hd * R, I(heads * R));
  }
  for (std::int64_t t = 0; t < T * heads; ++t) {
    std::memcpy(q_rope + t * rope, b.q.data() + t * qk + nope, sizeof(float) * static_cast<std::size_t>(rope));
  }
  std::vector<const std::int32_t*> tables(static_cast<std::size_t>(T));
  std::vector<std::int32_t> ctx(static_cast<std::size_t>(T));
  for (std::int64_t t = 0; t < T; ++t) {
    const auto st = static_cast<std::size_t>(t);
    tables[st] = b.items[static_cast<std::size_t>(b.item_of[st])].blocks->data();
    ctx[st] = b.pos[st] + 1;
  }
  float* out_lat = Data(b.tmp2, static_cast<std::size_t>(T * heads * R));
  kernels::MlaAttentionParams p;
  p.num_queries = I(T);
  p.num_heads = I(heads);
  p.kv_rank = I(R);
  p.rope_dim = I(rope);
  p.block_size = I(pool.block_size());
  p.q_lat = q_lat;
  p.q_rope = q_rope;
  p.cache = pool.layer(layer);
  p.block_tables = tables.data();
  p.ctx_lens = ctx.data();
  p.scale = rope_.softmax_scale;
  p.out = out_lat;
  k_.mla_attention(p);
  // Unfold W_uv: attn[t, h] = out_lat[t, h] · W_uv[h]^T  ([R] x [v, R]^T).
  for (std::int64_t hd = 0; hd < heads; ++hd) {
    k_.gemm_nt(I(T), I(vd), I(R), out_lat + hd * R, I(heads * R), a.kv_b_proj.ptr() + (hd * kvw + nope) * R, I(R),
               0.0f, b.attn.data() + hd * vd, I(heads * vd));
  }
}

void Mistral4Model::Mlp(const MlpWeights& w, std::int64_t inter, const float* x, std::int64_t rows, float beta,
                        float* out, Batch& b) const {
  const std::int64_t H = config_.hidden_size;
  float* g = Data(b.tmp0, static_cast<std::size_t>(rows * inter));
  float* u = Data(b.tmp1, static_cast<std::size_t>(rows * inter));
  k_.gemm_nt(I(rows), I(inter), I(H), x, I(H), w.gate.ptr(), I(H), 0.0f, g, I(inter));
  k_.gemm_nt(I(rows), I(inter), I(H), x, I(H), w.up.ptr(), I(H), 0.0f, u, I(inter));
  k_.silu_mul(I(rows), I(inter), g, I(inter), u, I(inter), g, I(inter));
  k_.gemm_nt(I(rows), I(H), I(inter), g, I(inter), w.down.ptr(), I(inter), beta, out, I(H));
}

void Mistral4Model::Moe(const LayerWeights& lw, Batch& b) const {
  const ModelConfig& c = config_;
  const std::int64_t T = b.num_tokens, H = c.hidden_size, E = c.n_routed_experts;
  const std::int64_t K = c.num_experts_per_tok, I2 = c.moe_intermediate_size;
  // Router.
  std::vector<float> router_logits(static_cast<std::size_t>(T * E));
  k_.gemm_nt(I(T), I(E), I(H), b.h.data(), I(H), lw.moe.router.ptr(), I(H), 0.0f, router_logits.data(), I(E));
  std::vector<std::int32_t> ids(static_cast<std::size_t>(T * K));
  std::vector<float> weights(static_cast<std::size_t>(T * K));
  kernels::RouterParams rp;
  rp.num_tokens = I(T);
  rp.num_experts = I(E);
  rp.num_groups = I(c.n_group);
  rp.topk_group = I(c.topk_group);
  rp.top_k = I(K);
  rp.normalize = c.norm_topk_prob;
  rp.scaling = static_cast<float>(c.routed_scaling_factor);
  rp.logits = router_logits.data();
  rp.expert_ids = ids.data();
  rp.expert_weights = weights.data();
  k_.route_topk(rp);

  // Group (token, weight) pairs by expert, tokens in order within an expert.
  std::vector<std::vector<std::pair<std::int32_t, float>>> by_expert(static_cast<std::size_t>(E));
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t j = 0; j < K; ++j) {
      const auto idx = static_cast<std::size_t>(t * K + j);
      by_expert[static_cast<std::size_t>(ids[idx])].emplace_back(static_cast<std::int32_t>(t), weights[idx]);
    }
  }
  std::vector<float> moe_out(static_cast<std::size_t>(T * H), 0.0f);
  std::vector<float> xe, gu, ye;
  for (std::int64_t e = 0; e < E; ++e) {
    const auto& list = by_expert[static_cast<std::size_t>(e)];
    if (list.empty()) continue;
    const std::int64_t n = static_cast<std::int64_t>(list.size());
    xe.resize(static_cast<std::size_t>(n * H));
    for (std::int64_t r = 0; r < n; ++r) {
      std::memcpy(xe.data() + r * H, b.h.data() + list[static_cast<std::size_t>(r)].first * H,
                  sizeof(float) * static_cast<std::size_t>(H));
    }
    gu.resize(static_cast<std::size_t>(n * 2 * I2));
    const float* w_gu = lw.moe.gate_up.data() + e * 2 * I2 * H;
    k_.gemm_nt(I(n), I(2 * I2), I(H), xe.data(), I(H), w_gu, I(H), 0.0f, gu.data(), I(2 * I2));
    k_.silu_mul(I(n), I(I2), gu.data(), I(2 * I2), gu.data() + I2, I(2 * I2), gu.data(), I(2 * I2));
    ye.resize(static_cast<std::size_t>(n * H));
    k_.gemm_nt(I(n), I(H), I(I2), gu.data(), I(2 * I2), lw.moe.down.data() + e * H * I2, I(I2), 0.0f, ye.data(),
               I(H));
    for (std::int64_t r = 0; r < n; ++r) {
      const auto& [t, wt] = list[static_cast<std::size_t>(r)];
      k_.axpy(I(H), wt, ye.data() + r * H, moe_out.data() + t * H);
    }
  }
  if (c.n_shared_experts > 0) {
    Mlp(lw.moe.shared, I2 * c.n_shared_experts, b.h.data(), T, 1.0f, moe_out.data(), b);
  }
  k_.axpy(I(T * H), 1.0f, moe_out.data(), b.x.data());
}

}  // namespace sirocco::engine
