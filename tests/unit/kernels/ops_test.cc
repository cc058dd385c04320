// Kernel tests, in two parts:
//   * RefKernelsTest: the scalar reference (the spec) against values worked out
//     by hand on tiny inputs.
//   * KernelsTest: one parameterized suite over every available non-reference
//     backend, running every op against the reference over shape sweeps (odd,
//     even, 1, not multiples of 8, padded leading dimensions, fragmented cache
//     block tables, ...).
//
// Error measure: NormalizedError = max|got - want| / max(1, max|want|), i.e.
// absolute error for results of order one and relative error for larger ones.
// The bound is 1e-5 (about 100 float ulps at 1.0): both sides round in
// different orders (vector lanes, FMA, BLAS blocking), which costs a few ulps
// per op, never more than that for correct code.
//
// Sums of K products (gemm) are the exception: each of the K additions rounds
// at the size of the partial sum. With inputs uniform in [-1, 1] the partial
// sums and the result both grow like sqrt(K), so the error relative to the
// result grows like u * sqrt(K) (u = 2^-24) times a constant that, for the
// reference's sequential order, is itself larger than 1 (rounding errors of K
// steps, a random walk). The gemm bound is therefore 1e-5 * max(1, sqrt(K/256)):
// 1e-5 up to K = 256 and 4e-5 at K = 4096, still > 100x below a single
// dropped or doubled term (~1/sqrt(K) relative).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numbers>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "tests/unit/kernels/kernel_test_util.h"

