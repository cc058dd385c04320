#include "engine/dtype.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sirocco::engine {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// The value a binary float encoding denotes, computed straight from the
// textbook definition in double precision, independently of dtype.cc.
double Decode(uint32_t bits, int exp_bits, int mant_bits, int bias) {
  const uint32_t mant = bits & ((1u << mant_bits) - 1);
  const int exp = static_cast<int>((bits >> mant_bits) & ((1u << exp_bits) - 1));
  const double sign = ((bits >> (exp_bits + mant_bits)) & 1) != 0 ? -1.0 : 1.0;
  if (exp == 0) return sign * std::ldexp(static_cast<double>(mant), 1 - bias - mant_bits);
  return sign * std::ldexp(1.0 + std::ldexp(static_cast<double>(mant), -mant_bits), exp - bias);
}

bool IsNanBf16(uint16_t b) { return (b & 0x7F80) == 0x7F80 && (b & 0x7F) != 0; }
bool IsNanF16(uint16_t b) { return (b & 0x7C00) == 0x7C00 && (b & 0x3FF) != 0; }
bool IsNanE4M3(uint8_t b) { return (b & 0x7F) == 0x7F; }

TEST(DTypeTest, NamesAndSizesRoundTrip) {
  struct Known {
    DType dtype;
    const char* name;
    size_t size;
  };
  const Known known[] = {
      {DType::kF32, "F32", 4},        {DType::kF16, "F16", 2},        {DType::kBF16, "BF16", 2},
      {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E5M2, "F8_E5M2", 1}, {DType::kF8E8M0, "F8_E8M0", 1},
      {DType::kI8, "I8", 1},          {DType::kU8, "U8", 1},          {DType::kI16, "I16", 2},
      {DType::kU16, "U16", 2},        {DType::kI32, "I32", 4},        {DType::kU32, "U32", 4},
      {DType::kI64, "I64", 8},        {DType::kU64, "U64", 8},        {DType::kBool, "BOOL", 1},
      {DType::kF64, "F64", 8},
  };
  for (const Known& k : known) {
    EXPECT_EQ(DTypeName(k.dtype), k.name);
    EXPECT_EQ(DTypeSize(k.dtype), k.size) << k.name;
    absl::StatusOr<DType> parsed = ParseDType(k.name);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, k.dtype) << k.name;
  }
}

TEST(DTypeTest, ParseRejectsUnknownNames) {
  for (const char* name : {"", "f32", "FP32", "F8_E4M3FN", "F4", "BF16 "}) {
    absl::StatusOr<DType> parsed = ParseDType(name);
    ASSERT_FALSE(parsed.ok()) << name;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(parsed.status().message()).find(std::string("\"") + name + "\""), std::string::npos)
        << parsed.status();
  }
}

TEST(Bf16Test, KnownBitPatterns) {
  EXPECT_EQ(Bf16ToFloat(0x3F80), 1.0f);
  EXPECT_EQ(Bf16ToFloat(0xC000), -2.0f);
  EXPECT_EQ(Bf16ToFloat(0x7F80), kInf);
  EXPECT_EQ(Bf16ToFloat(0x0001), std::ldexp(1.0f, -133));  // smallest subnormal
  EXPECT_TRUE(std::isnan(Bf16ToFloat(0x7FC0)));
  EXPECT_EQ(FloatToBf16(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xC000);
  EXPECT_EQ(FloatToBf16(kInf), 0x7F80);
  EXPECT_EQ(FloatToBf16(-kInf), 0xFF80);
  EXPECT_EQ(FloatToBf16(-0.0f), 0x8000);
  // float max rounds up out of range.
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7F80);
}

TEST(Bf16Test, NanStaysNanWithSign) {
  // A NaN whose payload lives only in the low 16 bits: plain truncation
  // would produce infinity.
  const float low_payload = std::bit_cast<float>(0x7F800001u);
  ASSERT_TRUE(std::isnan(low_payload));
  EXPECT_TRUE(IsNanBf16(FloatToBf16(low_payload)));
  EXPECT_EQ(FloatToBf16(low_payload) & 0x8000, 0);
  const float negative = std::bit_cast<float>(0xFFC00000u);
  EXPECT_TRUE(IsNanBf16(FloatToBf16(negative)));
  EXPECT_EQ(FloatToBf16(negative) & 0x8000, 0x8000);
  EXPECT_EQ(FloatToBf16(std::bit_cast<float>(0x7FC00000u)), 0x7FC0);
}

