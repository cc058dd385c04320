// Absorbed MLA attention over the paged latent cache (decode, and absorbed
// prefill): many queries of different context lengths in one launch.
//
// Grid: one block per (query, head group, split). A head group is the 8 warps'
// rows, so one block reads each latent row once for up to 32 heads: MLA's
// cache is shared by all heads, which is what makes it cheap to read.
// A query's context is cut into 32-entry tiles dealt round-robin to the
// splits; with one split the block writes the output, otherwise it writes its
// (max, sum, unnormalised output) and MlaCombineKernel merges the splits.
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

constexpr int kMaxEntryWidth = 576;  // kv_rank + rope_dim (512 + 64 is DeepSeek-V3's)
constexpr int kMaxRank = 512;        // the widest accumulator layout holds 16 floats per lane
// Splits are chosen so that the grid has about two blocks per SM of the
// largest target (B200: 148 SMs) when the batch alone does not provide them,
// with at least two tiles per split so the merge stays cheap.
constexpr int kTargetBlocks = 2 * 148;
constexpr int kMinTilesPerSplit = 2;
constexpr int kMaxSplits = 64;
constexpr int kCombineThreads = 128;
static_assert(kMaxSplits <= kCombineThreads, "the combine kernel stages one split per thread");

// Rows (heads) per warp: 1 for small head counts so that the heads spread
// over the warps, else 4 (32 heads, Mistral Small 4's count, per block).
int RowsPerWarp(int num_heads) { return num_heads <= kAttnWarps ? 1 : 4; }

int NumHeadGroups(int num_heads) { return CeilDiv(num_heads, kAttnWarps * RowsPerWarp(num_heads)); }

int NumSplits(const MlaAttentionParams& p) {
  const long long base = static_cast<long long>(p.num_queries) * NumHeadGroups(p.num_heads);
  const int tiles = CeilDiv(std::max(p.max_ctx_len, 1), kKeyTile);
  const long long wanted = (kTargetBlocks + base - 1) / std::max(base, 1LL);
  const long long by_tiles = CeilDiv(tiles, kMinTilesPerSplit);
  return static_cast<int>(std::max(1LL, std::min({wanted, by_tiles, static_cast<long long>(kMaxSplits)})));
}

struct MlaArgs {
  MlaAttentionParams p;
  int num_splits;
  int num_head_groups;
  bool vec;         // 16-byte cache loads
  float* part_acc;  // [num_queries * num_heads, num_splits, kv_rank]
  float* part_ml;   // [num_queries * num_heads, num_splits, 2]: max, sum
};

template <int kRows, int kDq, int kDv>
__global__ void __launch_bounds__(kAttnThreads, kDq <= 10 ? 2 : 1) MlaSplitKernel(MlaArgs a) {
  extern __shared__ __align__(16) float mla_smem[];
  const MlaAttentionParams& p = a.p;
  const int width = p.kv_rank + p.rope_dim;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  // Two tile buffers (double buffering); indexed arithmetically, as an array
  // of pointers would live on the stack.
  const auto tile_buffer = [&](int b) { return mla_smem + b * kKeyTile * width; };
  float* scores = mla_smem + 2 * kKeyTile * width + warp * kRows * kKeyTile;

  const int split = blockIdx.x % a.num_splits;
  const int rest = blockIdx.x / a.num_splits;
  const int head_group = rest % a.num_head_groups;
  const int i = rest / a.num_head_groups;
  const int first_head = head_group * kAttnWarps * kRows + warp * kRows;
  const bool warp_active = first_head < p.num_heads;

  WarpRows<kRows, kDq, kDv> rows;
  rows.Init();
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int h = first_head + r;
    if (h >= p.num_heads) continue;
    const std::int64_t qh = static_cast<std::int64_t>(i) * p.num_heads + h;
#pragma unroll
    for (int j = 0; j < kDq; ++j) {
      const int d = lane + j * kWarpSize;
      if (d < p.kv_rank) {
        rows.q[r][j] = p.q_lat[qh * p.kv_rank + d];
      } else if (d < width) {
        rows.q[r][j] = p.q_rope[qh * p.rope_dim + (d - p.kv_rank)];
      }
    }
  }

  const int ctx = p.ctx_lens[i];
  const std::int32_t* table = p.block_tables[i];
  const int num_tiles = CeilDiv(ctx, kKeyTile);
  // This split's tiles: split, split + S, split + 2S, ... < num_tiles.
  const int my_tiles = split < num_tiles ? (num_tiles - 1 - split) / a.num_splits + 1 : 0;
  const auto load_tile = [&](int tile, float* dst) {
    const int start = tile * kKeyTile;
    LoadRowsAsync(dst, min(kKeyTile, ctx - start), width, a.vec, [&](int t) {
      const int j = start + t;
      const std::int64_t block = table[j / p.block_size];
      return p.cache + (block * p.block_size + j % p.block_size) * width;
    });
  };

  if (my_tiles > 0) load_tile(split, tile_buffer(0));
  CpAsyncCommit();
  for (int it = 0; it < my_tiles; ++it) {
    const int tile = split + it * a.num_splits;
    if (it + 1 < my_tiles) {
      load_tile(tile + a.num_splits, tile_buffer((it + 1) & 1));
      CpAsyncCommit();
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();  // the tile is visible to every warp
    if (warp_active) {
      const float* kv = tile_buffer(it & 1);
      rows.FoldTile(kv, width, width, kv, width, p.kv_rank, min(kKeyTile, ctx - tile * kKeyTile), p.scale, scores, lane,
                    [](int, int) { return true; });
    }
    __syncthreads();  // every warp is done with the buffer the next load overwrites
  }

#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int h = first_head + r;
    if (h >= p.num_heads) continue;
    const std::int64_t qh = static_cast<std::int64_t>(i) * p.num_heads + h;
    if (a.num_splits == 1) {
      // ctx >= 1, so l > 0.
      float* out = p.out + qh * p.kv_rank;
#pragma unroll
      for (int j = 0; j < kDv; ++j) {
        const int d = lane + j * kWarpSize;
        if (d < p.kv_rank) out[d] = rows.acc[r][j] / rows.l[r];
      }
    } else {
      const std::int64_t slot = qh * a.num_splits + split;
      float* acc = a.part_acc + slot * p.kv_rank;
#pragma unroll
      for (int j = 0; j < kDv; ++j) {
        const int d = lane + j * kWarpSize;
        if (d < p.kv_rank) acc[d] = rows.acc[r][j];
      }
      if (lane == 0) {
        a.part_ml[2 * slot] = rows.m[r];      // -inf for a split without tiles
        a.part_ml[2 * slot + 1] = rows.l[r];  // 0 for a split without tiles
      }
    }
  }
}

