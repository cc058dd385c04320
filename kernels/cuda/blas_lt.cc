// FP8 products through cuBLASLt. cuBLASLt is column-major and its FP8
// kernels take only the "TN" form, op(A) = A^T and op(B) = B. A row-major
// [rows, cols] matrix read column-major with the same leading dimension is its
// transpose, so the row-major product C[m,n] = A[m,k] B[n,k]^T is issued as
//   C^T[n,m] = W^T . X   with cuBLAS A := our b (stored k x n, ld ldb, op T)
//                        and  cuBLAS B := our a (stored k x m, ld lda, op N),
// cuBLAS (M, N, K) = (n, m, k). Both operands are then k-contiguous, the TN
// form. The scales swap places with their operands: our b_scale is cuBLAS's
// A scale (128x128 blocks: "K-major, column stride a multiple of 4" = our
// row-major [ceil(n/128), Fp8BlockScaleLd(k)]) and our a_scale its B scale
// (1x128 groups: "N-major, N x L" = our [G, m] with m contiguous).
//
// Every product builds its descriptors afresh and asks the heuristic for one
// algorithm; cuBLASLt caches heuristic answers itself, so a repeated shape
// costs a cache lookup. The preference states the pointers' real alignment
// (the default assumes 256 bytes), so the chosen kernel never relies on more.
#include "kernels/cuda/blas_lt.h"

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <library_types.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_status.h"

namespace sirocco::kernels::cuda {
namespace {

using internal::CublasStatus;
using internal::CudaStatus;

constexpr std::size_t kWorkspaceBytes = std::size_t{32} << 20;
constexpr int kTensorCoreAlignBytes = 16;

int CeilDivInt(int a, int b) { return (a + b - 1) / b; }

absl::Status Invalid(const std::string& what) { return absl::InvalidArgumentError("cuda::BlasLt: " + what); }
absl::Status Unsupported(const std::string& what) { return absl::UnimplementedError("cuda::BlasLt: " + what); }

bool Aligned(const void* p, std::uintptr_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }

// The largest power of two dividing the address, capped at 256 (the
// heuristic's default assumption).
std::uint32_t PointerAlignment(const void* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t align = 256;
  while (align > 1 && address % align != 0) align /= 2;
  return align;
}

// Owning wrappers for the per-product descriptors.
struct MatmulDesc {
  cublasLtMatmulDesc_t desc = nullptr;
  ~MatmulDesc() {
    if (desc != nullptr) (void)cublasLtMatmulDescDestroy(desc);
  }
};
struct Layout {
  cublasLtMatrixLayout_t layout = nullptr;
  ~Layout() {
    if (layout != nullptr) (void)cublasLtMatrixLayoutDestroy(layout);
  }
};
struct Preference {
  cublasLtMatmulPreference_t pref = nullptr;
  ~Preference() {
    if (pref != nullptr) (void)cublasLtMatmulPreferenceDestroy(pref);
  }
};

template <typename T>
absl::Status SetDesc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const T& value) {
  return CublasStatus(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)),
                      "cuda::BlasLt: cublasLtMatmulDescSetAttribute");
}

template <typename T>
absl::Status SetPref(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const T& value) {
  return CublasStatus(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)),
                      "cuda::BlasLt: cublasLtMatmulPreferenceSetAttribute");
}

absl::Status MakeLayout(cudaDataType_t type, int rows, int cols, int ld, Layout* out) {
  return CublasStatus(cublasLtMatrixLayoutCreate(&out->layout, type, static_cast<std::uint64_t>(rows),
                                                 static_cast<std::uint64_t>(cols), static_cast<std::int64_t>(ld)),
                      "cuda::BlasLt: cublasLtMatrixLayoutCreate");
}

