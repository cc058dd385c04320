#include "engine/dtype.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/parallel.h"

namespace sirocco::engine {
namespace {

static_assert(std::endian::native == std::endian::little,
              "checkpoint formats are little-endian; a big-endian host would "
              "need byte swaps in every loader");

struct DTypeEntry {
  DType dtype;
  std::string_view name;
  std::size_t size;
};

// Indexed by the enum value; the static_assert below keeps it in step.
constexpr std::array<DTypeEntry, 16> kDTypes = {{
    {DType::kF32, "F32", 4},
    {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2},
    {DType::kF8E4M3, "F8_E4M3", 1},
    {DType::kF8E5M2, "F8_E5M2", 1},
    {DType::kF8E8M0, "F8_E8M0", 1},
    {DType::kI8, "I8", 1},
    {DType::kU8, "U8", 1},
    {DType::kI16, "I16", 2},
    {DType::kU16, "U16", 2},
    {DType::kI32, "I32", 4},
    {DType::kU32, "U32", 4},
    {DType::kI64, "I64", 8},
    {DType::kU64, "U64", 8},
    {DType::kBool, "BOOL", 1},
    {DType::kF64, "F64", 8},
}};

constexpr bool TableMatchesEnum() {
  for (std::size_t i = 0; i < kDTypes.size(); ++i) {
    if (static_cast<std::size_t>(kDTypes[i].dtype) != i) return false;
  }
  return true;
}
static_assert(TableMatchesEnum());

const DTypeEntry& Entry(DType dtype) { return kDTypes[static_cast<std::size_t>(dtype)]; }

std::uint32_t FloatBits(float value) { return std::bit_cast<std::uint32_t>(value); }
float BitsFloat(std::uint32_t bits) { return std::bit_cast<float>(bits); }

// value >> shift, rounded to nearest with ties to even. 1 <= shift <= 31.
std::uint32_t ShiftRightRne(std::uint32_t value, int shift) {
  const std::uint32_t quotient = value >> shift;
  const std::uint32_t remainder = value & ((std::uint32_t{1} << shift) - 1);
  const std::uint32_t half = std::uint32_t{1} << (shift - 1);
  if (remainder > half || (remainder == half && (quotient & 1) != 0)) {
    return quotient + 1;
  }
  return quotient;
}

// Rounds a finite, non-negative float (given as bits) to a narrower binary
// format with `mant_bits` explicit mantissa bits and exponent bias `bias`,
// returning the unsigned encoding. Subnormals of the target are produced
// when the value is below its smallest normal. The caller handles overflow:
// a result may carry into the exponent field, which is exactly the correctly
// rounded next binade (or the all-ones exponent when it overflows).
std::uint32_t RoundToNarrow(std::uint32_t abs_bits, int mant_bits, int bias) {
  const int exp = static_cast<int>(abs_bits >> 23);
  const std::uint32_t mant = abs_bits & 0x7FFFFF;
  // Biased float32 exponent of the target's smallest normal, 2^(1 - bias).
  const int min_normal_exp = 127 + 1 - bias;
  const int drop = 23 - mant_bits;
  if (exp >= min_normal_exp) {
    const std::uint32_t rebased = (static_cast<std::uint32_t>(exp - min_normal_exp + 1) << 23) | mant;
    return ShiftRightRne(rebased, drop);
  }
  // Subnormal in the target: the value is m * 2^(exp - 150) with the hidden
  // bit made explicit, and the target's unit is 2^(1 - bias - mant_bits).
  // float32 subnormals (exp == 0) are far below any target's half-unit.
  if (exp == 0) return 0;
  const std::uint32_t m = mant | 0x800000;
  const int shift = drop + (min_normal_exp - exp);
  // m < 2^24, so beyond 24 the value is under half a unit and rounds to 0.
  if (shift > 24) return 0;
  return ShiftRightRne(m, shift);
}

template <typename Bits, typename Fn>
void WidenEach(const void* src, std::size_t count, float* dst, Fn convert) {
  const auto* bytes = static_cast<const unsigned char*>(src);
  for (std::size_t i = 0; i < count; ++i) {
    Bits bits;
    // memcpy: mapped checkpoint data carries no alignment guarantee.
    std::memcpy(&bits, bytes + i * sizeof(Bits), sizeof(Bits));
    dst[i] = convert(bits);
  }
}

}  // namespace

std::size_t DTypeSize(DType dtype) { return Entry(dtype).size; }

absl::string_view DTypeName(DType dtype) {
  const std::string_view name = Entry(dtype).name;
  return absl::string_view(name.data(), name.size());
}

absl::StatusOr<DType> ParseDType(std::string_view name) {
  for (const DTypeEntry& entry : kDTypes) {
    if (entry.name == name) return entry.dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype \"", absl::string_view(name.data(), name.size()), "\""));
}

