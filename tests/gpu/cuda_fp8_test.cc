// FP8 products (kernels/cuda/blas_lt.h) and the activation quantisers against
// scalar host references built on engine/dtype.h's e4m3 conversions.
//
// Quantisers: bit-exact. The device computes s = amax / 448 and x / s in IEEE
// float32 and rounds with the saturating round-to-nearest-even conversion; the
// host repeats the float32 arithmetic and rounds with engine::FloatToF8E4M3,
// documented to match __nv_cvt_float_to_fp8(__NV_SATFINITE, __NV_E4M3). Codes
// and scales must agree exactly; NaN codes compare as NaN (the conversion
// instruction may drop a NaN's sign).
//
// Products: every operand is an e4m3 code, exact in float, and a product of
// two codes has at most 8 significant bits, exact in float32. The reference
// sums in double, so the device's error is its accumulation alone:
//   * Hopper's FP8 tensor cores add products in an accumulator that keeps
//     about 14 significant bits (the DeepSeek-V3 report's measurement);
//     cuBLASLt, with fast accumulation off, promotes those partial sums into
//     float32 every few k-steps, so each partial sum errs by a few 2^-13 of
//     the magnitudes added into it;
//   * the float32 sums and the scale products add about 2^-24 per step.
// The bound per element is therefore tol * S, with S = sum over k of
// |scaled a b| (the same sum over magnitudes) and tol = 2^-9, a few times the
// worst accumulator error and still far below what a misplaced scale or
// operand does (it moves results by a large fraction of S: the test scales
// vary 16-fold between blocks). A bf16 output adds its rounding, at most half
// an ulp (2^-9 |want|); the bound allows 2^-8 |want|.
//
// The model shapes are Mistral Small 4's linear layers (hidden 4096, q_lora
// 1024, kv_lora 256 + rope 64, 32 heads of 64 + 64 / 128, experts 2048 wide),
// at m = 1, 16, 128 and 1000 tokens. The reference runs on a sample of rows
// (all of the first 16, then spread out) to keep the scalar loops short.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/dtype.h"
#include "kernels/cuda/blas_lt.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_memory.h"
#include "tests/gpu/cuda_test_util.h"

