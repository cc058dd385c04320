// Device-side sampling (kernels/cuda/sampling.h) against its spec, the CPU
// sampler engine::SamplerState::Sample.
//
// Every batch mixes rows of different parameters (greedy, temperature only,
// each filter alone and together, penalties over prompt and output tokens,
// logprobs -1 / 0 / 5 / 20) and different logits (flat, peaked, NaN and -inf
// sprinkled, heavy ties, all -inf, all NaN, a +inf), for vocabularies of 37,
// 1000 and 131072 and batches of 1, 7 and 64 rows. Each row's u is the first
// output of the mt19937_64 its SamplerState is seeded with, which is the draw
// that state's Sample consumes, so both sides sample with the same u.
//
// What must match:
//   * greedy rows and rows without a finite maximum: the token, exactly;
//   * sampled rows: the token, except where the device's sums (double, in
//     another order than the CPU's loops) put u on the other side of a CDF
//     boundary: then the device token must be the CPU token's neighbour in the
//     walk and u within 1e-5 of the boundary between them (DrawWalk below),
//     and such cases must be rare;
//   * top alternatives: ids exactly (both sides compute bit-identical
//     penalised logits), logprobs within 1e-4 absolute, and unused slots
//     (-1, 0); the sampled token's logprob within 1e-4;
//   * a second launch on the same inputs: bit-identical outputs.
//
// CudaSamplingTest skips without a device (SKIPPED, never passed).
// CudaSamplingChecks needs none: the launcher rejects bad arguments before
// any CUDA call.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/sampler.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_memory.h"
#include "kernels/cuda/sampling.h"
#include "tests/gpu/cuda_test_util.h"

