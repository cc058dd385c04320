// Checks the sampler against facts computed here independently: softmax and
// log_softmax in double, hand-applied penalties, binomial bounds on draw
// frequencies, and the draw rule the header documents.
#include "engine/sampler.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <new>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"

// Counts every heap allocation in this binary, so a test can show that the
// greedy path allocates nothing. Only counts: behaviour is the default's
// (malloc/free, which is what libstdc++'s own operators use). GCC cannot see
// that these new and delete are a pair, hence the pragma.
namespace {
std::atomic<std::int64_t> g_allocations{0};
}  // namespace

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace sirocco::engine {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> LogOf(std::initializer_list<double> probs) {
  std::vector<float> out;
  for (double p : probs) out.push_back(static_cast<float>(std::log(p)));
  return out;
}

std::vector<float> RandomLogits(std::size_t vocab, double stddev, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, stddev);
  std::vector<float> out(vocab);
  for (float& x : out) x = static_cast<float>(normal(rng));
  return out;
}

std::vector<double> LogSoftmax(const std::vector<double>& z) {
  const double m = *std::max_element(z.begin(), z.end());
  double sum = 0.0;
  for (double v : z) sum += std::exp(v - m);
  std::vector<double> out;
  for (double v : z) out.push_back(v - m - std::log(sum));
  return out;
}

std::vector<double> ToDouble(const std::vector<float>& v) { return {v.begin(), v.end()}; }

SamplingParams Seeded(std::uint64_t seed) {
  SamplingParams p;
  p.seed = seed;
  return p;
}

std::vector<int> DrawCounts(const SamplingParams& params, const std::vector<float>& logits, int draws) {
  SamplerState state(params, {});
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) ++counts[static_cast<std::size_t>(state.Sample(logits).token)];
  return counts;
}

// Each count within 4 binomial sigmas of draws * p; p == 0 means never drawn.
void ExpectFrequencies(const std::vector<int>& counts, int draws, const std::vector<double>& probs) {
  ASSERT_EQ(counts.size(), probs.size());
  for (std::size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] == 0.0) {
      EXPECT_EQ(counts[i], 0) << "token " << i;
      continue;
    }
    const double mean = draws * probs[i];
    const double sigma = std::sqrt(draws * probs[i] * (1.0 - probs[i]));
    EXPECT_NEAR(counts[i], mean, 4.0 * sigma) << "token " << i;
  }
}