namespace sirocco::kernels::cuda {
namespace {

using namespace ::sirocco::kernels::cuda::test_util;  // NOLINT: device buffers

constexpr double kAccumTolerance = 0x1p-9;
constexpr double kBf16RoundingTolerance = 0x1p-8;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

#define SIROCCO_FP8_ASSERT_OK(expr)               \
  do {                                            \
    const ::absl::Status fp8_status_ = (expr);    \
    ASSERT_TRUE(fp8_status_.ok()) << fp8_status_; \
  } while (false)

// ---------------------------------------------------------------------------
// Host helpers.

Bf16 ToBf16(float f) { return Bf16{engine::FloatToBf16(f)}; }
float FromBf16(Bf16 b) { return engine::Bf16ToFloat(b.bits); }
// engine::F8E4M3ToFloat through a table: the model shapes decode tens of
// millions of codes.
float Decode(Fp8E4M3 q) {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[i] = engine::F8E4M3ToFloat(static_cast<std::uint8_t>(i));
    return t;
  }();
  return table[q.bits];
}
bool IsNaNCode(std::uint8_t bits) { return (bits & 0x7F) == 0x7F; }
bool SameCode(std::uint8_t got, std::uint8_t want) { return got == want || (IsNaNCode(got) && IsNaNCode(want)); }

// The quantisers' rules (blas_lt.h), in host float32.
float HostScale(float amax) {
  const float s = amax / kFp8E4M3Max;
  return (s > 0.0f && std::isfinite(s)) ? s : 1.0f;
}
std::uint8_t HostCode(float x, float s) { return engine::FloatToF8E4M3(x / s); }

int Groups(int k) { return (k + kFp8BlockSize - 1) / kFp8BlockSize; }

// Activation-like values: normal, with a few 30x outliers and exact zeros.
std::vector<float> RandomActivations(std::size_t n, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> pick(0, 99);
  std::vector<float> v(n);
  for (float& x : v) {
    const int p = pick(rng);
    x = p == 0 ? 30.0f * normal(rng) : (p == 1 ? 0.0f : normal(rng));
  }
  return v;
}

// Random finite e4m3 codes, every exponent and subnormals included.
std::vector<Fp8E4M3> RandomCodes(std::size_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::vector<Fp8E4M3> v(n);
  for (Fp8E4M3& q : v) {
    int b = byte(rng);
    while (IsNaNCode(static_cast<std::uint8_t>(b))) b = byte(rng);
    q.bits = static_cast<std::uint8_t>(b);
  }
  return v;
}

// Scales in [2^-9, 2^-5) with arbitrary mantissas: neighbouring blocks differ
// up to 16-fold.
float RandomScale(std::mt19937& rng) {
  std::uniform_real_distribution<float> exponent(-9.0f, -5.0f);
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  return std::exp2(std::floor(exponent(rng))) * mantissa(rng);
}

// ---------------------------------------------------------------------------
// Host-only checks: argument validation runs before any CUDA call.

Fp8E4M3* FakeCodes() {
  alignas(256) static Fp8E4M3 codes[64];
  return codes;
}
float* FakeFloats() {
  alignas(256) static float floats[64];
  return floats;
}

TEST(CudaFp8Checks, BlockScaleStrideRoundsGroupsUpToFour) {
  EXPECT_EQ(Fp8BlockScaleLd(0), 0);
  EXPECT_EQ(Fp8BlockScaleLd(1), 4);
  EXPECT_EQ(Fp8BlockScaleLd(128), 4);
  EXPECT_EQ(Fp8BlockScaleLd(256), 4);  // kv_b_proj: 2 groups, padded to 4
  EXPECT_EQ(Fp8BlockScaleLd(640), 8);
  EXPECT_EQ(Fp8BlockScaleLd(1024), 8);
  EXPECT_EQ(Fp8BlockScaleLd(2048), 16);
  EXPECT_EQ(Fp8BlockScaleLd(4096), 32);
}

TEST(CudaFp8Checks, PadBlockScalesKeepsEachRowAndZeroesThePadding) {
  // n = 300 -> 3 block rows; k = 256 -> 2 groups, stride 4.
  const std::vector<float> checkpoint = {1, 2, 3, 4, 5, 6};
  const std::vector<float> padded = PadFp8BlockScales(300, 256, checkpoint.data());
  EXPECT_EQ(padded, (std::vector<float>{1, 2, 0, 0, 3, 4, 0, 0, 5, 6, 0, 0}));
}

Fp8GemmParams ValidParams(Fp8Scaling scaling) {
  Fp8GemmParams p;
  p.m = 8;
  p.n = 64;
  p.k = 256;
  p.a = FakeCodes();
  p.lda = 256;
  p.b = FakeCodes();
  p.ldb = 256;
  p.scaling = scaling;
  p.a_scale = FakeFloats();
  p.b_scale = FakeFloats();
  return p;
}

TEST(CudaFp8Checks, GemmRejectsMalformedArgumentsAsInvalid) {
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  float* c = FakeFloats();
  for (Fp8Scaling scaling : {Fp8Scaling::kPerTensor, Fp8Scaling::kBlock}) {
    EXPECT_TRUE(CheckGemmNtFp8(ValidParams(scaling), Fp8Output::kFloat32, c, 64).ok());
    EXPECT_TRUE(CheckGemmNtFp8(ValidParams(scaling), Fp8Output::kBf16, c, 64).ok());
    Fp8GemmParams p = ValidParams(scaling);
    p.m = -1;
    EXPECT_EQ(CheckGemmNtFp8(p, Fp8Output::kFloat32, c, 64).code(), kInvalid);
    p = ValidParams(scaling);
    p.lda = 240;  // < k
    EXPECT_EQ(CheckGemmNtFp8(p, Fp8Output::kFloat32, c, 64).code(), kInvalid);
    p = ValidParams(scaling);
    p.ldb = 16;
    EXPECT_EQ(CheckGemmNtFp8(p, Fp8Output::kFloat32, c, 64).code(), kInvalid);
    EXPECT_EQ(CheckGemmNtFp8(ValidParams(scaling), Fp8Output::kFloat32, c, 60).code(), kInvalid);  // ldc < n
    EXPECT_EQ(CheckGemmNtFp8(ValidParams(scaling), Fp8Output::kFloat32, nullptr, 64).code(), kInvalid);
    p = ValidParams(scaling);
    p.b_scale = nullptr;
    EXPECT_EQ(CheckGemmNtFp8(p, Fp8Output::kFloat32, c, 64).code(), kInvalid);
    p = ValidParams(scaling);
    p.a = nullptr;
    EXPECT_EQ(CheckGemmNtFp8(p, Fp8Output::kBf16, c, 64).code(), kInvalid);
  }
  // Empty products need no pointers at all.
  Fp8GemmParams empty;
  empty.n = 64;
  empty.k = 128;
  empty.lda = empty.ldb = 128;
  EXPECT_TRUE(CheckGemmNtFp8(empty, Fp8Output::kFloat32, nullptr, 64).ok());
}

TEST(CudaFp8Checks, GemmReportsShapesOutsideTheFp8KernelsAsUnimplemented) {
  constexpr auto kUnimplemented = absl::StatusCode::kUnimplemented;
  float* c = FakeFloats();
  for (Fp8Scaling scaling : {Fp8Scaling::kPerTensor, Fp8Scaling::kBlock}) {
    Fp8GemmParams p = ValidParams(scaling);
    p.k = p.lda = p.ldb = 200;  // not a multiple of 16
    EXPECT_EQ(CheckGemmNtFp8(p, Fp8Output::kFloat32, c, 64).code(), kUnimplemented);
    p = ValidParams(scaling);
    p.lda = 264;  // lda not a multiple of 16
    EXPECT_EQ(CheckGemmNtFp8(p, Fp8Output::kFloat32, c, 64).code(), kUnimplemented);
    p = ValidParams(scaling);
    p.ldb = 260;
    EXPECT_EQ(CheckGemmNtFp8(p, Fp8Output::kFloat32, c, 64).code(), kUnimplemented);
    p = ValidParams(scaling);
    p.n = 60;  // a float32 row of 240 bytes is fine, a bf16 row of 120 is not
    EXPECT_TRUE(CheckGemmNtFp8(p, Fp8Output::kFloat32, c, 64).ok());
    EXPECT_EQ(CheckGemmNtFp8(p, Fp8Output::kBf16, c, 64).code(), kUnimplemented);
    p.n = 62;
    EXPECT_EQ(CheckGemmNtFp8(p, Fp8Output::kFloat32, c, 64).code(), kUnimplemented);
    EXPECT_EQ(CheckGemmNtFp8(ValidParams(scaling), Fp8Output::kFloat32, c, 66).code(), kUnimplemented);  // ldc
    EXPECT_EQ(CheckGemmNtFp8(ValidParams(scaling), Fp8Output::kFloat32, c + 1, 64).code(), kUnimplemented);
    p = ValidParams(scaling);
    p.a = FakeCodes() + 8;  // 8-byte aligned
    EXPECT_EQ(CheckGemmNtFp8(p, Fp8Output::kFloat32, c, 64).code(), kUnimplemented);
    p = ValidParams(scaling);
    p.b_scale = FakeFloats() + 2;
    EXPECT_EQ(CheckGemmNtFp8(p, Fp8Output::kFloat32, c, 64).code(), kUnimplemented);
  }
  // Block scaling alone needs m % 4 == 0 (its 1x128 scale columns are m apart).
  Fp8GemmParams p = ValidParams(Fp8Scaling::kBlock);
  p.m = 1;
  EXPECT_EQ(CheckGemmNtFp8(p, Fp8Output::kFloat32, c, 64).code(), kUnimplemented);
  p.scaling = Fp8Scaling::kPerTensor;
  EXPECT_TRUE(CheckGemmNtFp8(p, Fp8Output::kFloat32, c, 64).ok());
}

TEST(CudaFp8Checks, QuantizersRejectBadShapesBeforeTouchingTheDevice) {
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  float* f = FakeFloats();
  Fp8E4M3* q = FakeCodes();
  const Bf16* h = reinterpret_cast<const Bf16*>(FakeFloats());
  EXPECT_EQ(QuantizeFp8PerTensor(-1, 8, f, 8, q, 8, f, nullptr).code(), kInvalid);
  EXPECT_EQ(QuantizeFp8PerTensor(2, 8, f, 7, q, 8, f, nullptr).code(), kInvalid);  // ldx < cols
  EXPECT_EQ(QuantizeFp8PerTensor(2, 8, f, 8, q, 4, f, nullptr).code(), kInvalid);  // ldq < cols
  EXPECT_EQ(QuantizeFp8PerTensor(2, 8, f, 8, q, 8, nullptr, nullptr).code(), kInvalid);
  EXPECT_EQ(QuantizeFp8PerTensor(2, 8, h, 8, nullptr, 8, f, nullptr).code(), kInvalid);
  EXPECT_EQ(QuantizeFp8Groups128(2, -8, f, 8, q, 8, f, nullptr).code(), kInvalid);
  EXPECT_EQ(QuantizeFp8Groups128(2, 8, static_cast<const float*>(nullptr), 8, q, 8, f, nullptr).code(), kInvalid);
  EXPECT_EQ(QuantizeFp8Groups128(2, 8, h, 8, q, 8, nullptr, nullptr).code(), kInvalid);
  EXPECT_EQ(QuantizeFp8Groups128(2, 8, h, 8, q, 7, f, nullptr).code(), kInvalid);
  // Empty inputs: nothing to do, nothing needed.
  EXPECT_TRUE(QuantizeFp8PerTensor(0, 8, static_cast<const float*>(nullptr), 8, nullptr, 8, nullptr, nullptr).ok());
  EXPECT_TRUE(QuantizeFp8Groups128(3, 0, static_cast<const Bf16*>(nullptr), 1, nullptr, 1, nullptr, nullptr).ok());
}

// ---------------------------------------------------------------------------
// Quantisers on the device.

class CudaFp8QuantizeTest : public testing::Test {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  }
  std::mt19937 rng_{20250117u};
};