namespace sirocco::kernels::cuda {
namespace {

using namespace ::sirocco::kernels::cuda::test_util;  // NOLINT: device buffers

static_assert(kSampleMaxLogprobs == engine::kMaxLogprobs, "sampling.h mirrors engine::kMaxLogprobs");
static_assert(kSampleGreedyTemperature == engine::kGreedyTemperature, "sampling.h mirrors engine::kGreedyTemperature");

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kLogprobTolerance = 1e-4;
constexpr double kBoundaryTolerance = 1e-5;
// Padding of the logits rows: finite and larger than any logit, so a kernel
// reading past vocab changes the maximum and fails every comparison.
constexpr float kPadding = 1e30f;

#define SIROCCO_ASSERT_OK(expr)                         \
  do {                                                  \
    const ::absl::Status assert_status_ = (expr);       \
    ASSERT_TRUE(assert_status_.ok()) << assert_status_; \
  } while (false)

// ---------------------------------------------------------------------------
// Test cases.

struct Mix {
  const char* name;
  engine::SamplingParams params;
};

engine::SamplingParams Knobs(float temperature, std::int32_t top_k, float top_p, float min_p, std::int32_t logprobs) {
  engine::SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  p.min_p = min_p;
  p.logprobs = logprobs;
  return p;
}

engine::SamplingParams WithPenalties(engine::SamplingParams p, float repetition, float presence, float frequency) {
  p.repetition_penalty = repetition;
  p.presence_penalty = presence;
  p.frequency_penalty = frequency;
  return p;
}

std::vector<Mix> Mixes() {
  return {
      {"greedy", Knobs(0.0f, 0, 1.0f, 0.0f, -1)},
      {"greedy penalties logprobs 5", WithPenalties(Knobs(0.0f, 0, 1.0f, 0.0f, 5), 1.3f, 0.5f, 0.4f)},
      {"just below greedy temperature", Knobs(0.5e-5f, 50, 0.9f, 0.0f, 0)},
      {"temperature only", Knobs(0.7f, 0, 1.0f, 0.0f, -1)},
      {"hot, logprobs 0", Knobs(1.8f, 0, 1.0f, 0.0f, 0)},
      {"top-k 20", Knobs(1.0f, 20, 1.0f, 0.0f, -1)},
      {"top-k 1", Knobs(1.0f, 1, 1.0f, 0.0f, -1)},
      {"top-k beyond vocab (off)", Knobs(1.0f, 1 << 30, 1.0f, 0.0f, 5)},
      {"top-p 0.9", Knobs(1.0f, 0, 0.9f, 0.0f, -1)},
      {"top-p 0.01", Knobs(1.0f, 0, 0.01f, 0.0f, -1)},
      {"min-p 0.05", Knobs(1.0f, 0, 1.0f, 0.05f, 5)},
      {"all filters", Knobs(0.8f, 40, 0.8f, 0.02f, 5)},
      {"top-k 100 + min-p", Knobs(1.2f, 100, 1.0f, 0.1f, -1)},
      {"top-k 5000 + top-p 0.95", Knobs(1.0f, 5000, 0.95f, 0.0f, 0)},
      {"top-p 0.9 + min-p", Knobs(1.0f, 0, 0.9f, 0.01f, -1)},
      {"penalties + top-p, logprobs 5", WithPenalties(Knobs(1.0f, 0, 0.95f, 0.0f, 5), 1.3f, 0.5f, 0.3f)},
      {"negative penalties, no filter", WithPenalties(Knobs(1.1f, 0, 1.0f, 0.0f, -1), 0.8f, -0.5f, -0.2f)},
      {"presence only + top-k", WithPenalties(Knobs(1.0f, 30, 1.0f, 0.0f, 20), 1.0f, 1.5f, 0.0f)},
      {"logprobs 20", Knobs(1.0f, 0, 1.0f, 0.0f, 20)},
  };
}

// Kinds of logits rows; see FillRow.
constexpr int kKinds = 9;

// One row of logits of the given kind.
void FillRow(int kind, std::mt19937& rng, std::span<float> row) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const float scale = kind == 0 ? 0.5f : kind == 2 ? 6.0f : 2.0f;  // flat, peaked, typical
  for (float& v : row) v = scale * normal(rng);
  switch (kind) {
    case 3:  // NaN and -inf sprinkled (never all of the row)
      for (std::size_t i = 1; i < row.size(); ++i) {
        const float r = unit(rng);
        if (r < 0.1f) row[i] = kNaN;
        if (r > 0.9f) row[i] = -kInf;
      }
      break;
    case 4:  // four distinct values: ties everywhere, in the argmax, the sort and the top-n
      for (float& v : row) v = std::floor(4.0f * unit(rng));
      break;
    case 5:
      std::fill(row.begin(), row.end(), -kInf);
      break;
    case 6:
      std::fill(row.begin(), row.end(), kNaN);
      break;
    case 7:  // one +inf: no finite maximum, so even sampled rows fall back to greedy
      row[row.size() / 2] = kInf;
      break;
    default:
      break;
  }
}

struct RowCase {
  engine::SamplingParams params;  // seed set
  std::vector<std::int32_t> prompt;
  std::vector<std::int32_t> output;
};

// Prompt and output histories, including ids beyond the vocabulary (both
// sides ignore them) and repeated output tokens (counts above 1).
RowCase MakeRowCase(const engine::SamplingParams& params, std::uint64_t seed, int vocab, std::mt19937& rng) {
  RowCase c;
  c.params = params;
  c.params.seed = seed;
  std::uniform_int_distribution<std::int32_t> any(0, vocab + 9);
  std::uniform_int_distribution<std::int32_t> few(0, std::min(vocab - 1, 15));
  const int prompt_len = std::min(vocab, 48);
  for (int i = 0; i < prompt_len; ++i) c.prompt.push_back(any(rng));
  for (int i = 0; i < 24; ++i) c.output.push_back(i % 2 == 0 ? few(rng) : any(rng));
  return c;
}

// The seen list sampling.h asks for: every distinct prompt token with count
// 0, every output token with its count.
std::map<std::int32_t, std::int32_t> SeenCounts(const RowCase& c) {
  std::map<std::int32_t, std::int32_t> seen;
  for (std::int32_t t : c.prompt) seen.emplace(t, 0);
  for (std::int32_t t : c.output) ++seen[t];
  return seen;
}

double FirstDraw(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

// ---------------------------------------------------------------------------
// A scalar re-implementation of the draw, written from sampler.h's
// documentation, used only to judge a disagreement between device and CPU
// tokens (never to produce expected tokens).

std::vector<float> PenalisedRow(std::span<const float> logits, const RowCase& c) {
  std::vector<float> pen(logits.begin(), logits.end());
  const engine::SamplingParams& p = c.params;
  for (const auto& [token, count] : SeenCounts(c)) {
    if (token >= static_cast<std::int32_t>(pen.size())) continue;
    float v = logits[static_cast<std::size_t>(token)];
    if (p.repetition_penalty != 1.0f) v = v > 0.0f ? v / p.repetition_penalty : v * p.repetition_penalty;
    if (count > 0) {
      v -= p.frequency_penalty * static_cast<float>(count);
      v -= p.presence_penalty;
    }
    pen[static_cast<std::size_t>(token)] = v;
  }
  return pen;
}

float MaxIgnoringNaN(const std::vector<float>& v) {
  float m = -kInf;
  for (float x : v) m = std::max(m, x);
  return m;
}

// The kept tokens in the order the draw walks them, with cumulative weights.
struct Walk {
  std::vector<std::int32_t> ids;
  std::vector<double> weight;
  std::vector<double> cumulative;
};

Walk DrawWalk(const std::vector<float>& pen, const engine::SamplingParams& p) {
  const std::size_t vocab = pen.size();
  const float max = MaxIgnoringNaN(pen);
  std::vector<float> w(vocab);
  double total = 0.0;
  for (std::size_t i = 0; i < vocab; ++i) {
    w[i] = pen[i] > -kInf ? std::exp((pen[i] - max) / p.temperature) : 0.0f;
    total += w[i];
  }
  std::vector<std::int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::size_t n = vocab;
  const bool top_k_on = p.top_k > 0 && static_cast<std::size_t>(p.top_k) < vocab;
  if (top_k_on || p.top_p < 1.0f || p.min_p > 0.0f) {
    std::sort(order.begin(), order.end(),
              [&](std::int32_t a, std::int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); });
    double mass = total;
    if (top_k_on) {
      n = static_cast<std::size_t>(p.top_k);
      mass = 0.0;
      for (std::size_t j = 0; j < n; ++j) mass += w[order[j]];
    }
    if (p.min_p > 0.0f) {
      std::size_t keep = 0;
      while (keep < n && w[order[keep]] >= p.min_p) ++keep;
      n = keep;
    }
    if (p.top_p < 1.0f) {
      const double target = static_cast<double>(p.top_p) * mass * (1.0 - 1e-6);
      double cumulative = 0.0;
      for (std::size_t j = 0; j < n; ++j) {
        cumulative += w[order[j]];
        if (cumulative >= target) {
          n = j + 1;
          break;
        }
      }
    }
  }
  Walk walk;
  double cumulative = 0.0;
  for (std::size_t j = 0; j < n; ++j) {
    cumulative += w[order[j]];
    walk.ids.push_back(order[j]);
    walk.weight.push_back(w[order[j]]);
    walk.cumulative.push_back(cumulative);
  }
  return walk;
}

// Whether `got` may replace `want` for draw u: the two are consecutive kept
// tokens with weight (only weightless tokens between them) and u, as a
// fraction of the kept mass, lies within kBoundaryTolerance of the boundary
// between them.
bool IsBoundaryCase(const Walk& walk, std::int32_t want, std::int32_t got, double u, std::string* why) {
  const auto position = [&](std::int32_t id) {
    return static_cast<std::ptrdiff_t>(std::find(walk.ids.begin(), walk.ids.end(), id) - walk.ids.begin());
  };
  const std::ptrdiff_t a = position(want);
  const std::ptrdiff_t b = position(got);
  const std::ptrdiff_t size = static_cast<std::ptrdiff_t>(walk.ids.size());
  if (a == size || b == size) {
    *why = "token not in the kept set";
    return false;
  }
  const std::ptrdiff_t lo = std::min(a, b);
  const std::ptrdiff_t hi = std::max(a, b);
  for (std::ptrdiff_t j = lo + 1; j < hi; ++j) {
    if (walk.weight[static_cast<std::size_t>(j)] > 0.0) {
      *why = "tokens not adjacent in the walk";
      return false;
    }
  }
  const double boundary = walk.cumulative[static_cast<std::size_t>(lo)] / walk.cumulative.back();
  *why = "u = " + std::to_string(u) + ", boundary at " + std::to_string(boundary);
  return std::abs(u - boundary) <= kBoundaryTolerance;
}

double LogSoftmax(const std::vector<float>& pen, std::int32_t token) {
  const float max = MaxIgnoringNaN(pen);
  double sum = 0.0;
  for (float v : pen) {
    if (v > -kInf) sum += std::exp(static_cast<double>(v) - max);
  }
  return static_cast<double>(pen[static_cast<std::size_t>(token)]) - (max + std::log(sum));
}

bool LogprobClose(float got, float want) {
  if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got);
  if (std::isinf(want) || std::isinf(got)) return got == want;
  return std::abs(static_cast<double>(got) - want) <= kLogprobTolerance;
}