// One block per (query, head): out = sum_s w_s acc_s / sum_s w_s l_s with
// w_s = exp(m_s - max_s m_s). Split 0 always holds tile 0, so the max is finite.
__global__ void __launch_bounds__(kCombineThreads)
    MlaCombineKernel(int num_splits, int kv_rank, const float* __restrict__ part_acc, const float* __restrict__ part_ml,
                     float* __restrict__ out) {
  __shared__ float weight[kMaxSplits];
  __shared__ float inv_total;
  const std::int64_t qh = blockIdx.x;
  const float* ml = part_ml + qh * num_splits * 2;
  if (threadIdx.x < kWarpSize) {
    float max = -INFINITY;
    for (int s = threadIdx.x; s < num_splits; s += kWarpSize) max = fmaxf(max, ml[2 * s]);
    max = internal::WarpMax(max);
    float total = 0.0f;
    for (int s = threadIdx.x; s < num_splits; s += kWarpSize) {
      const float m = ml[2 * s];
      const float w = m == -INFINITY ? 0.0f : expf(m - max);
      weight[s] = w;
      total += w * ml[2 * s + 1];
    }
    total = internal::WarpSum(total);
    if (threadIdx.x == 0) inv_total = 1.0f / total;
  }
  __syncthreads();
  const float* acc = part_acc + qh * num_splits * kv_rank;
  for (int d = threadIdx.x; d < kv_rank; d += blockDim.x) {
    float sum = 0.0f;
    for (int s = 0; s < num_splits; ++s) sum = fmaf(weight[s], acc[static_cast<std::int64_t>(s) * kv_rank + d], sum);
    out[qh * kv_rank + d] = sum * inv_total;
  }
}

std::size_t PartAccFloats(const MlaAttentionParams& p, int splits) {
  return static_cast<std::size_t>(p.num_queries) * p.num_heads * splits * p.kv_rank;
}

template <int kRows, int kDq, int kDv>
absl::Status LaunchSplitKernel(const MlaArgs& a, Stream stream) {
  const int width = a.p.kv_rank + a.p.rope_dim;
  const std::size_t smem = sizeof(float) * (2 * kKeyTile * width + kAttnWarps * kRows * kKeyTile);
  const auto kernel = MlaSplitKernel<kRows, kDq, kDv>;
  // Above 48 KiB a kernel must opt in to dynamic shared memory.
  SIROCCO_CUDA_RETURN_IF_ERROR(
      CudaStatus(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
                 "cuda::MlaAttention: cudaFuncSetAttribute"));
  const long long blocks = static_cast<long long>(a.p.num_queries) * a.num_head_groups * a.num_splits;
  kernel<<<static_cast<unsigned>(blocks), kAttnThreads, smem, stream>>>(a);
  return LaunchStatus("cuda::MlaAttention: split kernel");
}

