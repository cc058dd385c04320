// Workloads of the load generator: what each request asks for.
//
// A Workload turns a request index into a RequestSpec, deterministically
// from the seed (the same seed and index give the same request, whatever the
// load or the order of sends), so a run is reproducible and unbounded runs
// need no precomputed list. Sources of prompts:
//   random     token ids drawn uniformly from [min_token_id, vocab_size),
//              sent with Generate (exact input length); with api chat, words
//              from a fixed list (about one token each) sent with Chat.
//   prefix     like random, but request i starts with the L-token prefix of
//              group i % N (N groups, each prefix drawn from its own seed).
//   sharegpt   the first human turn of each conversation of a ShareGPT JSONL
//              file, sent with Chat, in an order shuffled by the seed.
//   conversations  C synthetic conversations (Generate): request i is turn
//              t = i / C of conversation c = i % C; its prompt is every
//              earlier turn's user tokens and answer (max_tokens of that
//              turn, synthetic tokens), then its own user tokens (input
//              length). Turns of one conversation arrive C requests apart.
// Output lengths come from a LengthDist and are enforced with max_tokens
// (and ignore_eos for Generate, so the server generates exactly that many).
// Per request, independently: a reasoning effort drawn from a weighted mix
// (Chat only), an image part with probability image_share (forces Chat), and
// a cancellation after a random number of streamed chunks with probability
// cancel_share.
//
// Thread-safety: after Create, a Workload is immutable; Make may be called
// from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sirocco::bench {

// A distribution of token counts (always >= 1 when sampled). Text forms:
//   "128" or "fixed:128"        always 128
//   "uniform:64:256"            uniform integer in [64, 256]
//   "normal:128:32"             normal(mean 128, std 32), rounded, clamped to >= 1
//   "mix:32@0.8,512@0.2"        32 with weight 0.8, 512 with weight 0.2
struct LengthDist {
  enum class Kind { kFixed, kUniform, kNormal, kMix };
  Kind kind = Kind::kFixed;
  double a = 128;                           // fixed value, uniform min, normal mean
  double b = 0;                             // uniform max, normal std
  std::vector<std::pair<int, double>> mix;  // kMix: (length, weight)

  [[nodiscard]] static absl::StatusOr<LengthDist> Parse(const std::string& text);
  std::string ToString() const;
  int Sample(std::mt19937_64& rng) const;
};

enum class Api { kGenerate, kChat };
enum class Effort { kUnspecified, kNone, kHigh };
const char* ApiName(Api api);
const char* EffortName(Effort effort);

struct RequestSpec {
  std::int64_t index = 0;
  Api api = Api::kGenerate;
  std::vector<std::int32_t> prompt_ids;  // kGenerate
  std::string prompt_text;               // kChat
  int input_len = 0;                     // intended prompt tokens (exact for kGenerate)
  int max_tokens = 1;
  bool ignore_eos = true;
  int group = -1;  // shared-prefix group, -1 when none
  Effort effort = Effort::kUnspecified;
  bool image = false;
  int cancel_after_chunks = 0;  // > 0: cancel once this many chunks arrived
};

struct WorkloadOptions {
  Api api = Api::kGenerate;
  LengthDist input_len;   // default fixed 128
  LengthDist output_len;  // default fixed 128
  std::uint64_t seed = 0;
  int vocab_size = 0;       // from GetModelInfo; required for kGenerate
  int min_token_id = 1000;  // random ids avoid the special ids below this
  bool ignore_eos = true;
  int prefix_groups = 0;      // > 0: shared-prefix groups
  int prefix_len = 0;         // tokens of each group's prefix
  int conversations = 0;      // > 0: multi-turn conversations (Generate)
  std::string sharegpt_path;  // non-empty: prompts from this JSONL file (Chat)
  // (effort, weight); empty: every request UNSPECIFIED. Non-empty needs Chat.
  std::vector<std::pair<Effort, double>> effort_mix;
  double image_share = 0;     // [0, 1]
  double cancel_share = 0;    // [0, 1]
  int cancel_max_chunks = 0;  // cancel after U[1, this] chunks; 0: U[1, max(1, output/2)]

  [[nodiscard]] absl::Status Validate() const;
};

class Workload {
 public:
  // Loads the ShareGPT file when given. INVALID_ARGUMENT for bad options or
  // a file without one usable conversation; NOT_FOUND for a missing file.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Workload>> Create(const WorkloadOptions& options);

  // The request of this index (any int64; warm-up requests use negative ones).
  RequestSpec Make(std::int64_t index) const;

  const WorkloadOptions& options() const { return options_; }
  std::size_t sharegpt_prompts() const { return sharegpt_.size(); }

 private:
  explicit Workload(const WorkloadOptions& options) : options_(options) {}

  WorkloadOptions options_;
  std::vector<std::string> sharegpt_;  // first human turns, shuffled
};

// Parses "none:0.5,high:0.5" (efforts: unspecified, none, high).
[[nodiscard]] absl::StatusOr<std::vector<std::pair<Effort, double>>> ParseEffortMix(const std::string& text);

// A small valid RGB PNG (a gradient), the image part of image requests.
std::string TestPng(int width, int height);

}  // namespace sirocco::bench