namespace sirocco::kernels {
namespace {

using namespace ::sirocco::kernels::test_util;  // NOLINT: the shared test helpers

// ---------------------------------------------------------------------------
// Registry.

TEST(RegistryTest, ReferenceIsAlwaysAvailableAndListedFirst) {
  EXPECT_TRUE(Available(Backend::kRef));
  const std::span<const Backend> backends = AvailableBackends();
  ASSERT_FALSE(backends.empty());
  EXPECT_EQ(backends.front(), Backend::kRef);
  for (Backend b : backends) {
    EXPECT_TRUE(Available(b));
    EXPECT_EQ(Get(b).backend, b);
    EXPECT_STREQ(Get(b).name, BackendName(b));
  }
  const bool avx2_listed = std::find(backends.begin(), backends.end(), Backend::kAvx2) != backends.end();
  EXPECT_EQ(Available(Backend::kAvx2), avx2_listed);
  EXPECT_STREQ(BackendName(Backend::kRef), "ref");
  EXPECT_STREQ(BackendName(Backend::kAvx2), "avx2");
}

// ---------------------------------------------------------------------------
// The reference against hand-computed values.

const KernelTable& Ref() { return Get(Backend::kRef); }

TEST(RefKernelsTest, SoftmaxOfZeroAndLn2IsOneThirdTwoThirds) {
  std::vector<float> x = {0.0f, std::numbers::ln2_v<float>};
  Ref().softmax(1, 2, x.data(), 2);
  EXPECT_NEAR(x[0], 1.0f / 3.0f, 1e-7);
  EXPECT_NEAR(x[1], 2.0f / 3.0f, 1e-7);
}

TEST(RefKernelsTest, SoftmaxIsShiftInvariantAndHandlesHugeInputs) {
  // exp(200) overflows float: only the max subtraction makes this work.
  std::vector<float> x = {200.0f, 201.0f, -kInf};
  Ref().softmax(1, 3, x.data(), 3);
  const double e = std::exp(1.0);
  EXPECT_NEAR(x[0], 1.0 / (1.0 + e), 1e-7);
  EXPECT_NEAR(x[1], e / (1.0 + e), 1e-7);
  EXPECT_EQ(x[2], 0.0f);
}

TEST(RefKernelsTest, RmsNormOfThreeFour) {
  // mean(x^2) = (9 + 16) / 2 = 12.5.
  const std::vector<float> x = {3.0f, 4.0f};
  const std::vector<float> ones = {1.0f, 1.0f};
  std::vector<float> y(2);
  Ref().rms_norm(1, 2, x.data(), 2, ones.data(), 0.0f, y.data(), 2);
  EXPECT_NEAR(y[0], 3.0 / std::sqrt(12.5), 1e-6);
  EXPECT_NEAR(y[1], 4.0 / std::sqrt(12.5), 1e-6);

  const std::vector<float> w = {2.0f, 0.5f};
  Ref().rms_norm(1, 2, x.data(), 2, w.data(), 0.0f, y.data(), 2);
  EXPECT_NEAR(y[0], 6.0 / std::sqrt(12.5), 1e-6);
  EXPECT_NEAR(y[1], 2.0 / std::sqrt(12.5), 1e-6);

  // eps enters under the root: mean 12.5 + 3.5 = 16, so y = x / 4.
  Ref().rms_norm(1, 2, x.data(), 2, ones.data(), 3.5f, y.data(), 2);
  EXPECT_NEAR(y[0], 0.75f, 1e-7);
  EXPECT_NEAR(y[1], 1.0f, 1e-7);
}

TEST(RefKernelsTest, RopeAtPositionZeroDeinterleavesAndScales) {
  std::vector<float> x = {1, 2, 3, 4, 5, 6};
  const std::vector<float> inv_freq = {1.0f, 0.1f, 0.01f};
  const std::int32_t pos = 0;
  Ref().rope_interleaved(1, 1, 6, x.data(), 6, &pos, inv_freq.data(), 1.5f);
  const std::vector<float> want = {1.5f, 4.5f, 7.5f, 3.0f, 6.0f, 9.0f};
  for (int i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(x[i], want[i]) << i;
}

TEST(RefKernelsTest, RopeByQuarterTurnRotatesEachPair) {
  // Angle pi/2: (x0, x1) -> (-x1, x0), stored as out[p], out[p + dim/2].
  // Two rows share position 1 (rows_per_pos = 2); the third has position 0.
  std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  const std::vector<float> inv_freq = {std::numbers::pi_v<float> / 2, std::numbers::pi_v<float> / 2};
  const std::vector<std::int32_t> pos = {1, 0};
  Ref().rope_interleaved(3, 2, 4, x.data(), 4, pos.data(), inv_freq.data(), 1.0f);
  const std::vector<float> want = {-2, -4, 1, 3, -6, -8, 5, 7, 9, 11, 10, 12};
  for (int i = 0; i < 12; ++i) EXPECT_NEAR(x[i], want[i], 1e-6) << i;
}

TEST(RefKernelsTest, Gemm2x2) {
  const std::vector<float> a = {1, 2, 3, 4};
  const std::vector<float> b = {5, 6, 7, 8};
  // beta = 0 must not read C, even when it holds NaN.
  std::vector<float> c(4, kNaN);
  Ref().gemm_nt(2, 2, 2, a.data(), 2, b.data(), 2, 0.0f, c.data(), 2);
  EXPECT_EQ(c, (std::vector<float>{17, 23, 39, 53}));  // A B^T
  c.assign(4, 1.0f);
  Ref().gemm_nt(2, 2, 2, a.data(), 2, b.data(), 2, 1.0f, c.data(), 2);
  EXPECT_EQ(c, (std::vector<float>{18, 24, 40, 54}));
  c.assign(4, kNaN);
  Ref().gemm_nn(2, 2, 2, a.data(), 2, b.data(), 2, 0.0f, c.data(), 2);
  EXPECT_EQ(c, (std::vector<float>{19, 22, 43, 50}));  // A B
  c.assign(4, 2.0f);
  Ref().gemm_nn(2, 2, 2, a.data(), 2, b.data(), 2, 0.5f, c.data(), 2);
  EXPECT_EQ(c, (std::vector<float>{20, 23, 44, 51}));
}

TEST(RefKernelsTest, SiluMulAndAxpy) {
  const std::vector<float> gate = {0.0f, 1.0f, -1.0f};
  const std::vector<float> up = {5.0f, 2.0f, 2.0f};
  std::vector<float> out(3);
  Ref().silu_mul(1, 3, gate.data(), 3, up.data(), 3, out.data(), 3);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_NEAR(out[1], 2.0 / (1.0 + std::exp(-1.0)), 1e-6);
  EXPECT_NEAR(out[2], -2.0 / (1.0 + std::exp(1.0)), 1e-6);
  // No up: plain silu.
  Ref().silu_mul(1, 3, gate.data(), 3, nullptr, 0, out.data(), 3);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_NEAR(out[1], 1.0 / (1.0 + std::exp(-1.0)), 1e-6);

  const std::vector<float> x = {3.0f, 4.0f};
  std::vector<float> y = {1.0f, 2.0f};
  Ref().axpy(2, 2.0f, x.data(), y.data());
  EXPECT_EQ(y, (std::vector<float>{7.0f, 10.0f}));
}

TEST(RefKernelsTest, MlaAttentionHandWorked) {
  // kv_rank 2, rope 1, block_size 1. Sequence entry 0 lives in block 1, entry
  // 1 in block 0 (a reversed table):
  //   entry 0: latent [1, 0], krope ln 3;   entry 1: latent [0, 1], krope 0.
  const float ln3 = std::log(3.0f);
  const std::vector<float> cache = {0, 1, 0, /* block 1 */ 1, 0, ln3};
  const std::vector<std::int32_t> table = {1, 0};
  const std::int32_t* tables[] = {table.data()};
  const std::int32_t ctx = 2;
  std::vector<float> out(2, kNaN);

  // Scores come from the rope part only: [ln 3, 0] -> softmax [3/4, 1/4].
  std::vector<float> q_lat = {0, 0};
  std::vector<float> q_rope = {1};
  MlaAttentionParams p;
  p.num_queries = 1;
  p.num_heads = 1;
  p.kv_rank = 2;
  p.rope_dim = 1;
  p.block_size = 1;
  p.q_lat = q_lat.data();
  p.q_rope = q_rope.data();
  p.cache = cache.data();
  p.block_tables = tables;
  p.ctx_lens = &ctx;
  p.scale = 1.0f;
  p.out = out.data();
  Ref().mla_attention(p);
  EXPECT_NEAR(out[0], 0.75f, 1e-6);
  EXPECT_NEAR(out[1], 0.25f, 1e-6);

  // The same scores from the latent part, through the scale: 0.5 * 2 ln 3.
  q_lat = {2 * ln3, 0};
  q_rope = {0};
  p.scale = 0.5f;
  Ref().mla_attention(p);
  EXPECT_NEAR(out[0], 0.75f, 1e-6);
  EXPECT_NEAR(out[1], 0.25f, 1e-6);

  // With ctx_len 1 only entry 0 is visible.
  const std::int32_t short_ctx = 1;
  p.ctx_lens = &short_ctx;
  Ref().mla_attention(p);
  EXPECT_FLOAT_EQ(out[0], 1.0f);
  EXPECT_FLOAT_EQ(out[1], 0.0f);
}

TEST(RefKernelsTest, GeluMulIsExactErfGelu) {
  // gelu(g) = g * Phi(g): Phi(1) = 0.841344746..., Phi(-1) = 0.158655253...
  const std::vector<float> gate = {0.0f, 1.0f, -1.0f, 10.0f, -10.0f};
  const std::vector<float> up = {5.0f, 2.0f, 2.0f, 0.5f, 3.0f};
  const std::vector<double> plain = {0.0, 0.8413447460685429, -0.15865525393145707, 10.0, -7.6198530241604696e-23};
  std::vector<float> out(5, kNaN);
  Ref().gelu_mul(1, 5, gate.data(), 5, up.data(), 5, out.data(), 5);
  for (int i = 0; i < 5; ++i)
    EXPECT_NEAR(out[i], plain[i] * up[i], 1e-6 * std::max(1.0, std::abs(plain[i] * up[i]))) << i;
  // No up: plain gelu (ldu unused).
  out.assign(5, kNaN);
  Ref().gelu_mul(1, 5, gate.data(), 5, nullptr, 0, out.data(), 5);
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(out[i], plain[i], 1e-6 * std::max(1.0, std::abs(plain[i]))) << i;
}

// One head, qk_dim 1, v_dim 2: two queries over two keys, q_offset 0.
AttentionParams TwoQueriesTwoKeys(const std::vector<float>& q, const std::vector<float>& k,
                                  const std::vector<float>& v, std::vector<float>& out) {
  AttentionParams p;
  p.num_queries = 2;
  p.num_keys = 2;
  p.q_offset = 0;
  p.num_heads = 1;
  p.qk_dim = 1;
  p.v_dim = 2;
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  p.out = out.data();
  return p;
}

TEST(RefKernelsTest, AttentionWithoutCausalitySeesEveryKey) {
  // As AttentionIsCausal below, but both queries average both values, and
  // q_offset does not matter.
  const std::vector<float> q = {1, 1};
  const std::vector<float> k = {0, 0};
  const std::vector<float> v = {2, 0, /* key 1 */ 0, 4};
  std::vector<float> out(4, kNaN);
  AttentionParams p = TwoQueriesTwoKeys(q, k, v, out);
  p.causal = false;
  Ref().attention(p);
  EXPECT_EQ(out, (std::vector<float>{1, 2, 1, 2}));
  p.q_offset = 7;
  out.assign(4, kNaN);
  Ref().attention(p);
  EXPECT_EQ(out, (std::vector<float>{1, 2, 1, 2}));
}

TEST(RefKernelsTest, AttentionIsCausal) {
  // One head, qk_dim 1, equal scores: a query averages the values it sees.
  const std::vector<float> q = {1, 1};
  const std::vector<float> k = {0, 0};
  const std::vector<float> v = {2, 0, /* key 1 */ 0, 4};
  std::vector<float> out(4, kNaN);
  AttentionParams p = TwoQueriesTwoKeys(q, k, v, out);
  Ref().attention(p);
  EXPECT_EQ(out, (std::vector<float>{2, 0, 1, 2}));

  // q_offset 1: the single query sits at position 1 and sees both keys.
  p.num_queries = 1;
  p.q_offset = 1;
  out.assign(2, kNaN);
  Ref().attention(p);
  EXPECT_EQ(out, (std::vector<float>{1, 2}));
}

// Router logits ln(w) with sum(w) = 1 make the softmax scores exactly w (up to
// rounding), so the expected choices can be read off the weights.
std::vector<float> LogitsForScores(const std::vector<float>& w) {
  std::vector<float> logits;
  for (float x : w) logits.push_back(std::log(x));
  return logits;
}

struct RouterResult {
  std::vector<std::int32_t> ids;
  std::vector<float> weights;
};

RouterResult Route(const KernelTable& table, RouterParams p, const std::vector<float>& logits) {
  RouterResult r;
  r.ids.assign(static_cast<std::size_t>(p.num_tokens) * p.top_k, -7);
  r.weights.assign(r.ids.size(), kNaN);
  p.logits = logits.data();
  p.expert_ids = r.ids.data();
  p.expert_weights = r.weights.data();
  table.route_topk(p);
  return r;
}

TEST(RefKernelsTest, RouterGroupLimitedSelection) {
  // 8 experts in 4 groups of 2. Group scores (sum of both): 0.36, 0.33, 0.03,
  // 0.28. Keeping 2 groups keeps groups 0 and 1, which excludes expert 6 even
  // though its score (0.26) is the largest of all.
  const std::vector<float> w = {0.20f, 0.16f, 0.18f, 0.15f, 0.02f, 0.01f, 0.26f, 0.02f};
  RouterParams p;
  p.num_tokens = 1;
  p.num_experts = 8;
  p.num_groups = 4;
  p.topk_group = 2;
  p.top_k = 3;
  p.normalize = true;
  p.scaling = 2.0f;
  RouterResult r = Route(Ref(), p, LogitsForScores(w));
  EXPECT_EQ(r.ids, (std::vector<std::int32_t>{0, 2, 1}));
  // Renormalised over 0.20 + 0.18 + 0.16 = 0.54, then times 2.
  EXPECT_NEAR(r.weights[0], 2 * 0.20 / 0.54, 1e-6);
  EXPECT_NEAR(r.weights[1], 2 * 0.18 / 0.54, 1e-6);
  EXPECT_NEAR(r.weights[2], 2 * 0.16 / 0.54, 1e-6);

  // Keeping every group: the plain top 3, raw scores times the scaling.
  p.topk_group = 4;
  p.normalize = false;
  r = Route(Ref(), p, LogitsForScores(w));
  EXPECT_EQ(r.ids, (std::vector<std::int32_t>{6, 0, 2}));
  EXPECT_NEAR(r.weights[0], 2 * 0.26, 1e-6);
  EXPECT_NEAR(r.weights[1], 2 * 0.20, 1e-6);
  EXPECT_NEAR(r.weights[2], 2 * 0.18, 1e-6);
}

TEST(RefKernelsTest, RouterGroupScoreIsSumOfTopTwo) {
  // Groups of 3: group 0 sums to 0.58 but its top two to 0.40; group 1 sums to
  // 0.42 but its top two to 0.41, so group 1 wins.
  const std::vector<float> w = {0.22f, 0.18f, 0.18f, 0.30f, 0.11f, 0.01f};
  RouterParams p;
  p.num_tokens = 1;
  p.num_experts = 6;
  p.num_groups = 2;
  p.topk_group = 1;
  p.top_k = 2;
  const RouterResult r = Route(Ref(), p, LogitsForScores(w));
  EXPECT_EQ(r.ids, (std::vector<std::int32_t>{3, 4}));
  EXPECT_NEAR(r.weights[0], 0.30 / 0.41, 1e-6);
  EXPECT_NEAR(r.weights[1], 0.11 / 0.41, 1e-6);
}

TEST(RefKernelsTest, RouterTiesGoToLowerIndex) {
  // Groups of one (group score = the score), all equal: groups 0 and 1 are
  // kept, experts 0 and 1 chosen, in that order. Two tokens, second reversed
  // in preference by a small logit bump on expert 3 (group 3 then wins).
  const std::vector<float> logits = {0, 0, 0, 0, /* token 1 */ 0, 0, 0, 0.5f};
  RouterParams p;
  p.num_tokens = 2;
  p.num_experts = 4;
  p.num_groups = 4;
  p.topk_group = 2;
  p.top_k = 2;
  p.normalize = true;
  p.scaling = 1.0f;
  RouterResult r = Route(Ref(), p, logits);
  EXPECT_EQ(r.ids, (std::vector<std::int32_t>{0, 1, 3, 0}));
  EXPECT_NEAR(r.weights[0], 0.5f, 1e-7);
  EXPECT_NEAR(r.weights[1], 0.5f, 1e-7);
  const float e = std::exp(0.5f);
  EXPECT_NEAR(r.weights[2], e / (e + 1), 1e-6);
  EXPECT_NEAR(r.weights[3], 1 / (e + 1), 1e-6);

  p.normalize = false;
  p.scaling = 3.0f;
  r = Route(Ref(), p, logits);
  EXPECT_NEAR(r.weights[0], 0.75f, 1e-6);  // 3 * 1/4
  EXPECT_NEAR(r.weights[1], 0.75f, 1e-6);
}

// ---------------------------------------------------------------------------
// Every other backend against the reference.

std::vector<Backend> BackendsUnderTest() {
  std::vector<Backend> backends;
  for (Backend b : AvailableBackends()) {
    if (b != Backend::kRef) backends.push_back(b);
  }
  // Keep the suite instantiated when nothing else runs here: a lone kRef
  // parameter makes every test skip with a message instead.
  if (backends.empty()) backends.push_back(Backend::kRef);
  return backends;
}

class KernelsTest : public testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    if (GetParam() == Backend::kRef) {
      GTEST_SKIP() << "no non-reference kernel backend is available on this CPU/build";
    }
  }

