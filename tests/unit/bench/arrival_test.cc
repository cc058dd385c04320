// Arrival processes checked statistically over many gaps with fixed seeds:
// the mean rate and the coefficient of variation (std/mean of the gaps):
// constant 0, Poisson 1, gamma 1/sqrt(burstiness).
#include "tools/bench/arrival.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace sirocco::bench {
namespace {

struct GapStats {
  double rate = 0, cv = 0;
};

GapStats Measure(ArrivalKind kind, double rate, double burstiness, std::uint64_t seed, int n = 200000) {
  auto p = ArrivalProcess::Create({.kind = kind, .rate = rate, .burstiness = burstiness, .seed = seed});
  EXPECT_TRUE(p.ok()) << p.status();
  double sum = 0, sum2 = 0;
  for (int i = 0; i < n; ++i) {
    const double g = p->NextGapSeconds();
    EXPECT_GE(g, 0);
    sum += g;
    sum2 += g * g;
  }
  const double mean = sum / n;
  const double var = sum2 / n - mean * mean;
  return {1 / mean, std::sqrt(std::max(0.0, var)) / mean};
}

TEST(ArrivalTest, ConstantHasNoDispersion) {
  const GapStats s = Measure(ArrivalKind::kConstant, 8, 1, 1, 1000);
  EXPECT_NEAR(s.rate, 8, 1e-9);
  EXPECT_NEAR(s.cv, 0, 1e-6);
}

TEST(ArrivalTest, PoissonHasUnitCv) {
  for (std::uint64_t seed : {1u, 2u}) {
    const GapStats s = Measure(ArrivalKind::kPoisson, 5, 1, seed);
    EXPECT_NEAR(s.rate, 5, 5 * 0.02);
    EXPECT_NEAR(s.cv, 1, 0.02);
  }
}

TEST(ArrivalTest, GammaCvIsOneOverSqrtBurstiness) {
  for (double b : {0.25, 0.5, 1.0, 4.0}) {
    const GapStats s = Measure(ArrivalKind::kGamma, 10, b, 3);
    EXPECT_NEAR(s.rate, 10, 10 * 0.02) << "burstiness " << b;
    EXPECT_NEAR(s.cv, 1 / std::sqrt(b), 0.03 / std::sqrt(b)) << "burstiness " << b;
  }
}

TEST(ArrivalTest, SameSeedSameGaps) {
  auto a = ArrivalProcess::Create({.kind = ArrivalKind::kGamma, .rate = 3, .burstiness = 0.5, .seed = 9});
  auto b = ArrivalProcess::Create({.kind = ArrivalKind::kGamma, .rate = 3, .burstiness = 0.5, .seed = 9});
  ASSERT_TRUE(a.ok() && b.ok());
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a->NextGapSeconds(), b->NextGapSeconds());
}

TEST(ArrivalTest, InfiniteRateSendsAtOnce) {
  auto p = ArrivalProcess::Create({.kind = ArrivalKind::kPoisson, .rate = INFINITY, .burstiness = 1, .seed = 0});
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->NextGapSeconds(), 0);
}

TEST(ArrivalTest, RejectsBadOptions) {
  EXPECT_FALSE(ArrivalProcess::Create({.kind = ArrivalKind::kPoisson, .rate = 0, .burstiness = 1, .seed = 0}).ok());
  EXPECT_FALSE(ArrivalProcess::Create({.kind = ArrivalKind::kGamma, .rate = 1, .burstiness = 0, .seed = 0}).ok());
  EXPECT_FALSE(ParseArrivalKind("bursty").ok());
  EXPECT_EQ(*ParseArrivalKind("gamma"), ArrivalKind::kGamma);
}

}  // namespace
}  // namespace sirocco::bench
