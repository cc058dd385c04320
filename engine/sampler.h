// Turning one row of logits into the next token of one request, and deciding
// when that request's generation ends.
//
// A request's SamplerState holds everything a draw depends on besides the
// logits: its parameters, its RNG, and the token counts the penalties read. So
// a draw is a function of (seed, tokens seen so far, logits row) alone, never
// of the batch position or the thread that samples it.
//
// Thread-safety: none. A SamplerState belongs to the engine thread that owns
// its request; a SamplerScratch to one engine thread, lent to each Sample call
// it makes. Different states may be sampled concurrently on different threads,
// each with its own scratch.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <vector>

#include "absl/status/status.h"

namespace sirocco::engine {

// Most alternatives a request may ask logprobs for (the OpenAI API's limit).
inline constexpr std::int32_t kMaxLogprobs = 20;
// Below this the request samples greedily: dividing logits by a smaller
// temperature overflows the softmax, and the result is the argmax anyway.
inline constexpr float kGreedyTemperature = 1e-5f;

struct SamplingParams {
  float temperature = 1.0f;           // 0 (or < kGreedyTemperature) => greedy: argmax, ties -> lowest id
  std::int32_t top_k = 0;             // 0 or >= vocab => off
  float top_p = 1.0f;                 // (0, 1]; 1 => off
  float min_p = 0.0f;                 // [0, 1]: drop tokens with prob < min_p * max prob; 0 => off
  float repetition_penalty = 1.0f;    // > 0; tokens seen in prompt or output: logit > 0 ? logit / p : logit * p
  float presence_penalty = 0.0f;      // [-2, 2]: subtracted once from tokens present in the output
  float frequency_penalty = 0.0f;     // [-2, 2]: subtracted count times from tokens in the output
  std::optional<std::uint64_t> seed;  // unset => drawn from std::random_device when the state is built
  // -1: none. 0: the sampled token's logprob. n > 0: also the n most likely
  // tokens. Logprobs are log_softmax of the penalised logits at temperature 1,
  // before temperature, top-k, top-p and min-p: they describe the model (plus
  // penalties), not the sampling knobs, so the same logits report the same
  // values whether the request is greedy or sampled.
  std::int32_t logprobs = -1;
};

// INVALID_ARGUMENT naming the offending field, or OK. Call once per request,
// before building its SamplerState; the state CHECKs nothing of this again.
[[nodiscard]] absl::Status ValidateSamplingParams(const SamplingParams& params, std::int64_t vocab_size);

struct TokenLogprob {
  std::int32_t token = -1;
  float logprob = 0.0f;
};

struct SampleResult {
  std::int32_t token = -1;
  float logprob = 0.0f;           // only when params.logprobs >= 0
  std::vector<TokenLogprob> top;  // params.logprobs entries, most likely first (ties: lower id first)
};

// Buffers for the non-greedy path, grown to the vocabulary size on first use
// and reused afterwards. Kept apart from SamplerState so that an engine thread
// holds one set of vocab-sized buffers, not one per live request.
struct SamplerScratch {
  std::vector<float> weights;       // [vocab] unnormalised probabilities
  std::vector<std::int32_t> order;  // [vocab] candidate token ids
  std::vector<float> masked;        // [vocab] logits with disallowed tokens at -inf (a response format)
};

// A token seen in the prompt or the output; output_count 0 means the prompt
// only, which the repetition penalty counts and the others do not.
struct SeenToken {
  std::int32_t token;
  std::int32_t output_count;
};

// Per-request sampling state: the RNG (std::mt19937_64 seeded from the seed)
// and the prompt and output tokens the penalties need.
class SamplerState {
 public:
  // `params` must have passed ValidateSamplingParams. Prompt token ids must be
  // non-negative (CHECK); ids at or beyond the vocabulary are ignored.
  SamplerState(const SamplingParams& params, std::span<const std::int32_t> prompt_tokens);

