// Device-side sampling: the CUDA counterpart of engine::SamplerState::Sample
// for a batch of logits rows, so that a decode step's logits never leave the
// GPU and only `rows` token ids (plus logprobs when asked) come back.
//
// The CPU sampler (engine/sampler.cc) is the spec: for the same logits row,
// parameters, penalty state and uniform draw u, Sample produces the token,
// logprob and top alternatives SamplerState::Sample produces. The RNG stays on
// the host: the caller draws u = (rng() >> 11) * 2^-53 from the request's
// std::mt19937_64 exactly as SamplerState does (once per non-greedy row), so
// the request's stream of draws is the same whichever side samples.
//
// Exactness: penalised logits, and so greedy choices and logprob rankings,
// are bit-identical to the CPU's. Weights are the same floats but for rare
// one-ulp differences (exp is evaluated in double and rounded once; glibc's
// expf is within 0.502 ulp). Sums are double, as on the CPU, but associated
// differently (~1e-16 relative). So a sampled token differs from the CPU's
// only when u, or a top-p target, lies within that rounding of a boundary of
// the cumulative distribution.
//
// Contract: that of cuda_kernels.h (device pointers, host-side checks before
// any CUDA call, never synchronises or allocates, thread-safe). Includers need
// no CUDA headers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/cuda/cuda_kernels.h"

namespace sirocco::kernels::cuda {

// engine::kMaxLogprobs and engine::kGreedyTemperature; kernels/ may not
// include engine/, so tests/gpu/cuda_sampling_test.cc asserts they agree.
inline constexpr int kSampleMaxLogprobs = 20;
inline constexpr float kSampleGreedyTemperature = 1e-5f;

// One row's knobs: engine::SamplingParams (already validated by
// ValidateSamplingParams) minus the seed, plus this step's draw.
struct SampleRowParams {
  float temperature = 1.0f;  // < kSampleGreedyTemperature => greedy; u unused
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::int32_t top_k = 0;
  std::int32_t logprobs = -1;  // -1: none; 0: the sampled token's; n in [1, 20]: also the n best
  double u = 0.0;              // [0, 1): (rng() >> 11) * 0x1.0p-53 from the request's mt19937_64
};

// A batch of rows sampled by one launch. Named apart from engine::SamplingParams
// (one request's knobs), which callers of this header also see.
//
// Penalty state, CSR style: row r's seen tokens are entries
// [seen_offsets[r], seen_offsets[r + 1]) of seen_tokens / seen_counts, where
// seen_counts[i] is how many times seen_tokens[i] occurs in the output so far
// (0: only in the prompt). This is SamplerState's seen list: pass every
// distinct prompt token with count 0 unless it also occurs in the output, and
// every output token with its count. Within a row the tokens must be distinct;
// their order is free. Ids outside [0, vocab) are ignored. Entries that the
// CPU state would not hold (prompt tokens when repetition_penalty == 1,
// anything when every penalty is off) change nothing, since each penalty is
// then neutral. seen_offsets null: no row has seen tokens (seen_tokens and
// seen_counts are then not read).
struct SampleBatchParams {
  int rows = 0;
  int vocab = 0;                  // [1, 2^24]
  const float* logits = nullptr;  // [rows, vocab], leading dimension ld
  int ld = 0;
  const SampleRowParams* params = nullptr;     // [rows]
  const std::int32_t* seen_offsets = nullptr;  // [rows + 1], non-decreasing
  const std::int32_t* seen_tokens = nullptr;   // [seen_offsets[rows]]
  const std::int32_t* seen_counts = nullptr;   // [seen_offsets[rows]], >= 0
  std::int32_t* tokens = nullptr;              // [rows] out: the sampled ids
  // Optional outputs (may be null; top_ids and top_logprobs together). For a
  // row with logprobs >= 0: logprob[r] = the sampled token's logprob, and
  // slots j < min(logprobs, vocab) of row r of top_ids / top_logprobs = the
  // j-th most likely token (ties: lower id first; NaN logits never appear).
  // Every other slot, and a row with logprobs < 0, gets id -1 and logprob 0,
  // as engine::TokenLogprob's defaults.
  float* logprob = nullptr;         // [rows]
  std::int32_t* top_ids = nullptr;  // [rows, kSampleMaxLogprobs]
  float* top_logprobs = nullptr;    // [rows, kSampleMaxLogprobs]
  // Scratch, at least SamplingWorkspaceBytes(rows, vocab) bytes, 16-byte
  // aligned (cudaMalloc memory is). Not read before it is written.
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
};

// About 16 * vocab bytes per row (rounded up to a power of two for the sort
// buffer). 0 for rows < 0 or vocab outside [1, 2^24].
std::size_t SamplingWorkspaceBytes(int rows, int vocab);

// Samples every row of p (one thread block per row). InvalidArgument for bad
// shapes, missing pointers or too small a workspace, before touching the
// device; rows == 0 is a no-op.
[[nodiscard]] absl::Status Sample(const SampleBatchParams& p, Stream stream);

}  // namespace sirocco::kernels::cuda
