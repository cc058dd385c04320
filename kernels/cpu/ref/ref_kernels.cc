// The scalar reference backend. This file is the spec every other backend is
// tested against, so it is written as plainly as possible: naive loops, float
// accumulation in index order, one softmax helper shared by every op that needs
// one. Speed is not a goal here.
#include "kernels/cpu/ref/ref_kernels.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace sirocco::kernels {
namespace {

// Row `r` of a row-major matrix with leading dimension `ld`. Computed in
// ptrdiff_t because rows * ld can exceed int for vocabulary-sized matrices.
template <typename T>
T* Row(T* base, int r, int ld) {
  return base + static_cast<std::ptrdiff_t>(r) * ld;
}

// Numerically stable softmax of x[0..n), in place, as torch computes it:
// exp(x - max) / sum.
void SoftmaxInPlace(float* x, int n) {
  float max = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) {
    if (x[i] > max) max = x[i];
  }
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  for (int i = 0; i < n; ++i) x[i] = x[i] / sum;
}

// Stores sum + beta * c into c. When beta is 0, c is not read: callers pass
// freshly allocated outputs, and 0 * NaN would poison them.
void StoreWithBeta(float sum, float beta, float* c) { *c = beta == 0.0f ? sum : sum + beta * *c; }

void GemmNt(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      float sum = 0.0f;
      for (int p = 0; p < k; ++p) sum += Row(a, i, lda)[p] * Row(b, j, ldb)[p];
      StoreWithBeta(sum, beta, &Row(c, i, ldc)[j]);
    }
  }
}

void GemmNn(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      float sum = 0.0f;
      for (int p = 0; p < k; ++p) sum += Row(a, i, lda)[p] * Row(b, p, ldb)[j];
      StoreWithBeta(sum, beta, &Row(c, i, ldc)[j]);
    }
  }
}

void RmsNorm(int rows, int dim, const float* x, int ldx, const float* w, float eps, float* y, int ldy) {
  for (int r = 0; r < rows; ++r) {
    const float* xr = Row(x, r, ldx);
    float* yr = Row(y, r, ldy);
    float sum_sq = 0.0f;
    for (int i = 0; i < dim; ++i) sum_sq += xr[i] * xr[i];
    // Same association as the model: w * (x * rsqrt(mean + eps)).
    const float inv_rms = 1.0f / std::sqrt(sum_sq / static_cast<float>(dim) + eps);
    for (int i = 0; i < dim; ++i) yr[i] = w[i] * (xr[i] * inv_rms);
  }
}

void RopeInterleaved(int rows, int rows_per_pos, int dim, float* x, int ldx, const std::int32_t* pos,
                     const float* inv_freq, float attn_factor) {
  const int half = dim / 2;
  // The output is de-interleaved, so it cannot be written over the input pair
  // by pair: rotate into a copy, then write the row back.
  std::vector<float> rotated(static_cast<std::size_t>(dim));
  for (int r = 0; r < rows; ++r) {
    float* xr = Row(x, r, ldx);
    const float position = static_cast<float>(pos[r / rows_per_pos]);
    for (int p = 0; p < half; ++p) {
      const float angle = position * inv_freq[p];
      const float c = std::cos(angle) * attn_factor;
      const float s = std::sin(angle) * attn_factor;
      const float x0 = xr[2 * p];
      const float x1 = xr[2 * p + 1];
      rotated[p] = x0 * c - x1 * s;
      rotated[p + half] = x1 * c + x0 * s;
    }
    for (int i = 0; i < dim; ++i) xr[i] = rotated[i];
  }
}

void SiluMul(int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out, int ldo) {
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < n; ++i) {
      const float g = Row(gate, r, ldg)[i];
      const float silu = g / (1.0f + std::exp(-g));
      Row(out, r, ldo)[i] = up == nullptr ? silu : silu * Row(up, r, ldu)[i];
    }
  }
}

void Axpy(int n, float alpha, const float* x, float* y) {
  for (int i = 0; i < n; ++i) y[i] += alpha * x[i];
}

