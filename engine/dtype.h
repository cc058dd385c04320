// Element types of checkpoint tensors and their scalar conversions to float.
//
// The names are the ones safetensors headers use ("F32", "BF16", "F8_E4M3",
// ...), so a header string maps to a DType with ParseDType and back with
// DTypeName. The conversions are bit-exact and table-free; everything here is
// a pure function, callable from any thread.
//
// All multi-byte values are little-endian in files; this module (and the
// loaders built on it) assume a little-endian host, which is checked at
// compile time in dtype.cc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sirocco::engine {

enum class DType : std::uint8_t {
  kF32,     // "F32"
  kF16,     // "F16"     IEEE half
  kBF16,    // "BF16"    bfloat16
  kF8E4M3,  // "F8_E4M3" e4m3fn: bias 7, no infinities, S.1111.111 is NaN
  kF8E5M2,  // "F8_E5M2" the top byte of an IEEE half
  kF8E8M0,  // "F8_E8M0" unsigned power of two (MX block scales), 0xFF is NaN
  kI8,      // "I8"
  kU8,      // "U8"
  kI16,     // "I16"
  kU16,     // "U16"
  kI32,     // "I32"
  kU32,     // "U32"
  kI64,     // "I64"
  kU64,     // "U64"
  kBool,    // "BOOL"    one byte per element
  kF64,     // "F64"
};

// Bytes per element.
std::size_t DTypeSize(DType dtype);

// The safetensors name, e.g. "BF16". absl::string_view (which Debian's
// abseil keeps distinct from std::string_view) so that it goes straight
// into absl::StrCat for error messages.
absl::string_view DTypeName(DType dtype);

// Inverse of DTypeName; an unknown name is InvalidArgument.
[[nodiscard]] absl::StatusOr<DType> ParseDType(std::string_view name);

// bfloat16 <-> float. FloatToBf16 rounds to nearest, ties to even; overflow
// gives infinity; a NaN stays a (quiet) NaN with its sign.
float Bf16ToFloat(std::uint16_t bits);
std::uint16_t FloatToBf16(float value);

// IEEE half <-> float, with subnormals, infinities and NaNs. FloatToF16 rounds
// to nearest, ties to even; magnitudes that round past 65504 become infinity.
float F16ToFloat(std::uint16_t bits);
std::uint16_t FloatToF16(float value);

// float8 e4m3fn <-> float. Range +-448, smallest subnormal 2^-9.
//
// FloatToF8E4M3 rounds to nearest, ties to even, and SATURATES: any finite
// value or infinity beyond +-448 becomes +-448, NaN becomes NaN (0x7F with the
// sign). Saturation is what CUDA's __nv_cvt_float_to_fp8(..., __NV_SATFINITE,
// __NV_E4M3) does, and it matched torch 2.15's CPU `.to(torch.float8_e4m3fn)`
// bit for bit on 5M test floats. Other torch versions may map out-of-range
// values to NaN instead; quantizers clamp before casting, so this only
// matters for values a checkpoint should not contain.
float F8E4M3ToFloat(std::uint8_t bits);
std::uint8_t FloatToF8E4M3(float value);

// float8 e5m2 -> float (exactly F16ToFloat of bits << 8).
float F8E5M2ToFloat(std::uint8_t bits);

// float8 e8m0 -> float: 2^(bits - 127); 0xFF is NaN.
float F8E8M0ToFloat(std::uint8_t bits);

// Widens `count` elements of `dtype` at `src` (any alignment) into `dst`.
// Supported: F32, F16, BF16, F8_E4M3, F8_E5M2, F8_E8M0 and F64 (F64 is
// rounded to nearest float). Any other dtype is InvalidArgument.
[[nodiscard]] absl::Status ConvertToFloat32(DType dtype, const void* src, std::size_t count, float* dst);

// ---------------------------------------------------------------------------
// Block FP8 weights: the scheme of FP8 checkpoints ("weight_block_size":
// [128, 128]). Each of `batch` matrices [rows, cols] is cut into 128 x 128
// blocks (the last ones partial); a block with largest magnitude amax has the
// scale s = amax / 448 (float32 division; 1 when that is not a positive
// finite number, as for an all-zero block) and codes FloatToF8E4M3(w / s).
// A weight's value is F8E4M3ToFloat(code) * s, one float32 multiply: what the
// loader computes for an FP8 checkpoint and what the GPU's FP8 products
// compute as they load a weight.
inline constexpr std::int64_t kFp8WeightBlock = 128;

struct Fp8BlockWeights {
  std::int64_t batch = 0;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::vector<std::uint8_t> codes;  // [batch, rows, cols] e4m3 bits
  std::vector<float> scales;        // [batch, ceil(rows / 128), ceil(cols / 128)]

  std::int64_t scale_rows() const { return (rows + kFp8WeightBlock - 1) / kFp8WeightBlock; }
  std::int64_t scale_cols() const { return (cols + kFp8WeightBlock - 1) / kFp8WeightBlock; }
  // Scales per matrix of the batch.
  std::int64_t scale_stride() const { return scale_rows() * scale_cols(); }
};

// w: batch * rows * cols float32 values, row-major. Sizes >= 0.
Fp8BlockWeights QuantizeFp8Blocks(std::int64_t batch, std::int64_t rows, std::int64_t cols, const float* w);
// out: batch * rows * cols values, code times its block's scale.
void DequantizeFp8Blocks(const Fp8BlockWeights& q, float* out);

}  // namespace sirocco::engine
