// The CUDA backend against the CPU reference (Backend::kRef, the spec), op by
// op, over shape sweeps that include Mistral Small 4's dimensions: hidden
// 4096, 32 heads, kv_rank 256 + rope 64, qk 128 / v 128, 128 experts top-4,
// contexts up to 4096 in 16- and 64-entry blocks with fragmented tables.
//
// Every test of CudaOpsTest skips with "no CUDA device" when
// CudaDeviceAvailable() is false, so on machines without a GPU they report
// SKIPPED, never passed. CudaLauncherChecks needs no device: it checks the
// launchers' host-side shape validation, which runs before any CUDA call.
//
// Error measure (as tests/unit/kernels/ops_test.cc):
//   NormalizedError = max|got - want| / max(1, max|want|).
// float32 ops: 1e-5 (both sides differ only in summation order and in the
// last ulps of exp/sin/cos); float32 gemms: 1e-5 * max(1, sqrt(K / 256)), the
// random-walk growth of rounding in K-term sums. bf16 gemms get the inputs
// already rounded to bf16 on both sides, so only accumulation differs: 1e-3
// for a float32 result (>10x the float32 bound, for tensor-core accumulation
// order), 1e-2 for a bf16 result (one bf16 rounding of the output is 2^-9
// relative).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_memory.h"
#include "kernels/kernels.h"
#include "tests/gpu/cuda_test_util.h"
#include "tests/unit/kernels/kernel_test_util.h"