// ---------------------------------------------------------------------------

struct Outputs {
  std::vector<std::int32_t> tokens;
  std::vector<float> logprob;
  std::vector<std::int32_t> top_ids;
  std::vector<float> top_logprobs;
};

class CudaSamplingTest : public testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  }

  // Samples rows x vocab logits (leading dimension ld) on the device. With
  // `optional` false, the optional pointers (seen lists, logprob outputs) are
  // null and only tokens come back.
  Outputs RunDevice(int rows, int vocab, int ld, const std::vector<float>& logits,
                    const std::vector<SampleRowParams>& params, const std::vector<std::int32_t>& seen_offsets,
                    const std::vector<std::int32_t>& seen_tokens, const std::vector<std::int32_t>& seen_counts,
                    bool optional = true) {
    const std::size_t n = static_cast<std::size_t>(rows);
    const std::size_t slots = n * kSampleMaxLogprobs;
    const DeviceBuffer d_logits = ToDevice(logits);
    const DeviceBuffer d_params = ToDevice(params);
    const DeviceBuffer d_offsets = ToDevice(seen_offsets);
    // Never empty, so the pointers are set even for a batch without seen tokens.
    const DeviceBuffer d_tokens_seen = ToDevice(seen_tokens.empty() ? std::vector<std::int32_t>{0} : seen_tokens);
    const DeviceBuffer d_counts = ToDevice(seen_counts.empty() ? std::vector<std::int32_t>{0} : seen_counts);
    const DeviceBuffer d_tokens = PoisonedDevice<std::int32_t>(n);
    const DeviceBuffer d_logprob = PoisonedDevice<float>(n);
    const DeviceBuffer d_top_ids = PoisonedDevice<std::int32_t>(slots);
    const DeviceBuffer d_top_logprobs = PoisonedDevice<float>(slots);
    const std::size_t workspace_bytes = SamplingWorkspaceBytes(rows, vocab);
    absl::StatusOr<DeviceBuffer> workspace = DeviceBuffer::Allocate(workspace_bytes);
    if (!workspace.ok()) {
      ADD_FAILURE() << workspace.status();
      return {};
    }
    // Garbage in the workspace: the kernel must write before it reads.
    const absl::Status fill = FillBytes(workspace->data(), 0x7f, workspace_bytes);
    if (!fill.ok()) ADD_FAILURE() << fill;

    SampleBatchParams p;
    p.rows = rows;
    p.vocab = vocab;
    p.logits = d_logits.as<float>();
    p.ld = ld;
    p.params = d_params.as<SampleRowParams>();
    p.seen_offsets = d_offsets.as<std::int32_t>();
    p.seen_tokens = d_tokens_seen.as<std::int32_t>();
    p.seen_counts = d_counts.as<std::int32_t>();
    p.tokens = d_tokens.as<std::int32_t>();
    p.logprob = d_logprob.as<float>();
    p.top_ids = d_top_ids.as<std::int32_t>();
    p.top_logprobs = d_top_logprobs.as<float>();
    p.workspace = workspace->data();
    p.workspace_bytes = workspace_bytes;
    if (!optional) {
      p.seen_offsets = nullptr;
      p.seen_tokens = nullptr;
      p.seen_counts = nullptr;
      p.logprob = nullptr;
      p.top_ids = nullptr;
      p.top_logprobs = nullptr;
    }
    const absl::Status st = Sample(p, nullptr);
    if (!st.ok()) {
      ADD_FAILURE() << st;
      return {};
    }
    const absl::Status sync = Synchronize(nullptr);
    if (!sync.ok()) {
      ADD_FAILURE() << sync;
      return {};
    }
    if (!optional) return Outputs{ToHost<std::int32_t>(d_tokens, n), {}, {}, {}};
    return Outputs{ToHost<std::int32_t>(d_tokens, n), ToHost<float>(d_logprob, n),
                   ToHost<std::int32_t>(d_top_ids, slots), ToHost<float>(d_top_logprobs, slots)};
  }

  std::mt19937 rng_{20250611u};
};

