// Expanded-form attention for one sequence (causal prefill, or a vision
// encoder's bidirectional patches), flash-style:
// one block per (32-query tile, head) streams the keys it may see in 32-key
// tiles with an online softmax, so no [queries, keys] score matrix is ever
// stored. The inner loop is attention_tile.cuh, with each warp owning 4
// consecutive queries of the block's head.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"

namespace sirocco::kernels::cuda {
namespace {

using internal::Aligned16;
using internal::CeilDiv;
using internal::CheckPointer;
using internal::CpAsyncCommit;
using internal::CpAsyncWait;
using internal::CudaStatus;
using internal::Invalid;
using internal::kAttnThreads;
using internal::kAttnWarps;
using internal::kKeyTile;
using internal::kWarpSize;
using internal::LaunchStatus;
using internal::LoadRowsAsync;
using internal::WarpRows;

constexpr int kRowsPerWarp = 4;
constexpr int kQueryTile = kAttnWarps * kRowsPerWarp;  // 32 queries per block
constexpr int kMaxHeadDim = 320;
constexpr int kMaxGridY = 65535;

struct AttnArgs {
  AttentionParams p;
  bool vec;  // 16-byte key/value loads
};

template <int kDq, int kDv>
__global__ void __launch_bounds__(kAttnThreads, kDq + kDv <= 12 ? 2 : 1) AttentionKernel(AttnArgs a) {
  extern __shared__ __align__(16) float attn_smem[];
  const AttentionParams& p = a.p;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int tile_floats = kKeyTile * (p.qk_dim + p.v_dim);                      // keys then values
  const auto tile_buffer = [&](int b) { return attn_smem + b * tile_floats; };  // double buffering
  float* scores = attn_smem + 2 * tile_floats + warp * kRowsPerWarp * kKeyTile;

  const int h = blockIdx.y;
  const int q_first = blockIdx.x * kQueryTile;
  const int warp_first = q_first + warp * kRowsPerWarp;

  // Row r is query warp_first + r at key position q_offset + query; it sees
  // keys 0 .. limit[r] (every key when not causal). Rows past the batch get
  // limit -1 and see nothing.
  int limit[kRowsPerWarp];
  int warp_limit = -1;
  WarpRows<kRowsPerWarp, kDq, kDv> rows;
  rows.Init();
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int query = warp_first + r;
    limit[r] = query >= p.num_queries ? -1 : p.causal ? p.q_offset + query : p.num_keys - 1;
    warp_limit = max(warp_limit, limit[r]);
    if (query >= p.num_queries) continue;
    const float* q = p.q + (static_cast<std::int64_t>(query) * p.num_heads + h) * p.qk_dim;
#pragma unroll
    for (int j = 0; j < kDq; ++j) {
      const int d = lane + j * kWarpSize;
      if (d < p.qk_dim) rows.q[r][j] = q[d];
    }
  }

  // Keys the block's last query can see; no block exists past num_queries.
  const int key_end = p.causal ? p.q_offset + min(p.num_queries, q_first + kQueryTile) : p.num_keys;
  const int num_tiles = CeilDiv(key_end, kKeyTile);
  const std::int64_t key_stride_q = static_cast<std::int64_t>(p.num_heads) * p.qk_dim;
  const std::int64_t key_stride_v = static_cast<std::int64_t>(p.num_heads) * p.v_dim;
  const auto load_tile = [&](int tile, float* dst) {
    const int start = tile * kKeyTile;
    const int n = min(kKeyTile, key_end - start);
    LoadRowsAsync(dst, n, p.qk_dim, a.vec,
                  [&](int t) { return p.k + (start + t) * key_stride_q + static_cast<std::int64_t>(h) * p.qk_dim; });
    LoadRowsAsync(dst + kKeyTile * p.qk_dim, n, p.v_dim, a.vec,
                  [&](int t) { return p.v + (start + t) * key_stride_v + static_cast<std::int64_t>(h) * p.v_dim; });
  };