struct QuantizeShape {
  int rows;
  int cols;
};

const std::vector<QuantizeShape>& QuantizeShapes() {
  static const auto* shapes = new std::vector<QuantizeShape>{{1, 4096}, {16, 2048}, {128, 1024}, {1000, 320},
                                                             {4, 256},  {3, 100},   {5, 129},    {2, 4096 + 64}};
  return *shapes;
}

// Quantises x [rows, ldx] (its first `cols` columns) on the device with both
// quantisers, in float32 or bf16, and compares codes, scales and the padding
// of q against the host rules. `x` already holds bf16-representable values
// when `as_bf16`.
void CheckQuantizers(int rows, int cols, int ldx, const std::vector<float>& x, bool as_bf16) {
  const int ldq = cols + 5;
  const int groups = Groups(cols);
  constexpr int kPadByte = 0x5a;
  const std::string where =
      "rows=" + std::to_string(rows) + " cols=" + std::to_string(cols) + (as_bf16 ? " bf16" : " f32");

  // Host reference.
  float amax = 0.0f;
  std::vector<float> want_group_scales(static_cast<std::size_t>(groups) * rows);
  std::vector<std::uint8_t> want_group_codes(static_cast<std::size_t>(rows) * ldq, kPadByte);
  for (int r = 0; r < rows; ++r) {
    for (int g = 0; g < groups; ++g) {
      float group_amax = 0.0f;
      const int end = std::min(cols, (g + 1) * kFp8BlockSize);
      for (int c = g * kFp8BlockSize; c < end; ++c) group_amax = std::fmax(group_amax, std::fabs(x[r * ldx + c]));
      const float s = HostScale(group_amax);
      want_group_scales[static_cast<std::size_t>(g) * rows + r] = s;
      for (int c = g * kFp8BlockSize; c < end; ++c) want_group_codes[r * ldq + c] = HostCode(x[r * ldx + c], s);
      amax = std::fmax(amax, group_amax);
    }
  }
  const float want_scale = HostScale(amax);

  DeviceBuffer dx;
  if (as_bf16) {
    std::vector<Bf16> x16(x.size());
    std::transform(x.begin(), x.end(), x16.begin(), ToBf16);
    dx = ToDevice(x16);
  } else {
    dx = ToDevice(x);
  }
  const std::size_t q_bytes = static_cast<std::size_t>(rows) * ldq;
  DeviceBuffer dq_tensor = FilledDevice(q_bytes, kPadByte);
  DeviceBuffer dq_groups = FilledDevice(q_bytes, kPadByte);
  DeviceBuffer dscale = FilledDevice(sizeof(float), 0xff);
  DeviceBuffer dscales = FilledDevice(sizeof(float) * groups * rows, 0xff);
  auto* q_tensor = dq_tensor.as<Fp8E4M3>();
  auto* q_groups = dq_groups.as<Fp8E4M3>();
  if (as_bf16) {
    SIROCCO_FP8_ASSERT_OK(
        QuantizeFp8PerTensor(rows, cols, dx.as<Bf16>(), ldx, q_tensor, ldq, dscale.as<float>(), nullptr));
    SIROCCO_FP8_ASSERT_OK(
        QuantizeFp8Groups128(rows, cols, dx.as<Bf16>(), ldx, q_groups, ldq, dscales.as<float>(), nullptr));
  } else {
    SIROCCO_FP8_ASSERT_OK(
        QuantizeFp8PerTensor(rows, cols, dx.as<float>(), ldx, q_tensor, ldq, dscale.as<float>(), nullptr));
    SIROCCO_FP8_ASSERT_OK(
        QuantizeFp8Groups128(rows, cols, dx.as<float>(), ldx, q_groups, ldq, dscales.as<float>(), nullptr));
  }

  const std::vector<std::uint8_t> got_tensor = ToHost<std::uint8_t>(dq_tensor, q_bytes);
  const std::vector<std::uint8_t> got_groups = ToHost<std::uint8_t>(dq_groups, q_bytes);
  const float got_scale = ToHost<float>(dscale, 1)[0];
  const std::vector<float> got_scales = ToHost<float>(dscales, want_group_scales.size());

  EXPECT_EQ(std::bit_cast<std::uint32_t>(got_scale), std::bit_cast<std::uint32_t>(want_scale))
      << where << " per-tensor scale " << got_scale << " vs " << want_scale;
  int tensor_mismatches = 0;
  int group_mismatches = 0;
  int padding_changes = 0;
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < ldq; ++c) {
      const std::size_t i = static_cast<std::size_t>(r) * ldq + c;
      if (c >= cols) {
        padding_changes += (got_tensor[i] != kPadByte) + (got_groups[i] != kPadByte);
        continue;
      }
      const std::uint8_t want_tensor = HostCode(x[r * ldx + c], want_scale);
      if (!SameCode(got_tensor[i], want_tensor) && tensor_mismatches++ < 5) {
        ADD_FAILURE() << where << " per-tensor code at (" << r << ", " << c << "): x=" << x[r * ldx + c] << " got 0x"
                      << std::hex << int{got_tensor[i]} << " want 0x" << int{want_tensor};
      }
      if (!SameCode(got_groups[i], want_group_codes[i]) && group_mismatches++ < 5) {
        ADD_FAILURE() << where << " group code at (" << r << ", " << c << "): x=" << x[r * ldx + c] << " got 0x"
                      << std::hex << int{got_groups[i]} << " want 0x" << int{want_group_codes[i]};
      }
    }
  }
  EXPECT_EQ(tensor_mismatches, 0) << where;
  EXPECT_EQ(group_mismatches, 0) << where;
  EXPECT_EQ(padding_changes, 0) << where << ": q's padding columns were written";
  int scale_mismatches = 0;
  for (std::size_t i = 0; i < want_group_scales.size(); ++i) {
    scale_mismatches +=
        std::bit_cast<std::uint32_t>(got_scales[i]) != std::bit_cast<std::uint32_t>(want_group_scales[i]);
  }
  EXPECT_EQ(scale_mismatches, 0) << where << " group scales ([groups, rows] layout)";
}

