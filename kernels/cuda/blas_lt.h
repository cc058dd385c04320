// FP8 (e4m3) matrix products through cuBLASLt, and the activation quantisers
// that feed them.
//
// Mistral Small 4's released checkpoint stores each linear weight W[n, k] as
// e4m3 codes with one float32 scale per 128x128 block (`weight_scale_inv`).
// A layer y = x W^T runs in FP8 once x is quantised too; two scalings exist:
//   * per tensor: one float32 scale per operand, value = code * scale;
//   * block (DeepSeek style): x has one scale per row and 128-column group
//     ("1x128"), W one per 128x128 block. The tensor cores sum each 128-wide k
//     slice, the slice is multiplied by its two scales and the slices are
//     summed in float32.
// The products need compute capability 9.0 or newer (this module leaves
// Ada's FP8 aside), and the block scaling 9.x exactly: cuBLASLt offers 1x128 /
// 128x128 scales on Hopper only. The quantisers run on any device.
//
// Operand layouts (row-major, as kernels.h; all pointers device memory):
//   a        [m, k] e4m3 activations, row stride lda
//   b        [n, k] e4m3 weights as nn.Linear stores them, row stride ldb
//   c        [m, n] float32 or bf16 output, row stride ldc
//   per-tensor scales: a_scale[0], b_scale[0]
//   block scales (G = ceil(k / 128) groups along k):
//     a_scale  [G, m] float32, m contiguous: a_scale[g * m + i] scales
//              a[i, 128g .. 128g + 127]. This is what QuantizeFp8Groups128
//              writes, and the "M-major" layout cuBLASLt reads for a 1x128
//              operand.
//     b_scale  [ceil(n / 128), Fp8BlockScaleLd(k)] float32, row-major:
//              b_scale[j * ld + g] scales the block b[128j .., 128g ..]. It is
//              the checkpoint's weight_scale_inv with each row padded to a
//              multiple of 4 entries (PadFp8BlockScales), the "K-major, column
//              stride a multiple of 4" layout cuBLASLt reads for a 128x128
//              operand; the padding's values do not matter.
//
// What cuBLASLt's FP8 kernels require, checked by CheckGemmNtFp8 (which
// GemmNtFp8 runs first): k, lda and ldb multiples of 16; n and ldc such that a
// row of C is a whole number of 16-byte units (multiples of 4 for float32, 8
// for bf16); every pointer, scales included, 16-byte aligned; in block mode m a
// multiple of 4 (cuBLASLt's rule: the 1x128 scale columns are m floats apart
// and each must start 16-byte aligned). A decode step with one token pads
// its activations to 4 rows (zero rows cost nothing, their scale is 1).
// Shapes outside these rules are Unimplemented; malformed
// shapes (negative sizes, leading dimensions below the width, missing
// pointers) are InvalidArgument, reported before the device is touched.
//
// Threading: the quantisers are thread-safe launchers in the style of
// cuda_kernels.h (they enqueue on `stream` and never synchronise or
// allocate). A BlasLt is used by one thread at a time, and since its cuBLASLt
// workspace is shared, products it runs on different streams must be ordered
// by the caller (an event or a synchronisation between them).
//
// Includers need no CUDA headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_kernels.h"

struct cublasLtContext;  // cublasLtHandle_t is cublasLtContext*