  const KernelTable& ref() const { return Get(Backend::kRef); }
  const KernelTable& impl() const { return Get(GetParam()); }

  std::mt19937 rng_{20240611u};
};

INSTANTIATE_TEST_SUITE_P(Backends, KernelsTest, testing::ValuesIn(BackendsUnderTest()),
                         [](const testing::TestParamInfo<Backend>& param_info) {
                           return std::string(param_info.param == Backend::kRef ? "none"
                                                                                : BackendName(param_info.param));
                         });

TEST_P(KernelsTest, TableIsComplete) {
  const KernelTable& t = impl();
  EXPECT_EQ(t.backend, GetParam());
  EXPECT_STREQ(t.name, BackendName(GetParam()));
  EXPECT_NE(t.gemm_nt, nullptr);
  EXPECT_NE(t.gemm_nn, nullptr);
  EXPECT_NE(t.rms_norm, nullptr);
  EXPECT_NE(t.rope_interleaved, nullptr);
  EXPECT_NE(t.silu_mul, nullptr);
  EXPECT_NE(t.gelu_mul, nullptr);
  EXPECT_NE(t.axpy, nullptr);
  EXPECT_NE(t.softmax, nullptr);
  EXPECT_NE(t.mla_attention, nullptr);
  EXPECT_NE(t.attention, nullptr);
  EXPECT_NE(t.route_topk, nullptr);
}


struct GemmShape {
  int m;
  int n;
  int k;
};

std::vector<GemmShape> GemmShapes() {
  std::vector<GemmShape> shapes;
  for (int m : {1, 2, 3, 8, 17}) {
    for (int n : {1, 7, 8, 33}) {
      for (int k : {1, 5, 8, 64, 257}) shapes.push_back({m, n, k});
    }
  }
  // Big K (model widths), and shapes large enough for BLAS to block and thread.
  for (GemmShape s : {GemmShape{1, 64, 4096}, GemmShape{3, 17, 4096}, GemmShape{64, 96, 512}, GemmShape{130, 129, 300},
                      GemmShape{1, 1000, 1000}}) {
    shapes.push_back(s);
  }
  return shapes;
}

// Runs C = A op(B) + beta C on both backends; op(B) = B^T for gemm_nt.
void CheckGemm(const KernelTable& ref, const KernelTable& impl, bool transposed_b, std::mt19937& rng) {
  for (const GemmShape& s : GemmShapes()) {
    for (int pad : {0, 3}) {
      for (float beta : {0.0f, 1.0f}) {
        Padded a(s.m, s.k, s.k + pad);
        Padded b = transposed_b ? Padded(s.n, s.k, s.k + 2 * pad) : Padded(s.k, s.n, s.n + pad);
        Padded c(s.m, s.n, s.n + pad);
        a.Fill(rng);
        b.Fill(rng);
        if (beta == 0.0f) {
          c.FillWith(kNaN);  // beta == 0: C must not be read
        } else {
          c.Fill(rng);
        }
        Padded want = c;
        auto op = transposed_b ? ref.gemm_nt : ref.gemm_nn;
        op(s.m, s.n, s.k, a.data.data(), a.ld, b.data.data(), b.ld, beta, want.data.data(), want.ld);
        op = transposed_b ? impl.gemm_nt : impl.gemm_nn;
        op(s.m, s.n, s.k, a.data.data(), a.ld, b.data.data(), b.ld, beta, c.data.data(), c.ld);
        const double err = NormalizedError(c.Logical(), want.Logical());
        EXPECT_LE(err, GemmTolerance(s.k))
            << "m=" << s.m << " n=" << s.n << " k=" << s.k << " pad=" << pad << " beta=" << beta;
        EXPECT_TRUE(c.PaddingIntact()) << "m=" << s.m << " n=" << s.n << " k=" << s.k;
      }
    }
  }
}

TEST_P(KernelsTest, GemmNtMatchesReference) { CheckGemm(ref(), impl(), true, rng_); }

TEST_P(KernelsTest, GemmNnMatchesReference) { CheckGemm(ref(), impl(), false, rng_); }

TEST_P(KernelsTest, GemmWithEmptyInnerDimensionScalesC) {
  for (float beta : {0.0f, 2.0f}) {
    std::vector<float> c = {1, 2, 3, 4, 5, 6};
    const float dummy = 0.0f;
    impl().gemm_nt(2, 3, 0, &dummy, 1, &dummy, 1, beta, c.data(), 3);
    EXPECT_EQ(c[5], beta * 6.0f);
    impl().gemm_nn(2, 3, 0, &dummy, 1, &dummy, 3, beta, c.data(), 3);
    EXPECT_EQ(c[5], beta * beta * 6.0f);
  }
}

TEST_P(KernelsTest, RmsNormMatchesReference) {
  for (int rows : {1, 3}) {
    for (int dim : {1, 2, 7, 8, 9, 31, 64, 1000, 4096}) {
      for (int pad : {0, 5}) {
        Padded x(rows, dim, dim + pad);
        x.Fill(rng_, -3.0f, 3.0f);
        const std::vector<float> w = RandomVector(dim, rng_, 0.5f, 1.5f);
        Padded want(rows, dim, dim + 2 * pad);
        Padded got = want;
        ref().rms_norm(rows, dim, x.data.data(), x.ld, w.data(), 1e-5f, want.data.data(), want.ld);
        impl().rms_norm(rows, dim, x.data.data(), x.ld, w.data(), 1e-5f, got.data.data(), got.ld);
        EXPECT_LE(NormalizedError(got.Logical(), want.Logical()), kTolerance)
            << "rows=" << rows << " dim=" << dim << " pad=" << pad;
        EXPECT_TRUE(got.PaddingIntact());

        // y may alias x.
        impl().rms_norm(rows, dim, x.data.data(), x.ld, w.data(), 1e-5f, x.data.data(), x.ld);
        EXPECT_LE(NormalizedError(x.Logical(), want.Logical()), kTolerance)
            << "in place, rows=" << rows << " dim=" << dim;
        EXPECT_TRUE(x.PaddingIntact());
      }
    }
  }
}

TEST_P(KernelsTest, RopeMatchesReference) {
  for (int rows_per_pos : {1, 4}) {
    // 3 full positions, plus 1 row of a fourth when rows_per_pos > 1.
    const int rows = 3 * rows_per_pos + (rows_per_pos > 1 ? 1 : 0);
    const int num_pos = (rows + rows_per_pos - 1) / rows_per_pos;
    for (int dim : {2, 4, 14, 16, 18, 64, 128}) {
      for (int pad : {0, 3}) {
        for (float attn_factor : {1.0f, 1.25f}) {
          std::vector<float> inv_freq(dim / 2);
          for (int p = 0; p < dim / 2; ++p) {
            inv_freq[p] = std::pow(10000.0f, -2.0f * p / dim);
          }
          std::vector<std::int32_t> pos = {0};  // position 0 is the identity rotation
          std::uniform_int_distribution<std::int32_t> pos_dist(0, 32767);
          while (static_cast<int>(pos.size()) < num_pos) pos.push_back(pos_dist(rng_));
          Padded want(rows, dim, dim + pad);
          want.Fill(rng_);
          Padded got = want;
          ref().rope_interleaved(rows, rows_per_pos, dim, want.data.data(), want.ld, pos.data(), inv_freq.data(),
                                 attn_factor);
          impl().rope_interleaved(rows, rows_per_pos, dim, got.data.data(), got.ld, pos.data(), inv_freq.data(),
                                  attn_factor);
          EXPECT_LE(NormalizedError(got.Logical(), want.Logical()), kTolerance)
              << "rows_per_pos=" << rows_per_pos << " dim=" << dim << " pad=" << pad;
          EXPECT_TRUE(got.PaddingIntact());
        }
      }
    }
  }
}

TEST_P(KernelsTest, SiluMulMatchesReference) {
  for (bool with_up : {true, false}) {
    for (int rows : {1, 4}) {
      for (int n : {1, 7, 8, 9, 100, 1024}) {
        for (int pad : {0, 3}) {
          Padded gate(rows, n, n + pad);
          Padded up(rows, n, n + 2 * pad);
          gate.Fill(rng_, -20.0f, 20.0f);
          up.Fill(rng_, -2.0f, 2.0f);
          const float* up_ptr = with_up ? up.data.data() : nullptr;  // null: plain silu
          Padded want(rows, n, n + pad);
          Padded got = want;
          ref().silu_mul(rows, n, gate.data.data(), gate.ld, up_ptr, up.ld, want.data.data(), want.ld);
          impl().silu_mul(rows, n, gate.data.data(), gate.ld, up_ptr, up.ld, got.data.data(), got.ld);
          EXPECT_LE(NormalizedError(got.Logical(), want.Logical()), kTolerance)
              << "up=" << with_up << " rows=" << rows << " n=" << n << " pad=" << pad;
          EXPECT_TRUE(got.PaddingIntact());
        }
      }
    }
  }
}

TEST_P(KernelsTest, SiluMulInPlace) {
  // The model writes over gate, with gate and up side by side in one row.
  const int rows = 3;
  const int n = 37;
  Padded fused(rows, 2 * n, 2 * n + 1);
  fused.Fill(rng_, -8.0f, 8.0f);
  Padded want(rows, n, n);
  ref().silu_mul(rows, n, fused.data.data(), fused.ld, fused.data.data() + n, fused.ld, want.data.data(), want.ld);
  impl().silu_mul(rows, n, fused.data.data(), fused.ld, fused.data.data() + n, fused.ld, fused.data.data(), fused.ld);
  Padded got(rows, n, n);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < n; ++c) got.at(r, c) = fused.at(r, c);
  }
  EXPECT_LE(NormalizedError(got.Logical(), want.Logical()), kTolerance);
  EXPECT_TRUE(fused.PaddingIntact());
}

