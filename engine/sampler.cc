#include "engine/sampler.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/check.h"

namespace sirocco::engine {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Probabilities carry float rounding (~1e-7 relative), so a prefix whose mass
// equals top_p exactly on paper can land a hair below it. Without slack such a
// boundary would keep one extra token depending on rounding luck.
constexpr double kTopPSlack = 1e-6;

template <typename T>
absl::Status FieldError(const char* field, const char* rule, T got) {
  return absl::InvalidArgumentError(absl::StrCat("SamplingParams.", field, " ", rule, ", got ", got));
}

// A total order (weight descending, then id ascending) so that kept sets, and
// the CDF walked over them, are identical on every platform and run.
struct ByWeightDesc {
  const float* weights;
  bool operator()(std::int32_t a, std::int32_t b) const {
    const float wa = weights[a];
    const float wb = weights[b];
    return wa > wb || (wa == wb && a < b);
  }
};

// The mass top-p must reach, given the mass of the distribution it filters.
double TopPTarget(float top_p, double mass) { return static_cast<double>(top_p) * mass * (1.0 - kTopPSlack); }

// The k heaviest tokens (ties: lower id) into order[0, k), unsorted; returns k.
std::size_t SelectTopK(const float* weights, std::size_t vocab, std::size_t k, std::int32_t* order) {
  const ByWeightDesc by_weight{weights};
  if (k > vocab / 16) {
    std::iota(order, order + vocab, 0);
    std::nth_element(order, order + k, order + vocab, by_weight);
    return k;
  }
  // Small k: one pass keeping a heap whose top is the worst kept token. Most
  // tokens lose a single comparison, far cheaper than nth_element's shuffling
  // of all ids. Ids arrive ascending, so an equal weight never displaces.
  for (std::size_t id = 0; id < vocab; ++id) {
    const auto token = static_cast<std::int32_t>(id);
    if (id < k) {
      order[id] = token;
      std::push_heap(order, order + id + 1, by_weight);
    } else if (weights[id] > weights[order[0]]) {
      std::pop_heap(order, order + k, by_weight);
      order[k - 1] = token;
      std::push_heap(order, order + k, by_weight);
    }
  }
  return k;
}

// A weight floor that every token of the top-p nucleus clears, within a
// factor of two of the lightest one, so that only the nucleus and a thin band
// below it get sorted instead of the whole vocabulary. Weights are in (0, 1];
// binning them by binary exponent costs one cheap pass.
double NucleusFloor(const float* weights, std::size_t vocab, double target) {
  constexpr std::uint32_t kExponentOfOne = 127;   // IEEE float bias; subnormals share bin 127
  std::array<double, kExponentOfOne + 1> mass{};  // mass[b]: weights in [2^-b, 2^(1-b))
  for (std::size_t id = 0; id < vocab; ++id) {
    const std::uint32_t biased = std::bit_cast<std::uint32_t>(weights[id]) >> 23;
    mass[kExponentOfOne - std::min(biased, kExponentOfOne)] += weights[id];
  }
  double cumulative = 0.0;
  for (std::uint32_t b = 0; b < kExponentOfOne; ++b) {
    cumulative += mass[b];
    if (cumulative >= target) return std::ldexp(1.0, -static_cast<int>(b));
  }
  return 0.0;  // the nucleus reaches subnormal weights: keep every token
}

// Walks `n` tokens in the order ids(0..n-1) and returns the first whose
// cumulative weight exceeds `target`. Rounding can leave the total a hair
// under target; then the last token with weight is the right answer.
template <typename Ids>
std::int32_t InverseCdf(const float* weights, Ids ids, std::size_t n, double target) {
  double cumulative = 0.0;
  std::int32_t pick = ids(0);
  for (std::size_t j = 0; j < n; ++j) {
    const std::int32_t id = ids(j);
    const float w = weights[id];
    if (w <= 0.0f) continue;
    cumulative += w;
    pick = id;
    if (cumulative > target) break;
  }
  return pick;
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& p, std::int64_t vocab_size) {
  if (vocab_size <= 0) return absl::InvalidArgumentError(absl::StrCat("vocab_size must be positive, got ", vocab_size));
  // Each test is written so that NaN fails it.
  if (!(std::isfinite(p.temperature) && p.temperature >= 0.0f)) {
    return FieldError("temperature", "must be finite and >= 0", p.temperature);
  }
  if (p.top_k < 0) return FieldError("top_k", "must be >= 0 (0 disables it)", p.top_k);
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) return FieldError("top_p", "must be in (0, 1]", p.top_p);
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) return FieldError("min_p", "must be in [0, 1]", p.min_p);
  if (!(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0.0f)) {
    return FieldError("repetition_penalty", "must be finite and > 0", p.repetition_penalty);
  }
  if (!(p.presence_penalty >= -2.0f && p.presence_penalty <= 2.0f)) {
    return FieldError("presence_penalty", "must be in [-2, 2]", p.presence_penalty);
  }
  if (!(p.frequency_penalty >= -2.0f && p.frequency_penalty <= 2.0f)) {
    return FieldError("frequency_penalty", "must be in [-2, 2]", p.frequency_penalty);
  }
  if (p.logprobs < -1 || p.logprobs > kMaxLogprobs) {
    return FieldError("logprobs", "must be -1 (none) or in [0, 20]", p.logprobs);
  }
  if (p.logprobs > vocab_size) {
    return FieldError("logprobs", absl::StrCat("must not exceed the vocabulary (", vocab_size, ")").c_str(),
                      p.logprobs);
  }
  return absl::OkStatus();
}

