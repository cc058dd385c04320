// Internal to kernels/cuda: the inner loop shared by the MLA decode kernel
// and the expanded prefill kernel. Both are "a few query rows against a
// stream of key/value rows" with an online softmax:
//
//   * a block of 8 warps stages tiles of 32 key rows (and value rows) in
//     shared memory with cp.async, double-buffered, so loading tile n+1
//     overlaps computing tile n;
//   * each warp owns kRows query rows (MLA: heads of one query, which share
//     every latent row; prefill: queries of one head). A row's query vector
//     lives in registers, spread over the lanes: lane l holds elements
//     l, l + 32, ... (kDq of them), and so does its output accumulator (kDv);
//   * per key, every lane forms partial dot products for its rows and one
//     reduce-scatter across the warp finishes all kRows sums at once;
//   * the tile's softmax update is warp-local (one key per lane), so warps
//     synchronise with each other only around the shared tiles.
//
// Rounding differs from the sequential CPU reference only in summation order
// (a few float ulps), which the 1e-5 normalized tolerance covers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cuda_common.cuh"

namespace sirocco::kernels::cuda::internal {

constexpr int kAttnWarps = 8;
constexpr int kAttnThreads = kAttnWarps * kWarpSize;
constexpr int kKeyTile = 32;  // keys per tile: one per lane in the softmax step
static_assert(kKeyTile == kWarpSize, "the softmax step maps one key to one lane");

// ---------------------------------------------------------------------------
// cp.async (sm_80+): global -> shared copies that bypass registers. The
// 16-byte form needs 16-byte aligned addresses on both sides.

__device__ __forceinline__ void CpAsync16(float* smem, const float* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem) : "memory");
}

__device__ __forceinline__ void CpAsync4(float* smem, const float* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(gmem) : "memory");
}

__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most kPending committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// The whole block copies `rows` rows of `width` floats, row t from
// src_row(t), into dst[t * width ...]. `vec` selects 16-byte copies (width a
// multiple of 4, every source row 16-byte aligned), else 4-byte copies.
template <typename SrcRow>
__device__ __forceinline__ void LoadRowsAsync(float* dst, int rows, int width, bool vec, SrcRow src_row) {
  if (vec) {
    const int vecs = width / 4;
    for (int idx = threadIdx.x; idx < rows * vecs; idx += blockDim.x) {
      const int t = idx / vecs;
      const int c = (idx - t * vecs) * 4;
      CpAsync16(dst + t * width + c, src_row(t) + c);
    }
  } else {
    for (int idx = threadIdx.x; idx < rows * width; idx += blockDim.x) {
      const int t = idx / width;
      const int c = idx - t * width;
      CpAsync4(dst + t * width + c, src_row(t) + c);
    }
  }
}

// ---------------------------------------------------------------------------
// Reduce-scatter of kN per-lane partial sums (kN a power of two <= 32):
// recursive halving, where at each step the lanes with the step's bit set keep
// the upper half of their values and trade the lower half with their partner.
// log2(kN) halving steps plus 5 - log2(kN) plain steps: 6 shuffles for kN = 4
// where kN separate warp sums would take 20. Returns the full sum of value
// *index; lanes whose low 5 - log2(kN) bits are 0 hold distinct indices.
template <int kCount, int kOffset, int kN>
__device__ __forceinline__ void HalvingSteps(float (&v)[kN], int lane, int& index) {
  if constexpr (kCount > 1) {
    constexpr int kHalf = kCount / 2;
    const bool upper = (lane & kOffset) != 0;
#pragma unroll
    for (int i = 0; i < kHalf; ++i) {
      const float send = upper ? v[i] : v[i + kHalf];
      const float keep = upper ? v[i + kHalf] : v[i];
      v[i] = keep + __shfl_xor_sync(kFullMask, send, kOffset);
    }
    if (upper) index += kHalf;
    HalvingSteps<kHalf, kOffset / 2, kN>(v, lane, index);
  }
}