TEST_P(KernelsTest, SiluMulAtExtremes) {
  // exp(-g) overflows for g < -88.7: silu tends to -0, not NaN.
  const std::vector<float> gate = {-1000,  -104, -100, -89, -88, -87, -20,  -1e-30f, 0,
                                   1e-30f, 20,   87,   88,  89,  100, 1000, kInf};
  const std::vector<float> up(gate.size(), 1.5f);
  const int n = static_cast<int>(gate.size());
  std::vector<float> want(gate.size());
  std::vector<float> got(gate.size());
  ref().silu_mul(1, n, gate.data(), n, up.data(), n, want.data(), n);
  impl().silu_mul(1, n, gate.data(), n, up.data(), n, got.data(), n);
  for (int i = 0; i < n; ++i) {
    if (std::isinf(want[i])) {
      EXPECT_EQ(got[i], want[i]) << "gate=" << gate[i];
    } else {
      EXPECT_NEAR(got[i], want[i], 1e-6 * std::max(1.0f, std::abs(want[i]))) << "gate=" << gate[i];
    }
  }
}

TEST_P(KernelsTest, GeluMulMatchesReference) {
  for (bool with_up : {true, false}) {
    for (int rows : {1, 4}) {
      for (int n : {1, 7, 8, 9, 100, 1024}) {
        for (int pad : {0, 3}) {
          Padded gate(rows, n, n + pad);
          Padded up(rows, n, n + 2 * pad);
          gate.Fill(rng_, -12.0f, 12.0f);
          up.Fill(rng_, -2.0f, 2.0f);
          const float* up_ptr = with_up ? up.data.data() : nullptr;
          Padded want(rows, n, n + pad);
          Padded got = want;
          ref().gelu_mul(rows, n, gate.data.data(), gate.ld, up_ptr, up.ld, want.data.data(), want.ld);
          impl().gelu_mul(rows, n, gate.data.data(), gate.ld, up_ptr, up.ld, got.data.data(), got.ld);
          EXPECT_LE(NormalizedError(got.Logical(), want.Logical()), kTolerance)
              << "up=" << with_up << " rows=" << rows << " n=" << n << " pad=" << pad;
          EXPECT_TRUE(got.PaddingIntact());

          // out may alias gate.
          impl().gelu_mul(rows, n, gate.data.data(), gate.ld, up_ptr, up.ld, gate.data.data(), gate.ld);
          EXPECT_LE(NormalizedError(gate.Logical(), want.Logical()), kTolerance)
              << "in place, up=" << with_up << " rows=" << rows << " n=" << n;
          EXPECT_TRUE(gate.PaddingIntact());
        }
      }
    }
  }
}