float Bf16ToFloat(std::uint16_t bits) { return BitsFloat(static_cast<std::uint32_t>(bits) << 16); }

std::uint16_t FloatToBf16(float value) {
  const std::uint32_t bits = FloatBits(value);
  if (std::isnan(value)) {
    // Truncation could clear every payload bit and turn NaN into infinity;
    // setting the quiet bit keeps it a NaN.
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040);
  }
  // bf16 is the top half of a float, so RNE on the low 16 bits is the whole
  // conversion; a carry out of the mantissa correctly bumps the exponent and
  // turns the largest values into infinity.
  return static_cast<std::uint16_t>(ShiftRightRne(bits, 16) & 0xFFFF);
}

float F16ToFloat(std::uint16_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000) << 16;
  const std::uint32_t exp = (bits >> 10) & 0x1F;
  const std::uint32_t mant = bits & 0x3FF;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24 is exact in float.
    const float magnitude = std::ldexp(static_cast<float>(mant), -24);
    return sign != 0 ? -magnitude : magnitude;
  }
  if (exp == 0x1F) return BitsFloat(sign | 0x7F800000 | (mant << 13));
  return BitsFloat(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

std::uint16_t FloatToF16(float value) {
  const std::uint32_t bits = FloatBits(value);
  const auto sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000);
  const std::uint32_t abs_bits = bits & 0x7FFFFFFF;
  if (abs_bits > 0x7F800000) {
    // NaN: keep the top payload bits and force the quiet bit.
    return static_cast<std::uint16_t>(sign | 0x7E00 | ((abs_bits >> 13) & 0x3FF));
  }
  // 2^16 and above (including infinity) is past 65504 + half an ulp.
  if (abs_bits >= 0x47800000) return static_cast<std::uint16_t>(sign | 0x7C00);
  return static_cast<std::uint16_t>(sign | RoundToNarrow(abs_bits, 10, 15));
}

float F8E4M3ToFloat(std::uint8_t bits) {
  const bool negative = (bits & 0x80) != 0;
  const int exp = (bits >> 3) & 0xF;
  const int mant = bits & 0x7;
  float magnitude;
  if (exp == 0xF && mant == 0x7) {
    magnitude = std::numeric_limits<float>::quiet_NaN();
  } else if (exp == 0) {
    magnitude = std::ldexp(static_cast<float>(mant), -9);
  } else {
    magnitude = std::ldexp(static_cast<float>(8 + mant), exp - 7 - 3);
  }
  return negative ? -magnitude : magnitude;
}

std::uint8_t FloatToF8E4M3(float value) {
  const std::uint32_t bits = FloatBits(value);
  const auto sign = static_cast<std::uint8_t>((bits >> 24) & 0x80);
  const std::uint32_t abs_bits = bits & 0x7FFFFFFF;
  if (abs_bits > 0x7F800000) return static_cast<std::uint8_t>(sign | 0x7F);
  constexpr std::uint32_t kMaxCode = 0x7E;  // 448
  // 512 and above (including infinity): saturate without risking the
  // exponent arithmetic in RoundToNarrow.
  if (abs_bits >= 0x44000000) return static_cast<std::uint8_t>(sign | kMaxCode);
  std::uint32_t code = RoundToNarrow(abs_bits, 3, 7);
  // [464, 512) rounds to 0x7F, the NaN code: saturate instead.
  if (code > kMaxCode) code = kMaxCode;
  return static_cast<std::uint8_t>(sign | code);
}

