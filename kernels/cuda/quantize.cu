// Activation quantisers for the FP8 products of blas_lt.h: float32 or bf16
// [rows, cols] -> e4m3 codes plus float32 scales, per tensor or per row and
// 128-column group. Memory-bound; each element is read once for the amax and
// once more (per tensor: from L2 for small inputs) for the conversion.
//
// The codes must equal the host's engine::FloatToF8E4M3(x / s) bit for bit,
// so the scale and the division are plain IEEE float32 (no fast-math; nvcc's
// default -prec-div=true) and the conversion is the saturating
// round-to-nearest-even __nv_cvt_float_to_fp8 (one cvt instruction on sm_89+).
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "kernels/cuda/blas_lt.h"
#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_status.h"

namespace sirocco::kernels::cuda {
namespace {

using internal::BlockMax;
using internal::CeilDiv;
using internal::CheckMatrix;
using internal::CheckPointer;
using internal::CudaStatus;
using internal::kWarpSize;
using internal::LaunchStatus;
using internal::RowPtr;
using internal::WarpMax;

constexpr int kThreads = 256;
constexpr int kMaxRowBlocks = 4096;  // per-tensor kernels stride over rows beyond this
constexpr int kGroupWarpsPerBlock = kThreads / kWarpSize;

__device__ __forceinline__ float Load(const float* p) { return *p; }
__device__ __forceinline__ float Load(const Bf16* p) { return __uint_as_float(static_cast<unsigned>(p->bits) << 16); }

__device__ __forceinline__ std::uint8_t ToE4M3(float v) {
  return static_cast<std::uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}

// The scale rule of blas_lt.h: amax / 448, or 1 when that is not a positive
// finite float (all zeros, an underflow, an infinite input).
__device__ __forceinline__ float ScaleFromAmax(float amax) {
  const float s = amax / kFp8E4M3Max;
  return (s > 0.0f && isfinite(s)) ? s : 1.0f;
}

// Per tensor, step 1: amax of |x| into *amax_bits (zeroed before). Bits of
// non-negative floats order like the floats, so an integer atomicMax is a
// float max. fmaxf drops NaNs.
template <typename T>
__global__ void AmaxKernel(int rows, int cols, const T* x, int ldx, unsigned* amax_bits) {
  __shared__ float scratch[kWarpSize];
  float amax = 0.0f;
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* row = RowPtr(x, r, ldx);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) amax = fmaxf(amax, fabsf(Load(row + c)));
  }
  amax = BlockMax(amax, scratch);
  if (threadIdx.x == 0) atomicMax(amax_bits, __float_as_uint(amax));
}

// Step 2: the amax, in place, becomes the scale.
__global__ void AmaxToScaleKernel(float* scale) { *scale = ScaleFromAmax(*scale); }

// Step 3: the codes.
template <typename T>
__global__ void QuantizeWithScaleKernel(int rows, int cols, const T* x, int ldx, const float* scale, std::uint8_t* q,
                                        int ldq) {
  const float s = *scale;
  for (int r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = RowPtr(x, r, ldx);
    std::uint8_t* qr = RowPtr(q, r, ldq);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) qr[c] = ToE4M3(Load(xr + c) / s);
  }
}

// One warp per (row, group): lanes hold elements lane + 32 j of the group's
// 128, so every load and store is coalesced. Consecutive warps take
// consecutive groups of a row.
template <typename T>
__global__ void QuantizeGroupsKernel(int rows, int cols, const T* x, int ldx, std::uint8_t* q, int ldq, float* scales) {
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int groups = CeilDiv(cols, kFp8BlockSize);
  const std::int64_t item = static_cast<std::int64_t>(blockIdx.x) * kGroupWarpsPerBlock + warp;
  if (item >= static_cast<std::int64_t>(rows) * groups) return;  // whole warps exit together
  const auto r = static_cast<int>(item / groups);
  const auto g = static_cast<int>(item % groups);
  const T* xr = RowPtr(x, r, ldx);
  constexpr int kPerLane = kFp8BlockSize / kWarpSize;
  float v[kPerLane];
  float amax = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int c = g * kFp8BlockSize + j * kWarpSize + lane;
    v[j] = c < cols ? Load(xr + c) : 0.0f;
    amax = fmaxf(amax, fabsf(v[j]));
  }
  const float s = ScaleFromAmax(WarpMax(amax));
  std::uint8_t* qr = RowPtr(q, r, ldq);
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int c = g * kFp8BlockSize + j * kWarpSize + lane;
    if (c < cols) qr[c] = ToE4M3(v[j] / s);
  }
  if (lane == 0) scales[static_cast<std::int64_t>(g) * rows + r] = s;
}