namespace sirocco::kernels::cuda {

// float8 e4m3fn as raw bits, layout-compatible with __nv_fp8_e4m3 (bias 7, no
// infinities, S.1111.111 is NaN, largest finite 448). engine/dtype.h converts
// on the host.
struct Fp8E4M3 {
  std::uint8_t bits;
};

inline constexpr int kFp8BlockSize = 128;     // the 1x128 and 128x128 scale granularity
inline constexpr float kFp8E4M3Max = 448.0f;  // largest finite e4m3 magnitude

// The row stride of a block-mode weight scale tensor: ceil(k / 128) rounded
// up to a multiple of 4. k >= 0.
int Fp8BlockScaleLd(int k);

// Host only: copies a checkpoint's weight_scale_inv, row-major
// [ceil(n / 128), ceil(k / 128)], into the block-mode layout
// [ceil(n / 128), Fp8BlockScaleLd(k)] with zero padding.
std::vector<float> PadFp8BlockScales(int n, int k, const float* scale_inv);

// ---------------------------------------------------------------------------
// Activation quantisers: x [rows, cols] (float32, or bf16 as raw bits) ->
// q [rows, cols] e4m3 plus scales. For a set of values with largest magnitude
// amax, the scale is s = amax / 448 (float32 division), or 1 when that is not
// a positive finite number (an all-zero group; inputs are meant to be
// finite), and each code is e4m3(x / s): IEEE float32 division, then round to
// nearest even with saturation to +-448, as __nv_cvt_float_to_fp8 with
// __NV_SATFINITE and engine::FloatToF8E4M3 do. NaN inputs do not enter amax
// and quantise to NaN. Empty inputs write nothing.

// One scale for the whole matrix, written to scale[0] (device, one float,
// also used as the amax accumulator while the launch runs). Four stream
// operations: a memset and three small kernels.
[[nodiscard]] absl::Status QuantizeFp8PerTensor(int rows, int cols, const float* x, int ldx, Fp8E4M3* q, int ldq,
                                                float* scale, Stream stream);
[[nodiscard]] absl::Status QuantizeFp8PerTensor(int rows, int cols, const Bf16* x, int ldx, Fp8E4M3* q, int ldq,
                                                float* scale, Stream stream);

// One scale per row and 128-column group (the last group may be partial):
// scales [ceil(cols / 128), rows], scales[g * rows + r] for x[r, 128g ..].
// With rows = m this is the block-mode a_scale.
[[nodiscard]] absl::Status QuantizeFp8Groups128(int rows, int cols, const float* x, int ldx, Fp8E4M3* q, int ldq,
                                                float* scales, Stream stream);
[[nodiscard]] absl::Status QuantizeFp8Groups128(int rows, int cols, const Bf16* x, int ldx, Fp8E4M3* q, int ldq,
                                                float* scales, Stream stream);

// ---------------------------------------------------------------------------
// FP8 products.

enum class Fp8Scaling : std::uint8_t {
  kPerTensor,  // a_scale, b_scale: one float each
  kBlock,      // a_scale 1x128 groups, b_scale 128x128 blocks (layouts above)
};

enum class Fp8Output : std::uint8_t { kFloat32, kBf16 };

// The operands of C = A B^T with their scales; see the layouts above. The
// block mode also needs n % 4 == 0, which the output rules already imply.
struct Fp8GemmParams {
  int m = 0;
  int n = 0;
  int k = 0;
  const Fp8E4M3* a = nullptr;  // [m, k]
  int lda = 0;
  const Fp8E4M3* b = nullptr;  // [n, k]
  int ldb = 0;
  Fp8Scaling scaling = Fp8Scaling::kPerTensor;
  const float* a_scale = nullptr;  // [1] or [ceil(k / 128), m]
  const float* b_scale = nullptr;  // [1] or [ceil(n / 128), Fp8BlockScaleLd(k)]
};

// The host-side shape and alignment rules above, for an output of type `out`
// at `c` with row stride ldc. Needs no device.
[[nodiscard]] absl::Status CheckGemmNtFp8(const Fp8GemmParams& p, Fp8Output out, const void* c, int ldc);

// Owns a cuBLASLt handle and a 32 MiB device workspace, both made once by
// Create, which also records the current device's compute capability. One
// per worker thread, like Blas.
class BlasLt {
 public:
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<BlasLt>> Create();
  ~BlasLt();
  BlasLt(const BlasLt&) = delete;
  BlasLt& operator=(const BlasLt&) = delete;

  // 10 * major + minor of the device current at Create, e.g. 90 for an H200.
  int compute_capability() const { return compute_capability_; }
  // Whether GemmNtFp8 can run here at all (9.0 and newer) and with
  // Fp8Scaling::kBlock (9.x: cuBLASLt has no 1x128 / 128x128 scaling on
  // other families). Otherwise it returns Unimplemented.
  bool SupportsFp8() const { return compute_capability_ >= 90; }
  bool SupportsBlockScaling() const { return compute_capability_ / 10 == 9; }

  // C[m,n] = sum_k A[m,k] B[n,k] (dequantised by the scales) + beta C[m,n],
  // accumulated in float32 (the tensor cores' partial sums are promoted to
  // float32 every few k-steps; fast accumulation stays off). C is not read
  // when beta == 0; beta == 1 accumulates into C through cuBLASLt's fused C
  // input (any beta works). k == 0 is C = beta C for beta 0 or 1 and
  // Unimplemented otherwise.
  [[nodiscard]] absl::Status GemmNtFp8(const Fp8GemmParams& p, float beta, float* c, int ldc, Stream stream);
  // The same product stored as bf16 (round to nearest even), overwriting C.
  // No beta: a residual sum kept in bf16 would be rounded at every layer, so
  // accumulation goes through the float32 overload.
  [[nodiscard]] absl::Status GemmNtFp8(const Fp8GemmParams& p, Bf16* c, int ldc, Stream stream);

 private:
  BlasLt(cublasLtContext* handle, void* workspace, int compute_capability)
      : handle_(handle), workspace_(workspace), compute_capability_(compute_capability) {}

  absl::Status Gemm(const Fp8GemmParams& p, Fp8Output out, float beta, void* c, int ldc, Stream stream);

  cublasLtContext* handle_;
  void* workspace_;
  int compute_capability_;
};

}  // namespace sirocco::kernels::cuda