TEST_F(CudaFp8QuantizeTest, CodesAndScalesMatchTheHostBitForBit) {
  for (const QuantizeShape& s : QuantizeShapes()) {
    const int ldx = s.cols + 3;
    std::vector<float> x = RandomActivations(static_cast<std::size_t>(s.rows) * ldx, rng_);
    CheckQuantizers(s.rows, s.cols, ldx, x, /*as_bf16=*/false);
    for (float& v : x) v = FromBf16(ToBf16(v));
    CheckQuantizers(s.rows, s.cols, ldx, x, /*as_bf16=*/true);
  }
}

// With 448 in every group the scale is exactly 1, so the codes are the
// conversion itself: ties to even, subnormal ties, the 432 tie that rounds up
// to the largest finite code, zeros of both signs and a NaN (which does not
// enter amax).
TEST_F(CudaFp8QuantizeTest, RoundsTiesToEvenAndSaturatesLikeTheHost) {
  const std::vector<float> specials = {448.0f, 1.0625f, 1.1875f, 432.0f, -432.0f, 0x1p-10f, 3 * 0x1p-10f, -0x1p-10f,
                                       0.0f,   -0.0f,   -448.0f, 0.3f,   -17.5f,  0x1p-9f,  240.0f};
  const int cols = 256;
  const int rows = 2;
  std::vector<float> x(static_cast<std::size_t>(rows) * cols, 0.0f);
  for (std::size_t i = 0; i < specials.size(); ++i) {
    x[i] = specials[i];                   // row 0, group 0
    x[128 + i] = -specials[i];            // row 0, group 1
    x[cols + 128 + 3 * i] = specials[i];  // row 1, group 1; row 1 group 0 stays all zero
  }
  x[cols + 128 + 1] = kNaN;
  CheckQuantizers(rows, cols, cols, x, /*as_bf16=*/false);
  // The expected codes, spelled out for the first group (scale 1).
  EXPECT_EQ(engine::FloatToF8E4M3(1.0625f), 0x38);   // tie between 1 and 1.125 -> even (1)
  EXPECT_EQ(engine::FloatToF8E4M3(1.1875f), 0x3A);   // tie between 1.125 and 1.25 -> even (1.25)
  EXPECT_EQ(engine::FloatToF8E4M3(432.0f), 0x7E);    // tie between 416 and 448 -> 448
  EXPECT_EQ(engine::FloatToF8E4M3(0x1p-10f), 0x00);  // half the smallest subnormal -> 0
  EXPECT_EQ(engine::FloatToF8E4M3(3 * 0x1p-10f), 0x02);
}

// ---------------------------------------------------------------------------
// Products.

class CudaFp8GemmTest : public testing::Test {
 protected:
  void SetUp() override {
    if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
    absl::StatusOr<std::unique_ptr<BlasLt>> blas = BlasLt::Create();
    ASSERT_TRUE(blas.ok()) << blas.status();
    blas_ = std::move(*blas);
    if (!blas_->SupportsFp8()) {
      GTEST_SKIP() << "FP8 products need compute capability 9.0, the device has " << blas_->compute_capability();
    }
  }

  // For the block-scaled tests.
  bool BlockScalingMissing() const { return !blas_->SupportsBlockScaling(); }

  std::unique_ptr<BlasLt> blas_;
  std::mt19937 rng_{20250118u};
};

// Host operands in the units the reference needs: decoded values and scales
// per (row, group) and (block row, group), whatever the scaling mode.
struct HostOperands {
  int n = 0;
  int k = 0;
  int groups = 0;
  std::vector<float> a;        // [rows, k], decoded
  std::vector<float> b;        // [n, k], decoded
  std::vector<float> a_scale;  // [rows, groups]
  std::vector<float> b_scale;  // [ceil(n / 128), groups]: the checkpoint's weight_scale_inv layout
};

// want and S (the magnitude sum of the tolerance) for rows `rows` of C.
struct Reference {
  std::vector<int> rows;
  std::vector<double> want;     // [rows.size(), n]
  std::vector<double> abs_sum;  // [rows.size(), n]
};

Reference ComputeReference(const HostOperands& op, const std::vector<int>& rows) {
  Reference ref;
  ref.rows = rows;
  ref.want.assign(rows.size() * op.n, 0.0);
  ref.abs_sum.assign(rows.size() * op.n, 0.0);
  for (std::size_t ri = 0; ri < rows.size(); ++ri) {
    const int i = rows[ri];
    const float* a = op.a.data() + static_cast<std::size_t>(i) * op.k;
    for (int j = 0; j < op.n; ++j) {
      const float* b = op.b.data() + static_cast<std::size_t>(j) * op.k;
      double sum = 0.0;
      double abs_sum = 0.0;
      for (int g = 0; g < op.groups; ++g) {
        double part = 0.0;
        double part_abs = 0.0;
        const int end = std::min(op.k, (g + 1) * kFp8BlockSize);
        for (int kk = g * kFp8BlockSize; kk < end; ++kk) {
          const double p = static_cast<double>(a[kk]) * b[kk];
          part += p;
          part_abs += std::fabs(p);
        }
        const double scale = static_cast<double>(op.a_scale[static_cast<std::size_t>(i) * op.groups + g]) *
                             op.b_scale[static_cast<std::size_t>(j / kFp8BlockSize) * op.groups + g];
        sum += scale * part;
        abs_sum += std::fabs(scale) * part_abs;
      }
      ref.want[ri * op.n + j] = sum;
      ref.abs_sum[ri * op.n + j] = abs_sum;
    }
  }
  return ref;
}

