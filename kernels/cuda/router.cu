// The group-limited softmax router (kernels.h RouterParams), one warp per
// token. A token's scores live in shared memory; each selection round is a
// warp-wide argmax with the reference's tie rule (lower index wins), so the
// chosen ids equal the reference's whenever the scores do.
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
using internal::CheckPointer;
using internal::Invalid;
using internal::kFullMask;
using internal::kWarpSize;
using internal::LaunchStatus;
using internal::WarpMax;
using internal::WarpSum;

constexpr int kRouterWarpsPerBlock = 4;
constexpr int kRouterMaxExperts = 1024;  // 4 warps x (1024 + 1024) x 5 bytes = 40 KiB of shared memory

struct Candidate {
  float value;
  int index;  // -1: none
};

// Whether `b` beats `a`: the reference scans in index order and replaces the
// best only on a strictly larger score, i.e. the maximum with the lowest index.
__device__ __forceinline__ bool Beats(const Candidate& b, const Candidate& a) {
  if (b.index < 0) return false;
  if (a.index < 0) return true;
  return b.value > a.value || (b.value == a.value && b.index < a.index);
}

// The winner over the warp; every lane gets it. The rule is a total order, so
// the butterfly gives all lanes the same answer.
__device__ __forceinline__ Candidate WarpArgmax(Candidate c) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const Candidate other{__shfl_xor_sync(kFullMask, c.value, offset), __shfl_xor_sync(kFullMask, c.index, offset)};
    if (Beats(other, c)) c = other;
  }
  return c;
}

__global__ void RouteTopkKernel(RouterParams p) {
  extern __shared__ float router_smem[];
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int num_experts = p.num_experts;
  const int num_groups = p.num_groups;
  const int group_size = num_experts / num_groups;
  // Per warp: scores[E], group_scores[G] as floats, then kept[G], chosen[E]
  // as bytes after all the warps' floats.
  float* scores = router_smem + warp * (num_experts + num_groups);
  float* group_scores = scores + num_experts;
  unsigned char* flags =
      reinterpret_cast<unsigned char*>(router_smem + kRouterWarpsPerBlock * (num_experts + num_groups)) +
      warp * (num_experts + num_groups);
  unsigned char* kept = flags;
  unsigned char* chosen = flags + num_groups;

  const std::int64_t t = static_cast<std::int64_t>(blockIdx.x) * kRouterWarpsPerBlock + warp;
  if (t >= p.num_tokens) return;  // whole warps only; no block barriers below
  const float* logits = p.logits + t * num_experts;

  // Softmax over all experts: exp(x - max) / sum, as the reference.
  float max = -INFINITY;
  for (int e = lane; e < num_experts; e += kWarpSize) {
    scores[e] = logits[e];
    max = fmaxf(max, scores[e]);
    chosen[e] = 0;
  }
  max = WarpMax(max);
  float sum = 0.0f;
  for (int e = lane; e < num_experts; e += kWarpSize) {
    scores[e] = expf(scores[e] - max);
    sum += scores[e];
  }
  sum = WarpSum(sum);
  for (int e = lane; e < num_experts; e += kWarpSize) scores[e] = scores[e] / sum;
  for (int g = lane; g < num_groups; g += kWarpSize) kept[g] = 0;
  __syncwarp();

  // Group score: the sum of the group's two largest scores (the only one for
  // groups of one), scanned exactly as the reference scans.
  for (int g = lane; g < num_groups; g += kWarpSize) {
    const float* s = scores + g * group_size;
    if (group_size == 1) {
      group_scores[g] = s[0];
      continue;
    }
    float first = -INFINITY;
    float second = -INFINITY;
    for (int e = 0; e < group_size; ++e) {
      if (s[e] > first) {
        second = first;
        first = s[e];
      } else if (s[e] > second) {
        second = s[e];
      }
    }
    group_scores[g] = first + second;
  }
  __syncwarp();

  // Keep the topk_group best groups.
  const int rounds = min(p.topk_group, num_groups);
  for (int round = 0; round < rounds; ++round) {
    Candidate best{0.0f, -1};
    for (int g = lane; g < num_groups; g += kWarpSize) {
      const Candidate c{group_scores[g], g};
      if (!kept[g] && Beats(c, best)) best = c;
    }
    best = WarpArgmax(best);
    if (lane == 0) kept[best.index] = 1;
    __syncwarp();
  }

  // The top_k experts of the kept groups, best first. Lane 0 owns the output
  // row and sums the weights in slot order, as the reference does.
  std::int32_t* ids = p.expert_ids + t * p.top_k;
  float* weights = p.expert_weights + t * p.top_k;
  float weight_sum = 0.0f;
  for (int slot = 0; slot < p.top_k; ++slot) {
    Candidate best{0.0f, -1};
    for (int e = lane; e < num_experts; e += kWarpSize) {
      const Candidate c{scores[e], e};
      if (!chosen[e] && kept[e / group_size] && Beats(c, best)) best = c;
    }
    best = WarpArgmax(best);
    if (lane == 0) {
      const float w = best.index < 0 ? 0.0f : best.value;
      ids[slot] = best.index;
      weights[slot] = w;
      weight_sum += w;
      if (best.index >= 0) chosen[best.index] = 1;
    }
    __syncwarp();
  }
  if (lane == 0) {
    for (int slot = 0; slot < p.top_k; ++slot) {
      float w = weights[slot];
      if (p.normalize) w = w / (weight_sum + 1e-20f);
      weights[slot] = w * p.scaling;
    }
  }
}

}  // namespace

absl::Status RouteTopk(const RouterParams& p, Stream stream) {
  constexpr const char* kOp = "cuda::RouteTopk";
  if (p.num_tokens < 0) return Invalid(kOp, "num_tokens must be >= 0");
  if (p.num_experts < 1 || p.num_experts > kRouterMaxExperts) {
    return Invalid(kOp, "num_experts must be in [1, " + std::to_string(kRouterMaxExperts) + "], got " +
                            std::to_string(p.num_experts));
  }
  if (p.num_groups < 1 || p.num_experts % p.num_groups != 0) {
    return Invalid(kOp, "num_groups (" + std::to_string(p.num_groups) + ") must divide num_experts (" +
                            std::to_string(p.num_experts) + ")");
  }
  if (p.topk_group < 1) return Invalid(kOp, "topk_group must be >= 1");
  const int selectable = std::min(p.topk_group, p.num_groups) * (p.num_experts / p.num_groups);
  if (p.top_k < 1 || p.top_k > selectable) {
    return Invalid(kOp, "top_k (" + std::to_string(p.top_k) +
                            ") must be in [1, experts in the kept groups = " + std::to_string(selectable) + "]");
  }
  if (p.num_tokens == 0) return absl::OkStatus();
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "logits", p.logits));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "expert_ids", p.expert_ids));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(kOp, "expert_weights", p.expert_weights));
  const std::size_t per_warp = static_cast<std::size_t>(p.num_experts + p.num_groups);
  const std::size_t smem = kRouterWarpsPerBlock * per_warp * (sizeof(float) + 1);
  RouteTopkKernel<<<CeilDiv(p.num_tokens, kRouterWarpsPerBlock), kRouterWarpsPerBlock * kWarpSize, smem, stream>>>(p);
  return LaunchStatus(kOp);
}

}  // namespace sirocco::kernels::cuda