// C = beta C (or zero) for k == 0, which cuBLASLt need not accept.
absl::Status EmptyInnerDimension(const Fp8GemmParams& p, Fp8Output out, float beta, void* c, int ldc, Stream stream) {
  const std::size_t elem = out == Fp8Output::kFloat32 ? sizeof(float) : sizeof(Bf16);
  if (out == Fp8Output::kBf16 || beta == 0.0f) {
    return CudaStatus(cudaMemset2DAsync(c, elem * ldc, 0, elem * p.n, p.m, stream), "cuda::BlasLt: cudaMemset2DAsync");
  }
  if (beta == 1.0f) return absl::OkStatus();
  return Unsupported("k == 0 with beta other than 0 or 1");
}

}  // namespace

int Fp8BlockScaleLd(int k) { return CeilDivInt(CeilDivInt(std::max(k, 0), kFp8BlockSize), 4) * 4; }

std::vector<float> PadFp8BlockScales(int n, int k, const float* scale_inv) {
  const int rows = CeilDivInt(std::max(n, 0), kFp8BlockSize);
  const int groups = CeilDivInt(std::max(k, 0), kFp8BlockSize);
  const int ld = Fp8BlockScaleLd(k);
  std::vector<float> padded(static_cast<std::size_t>(rows) * ld, 0.0f);
  for (int r = 0; r < rows; ++r) {
    std::copy_n(scale_inv + static_cast<std::size_t>(r) * groups, groups,
                padded.begin() + static_cast<std::ptrdiff_t>(r) * ld);
  }
  return padded;
}

absl::Status CheckGemmNtFp8(const Fp8GemmParams& p, Fp8Output out, const void* c, int ldc) {
  // Malformed arguments first.
  if (p.m < 0 || p.n < 0 || p.k < 0) {
    return Invalid("negative shape m=" + std::to_string(p.m) + " n=" + std::to_string(p.n) +
                   " k=" + std::to_string(p.k));
  }
  if (p.lda < std::max(1, p.k)) return Invalid("lda " + std::to_string(p.lda) + " < k " + std::to_string(p.k));
  if (p.ldb < std::max(1, p.k)) return Invalid("ldb " + std::to_string(p.ldb) + " < k " + std::to_string(p.k));
  if (ldc < std::max(1, p.n)) return Invalid("ldc " + std::to_string(ldc) + " < n " + std::to_string(p.n));
  if (p.scaling != Fp8Scaling::kPerTensor && p.scaling != Fp8Scaling::kBlock) return Invalid("unknown scaling");
  if (out != Fp8Output::kFloat32 && out != Fp8Output::kBf16) return Invalid("unknown output type");
  if (p.m == 0 || p.n == 0) return absl::OkStatus();
  if (c == nullptr) return Invalid("c is null");
  if (p.k > 0 && (p.a == nullptr || p.b == nullptr || p.a_scale == nullptr || p.b_scale == nullptr)) {
    return Invalid("a, b or a scale is null");
  }

  // Then what the FP8 tensor-core kernels need.
  const int c_elem = out == Fp8Output::kFloat32 ? static_cast<int>(sizeof(float)) : static_cast<int>(sizeof(Bf16));
  const int c_units = kTensorCoreAlignBytes / c_elem;
  if (!Aligned(c, kTensorCoreAlignBytes)) return Unsupported("c is not 16-byte aligned");
  if (p.n % c_units != 0 || ldc % c_units != 0) {
    return Unsupported("n " + std::to_string(p.n) + " and ldc " + std::to_string(ldc) + " must be multiples of " +
                       std::to_string(c_units) + " for this output type");
  }
  if (p.k == 0) return absl::OkStatus();  // no FP8 operand is read
  if (p.k % 16 != 0 || p.lda % 16 != 0 || p.ldb % 16 != 0) {
    return Unsupported("k " + std::to_string(p.k) + ", lda " + std::to_string(p.lda) + " and ldb " +
                       std::to_string(p.ldb) + " must be multiples of 16");
  }
  if (!Aligned(p.a, kTensorCoreAlignBytes) || !Aligned(p.b, kTensorCoreAlignBytes) ||
      !Aligned(p.a_scale, kTensorCoreAlignBytes) || !Aligned(p.b_scale, kTensorCoreAlignBytes)) {
    return Unsupported("a, b and the scales must be 16-byte aligned");
  }
  if (p.scaling == Fp8Scaling::kBlock && p.m % 4 != 0) {
    return Unsupported("block scaling needs m a multiple of 4 (pad the activations), got m=" + std::to_string(p.m));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BlasLt>> BlasLt::Create() {
  int device = 0;
  SIROCCO_CUDA_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&device), "cuda::BlasLt: cudaGetDevice"));
  int major = 0;
  int minor = 0;
  SIROCCO_CUDA_RETURN_IF_ERROR(CudaStatus(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
                                          "cuda::BlasLt: cudaDeviceGetAttribute"));
  SIROCCO_CUDA_RETURN_IF_ERROR(CudaStatus(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device),
                                          "cuda::BlasLt: cudaDeviceGetAttribute"));
  void* workspace = nullptr;
  SIROCCO_CUDA_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&workspace, kWorkspaceBytes), "cuda::BlasLt: cudaMalloc"));
  cublasLtHandle_t handle = nullptr;
  if (absl::Status st = CublasStatus(cublasLtCreate(&handle), "cublasLtCreate"); !st.ok()) {
    (void)cudaFree(workspace);
    return st;
  }
  return std::unique_ptr<BlasLt>(new BlasLt(handle, workspace, 10 * major + minor));
}