absl::Status CheckQuantize(const char* op, int rows, int cols, const void* x, int ldx, const void* q, int ldq,
                           const void* scale) {
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(op, "x", rows, cols, x, ldx));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(op, "q", rows, cols, q, ldq));
  if (rows > 0 && cols > 0) SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(op, "scale", scale));
  return absl::OkStatus();
}

template <typename T>
absl::Status PerTensor(int rows, int cols, const T* x, int ldx, Fp8E4M3* q, int ldq, float* scale, Stream stream) {
  constexpr const char* kOp = "cuda::QuantizeFp8PerTensor";
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckQuantize(kOp, rows, cols, x, ldx, q, ldq, scale));
  if (rows == 0 || cols == 0) return absl::OkStatus();
  const int blocks = std::min(rows, kMaxRowBlocks);
  auto* q_bits = reinterpret_cast<std::uint8_t*>(q);
  SIROCCO_CUDA_RETURN_IF_ERROR(CudaStatus(cudaMemsetAsync(scale, 0, sizeof(float), stream), kOp));
  AmaxKernel<T><<<blocks, kThreads, 0, stream>>>(rows, cols, x, ldx, reinterpret_cast<unsigned*>(scale));
  SIROCCO_CUDA_RETURN_IF_ERROR(LaunchStatus("cuda::QuantizeFp8PerTensor: AmaxKernel"));
  AmaxToScaleKernel<<<1, 1, 0, stream>>>(scale);
  SIROCCO_CUDA_RETURN_IF_ERROR(LaunchStatus("cuda::QuantizeFp8PerTensor: AmaxToScaleKernel"));
  QuantizeWithScaleKernel<T><<<blocks, kThreads, 0, stream>>>(rows, cols, x, ldx, scale, q_bits, ldq);
  return LaunchStatus("cuda::QuantizeFp8PerTensor: QuantizeWithScaleKernel");
}

template <typename T>
absl::Status Groups128(int rows, int cols, const T* x, int ldx, Fp8E4M3* q, int ldq, float* scales, Stream stream) {
  constexpr const char* kOp = "cuda::QuantizeFp8Groups128";
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckQuantize(kOp, rows, cols, x, ldx, q, ldq, scales));
  if (rows == 0 || cols == 0) return absl::OkStatus();
  const std::int64_t items = static_cast<std::int64_t>(rows) * CeilDiv(cols, kFp8BlockSize);
  const std::int64_t blocks = (items + kGroupWarpsPerBlock - 1) / kGroupWarpsPerBlock;
  if (blocks > 0x7fffffff) return internal::Invalid(kOp, "too many groups: " + std::to_string(items));
  QuantizeGroupsKernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      rows, cols, x, ldx, reinterpret_cast<std::uint8_t*>(q), ldq, scales);
  return LaunchStatus("cuda::QuantizeFp8Groups128: QuantizeGroupsKernel");
}

}  // namespace

absl::Status QuantizeFp8PerTensor(int rows, int cols, const float* x, int ldx, Fp8E4M3* q, int ldq, float* scale,
                                  Stream stream) {
  return PerTensor(rows, cols, x, ldx, q, ldq, scale, stream);
}

absl::Status QuantizeFp8PerTensor(int rows, int cols, const Bf16* x, int ldx, Fp8E4M3* q, int ldq, float* scale,
                                  Stream stream) {
  return PerTensor(rows, cols, x, ldx, q, ldq, scale, stream);
}

absl::Status QuantizeFp8Groups128(int rows, int cols, const float* x, int ldx, Fp8E4M3* q, int ldq, float* scales,
                                  Stream stream) {
  return Groups128(rows, cols, x, ldx, q, ldq, scales, stream);
}

absl::Status QuantizeFp8Groups128(int rows, int cols, const Bf16* x, int ldx, Fp8E4M3* q, int ldq, float* scales,
                                  Stream stream) {
  return Groups128(rows, cols, x, ldx, q, ldq, scales, stream);
}

}  // namespace sirocco::kernels::cuda