void Softmax(int rows, int n, float* x, int ldx) {
  for (int r = 0; r < rows; ++r) SoftmaxInPlace(Row(x, r, ldx), n);
}

// Entry j of a sequence in the paged latent cache.
const float* MlaCacheEntry(const MlaAttentionParams& p, const std::int32_t* table, int j) {
  const std::ptrdiff_t entry_width = p.kv_rank + p.rope_dim;
  const std::ptrdiff_t block = table[j / p.block_size];
  return p.cache + (block * p.block_size + j % p.block_size) * entry_width;
}

void MlaAttention(const MlaAttentionParams& p) {
  for (int i = 0; i < p.num_queries; ++i) {
    const int ctx = p.ctx_lens[i];
    const std::int32_t* table = p.block_tables[i];
    std::vector<float> probs(static_cast<std::size_t>(ctx));
    for (int h = 0; h < p.num_heads; ++h) {
      const std::ptrdiff_t qh = static_cast<std::ptrdiff_t>(i) * p.num_heads + h;
      const float* q_lat = p.q_lat + qh * p.kv_rank;
      const float* q_rope = p.q_rope + qh * p.rope_dim;
      float* out = p.out + qh * p.kv_rank;

      for (int j = 0; j < ctx; ++j) {
        const float* latent = MlaCacheEntry(p, table, j);
        const float* krope = latent + p.kv_rank;
        float lat_dot = 0.0f;
        for (int d = 0; d < p.kv_rank; ++d) lat_dot += q_lat[d] * latent[d];
        float rope_dot = 0.0f;
        for (int d = 0; d < p.rope_dim; ++d) rope_dot += q_rope[d] * krope[d];
        probs[j] = p.scale * (lat_dot + rope_dot);
      }
      SoftmaxInPlace(probs.data(), ctx);

      for (int d = 0; d < p.kv_rank; ++d) out[d] = 0.0f;
      for (int j = 0; j < ctx; ++j) {
        const float* latent = MlaCacheEntry(p, table, j);
        for (int d = 0; d < p.kv_rank; ++d) out[d] += probs[j] * latent[d];
      }
    }
  }
}

void Attention(const AttentionParams& p) {
  std::vector<float> probs(static_cast<std::size_t>(p.num_keys));
  for (int i = 0; i < p.num_queries; ++i) {
    // Causal: keys 0 .. q_offset + i; otherwise every key.
    const int visible = p.causal ? p.q_offset + i + 1 : p.num_keys;
    for (int h = 0; h < p.num_heads; ++h) {
      const std::ptrdiff_t qh = static_cast<std::ptrdiff_t>(i) * p.num_heads + h;
      const float* q = p.q + qh * p.qk_dim;
      float* out = p.out + qh * p.v_dim;

      for (int j = 0; j < visible; ++j) {
        const float* k = p.k + (static_cast<std::ptrdiff_t>(j) * p.num_heads + h) * p.qk_dim;
        float dot = 0.0f;
        for (int d = 0; d < p.qk_dim; ++d) dot += q[d] * k[d];
        probs[j] = p.scale * dot;
      }
      SoftmaxInPlace(probs.data(), visible);

      for (int d = 0; d < p.v_dim; ++d) out[d] = 0.0f;
      for (int j = 0; j < visible; ++j) {
        const float* v = p.v + (static_cast<std::ptrdiff_t>(j) * p.num_heads + h) * p.v_dim;
        for (int d = 0; d < p.v_dim; ++d) out[d] += probs[j] * v[d];
      }
    }
  }
}

constexpr KernelTable kRefTable = {
    .backend = Backend::kRef,
    .name = "ref",
    .gemm_nt = GemmNt,
    .gemm_nn = GemmNn,
    .rms_norm = RmsNorm,
    .rope_interleaved = RopeInterleaved,
    .silu_mul = SiluMul,
    .gelu_mul = ref::GeluMul,
    .axpy = Axpy,
    .softmax = Softmax,
    .mla_attention = MlaAttention,
    .attention = Attention,
    .route_topk = ref::RouteTopk,
};

}  // namespace

