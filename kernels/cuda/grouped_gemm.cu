// Grouped products for the MoE experts, with the grouping read on the device
// (no host round trip per layer): each expert's rows are contiguous in
// dispatch order and offsets[] says where they start.
//
// The grid's y dimension enumerates row tiles of all groups together: group g
// has ceil(count_g / kTileM) tiles, so the total is at most
// ceil(rows / kTileM) + num_groups, which the host can bound without knowing
// the split. Each block finds its (group, tile) with a scan over offsets and
// exits when it has none. The tile product is a classic shared-memory float32
// kernel (64 x 64 outputs, 16-deep k slices, 4 x 4 outputs per thread) with
// float32 accumulation in k order, like the CPU gemm_nt, over float32, bf16 or
// block-scaled FP8 weights (widened as they are loaded); tensor-core tiles
// are the next step where the benchmark shows the need.
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"

namespace sirocco::kernels::cuda {
namespace {

using internal::CeilDiv;
using internal::Invalid;
using internal::LaunchStatus;

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kTileK = 16;
constexpr int kThreads = 256;  // 16 x 16 threads, 4 x 4 outputs each

__device__ __forceinline__ float WeightValue(float w) { return w; }
__device__ __forceinline__ float WeightValue(__nv_bfloat16 w) { return __bfloat162float(w); }
__device__ __forceinline__ float WeightValue(__nv_fp8_e4m3 w) { return static_cast<float>(w); }
// bf16 weights multiply bf16-rounded activations (the cuBLAS bf16 numerics);
// float32 and FP8 weights multiply the float32 activations as they are.
__device__ __forceinline__ float ActivationValue(float a, const float*) { return a; }
__device__ __forceinline__ float ActivationValue(float a, const __nv_fp8_e4m3*) { return a; }
__device__ __forceinline__ float ActivationValue(float a, const __nv_bfloat16*) {
  return __bfloat162float(__float2bfloat16_rn(a));
}

// FP8 block scales: scales == nullptr for the other weight types.
template <typename W>
__global__ void __launch_bounds__(kThreads)
    GroupedGemmNtKernel(int num_groups, int n, int k, const float* a, int lda, const std::int32_t* offsets, const W* w,
                        int ldw, std::int64_t w_stride, const float* scales, std::int64_t scale_stride, float beta,
                        float* c, int ldc, int dense_rows) {
  __shared__ int s_group, s_row0, s_row_end;
  __shared__ float as[kTileK][kTileM + 4];  // a tile, k-major so a thread's 4 rows are adjacent
  __shared__ float bs[kTileK][kTileN + 4];  // W tile, k-major

  if (threadIdx.x == 0) {
    // Which group and which of its tiles this block computes.
    int tile = blockIdx.y;
    s_group = -1;
    for (int g = 0; g < num_groups; ++g) {
      // No offsets: one group of dense_rows rows (a dense product).
      const int begin = offsets != nullptr ? offsets[g] : 0;
      const int end = offsets != nullptr ? offsets[g + 1] : dense_rows;
      const int tiles = CeilDiv(end - begin, kTileM);
      if (tile < tiles) {
        s_group = g;
        s_row0 = begin + tile * kTileM;
        s_row_end = end;
        break;
      }
      tile -= tiles;
    }
  }
  __syncthreads();
  const int g = s_group;
  if (g < 0) return;
  const int row0 = s_row0, row_end = s_row_end;
  const int col0 = blockIdx.x * kTileN;
  const W* wg = w + g * w_stride;
  const float* sg = scales != nullptr ? scales + g * scale_stride : nullptr;
  const int scale_cols = CeilDiv(k, 128);

  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  for (int k0 = 0; k0 < k; k0 += kTileK) {
    // Each of the 256 threads loads 4 of the 64 x 16 values of each tile.
#pragma unroll
    for (int i = 0; i < (kTileM * kTileK) / kThreads; ++i) {
      const int e = threadIdx.x + i * kThreads;
      const int rr = e / kTileK, kk = e % kTileK;
      const int r = row0 + rr, kc = k0 + kk;
      as[kk][rr] = (r < row_end && kc < k) ? ActivationValue(a[static_cast<std::int64_t>(r) * lda + kc], wg) : 0.0f;
      const int col = col0 + rr;
      float wv = (col < n && kc < k) ? WeightValue(wg[static_cast<std::int64_t>(col) * ldw + kc]) : 0.0f;
      if (sg != nullptr && col < n && kc < k) wv *= sg[(col / 128) * scale_cols + kc / 128];
      bs[kk][rr] = wv;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        av[i] = as[kk][ty * 4 + i];
        bv[i] = bs[kk][tx * 4 + i];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = row0 + ty * 4 + i;
    if (r >= row_end) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int col = col0 + tx * 4 + j;
      if (col >= n) continue;
      float* out = c + static_cast<std::int64_t>(r) * ldc + col;
      *out = beta == 0.0f ? acc[i][j] : acc[i][j] + beta * *out;
    }
  }
}

}  // namespace

absl::Status GroupedGemmNt(const GroupedGemmParams& p, Stream stream) {
  constexpr const char* kOp = "cuda::GroupedGemmNt";
  if (p.num_groups < 1) return Invalid(kOp, "num_groups must be >= 1");
  if (p.rows < 0 || p.n < 0 || p.k < 0) {
    return Invalid(kOp, "negative shape rows=" + std::to_string(p.rows) + " n=" + std::to_string(p.n) +
                            " k=" + std::to_string(p.k));
  }
  if (p.lda < std::max(1, p.k)) return Invalid(kOp, "lda < k");
  if (p.ldw < std::max(1, p.k)) return Invalid(kOp, "ldw < k");
  if (p.ldc < std::max(1, p.n)) return Invalid(kOp, "ldc < n");
  if (p.w_stride < static_cast<std::int64_t>(p.n) * p.ldw - (p.ldw - p.k)) {
    return Invalid(kOp, "w_stride smaller than one group's weights");
  }
  if (p.rows == 0 || p.n == 0) return absl::OkStatus();
  const int weight_kinds = (p.w != nullptr) + (p.w_bf16 != nullptr) + (p.w_fp8 != nullptr);
  if (weight_kinds > 1) return Invalid(kOp, "give exactly one of w, w_bf16 and w_fp8");
  if (p.offsets == nullptr && p.num_groups != 1) return Invalid(kOp, "offsets missing for more than one group");
  if (p.c == nullptr || (p.k > 0 && (p.a == nullptr || weight_kinds == 0))) return Invalid(kOp, "null pointer");
  if (p.w_fp8 != nullptr) {
    if (p.w_scales == nullptr) return Invalid(kOp, "FP8 weights need w_scales");
    if (p.w_scale_stride < static_cast<std::int64_t>(CeilDiv(p.n, 128)) * CeilDiv(p.k, 128)) {
      return Invalid(kOp, "w_scale_stride smaller than one group's block scales");
    }
  }
  const long long max_tiles = CeilDiv(p.rows, kTileM) + static_cast<long long>(p.num_groups);
  if (max_tiles > 65535) return absl::UnimplementedError("cuda::GroupedGemmNt: too many rows for one launch");
  const dim3 grid(static_cast<unsigned>(CeilDiv(p.n, kTileN)), static_cast<unsigned>(max_tiles));
  if (p.w_fp8 != nullptr) {
    GroupedGemmNtKernel<<<grid, kThreads, 0, stream>>>(
        p.num_groups, p.n, p.k, p.a, p.lda, p.offsets, reinterpret_cast<const __nv_fp8_e4m3*>(p.w_fp8), p.ldw,
        p.w_stride, p.w_scales, p.w_scale_stride, p.beta, p.c, p.ldc, p.rows);
  } else if (p.w_bf16 != nullptr) {
    GroupedGemmNtKernel<<<grid, kThreads, 0, stream>>>(p.num_groups, p.n, p.k, p.a, p.lda, p.offsets,
                                                       reinterpret_cast<const __nv_bfloat16*>(p.w_bf16), p.ldw,
                                                       p.w_stride, nullptr, 0, p.beta, p.c, p.ldc, p.rows);
  } else {
    GroupedGemmNtKernel<<<grid, kThreads, 0, stream>>>(p.num_groups, p.n, p.k, p.a, p.lda, p.offsets, p.w, p.ldw,
                                                       p.w_stride, nullptr, 0, p.beta, p.c, p.ldc, p.rows);
  }
  return LaunchStatus(kOp);
}

}  // namespace sirocco::kernels::cuda