// Compares rows of a device result against the reference; c_in (nullptr when
// beta == 0) is C before the product, row stride ldc like `got`.
void ExpectMatches(const std::vector<float>& got, int m, int n, int ldc, const Reference& ref, bool bf16_out,
                   float beta, const std::vector<float>* c_in, const std::string& where) {
  double worst = 0.0;
  std::string worst_at;
  int failures = 0;
  for (std::size_t ri = 0; ri < ref.rows.size(); ++ri) {
    const int i = ref.rows[ri];
    if (i >= m) continue;
    for (int j = 0; j < n; ++j) {
      const std::size_t at = static_cast<std::size_t>(i) * ldc + j;
      double want = ref.want[ri * n + j];
      double bound = kAccumTolerance * ref.abs_sum[ri * n + j];
      if (c_in != nullptr) {
        want += static_cast<double>(beta) * (*c_in)[at];
        bound += 0x1p-22 * std::fabs(static_cast<double>(beta) * (*c_in)[at]);
      }
      if (bf16_out) bound += kBf16RoundingTolerance * std::fabs(want);
      const double err = std::fabs(static_cast<double>(got[at]) - want);
      const double ratio = bound > 0.0 ? err / bound : (err == 0.0 ? 0.0 : std::numeric_limits<double>::infinity());
      if (!(ratio <= 1.0)) {
        if (failures++ < 5) {
          ADD_FAILURE() << where << " C[" << i << ", " << j << "] = " << got[at] << ", want " << want << " (bound "
                        << bound << ")";
        }
      } else if (ratio > worst) {
        worst = ratio;
        worst_at = "C[" + std::to_string(i) + ", " + std::to_string(j) + "]";
      }
    }
  }
  EXPECT_EQ(failures, 0) << where;
  testing::Test::RecordProperty("worst_" + where, std::to_string(worst) + " of the bound at " + worst_at);
}

// Random operands for an n x k weight and up to `rows` activation rows, with
// scales for `scaling` (per tensor: one value repeated in the tables).
struct RandomProblem {
  std::vector<Fp8E4M3> a;  // [rows, k], lda = k
  std::vector<Fp8E4M3> b;  // [n, k], ldb = k
  HostOperands host;
};

RandomProblem MakeProblem(int rows, int n, int k, Fp8Scaling scaling, std::mt19937& rng) {
  RandomProblem pr;
  pr.a = RandomCodes(static_cast<std::size_t>(rows) * k, rng);
  pr.b = RandomCodes(static_cast<std::size_t>(n) * k, rng);
  HostOperands& h = pr.host;
  h.n = n;
  h.k = k;
  h.groups = Groups(k);
  h.a.resize(pr.a.size());
  h.b.resize(pr.b.size());
  std::transform(pr.a.begin(), pr.a.end(), h.a.begin(), Decode);
  std::transform(pr.b.begin(), pr.b.end(), h.b.begin(), Decode);
  h.a_scale.resize(static_cast<std::size_t>(rows) * h.groups);
  h.b_scale.resize(static_cast<std::size_t>(Groups(n)) * h.groups);
  if (scaling == Fp8Scaling::kBlock) {
    for (float& s : h.a_scale) s = RandomScale(rng);
    for (float& s : h.b_scale) s = RandomScale(rng);
  } else {
    std::fill(h.a_scale.begin(), h.a_scale.end(), RandomScale(rng));
    std::fill(h.b_scale.begin(), h.b_scale.end(), RandomScale(rng));
  }
  return pr;
}

// The device layout of the activation scales for the first m rows: one float
// per tensor, or [groups, m_alloc] with m contiguous (rows beyond m: scale 1).
std::vector<float> DeviceAScale(const HostOperands& h, Fp8Scaling scaling, int m, int m_alloc) {
  if (scaling == Fp8Scaling::kPerTensor) return {h.a_scale[0]};
  std::vector<float> s(static_cast<std::size_t>(h.groups) * m_alloc, 1.0f);
  for (int g = 0; g < h.groups; ++g) {
    for (int i = 0; i < m; ++i) s[static_cast<std::size_t>(g) * m_alloc + i] = h.a_scale[i * h.groups + g];
  }
  return s;
}

std::vector<float> DeviceBScale(const HostOperands& h, Fp8Scaling scaling) {
  if (scaling == Fp8Scaling::kPerTensor) return {h.b_scale[0]};
  return PadFp8BlockScales(h.n, h.k, h.b_scale.data());
}

std::vector<int> SampleRows(int rows) {
  std::vector<int> sample;
  for (int i = 0; i < std::min(rows, 16); ++i) sample.push_back(i);
  for (int i = 16; i < rows; i += 61) sample.push_back(i);
  for (int i : {127, rows - 1}) {
    if (i >= 16 && i < rows && std::find(sample.begin(), sample.end(), i) == sample.end()) sample.push_back(i);
  }
  return sample;
}

const char* ScalingName(Fp8Scaling s) { return s == Fp8Scaling::kBlock ? "block" : "per-tensor"; }

// `shape` (sizes, leading dimensions, scaling) pointed at device operands.
Fp8GemmParams WithOperands(Fp8GemmParams shape, const DeviceBuffer& a, const DeviceBuffer& b,
                           const DeviceBuffer& a_scale, const DeviceBuffer& b_scale) {
  shape.a = a.as<Fp8E4M3>();
  shape.b = b.as<Fp8E4M3>();
  shape.a_scale = a_scale.as<float>();
  shape.b_scale = b_scale.as<float>();
  return shape;
}