// The smallest compiled register layout that holds the row widths.
template <int kRows>
absl::Status DispatchWidths(const MlaArgs& a, Stream stream) {
  const int need_q = CeilDiv(a.p.kv_rank + a.p.rope_dim, kWarpSize);
  const int need_v = CeilDiv(a.p.kv_rank, kWarpSize);
  if (need_q <= 1) return LaunchSplitKernel<kRows, 1, 1>(a, stream);
  if (need_q <= 2) return LaunchSplitKernel<kRows, 2, 2>(a, stream);
  if (need_q <= 4) return LaunchSplitKernel<kRows, 4, 4>(a, stream);
  if (need_q <= 10 && need_v <= 8) return LaunchSplitKernel<kRows, 10, 8>(a, stream);  // Mistral Small 4: 256 + 64
  return LaunchSplitKernel<kRows, 18, 16>(a, stream);  // the launcher checked width <= 576, kv_rank <= 512
}

}  // namespace

std::size_t MlaAttentionWorkspaceBytes(const MlaAttentionParams& p) {
  if (p.num_queries <= 0 || p.num_heads <= 0 || p.kv_rank <= 0) return 0;
  const int splits = NumSplits(p);
  if (splits == 1) return 0;
  const std::size_t rows = static_cast<std::size_t>(p.num_queries) * p.num_heads * splits;
  return sizeof(float) * (PartAccFloats(p, splits) + 2 * rows);
}

absl::Status MlaAttention(const MlaAttentionParams& p, Stream stream) {
  constexpr const char* kOp = "cuda::MlaAttention";
  if (p.num_queries < 0) return Invalid(kOp, "num_queries must be >= 0");
  if (p.num_heads < 1 || p.kv_rank < 1 || p.rope_dim < 0 || p.block_size < 1) {
    return Invalid(kOp, "need num_heads >= 1, kv_rank >= 1, rope_dim >= 0, block_size >= 1; got " +
                            std::to_string(p.num_heads) + ", " + std::to_string(p.kv_rank) + ", " +
                            std::to_string(p.rope_dim) + ", " + std::to_string(p.block_size));
  }
  if (p.kv_rank + p.rope_dim > kMaxEntryWidth) {
    return absl::UnimplementedError(std::string(kOp) + ": kv_rank + rope_dim = " +
                                    std::to_string(p.kv_rank + p.rope_dim) + " > " + std::to_string(kMaxEntryWidth));
  }
  if (p.kv_rank > kMaxRank) {
    return absl::UnimplementedError(std::string(kOp) + ": kv_rank " + std::to_string(p.kv_rank) + " > " +
                                    std::to_string(kMaxRank));
  }
  if (p.max_ctx_len < 1) return Invalid(kOp, "max_ctx_len must be >= 1");
  if (p.num_queries == 0) return absl::OkStatus();
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "q_lat", p.q_lat));
  if (p.rope_dim > 0) SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "q_rope", p.q_rope));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "cache", p.cache));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "block_tables", p.block_tables));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "ctx_lens", p.ctx_lens));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "out", p.out));
  const long long blocks_per_split = static_cast<long long>(p.num_queries) * NumHeadGroups(p.num_heads);
  if (blocks_per_split * kMaxSplits > 0x7fffffffLL ||
      static_cast<long long>(p.num_queries) * p.num_heads > 0x7fffffffLL) {
    return Invalid(kOp, "too many queries for one launch");
  }

  MlaArgs a;
  a.p = p;
  a.num_splits = NumSplits(p);
  a.num_head_groups = NumHeadGroups(p.num_heads);
  const int width = p.kv_rank + p.rope_dim;
  a.vec = width % 4 == 0 && Aligned16(p.cache);
  a.part_acc = nullptr;
  a.part_ml = nullptr;
  if (a.num_splits > 1) {
    const std::size_t need = MlaAttentionWorkspaceBytes(p);
    if (p.workspace == nullptr || p.workspace_bytes < need) {
      return Invalid(kOp, "workspace of " + std::to_string(p.workspace_bytes) + " bytes < " + std::to_string(need) +
                              " needed (MlaAttentionWorkspaceBytes)");
    }
    a.part_acc = static_cast<float*>(p.workspace);
    a.part_ml = a.part_acc + PartAccFloats(p, a.num_splits);
  }

  SIROCCO_CUDA_RETURN_IF_ERROR(RowsPerWarp(p.num_heads) == 1 ? DispatchWidths<1>(a, stream)
                                                             : DispatchWidths<4>(a, stream));
  if (a.num_splits == 1) return absl::OkStatus();
  MlaCombineKernel<<<static_cast<unsigned>(static_cast<long long>(p.num_queries) * p.num_heads), kCombineThreads, 0,
                     stream>>>(a.num_splits, p.kv_rank, a.part_acc, a.part_ml, p.out);
  return LaunchStatus("cuda::MlaAttention: combine kernel");
}

}  // namespace sirocco::kernels::cuda