// The documented draw: one uniform double from the top 53 bits of mt19937_64.
double FirstUniform(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

// ---------------------------------------------------------------- greedy

TEST(SamplerGreedy, PicksArgmax) {
  SamplingParams p;
  p.temperature = 0.0f;
  SamplerState state(p, {});
  EXPECT_EQ(state.Sample(std::vector<float>{0.1f, 2.5f, -1.0f, 2.4f}).token, 1);
  EXPECT_EQ(state.Sample(std::vector<float>{-3.0f, -2.0f, -5.0f}).token, 1);
  EXPECT_EQ(state.Sample(std::vector<float>{-kInf, -kInf, 0.0f}).token, 2);
}

TEST(SamplerGreedy, TiesGoToLowestId) {
  SamplingParams p;
  p.temperature = 0.0f;
  SamplerState state(p, {});
  EXPECT_EQ(state.Sample(std::vector<float>{1.0f, 3.0f, 3.0f, 2.0f}).token, 1);
  EXPECT_EQ(state.Sample(std::vector<float>{7.0f, 7.0f, 7.0f}).token, 0);
}

TEST(SamplerGreedy, NanNeverWins) {
  SamplingParams p;
  p.temperature = 0.0f;
  SamplerState state(p, {});
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(state.Sample(std::vector<float>{nan, 0.5f, 1.5f, nan}).token, 2);
}

TEST(SamplerGreedy, TinyTemperatureEqualsGreedy) {
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  SamplingParams tiny = Seeded(3);
  tiny.temperature = 1e-6f;
  SamplingParams small = Seeded(4);
  small.temperature = 1e-4f;  // above kGreedyTemperature: goes through the sampling path
  SamplerState g(greedy, {});
  SamplerState t(tiny, {});
  SamplerState s(small, {});
  for (std::uint32_t row = 0; row < 50; ++row) {
    const auto logits = RandomLogits(1000, 2.0, row);
    const auto expected = std::max_element(logits.begin(), logits.end()) - logits.begin();
    EXPECT_EQ(g.Sample(logits).token, expected);
    EXPECT_EQ(t.Sample(logits).token, expected);
    EXPECT_EQ(s.Sample(logits).token, expected);
  }
  // Equal maxima: greedy's lowest id, never a coin flip between them.
  for (int i = 0; i < 50; ++i) EXPECT_EQ(t.Sample(std::vector<float>{0.0f, 2.0f, 1.0f, 2.0f}).token, 1);
}

TEST(SamplerGreedy, TopKOneEqualsGreedyAtAnyTemperature) {
  for (float temperature : {0.3f, 1.0f, 2.0f, 100.0f}) {
    SamplingParams p = Seeded(11);
    p.temperature = temperature;
    p.top_k = 1;
    SamplerState state(p, {});
    for (std::uint32_t row = 0; row < 30; ++row) {
      const auto logits = RandomLogits(500, 1.0, row + 100);
      const auto expected = std::max_element(logits.begin(), logits.end()) - logits.begin();
      EXPECT_EQ(state.Sample(logits).token, expected) << "temperature " << temperature;
    }
    EXPECT_EQ(state.Sample(std::vector<float>{0.0f, 4.0f, 4.0f}).token, 1) << "tie, temperature " << temperature;
  }
}

TEST(SamplerGreedy, AllocatesNothingAtFullVocabulary) {
  const auto logits = RandomLogits(131072, 3.0, 5);
  SamplingParams p;
  p.temperature = 0.0f;
  p.repetition_penalty = 1.3f;
  p.frequency_penalty = 0.5f;
  std::vector<std::int32_t> prompt = {5, 17, 99999, 3};
  SamplerState state(p, prompt);
  state.Observe(42);
  SamplerScratch scratch;
  const std::int64_t before = g_allocations.load();
  const SampleResult r = state.Sample(logits, scratch);
  const std::int64_t after = g_allocations.load();
  EXPECT_EQ(after - before, 0);
  EXPECT_TRUE(scratch.weights.empty());
  EXPECT_GE(r.token, 0);
}

// ----------------------------------------------------------- seeding

TEST(SamplerSeed, SameSeedSameDrawsDifferentSeedDifferentDraws) {
  const auto logits = RandomLogits(1000, 0.5, 9);
  SamplerState a(Seeded(42), {});
  SamplerState b(Seeded(42), {});
  SamplerState c(Seeded(43), {});
  SamplerState other(Seeded(42), {});  // drawn from in between: must not disturb a or b
  SamplerScratch shared;
  int differing = 0;
  for (int i = 0; i < 200; ++i) {
    const std::int32_t ta = a.Sample(logits).token;
    other.Sample(logits, shared);
    const std::int32_t tb = b.Sample(logits, shared).token;
    EXPECT_EQ(ta, tb) << "draw " << i;
    differing += c.Sample(logits).token != ta;
  }
  // Near-uniform over 1000 tokens: two independent streams collide rarely.
  EXPECT_GT(differing, 180);
}

// A request whose first tokens were sampled elsewhere (another worker)
// continues exactly: Replay of those tokens leaves the state where Sample
// would have. Penalties are on so the replayed tokens also count as output.
TEST(SamplerSeed, ReplayContinuesAsIfTheTokensHadBeenSampledHere) {
  SamplingParams params = Seeded(11);
  params.temperature = 0.9f;
  params.top_p = 0.95f;
  params.presence_penalty = 0.7f;
  params.frequency_penalty = 0.3f;
  const std::vector<std::int32_t> prompt = {3, 5, 8};
  std::vector<std::vector<float>> rows;
  for (int i = 0; i < 40; ++i) rows.push_back(RandomLogits(300, 1.0, 100u + static_cast<std::uint32_t>(i)));
  SamplerState whole(params, prompt);
  std::vector<std::int32_t> expected;
  for (const auto& row : rows) {
    expected.push_back(whole.Sample(row).token);
    whole.Observe(expected.back());
  }
  for (std::size_t k : {std::size_t{1}, std::size_t{7}, std::size_t{39}}) {
    SamplerState resumed(params, prompt);
    for (std::size_t i = 0; i < k; ++i) resumed.Replay(expected[i]);
    for (std::size_t i = k; i < rows.size(); ++i) {
      const std::int32_t t = resumed.Sample(rows[i]).token;
      EXPECT_EQ(t, expected[i]) << "replayed " << k << ", token " << i;
      resumed.Observe(t);
    }
  }
  // Observe alone (no draw) falls out of step: the replay is what matters.
  SamplerState observed(params, prompt);
  observed.Observe(expected[0]);
  int same = 0;
  for (std::size_t i = 1; i < rows.size(); ++i) {
    const std::int32_t t = observed.Sample(rows[i]).token;
    same += t == expected[i];
    observed.Observe(expected[i]);
  }
  EXPECT_LT(same, 30);
}

TEST(SamplerSeed, UnsetSeedIsDrawnAndReported) {
  SamplerState a(SamplingParams{}, {});
  SamplerState b(SamplingParams{}, {});
  EXPECT_NE(a.seed(), b.seed());  // 64 random bits: equal only by a 2^-64 fluke
  EXPECT_EQ(SamplerState(Seeded(7), {}).seed(), 7u);
}

// ------------------------------------------------------ distributions

constexpr int kDraws = 20000;

TEST(SamplerDistribution, TemperatureOneMatchesSoftmax) {
  ExpectFrequencies(DrawCounts(Seeded(1), LogOf({0.5, 0.3, 0.2}), kDraws), kDraws, {0.5, 0.3, 0.2});
}

TEST(SamplerDistribution, TemperatureTwoTakesSquareRoots) {
  SamplingParams p = Seeded(2);
  p.temperature = 2.0f;
  const double a = std::sqrt(0.5), b = std::sqrt(0.3), c = std::sqrt(0.2);
  const double s = a + b + c;
  ExpectFrequencies(DrawCounts(p, LogOf({0.5, 0.3, 0.2}), kDraws), kDraws, {a / s, b / s, c / s});
}

TEST(SamplerDistribution, TopKTwoRenormalises) {
  SamplingParams p = Seeded(3);
  p.top_k = 2;
  ExpectFrequencies(DrawCounts(p, LogOf({0.5, 0.3, 0.2}), kDraws), kDraws, {0.625, 0.375, 0.0});
}

TEST(SamplerDistribution, TopKAtOrAboveVocabIsOff) {
  SamplingParams p = Seeded(4);
  p.top_k = 3;
  ExpectFrequencies(DrawCounts(p, LogOf({0.5, 0.3, 0.2}), kDraws), kDraws, {0.5, 0.3, 0.2});
}

TEST(SamplerDistribution, TopPKeepsSmallestPrefixReachingP) {
  SamplingParams p = Seeded(5);
  p.top_p = 0.7f;
  ExpectFrequencies(DrawCounts(p, LogOf({0.5, 0.3, 0.2}), kDraws), kDraws, {0.625, 0.375, 0.0});
  p.top_p = 0.5f;  // the first token alone reaches 0.5
  ExpectFrequencies(DrawCounts(p, LogOf({0.5, 0.3, 0.2}), 2000), 2000, {1.0, 0.0, 0.0});
  p.top_p = 0.85f;
  ExpectFrequencies(DrawCounts(p, LogOf({0.5, 0.3, 0.2}), kDraws), kDraws, {0.5, 0.3, 0.2});
  // 0.4 and 0.35 lie within a factor of two: the cut falls between tokens of
  // similar weight, not at a power of two.
  p.top_p = 0.7f;
  ExpectFrequencies(DrawCounts(p, LogOf({0.4, 0.35, 0.25}), kDraws), kDraws, {0.4 / 0.75, 0.35 / 0.75, 0.0});
  // Sorted by probability, not id: the nucleus of [0.2, 0.5, 0.3] at 0.7 is {1, 2}.
  p.top_p = 0.7f;
  ExpectFrequencies(DrawCounts(p, LogOf({0.2, 0.5, 0.3}), kDraws), kDraws, {0.0, 0.625, 0.375});
}

TEST(SamplerDistribution, TopPSeesTheTopKRenormalisedDistribution) {
  // After top-k=2 the first token has 0.625 >= 0.6, so top-p keeps it alone;
  // on the original probabilities (0.5 < 0.6) it would have kept two.
  SamplingParams p = Seeded(6);
  p.top_k = 2;
  p.top_p = 0.6f;
  ExpectFrequencies(DrawCounts(p, LogOf({0.5, 0.3, 0.2}), 2000), 2000, {1.0, 0.0, 0.0});
}

TEST(SamplerDistribution, TopPBoundaryAfterTopK) {
  // top-k=3 drops the 1e-4 token; on what is left, the first token's 0.5
  // reaches top_p = 0.5 exactly (up to rounding) and is kept alone.
  SamplingParams p = Seeded(9);
  p.top_k = 3;
  p.top_p = 0.5f;
  ExpectFrequencies(DrawCounts(p, LogOf({0.5, 0.3, 0.2, 1e-4}), 2000), 2000, {1.0, 0.0, 0.0, 0.0});
  p.top_p = 0.7f;
  ExpectFrequencies(DrawCounts(p, LogOf({0.5, 0.3, 0.2, 1e-4}), kDraws), kDraws, {0.625, 0.375, 0.0, 0.0});
}

TEST(SamplerDistribution, MinPIsRelativeToTheMaximum) {
  SamplingParams p = Seeded(7);
  p.min_p = 0.5f;  // threshold 0.25: drops 0.2
  ExpectFrequencies(DrawCounts(p, LogOf({0.5, 0.3, 0.2}), kDraws), kDraws, {0.625, 0.375, 0.0});
  p.min_p = 0.61f;  // threshold 0.305: drops 0.3 too
  ExpectFrequencies(DrawCounts(p, LogOf({0.5, 0.3, 0.2}), 2000), 2000, {1.0, 0.0, 0.0});
  p.min_p = 0.5f;
  p.top_k = 3;  // the same through the top-k path: top-k drops the fourth, min-p the third
  ExpectFrequencies(DrawCounts(p, LogOf({0.5, 0.3, 0.2, 1e-4}), kDraws), kDraws, {0.625, 0.375, 0.0, 0.0});
}

TEST(SamplerDistribution, MaskedAndNanTokensAreNeverDrawn) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> logits = {-kInf, std::log(0.5f), std::log(0.3f), std::log(0.2f), nan};
  ExpectFrequencies(DrawCounts(Seeded(8), logits, kDraws), kDraws, {0.0, 0.5, 0.3, 0.2, 0.0});
}