// Every model shape at m = 1, 16, 128 and 1000: float32 output with beta = 0
// over a NaN-filled C everywhere; at m = 16 also beta = 1 and bf16 output. In
// block mode m = 1 is refused (m % 4) and runs the way the engine must run a
// decode step: padded to 4 rows of which rows 1..3 are zero.
void CheckModelShapes(BlasLt& blas, Fp8Scaling scaling, std::mt19937& rng) {
  struct Shape {
    const char* name;
    int n;
    int k;
  };
  const Shape shapes[] = {{"q_a_proj", 1024, 4096},   {"q_b_proj", 4096, 1024}, {"kv_a_proj", 320, 4096},
                          {"kv_b_proj", 6144, 256},   {"o_proj", 4096, 4096},   {"expert_gate", 2048, 4096},
                          {"expert_down", 4096, 2048}};
  constexpr int kMaxRows = 1000;
  const std::vector<int> sample = SampleRows(kMaxRows);
  for (const Shape& s : shapes) {
    const RandomProblem pr = MakeProblem(kMaxRows, s.n, s.k, scaling, rng);
    const Reference ref = ComputeReference(pr.host, sample);
    const DeviceBuffer db = ToDevice(pr.b);
    const DeviceBuffer db_scale = ToDevice(DeviceBScale(pr.host, scaling));
    for (int m : {1, 16, 128, 1000}) {
      const int m_alloc = scaling == Fp8Scaling::kBlock ? (m + 3) / 4 * 4 : m;
      std::vector<Fp8E4M3> a(static_cast<std::size_t>(m_alloc) * s.k, Fp8E4M3{0});
      std::copy_n(pr.a.begin(), static_cast<std::size_t>(m) * s.k, a.begin());
      const DeviceBuffer da = ToDevice(a);
      const DeviceBuffer da_scale = ToDevice(DeviceAScale(pr.host, scaling, m, m_alloc));
      const Fp8GemmParams p = WithOperands(
          {.m = m_alloc, .n = s.n, .k = s.k, .lda = s.k, .ldb = s.k, .scaling = scaling}, da, db, da_scale, db_scale);
      const std::size_t c_size = static_cast<std::size_t>(m_alloc) * s.n;
      const std::string where = std::string(s.name) + "_" + ScalingName(scaling) + "_m" + std::to_string(m);
      if (m_alloc != m) {
        Fp8GemmParams unpadded = p;
        unpadded.m = m;
        DeviceBuffer dc = FilledDevice(sizeof(float) * c_size, 0xff);
        EXPECT_EQ(blas.GemmNtFp8(unpadded, 0.0f, dc.as<float>(), s.n, nullptr).code(), absl::StatusCode::kUnimplemented)
            << where;
      }

      {  // float32, beta = 0: C starts as NaN and must not be read.
        DeviceBuffer dc = FilledDevice(sizeof(float) * c_size, 0xff);
        SIROCCO_FP8_ASSERT_OK(blas.GemmNtFp8(p, 0.0f, dc.as<float>(), s.n, nullptr));
        const std::vector<float> got = ToHost<float>(dc, c_size);
        ExpectMatches(got, m, s.n, s.n, ref, false, 0.0f, nullptr, where + "_f32");
        // Padding rows (zero codes) must come out exactly zero.
        for (std::size_t i = static_cast<std::size_t>(m) * s.n; i < c_size; ++i) {
          ASSERT_EQ(got[i], 0.0f) << where << " padding row element " << i;
        }
      }
      if (m != 16) continue;
      {  // float32, beta = 1: accumulate into C.
        const std::vector<float> c_in = RandomActivations(c_size, rng);
        DeviceBuffer dc = ToDevice(c_in);
        SIROCCO_FP8_ASSERT_OK(blas.GemmNtFp8(p, 1.0f, dc.as<float>(), s.n, nullptr));
        ExpectMatches(ToHost<float>(dc, c_size), m, s.n, s.n, ref, false, 1.0f, &c_in, where + "_f32_beta1");
      }
      {  // bf16 output.
        DeviceBuffer dc = FilledDevice(sizeof(Bf16) * c_size, 0xff);
        SIROCCO_FP8_ASSERT_OK(blas.GemmNtFp8(p, dc.as<Bf16>(), s.n, nullptr));
        const std::vector<Bf16> got16 = ToHost<Bf16>(dc, c_size);
        std::vector<float> got(c_size);
        std::transform(got16.begin(), got16.end(), got.begin(), FromBf16);
        ExpectMatches(got, m, s.n, s.n, ref, true, 0.0f, nullptr, where + "_bf16");
      }
    }
  }
}

TEST_F(CudaFp8GemmTest, PerTensorScalingMatchesReferenceOnModelShapes) {
  CheckModelShapes(*blas_, Fp8Scaling::kPerTensor, rng_);
}

TEST_F(CudaFp8GemmTest, BlockScalingMatchesReferenceOnModelShapes) {
  if (BlockScalingMissing()) GTEST_SKIP() << "cuBLASLt block scaling is for compute capability 9.x";
  CheckModelShapes(*blas_, Fp8Scaling::kBlock, rng_);
}

// Leading dimensions wider than the rows, a partial last 128-row weight block
// (n = 264), three k groups (scale stride padded 3 -> 4); the padding columns
// of C must survive.
TEST_F(CudaFp8GemmTest, HonoursLeadingDimensionsAndPartialWeightBlocks) {
  constexpr int m = 20;
  constexpr int n = 264;
  constexpr int k = 384;
  constexpr int lda = k + 16;
  constexpr int ldb = k + 32;
  constexpr int ldc = n + 8;
  constexpr float kSentinel = -12345.0f;
  for (Fp8Scaling scaling : {Fp8Scaling::kPerTensor, Fp8Scaling::kBlock}) {
    if (scaling == Fp8Scaling::kBlock && BlockScalingMissing()) continue;
    const RandomProblem pr = MakeProblem(m, n, k, scaling, rng_);
    std::vector<Fp8E4M3> a(static_cast<std::size_t>(m) * lda, Fp8E4M3{0x7F});  // NaN in the padding
    std::vector<Fp8E4M3> b(static_cast<std::size_t>(n) * ldb, Fp8E4M3{0x7F});
    for (int i = 0; i < m; ++i) std::copy_n(pr.a.begin() + i * k, k, a.begin() + i * lda);
    for (int j = 0; j < n; ++j) std::copy_n(pr.b.begin() + j * k, k, b.begin() + j * ldb);
    const DeviceBuffer da = ToDevice(a);
    const DeviceBuffer db = ToDevice(b);
    const DeviceBuffer da_scale = ToDevice(DeviceAScale(pr.host, scaling, m, m));
    const DeviceBuffer db_scale = ToDevice(DeviceBScale(pr.host, scaling));
    const Fp8GemmParams p =
        WithOperands({.m = m, .n = n, .k = k, .lda = lda, .ldb = ldb, .scaling = scaling}, da, db, da_scale, db_scale);
    std::vector<int> all_rows(m);
    for (int i = 0; i < m; ++i) all_rows[i] = i;
    const Reference ref = ComputeReference(pr.host, all_rows);

    std::vector<float> c0(static_cast<std::size_t>(m) * ldc, kNaN);
    for (int i = 0; i < m; ++i) std::fill_n(c0.begin() + i * ldc + n, ldc - n, kSentinel);
    DeviceBuffer dc = ToDevice(c0);
    SIROCCO_FP8_ASSERT_OK(blas_->GemmNtFp8(p, 0.0f, dc.as<float>(), ldc, nullptr));
    const std::vector<float> got = ToHost<float>(dc, c0.size());
    ExpectMatches(got, m, n, ldc, ref, false, 0.0f, nullptr, std::string("strided_") + ScalingName(scaling));
    for (int i = 0; i < m; ++i) {
      for (int j = n; j < ldc; ++j) EXPECT_EQ(got[i * ldc + j], kSentinel) << "C padding (" << i << ", " << j << ")";
    }
  }
}