  // Records a token appended to the output; call after each Sample.
  void Observe(std::int32_t generated_token);
  // Records a token this request sampled earlier, elsewhere (another worker,
  // before a migration or a local re-prefill): Observe plus the one RNG draw
  // that Sample made for it, so the state continues exactly as if this object
  // had sampled every earlier token itself.
  void Replay(std::int32_t generated_token);

  // Samples from one row of raw logits [vocab]. `scratch` is overwritten.
  // Greedy requests never touch it and allocate nothing unless logprobs > 0.
  // The draw takes one uniform double u = (rng() >> 11) * 2^-53 and returns
  // the token where the cumulative probability first exceeds u, walking the
  // kept tokens most likely first (ties: lower id first); when no top-k,
  // top-p or min-p filter is on it walks the vocabulary in id order instead,
  // which is the same distribution without sorting the whole vocabulary.
  // Logits that are NaN count as -inf; a row with no finite maximum falls
  // back to the greedy choice.
  SampleResult Sample(std::span<const float> logits, SamplerScratch& scratch);
  // As above with buffers owned by this state: simple, but vocab-sized per
  // request. Prefer the overload above when many requests are live.
  SampleResult Sample(std::span<const float> logits) { return Sample(logits, own_scratch_); }

  // Sample split in two, for a device that samples rows itself: TakeDraw
  // consumes what Sample would from the RNG (the uniform double, or nothing
  // for a greedy request), and SampleWithDraw is the rest of Sample for that
  // draw. Sample(l, s) == SampleWithDraw(l, TakeDraw(), s).
  //
  // `allowed`, when not empty, is a token mask (structured/token_trie.h:
  // bit id set = allowed; vocabulary-sized): the draw is the same as for a
  // row whose disallowed logits are -inf, so the result is always an allowed
  // token (the lowest allowed id when no allowed logit is finite). Logprobs
  // still describe the unmasked row, like the other sampling knobs.
  std::optional<double> TakeDraw();
  SampleResult SampleWithDraw(std::span<const float> logits, std::optional<double> u, SamplerScratch& scratch,
                              std::span<const std::uint32_t> allowed = {}) const;
  // The penalties' view of the history, sorted by token (empty when no
  // penalty is on).
  std::span<const SeenToken> seen() const { return seen_; }

  const SamplingParams& params() const { return params_; }
  // The seed in use, drawn or given: log it to reproduce a request.
  std::uint64_t seed() const { return seed_; }

 private:
  float Penalise(float logit, const SeenToken& seen) const;
  float PenalisedLogit(std::span<const float> logits, std::int32_t token) const;
  // Calls fn(id, penalised logit) for every id in ascending order.
  template <typename Fn>
  void ForEachPenalised(std::span<const float> logits, Fn&& fn) const;
  std::int32_t Argmax(std::span<const float> logits) const;
  std::int32_t Draw(std::span<const float> logits, double u, SamplerScratch& scratch) const;
  void FillLogprobs(std::span<const float> logits, SampleResult& result) const;

  SamplingParams params_;
  std::uint64_t seed_;
  std::mt19937_64 rng_;
  bool track_prompt_;            // repetition penalty on: prompt tokens count
  bool track_output_;            // any penalty on: output tokens count
  std::vector<SeenToken> seen_;  // sorted by token, unique
  SamplerScratch own_scratch_;
};

struct StopParams {
  std::int32_t max_tokens = 16;
  std::vector<std::int32_t> stop_token_ids;  // stop on these even when ignore_eos
  bool ignore_eos = false;
};

// INVALID_ARGUMENT naming the offending field (max_tokens must be >= 1).
[[nodiscard]] absl::Status ValidateStopParams(const StopParams& stop);

enum class FinishReason : std::uint8_t { kNone, kStop, kLength };

// Decides whether generation ends after `token` was appended (`output_len`
// includes it). A stop token wins over the length limit when both hold, so a
// client sees that the model finished rather than being cut off.
FinishReason CheckStop(const StopParams& stop, std::span<const std::int64_t> eos_ids, std::int32_t token,
                       std::int64_t output_len);

}  // namespace sirocco::engine