// The header promises the draw rule, so it can be checked from the seed.
TEST(SamplerDraw, FollowsDocumentedInverseCdf) {
  const auto logits = LogOf({0.2, 0.5, 0.3});
  for (std::uint64_t seed = 0; seed < 300; ++seed) {
    const double u = FirstUniform(seed);
    if (std::abs(u - 0.2) < 1e-5 || std::abs(u - 0.5) < 1e-5 || std::abs(u - 0.7) < 1e-5 || std::abs(u - 0.8) < 1e-5) {
      continue;  // too close to a boundary for float probabilities
    }
    // No filter: cumulative in id order, 0.2 | 0.5 | 0.3.
    const std::int32_t plain = u < 0.2 ? 0 : (u < 0.7 ? 1 : 2);
    EXPECT_EQ(SamplerState(Seeded(seed), {}).Sample(logits).token, plain) << "seed " << seed;
    // A filter that keeps everything: most likely first, 0.5 | 0.3 | 0.2.
    SamplingParams p = Seeded(seed);
    p.top_p = 0.95f;
    const std::int32_t sorted = u < 0.5 ? 1 : (u < 0.8 ? 2 : 0);
    EXPECT_EQ(SamplerState(p, {}).Sample(logits).token, sorted) << "seed " << seed;
  }
}