TEST_P(KernelsTest, AxpyMatchesReference) {
  for (int n : {0, 1, 7, 8, 9, 15, 16, 17, 1000, 4099}) {
    for (float alpha : {0.5f, -3.0f}) {
      const std::vector<float> x = RandomVector(n, rng_);
      // A one-row matrix whose padding (8 sentinels past n) catches writes
      // beyond the end.
      Padded want(1, n, n + 8);
      want.Fill(rng_, -2.0f, 2.0f);
      Padded got = want;
      ref().axpy(n, alpha, x.data(), want.data.data());
      impl().axpy(n, alpha, x.data(), got.data.data());
      EXPECT_LE(NormalizedError(got.Logical(), want.Logical()), kTolerance) << "n=" << n << " alpha=" << alpha;
      EXPECT_TRUE(got.PaddingIntact()) << "n=" << n;
    }
  }
}

TEST_P(KernelsTest, SoftmaxMatchesReference) {
  for (int rows : {1, 3}) {
    for (int n : {1, 2, 7, 8, 9, 33, 1000, 32769}) {
      for (int pad : {0, 3}) {
        Padded want(rows, n, n + pad);
        want.Fill(rng_, -30.0f, 30.0f);
        // Masked entries (-inf) in the last row, keeping its first finite.
        for (int c = 1; c < n; c += 3) want.at(rows - 1, c) = -kInf;
        Padded got = want;
        ref().softmax(rows, n, want.data.data(), want.ld);
        impl().softmax(rows, n, got.data.data(), got.ld);
        EXPECT_LE(NormalizedError(got.Logical(), want.Logical()), kTolerance)
            << "rows=" << rows << " n=" << n << " pad=" << pad;
        EXPECT_TRUE(got.PaddingIntact());
      }
    }
  }
}