  load_tile(0, tile_buffer(0));
  CpAsyncCommit();
  for (int tile = 0; tile < num_tiles; ++tile) {
    if (tile + 1 < num_tiles) {
      load_tile(tile + 1, tile_buffer((tile + 1) & 1));
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();
    const int start = tile * kKeyTile;
    // Causality: a warp whose rows all end before this tile skips it.
    if (start <= warp_limit) {
      const float* k_tile = tile_buffer(tile & 1);
      rows.FoldTile(k_tile, p.qk_dim, p.qk_dim, k_tile + kKeyTile * p.qk_dim, p.v_dim, p.v_dim,
                    min(kKeyTile, key_end - start), p.scale, scores, lane,
                    [&](int r, int t) { return start + t <= limit[r]; });
    }
    __syncthreads();
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int query = warp_first + r;
    if (query >= p.num_queries) continue;
    float* out = p.out + (static_cast<std::int64_t>(query) * p.num_heads + h) * p.v_dim;
#pragma unroll
    for (int j = 0; j < kDv; ++j) {
      const int d = lane + j * kWarpSize;
      if (d < p.v_dim) out[d] = rows.acc[r][j] / rows.l[r];  // key 0 is always visible: l > 0
    }
  }
}

template <int kDq, int kDv>
absl::Status LaunchAttention(const AttnArgs& a, Stream stream) {
  const std::size_t smem =
      sizeof(float) * (2 * kKeyTile * (a.p.qk_dim + a.p.v_dim) + kAttnWarps * kRowsPerWarp * kKeyTile);
  const auto kernel = AttentionKernel<kDq, kDv>;
  SIROCCO_CUDA_RETURN_IF_ERROR(
      CudaStatus(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
                 "cuda::Attention: cudaFuncSetAttribute"));
  const dim3 grid(CeilDiv(a.p.num_queries, kQueryTile), a.p.num_heads);
  kernel<<<grid, kAttnThreads, smem, stream>>>(a);
  return LaunchStatus("cuda::Attention");
}

}  // namespace

absl::Status Attention(const AttentionParams& p, Stream stream) {
  constexpr const char* kOp = "cuda::Attention";
  if (p.num_queries < 0 || p.q_offset < 0) return Invalid(kOp, "num_queries and q_offset must be >= 0");
  if (p.num_heads < 1 || p.num_heads > kMaxGridY) {
    return Invalid(kOp, "num_heads must be in [1, 65535], got " + std::to_string(p.num_heads));
  }
  if (p.qk_dim < 1 || p.v_dim < 1) return Invalid(kOp, "qk_dim and v_dim must be >= 1");
  if (p.qk_dim > kMaxHeadDim || p.v_dim > kMaxHeadDim) {
    return absl::UnimplementedError(std::string(kOp) + ": head dims " + std::to_string(p.qk_dim) + "/" +
                                    std::to_string(p.v_dim) + " exceed " + std::to_string(kMaxHeadDim));
  }
  if (!p.causal && p.num_keys < 1) return Invalid(kOp, "num_keys must be >= 1 without causality");
  if (p.causal && static_cast<long long>(p.num_keys) < static_cast<long long>(p.q_offset) + p.num_queries) {
    return Invalid(kOp, "num_keys (" + std::to_string(p.num_keys) + ") < q_offset + num_queries (" +
                            std::to_string(static_cast<long long>(p.q_offset) + p.num_queries) + ")");
  }
  if (p.num_queries == 0) return absl::OkStatus();
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "q", p.q));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "k", p.k));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "v", p.v));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "out", p.out));

  AttnArgs a;
  a.p = p;
  a.vec = p.qk_dim % 4 == 0 && p.v_dim % 4 == 0 && Aligned16(p.k) && Aligned16(p.v);
  const int need_q = CeilDiv(p.qk_dim, kWarpSize);
  const int need_v = CeilDiv(p.v_dim, kWarpSize);
  if (need_q <= 1 && need_v <= 1) return LaunchAttention<1, 1>(a, stream);
  if (need_q <= 2 && need_v <= 2) return LaunchAttention<2, 2>(a, stream);
  if (need_q <= 4 && need_v <= 4) return LaunchAttention<4, 4>(a, stream);  // Mistral Small 4: 128 / 128
  if (need_q <= 6 && need_v <= 4) return LaunchAttention<6, 4>(a, stream);  // 192 / 128 (DeepSeek-V3 shapes)
  if (need_q <= 8 && need_v <= 8) return LaunchAttention<8, 8>(a, stream);
  return LaunchAttention<10, 10>(a, stream);
}

}  // namespace sirocco::kernels::cuda
