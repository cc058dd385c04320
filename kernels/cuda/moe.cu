// Mixture-of-experts token routing on the device (cuda_kernels.h, "MoE"):
// group the (token, slot) assignments by expert, gather each expert's input
// rows into one contiguous matrix (so one product per expert covers all its
// tokens), and combine the experts' output rows back per token with the
// routing weights.
//
// MoeDispatch is a stable counting sort without atomics: one block per expert
// counts its assignments, one block scans the counts, and one block per
// expert places its assignments in assignment order with warp ballots. The
// result is therefore deterministic, and equal to a sequential stable sort.
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
using internal::Invalid;
using internal::kFullMask;
using internal::kWarpSize;
using internal::LaunchStatus;

constexpr int kDispatchThreads = 256;
constexpr int kDispatchWarps = kDispatchThreads / kWarpSize;
constexpr int kMaxExperts = 1024;  // the scan is one block of one thread per expert

// counts[e] = number of assignments i with ids[i] == e. One block per expert.
__global__ void MoeCountKernel(const std::int32_t* ids, int n, std::int32_t* counts) {
  __shared__ int warp_counts[kDispatchWarps];
  const int e = blockIdx.x;
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  int count = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) count += ids[i] == e ? 1 : 0;
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) count += __shfl_xor_sync(kFullMask, count, offset);
  if (lane == 0) warp_counts[warp] = count;
  __syncthreads();
  if (threadIdx.x == 0) {
    int total = 0;
    for (int w = 0; w < kDispatchWarps; ++w) total += warp_counts[w];
    counts[e] = total;
  }
}

// offsets[0] = 0, offsets[e + 1] = offsets[e] + counts[e]. One block of
// num_experts threads (<= 1024); a plain Hillis-Steele scan in shared memory.
__global__ void MoeScanKernel(const std::int32_t* counts, int num_experts, std::int32_t* offsets) {
  __shared__ std::int32_t scan[kMaxExperts];
  const int e = threadIdx.x;
  scan[e] = e < num_experts ? counts[e] : 0;
  __syncthreads();
  for (int stride = 1; stride < blockDim.x; stride *= 2) {
    const std::int32_t add = e >= stride ? scan[e - stride] : 0;
    __syncthreads();
    scan[e] += add;
    __syncthreads();
  }
  if (e == 0) offsets[0] = 0;
  if (e < num_experts) offsets[e + 1] = scan[e];
}

// sorted[offsets[e] + r] = the r-th assignment (in assignment order) of
// expert e, and position[i] = where assignment i went. One block per expert;
// each pass of blockDim.x assignments ranks its matches with warp ballots.
__global__ void MoePlaceKernel(const std::int32_t* ids, int n, const std::int32_t* offsets, std::int32_t* sorted,
                               std::int32_t* position) {
  __shared__ int warp_counts[kDispatchWarps];
  __shared__ int base;
  const int e = blockIdx.x;
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  if (threadIdx.x == 0) base = offsets[e];
  __syncthreads();
  for (int start = 0; start < n; start += blockDim.x) {
    const int i = start + threadIdx.x;
    const bool match = i < n && ids[i] == e;
    const unsigned mask = __ballot_sync(kFullMask, match);
    if (lane == 0) warp_counts[warp] = __popc(mask);
    __syncthreads();
    int before = base;
    for (int w = 0; w < warp; ++w) before += warp_counts[w];
    if (match) {
      const int at = before + __popc(mask & ((1u << lane) - 1u));
      sorted[at] = i;
      position[i] = at;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 0; w < kDispatchWarps; ++w) base += warp_counts[w];
    }
    __syncthreads();
  }
}

// xs[r, :] = x[sorted[r] / top_k, :]. One block per row of xs.
__global__ void MoeGatherKernel(int dim, const float* x, int ldx, const std::int32_t* sorted, int top_k, float* xs,
                                int ldxs) {
  const std::int64_t r = blockIdx.x;
  const std::int64_t token = sorted[r] / top_k;
  const float* src = x + token * ldx;
  float* dst = xs + r * ldxs;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) dst[j] = src[j];
}