TEST_P(KernelsTest, SoftmaxTailIsRelativelyAccurate) {
  // Rows [0, -t1, ..., -t8]: the small probabilities are exp(-t) / sum, which
  // checks a backend's exp to relative 1e-6 over the whole normal range of
  // results, not just near the maximum.
  constexpr int kN = 9;
  std::vector<float> want;
  for (float t = 0.0f; t < 87.0f; t += 0.0371f) {
    want.push_back(0.0f);
    for (int i = 1; i < kN; ++i) want.push_back(-t - 0.01f * static_cast<float>(i));
  }
  const int rows = static_cast<int>(want.size()) / kN;
  std::vector<float> got = want;
  ref().softmax(rows, kN, want.data(), kN);
  impl().softmax(rows, kN, got.data(), kN);
  double worst = 0.0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (want[i] < std::numeric_limits<float>::min()) continue;  // denormal results
    worst = std::max(worst, std::abs(static_cast<double>(got[i]) - want[i]) / want[i]);
  }
  EXPECT_LE(worst, 1e-6);
}

// An MLA attention case: the sequences of the queries live in a paged cache
// whose blocks are handed out in shuffled order, so every block table is
// fragmented and non-contiguous.
struct MlaCase {
  int num_heads;
  int kv_rank;
  int rope_dim;
  int block_size;
  std::vector<int> ctx_lens;
  bool shared_sequence;  // every query reads the same sequence (absorbed prefill)
  float scale;           // 0: 1 / sqrt(kv_rank + rope_dim)
};

