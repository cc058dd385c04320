// Internal to kernels/cuda: turning CUDA and cuBLAS results into absl::Status.
// Host code only; included by .cc and .cu files of this folder.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "absl/status/status.h"

namespace sirocco::kernels::cuda::internal {

inline absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(std::string(what) + ": " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

// After a kernel launch: launch-configuration errors are reported right away
// by cudaGetLastError, which also clears them so they do not leak into the
// next, unrelated call.
inline absl::Status LaunchStatus(const char* kernel) { return CudaStatus(cudaGetLastError(), kernel); }

inline absl::Status CublasStatus(cublasStatus_t st, const char* what) {
  if (st == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(std::string(what) + ": " + cublasGetStatusName(st) + ": " + cublasGetStatusString(st));
}

}  // namespace sirocco::kernels::cuda::internal

// Returns from the enclosing function when `expr` (an absl::Status) is not OK.
#define SIROCCO_CUDA_RETURN_IF_ERROR(expr)                                          \
  do {                                                                              \
    if (::absl::Status sirocco_cuda_status_ = (expr); !sirocco_cuda_status_.ok()) { \
      return sirocco_cuda_status_;                                                  \
    }                                                                               \
  } while (false)
