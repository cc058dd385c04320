// Row-wise and elementwise ops: rms_norm, rope_interleaved, silu_mul, gelu_mul, axpy,
// softmax. All are memory-bound; the aim is one read (rms_norm, softmax: a few
// cached re-reads) and one write per element, and the reference's rounding
// (same association, IEEE division and sqrt: no fast-math anywhere).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"

namespace sirocco::kernels::cuda {
namespace {

using internal::BlockMax;
using internal::BlockSum;
using internal::CeilDiv;
using internal::CheckMatrix;
using internal::CheckPointer;
using internal::Invalid;
using internal::kWarpSize;
using internal::LaunchStatus;
using internal::RowPtr;

// Threads for a one-block-per-row kernel: whole warps, at most 256, no more
// than the row needs.
int RowThreads(int n) { return std::min(256, std::max(kWarpSize, CeilDiv(n, kWarpSize) * kWarpSize)); }

// One block per row. y may alias x: every element is read for the sum before
// the barrier inside BlockSum, and afterwards each thread rewrites only the
// elements it reads.
__global__ void RmsNormKernel(int dim, const float* x_base, int ldx, const float* __restrict__ w, float eps,
                              float* y_base, int ldy) {
  __shared__ float scratch[kWarpSize];
  const std::int64_t r = blockIdx.x;
  const float* x = RowPtr(x_base, r, ldx);
  float* y = RowPtr(y_base, r, ldy);
  float sum_sq = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) sum_sq += x[i] * x[i];
  sum_sq = BlockSum(sum_sq, scratch);
  const float inv_rms = 1.0f / sqrtf(sum_sq / static_cast<float>(dim) + eps);
  for (int i = threadIdx.x; i < dim; i += blockDim.x) y[i] = w[i] * (x[i] * inv_rms);
}

// One warp per row. The output is de-interleaved, so pair p's result lands
// where pairs p/2 and (p + dim/2)/2 are read: the warp stages the row in shared
// memory first.
constexpr int kRopeWarpsPerBlock = 4;
constexpr int kRopeMaxDim = 2048;  // 4 warps x 2048 floats = 32 KiB of shared memory

__global__ void RopeKernel(int rows, int rows_per_pos, int dim, float* x_base, int ldx, const std::int32_t* pos,
                           const float* __restrict__ inv_freq, float attn_factor) {
  extern __shared__ float rope_smem[];
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  float* staged = rope_smem + warp * dim;
  const std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * kRopeWarpsPerBlock + warp;
  if (r >= rows) return;  // whole warps exit together; no block barrier below
  float* x = RowPtr(x_base, r, ldx);
  for (int i = lane; i < dim; i += kWarpSize) staged[i] = x[i];
  __syncwarp();
  const float position = static_cast<float>(pos[r / rows_per_pos]);
  const int half = dim / 2;
  for (int p = lane; p < half; p += kWarpSize) {
    const float angle = position * inv_freq[p];
    float s;
    float c;
    sincosf(angle, &s, &c);
    c *= attn_factor;
    s *= attn_factor;
    const float x0 = staged[2 * p];
    const float x1 = staged[2 * p + 1];
    x[p] = x0 * c - x1 * s;
    x[p + half] = x1 * c + x0 * s;
  }
}

// The gate activations of ActMulKernel.
struct Silu {
  // For g < -88.7 expf(-g) is +inf and g / inf is -0, as in the reference.
  __device__ float operator()(float g) const { return g / (1.0f + expf(-g)); }
};
struct Gelu {
  // torch's exact GELU (erff is within 2 ulp, as the CPU's erf).
  __device__ float operator()(float g) const { return g * 0.5f * (1.0f + erff(g * 0.70710678118654752440f)); }
};

// out = act(gate) * up, flat over rows * n elements; a null up: act(gate)
// alone. out may alias gate or up: each element is read and written by the
// same thread.
template <typename Act>
__global__ void ActMulKernel(int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out,
                             int ldo) {
  const Act act;
  const std::int64_t total = static_cast<std::int64_t>(rows) * n;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const std::int64_t r = idx / n;
    const int i = static_cast<int>(idx - r * n);
    const float a = act(RowPtr(gate, r, ldg)[i]);
    RowPtr(out, r, ldo)[i] = up == nullptr ? a : a * RowPtr(up, r, ldu)[i];
  }
}

// x may alias y (y = (1 + alpha) y), so no __restrict__.
__global__ void AxpyKernel(int n, float alpha, const float* x, float* y) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) y[i] += alpha * x[i];
}

// One block per row, three passes over the row (max, sum, write); rows of the
// model's sizes stay in L1/L2 between passes. A row that is all -inf gives NaN,
// as the reference does.
__global__ void SoftmaxKernel(int n, float* x_base, int ldx) {
  __shared__ float scratch[kWarpSize];
  float* x = RowPtr(x_base, blockIdx.x, ldx);
  float max = -INFINITY;
  for (int i = threadIdx.x; i < n; i += blockDim.x) max = fmaxf(max, x[i]);
  max = BlockMax(max, scratch);
  float sum = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) sum += expf(x[i] - max);
  sum = BlockSum(sum, scratch);
  for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] = expf(x[i] - max) / sum;
}

