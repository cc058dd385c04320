// The kernel interface: every numeric op the model runs, as a table of plain
// function pointers per backend. The model is written once against this table;
// a backend is chosen by enum at start-up (never by string).
//
// Conventions (all backends):
//   * float32 tensors, row-major; every matrix argument carries its leading
//     dimension (elements between consecutive rows), so callers can pass views.
//   * Weights are stored as PyTorch nn.Linear does: W[out, in].
//   * Ops are pure functions of their arguments: no global state, callable from
//     any thread, no allocation visible to callers.
//   * The scalar reference (Backend::kRef) is the spec; every other backend is
//     tested against it over shape sweeps (tests/unit/kernels/ops_test.cc).
#pragma once

#include <cstdint>
#include <span>

namespace sirocco::kernels {

enum class Backend : std::uint8_t {
  kRef,   // scalar C++: the spec
  kAvx2,  // AVX2 + FMA; dense products through BLAS (OpenBLAS)
};

// Absorbed-form MLA attention over a paged latent cache (decode, and prefill in
// the absorbed form). One call serves many queries of many sequences.
//
// Each cache entry is [kv_rank latent | rope_dim rotated key]. A layer's cache
// is `num_blocks` blocks of `block_size` entries, block b at
// cache + b * block_size * (kv_rank + rope_dim). Query i attends to entries
// 0 .. ctx_lens[i]-1 of its sequence, found through block_tables[i].
//   score(h, j) = scale * (q_lat[i,h,:] . latent_j + q_rope[i,h,:] . krope_j)
//   out[i,h,:]  = sum_j softmax_j(score(h, j)) * latent_j
struct MlaAttentionParams {
  int num_queries = 0;
  int num_heads = 0;
  int kv_rank = 0;     // latent width (256 in Mistral Small 4)
  int rope_dim = 0;    // rotated key width (64)
  int block_size = 0;  // entries per cache block
  const float* q_lat = nullptr;                // [num_queries, num_heads, kv_rank]
  const float* q_rope = nullptr;               // [num_queries, num_heads, rope_dim]
  const float* cache = nullptr;                // [num_blocks, block_size, kv_rank + rope_dim]
  const std::int32_t* const* block_tables = nullptr;  // [num_queries] -> block ids
  const std::int32_t* ctx_lens = nullptr;      // [num_queries], each >= 1
  float scale = 1.0f;
  float* out = nullptr;                        // [num_queries, num_heads, kv_rank]
};

// Dense multi-head attention for one sequence: causal (expanded-form prefill)
// or bidirectional (a vision encoder's patches of one image).
// Causal: query row i sits at key position q_offset + i and sees keys
// 0..q_offset+i. Not causal: every query sees all num_keys keys (q_offset is
// ignored).
//   out[i,h,:] = sum_j softmax_j(scale * q[i,h,:] . k[j,h,:]) * v[j,h,:]
struct AttentionParams {
  int num_queries = 0;
  int num_keys = 0;  // causal: >= q_offset + num_queries; else >= 1
  int q_offset = 0;
  int num_heads = 0;
  int qk_dim = 0;
  int v_dim = 0;
  const float* q = nullptr;  // [num_queries, num_heads, qk_dim]
  const float* k = nullptr;  // [num_keys, num_heads, qk_dim]
  const float* v = nullptr;  // [num_keys, num_heads, v_dim]
  float scale = 1.0f;
  float* out = nullptr;      // [num_queries, num_heads, v_dim]
  bool causal = true;
};

// Softmax router with group-limited top-k (DeepSeek-V3 / Mistral 4 style).
//   scores = softmax(logits) over all experts;
//   group score = sum of the 2 largest scores in the group (or the single one
//   when a group has one expert); keep the topk_group best groups; pick the
//   top_k experts by score among kept groups; weights = their scores,
//   renormalised (sum + 1e-20) when `normalize`, then times `scaling`.
// Ties break toward the lower index. Output ids/weights are in descending score.
// Requires num_experts % num_groups == 0 and
// top_k <= topk_group * (num_experts / num_groups).
struct RouterParams {
  int num_tokens = 0;
  int num_experts = 0;
  int num_groups = 1;
  int topk_group = 1;
  int top_k = 1;
  bool normalize = true;
  float scaling = 1.0f;
  const float* logits = nullptr;   // [num_tokens, num_experts]
  std::int32_t* expert_ids = nullptr;  // [num_tokens, top_k]
  float* expert_weights = nullptr;     // [num_tokens, top_k]
};

struct KernelTable {
  Backend backend;
  const char* name;

  // C[m,n] = sum_k A[m,k] * B[n,k] + beta * C[m,n]   (y = x W^T for W[n,k]).
  // Both gemms: when beta == 0, C is not read (it may hold garbage, even NaN).
  void (*gemm_nt)(int m, int n, int k, const float* a, int lda, const float* b,
                  int ldb, float beta, float* c, int ldc);
  // C[m,n] = sum_k A[m,k] * B[k,n] + beta * C[m,n].
  void (*gemm_nn)(int m, int n, int k, const float* a, int lda, const float* b,
                  int ldb, float beta, float* c, int ldc);
  // y[r,:] = w * x[r,:] / sqrt(mean(x[r,:]^2) + eps). y may alias x.
  void (*rms_norm)(int rows, int dim, const float* x, int ldx, const float* w,
                   float eps, float* y, int ldy);
  // Interleaved rotary embedding, in place, for `rows` vectors of width `dim`
  // (even). Row r has position pos[r / rows_per_pos]. For pair p = (x[2p],
  // x[2p+1]) and angle a = pos * inv_freq[p]:
  //   c = cos(a) * attn_factor,  s = sin(a) * attn_factor
  //   out[p]         = x[2p]   * c - x[2p+1] * s
  //   out[p + dim/2] = x[2p+1] * c + x[2p]   * s
  // i.e. the result is stored de-interleaved, as the reference model does.
  // a is the float32 product float(pos) * inv_freq[p]; cos/sin in float32.
  void (*rope_interleaved)(int rows, int rows_per_pos, int dim, float* x, int ldx,
                           const std::int32_t* pos, const float* inv_freq,
                           float attn_factor);
  // out[r,i] = silu(gate[r,i]) * up[r,i], silu(g) = g / (1 + exp(-g)), or
  // silu(gate[r,i]) when up is null (ldu unused).
  // out may alias gate or up (same leading dimension).
  void (*silu_mul)(int rows, int n, const float* gate, int ldg, const float* up,
                   int ldu, float* out, int ldo);
  // out[r,i] = gelu(gate[r,i]) * up[r,i], or gelu(gate[r,i]) when up is null
  // (ldu unused), with torch's exact (erf) GELU in float32:
  //   gelu(g) = g * 0.5 * (1 + erf(g * sqrt(1/2))).
  // out may alias gate or up (same leading dimension).
  void (*gelu_mul)(int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out, int ldo);
  // y[i] += alpha * x[i].
  void (*axpy)(int n, float alpha, const float* x, float* y);
  // Row-wise numerically stable softmax, in place.
  void (*softmax)(int rows, int n, float* x, int ldx);
  void (*mla_attention)(const MlaAttentionParams& p);
  void (*attention)(const AttentionParams& p);
  void (*route_topk)(const RouterParams& p);
};

// The table of a backend. Aborts if the backend is not compiled in or the CPU
// lacks the instructions (check Available() first).
const KernelTable& Get(Backend backend);
// Whether `backend` can run on this machine.
bool Available(Backend backend);
// Every backend that can run here, reference first.
std::span<const Backend> AvailableBackends();
const char* BackendName(Backend backend);

}  // namespace sirocco::kernels