// k = 320: the last group is 64 wide. cuBLASLt's documentation sizes the
// scales with ceil(k / 128) but does not promise kernels for it; without one
// the product is Unimplemented and the test says so.
TEST_F(CudaFp8GemmTest, BlockScalingWithAPartialLastGroup) {
  if (BlockScalingMissing()) GTEST_SKIP() << "cuBLASLt block scaling is for compute capability 9.x";
  constexpr int m = 8;
  constexpr int n = 128;
  constexpr int k = 320;
  const RandomProblem pr = MakeProblem(m, n, k, Fp8Scaling::kBlock, rng_);
  const DeviceBuffer da = ToDevice(pr.a);
  const DeviceBuffer db = ToDevice(pr.b);
  const DeviceBuffer da_scale = ToDevice(DeviceAScale(pr.host, Fp8Scaling::kBlock, m, m));
  const DeviceBuffer db_scale = ToDevice(DeviceBScale(pr.host, Fp8Scaling::kBlock));
  const Fp8GemmParams p = WithOperands({.m = m, .n = n, .k = k, .lda = k, .ldb = k, .scaling = Fp8Scaling::kBlock}, da,
                                       db, da_scale, db_scale);
  DeviceBuffer dc = FilledDevice(sizeof(float) * m * n, 0xff);
  const absl::Status st = blas_->GemmNtFp8(p, 0.0f, dc.as<float>(), n, nullptr);
  if (st.code() == absl::StatusCode::kUnimplemented) GTEST_SKIP() << st;
  SIROCCO_FP8_ASSERT_OK(st);
  std::vector<int> all_rows(m);
  for (int i = 0; i < m; ++i) all_rows[i] = i;
  ExpectMatches(ToHost<float>(dc, static_cast<std::size_t>(m) * n), m, n, n, ComputeReference(pr.host, all_rows), false,
                0.0f, nullptr, "partial_group");
}

// The path the engine takes: float32 activations quantised on the device,
// then multiplied by block- or tensor-scaled weights. The quantisers being
// bit-exact, the reference uses the host's codes and scales.
TEST_F(CudaFp8GemmTest, QuantizedActivationsFeedTheProduct) {
  constexpr int m = 64;
  constexpr int n = 512;
  constexpr int k = 1024;
  for (Fp8Scaling scaling : {Fp8Scaling::kPerTensor, Fp8Scaling::kBlock}) {
    if (scaling == Fp8Scaling::kBlock && BlockScalingMissing()) continue;
    const std::vector<float> x = RandomActivations(static_cast<std::size_t>(m) * k, rng_);
    RandomProblem pr = MakeProblem(m, n, k, scaling, rng_);
    // Replace the random activations by the host quantisation of x.
    HostOperands& h = pr.host;
    if (scaling == Fp8Scaling::kBlock) {
      for (int i = 0; i < m; ++i) {
        for (int g = 0; g < h.groups; ++g) {
          float amax = 0.0f;
          for (int c = g * kFp8BlockSize; c < (g + 1) * kFp8BlockSize; ++c)
            amax = std::fmax(amax, std::fabs(x[i * k + c]));
          const float s = HostScale(amax);
          h.a_scale[i * h.groups + g] = s;
          for (int c = g * kFp8BlockSize; c < (g + 1) * kFp8BlockSize; ++c) {
            h.a[i * k + c] = engine::F8E4M3ToFloat(HostCode(x[i * k + c], s));
          }
        }
      }
    } else {
      float amax = 0.0f;
      for (float v : x) amax = std::fmax(amax, std::fabs(v));
      const float s = HostScale(amax);
      std::fill(h.a_scale.begin(), h.a_scale.end(), s);
      for (std::size_t i = 0; i < x.size(); ++i) h.a[i] = engine::F8E4M3ToFloat(HostCode(x[i], s));
    }

    const DeviceBuffer dx = ToDevice(x);
    DeviceBuffer dq = FilledDevice(static_cast<std::size_t>(m) * k, 0xff);
    DeviceBuffer da_scale = FilledDevice(sizeof(float) * (scaling == Fp8Scaling::kBlock ? h.groups * m : 1), 0xff);
    if (scaling == Fp8Scaling::kBlock) {
      SIROCCO_FP8_ASSERT_OK(
          QuantizeFp8Groups128(m, k, dx.as<float>(), k, dq.as<Fp8E4M3>(), k, da_scale.as<float>(), nullptr));
    } else {
      SIROCCO_FP8_ASSERT_OK(
          QuantizeFp8PerTensor(m, k, dx.as<float>(), k, dq.as<Fp8E4M3>(), k, da_scale.as<float>(), nullptr));
    }
    const DeviceBuffer db = ToDevice(pr.b);
    const DeviceBuffer db_scale = ToDevice(DeviceBScale(h, scaling));
    const Fp8GemmParams p =
        WithOperands({.m = m, .n = n, .k = k, .lda = k, .ldb = k, .scaling = scaling}, dq, db, da_scale, db_scale);
    DeviceBuffer dc = FilledDevice(sizeof(float) * m * n, 0xff);
    SIROCCO_FP8_ASSERT_OK(blas_->GemmNtFp8(p, 0.0f, dc.as<float>(), n, nullptr));
    std::vector<int> all_rows(m);
    for (int i = 0; i < m; ++i) all_rows[i] = i;
    ExpectMatches(ToHost<float>(dc, static_cast<std::size_t>(m) * n), m, n, n, ComputeReference(h, all_rows), false,
                  0.0f, nullptr, std::string("quantized_") + ScalingName(scaling));
  }
}