// Counts of one sweep, for the rarity check at the end of a test.
struct Tally {
  int sampled = 0;
  int boundary_cases = 0;
};

// Checks one row of device outputs against the CPU sampler.
void CheckRow(const RowCase& c, std::span<const float> logits, const Outputs& got, int r, double u, Tally& tally,
              const std::string& where) {
  engine::SamplerState state(c.params, c.prompt);
  for (std::int32_t t : c.output) state.Observe(t);
  const engine::SampleResult want = state.Sample(logits);
  const std::vector<float> pen = PenalisedRow(logits, c);
  const bool greedy = c.params.temperature < engine::kGreedyTemperature;
  const bool fallback = !std::isfinite(MaxIgnoringNaN(pen));
  const std::int32_t token = got.tokens[static_cast<std::size_t>(r)];

  if (greedy || fallback) {
    EXPECT_EQ(token, want.token) << where << (greedy ? " (greedy)" : " (no finite maximum)");
  } else {
    ++tally.sampled;
    if (token != want.token) {
      std::string why;
      const bool boundary = IsBoundaryCase(DrawWalk(pen, c.params), want.token, token, u, &why);
      EXPECT_TRUE(boundary) << where << ": device token " << token << ", CPU token " << want.token << ": " << why;
      if (boundary) ++tally.boundary_cases;
    }
  }

  const float logprob = got.logprob[static_cast<std::size_t>(r)];
  const std::size_t base = static_cast<std::size_t>(r) * kSampleMaxLogprobs;
  if (c.params.logprobs < 0) {
    EXPECT_EQ(logprob, 0.0f) << where;
  } else if (token == want.token) {
    EXPECT_TRUE(LogprobClose(logprob, want.logprob)) << where << ": logprob " << logprob << " vs " << want.logprob;
  } else if (token >= 0 && token < static_cast<std::int32_t>(pen.size())) {
    const double expected = LogSoftmax(pen, token);
    EXPECT_TRUE(LogprobClose(logprob, static_cast<float>(expected))) << where << ": logprob of the device's token";
  }
  for (std::size_t j = 0; j < static_cast<std::size_t>(kSampleMaxLogprobs); ++j) {
    const std::int32_t id = got.top_ids[base + j];
    const float lp = got.top_logprobs[base + j];
    if (j < want.top.size()) {
      EXPECT_EQ(id, want.top[j].token) << where << ": top slot " << j;
      EXPECT_TRUE(LogprobClose(lp, want.top[j].logprob))
          << where << ": top slot " << j << " logprob " << lp << " vs " << want.top[j].logprob;
    } else {
      EXPECT_EQ(id, -1) << where << ": unused top slot " << j;
      EXPECT_EQ(lp, 0.0f) << where << ": unused top slot " << j;
    }
  }
}