TEST(Bf16Test, RoundsHalfToEven) {
  // 1 + 2^-8 lies halfway between 0x3F80 (1.0) and 0x3F81 (1 + 2^-7).
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3F81);
  EXPECT_EQ(FloatToBf16(-(1.0f + std::ldexp(1.0f, -8))), 0xBF80);
}

TEST(Bf16Test, AllPatternsDecodeAndRoundTrip) {
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    const auto bits = static_cast<uint16_t>(b);
    const float f = Bf16ToFloat(bits);
    if (IsNanBf16(bits)) {
      EXPECT_TRUE(std::isnan(f)) << std::hex << b;
      EXPECT_TRUE(IsNanBf16(FloatToBf16(f))) << std::hex << b;
      continue;
    }
    if ((bits & 0x7FFF) != 0x7F80) {
      EXPECT_EQ(static_cast<double>(f), Decode(bits, 8, 7, 127)) << std::hex << b;
    }
    EXPECT_EQ(FloatToBf16(f), bits) << std::hex << b;
  }
}

// For every pair of adjacent finite non-negative codes, the exact midpoint
// must round to the even code, and the floats just either side of it to
// the nearer code. Midpoints of these formats are exact in float.
template <typename Code, typename ToFloat, typename FromFloat>
void CheckAllMidpoints(uint32_t last_finite, Code sign_bit, ToFloat to_float, FromFloat from_float) {
  for (uint32_t lo = 0; lo < last_finite; ++lo) {
    const auto a = static_cast<Code>(lo);
    const auto b = static_cast<Code>(lo + 1);
    const double exact_mid = (static_cast<double>(to_float(a)) + static_cast<double>(to_float(b))) / 2;
    const auto mid = static_cast<float>(exact_mid);
    ASSERT_EQ(static_cast<double>(mid), exact_mid) << std::hex << lo;
    const Code even = (lo % 2 == 0) ? a : b;
    EXPECT_EQ(from_float(mid), even) << std::hex << lo;
    EXPECT_EQ(from_float(-mid), static_cast<Code>(even | sign_bit)) << std::hex << lo;
    EXPECT_EQ(from_float(std::nextafter(mid, 0.0f)), a) << std::hex << lo;
    EXPECT_EQ(from_float(std::nextafter(mid, kInf)), b) << std::hex << lo;
  }
}

TEST(Bf16Test, AllMidpointsRoundToNearestEven) {
  CheckAllMidpoints<uint16_t>(0x7F7F, 0x8000, Bf16ToFloat, FloatToBf16);
}

