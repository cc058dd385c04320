#include "engine/generator.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace sirocco::engine {
namespace {

struct Running {
  const GenerateRequest* request;
  BlockTable blocks;
  SamplerState sampler;
  std::vector<std::int32_t> all;  // prompt + generated
  std::int64_t prefilled = 0;     // prompt tokens in the cache
  GenerateOutput out;
  bool done = false;
};

}  // namespace

absl::StatusOr<std::vector<GenerateOutput>> Generate(const Mistral4Model& model, KvPool& pool,
                                                     std::span<const GenerateRequest> requests,
                                                     const GeneratorOptions& options) {
  const ModelConfig& c = model.config();
  std::vector<Running> runs;
  runs.reserve(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const GenerateRequest& r = requests[i];
    if (r.prompt.empty()) return absl::InvalidArgumentError(absl::StrCat("request ", i, ": prompt is empty"));
    if (r.stop.max_tokens < 1) {
      return absl::InvalidArgumentError(absl::StrCat("request ", i, ": max_tokens must be at least 1"));
    }
    if (auto s = ValidateSamplingParams(r.sampling, c.vocab_size); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("request ", i, ": ", s.message()));
    }
    for (std::int32_t t : r.prompt) {
      if (t < 0 || t >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("request ", i, ": token id ", t, " is outside the vocabulary [0, ", c.vocab_size, ")"));
      }
    }
    runs.push_back(Running{&r, BlockTable(&pool), SamplerState(r.sampling, r.prompt), r.prompt, 0, {}, false});
    // Reserve the whole sequence up front: generation never stalls on blocks.
    const std::int64_t total = static_cast<std::int64_t>(r.prompt.size()) + r.stop.max_tokens;
    if (total > c.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("request ", i, ": prompt plus max_tokens (", total,
                                                     ") exceeds the context length ", c.max_position_embeddings));
    }
    SIROCCO_RETURN_IF_ERROR(runs.back().blocks.Reserve(total));
  }

  std::vector<float> logits;
  SamplerScratch scratch;  // shared by every request: sampling is sequential here
  auto sample = [&](Running& run, const float* row) {
    SampleResult s =
        run.sampler.Sample(std::span<const float>(row, static_cast<std::size_t>(c.vocab_size)), scratch);
    run.sampler.Observe(s.token);
    run.all.push_back(s.token);
    run.out.tokens.push_back(s.token);
    if (run.request->sampling.logprobs >= 0) run.out.samples.push_back(std::move(s));
    run.out.finish = CheckStop(run.request->stop, c.eos_token_ids, run.out.tokens.back(),
                               static_cast<std::int64_t>(run.out.tokens.size()));
    run.done = run.out.finish != FinishReason::kNone;
  };

  // Prefill, in chunks when asked; the last chunk samples the first token.
  for (bool pending = true; pending;) {
    pending = false;
    std::vector<ForwardItem> items;
    std::vector<Running*> owners;
    for (Running& run : runs) {
      const std::int64_t n = static_cast<std::int64_t>(run.request->prompt.size());
      if (run.prefilled >= n) continue;
      std::int64_t len = n - run.prefilled;
      if (options.prefill_chunk > 0) len = std::min(len, options.prefill_chunk);
      items.push_back(ForwardItem{std::span<const std::int32_t>(run.request->prompt).subspan(
                                      static_cast<std::size_t>(run.prefilled), static_cast<std::size_t>(len)),
                                  run.prefilled, &run.blocks, false});
      owners.push_back(&run);
    }
    if (items.empty()) break;
    SIROCCO_RETURN_IF_ERROR(model.Forward(items, pool, options.prefill_form, &logits));
    for (std::size_t i = 0; i < owners.size(); ++i) {
      Running& run = *owners[i];
      run.prefilled += static_cast<std::int64_t>(items[i].tokens.size());
      if (run.prefilled == static_cast<std::int64_t>(run.request->prompt.size())) {
        sample(run, logits.data() + i * static_cast<std::size_t>(c.vocab_size));
      } else {
        pending = true;
      }
    }
  }

  // Decode every unfinished request together until all stop.
  for (;;) {
    std::vector<ForwardItem> items;
    std::vector<Running*> owners;
    for (Running& run : runs) {
      if (run.done) continue;
      const std::int64_t pos = static_cast<std::int64_t>(run.all.size()) - 1;
      items.push_back(ForwardItem{std::span<const std::int32_t>(run.all).subspan(static_cast<std::size_t>(pos), 1),
                                  pos, &run.blocks, false});
      owners.push_back(&run);
    }
    if (items.empty()) break;
    SIROCCO_RETURN_IF_ERROR(model.Forward(items, pool, AttentionForm::kAbsorbed, &logits));
    for (std::size_t i = 0; i < owners.size(); ++i) {
      sample(*owners[i], logits.data() + i * static_cast<std::size_t>(c.vocab_size));
    }
  }

  std::vector<GenerateOutput> outputs;
  outputs.reserve(runs.size());
  for (Running& run : runs) outputs.push_back(std::move(run.out));
  return outputs;
}

}  // namespace sirocco::engine
