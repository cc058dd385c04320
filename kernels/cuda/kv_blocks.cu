// KV-cache block gather/scatter for transfers (cuda_kernels.h, "KV blocks"):
// a request's blocks are scattered over the paged pool; a transport that
// moves one contiguous region per request (or per layer) needs them packed
// into a staging buffer on the sender and unpacked on the receiver. One CUDA
// block per (pool block, layer); 16-byte vector copies when everything is
// 16-byte aligned, bytes otherwise.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/cuda_common.cuh"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"

namespace sirocco::kernels::cuda {
namespace {

using internal::Aligned16;
using internal::CheckPointer;
using internal::Invalid;
using internal::LaunchStatus;

constexpr int kCopyThreads = 256;

// to_staging: pool block block_ids[b] of layer l -> staging slot (l, b);
// else the reverse.
template <typename Word>
__global__ void KvBlockCopyKernel(KvBlockCopyParams p, bool to_staging) {
  const std::int64_t b = blockIdx.x;
  const std::int64_t l = blockIdx.y;
  const std::size_t words = p.block_bytes / sizeof(Word);
  Word* pool = reinterpret_cast<Word*>(static_cast<unsigned char*>(p.pool) + l * p.layer_stride_bytes +
                                       static_cast<std::size_t>(p.block_ids[b]) * p.block_bytes);
  Word* staging = reinterpret_cast<Word*>(static_cast<unsigned char*>(p.staging) +
                                          (l * p.num_blocks + b) * p.block_bytes);
  const Word* src = to_staging ? pool : staging;
  Word* dst = to_staging ? staging : pool;
  for (std::size_t i = threadIdx.x; i < words; i += blockDim.x) dst[i] = src[i];
}

absl::Status Launch(const char* op, const KvBlockCopyParams& p, bool to_staging, Stream stream) {
  if (p.num_layers < 0 || p.num_blocks < 0) return Invalid(op, "num_layers and num_blocks must be >= 0");
  if (p.num_layers > 65535) return Invalid(op, "num_layers must be <= 65535");
  if (p.block_bytes == 0) return Invalid(op, "block_bytes must be > 0");
  if (p.num_layers > 1 && p.layer_stride_bytes < p.block_bytes) {
    return Invalid(op, "layer_stride_bytes (" + std::to_string(p.layer_stride_bytes) + ") < block_bytes (" +
                           std::to_string(p.block_bytes) + ")");
  }
  if (p.num_layers == 0 || p.num_blocks == 0) return absl::OkStatus();
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(op, "pool", p.pool));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(op, "staging", p.staging));
  SIROCCO_CUDA_RETURN_IF_ERROR(CheckPointer(op, "block_ids", p.block_ids));
  const dim3 grid(static_cast<unsigned>(p.num_blocks), static_cast<unsigned>(p.num_layers));
  const bool vector = p.block_bytes % 16 == 0 && p.layer_stride_bytes % 16 == 0 && Aligned16(p.pool) &&
                      Aligned16(p.staging);
  if (vector) {
    KvBlockCopyKernel<uint4><<<grid, kCopyThreads, 0, stream>>>(p, to_staging);
  } else {
    KvBlockCopyKernel<unsigned char><<<grid, kCopyThreads, 0, stream>>>(p, to_staging);
  }
  return LaunchStatus(op);
}

}  // namespace

absl::Status KvGatherBlocks(const KvBlockCopyParams& p, Stream stream) {
  return Launch("cuda::KvGatherBlocks", p, /*to_staging=*/true, stream);
}

absl::Status KvScatterBlocks(const KvBlockCopyParams& p, Stream stream) {
  return Launch("cuda::KvScatterBlocks", p, /*to_staging=*/false, stream);
}

}  // namespace sirocco::kernels::cuda