TEST_P(CudaSamplingTest, MatchesCpuSampler) {
  const int vocab = GetParam();
  const int ld = vocab + 3;
  const std::vector<Mix> mixes = Mixes();
  const int num_mixes = static_cast<int>(mixes.size());
  Tally tally;
  for (int rows : {1, 7, 64}) {
    // Enough launches that one-row batches see every mix and every kind.
    const int launches = rows == 1 ? num_mixes : rows == 7 ? 4 : 2;
    for (int launch = 0; launch < launches; ++launch) {
      std::vector<float> logits(static_cast<std::size_t>(rows) * ld, kPadding);
      std::vector<RowCase> cases;
      std::vector<int> kinds;
      std::vector<SampleRowParams> params;
      std::vector<double> draws;
      std::vector<std::int32_t> seen_offsets{0};
      std::vector<std::int32_t> seen_tokens;
      std::vector<std::int32_t> seen_counts;
      for (int r = 0; r < rows; ++r) {
        const int mix = (r + launch * rows) % num_mixes;
        const int kind = (r + 3 * launch) % kKinds;
        FillRow(kind, rng_, std::span<float>(logits).subspan(static_cast<std::size_t>(r) * ld, vocab));
        const std::uint64_t seed = (static_cast<std::uint64_t>(vocab) << 32) ^
                                   (static_cast<std::uint64_t>(rows) << 16) ^
                                   (static_cast<std::uint64_t>(launch) << 8) ^ static_cast<std::uint64_t>(r);
        cases.push_back(MakeRowCase(mixes[static_cast<std::size_t>(mix)].params, seed, vocab, rng_));
        kinds.push_back(kind);
        const engine::SamplingParams& k = cases.back().params;
        SIROCCO_ASSERT_OK(engine::ValidateSamplingParams(k, vocab));
        draws.push_back(FirstDraw(seed));
        params.push_back(SampleRowParams{k.temperature, k.top_p, k.min_p, k.repetition_penalty, k.presence_penalty,
                                         k.frequency_penalty, k.top_k, k.logprobs, draws.back()});
        for (const auto& [token, count] : SeenCounts(cases.back())) {
          seen_tokens.push_back(token);
          seen_counts.push_back(count);
        }
        seen_offsets.push_back(static_cast<std::int32_t>(seen_tokens.size()));
      }

      const Outputs got = RunDevice(rows, vocab, ld, logits, params, seen_offsets, seen_tokens, seen_counts);
      ASSERT_EQ(got.tokens.size(), static_cast<std::size_t>(rows));
      for (int r = 0; r < rows; ++r) {
        const std::string where = "vocab " + std::to_string(vocab) + ", rows " + std::to_string(rows) + ", launch " +
                                  std::to_string(launch) + ", row " + std::to_string(r) + " (" +
                                  mixes[static_cast<std::size_t>((r + launch * rows) % num_mixes)].name + ", kind " +
                                  std::to_string(kinds[static_cast<std::size_t>(r)]) + ")";
        const std::span<const float> row =
            std::span<const float>(logits).subspan(static_cast<std::size_t>(r) * ld, vocab);
        CheckRow(cases[static_cast<std::size_t>(r)], row, got, r, draws[static_cast<std::size_t>(r)], tally, where);
      }

      // The same inputs again: the result is a function of them alone.
      const Outputs again = RunDevice(rows, vocab, ld, logits, params, seen_offsets, seen_tokens, seen_counts);
      EXPECT_EQ(again.tokens, got.tokens);
      ASSERT_EQ(again.logprob.size(), got.logprob.size());
      EXPECT_EQ(std::memcmp(again.logprob.data(), got.logprob.data(), got.logprob.size() * sizeof(float)), 0);
      EXPECT_EQ(again.top_ids, got.top_ids);
      ASSERT_EQ(again.top_logprobs.size(), got.top_logprobs.size());
      EXPECT_EQ(
          std::memcmp(again.top_logprobs.data(), got.top_logprobs.data(), got.top_logprobs.size() * sizeof(float)), 0);
    }
  }
  // Boundary cases need u within ~1e-15 of a CDF boundary for float-exact
  // weights; a handful would already mean the weights themselves differ.
  EXPECT_LE(tally.boundary_cases, std::max(1, tally.sampled / 100)) << "of " << tally.sampled << " sampled rows";
}

