// Dense products through cuBLAS. cuBLAS is column-major; a row-major C[m,n]
// is the column-major n x m matrix C^T, so every product is issued as
//   C^T = op(B) . A^T, i.e. A and B swap places:
//   gemm_nt: C^T[n,m] = B[n,k] . A^T[k,m]   -> cublas(T, N, n, m, k, B, A)
//   gemm_nn: C^T[n,m] = B^T[n,k] . A^T[k,m] -> cublas(N, N, n, m, k, B, A)
// where each row-major operand, read column-major with the same leading
// dimension, is already its transpose.
// cublasSetStream is called on every product: a Blas serves one thread, and
// that thread may switch streams between calls.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <library_types.h>

#include <algorithm>
#include <memory>
#include <string>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"

namespace sirocco::kernels::cuda {
namespace {

using internal::CublasStatus;

absl::Status Invalid(const std::string& what) { return absl::InvalidArgumentError("cuda::Blas: " + what); }

// The shape rules of kernels.h gemms, plus cuBLAS's (leading dimensions >= 1).
absl::Status CheckGemm(int m, int n, int k, const void* a, int lda, const void* b, int ldb, int b_width, const void* c,
                       int ldc) {
  if (m < 0 || n < 0 || k < 0) {
    return Invalid("negative shape m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k));
  }
  if (lda < std::max(1, k)) return Invalid("lda " + std::to_string(lda) + " < k " + std::to_string(k));
  if (ldb < std::max(1, b_width)) return Invalid("ldb " + std::to_string(ldb) + " < " + std::to_string(b_width));
  if (ldc < std::max(1, n)) return Invalid("ldc " + std::to_string(ldc) + " < n " + std::to_string(n));
  if (m > 0 && n > 0) {
    if (c == nullptr) return Invalid("c is null");
    if (k > 0 && (a == nullptr || b == nullptr)) return Invalid("a or b is null");
  }
  return absl::OkStatus();
}

// C = beta C for an empty inner dimension, without relying on how a given
// cuBLAS version treats k == 0. beta == 0 must not read C (it may hold NaN).
absl::Status ScaleC(cublasHandle_t handle, int m, int n, float beta, float* c, int ldc, Stream stream) {
  if (beta == 0.0f) {
    return internal::CudaStatus(cudaMemset2DAsync(c, sizeof(float) * ldc, 0, sizeof(float) * n, m, stream),
                                "cuda::Blas: cudaMemset2DAsync");
  }
  // In-place geam: C = beta * C + 0 * C.
  const float zero = 0.0f;
  return CublasStatus(cublasSgeam(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, m, &beta, c, ldc, &zero, c, ldc, c, ldc),
                      "cuda::Blas: cublasSgeam");
}

}  // namespace

absl::StatusOr<std::unique_ptr<Blas>> Blas::Create() {
  cublasHandle_t handle = nullptr;
  SIROCCO_CUDA_RETURN_IF_ERROR(CublasStatus(cublasCreate(&handle), "cublasCreate"));
  std::unique_ptr<Blas> blas(new Blas(handle));
  // Full float32 for Sgemm: no TF32 even if the process default says so, so
  // the float32 path matches the CPU backends to rounding.
  SIROCCO_CUDA_RETURN_IF_ERROR(CublasStatus(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH), "cublasSetMathMode"));
  // Scalars (alpha, beta) are host values.
  SIROCCO_CUDA_RETURN_IF_ERROR(
      CublasStatus(cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode"));
  return blas;
}

Blas::~Blas() {
  if (handle_ != nullptr) (void)cublasDestroy(handle_);
}

absl::Status Blas::GemmNt(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta, float* c,
                          int ldc, Stream stream) {
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckGemm(m, n, k, a, lda, b, ldb, k, c, ldc));
  if (m == 0 || n == 0) return absl::OkStatus();
  SIROCCO_CUDA_RETURN_IF_ERROR(CublasStatus(cublasSetStream(handle_, stream), "cublasSetStream"));
  if (k == 0) return ScaleC(handle_, m, n, beta, c, ldc, stream);
  const float alpha = 1.0f;
  return CublasStatus(cublasSgemm(handle_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, b, ldb, a, lda, &beta, c, ldc),
                      "cuda::Blas::GemmNt: cublasSgemm");
}

absl::Status Blas::GemmNn(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float beta, float* c,
                          int ldc, Stream stream) {
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckGemm(m, n, k, a, lda, b, ldb, n, c, ldc));
  if (m == 0 || n == 0) return absl::OkStatus();
  SIROCCO_CUDA_RETURN_IF_ERROR(CublasStatus(cublasSetStream(handle_, stream), "cublasSetStream"));
  if (k == 0) return ScaleC(handle_, m, n, beta, c, ldc, stream);
  const float alpha = 1.0f;
  return CublasStatus(cublasSgemm(handle_, CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &alpha, b, ldb, a, lda, &beta, c, ldc),
                      "cuda::Blas::GemmNn: cublasSgemm");
}

namespace {

absl::Status GemmBatchedImpl(cublasHandle_t handle, cublasOperation_t op_b, int batch, int m, int n, int k,
                             const float* a, int lda, std::int64_t stride_a, const float* b, int ldb,
                             std::int64_t stride_b, float beta, float* c, int ldc, std::int64_t stride_c,
                             Stream stream) {
  const int b_width = op_b == CUBLAS_OP_T ? k : n;
  if (batch < 0) return Invalid("negative batch " + std::to_string(batch));
  if (stride_a < 0 || stride_b < 0 || stride_c < 0) return Invalid("negative batch stride");
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckGemm(m, n, k, a, lda, b, ldb, b_width, c, ldc));
  if (batch == 0 || m == 0 || n == 0) return absl::OkStatus();
  SIROCCO_CUDA_RETURN_IF_ERROR(CublasStatus(cublasSetStream(handle, stream), "cublasSetStream"));
  if (k == 0) {
    for (int i = 0; i < batch; ++i) SIROCCO_CUDA_RETURN_IF_ERROR(ScaleC(handle, m, n, beta, c + i * stride_c, ldc, stream));
    return absl::OkStatus();
  }
  const float alpha = 1.0f;
  return CublasStatus(cublasSgemmStridedBatched(handle, op_b, CUBLAS_OP_N, n, m, k, &alpha, b, ldb, stride_b, a, lda,
                                                stride_a, &beta, c, ldc, stride_c, batch),
                      "cuda::Blas: cublasSgemmStridedBatched");
}

}  // namespace