// --------------------------------------------------- full vocabulary

constexpr std::size_t kVocab = 131072;

// Tokens sorted by probability (then id); the length of the nucleus at top_p.
std::vector<std::int32_t> RankedIds(const std::vector<double>& probs) {
  std::vector<std::int32_t> ids(probs.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::sort(ids.begin(), ids.end(),
            [&](std::int32_t a, std::int32_t b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); });
  return ids;
}

std::vector<double> Softmax(const std::vector<float>& logits, double temperature) {
  std::vector<double> z;
  for (float x : logits) z.push_back(x / temperature);
  std::vector<double> out = LogSoftmax(z);
  for (double& v : out) v = std::exp(v);
  return out;
}

TEST(SamplerFullVocab, TopKDrawsStayInTopK) {
  // A hot temperature spreads the mass, so most of it lies outside the top k
  // and a leaky filter would show at once. Both a small and a large k.
  const auto logits = RandomLogits(kVocab, 3.0, 21);
  const auto ranked = RankedIds(Softmax(logits, 1.0));
  for (std::int32_t k : {50, 20000}) {
    const std::set<std::int32_t> top(ranked.begin(), ranked.begin() + k);
    SamplingParams p = Seeded(21);
    p.temperature = 5.0f;
    p.top_k = k;
    SamplerState state(p, {});
    std::set<std::int32_t> seen;
    for (int i = 0; i < 100; ++i) {
      const std::int32_t t = state.Sample(logits).token;
      EXPECT_TRUE(top.count(t)) << "k " << k << " token " << t;
      seen.insert(t);
    }
    EXPECT_GT(seen.size(), 10u) << "k " << k;
  }
}

TEST(SamplerFullVocab, TopKTiesGoToLowerIds) {
  // Equal logits: the k kept are the k lowest ids, drawn uniformly. 64 tokens
  // take the one-pass selection, 8 the nth_element one.
  for (std::size_t vocab : {64u, 8u}) {
    SamplingParams p = Seeded(vocab);
    p.top_k = 3;
    const std::vector<float> logits(vocab, 0.5f);
    std::vector<double> expected(vocab, 0.0);
    expected[0] = expected[1] = expected[2] = 1.0 / 3.0;
    ExpectFrequencies(DrawCounts(p, logits, 6000), 6000, expected);
  }
}