INSTANTIATE_TEST_SUITE_P(Vocab, CudaSamplingTest, testing::Values(37, 1000, 131072),
                         [](const testing::TestParamInfo<int>& vocab) { return std::to_string(vocab.param); });

// Ten tokens of equal weight and top-p masses that a float top_p puts a hair
// above a whole number of tokens (0.3f * 10 = 3.0000001): only the CPU's
// slack keeps the nucleus at three tokens. Without it, u above 0.75 would
// sample a fourth.
TEST_P(CudaSamplingTest, TopPCutKeepsTheCpuSlack) {
  const int vocab = GetParam();
  constexpr int kRows = 64;
  std::vector<float> logits(static_cast<std::size_t>(kRows) * vocab, -kInf);
  std::vector<RowCase> cases;
  std::vector<SampleRowParams> params;
  std::vector<double> draws;
  for (int r = 0; r < kRows; ++r) {
    for (int id = 0; id < 10; ++id) logits[static_cast<std::size_t>(r) * vocab + id] = 0.5f;
    RowCase c;
    c.params = r % 2 == 0 ? Knobs(1.0f, 0, 0.3f, 0.0f, -1) : Knobs(1.0f, 5, 0.6f, 0.0f, -1);
    c.params.seed = 1000u + static_cast<std::uint64_t>(r);
    draws.push_back(FirstDraw(*c.params.seed));
    params.push_back(SampleRowParams{c.params.temperature, c.params.top_p, c.params.min_p, 1.0f, 0.0f, 0.0f,
                                     c.params.top_k, c.params.logprobs, draws.back()});
    cases.push_back(std::move(c));
  }
  const std::vector<std::int32_t> no_seen(kRows + 1, 0);
  const Outputs got = RunDevice(kRows, vocab, vocab, logits, params, no_seen, {}, {});
  ASSERT_EQ(got.tokens.size(), static_cast<std::size_t>(kRows));
  Tally tally;
  for (int r = 0; r < kRows; ++r) {
    EXPECT_LT(got.tokens[static_cast<std::size_t>(r)], 3)
        << "row " << r << ", u = " << draws[static_cast<std::size_t>(r)];
    CheckRow(cases[static_cast<std::size_t>(r)],
             std::span<const float>(logits).subspan(static_cast<std::size_t>(r) * vocab, vocab), got, r,
             draws[static_cast<std::size_t>(r)], tally, "row " + std::to_string(r));
  }
}

