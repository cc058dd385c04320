// The CUDA backend: the ops of kernels.h on device memory, one launcher per
// op. Each launcher checks shapes once on the host, enqueues its kernels on
// `stream` and returns; it never synchronises and never allocates.
//
// Contract shared by every launcher:
//   * Every pointer is device memory (cudaMalloc or managed), row-major
//     float32 unless a Bf16 type says otherwise, with the same leading
//     dimension conventions as kernels.h. The ops compute exactly the
//     functions documented there; the CPU reference (Backend::kRef) is the spec
//     (tests/gpu/cuda_ops_test.cc checks every op against it).
//   * A launcher returns InvalidArgument for shapes it rejects (before touching
//     the device), Unimplemented for shapes outside what the kernels support,
//     and Internal when the launch itself fails. Errors raised while a kernel
//     runs surface at the next synchronisation (see device_memory.h).
//   * Kernels never abort or trap: device-side data (block ids, positions,
//     ctx_lens) is trusted as the CPU backends trust it.
//   * Launchers are thread-safe; a Blas object is used by one thread at a time.
//
// Includers need no CUDA headers: Stream is the same type as cudaStream_t.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct CUstream_st;    // cudaStream_t is CUstream_st*
struct cublasContext;  // cublasHandle_t is cublasContext*