TEST(F16Test, KnownBitPatterns) {
  EXPECT_EQ(F16ToFloat(0x3C00), 1.0f);
  EXPECT_EQ(F16ToFloat(0x7BFF), 65504.0f);
  EXPECT_EQ(F16ToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToFloat(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(F16ToFloat(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(F16ToFloat(0xC000), -2.0f);
  EXPECT_EQ(F16ToFloat(0x3555), 0x155 / 1024.0f * 0.25f + 0.25f);
  EXPECT_EQ(F16ToFloat(0x7C00), kInf);
  EXPECT_EQ(F16ToFloat(0xFC00), -kInf);
  EXPECT_TRUE(std::isnan(F16ToFloat(0x7E00)));
  EXPECT_TRUE(std::isnan(F16ToFloat(0x7C01)));
  EXPECT_TRUE(std::signbit(F16ToFloat(0x8000)));

  EXPECT_EQ(FloatToF16(1.0f), 0x3C00);
  EXPECT_EQ(FloatToF16(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(FloatToF16(-0.0f), 0x8000);
  EXPECT_EQ(FloatToF16(kInf), 0x7C00);
  EXPECT_EQ(FloatToF16(-kInf), 0xFC00);
  EXPECT_TRUE(IsNanF16(FloatToF16(std::nanf(""))));
  EXPECT_TRUE(IsNanF16(FloatToF16(std::bit_cast<float>(0x7F800001u))));
}

TEST(F16Test, OverflowUnderflowAndTies) {
  // 65520 is halfway between 65504 (odd code 0x7BFF) and 2^16 (not
  // representable, so infinity): the tie goes to the even side.
  EXPECT_EQ(FloatToF16(65519.996f), 0x7BFF);
  EXPECT_EQ(FloatToF16(65520.0f), 0x7C00);
  EXPECT_EQ(FloatToF16(1e10f), 0x7C00);
  EXPECT_EQ(FloatToF16(-1e10f), 0xFC00);
  EXPECT_EQ(FloatToF16(std::numeric_limits<float>::max()), 0x7C00);
  // Subnormal ties: 2^-25 is half the smallest subnormal.
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(FloatToF16(std::ldexp(3.0f, -25)), 0x0002);
  EXPECT_EQ(FloatToF16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -25)), 0x0400);
  EXPECT_EQ(FloatToF16(1e-30f), 0x0000);
  EXPECT_EQ(FloatToF16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(FloatToF16(-std::numeric_limits<float>::denorm_min()), 0x8000);
  // Normal ties.
  EXPECT_EQ(FloatToF16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  EXPECT_EQ(FloatToF16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);
}

TEST(F16Test, AllPatternsDecodeAndRoundTrip) {
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    const auto bits = static_cast<uint16_t>(b);
    const float f = F16ToFloat(bits);
    if (IsNanF16(bits)) {
      EXPECT_TRUE(std::isnan(f)) << std::hex << b;
      EXPECT_TRUE(IsNanF16(FloatToF16(f))) << std::hex << b;
      continue;
    }
    if ((bits & 0x7C00) != 0x7C00) {
      EXPECT_EQ(static_cast<double>(f), Decode(bits, 5, 10, 15)) << std::hex << b;
    }
    EXPECT_EQ(FloatToF16(f), bits) << std::hex << b;
  }
}

TEST(F16Test, AllMidpointsRoundToNearestEven) { CheckAllMidpoints<uint16_t>(0x7BFF, 0x8000, F16ToFloat, FloatToF16); }

TEST(F8E4M3Test, KnownBitPatterns) {
  EXPECT_EQ(F8E4M3ToFloat(0x7E), 448.0f);
  EXPECT_EQ(F8E4M3ToFloat(0xFE), -448.0f);
  EXPECT_EQ(F8E4M3ToFloat(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(F8E4M3ToFloat(0x07), std::ldexp(7.0f, -9));
  EXPECT_EQ(F8E4M3ToFloat(0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(F8E4M3ToFloat(0x38), 1.0f);
  EXPECT_EQ(F8E4M3ToFloat(0x78), 256.0f);  // no infinity at exponent 15
  EXPECT_TRUE(std::isnan(F8E4M3ToFloat(0x7F)));
  EXPECT_TRUE(std::isnan(F8E4M3ToFloat(0xFF)));
  EXPECT_TRUE(std::signbit(F8E4M3ToFloat(0x80)));
  EXPECT_EQ(FloatToF8E4M3(448.0f), 0x7E);
  EXPECT_EQ(FloatToF8E4M3(1.0f), 0x38);
  EXPECT_EQ(FloatToF8E4M3(std::ldexp(1.0f, -9)), 0x01);
  EXPECT_EQ(FloatToF8E4M3(-0.0f), 0x80);
}

TEST(F8E4M3Test, SaturatesAndKeepsNan) {
  EXPECT_EQ(FloatToF8E4M3(449.0f), 0x7E);
  EXPECT_EQ(FloatToF8E4M3(464.0f), 0x7E);  // would round to the NaN code
  EXPECT_EQ(FloatToF8E4M3(500.0f), 0x7E);
  EXPECT_EQ(FloatToF8E4M3(1e30f), 0x7E);
  EXPECT_EQ(FloatToF8E4M3(kInf), 0x7E);
  EXPECT_EQ(FloatToF8E4M3(-kInf), 0xFE);
  EXPECT_EQ(FloatToF8E4M3(-1000.0f), 0xFE);
  EXPECT_TRUE(IsNanE4M3(FloatToF8E4M3(std::nanf(""))));
  EXPECT_TRUE(IsNanE4M3(FloatToF8E4M3(-std::nanf(""))));
}

TEST(F8E4M3Test, RoundsHalfToEven) {
  EXPECT_EQ(FloatToF8E4M3(1.0f + 1.0f / 16), 0x38);  // between 1 and 1.125
  EXPECT_EQ(FloatToF8E4M3(1.0f + 3.0f / 16), 0x3A);  // between 1.125 and 1.25
  EXPECT_EQ(FloatToF8E4M3(std::ldexp(1.0f, -10)), 0x00);
  EXPECT_EQ(FloatToF8E4M3(std::ldexp(3.0f, -10)), 0x02);
  EXPECT_EQ(FloatToF8E4M3(std::ldexp(1.0f, -11)), 0x00);
  EXPECT_EQ(FloatToF8E4M3(std::nextafter(std::ldexp(1.0f, -10), 1.0f)), 0x01);
  CheckAllMidpoints<uint8_t>(0x7E, 0x80, F8E4M3ToFloat, FloatToF8E4M3);
}

TEST(F8E4M3Test, AllPatternsDecodeAndRoundTrip) {
  for (uint32_t b = 0; b <= 0xFF; ++b) {
    const auto bits = static_cast<uint8_t>(b);
    const float f = F8E4M3ToFloat(bits);
    if (IsNanE4M3(bits)) {
      EXPECT_TRUE(std::isnan(f)) << b;
      continue;
    }
    EXPECT_EQ(static_cast<double>(f), Decode(bits, 4, 3, 7)) << b;
    EXPECT_EQ(FloatToF8E4M3(f), bits) << b;
  }
}

TEST(F8OtherTest, E5M2AndE8M0) {
  EXPECT_EQ(F8E5M2ToFloat(0x3C), 1.0f);
  EXPECT_EQ(F8E5M2ToFloat(0x7B), 57344.0f);
  EXPECT_EQ(F8E5M2ToFloat(0x01), std::ldexp(1.0f, -16));
  EXPECT_EQ(F8E5M2ToFloat(0x7C), kInf);
  EXPECT_TRUE(std::isnan(F8E5M2ToFloat(0x7D)));
  EXPECT_EQ(F8E8M0ToFloat(127), 1.0f);
  EXPECT_EQ(F8E8M0ToFloat(0), std::ldexp(1.0f, -127));
  EXPECT_EQ(F8E8M0ToFloat(254), std::ldexp(1.0f, 127));
  EXPECT_EQ(F8E8M0ToFloat(120), 1.0f / 128);
  EXPECT_TRUE(std::isnan(F8E8M0ToFloat(0xFF)));
}

TEST(ConvertToFloat32Test, WidensEachFloatTypeFromUnalignedSource) {
  const std::vector<float> want = {1.0f, -2.0f, 0.5f, 448.0f};
  struct Case {
    DType dtype;
    std::vector<uint8_t> bytes;  // little-endian encodings of `want`
  };
  const Case cases[] = {
      {DType::kF32, {0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0, 0x00, 0x00, 0x00, 0x3F, 0x00, 0x00, 0xE0, 0x43}},
      {DType::kF16, {0x00, 0x3C, 0x00, 0xC0, 0x00, 0x38, 0x00, 0x5F}},
      {DType::kBF16, {0x80, 0x3F, 0x00, 0xC0, 0x00, 0x3F, 0xE0, 0x43}},
      {DType::kF8E4M3, {0x38, 0xC0, 0x30, 0x7E}},
      {DType::kF8E5M2, {0x3C, 0xC0, 0x38, 0x5F}},
      {DType::kF64, {0, 0, 0, 0, 0, 0, 0xF0, 0x3F, 0, 0, 0, 0, 0, 0, 0x00, 0xC0,
                     0, 0, 0, 0, 0, 0, 0xE0, 0x3F, 0, 0, 0, 0, 0, 0, 0x7C, 0x40}},
  };
  for (const Case& c : cases) {
    // One byte of offset makes every multi-byte element misaligned.
    std::vector<uint8_t> buffer(c.bytes.size() + 1);
    std::memcpy(buffer.data() + 1, c.bytes.data(), c.bytes.size());
    std::vector<float> got(want.size(), -1.0f);
    const absl::Status status = ConvertToFloat32(c.dtype, buffer.data() + 1, want.size(), got.data());
    ASSERT_TRUE(status.ok()) << status;
    EXPECT_EQ(got, want) << DTypeName(c.dtype);
  }
  const uint8_t e8m0[] = {127, 128, 126};
  std::vector<float> got(3);
  ASSERT_TRUE(ConvertToFloat32(DType::kF8E8M0, e8m0, 3, got.data()).ok());
  EXPECT_EQ(got, (std::vector<float>{1.0f, 2.0f, 0.5f}));
}

TEST(ConvertToFloat32Test, RejectsNonFloatTypes) {
  const int32_t src[2] = {1, 2};
  float dst[2];
  for (DType dtype : {DType::kI32, DType::kI64, DType::kU8, DType::kBool}) {
    const absl::Status status = ConvertToFloat32(dtype, src, 1, dst);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(status.message()).find(std::string(DTypeName(dtype))), std::string::npos) << status;
  }
}

// Block FP8 quantisation, checked through invariants that do not restate its
// formula: every block's largest code is the largest e4m3 magnitude; each
// value comes back within e4m3's rounding of the original (relative 2^-4 for
// normals, half the smallest subnormal step times the scale below); an
// all-zero block keeps scale 1; blocks are independent (changing one block's
// values leaves every other block's codes and scale alone).
TEST(Fp8BlocksTest, QuantisationInvariants) {
  const std::int64_t batch = 2, rows = 130, cols = 200;  // partial blocks both ways
  std::vector<float> w(static_cast<std::size_t>(batch * rows * cols));
  std::uint32_t state = 12345;
  for (float& v : w) {
    state = state * 1664525u + 1013904223u;
    v = (static_cast<float>(state >> 8) / 16777216.0f - 0.5f) * 0.2f;
  }
  // Matrix 1's block (0, 1) all zero; block (1, 0) spans a wide range.
  for (std::int64_t r = 0; r < 128; ++r) {
    for (std::int64_t c = 128; c < cols; ++c) w[static_cast<std::size_t>((rows + r) * cols + c)] = 0.0f;
  }
  for (std::int64_t c = 0; c < 128; ++c)
    w[static_cast<std::size_t>((rows + 128) * cols + c)] *= std::ldexp(1.0f, -c / 8);
  const Fp8BlockWeights q = QuantizeFp8Blocks(batch, rows, cols, w.data());
  ASSERT_EQ(q.scale_rows(), 2);
  ASSERT_EQ(q.scale_cols(), 2);
  ASSERT_EQ(q.codes.size(), w.size());
  ASSERT_EQ(q.scales.size(), static_cast<std::size_t>(batch * 4));
  std::vector<float> back(w.size());
  DequantizeFp8Blocks(q, back.data());
  std::vector<int> max_code(static_cast<std::size_t>(batch * 4), 0);
  for (std::int64_t b = 0; b < batch; ++b) {
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t c = 0; c < cols; ++c) {
        const auto i = static_cast<std::size_t>((b * rows + r) * cols + c);
        const auto blk = static_cast<std::size_t>(b * 4 + (r / 128) * 2 + c / 128);
        const float s = q.scales[blk];
        max_code[blk] = std::max(max_code[blk], q.codes[i] & 0x7F);
        EXPECT_EQ(back[i], F8E4M3ToFloat(q.codes[i]) * s);
        const double err = std::fabs(static_cast<double>(back[i]) - w[i]);
        EXPECT_LE(err, 1.000001 * std::max(std::fabs(static_cast<double>(w[i])) / 16.0, std::ldexp(1.0, -10) * s)) << i;
      }
    }
  }
  for (std::size_t blk = 0; blk < max_code.size(); ++blk) {
    if (blk == 5) {
      EXPECT_EQ(q.scales[blk], 1.0f) << "an all-zero block";
      EXPECT_EQ(max_code[blk], 0);
    } else {
      EXPECT_EQ(max_code[blk], 0x7E) << "block " << blk << ": largest code is not 448";
    }
  }
  std::vector<float> w2 = w;
  for (std::int64_t c = 0; c < 128; ++c) w2[static_cast<std::size_t>(c)] *= 3.0f;  // matrix 0, block (0, 0)
  const Fp8BlockWeights q2 = QuantizeFp8Blocks(batch, rows, cols, w2.data());
  for (std::size_t blk = 1; blk < q.scales.size(); ++blk) EXPECT_EQ(q2.scales[blk], q.scales[blk]) << blk;
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      if (r < 128 && c < 128) continue;
      const auto i = static_cast<std::size_t>(r * cols + c);
      EXPECT_EQ(q2.codes[i], q.codes[i]) << r << "," << c;
    }
  }
}

// An FP8 checkpoint, read as float32 values (code * scale, as the loader does)
// and quantised again, gives back its codes when each block's largest code is
// 448 (how FP8 checkpoints are written); the scales come back within one
// float32 ulp.
TEST(Fp8BlocksTest, RequantisingFp8ValuesGivesBackTheCodes) {
  const std::int64_t rows = 256, cols = 384;
  Fp8BlockWeights src;
  src.batch = 1;
  src.rows = rows;
  src.cols = cols;
  src.codes.resize(static_cast<std::size_t>(rows * cols));
  std::uint32_t state = 777;
  for (auto& code : src.codes) {
    state = state * 1664525u + 1013904223u;
    code = static_cast<std::uint8_t>((state >> 24) & 0xFF);
    if ((code & 0x7F) == 0x7F) code &= 0xFE;  // no NaN codes
  }
  src.scales.resize(static_cast<std::size_t>(src.scale_stride()));
  for (std::size_t i = 0; i < src.scales.size(); ++i) {
    state = state * 1664525u + 1013904223u;
    src.scales[i] = std::ldexp(1.0f + static_cast<float>(state >> 9) / 8388608.0f, -12 + static_cast<int>(i % 5));
    // Each block holds a 448 (code 0x7E).
    const std::int64_t r0 = static_cast<std::int64_t>(i) / src.scale_cols() * 128;
    const std::int64_t c0 = static_cast<std::int64_t>(i) % src.scale_cols() * 128;
    src.codes[static_cast<std::size_t>(r0 * cols + c0)] = 0x7E;
  }
  std::vector<float> values(src.codes.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      const auto i = static_cast<std::size_t>(r * cols + c);
      values[i] =
          F8E4M3ToFloat(src.codes[i]) * src.scales[static_cast<std::size_t>((r / 128) * src.scale_cols() + c / 128)];
    }
  }
  const Fp8BlockWeights q = QuantizeFp8Blocks(1, rows, cols, values.data());
  for (std::size_t i = 0; i < q.codes.size(); ++i) {
    // +0 and -0 are both zero.
    if ((src.codes[i] & 0x7F) == 0) {
      EXPECT_EQ(q.codes[i] & 0x7F, 0) << i;
    } else {
      EXPECT_EQ(q.codes[i], src.codes[i]) << i;
    }
  }
  for (std::size_t i = 0; i < q.scales.size(); ++i) {
    EXPECT_LE(std::fabs(q.scales[i] - src.scales[i]), std::nextafter(src.scales[i], 1e30f) - src.scales[i]) << i;
  }
}

// Large weights are quantised on several threads: the same result as one
// matrix at a time (each small enough for one thread).
TEST(Fp8BlocksTest, ThreadedQuantisationEqualsMatrixByMatrix) {
  const std::int64_t batch = 70, rows = 256, cols = 256;
  std::vector<float> w(static_cast<std::size_t>(batch * rows * cols));
  std::uint32_t state = 99;
  for (float& v : w) {
    state = state * 1664525u + 1013904223u;
    v = static_cast<float>(static_cast<std::int32_t>(state)) * 1e-9f;
  }
  const Fp8BlockWeights all = QuantizeFp8Blocks(batch, rows, cols, w.data());
  for (std::int64_t b = 0; b < batch; ++b) {
    const Fp8BlockWeights one = QuantizeFp8Blocks(1, rows, cols, w.data() + b * rows * cols);
    ASSERT_TRUE(std::equal(one.codes.begin(), one.codes.end(), all.codes.begin() + b * rows * cols)) << b;
    ASSERT_TRUE(std::equal(one.scales.begin(), one.scales.end(), all.scales.begin() + b * one.scale_stride())) << b;
  }
}

}  // namespace
}  // namespace sirocco::engine