// Without seen lists and logprob outputs (all null) the tokens are those of
// a launch that has them, with penalties off and every row's seen list empty:
// the optional pointers change what is read and written, not the draw.
TEST_P(CudaSamplingTest, OptionalPointersMayBeNull) {
  const int vocab = GetParam();
  const std::vector<Mix> mixes = Mixes();
  const int rows = static_cast<int>(mixes.size());
  std::vector<float> logits(static_cast<std::size_t>(rows) * vocab);
  std::vector<SampleRowParams> params;
  for (int r = 0; r < rows; ++r) {
    FillRow(r % 3, rng_, std::span<float>(logits).subspan(static_cast<std::size_t>(r) * vocab, vocab));
    const engine::SamplingParams& k = mixes[static_cast<std::size_t>(r)].params;
    params.push_back(SampleRowParams{k.temperature, k.top_p, k.min_p, 1.0f, 0.0f, 0.0f, k.top_k, k.logprobs,
                                     FirstDraw(static_cast<std::uint64_t>(r))});
  }
  const std::vector<std::int32_t> no_seen(static_cast<std::size_t>(rows) + 1, 0);
  const Outputs full = RunDevice(rows, vocab, vocab, logits, params, no_seen, {}, {});
  const Outputs bare = RunDevice(rows, vocab, vocab, logits, params, no_seen, {}, {}, /*optional=*/false);
  EXPECT_EQ(bare.tokens, full.tokens);
}

// A request sampled step by step on the device, feeding each token back into
// the seen list and drawing u from its own mt19937_64, follows exactly the
// same tokens as its SamplerState: penalties change every step, and a single
// divergence would show.
TEST_P(CudaSamplingTest, FollowsCpuStateOverManySteps) {
  const int vocab = GetParam();
  engine::SamplingParams knobs = WithPenalties(Knobs(0.9f, 50, 0.9f, 0.0f, 3), 1.2f, 0.3f, 0.2f);
  knobs.seed = 7u;
  const std::vector<std::int32_t> prompt = {1, 2, 3, 5, 8, 13 % vocab, 21 % vocab};
  engine::SamplerState state(knobs, prompt);
  std::mt19937_64 host_rng(*knobs.seed);
  std::map<std::int32_t, std::int32_t> seen;
  for (std::int32_t t : prompt) seen.emplace(t, 0);
  int divergences = 0;
  for (int step = 0; step < 24; ++step) {
    std::vector<float> logits(static_cast<std::size_t>(vocab));
    FillRow(1, rng_, logits);
    // A bias toward a few ids, so tokens repeat and counts grow.
    for (int id = 0; id < std::min(vocab, 4); ++id) logits[static_cast<std::size_t>(id)] += 3.0f;
    const double u = static_cast<double>(host_rng() >> 11) * 0x1.0p-53;
    std::vector<std::int32_t> offsets{0, static_cast<std::int32_t>(seen.size())};
    std::vector<std::int32_t> tokens;
    std::vector<std::int32_t> counts;
    for (const auto& [t, n] : seen) {
      tokens.push_back(t);
      counts.push_back(n);
    }
    const SampleRowParams row{knobs.temperature,
                              knobs.top_p,
                              knobs.min_p,
                              knobs.repetition_penalty,
                              knobs.presence_penalty,
                              knobs.frequency_penalty,
                              knobs.top_k,
                              knobs.logprobs,
                              u};
    const Outputs got = RunDevice(1, vocab, vocab, logits, {row}, offsets, tokens, counts);
    ASSERT_EQ(got.tokens.size(), 1u);
    const engine::SampleResult want = state.Sample(logits);
    if (got.tokens[0] != want.token) ++divergences;
    EXPECT_TRUE(LogprobClose(got.logprob[0], want.logprob)) << "step " << step;
    // Both continue from the CPU's token, so one boundary case cannot cascade.
    state.Observe(want.token);
    ++seen[want.token];
  }
  EXPECT_EQ(divergences, 0);
}