TEST_F(CudaFp8GemmTest, EmptyInnerDimensionZeroesOrKeepsC) {
  constexpr int m = 4;
  constexpr int n = 8;
  const std::vector<float> c0 = RandomActivations(m * n, rng_);
  for (float beta : {0.0f, 1.0f}) {
    DeviceBuffer dc = ToDevice(c0);
    Fp8GemmParams p;
    p.m = m;
    p.n = n;
    p.lda = p.ldb = 16;
    SIROCCO_FP8_ASSERT_OK(blas_->GemmNtFp8(p, beta, dc.as<float>(), n, nullptr));
    const std::vector<float> got = ToHost<float>(dc, c0.size());
    for (int i = 0; i < m * n; ++i) EXPECT_EQ(got[i], beta * c0[i]) << "beta=" << beta << " i=" << i;
  }
}

// On a device without the needed compute capability the products refuse
// instead of failing inside cuBLASLt.
TEST(CudaFp8Capability, ProductsAreUnimplementedBelowHopper) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  absl::StatusOr<std::unique_ptr<BlasLt>> blas = BlasLt::Create();
  ASSERT_TRUE(blas.ok()) << blas.status();
  if ((*blas)->SupportsBlockScaling()) GTEST_SKIP() << "this device runs every FP8 product";
  const DeviceBuffer codes = FilledDevice(64 * 256, 0);
  const DeviceBuffer scales = FilledDevice(sizeof(float) * 64, 0);
  DeviceBuffer c = FilledDevice(sizeof(float) * 8 * 64, 0);
  Fp8GemmParams p = WithOperands({.m = 8, .n = 64, .k = 256, .lda = 256, .ldb = 256, .scaling = Fp8Scaling::kBlock},
                                 codes, codes, scales, scales);
  EXPECT_EQ((*blas)->GemmNtFp8(p, 0.0f, c.as<float>(), 64, nullptr).code(), absl::StatusCode::kUnimplemented);
  if (!(*blas)->SupportsFp8()) {
    p.scaling = Fp8Scaling::kPerTensor;
    EXPECT_EQ((*blas)->GemmNtFp8(p, 0.0f, c.as<float>(), 64, nullptr).code(), absl::StatusCode::kUnimplemented);
  }
}

// ---------------------------------------------------------------------------
// Grouped expert products on FP8 weights (weight-only quantisation): each
// expert's [n, k] e4m3 codes times its 128 x 128 block scales, float32
// activations, against a double-precision host sum over the dequantised
// weights. Shapes: the real experts' 4096 <-> 2048 with 8 experts, a partial
// last block (n = 200, k = 320), and an expert with no rows.

TEST(CudaFp8GroupedTest, ExpertProductsOnBlockScaledWeightsMatchTheHost) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(41u);
  struct Case {
    int n, k;
    std::vector<std::int32_t> counts;
  };
  for (const Case& c : {Case{4096, 2048, {3, 0, 9, 1, 4, 4, 2, 1}}, Case{2048, 4096, {1, 1, 0, 30, 2, 2, 1, 3}},
                        Case{200, 320, {5, 0, 70}}}) {
    const int groups = static_cast<int>(c.counts.size());
    std::vector<std::int32_t> offsets(static_cast<std::size_t>(groups) + 1, 0);
    for (int g = 0; g < groups; ++g) {
      offsets[static_cast<std::size_t>(g) + 1] =
          offsets[static_cast<std::size_t>(g)] + c.counts[static_cast<std::size_t>(g)];
    }
    const int rows = offsets.back();
    const std::int64_t w_stride = static_cast<std::int64_t>(c.n) * c.k;
    const int bn = Groups(c.n), bk = Groups(c.k);
    const std::int64_t scale_stride = static_cast<std::int64_t>(bn) * bk;
    const std::vector<float> a = RandomActivations(static_cast<std::size_t>(rows) * c.k, rng);
    const std::vector<Fp8E4M3> codes = RandomCodes(static_cast<std::size_t>(w_stride * groups), rng);
    std::vector<float> scales(static_cast<std::size_t>(scale_stride * groups));
    for (float& v : scales) v = RandomScale(rng);

    const DeviceBuffer da = ToDevice(a);
    const DeviceBuffer dw = ToDevice(codes);
    const DeviceBuffer ds = ToDevice(scales);
    const DeviceBuffer doff = ToDevice(offsets);
    const DeviceBuffer dc = FilledDevice(sizeof(float) * static_cast<std::size_t>(rows) * c.n, 0xff);
    GroupedGemmParams p;
    p.num_groups = groups;
    p.rows = rows;
    p.n = c.n;
    p.k = c.k;
    p.a = da.as<float>();
    p.lda = c.k;
    p.offsets = doff.as<std::int32_t>();
    p.w_fp8 = dw.as<std::uint8_t>();
    p.w_scales = ds.as<float>();
    p.w_scale_stride = scale_stride;
    p.ldw = c.k;
    p.w_stride = w_stride;
    p.c = dc.as<float>();
    p.ldc = c.n;
    const absl::Status st = GroupedGemmNt(p, nullptr);
    ASSERT_TRUE(st.ok()) << st;
    const std::vector<float> got = ToHost<float>(dc, static_cast<std::size_t>(rows) * c.n);

    // Sampled output columns of every row; the bound is float32 rounding of
    // a k-term sum, relative to the sum of |terms|.
    for (int g = 0; g < groups; ++g) {
      for (int r = offsets[static_cast<std::size_t>(g)]; r < offsets[static_cast<std::size_t>(g) + 1]; ++r) {
        for (int col = r % 7; col < c.n; col += 97) {
          double want = 0.0, mag = 0.0;
          for (int x = 0; x < c.k; ++x) {
            const std::size_t wi = static_cast<std::size_t>(g * w_stride + static_cast<std::int64_t>(col) * c.k + x);
            const double w = static_cast<double>(Decode(codes[wi])) *
                             scales[static_cast<std::size_t>(g * scale_stride + (col / 128) * bk + x / 128)];
            const double term = static_cast<double>(a[static_cast<std::size_t>(r) * c.k + x]) * w;
            want += term;
            mag += std::fabs(term);
          }
          const float v = got[static_cast<std::size_t>(r) * c.n + col];
          ASSERT_LE(std::fabs(v - want), 1e-5 * std::max(1.0, std::sqrt(c.k / 256.0)) * mag + 1e-30)
              << "n=" << c.n << " k=" << c.k << " group " << g << " row " << r << " col " << col;
        }
      }
    }
  }
}

}  // namespace
}  // namespace sirocco::kernels::cuda