// out[t, :] (+)= sum over slots s, in slot order, of
// weights[t, s] * ys[position[t * top_k + s], :]. One block per token.
__global__ void MoeCombineKernel(int top_k, int dim, const float* ys, int ldys, const std::int32_t* position,
                                 const float* weights, bool accumulate, float* out, int ldo) {
  const std::int64_t t = blockIdx.x;
  float* dst = out + t * ldo;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) {
    float acc = accumulate ? dst[j] : 0.0f;
    for (int s = 0; s < top_k; ++s) {
      const std::int64_t row = position[t * top_k + s];
      acc += weights[t * top_k + s] * ys[row * ldys + j];
    }
    dst[j] = acc;
  }
}

}  // namespace

absl::Status MoeDispatch(const MoeDispatchParams& p, Stream stream) {
  constexpr const char* kOp = "cuda::MoeDispatch";
  if (p.num_tokens < 0) return Invalid(kOp, "num_tokens must be >= 0");
  if (p.top_k < 1) return Invalid(kOp, "top_k must be >= 1");
  if (p.num_experts < 1 || p.num_experts > kMaxExperts) {
    return Invalid(kOp, "num_experts must be in [1, " + std::to_string(kMaxExperts) + "], got " +
                            std::to_string(p.num_experts));
  }
  const std::int64_t n = static_cast<std::int64_t>(p.num_tokens) * p.top_k;
  if (n > (std::int64_t{1} << 30)) return Invalid(kOp, "num_tokens * top_k must be <= 2^30");
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "counts", p.counts));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "offsets", p.offsets));
  if (n > 0) {
    SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "expert_ids", p.expert_ids));
    SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "sorted", p.sorted));
    SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "position", p.position));
  }
  const int num = static_cast<int>(n);
  MoeCountKernel<<<p.num_experts, kDispatchThreads, 0, stream>>>(p.expert_ids, num, p.counts);
  int scan_threads = kWarpSize;
  while (scan_threads < p.num_experts) scan_threads *= 2;
  MoeScanKernel<<<1, scan_threads, 0, stream>>>(p.counts, p.num_experts, p.offsets);
  if (num > 0) {
    MoePlaceKernel<<<p.num_experts, kDispatchThreads, 0, stream>>>(p.expert_ids, num, p.offsets, p.sorted,
                                                                   p.position);
  }
  return LaunchStatus(kOp);
}

absl::Status MoeGatherRows(int rows, int dim, const float* x, int ldx, const std::int32_t* sorted, int top_k,
                           float* xs, int ldxs, Stream stream) {
  constexpr const char* kOp = "cuda::MoeGatherRows";
  if (top_k < 1) return Invalid(kOp, "top_k must be >= 1");
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(kOp, "x", rows > 0 ? 1 : 0, dim, x, ldx));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(kOp, "xs", rows, dim, xs, ldxs));
  if (rows == 0 || dim == 0) return absl::OkStatus();
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "sorted", sorted));
  MoeGatherKernel<<<rows, 128, 0, stream>>>(dim, x, ldx, sorted, top_k, xs, ldxs);
  return LaunchStatus(kOp);
}

absl::Status MoeCombine(int num_tokens, int top_k, int dim, const float* ys, int ldys, const std::int32_t* position,
                        const float* weights, bool accumulate, float* out, int ldo, Stream stream) {
  constexpr const char* kOp = "cuda::MoeCombine";
  if (top_k < 1) return Invalid(kOp, "top_k must be >= 1");
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(kOp, "out", num_tokens, dim, out, ldo));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckMatrix(kOp, "ys", num_tokens > 0 ? num_tokens * top_k : 0, dim, ys, ldys));
  if (num_tokens == 0 || dim == 0) return absl::OkStatus();
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "position", position));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "weights", weights));
  MoeCombineKernel<<<num_tokens, 128, 0, stream>>>(top_k, dim, ys, ldys, position, weights, accumulate, out, ldo);
  return LaunchStatus(kOp);
}

}  // namespace sirocco::kernels::cuda