absl::Status Blas::GemmNtBatched(int batch, int m, int n, int k, const float* a, int lda, std::int64_t stride_a,
                                 const float* b, int ldb, std::int64_t stride_b, float beta, float* c, int ldc,
                                 std::int64_t stride_c, Stream stream) {
  return GemmBatchedImpl(handle_, CUBLAS_OP_T, batch, m, n, k, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc,
                         stride_c, stream);
}

absl::Status Blas::GemmNnBatched(int batch, int m, int n, int k, const float* a, int lda, std::int64_t stride_a,
                                 const float* b, int ldb, std::int64_t stride_b, float beta, float* c, int ldc,
                                 std::int64_t stride_c, Stream stream) {
  return GemmBatchedImpl(handle_, CUBLAS_OP_N, batch, m, n, k, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc,
                         stride_c, stream);
}

namespace {

absl::Status GemmNtBf16Impl(cublasHandle_t handle, int m, int n, int k, const Bf16* a, int lda, const Bf16* b, int ldb,
                            float beta, void* c, cudaDataType_t c_type, int ldc, Stream stream) {
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckGemm(m, n, k, a, lda, b, ldb, k, c, ldc));
  if (m == 0 || n == 0) return absl::OkStatus();
  SIROCCO_CUDA_RETURN_IF_ERROR(CublasStatus(cublasSetStream(handle, stream), "cublasSetStream"));
  if (k == 0) {
    if (c_type == CUDA_R_32F) return ScaleC(handle, m, n, beta, static_cast<float*>(c), ldc, stream);
    return absl::UnimplementedError("cuda::Blas::GemmNtBf16: k == 0 with a bf16 output");
  }
  const float alpha = 1.0f;
  // bf16 x bf16 products are exact in float32; CUBLAS_COMPUTE_32F keeps the
  // sums in float32 as well (tensor cores on sm_80+).
  return CublasStatus(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, b, CUDA_R_16BF, ldb, a,
                                   CUDA_R_16BF, lda, &beta, c, c_type, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                      "cuda::Blas::GemmNtBf16: cublasGemmEx");
}

}  // namespace

absl::Status Blas::GemmBf16Batched(bool transpose_b, int batch, int m, int n, int k, const Bf16* a, int lda,
                                   std::int64_t stride_a, const Bf16* b, int ldb, std::int64_t stride_b, float beta,
                                   float* c, int ldc, std::int64_t stride_c, Stream stream) {
  if (batch < 0) return Invalid("negative batch " + std::to_string(batch));
  if (stride_a < 0 || stride_b < 0 || stride_c < 0) return Invalid("negative batch stride");
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckGemm(m, n, k, a, lda, b, ldb, transpose_b ? k : n, c, ldc));
  if (batch == 0 || m == 0 || n == 0) return absl::OkStatus();
  SIROCCO_CUDA_RETURN_IF_ERROR(CublasStatus(cublasSetStream(handle_, stream), "cublasSetStream"));
  if (k == 0) {
    for (int i = 0; i < batch; ++i) {
      SIROCCO_CUDA_RETURN_IF_ERROR(ScaleC(handle_, m, n, beta, c + i * stride_c, ldc, stream));
    }
    return absl::OkStatus();
  }
  const float alpha = 1.0f;
  return CublasStatus(
      cublasGemmStridedBatchedEx(handle_, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &alpha, b,
                                 CUDA_R_16BF, ldb, stride_b, a, CUDA_R_16BF, lda, stride_a, &beta, c, CUDA_R_32F, ldc,
                                 stride_c, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cuda::Blas::GemmBf16Batched: cublasGemmStridedBatchedEx");
}

absl::Status Blas::GemmNtBf16(int m, int n, int k, const Bf16* a, int lda, const Bf16* b, int ldb, float beta, float* c,
                              int ldc, Stream stream) {
  return GemmNtBf16Impl(handle_, m, n, k, a, lda, b, ldb, beta, c, CUDA_R_32F, ldc, stream);
}

absl::Status Blas::GemmNtBf16(int m, int n, int k, const Bf16* a, int lda, const Bf16* b, int ldb, float beta, Bf16* c,
                              int ldc, Stream stream) {
  return GemmNtBf16Impl(handle_, m, n, k, a, lda, b, ldb, beta, c, CUDA_R_16BF, ldc, stream);
}

}  // namespace sirocco::kernels::cuda