SamplerState::SamplerState(const SamplingParams& params, std::span<const std::int32_t> prompt_tokens)
    : params_(params),
      seed_(params.seed.has_value() ? *params.seed : [] {
        std::random_device device;  // 32 bits a call; two make the full seed
        return (std::uint64_t{device()} << 32) | device();
      }()),
      rng_(seed_),
      track_prompt_(params.repetition_penalty != 1.0f),
      track_output_(track_prompt_ || params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f) {
  if (!track_prompt_) return;
  std::vector<std::int32_t> ids(prompt_tokens.begin(), prompt_tokens.end());
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  SIROCCO_CHECK(ids.empty() || ids.front() >= 0, "negative prompt token id");
  seen_.reserve(ids.size());
  for (std::int32_t id : ids) seen_.push_back(SeenToken{id, 0});
}

void SamplerState::Replay(std::int32_t generated_token) {
  (void)TakeDraw();
  Observe(generated_token);
}

std::optional<double> SamplerState::TakeDraw() {
  if (params_.temperature < kGreedyTemperature) return std::nullopt;
  // The top 53 bits of one engine output: the same double on every standard
  // library, unlike std::uniform_real_distribution. Every non-greedy Sample
  // consumes exactly one output (what Replay relies on).
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

void SamplerState::Observe(std::int32_t generated_token) {
  if (!track_output_) return;
  SIROCCO_CHECK(generated_token >= 0, "negative generated token id");
  auto it = std::lower_bound(seen_.begin(), seen_.end(), generated_token,
                             [](const SeenToken& s, std::int32_t id) { return s.token < id; });
  if (it != seen_.end() && it->token == generated_token) {
    ++it->output_count;
  } else {
    seen_.insert(it, SeenToken{generated_token, 1});
  }
}

float SamplerState::Penalise(float logit, const SeenToken& seen) const {
  // vLLM's order: the multiplicative penalty on the raw logit, then the
  // additive ones. They do not commute, so the order is part of the contract.
  const float rep = params_.repetition_penalty;
  if (rep != 1.0f) logit = logit > 0.0f ? logit / rep : logit * rep;
  if (seen.output_count > 0) {
    logit -= params_.frequency_penalty * static_cast<float>(seen.output_count);
    logit -= params_.presence_penalty;
  }
  return logit;
}

float SamplerState::PenalisedLogit(std::span<const float> logits, std::int32_t token) const {
  const float raw = logits[static_cast<std::size_t>(token)];
  auto it = std::lower_bound(seen_.begin(), seen_.end(), token,
                             [](const SeenToken& s, std::int32_t id) { return s.token < id; });
  return it != seen_.end() && it->token == token ? Penalise(raw, *it) : raw;
}

// Merges the sorted seen list into one pass over the row, so penalties cost
// O(seen) on top of the O(V) scan, with no penalised copy of the row and no
// per-token lookup.
template <typename Fn>
void SamplerState::ForEachPenalised(std::span<const float> logits, Fn&& fn) const {
  const std::size_t vocab = logits.size();
  std::size_t next = 0;
  for (const SeenToken& seen : seen_) {
    const auto id = static_cast<std::size_t>(seen.token);
    if (id >= vocab) break;  // sorted: the rest are outside the row too
    for (; next < id; ++next) fn(next, logits[next]);
    fn(id, Penalise(logits[id], seen));
    next = id + 1;
  }
  for (; next < vocab; ++next) fn(next, logits[next]);
}

std::int32_t SamplerState::Argmax(std::span<const float> logits) const {
  std::size_t best = 0;
  float best_value = kNegInf;
  // Strict '>' keeps the lowest id among equal maxima and never picks NaN.
  ForEachPenalised(logits, [&](std::size_t id, float v) {
    if (v > best_value) {
      best_value = v;
      best = id;
    }
  });
  return static_cast<std::int32_t>(best);
}

SampleResult SamplerState::Sample(std::span<const float> logits, SamplerScratch& scratch) {
  const std::optional<double> u = TakeDraw();
  return SampleWithDraw(logits, u, scratch);
}

SampleResult SamplerState::SampleWithDraw(std::span<const float> logits, std::optional<double> u,
                                          SamplerScratch& scratch, std::span<const std::uint32_t> allowed) const {
  SIROCCO_CHECK(!logits.empty(), "empty logits row");
  SampleResult result;
  if (allowed.empty()) {
    result.token = u.has_value() ? Draw(logits, *u, scratch) : Argmax(logits);
  } else {
    SIROCCO_CHECK(allowed.size() * 32 >= logits.size(), "token mask smaller than the vocabulary");
    auto is_allowed = [&](std::size_t id) { return ((allowed[id / 32] >> (id % 32)) & 1u) != 0; };
    scratch.masked.assign(logits.begin(), logits.end());
    std::size_t first_allowed = logits.size();
    for (std::size_t id = 0; id < logits.size(); ++id) {
      if (!is_allowed(id)) {
        scratch.masked[id] = kNegInf;
      } else if (first_allowed == logits.size()) {
        first_allowed = id;
      }
    }
    SIROCCO_CHECK(first_allowed < logits.size(), "a token mask that allows nothing");
    const std::span<const float> masked(scratch.masked);
    result.token = u.has_value() ? Draw(masked, *u, scratch) : Argmax(masked);
    // Every allowed logit -inf (or NaN): the draw fell back to id 0.
    if (!is_allowed(static_cast<std::size_t>(result.token))) result.token = static_cast<std::int32_t>(first_allowed);
  }
  if (params_.logprobs >= 0) FillLogprobs(logits, result);
  return result;
}

std::int32_t SamplerState::Draw(std::span<const float> logits, double u, SamplerScratch& scratch) const {
  const std::size_t vocab = logits.size();
  float max_logit = kNegInf;
  ForEachPenalised(logits, [&](std::size_t, float v) { max_logit = std::max(max_logit, v); });
  if (!std::isfinite(max_logit)) return Argmax(logits);

  // Unnormalised probabilities: the argmax has weight exactly 1, so min-p's
  // "min_p * max prob" is simply min_p, and no pass divides by the total.
  scratch.weights.resize(vocab);
  float* w = scratch.weights.data();
  const float temperature = params_.temperature;
  double total = 0.0;
  ForEachPenalised(logits, [&](std::size_t id, float v) {
    w[id] = v > kNegInf ? std::exp((v - max_logit) / temperature) : 0.0f;  // NaN -> 0
    total += w[id];
  });
  const bool top_k_on = params_.top_k > 0 && static_cast<std::size_t>(params_.top_k) < vocab;
  const bool top_p_on = params_.top_p < 1.0f;
  const bool min_p_on = params_.min_p > 0.0f;
  if (!top_k_on && !top_p_on && !min_p_on) {
    return InverseCdf(
        w, [](std::size_t j) { return static_cast<std::int32_t>(j); }, vocab, u * total);
  }

  // Each filter keeps a prefix of the tokens sorted by weight, so the kept set
  // is the shortest of three prefixes. Gather candidates that can be in it,
  // sort those once, then cut.
  scratch.order.resize(vocab);
  std::int32_t* order = scratch.order.data();
  std::size_t n = 0;
  double top_p_mass = total;  // the distribution top-p sees: after top-k, renormalised
  if (top_k_on) {
    n = SelectTopK(w, vocab, static_cast<std::size_t>(params_.top_k), order);
    top_p_mass = 0.0;
    for (std::size_t j = 0; j < n; ++j) top_p_mass += w[order[j]];
    if (min_p_on) {
      n = static_cast<std::size_t>(
          std::partition(order, order + n, [&](std::int32_t id) { return w[id] >= params_.min_p; }) - order);
    }
  } else {
    double floor = min_p_on ? params_.min_p : 0.0;
    if (top_p_on) floor = std::max(floor, NucleusFloor(w, vocab, TopPTarget(params_.top_p, total)));
    for (std::size_t id = 0; id < vocab; ++id) {
      if (w[id] >= floor) order[n++] = static_cast<std::int32_t>(id);
    }
  }
  std::sort(order, order + n, ByWeightDesc{w});  // the argmax (weight 1) always survives: n >= 1

  if (top_p_on) {
    // Smallest prefix whose mass reaches top_p; n stays put if min-p already
    // cut shorter than the nucleus.
    const double target = TopPTarget(params_.top_p, top_p_mass);
    double cumulative = 0.0;
    for (std::size_t j = 0; j < n; ++j) {
      cumulative += w[order[j]];
      if (cumulative >= target) {
        n = j + 1;
        break;
      }
    }
  }
  double kept_mass = 0.0;
  for (std::size_t j = 0; j < n; ++j) kept_mass += w[order[j]];
  return InverseCdf(
      w, [order](std::size_t j) { return order[j]; }, n, u * kept_mass);
}

void SamplerState::FillLogprobs(std::span<const float> logits, SampleResult& result) const {
  // The n best (id, penalised logit) so far, best first. Ids arrive in
  // ascending order, so inserting after equals keeps lower ids first.
  const std::size_t want = std::min(static_cast<std::size_t>(params_.logprobs), logits.size());
  std::array<TokenLogprob, kMaxLogprobs> best;
  std::size_t have = 0;
  float max_logit = kNegInf;
  ForEachPenalised(logits, [&](std::size_t id, float v) {
    max_logit = std::max(max_logit, v);
    if (want == 0 || std::isnan(v) || (have == want && !(v > best[have - 1].logprob))) return;
    std::size_t pos = std::min(have, want - 1);
    while (pos > 0 && best[pos - 1].logprob < v) {
      best[pos] = best[pos - 1];
      --pos;
    }
    best[pos] = TokenLogprob{static_cast<std::int32_t>(id), v};
    have = std::min(have + 1, want);
  });

  // log_softmax at temperature 1. Float exp is accurate to an ulp per term;
  // summing in double keeps a 131072-entry row well inside 1e-5.
  double sum = 0.0;
  ForEachPenalised(logits, [&](std::size_t, float v) {
    if (v > kNegInf) sum += std::exp(v - max_logit);
  });
  const double log_normaliser = static_cast<double>(max_logit) + std::log(sum);
  result.logprob = static_cast<float>(PenalisedLogit(logits, result.token) - log_normaliser);
  result.top.clear();
  result.top.reserve(have);
  for (std::size_t j = 0; j < have; ++j) {
    result.top.push_back(TokenLogprob{best[j].token, static_cast<float>(best[j].logprob - log_normaliser)});
  }
}

absl::Status ValidateStopParams(const StopParams& stop) {
  if (stop.max_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrCat("StopParams.max_tokens must be >= 1, got ", stop.max_tokens));
  }
  return absl::OkStatus();
}

FinishReason CheckStop(const StopParams& stop, std::span<const std::int64_t> eos_ids, std::int32_t token,
                       std::int64_t output_len) {
  if (!stop.ignore_eos && std::find(eos_ids.begin(), eos_ids.end(), token) != eos_ids.end()) {
    return FinishReason::kStop;
  }
  if (std::find(stop.stop_token_ids.begin(), stop.stop_token_ids.end(), token) != stop.stop_token_ids.end()) {
    return FinishReason::kStop;
  }
  if (output_len >= stop.max_tokens) return FinishReason::kLength;
  return FinishReason::kNone;
}

}  // namespace sirocco::engine