BlasLt::~BlasLt() {
  if (handle_ != nullptr) (void)cublasLtDestroy(handle_);
  if (workspace_ != nullptr) (void)cudaFree(workspace_);
}

absl::Status BlasLt::GemmNtFp8(const Fp8GemmParams& p, float beta, float* c, int ldc, Stream stream) {
  return Gemm(p, Fp8Output::kFloat32, beta, c, ldc, stream);
}

absl::Status BlasLt::GemmNtFp8(const Fp8GemmParams& p, Bf16* c, int ldc, Stream stream) {
  return Gemm(p, Fp8Output::kBf16, 0.0f, c, ldc, stream);
}

absl::Status BlasLt::Gemm(const Fp8GemmParams& p, Fp8Output out, float beta, void* c, int ldc, Stream stream) {
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckGemmNtFp8(p, out, c, ldc));
  if (p.m == 0 || p.n == 0) return absl::OkStatus();
  if (!SupportsFp8()) {
    return Unsupported("FP8 products need compute capability 9.0 or newer, the device has " +
                       std::to_string(compute_capability_));
  }
  if (p.scaling == Fp8Scaling::kBlock && !SupportsBlockScaling()) {
    return Unsupported("block scaling needs compute capability 9.x, the device has " +
                       std::to_string(compute_capability_));
  }
  if (p.k == 0) return EmptyInnerDimension(p, out, beta, c, ldc, stream);

  MatmulDesc desc;
  SIROCCO_CUDA_RETURN_IF_ERROR(CublasStatus(cublasLtMatmulDescCreate(&desc.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                                            "cuda::BlasLt: cublasLtMatmulDescCreate"));
  SIROCCO_CUDA_RETURN_IF_ERROR(SetDesc(desc.desc, CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T));
  SIROCCO_CUDA_RETURN_IF_ERROR(SetDesc(desc.desc, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N));
  // cuBLAS A is our weight b, cuBLAS B our activation a (see the top).
  const std::int32_t a_mode = p.scaling == Fp8Scaling::kBlock ? CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F
                                                              : CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
  const std::int32_t b_mode = p.scaling == Fp8Scaling::kBlock ? CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F
                                                              : CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F;
  SIROCCO_CUDA_RETURN_IF_ERROR(SetDesc(desc.desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, a_mode));
  SIROCCO_CUDA_RETURN_IF_ERROR(SetDesc(desc.desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, b_mode));
  const void* a_scale_ptr = p.b_scale;
  const void* b_scale_ptr = p.a_scale;
  SIROCCO_CUDA_RETURN_IF_ERROR(SetDesc(desc.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, a_scale_ptr));
  SIROCCO_CUDA_RETURN_IF_ERROR(SetDesc(desc.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, b_scale_ptr));
  // FAST_ACCUM stays at its default (off): the kernels promote the tensor
  // cores' partial sums to float32 periodically, which the block modes
  // require anyway.

  const cudaDataType_t c_type = out == Fp8Output::kFloat32 ? CUDA_R_32F : CUDA_R_16BF;
  Layout a_layout;
  Layout b_layout;
  Layout c_layout;
  SIROCCO_CUDA_RETURN_IF_ERROR(MakeLayout(CUDA_R_8F_E4M3, p.k, p.n, p.ldb, &a_layout));
  SIROCCO_CUDA_RETURN_IF_ERROR(MakeLayout(CUDA_R_8F_E4M3, p.k, p.m, p.lda, &b_layout));
  SIROCCO_CUDA_RETURN_IF_ERROR(MakeLayout(c_type, p.n, p.m, ldc, &c_layout));

  Preference pref;
  SIROCCO_CUDA_RETURN_IF_ERROR(
      CublasStatus(cublasLtMatmulPreferenceCreate(&pref.pref), "cuda::BlasLt: cublasLtMatmulPreferenceCreate"));
  const std::uint64_t workspace_bytes = kWorkspaceBytes;
  SIROCCO_CUDA_RETURN_IF_ERROR(SetPref(pref.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, workspace_bytes));
  SIROCCO_CUDA_RETURN_IF_ERROR(SetPref(pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, PointerAlignment(p.b)));
  SIROCCO_CUDA_RETURN_IF_ERROR(SetPref(pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, PointerAlignment(p.a)));
  SIROCCO_CUDA_RETURN_IF_ERROR(SetPref(pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, PointerAlignment(c)));
  SIROCCO_CUDA_RETURN_IF_ERROR(SetPref(pref.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, PointerAlignment(c)));

  cublasLtMatmulHeuristicResult_t heuristic = {};
  int found = 0;
  const cublasStatus_t hs =
      cublasLtMatmulAlgoGetHeuristic(handle_, desc.desc, a_layout.layout, b_layout.layout, c_layout.layout,
                                     c_layout.layout, pref.pref, 1, &heuristic, &found);
  const auto shape = [&] {
    return "m=" + std::to_string(p.m) + " n=" + std::to_string(p.n) + " k=" + std::to_string(p.k) +
           (p.scaling == Fp8Scaling::kBlock ? " block" : " per-tensor") +
           (out == Fp8Output::kFloat32 ? " f32 out" : " bf16 out");
  };
  if (hs == CUBLAS_STATUS_NOT_SUPPORTED || (hs == CUBLAS_STATUS_SUCCESS && found == 0)) {
    return Unsupported("cuBLASLt has no FP8 algorithm for " + shape());
  }
  SIROCCO_CUDA_RETURN_IF_ERROR(CublasStatus(hs, "cuda::BlasLt: cublasLtMatmulAlgoGetHeuristic"));

  // C and D are the same buffer with the same layout, which cuBLASLt allows;
  // with beta == 0 C is not read.
  const float alpha = 1.0f;
  const cublasStatus_t st =
      cublasLtMatmul(handle_, desc.desc, &alpha, p.b, a_layout.layout, p.a, b_layout.layout, &beta, c, c_layout.layout,
                     c, c_layout.layout, &heuristic.algo, workspace_, kWorkspaceBytes, stream);
  if (st != CUBLAS_STATUS_SUCCESS) return CublasStatus(st, ("cuda::BlasLt: cublasLtMatmul " + shape()).c_str());
  return absl::OkStatus();
}

}  // namespace sirocco::kernels::cuda