// ---------------------------------------------------------------------------
// Host-side validation: runs everywhere, since the launcher checks its
// arguments before any CUDA call. The pointers are never dereferenced.

struct FakeDevice {
  alignas(16) static inline std::byte bytes[64];
  template <typename T>
  static T* As(std::size_t offset = 0) {
    return reinterpret_cast<T*>(bytes + offset);
  }
};

SampleBatchParams ValidBatch() {
  SampleBatchParams p;
  p.rows = 2;
  p.vocab = 100;
  p.logits = FakeDevice::As<const float>();
  p.ld = 100;
  p.params = FakeDevice::As<const SampleRowParams>();
  p.tokens = FakeDevice::As<std::int32_t>();
  p.workspace = FakeDevice::As<void>();
  p.workspace_bytes = SamplingWorkspaceBytes(2, 100);
  return p;
}

absl::StatusCode CodeOf(const SampleBatchParams& p) { return Sample(p, nullptr).code(); }

TEST(CudaSamplingChecks, RejectsBadArgumentsBeforeTouchingTheDevice) {
  constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  SampleBatchParams p = ValidBatch();
  p.rows = -1;
  EXPECT_EQ(CodeOf(p), kInvalid);
  p = ValidBatch();
  p.vocab = 0;
  EXPECT_EQ(CodeOf(p), kInvalid);
  p = ValidBatch();
  p.vocab = (1 << 24) + 1;
  p.ld = p.vocab;
  EXPECT_EQ(CodeOf(p), kInvalid);
  p = ValidBatch();
  p.ld = 99;  // < vocab
  EXPECT_EQ(CodeOf(p), kInvalid);
  p = ValidBatch();
  p.logits = nullptr;
  EXPECT_EQ(CodeOf(p), kInvalid);
  p = ValidBatch();
  p.params = nullptr;
  EXPECT_EQ(CodeOf(p), kInvalid);
  p = ValidBatch();
  p.tokens = nullptr;
  EXPECT_EQ(CodeOf(p), kInvalid);
  p = ValidBatch();
  p.seen_offsets = FakeDevice::As<const std::int32_t>();  // without seen_tokens / seen_counts
  EXPECT_EQ(CodeOf(p), kInvalid);
  p.seen_tokens = FakeDevice::As<const std::int32_t>();
  EXPECT_EQ(CodeOf(p), kInvalid);
  p = ValidBatch();
  p.top_ids = FakeDevice::As<std::int32_t>();  // without top_logprobs
  EXPECT_EQ(CodeOf(p), kInvalid);
  p = ValidBatch();
  p.workspace_bytes -= 1;
  EXPECT_EQ(CodeOf(p), kInvalid);
  p = ValidBatch();
  p.workspace = nullptr;
  EXPECT_EQ(CodeOf(p), kInvalid);
  p = ValidBatch();
  p.workspace = FakeDevice::As<void>(4);  // not 16-byte aligned
  EXPECT_EQ(CodeOf(p), kInvalid);
}

TEST(CudaSamplingChecks, EmptyBatchIsANoOp) {
  SampleBatchParams p;  // every pointer null
  p.vocab = 10;
  p.ld = 10;
  EXPECT_TRUE(Sample(p, nullptr).ok());
}

TEST(CudaSamplingChecks, WorkspaceSize) {
  EXPECT_EQ(SamplingWorkspaceBytes(-1, 10), 0u);
  EXPECT_EQ(SamplingWorkspaceBytes(1, 0), 0u);
  EXPECT_EQ(SamplingWorkspaceBytes(1, (1 << 24) + 1), 0u);
  EXPECT_EQ(SamplingWorkspaceBytes(0, 10), 0u);
  for (int vocab : {1, 37, 1000, 131072, 131073}) {
    const std::size_t one = SamplingWorkspaceBytes(1, vocab);
    // Two float arrays and a power-of-two key array, per row.
    EXPECT_GE(one, 16u * static_cast<std::size_t>(vocab)) << vocab;
    EXPECT_EQ(SamplingWorkspaceBytes(64, vocab), 64 * one) << vocab;
  }
}

}  // namespace
}  // namespace sirocco::kernels::cuda