TEST(SamplerFullVocab, TopPDrawsStayInNucleus) {
  const auto logits = RandomLogits(kVocab, 3.0, 22);
  const double temperature = 0.8;
  const auto probs = Softmax(logits, temperature);
  const auto ranked = RankedIds(probs);
  std::size_t nucleus = 0;
  for (double cumulative = 0.0; cumulative < 0.9;) cumulative += probs[ranked[nucleus++]];
  // One past the boundary is tolerated: float rounding may decide it.
  const std::set<std::int32_t> allowed(ranked.begin(), ranked.begin() + nucleus + 1);
  SamplingParams p = Seeded(22);
  p.temperature = static_cast<float>(temperature);
  p.top_p = 0.9f;
  SamplerState state(p, {});
  for (int i = 0; i < 200; ++i) EXPECT_TRUE(allowed.count(state.Sample(logits).token));
}

TEST(SamplerFullVocab, TopPKeepsAHeavyTailOfLightTokens) {
  // Token 0 has weight 1, every other token e^-10: the tail holds ~86% of the
  // mass, so the 0.9 nucleus is token 0 plus the lowest-id tail tokens (ties
  // go to lower ids). Sampling must neither drop the light tokens nor keep
  // tail tokens past the boundary.
  std::vector<float> logits(kVocab, -10.0f);
  logits[0] = 0.0f;
  const double tail_w = std::exp(static_cast<double>(-10.0f));
  const double total = 1.0 + tail_w * (kVocab - 1);
  const auto tail_kept = static_cast<std::int64_t>(std::ceil((0.9 * total - 1.0) / tail_w));
  const double kept_mass = 1.0 + tail_w * static_cast<double>(tail_kept);
  SamplingParams p = Seeded(23);
  p.top_p = 0.9f;
  SamplerState state(p, {});
  const int draws = 100;  // each sorts ~10^5 tied candidates; 100 separate p0 ~ 0.16 from 1 by > 20 sigma
  int zeros = 0;
  for (int i = 0; i < draws; ++i) {
    const std::int32_t t = state.Sample(logits).token;
    zeros += t == 0;
    EXPECT_LE(t, tail_kept + 1);  // +1: the boundary token is rounding's call
  }
  const double p0 = 1.0 / kept_mass;
  EXPECT_NEAR(zeros, draws * p0, 4.0 * std::sqrt(draws * p0 * (1 - p0)));
}

TEST(SamplerFullVocab, TopPMatchesTheRenormalisedNucleus) {
  // Weights fall smoothly over ~30 binary orders of magnitude, so the nucleus
  // spans many exponent bins. Its last quarter must be drawn as often as its
  // share of the renormalised nucleus says: a candidate floor set too high
  // would starve it, one too low would let later tokens in.
  const std::size_t vocab = 4096;
  std::vector<float> logits(vocab);
  for (std::size_t i = 0; i < vocab; ++i) logits[i] = -0.005f * static_cast<float>(i);
  const auto probs = Softmax(logits, 1.0);
  std::size_t nucleus = 0;
  double kept = 0.0;
  while (kept < 0.8) kept += probs[nucleus++];
  double last_quarter = 0.0;
  for (std::size_t i = nucleus * 3 / 4; i < nucleus; ++i) last_quarter += probs[i] / kept;
  SamplingParams p = Seeded(25);
  p.top_p = 0.8f;
  SamplerState state(p, {});
  const int draws = 8000;
  int in_last_quarter = 0;
  for (int i = 0; i < draws; ++i) {
    const auto t = static_cast<std::size_t>(state.Sample(logits).token);
    EXPECT_LE(t, nucleus);  // index nucleus itself: the boundary is rounding's call
    in_last_quarter += t >= nucleus * 3 / 4 && t < nucleus;
  }
  EXPECT_NEAR(in_last_quarter, draws * last_quarter, 4.0 * std::sqrt(draws * last_quarter * (1.0 - last_quarter)));
}

TEST(SamplerFullVocab, MinPDrawsClearTheThreshold) {
  const auto logits = RandomLogits(kVocab, 3.0, 24);
  const auto probs = Softmax(logits, 1.0);
  const double max_p = *std::max_element(probs.begin(), probs.end());
  SamplingParams p = Seeded(24);
  p.min_p = 0.05f;
  SamplerState state(p, {});
  for (int i = 0; i < 200; ++i) {
    const std::int32_t t = state.Sample(logits).token;
    EXPECT_GE(probs[t], 0.05 * max_p * (1 - 1e-5)) << t;
  }
}

// ------------------------------------------------------------ penalties

TEST(SamplerPenalty, RepetitionHalvesPositiveLogitOfPromptToken) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.logprobs = 1;
  const std::vector<float> logits = {1.5f, 1.0f, -3.0f};
  EXPECT_EQ(SamplerState(p, {}).Sample(logits).token, 0);
  p.repetition_penalty = 2.0f;
  const std::vector<std::int32_t> prompt = {0};
  const SampleResult r = SamplerState(p, prompt).Sample(logits);
  EXPECT_EQ(r.token, 1);  // 1.5 / 2 = 0.75 < 1.0
  const auto expected = LogSoftmax({0.75, 1.0, -3.0});
  EXPECT_NEAR(r.logprob, expected[1], 1e-5);
  ASSERT_EQ(r.top.size(), 1u);
  EXPECT_EQ(r.top[0].token, 1);
}