namespace ref {

void GeluMul(int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out, int ldo) {
  // torch's float32 gelu (ATen/native/cpu/Gelu.h), same association.
  constexpr float kSqrtHalf = 0.70710678118654752440f;
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < n; ++i) {
      const float g = Row(gate, r, ldg)[i];
      const float gelu = g * 0.5f * (1.0f + std::erf(g * kSqrtHalf));
      Row(out, r, ldo)[i] = up == nullptr ? gelu : gelu * Row(up, r, ldu)[i];
    }
  }
}

// Precondition: num_groups divides num_experts and
// top_k <= topk_group * (num_experts / num_groups). If the kept groups hold
// fewer than top_k experts anyway, the remaining slots get id -1, weight 0.
void RouteTopk(const RouterParams& p) {
  const int group_size = p.num_experts / p.num_groups;
  std::vector<float> scores(static_cast<std::size_t>(p.num_experts));
  std::vector<float> group_scores(static_cast<std::size_t>(p.num_groups));
  std::vector<bool> group_kept(static_cast<std::size_t>(p.num_groups));
  std::vector<bool> chosen(static_cast<std::size_t>(p.num_experts));

  for (int t = 0; t < p.num_tokens; ++t) {
    const float* logits = Row(p.logits, t, p.num_experts);
    std::int32_t* ids = Row(p.expert_ids, t, p.top_k);
    float* weights = Row(p.expert_weights, t, p.top_k);

    for (int e = 0; e < p.num_experts; ++e) scores[e] = logits[e];
    SoftmaxInPlace(scores.data(), p.num_experts);

    // Group score: the sum of the group's two largest scores (its only score
    // when the group has one expert).
    for (int g = 0; g < p.num_groups; ++g) {
      const float* s = scores.data() + static_cast<std::ptrdiff_t>(g) * group_size;
      if (group_size == 1) {
        group_scores[g] = s[0];
        continue;
      }
      float first = -std::numeric_limits<float>::infinity();
      float second = first;
      for (int e = 0; e < group_size; ++e) {
        if (s[e] > first) {
          second = first;
          first = s[e];
        } else if (s[e] > second) {
          second = s[e];
        }
      }
      group_scores[g] = first + second;
    }

    // Keep the topk_group best groups. Scanning in index order with a strict
    // comparison makes ties go to the lower index.
    for (int g = 0; g < p.num_groups; ++g) group_kept[g] = false;
    for (int round = 0; round < p.topk_group && round < p.num_groups; ++round) {
      int best = -1;
      for (int g = 0; g < p.num_groups; ++g) {
        if (group_kept[g]) continue;
        if (best < 0 || group_scores[g] > group_scores[best]) best = g;
      }
      group_kept[best] = true;
    }

    // The top_k experts of the kept groups, picked best first, so the output
    // is in descending score with ties toward the lower index.
    for (int e = 0; e < p.num_experts; ++e) chosen[e] = false;
    float weight_sum = 0.0f;
    for (int slot = 0; slot < p.top_k; ++slot) {
      int best = -1;
      for (int e = 0; e < p.num_experts; ++e) {
        if (chosen[e] || !group_kept[e / group_size]) continue;
        if (best < 0 || scores[e] > scores[best]) best = e;
      }
      ids[slot] = best;
      weights[slot] = best < 0 ? 0.0f : scores[best];
      if (best >= 0) chosen[best] = true;
      weight_sum += weights[slot];
    }

    for (int slot = 0; slot < p.top_k; ++slot) {
      if (p.normalize) weights[slot] = weights[slot] / (weight_sum + 1e-20f);
      weights[slot] = weights[slot] * p.scaling;
    }
  }
}

}  // namespace ref

const KernelTable& RefKernels() { return kRefTable; }

}  // namespace sirocco::kernels