void CheckMla(const KernelTable& ref, const KernelTable& impl, const MlaCase& c, std::mt19937& rng) {
  const int nq = static_cast<int>(c.ctx_lens.size());
  const int entry_width = c.kv_rank + c.rope_dim;
  const int num_seqs = c.shared_sequence ? 1 : nq;
  std::vector<int> seq_blocks(num_seqs);
  int total_blocks = 3;  // a few blocks no sequence uses
  for (int s = 0; s < num_seqs; ++s) {
    const int ctx = c.shared_sequence ? *std::max_element(c.ctx_lens.begin(), c.ctx_lens.end()) : c.ctx_lens[s];
    seq_blocks[s] = (ctx + c.block_size - 1) / c.block_size;
    total_blocks += seq_blocks[s];
  }
  std::vector<std::int32_t> block_ids(total_blocks);
  for (int b = 0; b < total_blocks; ++b) block_ids[b] = b;
  std::shuffle(block_ids.begin(), block_ids.end(), rng);
  std::vector<std::vector<std::int32_t>> seq_tables(num_seqs);
  int next = 0;
  for (int s = 0; s < num_seqs; ++s) {
    for (int b = 0; b < seq_blocks[s]; ++b) seq_tables[s].push_back(block_ids[next++]);
  }
  std::vector<const std::int32_t*> tables(nq);
  for (int i = 0; i < nq; ++i) tables[i] = seq_tables[c.shared_sequence ? 0 : i].data();

  const std::vector<float> cache =
      RandomVector(static_cast<std::size_t>(total_blocks) * c.block_size * entry_width, rng);
  const std::vector<float> q_lat = RandomVector(static_cast<std::size_t>(nq) * c.num_heads * c.kv_rank, rng);
  const std::vector<float> q_rope = RandomVector(static_cast<std::size_t>(nq) * c.num_heads * c.rope_dim, rng);
  const std::vector<std::int32_t> ctx_lens(c.ctx_lens.begin(), c.ctx_lens.end());
  std::vector<float> want(static_cast<std::size_t>(nq) * c.num_heads * c.kv_rank, kNaN);
  std::vector<float> got = want;  // NaN: every output must be written

  MlaAttentionParams p;
  p.num_queries = nq;
  p.num_heads = c.num_heads;
  p.kv_rank = c.kv_rank;
  p.rope_dim = c.rope_dim;
  p.block_size = c.block_size;
  p.q_lat = q_lat.data();
  p.q_rope = q_rope.data();
  p.cache = cache.data();
  p.block_tables = tables.data();
  p.ctx_lens = ctx_lens.data();
  p.scale = c.scale != 0.0f ? c.scale : 1.0f / std::sqrt(static_cast<float>(entry_width));
  p.out = want.data();
  ref.mla_attention(p);
  p.out = got.data();
  impl.mla_attention(p);
  EXPECT_LE(NormalizedError(got, want), kTolerance)
      << "heads=" << c.num_heads << " kv_rank=" << c.kv_rank << " rope=" << c.rope_dim << " block_size=" << c.block_size
      << " queries=" << nq;
}

