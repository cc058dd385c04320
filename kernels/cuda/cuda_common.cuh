// Internal to kernels/cuda: device helpers shared by the .cu files, and the
// host-side argument checks every launcher runs before touching the device.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace sirocco::kernels::cuda::internal {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------------------
// Device helpers.

// Row r of a row-major matrix; 64-bit offsets because rows * ld can exceed int
// (vocabulary-sized logits, long prefill batches).
template <typename T>
__device__ __forceinline__ T* RowPtr(T* base, std::int64_t r, int ld) {
  return base + r * static_cast<std::int64_t>(ld);
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// Block-wide sum / max for blocks of whole warps (<= 1024 threads); every
// thread gets the result. `scratch` holds kWarpSize floats of shared memory and
// may be reused once the call returns.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  v = WarpSum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = lane < num_warps ? scratch[lane] : 0.0f;
  total = WarpSum(total);
  __syncthreads();  // scratch is free again for the caller's next reduction
  return total;
}

__device__ __forceinline__ float BlockMax(float v, float* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  v = WarpMax(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = lane < num_warps ? scratch[lane] : -INFINITY;
  total = WarpMax(total);
  __syncthreads();
  return total;
}

// ---------------------------------------------------------------------------
// Host-side checks. Each returns InvalidArgument naming the op and the
// offending value, so a caller's log says which shape was wrong.

inline absl::Status Invalid(const char* op, const std::string& what) {
  return absl::InvalidArgumentError(std::string(op) + ": " + what);
}

// A rows x cols view with leading dimension ld: rows, cols >= 0, ld >= cols
// and ld >= 1, and a non-null pointer when the view is not empty.
inline absl::Status CheckMatrix(const char* op, const char* name, int rows, int cols, const void* ptr, int ld) {
  if (rows < 0 || cols < 0) {
    return Invalid(op, std::string(name) + " has negative shape " + std::to_string(rows) + "x" + std::to_string(cols));
  }
  if (ld < cols || ld < 1) {
    return Invalid(op,
                   std::string(name) + " leading dimension " + std::to_string(ld) + " < width " + std::to_string(cols));
  }
  if (rows > 0 && cols > 0 && ptr == nullptr) return Invalid(op, std::string(name) + " is null");
  return absl::OkStatus();
}

inline absl::Status CheckPointer(const char* op, const char* name, const void* ptr) {
  if (ptr == nullptr) return Invalid(op, std::string(name) + " is null");
  return absl::OkStatus();
}

inline bool Aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// Host and device: launchers size grids with it, kernels count tiles.
__host__ __device__ constexpr int CeilDiv(int a, int b) { return (a + b - 1) / b; }

}  // namespace sirocco::kernels::cuda::internal