// Enough blocks to fill an H100/H200/B200 several times over; the grid-stride
// loops cover any size.
constexpr int kElementwiseThreads = 256;
constexpr std::int64_t kMaxElementwiseBlocks = 8192;

int ElementwiseBlocks(std::int64_t total) {
  return static_cast<int>(std::min(kMaxElementwiseBlocks, (total + kElementwiseThreads - 1) / kElementwiseThreads));
}

}  // namespace

absl::Status RmsNorm(int rows, int dim, const float* x, int ldx, const float* w, float eps, float* y, int ldy,
                     Stream stream) {
  constexpr const char* kOp = "cuda::RmsNorm";
  if (dim < 1) return Invalid(kOp, "dim must be >= 1, got " + std::to_string(dim));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(kOp, "x", rows, dim, x, ldx));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(kOp, "y", rows, dim, y, ldy));
  if (rows == 0) return absl::OkStatus();
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "w", w));
  RmsNormKernel<<<rows, RowThreads(dim), 0, stream>>>(dim, x, ldx, w, eps, y, ldy);
  return LaunchStatus(kOp);
}

absl::Status RopeInterleaved(int rows, int rows_per_pos, int dim, float* x, int ldx, const std::int32_t* pos,
                             const float* inv_freq, float attn_factor, Stream stream) {
  constexpr const char* kOp = "cuda::RopeInterleaved";
  if (dim < 2 || dim % 2 != 0 || dim > kRopeMaxDim) {
    return Invalid(kOp, "dim must be even and in [2, " + std::to_string(kRopeMaxDim) + "], got " + std::to_string(dim));
  }
  if (rows_per_pos < 1) return Invalid(kOp, "rows_per_pos must be >= 1");
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(kOp, "x", rows, dim, x, ldx));
  if (rows == 0) return absl::OkStatus();
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "pos", pos));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "inv_freq", inv_freq));
  const int blocks = CeilDiv(rows, kRopeWarpsPerBlock);
  const std::size_t smem = sizeof(float) * kRopeWarpsPerBlock * dim;
  RopeKernel<<<blocks, kRopeWarpsPerBlock * kWarpSize, smem, stream>>>(rows, rows_per_pos, dim, x, ldx, pos, inv_freq,
                                                                       attn_factor);
  return LaunchStatus(kOp);
}

namespace {

// act(gate) * up (or act(gate) without up) through `kernel`, elementwise.
absl::Status ActMul(const char* op, void (*kernel)(int, int, const float*, int, const float*, int, float*, int),
                    int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out, int ldo,
                    Stream stream) {
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(op, "gate", rows, n, gate, ldg));
  if (up != nullptr) SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(op, "up", rows, n, up, ldu));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(op, "out", rows, n, out, ldo));
  const std::int64_t total = static_cast<std::int64_t>(rows) * n;
  if (total == 0) return absl::OkStatus();
  kernel<<<ElementwiseBlocks(total), kElementwiseThreads, 0, stream>>>(rows, n, gate, ldg, up, ldu, out, ldo);
  return LaunchStatus(op);
}

}  // namespace

absl::Status SiluMul(int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out, int ldo,
                     Stream stream) {
  return ActMul("cuda::SiluMul", ActMulKernel<Silu>, rows, n, gate, ldg, up, ldu, out, ldo, stream);
}

absl::Status GeluMul(int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out, int ldo,
                     Stream stream) {
  return ActMul("cuda::GeluMul", ActMulKernel<Gelu>, rows, n, gate, ldg, up, ldu, out, ldo, stream);
}

absl::Status Axpy(int n, float alpha, const float* x, float* y, Stream stream) {
  constexpr const char* kOp = "cuda::Axpy";
  if (n < 0) return Invalid(kOp, "n must be >= 0");
  if (n == 0) return absl::OkStatus();
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "x", x));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "y", y));
  AxpyKernel<<<ElementwiseBlocks(n), kElementwiseThreads, 0, stream>>>(n, alpha, x, y);
  return LaunchStatus(kOp);
}

absl::Status Softmax(int rows, int n, float* x, int ldx, Stream stream) {
  constexpr const char* kOp = "cuda::Softmax";
  if (n < 1) return Invalid(kOp, "n must be >= 1, got " + std::to_string(n));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(kOp, "x", rows, n, x, ldx));
  if (rows == 0) return absl::OkStatus();
  SoftmaxKernel<<<rows, RowThreads(n), 0, stream>>>(n, x, ldx);
  return LaunchStatus(kOp);
}

}  // namespace sirocco::kernels::cuda