namespace sirocco::kernels::cuda {

using Stream = CUstream_st*;  // nullptr: the legacy default stream

// Whether a CUDA device can be used: the driver loads and reports at least one
// device. False (never an error) without a driver, e.g. on CI machines.
bool CudaDeviceAvailable();

// bfloat16 as raw bits (the upper half of a float32), layout-compatible with
// __nv_bfloat16.
struct Bf16 {
  std::uint16_t bits;
};

// ---------------------------------------------------------------------------
// Elementwise and row-wise ops: the same arguments as the KernelTable entries
// of the same name, plus the stream. Aliasing rules are those of kernels.h.

[[nodiscard]] absl::Status RmsNorm(int rows, int dim, const float* x, int ldx, const float* w, float eps, float* y,
                                   int ldy, Stream stream);
// pos: [ceil(rows / rows_per_pos)] device int32; inv_freq: [dim / 2] device.
[[nodiscard]] absl::Status RopeInterleaved(int rows, int rows_per_pos, int dim, float* x, int ldx,
                                           const std::int32_t* pos, const float* inv_freq, float attn_factor,
                                           Stream stream);
// SiluMul and GeluMul: up may be null (out = act(gate)).
[[nodiscard]] absl::Status SiluMul(int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out,
                                   int ldo, Stream stream);
[[nodiscard]] absl::Status GeluMul(int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out,
                                   int ldo, Stream stream);
[[nodiscard]] absl::Status Axpy(int n, float alpha, const float* x, float* y, Stream stream);
[[nodiscard]] absl::Status Softmax(int rows, int n, float* x, int ldx, Stream stream);

// ---------------------------------------------------------------------------
// Router: kernels::RouterParams with device pointers. num_experts <= 1024.
struct RouterParams {
  int num_tokens = 0;
  int num_experts = 0;
  int num_groups = 1;
  int topk_group = 1;
  int top_k = 1;
  bool normalize = true;
  float scaling = 1.0f;
  const float* logits = nullptr;       // [num_tokens, num_experts]
  std::int32_t* expert_ids = nullptr;  // [num_tokens, top_k]
  float* expert_weights = nullptr;     // [num_tokens, top_k]
};
[[nodiscard]] absl::Status RouteTopk(const RouterParams& p, Stream stream);

// ---------------------------------------------------------------------------
// MoE: grouping the router's choices by expert, so each expert's product runs
// once over all its tokens. An assignment is i = token * top_k + slot.
//
// MoeDispatch: counts[e] = assignments of expert e; offsets[e] = the first
// slot of expert e in `sorted` (offsets[num_experts] = num_tokens * top_k);
// sorted[offsets[e] .. offsets[e + 1]) = expert e's assignments in ascending
// order (a stable sort, deterministic); position[i] = where assignment i is
// in `sorted`. expert_ids must all be in [0, num_experts) (device data is
// trusted). num_experts <= 1024.
struct MoeDispatchParams {
  int num_tokens = 0;
  int top_k = 1;
  int num_experts = 1;
  const std::int32_t* expert_ids = nullptr;  // [num_tokens, top_k], from RouteTopk
  std::int32_t* counts = nullptr;            // [num_experts]
  std::int32_t* offsets = nullptr;           // [num_experts + 1]
  std::int32_t* sorted = nullptr;            // [num_tokens * top_k]
  std::int32_t* position = nullptr;          // [num_tokens * top_k]
};
[[nodiscard]] absl::Status MoeDispatch(const MoeDispatchParams& p, Stream stream);
// xs[r, :] = x[sorted[r] / top_k, :] for r < rows (rows = num_tokens * top_k):
// each expert's input rows, contiguous, in `sorted` order.
[[nodiscard]] absl::Status MoeGatherRows(int rows, int dim, const float* x, int ldx, const std::int32_t* sorted,
                                         int top_k, float* xs, int ldxs, Stream stream);
// out[t, :] = (accumulate ? out[t, :] : 0) + sum over slots s, in slot order,
// of weights[t, s] * ys[position[t * top_k + s], :]: the experts' outputs
// (rows in `sorted` order) weighted back onto their tokens.
[[nodiscard]] absl::Status MoeCombine(int num_tokens, int top_k, int dim, const float* ys, int ldys,
                                      const std::int32_t* position, const float* weights, bool accumulate, float* out,
                                      int ldo, Stream stream);

// bf16 conversions for products on bf16 weights: dst[r, :cols] =
// bf16(src[r, :cols]), round to nearest even (NaN stays NaN).
[[nodiscard]] absl::Status ConvertToBf16(int rows, int cols, const float* src, int lds, Bf16* dst, int ldd,
                                         Stream stream);

// Grouped products (MoE experts) with the grouping on the device: for each
// group g and each row r in [offsets[g], offsets[g + 1]):
//   c[r, :n] = a[r, :k] · W_g^T,   W_g = w + g * w_stride ([n, k], leading dim ldw)
// offsets (device, [num_groups + 1], non-decreasing, offsets[0] = 0) as
// MoeDispatch writes them; `rows` = offsets[num_groups] is known on the host
// (tokens * top_k), the split between groups is not, so the grid covers every
// possible tiling and tiles past a group's rows exit at once. float32
// arithmetic with float32 accumulation, like the CPU gemm_nt. With bf16
// weights (w_bf16 set, w unused) each a value is rounded to bf16 as it is
// loaded, so the products are those of bf16 operands, as cuBLAS's on bf16.
// With FP8 weights (w_fp8 set: e4m3 codes, as the released checkpoint stores
// them) each weight is its code times its 128 x 128 block's scale
// (w_scales, per group [ceil(n / 128), ceil(k / 128)] row-major, groups
// w_scale_stride floats apart), and the activations stay float32
// (weight-only quantisation, so no activation scales are involved).
// c = product + beta * c (beta 0: c is not read). Without offsets (nullptr,
// num_groups 1) all `rows` rows form one group: a dense product, which is how
// a device multiplies by a whole FP8 matrix.
struct GroupedGemmParams {
  int num_groups = 0;
  int rows = 0;
  int n = 0;
  int k = 0;
  const float* a = nullptr;  // [rows, k], leading dimension lda
  int lda = 0;
  const std::int32_t* offsets = nullptr;
  const float* w = nullptr;
  const Bf16* w_bf16 = nullptr;
  const std::uint8_t* w_fp8 = nullptr;
  const float* w_scales = nullptr;
  std::int64_t w_scale_stride = 0;
  int ldw = 0;
  std::int64_t w_stride = 0;
  float beta = 0.0f;
  float* c = nullptr;  // [rows, n], leading dimension ldc
  int ldc = 0;
};
[[nodiscard]] absl::Status GroupedGemmNt(const GroupedGemmParams& p, Stream stream);

// ---------------------------------------------------------------------------
// Row movement (the engine's gathers and scatters; idx on the device, trusted).
// dst[r, :] = src[idx[r], :]
[[nodiscard]] absl::Status GatherRows(int rows, int dim, const float* src, int lds, const std::int32_t* idx, float* dst,
                                      int ldd, Stream stream);
// The same from a bf16 table (embedding lookup on bf16 weights), widened to float32.
[[nodiscard]] absl::Status GatherRowsBf16(int rows, int dim, const Bf16* src, int lds, const std::int32_t* idx,
                                          float* dst, int ldd, Stream stream);
// dst[idx[r], :] = src[r, :]; idx entries distinct.
[[nodiscard]] absl::Status ScatterRows(int rows, int dim, const float* src, int lds, const std::int32_t* idx,
                                       float* dst, int ldd, Stream stream);
// x[r, :n] *= scales[r] (scales on the device).
[[nodiscard]] absl::Status ScaleRows(int rows, int n, float* x, int ldx, const float* scales, Stream stream);
// dst[r, :cols] = src[r, :cols] (cudaMemcpy2DAsync, device to device).
[[nodiscard]] absl::Status Copy2D(int rows, int cols, const float* src, int lds, float* dst, int ldd, Stream stream);

// ---------------------------------------------------------------------------
// KV blocks: packing a request's blocks of the paged pool into a contiguous
// staging buffer (gather) and back (scatter), for transports that move
// contiguous regions. The pool holds num_layers layers layer_stride_bytes
// apart, each an array of block_bytes-byte blocks; staging is
// [num_layers][num_blocks][block_bytes]. block_ids (device) index the pool's
// blocks and are trusted.
struct KvBlockCopyParams {
  int num_layers = 0;
  std::size_t layer_stride_bytes = 0;
  std::size_t block_bytes = 0;
  int num_blocks = 0;
  const std::int32_t* block_ids = nullptr;  // [num_blocks]
  void* pool = nullptr;
  void* staging = nullptr;
};
[[nodiscard]] absl::Status KvGatherBlocks(const KvBlockCopyParams& p, Stream stream);
[[nodiscard]] absl::Status KvScatterBlocks(const KvBlockCopyParams& p, Stream stream);

// ---------------------------------------------------------------------------
// Absorbed MLA attention over the paged latent cache: kernels::MlaAttentionParams
// with device pointers, plus what a GPU launch needs to know on the host.
//
// The context of each query is cut into tiles of 32 entries; tiles are dealt
// round-robin to `num_splits` blocks per (query, head group), each keeping an
// online softmax, and a second kernel merges the splits. The split count is
// chosen on the host from max_ctx_len (ctx_lens lives on the device), so
// max_ctx_len only tunes parallelism: a query longer than it is still computed
// exactly, just with fewer blocks per tile.
// Supported: kv_rank <= 512 and kv_rank + rope_dim <= 576.
struct MlaAttentionParams {
  int num_queries = 0;
  int num_heads = 0;
  int kv_rank = 0;
  int rope_dim = 0;
  int block_size = 0;
  int max_ctx_len = 0;                                // host-side bound used to pick the split count, >= 1
  const float* q_lat = nullptr;                       // [num_queries, num_heads, kv_rank]
  const float* q_rope = nullptr;                      // [num_queries, num_heads, rope_dim]
  const float* cache = nullptr;                       // [num_blocks, block_size, kv_rank + rope_dim]
  const std::int32_t* const* block_tables = nullptr;  // [num_queries] device pointers -> device block ids
  const std::int32_t* ctx_lens = nullptr;             // [num_queries], each >= 1
  float scale = 1.0f;
  float* out = nullptr;  // [num_queries, num_heads, kv_rank]
  // Scratch for the split partials, at least MlaAttentionWorkspaceBytes(*this)
  // bytes (0 when one split suffices; then it may be null).
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
};
// Depends only on num_queries, num_heads, kv_rank and max_ctx_len.
std::size_t MlaAttentionWorkspaceBytes(const MlaAttentionParams& p);
[[nodiscard]] absl::Status MlaAttention(const MlaAttentionParams& p, Stream stream);

// ---------------------------------------------------------------------------
// Expanded attention for one sequence (causal prefill, or bidirectional when
// !causal): kernels::AttentionParams with device pointers. Supported:
// qk_dim <= 320, v_dim <= 320.
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
  float* out = nullptr;  // [num_queries, num_heads, v_dim]
  bool causal = true;
};
[[nodiscard]] absl::Status Attention(const AttentionParams& p, Stream stream);