template <int kN>
__device__ __forceinline__ float WarpReduceScatter(float (&v)[kN], int lane, int* index) {
  static_assert(kN >= 1 && kN <= kWarpSize && (kN & (kN - 1)) == 0, "kN must be a power of two <= 32");
  int idx = 0;
  HalvingSteps<kN, kWarpSize / 2, kN>(v, lane, idx);
  float s = v[0];
#pragma unroll
  for (int offset = kWarpSize / (2 * kN); offset > 0; offset /= 2) s += __shfl_xor_sync(kFullMask, s, offset);
  *index = idx;
  return s;
}

// ---------------------------------------------------------------------------
// One warp's rows: query vectors, running max m, running sum l and the
// unnormalised output acc (out = acc / l at the end).
template <int kRows, int kDq, int kDv>
struct WarpRows {
  float q[kRows][kDq];
  float acc[kRows][kDv];
  float m[kRows];
  float l[kRows];

  __device__ __forceinline__ void Init() {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      m[r] = -INFINITY;
      l[r] = 0.0f;
#pragma unroll
      for (int j = 0; j < kDv; ++j) acc[r][j] = 0.0f;
#pragma unroll
      for (int j = 0; j < kDq; ++j) q[r][j] = 0.0f;
    }
  }

  // Folds one staged tile of n_valid (1..32) keys into the rows.
  //   k_tile: key t at k_tile + t * k_stride, dim_q floats (<= 32 * kDq);
  //   v_tile: value t at v_tile + t * v_stride, dim_v floats (<= 32 * kDv);
  //   scores: this warp's kRows x 32 floats of shared memory;
  //   visible(r, t): whether row r may see key t of the tile (causality).
  template <typename Visible>
  __device__ __forceinline__ void FoldTile(const float* k_tile, int k_stride, int dim_q, const float* v_tile,
                                           int v_stride, int dim_v, int n_valid, float scale, float* scores, int lane,
                                           Visible visible) {
    // 1. Raw dot products q . k for every row and key.
#pragma unroll 2
    for (int t = 0; t < n_valid; ++t) {
      const float* k_row = k_tile + t * k_stride;
      float k[kDq];
#pragma unroll
      for (int j = 0; j < kDq; ++j) {
        const int d = lane + j * kWarpSize;
        k[j] = d < dim_q ? k_row[d] : 0.0f;  // never read past the row: the staged tail may hold NaN
      }
      float part[kRows];
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        part[r] = 0.0f;
#pragma unroll
        for (int j = 0; j < kDq; ++j) part[r] = fmaf(q[r][j], k[j], part[r]);
      }
      int row;
      const float dot = WarpReduceScatter<kRows>(part, lane, &row);
      if ((lane & (kWarpSize / kRows - 1)) == 0) scores[row * kKeyTile + t] = dot;
    }
    __syncwarp();

    // 2. Online softmax: lane t owns key t of the tile.
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      float s = -INFINITY;
      if (lane < n_valid && visible(r, lane)) s = scale * scores[r * kKeyTile + lane];
      const float m_new = fmaxf(m[r], WarpMax(s));
      float p = 0.0f;
      float alpha = 1.0f;
      // m_new is -inf only while the row has seen no visible key at all
      // (rows past the end of the batch); exp(-inf - -inf) would be NaN.
      if (m_new != -INFINITY) {
        p = expf(s - m_new);         // 0 for masked keys
        alpha = expf(m[r] - m_new);  // 0 on the row's first visible tile
      }
      l[r] = l[r] * alpha + WarpSum(p);
      m[r] = m_new;
      scores[r * kKeyTile + lane] = p;
#pragma unroll
      for (int j = 0; j < kDv; ++j) acc[r][j] *= alpha;
    }
    __syncwarp();

    // 3. acc += p * v.
#pragma unroll 2
    for (int t = 0; t < n_valid; ++t) {
      const float* v_row = v_tile + t * v_stride;
      float v[kDv];
#pragma unroll
      for (int j = 0; j < kDv; ++j) {
        const int d = lane + j * kWarpSize;
        v[j] = d < dim_v ? v_row[d] : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float p = scores[r * kKeyTile + t];  // same address on every lane: a broadcast
#pragma unroll
        for (int j = 0; j < kDv; ++j) acc[r][j] = fmaf(p, v[j], acc[r][j]);
      }
    }
    __syncwarp();  // the next tile rewrites scores
  }
};

}  // namespace sirocco::kernels::cuda::internal