TEST(SamplerPenalty, RepetitionDoublesNegativeLogitOfOutputToken) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.logprobs = 0;
  const std::vector<float> logits = {-0.5f, -0.8f, -4.0f};
  p.repetition_penalty = 2.0f;
  SamplerState state(p, {});
  EXPECT_EQ(state.Sample(logits).token, 0);
  state.Observe(0);
  const SampleResult r = state.Sample(logits);
  EXPECT_EQ(r.token, 1);  // -0.5 * 2 = -1.0 < -0.8
  EXPECT_NEAR(r.logprob, LogSoftmax({-1.0, -0.8, -4.0})[1], 1e-5);
  EXPECT_TRUE(r.top.empty());
}

TEST(SamplerPenalty, PresenceAndFrequencyCountOutputTokensOnly) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  p.logprobs = 4;
  const std::vector<std::int32_t> prompt = {2};  // prompt only: untouched by these two
  SamplerState state(p, prompt);
  state.Observe(0);
  state.Observe(0);
  state.Observe(1);
  const SampleResult r = state.Sample(std::vector<float>{1.0f, 2.0f, 3.0f, 0.5f});
  // 0: 1 - 2*0.25 - 0.5; 1: 2 - 0.25 - 0.5; 2 and 3 unchanged.
  const auto expected = LogSoftmax({0.0, 1.25, 3.0, 0.5});
  EXPECT_EQ(r.token, 2);
  EXPECT_NEAR(r.logprob, expected[2], 1e-5);
  ASSERT_EQ(r.top.size(), 4u);
  const std::int32_t order[] = {2, 1, 3, 0};
  for (std::size_t j = 0; j < 4; ++j) {
    EXPECT_EQ(r.top[j].token, order[j]);
    EXPECT_NEAR(r.top[j].logprob, expected[static_cast<std::size_t>(order[j])], 1e-5);
  }
}

TEST(SamplerPenalty, RepetitionAppliesBeforeAdditivePenalties) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 1.0f;
  p.logprobs = 0;
  SamplerState state(p, {});
  state.Observe(0);
  const SampleResult r = state.Sample(std::vector<float>{2.0f, 0.25f});
  // 2 / 2 - 1 = 0 (the other order would give 0.5, above 0.25).
  EXPECT_EQ(r.token, 1);
  EXPECT_NEAR(r.logprob, LogSoftmax({0.0, 0.25})[1], 1e-5);
}

TEST(SamplerPenalty, PromptTokensGetRepetitionButNotPresence) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.repetition_penalty = 2.0f;
  p.presence_penalty = 1.0f;
  p.frequency_penalty = 1.0f;
  p.logprobs = 0;
  const std::vector<std::int32_t> prompt = {0};
  const SampleResult r = SamplerState(p, prompt).Sample(std::vector<float>{2.0f, 0.9f});
  EXPECT_EQ(r.token, 0);  // 2 / 2 = 1.0 > 0.9; presence and frequency would sink it
  EXPECT_NEAR(r.logprob, LogSoftmax({1.0, 0.9})[0], 1e-5);
}

TEST(SamplerPenalty, NegativePresencePenaltyRaisesOutputTokens) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.presence_penalty = -1.0f;
  SamplerState state(p, {});
  state.Observe(2);
  EXPECT_EQ(state.Sample(std::vector<float>{0.0f, 0.5f, -0.2f}).token, 2);  // -0.2 + 1 = 0.8
}

// ------------------------------------------------------------ logprobs

TEST(SamplerLogprobs, MatchLogSoftmaxAtTemperatureOne) {
  const auto logits = RandomLogits(kVocab, 3.0, 31);
  const auto expected = LogSoftmax(ToDouble(logits));
  const auto ranked = RankedIds(expected);
  SamplingParams p = Seeded(31);
  p.temperature = 0.7f;  // logprobs ignore temperature and the filters
  p.top_k = 100;
  p.logprobs = 5;
  SamplerState state(p, {});
  for (int i = 0; i < 20; ++i) {
    const SampleResult r = state.Sample(logits);
    EXPECT_NEAR(r.logprob, expected[static_cast<std::size_t>(r.token)], 1e-5);
    ASSERT_EQ(r.top.size(), 5u);
    for (std::size_t j = 0; j < 5; ++j) {
      EXPECT_EQ(r.top[j].token, ranked[j]);
      EXPECT_NEAR(r.top[j].logprob, expected[static_cast<std::size_t>(ranked[j])], 1e-5);
      if (j > 0) {
        EXPECT_GE(r.top[j - 1].logprob, r.top[j].logprob);
      }
    }
  }
}