TEST_P(KernelsTest, MlaAttentionMatchesReference) {
  const std::vector<MlaCase> cases = {
      {1, 8, 2, 1, {1}, false, 0.0f},
      {3, 13, 5, 1, {7, 40, 1}, false, 0.0f},
      {4, 16, 8, 16, {16, 17, 33, 100}, false, 0.0f},
      {5, 20, 0, 16, {9, 48}, false, 0.0f},
      {2, 9, 3, 5, {12, 3, 64}, false, 0.0f},
      {6, 24, 8, 16, {20, 21, 22}, true, 0.0f},
      {7, 40, 16, 16, {65, 31}, false, 1.0f},  // peaked softmax
      {8, 256, 64, 1, {70, 2}, false, 0.0f},
      {32, 256, 64, 16, {1, 31, 32, 33, 300}, false, 0.0f},  // the model's shape
      {32, 256, 64, 16, {257}, false, 0.25f},
  };
  for (const MlaCase& c : cases) CheckMla(ref(), impl(), c, rng_);
}

struct AttentionCase {
  int num_queries;
  int q_offset;
  int extra_keys;  // keys beyond the last query's position: visible only without causality
  int num_heads;
  int qk_dim;
  int v_dim;
};

TEST_P(KernelsTest, AttentionMatchesReference) {
  // Each case runs causal and bidirectional (a vision encoder's patches:
  // {70, 0, 0, 2, 16, 16}).
  const std::vector<AttentionCase> cases = {
      {1, 0, 0, 1, 1, 1},    {5, 0, 0, 2, 16, 16},     {4, 3, 2, 3, 24, 20},  {7, 40, 0, 2, 13, 9},
      {33, 1, 0, 4, 64, 64}, {3, 100, 5, 1, 192, 128}, {70, 0, 0, 2, 16, 16},
  };
  for (const AttentionCase& c : cases) {
    for (bool causal : {true, false}) {
      const int num_keys = c.q_offset + c.num_queries + c.extra_keys;
      const std::vector<float> q = RandomVector(static_cast<std::size_t>(c.num_queries) * c.num_heads * c.qk_dim, rng_);
      const std::vector<float> k = RandomVector(static_cast<std::size_t>(num_keys) * c.num_heads * c.qk_dim, rng_);
      const std::vector<float> v = RandomVector(static_cast<std::size_t>(num_keys) * c.num_heads * c.v_dim, rng_);
      std::vector<float> want(static_cast<std::size_t>(c.num_queries) * c.num_heads * c.v_dim, kNaN);
      std::vector<float> got = want;
      AttentionParams p;
      p.num_queries = c.num_queries;
      p.num_keys = num_keys;
      p.q_offset = c.q_offset;
      p.num_heads = c.num_heads;
      p.qk_dim = c.qk_dim;
      p.v_dim = c.v_dim;
      p.q = q.data();
      p.k = k.data();
      p.v = v.data();
      p.scale = 1.0f / std::sqrt(static_cast<float>(c.qk_dim));
      p.out = want.data();
      p.causal = causal;
      ref().attention(p);
      p.out = got.data();
      impl().attention(p);
      EXPECT_LE(NormalizedError(got, want), kTolerance)
          << "queries=" << c.num_queries << " q_offset=" << c.q_offset << " heads=" << c.num_heads << " qk=" << c.qk_dim
          << " v=" << c.v_dim << " causal=" << causal;
    }
  }
}

TEST_P(KernelsTest, RouteTopkMatchesReference) {
  struct Case {
    int num_tokens, num_experts, num_groups, topk_group, top_k;
    bool normalize;
    float scaling;
  };
  const std::vector<Case> cases = {
      {5, 128, 8, 4, 8, true, 1.0f},
      {3, 64, 1, 1, 6, false, 2.5f},
      {4, 16, 16, 4, 4, true, 1.5f},
      {2, 8, 4, 2, 3, true, 2.0f},
  };
  std::normal_distribution<float> dist(0.0f, 2.0f);
  for (const Case& c : cases) {
    std::vector<float> logits(static_cast<std::size_t>(c.num_tokens) * c.num_experts);
    // Rounded to quarters so that ties occur.
    for (float& x : logits) x = std::round(4.0f * dist(rng_)) / 4.0f;
    RouterParams p;
    p.num_tokens = c.num_tokens;
    p.num_experts = c.num_experts;
    p.num_groups = c.num_groups;
    p.topk_group = c.topk_group;
    p.top_k = c.top_k;
    p.normalize = c.normalize;
    p.scaling = c.scaling;
    const RouterResult want = Route(ref(), p, logits);
    const RouterResult got = Route(impl(), p, logits);
    EXPECT_EQ(got.ids, want.ids) << "experts=" << c.num_experts;
    EXPECT_LE(NormalizedError(got.weights, want.weights), kTolerance);
  }
}

}  // namespace
}  // namespace sirocco::kernels