// ---------------------------------------------------------------------------
// Dense products through cuBLAS. A Blas owns one cuBLAS handle; create one per
// worker thread. The float32 products use full float32 arithmetic (TF32 is
// never enabled), so they match the CPU backends to rounding.
class Blas {
 public:
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Blas>> Create();
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // C[m,n] = sum_k A[m,k] B[n,k] + beta C[m,n]; C is not read when beta == 0.
  [[nodiscard]] absl::Status GemmNt(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta,
                                    float* c, int ldc, Stream stream);
  // C[m,n] = sum_k A[m,k] B[k,n] + beta C[m,n].
  [[nodiscard]] absl::Status GemmNn(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta,
                                    float* c, int ldc, Stream stream);
  // `batch` independent products; operand i starts at a + i * stride_a (and so
  // on), strides in elements (cublasSgemmStridedBatched). The per-head
  // products of absorbed MLA attention.
  [[nodiscard]] absl::Status GemmNtBatched(int batch, int m, int n, int k, const float* a, int lda,
                                           std::int64_t stride_a, const float* b, int ldb, std::int64_t stride_b,
                                           float beta, float* c, int ldc, std::int64_t stride_c, Stream stream);
  [[nodiscard]] absl::Status GemmNnBatched(int batch, int m, int n, int k, const float* a, int lda,
                                           std::int64_t stride_a, const float* b, int ldb, std::int64_t stride_b,
                                           float beta, float* c, int ldc, std::int64_t stride_c, Stream stream);
  // `batch` products on bf16 operands with float32 accumulation and a float32
  // C (cublasGemmStridedBatchedEx): C_i = A_i . op(B_i) + beta C_i with
  // op(B) = B^T when transpose_b (B_i [n, k]) and B otherwise (B_i [k, n]).
  [[nodiscard]] absl::Status GemmBf16Batched(bool transpose_b, int batch, int m, int n, int k, const Bf16* a, int lda,
                                             std::int64_t stride_a, const Bf16* b, int ldb, std::int64_t stride_b,
                                             float beta, float* c, int ldc, std::int64_t stride_c, Stream stream);
  // gemm_nt on bf16 inputs with float32 accumulation (tensor cores), storing
  // float32 or bf16 (rounded to nearest even).
  [[nodiscard]] absl::Status GemmNtBf16(int m, int n, int k, const Bf16* a, int lda, const Bf16* b, int ldb, float beta,
                                        float* c, int ldc, Stream stream);
  [[nodiscard]] absl::Status GemmNtBf16(int m, int n, int k, const Bf16* a, int lda, const Bf16* b, int ldb, float beta,
                                        Bf16* c, int ldc, Stream stream);

 private:
  explicit Blas(cublasContext* handle) : handle_(handle) {}

  cublasContext* handle_;
};

}  // namespace sirocco::kernels::cuda