TEST(SamplerLogprobs, ZeroGivesSampledTokenOnlyAndTiesKeepIdOrder) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.logprobs = 0;
  const std::vector<float> logits = {1.0f, 2.0f, 2.0f, 0.0f};
  const SampleResult r = SamplerState(p, {}).Sample(logits);
  EXPECT_TRUE(r.top.empty());
  EXPECT_NEAR(r.logprob, LogSoftmax(ToDouble(logits))[1], 1e-5);
  p.logprobs = 3;
  const SampleResult r3 = SamplerState(p, {}).Sample(logits);
  ASSERT_EQ(r3.top.size(), 3u);
  EXPECT_EQ(r3.top[0].token, 1);
  EXPECT_EQ(r3.top[1].token, 2);
  EXPECT_EQ(r3.top[2].token, 0);
}

TEST(SamplerLogprobs, NoneRequestedLeavesTopEmpty) {
  const SampleResult r = SamplerState(Seeded(1), {}).Sample(LogOf({0.5, 0.5}));
  EXPECT_TRUE(r.top.empty());
}

// ------------------------------------------------------ token masks

// A mask over `vocab` ids with bit id set when keep(id).
template <typename Keep>
std::vector<std::uint32_t> MaskOf(std::size_t vocab, Keep keep) {
  std::vector<std::uint32_t> mask((vocab + 31) / 32, 0u);
  for (std::size_t id = 0; id < vocab; ++id) {
    if (keep(id)) mask[id / 32] |= 1u << (id % 32);
  }
  return mask;
}

// A masked draw is the draw of the row whose disallowed logits are -inf: the
// same uniform lands on the same token, for greedy and for every filter.
TEST(SamplerMask, DrawEqualsTheDrawOfTheRowWithDisallowedLogitsAtMinusInfinity) {
  const auto logits = RandomLogits(kVocab, 2.0, 77);
  const auto mask = MaskOf(kVocab, [](std::size_t id) { return id % 3 == 1 || id == 5; });
  std::vector<float> cut = logits;
  for (std::size_t id = 0; id < kVocab; ++id) {
    if (!(id % 3 == 1 || id == 5)) cut[id] = -kInf;
  }
  for (const bool greedy : {true, false}) {
    for (const int top_k : {0, 7}) {
      SamplingParams p = Seeded(5);
      p.temperature = greedy ? 0.0f : 1.1f;
      p.top_k = top_k;
      p.top_p = top_k == 0 ? 0.9f : 1.0f;
      SamplerState masked(p, {}), reference(p, {});
      SamplerScratch a, b;
      for (int i = 0; i < 200; ++i) {
        const std::optional<double> u = masked.TakeDraw();
        ASSERT_EQ(u, reference.TakeDraw());
        const SampleResult r = masked.SampleWithDraw(logits, u, a, mask);
        const SampleResult e = reference.SampleWithDraw(cut, u, b);
        ASSERT_EQ(r.token, e.token) << "draw " << i << " greedy " << greedy << " top_k " << top_k;
        ASSERT_TRUE(r.token % 3 == 1 || r.token == 5) << r.token;
      }
    }
  }
}

TEST(SamplerMask, LogprobsDescribeTheUnmaskedRow) {
  const std::vector<float> logits = {3.0f, 1.0f, 2.0f, 0.0f};
  SamplingParams p;
  p.temperature = 0.0f;
  p.logprobs = 2;
  const auto mask = MaskOf(4, [](std::size_t id) { return id == 3; });
  SamplerScratch scratch;
  const SampleResult r = SamplerState(p, {}).SampleWithDraw(logits, std::nullopt, scratch, mask);
  EXPECT_EQ(r.token, 3);
  const auto expected = LogSoftmax(ToDouble(logits));
  EXPECT_NEAR(r.logprob, expected[3], 1e-5);
  ASSERT_EQ(r.top.size(), 2u);
  EXPECT_EQ(r.top[0].token, 0);
  EXPECT_EQ(r.top[1].token, 2);
}

TEST(SamplerMask, NoFiniteAllowedLogitFallsBackToTheLowestAllowedId) {
  const std::vector<float> logits = {1.0f, -kInf, std::numeric_limits<float>::quiet_NaN(), -kInf, 0.5f};
  const auto mask = MaskOf(5, [](std::size_t id) { return id == 2 || id == 3; });
  SamplerScratch scratch;
  for (const float temperature : {0.0f, 1.0f}) {
    SamplingParams p = Seeded(3);
    p.temperature = temperature;
    SamplerState state(p, {});
    EXPECT_EQ(state.SampleWithDraw(logits, state.TakeDraw(), scratch, mask).token, 2) << temperature;
  }
}