float F8E5M2ToFloat(std::uint8_t bits) { return F16ToFloat(static_cast<std::uint16_t>(bits << 8)); }

float F8E8M0ToFloat(std::uint8_t bits) {
  if (bits == 0xFF) return std::numeric_limits<float>::quiet_NaN();
  // 2^-127 is a float subnormal; ldexp produces it exactly.
  return std::ldexp(1.0f, static_cast<int>(bits) - 127);
}

absl::Status ConvertToFloat32(DType dtype, const void* src, std::size_t count, float* dst) {
  if (count == 0) return absl::OkStatus();
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, src, count * sizeof(float));
      return absl::OkStatus();
    case DType::kF16:
      WidenEach<std::uint16_t>(src, count, dst, F16ToFloat);
      return absl::OkStatus();
    case DType::kBF16:
      WidenEach<std::uint16_t>(src, count, dst, Bf16ToFloat);
      return absl::OkStatus();
    case DType::kF8E4M3:
      WidenEach<std::uint8_t>(src, count, dst, F8E4M3ToFloat);
      return absl::OkStatus();
    case DType::kF8E5M2:
      WidenEach<std::uint8_t>(src, count, dst, F8E5M2ToFloat);
      return absl::OkStatus();
    case DType::kF8E8M0:
      WidenEach<std::uint8_t>(src, count, dst, F8E8M0ToFloat);
      return absl::OkStatus();
    case DType::kF64:
      WidenEach<double>(src, count, dst, [](double v) { return static_cast<float>(v); });
      return absl::OkStatus();
    default:
      break;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("ConvertToFloat32: dtype ", DTypeName(dtype), " is not a floating-point type"));
}

Fp8BlockWeights QuantizeFp8Blocks(std::int64_t batch, std::int64_t rows, std::int64_t cols, const float* w) {
  Fp8BlockWeights q;
  q.batch = batch;
  q.rows = rows;
  q.cols = cols;
  q.codes.resize(static_cast<std::size_t>(batch * rows * cols));
  q.scales.resize(static_cast<std::size_t>(batch * q.scale_stride()));
  const std::int64_t sr = q.scale_rows(), sc = q.scale_cols(), blk = kFp8WeightBlock;
  // One task per row of blocks, spread over the cores for large weights (a
  // real model's experts are tens of billions of values).
  ParallelFor(batch * sr, batch * rows * cols, [&](std::int64_t task) {
    const std::int64_t b = task / sr, r0 = task % sr * blk, r1 = std::min(rows, r0 + blk);
    const float* wb = w + b * rows * cols;
    std::uint8_t* cb = q.codes.data() + b * rows * cols;
    for (std::int64_t j = 0; j < sc; ++j) {
      const std::int64_t c0 = j * blk, c1 = std::min(cols, c0 + blk);
      float amax = 0.0f;
      for (std::int64_t r = r0; r < r1; ++r) {
        for (std::int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(wb[r * cols + c]));
      }
      float s = amax / 448.0f;
      if (!(s > 0.0f) || !std::isfinite(s)) s = 1.0f;
      q.scales[static_cast<std::size_t>(task * sc + j)] = s;
      for (std::int64_t r = r0; r < r1; ++r) {
        for (std::int64_t c = c0; c < c1; ++c) cb[r * cols + c] = FloatToF8E4M3(wb[r * cols + c] / s);
      }
    }
  });
  return q;
}

void DequantizeFp8Blocks(const Fp8BlockWeights& q, float* out) {
  const std::int64_t sr = q.scale_rows(), sc = q.scale_cols(), blk = kFp8WeightBlock;
  for (std::int64_t b = 0; b < q.batch; ++b) {
    for (std::int64_t r = 0; r < q.rows; ++r) {
      const std::int64_t at = (b * q.rows + r) * q.cols;
      const float* srow = q.scales.data() + (b * sr + r / blk) * sc;
      for (std::int64_t c = 0; c < q.cols; ++c) {
        out[at + c] = F8E4M3ToFloat(q.codes[static_cast<std::size_t>(at + c)]) * srow[c / blk];
      }
    }
  }
}

}  // namespace sirocco::engine