namespace sirocco::kernels::cuda {
namespace {

using namespace ::sirocco::kernels::test_util;  // NOLINT: the shared test helpers
using namespace ::sirocco::kernels::cuda::test_util;  // NOLINT: device buffers

constexpr double kBf16FloatOutTolerance = 1e-3;
constexpr double kBf16OutTolerance = 1e-2;

#define SIROCCO_ASSERT_OK(expr)                         \
  do {                                                  \
    const ::absl::Status assert_status_ = (expr);       \
    ASSERT_TRUE(assert_status_.ok()) << assert_status_; \
  } while (false)

// ---------------------------------------------------------------------------
// Host-side helpers (the shared ones are in tests/unit/kernels/kernel_test_util.h).

// bf16 round-to-nearest-even, as __float2bfloat16 and torch do.
Bf16 ToBf16(float f) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if (std::isnan(f)) return Bf16{0x7fc0};
  return Bf16{static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
float FromBf16(Bf16 b) { return std::bit_cast<float>(static_cast<std::uint32_t>(b.bits) << 16); }

class CudaOpsTest : public testing::Test {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  }

  const KernelTable& ref() const { return Get(Backend::kRef); }

  std::mt19937 rng_{20240611u};
};

// ---------------------------------------------------------------------------
// Dense products.

struct GemmShape {
  int m;
  int n;
  int k;
};

std::vector<GemmShape> GemmShapes() {
  std::vector<GemmShape> shapes;
  for (int m : {1, 2, 3, 17}) {
    for (int n : {1, 7, 33}) {
      for (int k : {1, 5, 64, 257}) shapes.push_back({m, n, k});
    }
  }
  // Model shapes: decode (m = 1) and batched projections at hidden 4096, the
  // q_lora / kv paths and a routed expert's 2048-wide products.
  for (GemmShape s : {GemmShape{1, 4096, 4096}, GemmShape{3, 17, 4096}, GemmShape{64, 1024, 4096},
                      GemmShape{16, 2048, 4096}, GemmShape{16, 4096, 2048}, GemmShape{130, 129, 300}}) {
    shapes.push_back(s);
  }
  return shapes;
}

// Model-sized products cost the scalar reference about a second each, so they
// run in one configuration (padded, beta = 1); the small shapes cover the rest.
bool IsBig(const GemmShape& s) { return static_cast<double>(s.m) * s.n * s.k > 2e7; }

void CheckGemm(Blas& blas, const KernelTable& ref, bool transposed_b, std::mt19937& rng) {
  for (const GemmShape& s : GemmShapes()) {
    for (int pad : {0, 3}) {
      for (float beta : {0.0f, 1.0f}) {
        if (IsBig(s) && (pad == 0 || beta == 0.0f)) continue;
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
        (transposed_b ? ref.gemm_nt : ref.gemm_nn)(s.m, s.n, s.k, a.data.data(), a.ld, b.data.data(), b.ld, beta,
                                                   want.data.data(), want.ld);
        const DeviceBuffer da = ToDevice(a.data);
        const DeviceBuffer db = ToDevice(b.data);
        const DeviceBuffer dc = ToDevice(c.data);
        const absl::Status st = transposed_b ? blas.GemmNt(s.m, s.n, s.k, da.as<float>(), a.ld, db.as<float>(), b.ld,
                                                           beta, dc.as<float>(), c.ld, nullptr)
                                             : blas.GemmNn(s.m, s.n, s.k, da.as<float>(), a.ld, db.as<float>(), b.ld,
                                                           beta, dc.as<float>(), c.ld, nullptr);
        ASSERT_TRUE(st.ok()) << st;
        c.data = ToHost<float>(dc, c.data.size());
        EXPECT_LE(NormalizedError(c.Logical(), want.Logical()), GemmTolerance(s.k))
            << "m=" << s.m << " n=" << s.n << " k=" << s.k << " pad=" << pad << " beta=" << beta;
        EXPECT_TRUE(c.PaddingIntact()) << "m=" << s.m << " n=" << s.n << " k=" << s.k;
      }
    }
  }
}

TEST_F(CudaOpsTest, GemmNtMatchesReference) {
  absl::StatusOr<std::unique_ptr<Blas>> blas = Blas::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  CheckGemm(**blas, ref(), true, rng_);
}

TEST_F(CudaOpsTest, GemmNnMatchesReference) {
  absl::StatusOr<std::unique_ptr<Blas>> blas = Blas::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  CheckGemm(**blas, ref(), false, rng_);
}

TEST_F(CudaOpsTest, GemmWithEmptyInnerDimensionScalesC) {
  absl::StatusOr<std::unique_ptr<Blas>> blas = Blas::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  const DeviceBuffer dummy = ToDevice(std::vector<float>(4, 0.0f));
  for (float beta : {0.0f, 2.0f}) {
    // 2 x 3 inside ld 4; the padding column must survive.
    const std::vector<float> c0 = {1, 2, 3, kSentinel, 4, 5, 6, kSentinel};
    std::vector<float> c =
        beta == 0.0f ? std::vector<float>{kNaN, kNaN, kNaN, kSentinel, kNaN, kNaN, kNaN, kSentinel} : c0;
    DeviceBuffer dc = ToDevice(c);
    SIROCCO_ASSERT_OK(
        (*blas)->GemmNt(2, 3, 0, dummy.as<float>(), 1, dummy.as<float>(), 1, beta, dc.as<float>(), 4, nullptr));
    c = ToHost<float>(dc, c.size());
    for (int i : {0, 1, 2, 4, 5, 6}) EXPECT_EQ(c[i], beta * c0[i]) << "beta=" << beta << " i=" << i;
    EXPECT_EQ(c[3], kSentinel);
    EXPECT_EQ(c[7], kSentinel);
  }
}

TEST_F(CudaOpsTest, GemmNtBf16MatchesReference) {
  absl::StatusOr<std::unique_ptr<Blas>> blas = Blas::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  const std::vector<GemmShape> shapes = {{1, 1, 1},        {3, 7, 5},        {17, 33, 257},  {1, 4096, 4096},
                                         {64, 1024, 4096}, {16, 4096, 2048}, {130, 129, 300}};
  for (const GemmShape& s : shapes) {
    for (float beta : {0.0f, 1.0f}) {
      for (bool bf16_out : {false, true}) {
        if (IsBig(s) && beta == 0.0f) continue;
        const int pad = 8;  // keeps rows 16-byte aligned for the tensor-core paths, as real buffers are
        Padded a(s.m, s.k, s.k + pad);
        Padded b(s.n, s.k, s.k + pad);
        Padded c(s.m, s.n, s.n + pad);
        a.Fill(rng_);
        b.Fill(rng_);
        if (beta == 0.0f) {
          c.FillWith(kNaN);  // beta == 0: C must not be read
        } else {
          c.Fill(rng_);
        }
        // Round every input to bf16 first: the reference then sees exactly
        // the device's operands.
        for (Padded* x : {&a, &b, &c}) {
          for (float& v : x->data) {
            if (v != kSentinel) v = FromBf16(ToBf16(v));
          }
        }
        Padded want = c;
        ref().gemm_nt(s.m, s.n, s.k, a.data.data(), a.ld, b.data.data(), b.ld, beta, want.data.data(), want.ld);

        std::vector<Bf16> a16(a.data.size());
        std::vector<Bf16> b16(b.data.size());
        std::transform(a.data.begin(), a.data.end(), a16.begin(), ToBf16);
        std::transform(b.data.begin(), b.data.end(), b16.begin(), ToBf16);
        const DeviceBuffer da = ToDevice(a16);
        const DeviceBuffer db = ToDevice(b16);
        if (bf16_out) {
          std::vector<Bf16> c16(c.data.size());
          std::transform(c.data.begin(), c.data.end(), c16.begin(), ToBf16);
          DeviceBuffer dc = ToDevice(c16);
          SIROCCO_ASSERT_OK((*blas)->GemmNtBf16(s.m, s.n, s.k, da.as<Bf16>(), a.ld, db.as<Bf16>(), b.ld, beta,
                                                dc.as<Bf16>(), c.ld, nullptr));
          const std::vector<Bf16> out = ToHost<Bf16>(dc, c16.size());
          // kSentinel has no exact bf16 form: compare the padding as bits.
          bool padding_intact = true;
          for (int r = 0; r < c.rows; ++r) {
            for (int col = c.cols; col < c.ld; ++col) {
              const std::size_t idx = static_cast<std::size_t>(r) * c.ld + col;
              padding_intact = padding_intact && out[idx].bits == c16[idx].bits;
            }
          }
          EXPECT_TRUE(padding_intact);
          std::transform(out.begin(), out.end(), c.data.begin(), FromBf16);
          EXPECT_LE(NormalizedError(c.Logical(), want.Logical()), kBf16OutTolerance)
              << "bf16 out m=" << s.m << " n=" << s.n << " k=" << s.k << " beta=" << beta;
        } else {
          DeviceBuffer dc = ToDevice(c.data);
          SIROCCO_ASSERT_OK((*blas)->GemmNtBf16(s.m, s.n, s.k, da.as<Bf16>(), a.ld, db.as<Bf16>(), b.ld, beta,
                                                dc.as<float>(), c.ld, nullptr));
          c.data = ToHost<float>(dc, c.data.size());
          EXPECT_TRUE(c.PaddingIntact());
          EXPECT_LE(NormalizedError(c.Logical(), want.Logical()), kBf16FloatOutTolerance)
              << "f32 out m=" << s.m << " n=" << s.n << " k=" << s.k << " beta=" << beta;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Row-wise and elementwise ops.

TEST_F(CudaOpsTest, RmsNormMatchesReference) {
  for (int rows : {1, 3, 64}) {
    for (int dim : {1, 2, 7, 8, 9, 31, 64, 256, 1000, 1024, 4096}) {
      for (int pad : {0, 5}) {
        Padded x(rows, dim, dim + pad);
        x.Fill(rng_, -3.0f, 3.0f);
        const std::vector<float> w = RandomVector(dim, rng_, 0.5f, 1.5f);
        Padded want(rows, dim, dim + 2 * pad);
        ref().rms_norm(rows, dim, x.data.data(), x.ld, w.data(), 1e-6f, want.data.data(), want.ld);

        const DeviceBuffer dx = ToDevice(x.data);
        const DeviceBuffer dw = ToDevice(w);
        Padded got(rows, dim, dim + 2 * pad);
        const DeviceBuffer dy = ToDevice(got.data);
        SIROCCO_ASSERT_OK(
            RmsNorm(rows, dim, dx.as<float>(), x.ld, dw.as<float>(), 1e-6f, dy.as<float>(), got.ld, nullptr));
        got.data = ToHost<float>(dy, got.data.size());
        EXPECT_LE(NormalizedError(got.Logical(), want.Logical()), kTolerance)
            << "rows=" << rows << " dim=" << dim << " pad=" << pad;
        EXPECT_TRUE(got.PaddingIntact());

        // y may alias x.
        SIROCCO_ASSERT_OK(
            RmsNorm(rows, dim, dx.as<float>(), x.ld, dw.as<float>(), 1e-6f, dx.as<float>(), x.ld, nullptr));
        x.data = ToHost<float>(dx, x.data.size());
        EXPECT_LE(NormalizedError(x.Logical(), want.Logical()), kTolerance)
            << "in place, rows=" << rows << " dim=" << dim;
        EXPECT_TRUE(x.PaddingIntact());
      }
    }
  }
}

TEST_F(CudaOpsTest, RopeMatchesReference) {
  // rows_per_pos 32: one position shared by the model's 32 query heads.
  for (int rows_per_pos : {1, 4, 32}) {
    const int rows = 3 * rows_per_pos + (rows_per_pos > 1 ? 1 : 0);
    const int num_pos = (rows + rows_per_pos - 1) / rows_per_pos;
    for (int dim : {2, 4, 14, 16, 18, 64, 128}) {
      for (int pad : {0, 3}) {
        for (float attn_factor : {1.0f, 1.25f}) {
          std::vector<float> inv_freq(dim / 2);
          for (int p = 0; p < dim / 2; ++p) inv_freq[p] = std::pow(10000.0f, -2.0f * p / dim);
          // Position 0 (identity), a typical one and a 1M-token one (YaRN's
          // range), where float(pos) * inv_freq is a large angle.
          std::vector<std::int32_t> pos = {0, 1048575};
          std::uniform_int_distribution<std::int32_t> pos_dist(0, 32767);
          while (static_cast<int>(pos.size()) < num_pos) pos.push_back(pos_dist(rng_));
          pos.resize(num_pos);
          Padded want(rows, dim, dim + pad);
          want.Fill(rng_);
          const DeviceBuffer dx = ToDevice(want.data);
          const DeviceBuffer dpos = ToDevice(pos);
          const DeviceBuffer dfreq = ToDevice(inv_freq);
          ref().rope_interleaved(rows, rows_per_pos, dim, want.data.data(), want.ld, pos.data(), inv_freq.data(),
                                 attn_factor);
          SIROCCO_ASSERT_OK(RopeInterleaved(rows, rows_per_pos, dim, dx.as<float>(), want.ld, dpos.as<std::int32_t>(),
                                            dfreq.as<float>(), attn_factor, nullptr));
          Padded got(rows, dim, dim + pad);
          got.data = ToHost<float>(dx, got.data.size());
          EXPECT_LE(NormalizedError(got.Logical(), want.Logical()), kTolerance)
              << "rows_per_pos=" << rows_per_pos << " dim=" << dim << " pad=" << pad;
          EXPECT_TRUE(got.PaddingIntact());
        }
      }
    }
  }
}

TEST_F(CudaOpsTest, SiluMulMatchesReference) {
  for (int rows : {1, 4, 33}) {
    for (int n : {1, 7, 8, 9, 100, 1024, 2048, 12288}) {
      for (int pad : {0, 3}) {
        Padded gate(rows, n, n + pad);
        Padded up(rows, n, n + 2 * pad);
        gate.Fill(rng_, -20.0f, 20.0f);
        up.Fill(rng_, -2.0f, 2.0f);
        Padded want(rows, n, n + pad);
        ref().silu_mul(rows, n, gate.data.data(), gate.ld, up.data.data(), up.ld, want.data.data(), want.ld);
        const DeviceBuffer dg = ToDevice(gate.data);
        const DeviceBuffer du = ToDevice(up.data);
        Padded got(rows, n, n + pad);
        const DeviceBuffer dout = ToDevice(got.data);
        SIROCCO_ASSERT_OK(
            SiluMul(rows, n, dg.as<float>(), gate.ld, du.as<float>(), up.ld, dout.as<float>(), got.ld, nullptr));
        got.data = ToHost<float>(dout, got.data.size());
        EXPECT_LE(NormalizedError(got.Logical(), want.Logical()), kTolerance)
            << "rows=" << rows << " n=" << n << " pad=" << pad;
        EXPECT_TRUE(got.PaddingIntact());
      }
    }
  }
}

TEST_F(CudaOpsTest, GeluMulMatchesReference) {
  for (bool with_up : {true, false}) {
    for (int rows : {1, 4, 33}) {
      for (int n : {1, 7, 100, 4096}) {
        Padded gate(rows, n, n + 3);
        Padded up(rows, n, n + 1);
        gate.Fill(rng_, -12.0f, 12.0f);
        up.Fill(rng_, -2.0f, 2.0f);
        Padded want(rows, n, n + 2);
        ref().gelu_mul(rows, n, gate.data.data(), gate.ld, with_up ? up.data.data() : nullptr, up.ld, want.data.data(),
                       want.ld);
        const DeviceBuffer dg = ToDevice(gate.data);
        const DeviceBuffer du = ToDevice(up.data);
        Padded got(rows, n, n + 2);
        const DeviceBuffer dout = ToDevice(got.data);
        SIROCCO_ASSERT_OK(GeluMul(rows, n, dg.as<float>(), gate.ld, with_up ? du.as<float>() : nullptr, up.ld,
                                  dout.as<float>(), got.ld, nullptr));
        got.data = ToHost<float>(dout, got.data.size());
        EXPECT_LE(NormalizedError(got.Logical(), want.Logical()), kTolerance)
            << "up=" << with_up << " rows=" << rows << " n=" << n;
        EXPECT_TRUE(got.PaddingIntact());
      }
    }
  }
}

TEST_F(CudaOpsTest, SiluMulInPlaceOverFusedGateUp) {
  // The model writes over gate, with gate and up side by side in one row.
  const int rows = 3;
  const int n = 37;
  Padded fused(rows, 2 * n, 2 * n + 1);
  fused.Fill(rng_, -8.0f, 8.0f);
  Padded want(rows, n, n);
  ref().silu_mul(rows, n, fused.data.data(), fused.ld, fused.data.data() + n, fused.ld, want.data.data(), want.ld);
  const DeviceBuffer d = ToDevice(fused.data);
  SIROCCO_ASSERT_OK(
      SiluMul(rows, n, d.as<float>(), fused.ld, d.as<float>() + n, fused.ld, d.as<float>(), fused.ld, nullptr));
  fused.data = ToHost<float>(d, fused.data.size());
  Padded got(rows, n, n);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < n; ++c) got.at(r, c) = fused.at(r, c);
  }
  EXPECT_LE(NormalizedError(got.Logical(), want.Logical()), kTolerance);
  EXPECT_TRUE(fused.PaddingIntact());
}

TEST_F(CudaOpsTest, SiluMulAtExtremes) {
  // exp(-g) overflows for g < -88.7: silu tends to -0, not NaN.
  const std::vector<float> gate = {-1000,  -104, -100, -89, -88, -87, -20,  -1e-30f, 0,
                                   1e-30f, 20,   87,   88,  89,  100, 1000, kInf};
  const std::vector<float> up(gate.size(), 1.5f);
  const int n = static_cast<int>(gate.size());
  std::vector<float> want(gate.size());
  ref().silu_mul(1, n, gate.data(), n, up.data(), n, want.data(), n);
  const DeviceBuffer dg = ToDevice(gate);
  const DeviceBuffer du = ToDevice(up);
  const DeviceBuffer dout = PoisonedDevice<float>(gate.size());
  SIROCCO_ASSERT_OK(SiluMul(1, n, dg.as<float>(), n, du.as<float>(), n, dout.as<float>(), n, nullptr));
  const std::vector<float> got = ToHost<float>(dout, gate.size());
  for (int i = 0; i < n; ++i) {
    if (std::isinf(want[i])) {
      EXPECT_EQ(got[i], want[i]) << "gate=" << gate[i];
    } else {
      EXPECT_NEAR(got[i], want[i], 1e-6 * std::max(1.0f, std::abs(want[i]))) << "gate=" << gate[i];
    }
  }
}

TEST_F(CudaOpsTest, AxpyMatchesReference) {
  for (int n : {1, 7, 8, 9, 1000, 4096, 1 << 20}) {
    for (float alpha : {0.5f, -3.0f}) {
      const std::vector<float> x = RandomVector(n, rng_);
      Padded want(1, n, n + 8);  // 8 sentinels past n catch writes beyond the end
      want.Fill(rng_, -2.0f, 2.0f);
      const DeviceBuffer dx = ToDevice(x);
      const DeviceBuffer dy = ToDevice(want.data);
      ref().axpy(n, alpha, x.data(), want.data.data());
      SIROCCO_ASSERT_OK(Axpy(n, alpha, dx.as<float>(), dy.as<float>(), nullptr));
      Padded got(1, n, n + 8);
      got.data = ToHost<float>(dy, got.data.size());
      EXPECT_LE(NormalizedError(got.Logical(), want.Logical()), kTolerance) << "n=" << n;
      EXPECT_TRUE(got.PaddingIntact()) << "n=" << n;
    }
  }
}

TEST_F(CudaOpsTest, SoftmaxMatchesReference) {
  for (int rows : {1, 3}) {
    // 131072: a vocabulary-sized row (sampling).
    for (int n : {1, 2, 7, 8, 9, 33, 1000, 32769, 131072}) {
      for (int pad : {0, 3}) {
        Padded want(rows, n, n + pad);
        want.Fill(rng_, -30.0f, 30.0f);
        for (int c = 1; c < n; c += 3) want.at(rows - 1, c) = -kInf;  // masked entries, first kept finite
        const DeviceBuffer dx = ToDevice(want.data);
        ref().softmax(rows, n, want.data.data(), want.ld);
        SIROCCO_ASSERT_OK(Softmax(rows, n, dx.as<float>(), want.ld, nullptr));
        Padded got(rows, n, n + pad);
        got.data = ToHost<float>(dx, got.data.size());
        EXPECT_LE(NormalizedError(got.Logical(), want.Logical()), kTolerance)
            << "rows=" << rows << " n=" << n << " pad=" << pad;
        EXPECT_TRUE(got.PaddingIntact());
      }
    }
  }
}

TEST_F(CudaOpsTest, SoftmaxTailIsRelativelyAccurate) {
  // Rows [0, -t1, ..., -t8]: the small probabilities check the device expf to
  // relative 1e-6 over the whole normal range of results.
  constexpr int kN = 9;
  std::vector<float> want;
  for (float t = 0.0f; t < 87.0f; t += 0.0371f) {
    want.push_back(0.0f);
    for (int i = 1; i < kN; ++i) want.push_back(-t - 0.01f * static_cast<float>(i));
  }
  const int rows = static_cast<int>(want.size()) / kN;
  const DeviceBuffer dx = ToDevice(want);
  ref().softmax(rows, kN, want.data(), kN);
  SIROCCO_ASSERT_OK(Softmax(rows, kN, dx.as<float>(), kN, nullptr));
  const std::vector<float> got = ToHost<float>(dx, want.size());
  double worst = 0.0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (want[i] < std::numeric_limits<float>::min()) continue;  // denormal results
    worst = std::max(worst, std::abs(static_cast<double>(got[i]) - want[i]) / want[i]);
  }
  EXPECT_LE(worst, 1e-6);
}

// ---------------------------------------------------------------------------
// Router.

// Whether two groups of a token have group scores (sums of their two largest
// softmax scores) that differ by no more than rounding: then the kept groups
// would depend on summation order, which legitimately differs between the
// device and the reference. Exact ties (the same two logits) are fine: both
// sides compute them identically and break them toward the lower index.
bool HasNearTiedGroups(const float* logits, int num_experts, int num_groups) {
  if (num_groups == 1) return false;
  const int group_size = num_experts / num_groups;
  std::vector<std::pair<float, float>> top2(num_groups);
  std::vector<double> sums(num_groups);
  for (int g = 0; g < num_groups; ++g) {
    std::vector<float> l(logits + g * group_size, logits + (g + 1) * group_size);
    std::sort(l.begin(), l.end(), std::greater<>());
    top2[g] = {l[0], group_size > 1 ? l[1] : -kInf};
    sums[g] = std::exp(static_cast<double>(l[0])) + (group_size > 1 ? std::exp(static_cast<double>(l[1])) : 0.0);
  }
  double max_sum = 0.0;
  for (double x : sums) max_sum = std::max(max_sum, x);
  for (int g = 0; g < num_groups; ++g) {
    for (int h = g + 1; h < num_groups; ++h) {
      if (top2[g] != top2[h] && std::abs(sums[g] - sums[h]) <= 1e-5 * max_sum) return true;
    }
  }
  return false;
}

TEST_F(CudaOpsTest, RouteTopkMatchesReference) {
  struct Case {
    int num_tokens, num_experts, num_groups, topk_group, top_k;
    bool normalize;
    float scaling;
  };
  const std::vector<Case> cases = {
      {5, 128, 8, 4, 8, true, 1.0f},     {3, 64, 1, 1, 6, false, 2.5f}, {4, 16, 16, 4, 4, true, 1.5f},
      {2, 8, 4, 2, 3, true, 2.0f},       {1, 1, 1, 1, 1, true, 1.0f},   {7, 6, 2, 1, 2, true, 1.0f},
      {257, 128, 1, 1, 4, true, 1.0f},    // Mistral Small 4: 128 experts, top-4, one group
      {64, 256, 8, 4, 8, true, 2.5f},     // DeepSeek-V3-style grouping
      {3, 1024, 32, 3, 16, false, 1.0f},  // the launcher's largest expert count
  };
  std::normal_distribution<float> dist(0.0f, 2.0f);
  for (const Case& c : cases) {
    std::vector<float> logits(static_cast<std::size_t>(c.num_tokens) * c.num_experts);
    // Rounded to quarters so that exact ties occur (they must break toward
    // the lower index), while distinct scores stay far apart.
    for (int t = 0; t < c.num_tokens; ++t) {
      float* row = logits.data() + static_cast<std::size_t>(t) * c.num_experts;
      do {
        for (int e = 0; e < c.num_experts; ++e) row[e] = std::round(4.0f * dist(rng_)) / 4.0f;
      } while (HasNearTiedGroups(row, c.num_experts, c.num_groups));
    }
    const std::size_t out_size = static_cast<std::size_t>(c.num_tokens) * c.top_k;
    std::vector<std::int32_t> want_ids(out_size, -7);
    std::vector<float> want_weights(out_size, kNaN);
    kernels::RouterParams rp;
    rp.num_tokens = c.num_tokens;
    rp.num_experts = c.num_experts;
    rp.num_groups = c.num_groups;
    rp.topk_group = c.topk_group;
    rp.top_k = c.top_k;
    rp.normalize = c.normalize;
    rp.scaling = c.scaling;
    rp.logits = logits.data();
    rp.expert_ids = want_ids.data();
    rp.expert_weights = want_weights.data();
    ref().route_topk(rp);

    const DeviceBuffer dlogits = ToDevice(logits);
    const DeviceBuffer dids = ToDevice(std::vector<std::int32_t>(out_size, -7));
    const DeviceBuffer dweights = PoisonedDevice<float>(out_size);
    RouterParams p;
    p.num_tokens = c.num_tokens;
    p.num_experts = c.num_experts;
    p.num_groups = c.num_groups;
    p.topk_group = c.topk_group;
    p.top_k = c.top_k;
    p.normalize = c.normalize;
    p.scaling = c.scaling;
    p.logits = dlogits.as<float>();
    p.expert_ids = dids.as<std::int32_t>();
    p.expert_weights = dweights.as<float>();
    SIROCCO_ASSERT_OK(RouteTopk(p, nullptr));
    EXPECT_EQ(ToHost<std::int32_t>(dids, out_size), want_ids)
        << "experts=" << c.num_experts << " groups=" << c.num_groups;
    EXPECT_LE(NormalizedError(ToHost<float>(dweights, out_size), want_weights), kTolerance)
        << "experts=" << c.num_experts;
  }
}

// ---------------------------------------------------------------------------
// MLA attention over the paged latent cache.

// The sequences of the queries live in a cache whose blocks are handed out in
// shuffled order, so every block table is fragmented.
struct MlaCase {
  int num_heads;
  int kv_rank;
  int rope_dim;
  int block_size;
  std::vector<int> ctx_lens;
  bool shared_sequence;  // every query reads the same sequence (absorbed prefill)
  float scale;           // 0: 1 / sqrt(kv_rank + rope_dim)
  int max_ctx_hint;      // 0: the true maximum; else passed as max_ctx_len
};

void CheckMla(const KernelTable& ref, const MlaCase& c, std::mt19937& rng) {
  const int nq = static_cast<int>(c.ctx_lens.size());
  const int entry_width = c.kv_rank + c.rope_dim;
  const int num_seqs = c.shared_sequence ? 1 : nq;
  const int max_ctx = *std::max_element(c.ctx_lens.begin(), c.ctx_lens.end());
  std::vector<int> seq_blocks(num_seqs);
  int total_blocks = 3;  // a few blocks no sequence uses
  for (int s = 0; s < num_seqs; ++s) {
    const int ctx = c.shared_sequence ? max_ctx : c.ctx_lens[s];
    seq_blocks[s] = (ctx + c.block_size - 1) / c.block_size;
    total_blocks += seq_blocks[s];
  }
  std::vector<std::int32_t> block_ids(total_blocks);
  std::iota(block_ids.begin(), block_ids.end(), 0);
  std::shuffle(block_ids.begin(), block_ids.end(), rng);
  // All tables back to back in one buffer; query i's table starts at offset[seq(i)].
  std::vector<std::int32_t> flat_tables;
  std::vector<std::size_t> seq_offset(num_seqs);
  for (int s = 0, next = 0; s < num_seqs; ++s) {
    seq_offset[s] = flat_tables.size();
    for (int b = 0; b < seq_blocks[s]; ++b) flat_tables.push_back(block_ids[next++]);
  }
  std::vector<const std::int32_t*> host_tables(nq);
  for (int i = 0; i < nq; ++i) host_tables[i] = flat_tables.data() + seq_offset[c.shared_sequence ? 0 : i];

  const std::vector<float> cache =
      RandomVector(static_cast<std::size_t>(total_blocks) * c.block_size * entry_width, rng);
  const std::vector<float> q_lat = RandomVector(static_cast<std::size_t>(nq) * c.num_heads * c.kv_rank, rng);
  const std::vector<float> q_rope = RandomVector(static_cast<std::size_t>(nq) * c.num_heads * c.rope_dim, rng);
  const std::vector<std::int32_t> ctx_lens(c.ctx_lens.begin(), c.ctx_lens.end());
  const float scale = c.scale != 0.0f ? c.scale : 1.0f / std::sqrt(static_cast<float>(entry_width));
  const std::size_t out_size = static_cast<std::size_t>(nq) * c.num_heads * c.kv_rank;

  std::vector<float> want(out_size, kNaN);
  kernels::MlaAttentionParams rp;
  rp.num_queries = nq;
  rp.num_heads = c.num_heads;
  rp.kv_rank = c.kv_rank;
  rp.rope_dim = c.rope_dim;
  rp.block_size = c.block_size;
  rp.q_lat = q_lat.data();
  rp.q_rope = q_rope.data();
  rp.cache = cache.data();
  rp.block_tables = host_tables.data();
  rp.ctx_lens = ctx_lens.data();
  rp.scale = scale;
  rp.out = want.data();
  ref.mla_attention(rp);

  const DeviceBuffer dcache = ToDevice(cache);
  const DeviceBuffer dq_lat = ToDevice(q_lat);
  const DeviceBuffer dq_rope = ToDevice(q_rope.empty() ? std::vector<float>(1) : q_rope);
  const DeviceBuffer dflat = ToDevice(flat_tables);
  std::vector<const std::int32_t*> device_tables(nq);
  for (int i = 0; i < nq; ++i) device_tables[i] = dflat.as<std::int32_t>() + seq_offset[c.shared_sequence ? 0 : i];
  const DeviceBuffer dtables = ToDevice(device_tables);
  const DeviceBuffer dctx = ToDevice(ctx_lens);
  const DeviceBuffer dout = PoisonedDevice<float>(out_size);  // every output must be written

  MlaAttentionParams p;
  p.num_queries = nq;
  p.num_heads = c.num_heads;
  p.kv_rank = c.kv_rank;
  p.rope_dim = c.rope_dim;
  p.block_size = c.block_size;
  p.max_ctx_len = c.max_ctx_hint != 0 ? c.max_ctx_hint : max_ctx;
  p.q_lat = dq_lat.as<float>();
  p.q_rope = dq_rope.as<float>();
  p.cache = dcache.as<float>();
  p.block_tables = dtables.as<const std::int32_t*>();
  p.ctx_lens = dctx.as<std::int32_t>();
  p.scale = scale;
  p.out = dout.as<float>();
  absl::StatusOr<DeviceBuffer> workspace = DeviceBuffer::Allocate(MlaAttentionWorkspaceBytes(p));
  ASSERT_TRUE(workspace.ok()) << workspace.status();
  p.workspace = workspace->data();
  p.workspace_bytes = workspace->size();
  SIROCCO_ASSERT_OK(MlaAttention(p, nullptr));
  EXPECT_LE(NormalizedError(ToHost<float>(dout, out_size), want), kTolerance)
      << "heads=" << c.num_heads << " kv_rank=" << c.kv_rank << " rope=" << c.rope_dim << " block_size=" << c.block_size
      << " queries=" << nq << " max_ctx=" << max_ctx << " hint=" << p.max_ctx_len << " workspace=" << p.workspace_bytes;
}

TEST_F(CudaOpsTest, MlaAttentionMatchesReferenceOnSmallShapes) {
  const std::vector<MlaCase> cases = {
      {1, 8, 2, 1, {1}, false, 0.0f, 0},
      {3, 13, 5, 1, {7, 40, 1}, false, 0.0f, 0},
      {4, 16, 8, 16, {16, 17, 33, 100}, false, 0.0f, 0},
      {5, 20, 0, 16, {9, 48}, false, 0.0f, 0},  // no rope part
      {2, 9, 3, 5, {12, 3, 64}, false, 0.0f, 0},
      {6, 24, 8, 16, {20, 21, 22}, true, 0.0f, 0},
      {7, 40, 16, 16, {65, 31}, false, 1.0f, 0},  // peaked softmax
      {9, 64, 16, 16, {200, 5}, false, 0.0f, 0},  // 9 heads: 4 heads per warp, partly filled
      {8, 256, 64, 1, {70, 2}, false, 0.0f, 0},
      {2, 512, 64, 16, {300, 1}, false, 0.0f, 0},  // the widest entry supported (DeepSeek-V3's 576)
  };
  for (const MlaCase& c : cases) CheckMla(ref(), c, rng_);
}

TEST_F(CudaOpsTest, MlaAttentionMatchesReferenceAtModelShape) {
  // Mistral Small 4: 32 heads, kv_rank 256, rope 64; decode batches of mixed
  // lengths (tile edges at 32, block edges at 16/64, up to 4096).
  const std::vector<MlaCase> cases = {
      {32, 256, 64, 16, {1, 31, 32, 33, 300, 1023, 4096}, false, 0.0f, 0},
      {32, 256, 64, 64, {4096, 17, 2000, 64, 65}, false, 0.0f, 0},
      {32, 256, 64, 16, {257}, false, 0.25f, 0},
      // Absorbed prefill: 40 queries of one sequence at increasing lengths.
      {32, 256, 64, 64,
       [] {
         std::vector<int> v;
         for (int i = 0; i < 40; ++i) v.push_back(600 + 13 * i);
         return v;
       }(),
       true, 0.0f, 0},
  };
  for (const MlaCase& c : cases) CheckMla(ref(), c, rng_);
}

TEST_F(CudaOpsTest, MlaAttentionMatchesReferenceAtDecodeBatch64) {
  std::uniform_int_distribution<int> ctx_dist(1, 1024);
  MlaCase c{32, 256, 64, 16, {}, false, 0.0f, 0};
  for (int i = 0; i < 64; ++i) c.ctx_lens.push_back(ctx_dist(rng_));
  CheckMla(ref(), c, rng_);
}

TEST_F(CudaOpsTest, MlaAttentionIsExactWhateverTheSplitHint) {
  // max_ctx_len only picks the split count: 1 gives a single split that must
  // still walk all 4096 entries; a larger hint gives splits with no tiles.
  for (int hint : {1, 100, 4096, 100000}) {
    CheckMla(ref(), MlaCase{32, 256, 64, 64, {4096, 5, 700}, false, 0.0f, hint}, rng_);
    CheckMla(ref(), MlaCase{3, 13, 5, 16, {4096, 5, 700}, false, 0.0f, hint}, rng_);
  }
}

// ---------------------------------------------------------------------------
// Expanded attention (causal prefill; bidirectional vision patches).

struct AttentionCase {
  int num_queries;
  int q_offset;
  int extra_keys;  // keys beyond the last query's position: visible only without causality
  int num_heads;
  int qk_dim;
  int v_dim;
};

TEST_F(CudaOpsTest, AttentionMatchesReference) {
  const std::vector<AttentionCase> cases = {
      {1, 0, 0, 1, 1, 1},          {5, 0, 0, 2, 16, 16},     {4, 3, 2, 3, 24, 20},    {7, 40, 0, 2, 13, 9},
      {33, 1, 0, 4, 64, 64},       {3, 100, 5, 1, 192, 128}, {65, 0, 0, 2, 320, 320}, {40, 7, 1, 2, 320, 1},
      {300, 0, 0, 32, 128, 128},    // Mistral Small 4 prefill: qk 64 + 64, v 128
      {37, 1000, 3, 32, 128, 128},  // a chunk of a longer prompt
      {100, 20, 0, 8, 192, 128},    // DeepSeek-V3 head dims
      {1100, 0, 0, 16, 64, 64},     // Pixtral patches of one image (bidirectional below)
  };
  for (const AttentionCase& c : cases) {
    for (bool causal : {true, false}) {
      const int num_keys = c.q_offset + c.num_queries + c.extra_keys;
      const std::vector<float> q = RandomVector(static_cast<std::size_t>(c.num_queries) * c.num_heads * c.qk_dim, rng_);
      const std::vector<float> k = RandomVector(static_cast<std::size_t>(num_keys) * c.num_heads * c.qk_dim, rng_);
      const std::vector<float> v = RandomVector(static_cast<std::size_t>(num_keys) * c.num_heads * c.v_dim, rng_);
      const std::size_t out_size = static_cast<std::size_t>(c.num_queries) * c.num_heads * c.v_dim;
      const float scale = 1.0f / std::sqrt(static_cast<float>(c.qk_dim));
      std::vector<float> want(out_size, kNaN);
      kernels::AttentionParams rp;
      rp.num_queries = c.num_queries;
      rp.num_keys = num_keys;
      rp.q_offset = c.q_offset;
      rp.num_heads = c.num_heads;
      rp.qk_dim = c.qk_dim;
      rp.v_dim = c.v_dim;
      rp.q = q.data();
      rp.k = k.data();
      rp.v = v.data();
      rp.scale = scale;
      rp.out = want.data();
      rp.causal = causal;
      ref().attention(rp);

      const DeviceBuffer dq = ToDevice(q);
      const DeviceBuffer dk = ToDevice(k);
      const DeviceBuffer dv = ToDevice(v);
      const DeviceBuffer dout = PoisonedDevice<float>(out_size);
      AttentionParams p;
      p.num_queries = c.num_queries;
      p.num_keys = num_keys;
      p.q_offset = c.q_offset;
      p.num_heads = c.num_heads;
      p.qk_dim = c.qk_dim;
      p.v_dim = c.v_dim;
      p.q = dq.as<float>();
      p.k = dk.as<float>();
      p.v = dv.as<float>();
      p.scale = scale;
      p.out = dout.as<float>();
      p.causal = causal;
      SIROCCO_ASSERT_OK(Attention(p, nullptr));
      EXPECT_LE(NormalizedError(ToHost<float>(dout, out_size), want), kTolerance)
          << "queries=" << c.num_queries << " q_offset=" << c.q_offset << " heads=" << c.num_heads << " qk=" << c.qk_dim
          << " v=" << c.v_dim << " causal=" << causal;
    }
  }
}

// ---------------------------------------------------------------------------
// Host-side validation: these run everywhere, since a launcher checks its
// arguments before any CUDA call. The pointers are never dereferenced.

float* FakeDevicePointer() {
  alignas(16) static float dummy[4];
  return dummy;
}

// ---------------------------------------------------------------------------
// MoE dispatch, gather and combine, against a sequential stable counting sort
// and scalar loops (the definitions in cuda_kernels.h).

struct MoeShape {
  int num_tokens;
  int top_k;
  int num_experts;
  int dim;
};

TEST_F(CudaOpsTest, MoeDispatchGatherCombineMatchTheDefinition) {
  for (const MoeShape& s : {MoeShape{1, 1, 1, 8}, MoeShape{7, 2, 5, 33}, MoeShape{300, 4, 128, 64},
                            MoeShape{2048, 4, 128, 4096 / 8}, MoeShape{513, 8, 1024, 16}}) {
    SCOPED_TRACE(testing::Message() << s.num_tokens << " tokens, top " << s.top_k << " of " << s.num_experts
                                    << ", dim " << s.dim);
    const int n = s.num_tokens * s.top_k;
    // Skewed choices (some experts busy, many empty), distinct within a token.
    std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (int t = 0; t < s.num_tokens; ++t) {
      for (int k = 0; k < s.top_k; ++k) {
        std::int32_t e = 0;
        bool fresh = false;
        while (!fresh) {
          e = static_cast<std::int32_t>(std::pow(u(rng_), 3.0) * s.num_experts) % s.num_experts;
          fresh = std::find(ids.begin() + t * s.top_k, ids.begin() + t * s.top_k + k, e) == ids.begin() + t * s.top_k + k;
          if (s.top_k > s.num_experts) fresh = true;
        }
        ids[static_cast<std::size_t>(t * s.top_k + k)] = e;
      }
    }
    // The definition: a sequential stable counting sort.
    std::vector<std::int32_t> want_counts(static_cast<std::size_t>(s.num_experts), 0);
    for (std::int32_t e : ids) ++want_counts[static_cast<std::size_t>(e)];
    std::vector<std::int32_t> want_offsets(static_cast<std::size_t>(s.num_experts) + 1, 0);
    for (int e = 0; e < s.num_experts; ++e) want_offsets[e + 1] = want_offsets[e] + want_counts[e];
    std::vector<std::int32_t> want_sorted(static_cast<std::size_t>(n)), want_position(static_cast<std::size_t>(n));
    std::vector<std::int32_t> next(want_offsets.begin(), want_offsets.end() - 1);
    for (int i = 0; i < n; ++i) {
      const std::int32_t at = next[static_cast<std::size_t>(ids[i])]++;
      want_sorted[at] = i;
      want_position[i] = at;
    }

    DeviceBuffer d_ids = ToDevice(ids);
    DeviceBuffer d_counts = PoisonedDevice<float>(static_cast<std::size_t>(s.num_experts));
    DeviceBuffer d_offsets = PoisonedDevice<float>(static_cast<std::size_t>(s.num_experts) + 1);
    DeviceBuffer d_sorted = PoisonedDevice<float>(static_cast<std::size_t>(n));
    DeviceBuffer d_position = PoisonedDevice<float>(static_cast<std::size_t>(n));
    MoeDispatchParams p;
    p.num_tokens = s.num_tokens;
    p.top_k = s.top_k;
    p.num_experts = s.num_experts;
    p.expert_ids = d_ids.as<std::int32_t>();
    p.counts = d_counts.as<std::int32_t>();
    p.offsets = d_offsets.as<std::int32_t>();
    p.sorted = d_sorted.as<std::int32_t>();
    p.position = d_position.as<std::int32_t>();
    SIROCCO_ASSERT_OK(MoeDispatch(p, nullptr));
    EXPECT_EQ(ToHost<std::int32_t>(d_counts, want_counts.size()), want_counts);
    EXPECT_EQ(ToHost<std::int32_t>(d_offsets, want_offsets.size()), want_offsets);
    EXPECT_EQ(ToHost<std::int32_t>(d_sorted, want_sorted.size()), want_sorted);
    EXPECT_EQ(ToHost<std::int32_t>(d_position, want_position.size()), want_position);

    // Gather each expert's rows, then combine made-up expert outputs back.
    const int ldx = s.dim + 3;
    std::vector<float> x = RandomVector(static_cast<std::size_t>(s.num_tokens) * ldx, rng_);
    DeviceBuffer d_x = ToDevice(x);
    DeviceBuffer d_xs = PoisonedDevice<float>(static_cast<std::size_t>(n) * s.dim);
    SIROCCO_ASSERT_OK(MoeGatherRows(n, s.dim, d_x.as<float>(), ldx, d_sorted.as<std::int32_t>(), s.top_k,
                                    d_xs.as<float>(), s.dim, nullptr));
    const std::vector<float> xs = ToHost<float>(d_xs, static_cast<std::size_t>(n) * s.dim);
    for (int r = 0; r < n; ++r) {
      const int token = want_sorted[r] / s.top_k;
      for (int j = 0; j < s.dim; ++j) {
        ASSERT_EQ(xs[static_cast<std::size_t>(r) * s.dim + j], x[static_cast<std::size_t>(token) * ldx + j])
            << "row " << r << " col " << j;
      }
    }
    std::vector<float> ys = RandomVector(static_cast<std::size_t>(n) * s.dim, rng_);
    std::vector<float> weights = RandomVector(static_cast<std::size_t>(n), rng_);
    std::vector<float> base = RandomVector(static_cast<std::size_t>(s.num_tokens) * s.dim, rng_);
    DeviceBuffer d_ys = ToDevice(ys);
    DeviceBuffer d_w = ToDevice(weights);
    for (bool accumulate : {false, true}) {
      DeviceBuffer d_out = ToDevice(base);
      SIROCCO_ASSERT_OK(MoeCombine(s.num_tokens, s.top_k, s.dim, d_ys.as<float>(), s.dim,
                                   d_position.as<std::int32_t>(), d_w.as<float>(), accumulate, d_out.as<float>(),
                                   s.dim, nullptr));
      const std::vector<float> got = ToHost<float>(d_out, base.size());
      std::vector<float> want(base.size());
      for (int t = 0; t < s.num_tokens; ++t) {
        for (int j = 0; j < s.dim; ++j) {
          float acc = accumulate ? base[static_cast<std::size_t>(t) * s.dim + j] : 0.0f;
          for (int k = 0; k < s.top_k; ++k) {
            const std::size_t row = static_cast<std::size_t>(want_position[t * s.top_k + k]);
            acc += weights[static_cast<std::size_t>(t * s.top_k + k)] * ys[row * s.dim + j];
          }
          want[static_cast<std::size_t>(t) * s.dim + j] = acc;
        }
      }
      EXPECT_LE(NormalizedError(got, want), 1e-6) << (accumulate ? "accumulate" : "overwrite");
    }
  }
}

// ---------------------------------------------------------------------------
// KV block gather/scatter: byte-exact against host memcpy of the same blocks.

TEST_F(CudaOpsTest, KvBlocksGatherAndScatterAreExactCopies) {
  struct Shape {
    int num_layers;
    int pool_blocks;
    std::size_t block_bytes;
    int copy_blocks;
  };
  // 36 layers x 16 tokens x (256 + 64) float32 latent entries: the real model.
  for (const Shape& s : {Shape{1, 4, 64, 1}, Shape{3, 50, 20, 17}, Shape{36, 256, 16 * 320 * 4, 100}}) {
    SCOPED_TRACE(testing::Message() << s.num_layers << " layers, " << s.copy_blocks << " of " << s.pool_blocks
                                    << " blocks of " << s.block_bytes << " bytes");
    const std::size_t layer_stride = static_cast<std::size_t>(s.pool_blocks) * s.block_bytes;
    std::vector<unsigned char> pool(layer_stride * s.num_layers);
    std::uniform_int_distribution<int> byte(0, 255);
    for (auto& b : pool) b = static_cast<unsigned char>(byte(rng_));
    std::vector<std::int32_t> all(static_cast<std::size_t>(s.pool_blocks));
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng_);
    const std::vector<std::int32_t> ids(all.begin(), all.begin() + s.copy_blocks);
    std::vector<unsigned char> want(static_cast<std::size_t>(s.num_layers) * s.copy_blocks * s.block_bytes);
    for (int l = 0; l < s.num_layers; ++l) {
      for (int b = 0; b < s.copy_blocks; ++b) {
        std::copy_n(pool.begin() + static_cast<std::ptrdiff_t>(l * layer_stride + ids[b] * s.block_bytes),
                    s.block_bytes,
                    want.begin() + static_cast<std::ptrdiff_t>((static_cast<std::size_t>(l) * s.copy_blocks + b) *
                                                               s.block_bytes));
      }
    }
    DeviceBuffer d_pool = ToDevice(pool);
    DeviceBuffer d_ids = ToDevice(ids);
    DeviceBuffer d_staging = PoisonedDevice<float>((want.size() + 3) / 4);
    KvBlockCopyParams p;
    p.num_layers = s.num_layers;
    p.layer_stride_bytes = layer_stride;
    p.block_bytes = s.block_bytes;
    p.num_blocks = s.copy_blocks;
    p.block_ids = d_ids.as<std::int32_t>();
    p.pool = d_pool.data();
    p.staging = d_staging.data();
    SIROCCO_ASSERT_OK(KvGatherBlocks(p, nullptr));
    EXPECT_EQ(ToHost<unsigned char>(d_staging, want.size()), want);

    // Scatter the staging into a zeroed pool: exactly the chosen blocks change.
    std::vector<unsigned char> zero(pool.size(), 0);
    DeviceBuffer d_target = ToDevice(zero);
    p.pool = d_target.data();
    SIROCCO_ASSERT_OK(KvScatterBlocks(p, nullptr));
    std::vector<unsigned char> expected = zero;
    for (int l = 0; l < s.num_layers; ++l) {
      for (int b = 0; b < s.copy_blocks; ++b) {
        const std::size_t at = l * layer_stride + ids[b] * s.block_bytes;
        std::copy_n(pool.begin() + static_cast<std::ptrdiff_t>(at), s.block_bytes,
                    expected.begin() + static_cast<std::ptrdiff_t>(at));
      }
    }
    EXPECT_EQ(ToHost<unsigned char>(d_target, expected.size()), expected);
  }
}

TEST(CudaLauncherChecks, RejectBadShapesBeforeTouchingTheDevice) {
  float* f = FakeDevicePointer();
  EXPECT_EQ(RmsNorm(2, 8, f, 7, f, 1e-6f, f, 8, nullptr).code(), absl::StatusCode::kInvalidArgument);  // ldx < dim
  EXPECT_EQ(RmsNorm(2, 0, f, 8, f, 1e-6f, f, 8, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RopeInterleaved(2, 1, 7, f, 8, nullptr, f, 1.0f, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RopeInterleaved(2, 0, 8, f, 8, nullptr, f, 1.0f, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SiluMul(2, 8, f, 8, f, 4, f, 8, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Softmax(1, 8, nullptr, 8, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Axpy(-1, 1.0f, f, f, nullptr).code(), absl::StatusCode::kInvalidArgument);

  RouterParams r;
  r.num_tokens = 1;
  r.num_experts = 10;
  r.num_groups = 3;  // does not divide 10
  EXPECT_EQ(RouteTopk(r, nullptr).code(), absl::StatusCode::kInvalidArgument);
  r.num_groups = 5;
  r.topk_group = 1;
  r.top_k = 3;  // only 2 experts in one kept group
  EXPECT_EQ(RouteTopk(r, nullptr).code(), absl::StatusCode::kInvalidArgument);
  r.num_experts = 2048;
  r.num_groups = 1;
  EXPECT_EQ(RouteTopk(r, nullptr).code(), absl::StatusCode::kInvalidArgument);

  AttentionParams a;
  a.num_queries = 4;
  a.num_keys = 5;
  a.q_offset = 2;  // needs 6 keys
  a.num_heads = 1;
  a.qk_dim = 8;
  a.v_dim = 8;
  a.q = a.k = a.v = f;
  a.out = f;
  EXPECT_EQ(Attention(a, nullptr).code(), absl::StatusCode::kInvalidArgument);
  a.num_keys = 6;
  a.qk_dim = 512;
  EXPECT_EQ(Attention(a, nullptr).code(), absl::StatusCode::kUnimplemented);

  MoeDispatchParams m;
  m.num_tokens = 4;
  m.top_k = 2;
  m.num_experts = 2048;  // above the one-block scan
  EXPECT_EQ(MoeDispatch(m, nullptr).code(), absl::StatusCode::kInvalidArgument);
  m.num_experts = 8;
  m.top_k = 0;
  EXPECT_EQ(MoeDispatch(m, nullptr).code(), absl::StatusCode::kInvalidArgument);
  m.top_k = 2;  // pointers missing
  EXPECT_EQ(MoeDispatch(m, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MoeGatherRows(4, 8, f, 4, nullptr, 2, f, 8, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MoeCombine(2, 0, 8, f, 8, nullptr, f, false, f, 8, nullptr).code(), absl::StatusCode::kInvalidArgument);

  KvBlockCopyParams kv;
  kv.num_layers = 2;
  kv.num_blocks = 1;
  kv.block_bytes = 64;
  kv.layer_stride_bytes = 32;  // layers overlap
  kv.pool = kv.staging = f;
  EXPECT_EQ(KvGatherBlocks(kv, nullptr).code(), absl::StatusCode::kInvalidArgument);
  kv.layer_stride_bytes = 64;  // block_ids missing
  EXPECT_EQ(KvScatterBlocks(kv, nullptr).code(), absl::StatusCode::kInvalidArgument);
  kv.block_bytes = 0;
  EXPECT_EQ(KvGatherBlocks(kv, nullptr).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CudaLauncherChecks, MlaWorkspaceIsSizedAndRequired) {
  float* f = FakeDevicePointer();
  MlaAttentionParams p;
  p.num_queries = 1;
  p.num_heads = 32;
  p.kv_rank = 256;
  p.rope_dim = 64;
  p.block_size = 16;
  p.max_ctx_len = 4096;
  p.q_lat = p.q_rope = p.cache = f;
  p.block_tables = reinterpret_cast<const std::int32_t* const*>(f);
  p.ctx_lens = reinterpret_cast<const std::int32_t*>(f);
  p.out = f;
  // A single long sequence is split over the context, so it needs scratch...
  const std::size_t need = MlaAttentionWorkspaceBytes(p);
  EXPECT_GT(need, 0u);
  EXPECT_EQ(MlaAttention(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.workspace = f;
  p.workspace_bytes = need - 1;
  EXPECT_EQ(MlaAttention(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  // ...while a one-tile context needs none.
  p.max_ctx_len = 32;
  EXPECT_EQ(MlaAttentionWorkspaceBytes(p), 0u);

  p.max_ctx_len = 0;
  EXPECT_EQ(MlaAttention(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.max_ctx_len = 16;
  p.kv_rank = 1024;
  EXPECT_EQ(MlaAttention(p, nullptr).code(), absl::StatusCode::kUnimplemented);
  p.kv_rank = 540;  // fits the 576-wide entry, not the 512-wide accumulator
  p.rope_dim = 36;
  EXPECT_EQ(MlaAttention(p, nullptr).code(), absl::StatusCode::kUnimplemented);
}

TEST(CudaLauncherChecks, EmptyLaunchesSucceedWithoutWork) {
  EXPECT_TRUE(RmsNorm(0, 8, nullptr, 8, nullptr, 1e-6f, nullptr, 8, nullptr).ok());
  EXPECT_TRUE(SiluMul(0, 8, nullptr, 8, nullptr, 8, nullptr, 8, nullptr).ok());
  EXPECT_TRUE(Softmax(0, 8, nullptr, 8, nullptr).ok());
  EXPECT_TRUE(Axpy(0, 1.0f, nullptr, nullptr, nullptr).ok());
  RouterParams r;
  r.num_tokens = 0;
  r.num_experts = 8;
  EXPECT_TRUE(RouteTopk(r, nullptr).ok());
  EXPECT_TRUE(MoeGatherRows(0, 8, nullptr, 8, nullptr, 2, nullptr, 8, nullptr).ok());
  EXPECT_TRUE(MoeCombine(0, 2, 8, nullptr, 8, nullptr, nullptr, false, nullptr, 8, nullptr).ok());
  KvBlockCopyParams kv;
  kv.num_layers = 4;
  kv.block_bytes = 64;
  kv.layer_stride_bytes = 64;
  EXPECT_TRUE(KvGatherBlocks(kv, nullptr).ok());  // no blocks
}

}  // namespace
}  // namespace sirocco::kernels::cuda
