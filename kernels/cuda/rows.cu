// Row movement for the engine on a GPU: gathers (embedding lookup, the rows
// that want logits, a sequence's cached latents), scatters (new KV entries into
// their pool slots), per-row scaling (the llama-4 query scale) and strided
// copies between views. One block per row; threads stride over the row.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"

namespace sirocco::kernels::cuda {
namespace {

using internal::CheckMatrix;
using internal::CheckPointer;
using internal::CudaStatus;
using internal::Invalid;
using internal::LaunchStatus;

constexpr int kThreads = 128;

__global__ void GatherRowsKernel(int dim, const float* src, int lds, const std::int32_t* idx, float* dst, int ldd) {
  const std::int64_t r = blockIdx.x;
  const float* s = src + static_cast<std::int64_t>(idx[r]) * lds;
  float* d = dst + r * ldd;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) d[j] = s[j];
}

__global__ void GatherRowsBf16Kernel(int dim, const __nv_bfloat16* src, int lds, const std::int32_t* idx, float* dst,
                                     int ldd) {
  const std::int64_t r = blockIdx.x;
  const __nv_bfloat16* s = src + static_cast<std::int64_t>(idx[r]) * lds;
  float* d = dst + r * ldd;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) d[j] = __bfloat162float(s[j]);
}

__global__ void ConvertToBf16Kernel(int cols, const float* src, int lds, __nv_bfloat16* dst, int ldd) {
  const std::int64_t r = blockIdx.x;
  const float* s = src + r * lds;
  __nv_bfloat16* d = dst + r * ldd;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) d[j] = __float2bfloat16_rn(s[j]);
}

__global__ void ScatterRowsKernel(int dim, const float* src, int lds, const std::int32_t* idx, float* dst, int ldd) {
  const std::int64_t r = blockIdx.x;
  const float* s = src + r * lds;
  float* d = dst + static_cast<std::int64_t>(idx[r]) * ldd;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) d[j] = s[j];
}

__global__ void ScaleRowsKernel(int n, float* x, int ldx, const float* scales) {
  const std::int64_t r = blockIdx.x;
  const float s = scales[r];
  float* row = x + r * ldx;
  for (int j = threadIdx.x; j < n; j += blockDim.x) row[j] *= s;
}

// The row views of a gather or scatter: rows >= 0, width dim, each view's
// leading dimension at least dim. The indexed side's row count is not known
// on the host (indices are device data, trusted).
absl::Status CheckRows(const char* op, int rows, int dim, const void* src, int lds, const void* idx, const void* dst,
                       int ldd) {
  if (rows < 0 || dim < 0) return Invalid(op, "negative shape " + std::to_string(rows) + "x" + std::to_string(dim));
  if (lds < dim || lds < 1 || ldd < dim || ldd < 1) return Invalid(op, "leading dimension below the row width");
  if (rows > 0 && dim > 0) {
    SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(op, "src", src));
    SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(op, "idx", idx));
    SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(op, "dst", dst));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status GatherRows(int rows, int dim, const float* src, int lds, const std::int32_t* idx, float* dst, int ldd,
                        Stream stream) {
  constexpr const char* kOp = "cuda::GatherRows";
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckRows(kOp, rows, dim, src, lds, idx, dst, ldd));
  if (rows == 0 || dim == 0) return absl::OkStatus();
  GatherRowsKernel<<<rows, kThreads, 0, stream>>>(dim, src, lds, idx, dst, ldd);
  return LaunchStatus(kOp);
}

absl::Status GatherRowsBf16(int rows, int dim, const Bf16* src, int lds, const std::int32_t* idx, float* dst, int ldd,
                            Stream stream) {
  constexpr const char* kOp = "cuda::GatherRowsBf16";
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckRows(kOp, rows, dim, src, lds, idx, dst, ldd));
  if (rows == 0 || dim == 0) return absl::OkStatus();
  GatherRowsBf16Kernel<<<rows, kThreads, 0, stream>>>(dim, reinterpret_cast<const __nv_bfloat16*>(src), lds, idx, dst,
                                                      ldd);
  return LaunchStatus(kOp);
}

absl::Status ConvertToBf16(int rows, int cols, const float* src, int lds, Bf16* dst, int ldd, Stream stream) {
  constexpr const char* kOp = "cuda::ConvertToBf16";
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(kOp, "src", rows, cols, src, lds));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(kOp, "dst", rows, cols, dst, ldd));
  if (rows == 0 || cols == 0) return absl::OkStatus();
  ConvertToBf16Kernel<<<rows, kThreads, 0, stream>>>(cols, src, lds, reinterpret_cast<__nv_bfloat16*>(dst), ldd);
  return LaunchStatus(kOp);
}

absl::Status ScatterRows(int rows, int dim, const float* src, int lds, const std::int32_t* idx, float* dst, int ldd,
                         Stream stream) {
  constexpr const char* kOp = "cuda::ScatterRows";
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckRows(kOp, rows, dim, src, lds, idx, dst, ldd));
  if (rows == 0 || dim == 0) return absl::OkStatus();
  ScatterRowsKernel<<<rows, kThreads, 0, stream>>>(dim, src, lds, idx, dst, ldd);
  return LaunchStatus(kOp);
}

absl::Status ScaleRows(int rows, int n, float* x, int ldx, const float* scales, Stream stream) {
  constexpr const char* kOp = "cuda::ScaleRows";
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(kOp, "x", rows, n, x, ldx));
  if (rows == 0 || n == 0) return absl::OkStatus();
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "scales", scales));
  ScaleRowsKernel<<<rows, kThreads, 0, stream>>>(n, x, ldx, scales);
  return LaunchStatus(kOp);
}

absl::Status Copy2D(int rows, int cols, const float* src, int lds, float* dst, int ldd, Stream stream) {
  constexpr const char* kOp = "cuda::Copy2D";
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(kOp, "src", rows, cols, src, lds));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(kOp, "dst", rows, cols, dst, ldd));
  if (rows == 0 || cols == 0) return absl::OkStatus();
  return CudaStatus(
      cudaMemcpy2DAsync(dst, sizeof(float) * static_cast<std::size_t>(ldd), src,
                        sizeof(float) * static_cast<std::size_t>(lds), sizeof(float) * static_cast<std::size_t>(cols),
                        static_cast<std::size_t>(rows), cudaMemcpyDeviceToDevice, stream),
      "cuda::Copy2D: cudaMemcpy2DAsync");
}

}  // namespace sirocco::kernels::cuda
