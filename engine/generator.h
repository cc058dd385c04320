// Batched generation over one model and one KV pool: prefill every request's
// prompt in one batch, then decode all unfinished requests together, step by
// step, until each stops. This is the engine loop the CLI and the tests use;
// the services' scheduler (continuous batching) drives the same Forward.
//
// Thread-safety: runs on the calling thread; the pool must not be shared.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/kv_cache.h"
#include "engine/mistral4.h"
#include "engine/sampler.h"

namespace sirocco::engine {

struct GenerateRequest {
  std::vector<std::int32_t> prompt;
  SamplingParams sampling;
  StopParams stop;
};

struct GenerateOutput {
  std::vector<std::int32_t> tokens;
  std::vector<SampleResult> samples;  // one per token, when logprobs were asked
  FinishReason finish = FinishReason::kNone;
};

struct GeneratorOptions {
  AttentionForm prefill_form = AttentionForm::kExpanded;
  // Prompt tokens per prefill step and sequence; 0 = whole prompt at once.
  std::int64_t prefill_chunk = 0;
};

// Fails with INVALID_ARGUMENT for a bad request (naming it) and with
// RESOURCE_EXHAUSTED when the pool cannot hold every request's prompt plus
// max_tokens; no blocks stay allocated after it returns.
absl::StatusOr<std::vector<GenerateOutput>> Generate(const Mistral4Model& model, KvPool& pool,
                                                     std::span<const GenerateRequest> requests,
                                                     const GeneratorOptions& options = {});

}  // namespace sirocco::engine