// ----------------------------------------------------------- validation

void ExpectInvalid(const SamplingParams& p, const char* field) {
  const absl::Status s = ValidateSamplingParams(p, 1000);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
  EXPECT_NE(std::string(s.message()).find(field), std::string::npos) << s.message();
}

TEST(SamplerValidate, DefaultsAndEdgesAreAccepted) {
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams{}, 1000).ok());
  SamplingParams p;
  p.temperature = 0.0f;
  p.top_k = 5000;  // above the vocabulary: off, not an error
  p.top_p = 1.0f;
  p.min_p = 1.0f;
  p.repetition_penalty = 0.5f;
  p.presence_penalty = -2.0f;
  p.frequency_penalty = 2.0f;
  p.logprobs = 20;
  EXPECT_TRUE(ValidateSamplingParams(p, 1000).ok());
}

TEST(SamplerValidate, EachBadFieldIsNamed) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  SamplingParams p;
  p.temperature = -0.1f;
  ExpectInvalid(p, "temperature");
  p.temperature = nan;
  ExpectInvalid(p, "temperature");
  p = {};
  p.top_k = -1;
  ExpectInvalid(p, "top_k");
  for (float bad : {0.0f, -0.5f, 1.01f, nan}) {
    p = {};
    p.top_p = bad;
    ExpectInvalid(p, "top_p");
  }
  for (float bad : {-0.01f, 1.5f, nan}) {
    p = {};
    p.min_p = bad;
    ExpectInvalid(p, "min_p");
  }
  for (float bad : {0.0f, -1.0f, nan, kInf}) {
    p = {};
    p.repetition_penalty = bad;
    ExpectInvalid(p, "repetition_penalty");
  }
  for (float bad : {-2.5f, 2.01f, nan}) {
    p = {};
    p.presence_penalty = bad;
    ExpectInvalid(p, "presence_penalty");
    p = {};
    p.frequency_penalty = bad;
    ExpectInvalid(p, "frequency_penalty");
  }
  for (std::int32_t bad : {-2, 21}) {
    p = {};
    p.logprobs = bad;
    ExpectInvalid(p, "logprobs");
  }
  p = {};
  p.logprobs = 5;
  EXPECT_NE(std::string(ValidateSamplingParams(p, 4).message()).find("logprobs"), std::string::npos);
  EXPECT_FALSE(ValidateSamplingParams(SamplingParams{}, 0).ok());
}

// ------------------------------------------------------------ stopping

TEST(CheckStop, EosStopsUnlessIgnored) {
  const std::vector<std::int64_t> eos = {2, 7};
  StopParams stop;
  stop.max_tokens = 100;
  EXPECT_EQ(CheckStop(stop, eos, 7, 3), FinishReason::kStop);
  EXPECT_EQ(CheckStop(stop, eos, 2, 3), FinishReason::kStop);
  EXPECT_EQ(CheckStop(stop, eos, 5, 3), FinishReason::kNone);
  stop.ignore_eos = true;
  EXPECT_EQ(CheckStop(stop, eos, 7, 3), FinishReason::kNone);
}

TEST(CheckStop, StopTokenIdsStopEvenWhenEosIgnored) {
  StopParams stop;
  stop.max_tokens = 100;
  stop.stop_token_ids = {11, 13};
  stop.ignore_eos = true;
  EXPECT_EQ(CheckStop(stop, {}, 13, 1), FinishReason::kStop);
  EXPECT_EQ(CheckStop(stop, {}, 12, 1), FinishReason::kNone);
}

TEST(CheckStop, LengthAtMaxTokensAndStopWinsTies) {
  const std::vector<std::int64_t> eos = {2};
  StopParams stop;
  stop.max_tokens = 4;
  stop.stop_token_ids = {9};
  EXPECT_EQ(CheckStop(stop, eos, 5, 3), FinishReason::kNone);
  EXPECT_EQ(CheckStop(stop, eos, 5, 4), FinishReason::kLength);
  EXPECT_EQ(CheckStop(stop, eos, 5, 5), FinishReason::kLength);
  EXPECT_EQ(CheckStop(stop, eos, 2, 4), FinishReason::kStop);
  EXPECT_EQ(CheckStop(stop, eos, 9, 4), FinishReason::kStop);
}

TEST(CheckStop, ValidateStopParamsNamesMaxTokens) {
  StopParams stop;
  EXPECT_TRUE(ValidateStopParams(stop).ok());
  stop.max_tokens = 0;
  const absl::Status s = ValidateStopParams(stop);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(s.message()).find("max_tokens"), std::string::npos);
}

}  // namespace
}  // namespace sirocco::engine
