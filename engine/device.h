// Where the model runs: a Device owns memory and executes the model's ops on
// it. The forward pass (engine/mistral4.cc) is written once against this
// interface; the CPU device (HostDevice, here) runs the ops of a kernel table
// on host memory, the CUDA device (engine/cuda/) launches kernels on one stream.
//
// Contract:
//   * Pointers passed to ops are device pointers: memory from Allocate or
//     Upload of the same device (or views into it). On a host-accessible
//     device they are plain host pointers.
//   * Ops are enqueued in call order and may complete later; CopyToHost and
//     Synchronize wait for everything enqueued before them. A host buffer given
//     to CopyToDevice may be reused as soon as the call returns.
//   * Ops compute the functions documented in kernels/kernels.h (same names,
//     same argument conventions, float32 row-major with leading dimensions);
//     the ops without a kernel-table counterpart are documented below.
//   * An op returns an error only for arguments the device rejects or a failed
//     launch; errors raised while device work runs surface at the next
//     CopyToHost or Synchronize.
//   * A Device is used by one thread at a time (the engine thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/dtype.h"
#include "engine/sampler.h"
#include "kernels/kernels.h"

namespace sirocco::engine {

// A region of one device's memory, released on destruction.
class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;

  void* data() const { return data_; }
  std::size_t size() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 protected:
  DeviceMemory(void* data, std::size_t bytes) : data_(data), bytes_(bytes) {}

 private:
  void* data_;
  std::size_t bytes_;
};

// How a device stores a weight matrix. kBF16: bfloat16 weights, and every
// product with them takes its activations rounded to bfloat16 and accumulates
// in float32 (tensor-core numerics); everything else (residual stream, norms,
// attention, softmax, the router's choice) stays float32.
// kBF16AsF32 is how a float32-only device (the CPU) holds bf16 weights:
// float32 values that are exactly bf16 numbers, with the same bf16 rounding of
// activations in products.
// kFP8: e4m3 codes with one float32 scale per 128 x 128 block
// (Fp8BlockWeights, engine/dtype.h), weight-only: products multiply the
// float32 activations by code * scale and accumulate in float32. A
// host-accessible device holds FP8 weights as those float32 values (kF32), so
// both devices compute the same products.
enum class WeightType : std::uint8_t { kF32, kBF16, kBF16AsF32, kFP8 };

// "f32", "bf16", "fp8" (the names of --weights); kBF16AsF32 is "bf16".
const char* WeightTypeName(WeightType type);
// Inverse of WeightTypeName for the types a model can be asked for; anything
// else is InvalidArgument naming the accepted values.
[[nodiscard]] absl::StatusOr<WeightType> ParseWeightType(std::string_view name);

// A weight matrix, or a view into one, resident on a device. Offsets count
// elements of `type`. A plain float pointer converts to a float32 view, so
// products on activations read the same. An FP8 view is a whole (batch of)
// matrices: `scales` [batch, ceil(rows / 128), ceil(cols / 128)], scale_stride
// floats per matrix; it has no Offset.
struct WeightView {
  const void* data = nullptr;
  WeightType type = WeightType::kF32;
  const float* scales = nullptr;  // kFP8 only
  std::int64_t scale_stride = 0;  // kFP8 only

  WeightView() = default;
  WeightView(const float* p) : data(p) {}  // NOLINT(google-explicit-constructor): float32 is the common case
  WeightView(const void* p, WeightType t) : data(p), type(t) {}
  WeightView Offset(std::int64_t elements) const {
    const std::size_t size = type == WeightType::kBF16 ? 2 : 4;
    return WeightView(static_cast<const char*>(data) + elements * static_cast<std::int64_t>(size), type);
  }
};

// One row of logits to sample: the request's state (parameters and penalty
// history) and the draw SamplerState::TakeDraw returned for this step.
struct RowSample {
  const SamplerState* state = nullptr;
  std::optional<double> u;
  std::int64_t row = 0;  // which row of the logits
  // Tokens the row may choose (a response format's mask; SamplerState::
  // SampleWithDraw). Empty: any.
  std::span<const std::uint32_t> allowed;
};

class Device {
 public:
  virtual ~Device() = default;

  virtual const char* name() const = 0;
  // True when device pointers are host pointers: callers may read and write
  // device memory directly (the CPU device).
  virtual bool host_accessible() const = 0;

  // ---- memory --------------------------------------------------------------
  // Uninitialised memory, aligned to at least 256 bytes.
  [[nodiscard]] virtual absl::StatusOr<std::unique_ptr<DeviceMemory>> Allocate(std::size_t bytes) = 0;
  // Read-only data resident on the device for as long as the result lives
  // (weights). A host-accessible device may return a view of `host` without
  // copying: `host` must then outlive the result.
  [[nodiscard]] virtual absl::StatusOr<std::unique_ptr<DeviceMemory>> Upload(std::span<const float> host) = 0;
  // A weight matrix with `type`'s numerics (kF32: Upload). A float32-only
  // device keeps bf16 weights as float32 values rounded to bf16
  // (kBF16AsF32): products see the same numbers.
  [[nodiscard]] virtual absl::StatusOr<std::unique_ptr<DeviceMemory>> UploadWeight(std::span<const float> host,
                                                                                   WeightType type) = 0;
  // The type of UploadWeight(_, type)'s views on this device (type kF32 or
  // kBF16).
  virtual WeightType StoredType(WeightType type) const = 0;
  // Block-FP8 weights: a device with FP8 products keeps the codes and scales
  // (a kFP8 view); a host-accessible device keeps code * scale as float32 (a
  // kF32 view). *view describes the result.
  [[nodiscard]] virtual absl::StatusOr<std::unique_ptr<DeviceMemory>> UploadFp8Weight(const Fp8BlockWeights& w,
                                                                                      WeightView* view) = 0;
  [[nodiscard]] virtual absl::Status CopyToDevice(void* dst, const void* src, std::size_t bytes) = 0;
  // Waits for every op enqueued before it, then copies.
  [[nodiscard]] virtual absl::Status CopyToHost(void* dst, const void* src, std::size_t bytes) = 0;
  [[nodiscard]] virtual absl::Status Synchronize() = 0;

  // ---- dense products and row ops (kernels.h) -------------------------------
  // Products take their second operand as a WeightView: with a bf16 weight the
  // float32 `a` is rounded to bf16 first (WeightType). c is float32. An FP8
  // weight is a whole matrix [n, k] (ldb = k); batched products and row
  // gathers take float32 or bf16 weights only.
  [[nodiscard]] virtual absl::Status GemmNt(int m, int n, int k, const float* a, int lda, WeightView b, int ldb,
                                            float beta, float* c, int ldc) = 0;
  // `batch` independent products; operand i starts at a + i * stride_a (and so
  // on), strides in elements. The per-head products of absorbed attention.
  // With a bf16 b, a's batches must lie side by side within its rows
  // ((batch - 1) * stride_a + k <= lda), as the per-head slices do.
  [[nodiscard]] virtual absl::Status GemmNnBatched(int batch, int m, int n, int k, const float* a, int lda,
                                                   std::int64_t stride_a, WeightView b, int ldb, std::int64_t stride_b,
                                                   float beta, float* c, int ldc, std::int64_t stride_c) = 0;
  [[nodiscard]] virtual absl::Status GemmNtBatched(int batch, int m, int n, int k, const float* a, int lda,
                                                   std::int64_t stride_a, WeightView b, int ldb, std::int64_t stride_b,
                                                   float beta, float* c, int ldc, std::int64_t stride_c) = 0;
  [[nodiscard]] virtual absl::Status RmsNorm(int rows, int dim, const float* x, int ldx, const float* w, float eps,
                                             float* y, int ldy) = 0;
  [[nodiscard]] virtual absl::Status RopeInterleaved(int rows, int rows_per_pos, int dim, float* x, int ldx,
                                                     const std::int32_t* pos, const float* inv_freq,
                                                     float attn_factor) = 0;
  // SiluMul and GeluMul: up may be null, out = act(gate) (kernels.h).
  [[nodiscard]] virtual absl::Status SiluMul(int rows, int n, const float* gate, int ldg, const float* up, int ldu,
                                             float* out, int ldo) = 0;
  [[nodiscard]] virtual absl::Status GeluMul(int rows, int n, const float* gate, int ldg, const float* up, int ldu,
                                             float* out, int ldo) = 0;
  // x[r, :] *= scales[r].
  [[nodiscard]] virtual absl::Status ScaleRows(int rows, int n, float* x, int ldx, const float* scales) = 0;
  // dst[r, :] = src[idx[r], :] for r < rows (idx on the device, trusted); a
  // bf16 table is widened to float32 (embedding lookup).
  [[nodiscard]] virtual absl::Status GatherRows(int rows, int dim, WeightView src, int lds, const std::int32_t* idx,
                                                float* dst, int ldd) = 0;
  // dst[idx[r], :] = src[r, :] for r < rows; idx entries distinct.
  [[nodiscard]] virtual absl::Status ScatterRows(int rows, int dim, const float* src, int lds, const std::int32_t* idx,
                                                 float* dst, int ldd) = 0;
  // dst[r, :cols] = src[r, :cols]: a strided copy between views.
  [[nodiscard]] virtual absl::Status Copy2D(int rows, int cols, const float* src, int lds, float* dst, int ldd) = 0;

  // ---- attention -------------------------------------------------------------
  // block_tables and ctx_lens are device memory. max_ctx_len bounds every
  // ctx_lens entry (a device may size its launch from it).
  [[nodiscard]] virtual absl::Status MlaAttention(const kernels::MlaAttentionParams& p, int max_ctx_len) = 0;
  [[nodiscard]] virtual absl::Status Attention(const kernels::AttentionParams& p) = 0;

  // ---- sampling ----------------------------------------------------------------
  // (*out)[i] = rows[i].state->SampleWithDraw(logits row rows[i].row,
  // rows[i].u); row r starts at logits + r * ld (device memory, vocab
  // floats; rows[i].row distinct). The CPU device
  // calls exactly that; the GPU samples on the device and returns only the
  // results (kernels/cuda/sampling.h says where its rounding can differ).
  [[nodiscard]] virtual absl::Status SampleRows(std::span<const RowSample> rows, const float* logits, int vocab, int ld,
                                                std::vector<SampleResult>* out) = 0;

  // ---- mixture of experts ----------------------------------------------------
  [[nodiscard]] virtual absl::Status RouteTopk(const kernels::RouterParams& p) = 0;
  // Groups the router's choices by expert (an assignment is i = token * top_k
  // + slot): counts[e] assignments of expert e; offsets[e] its first row in
  // `sorted` (offsets[num_experts] = num_tokens * top_k); sorted lists each
  // expert's assignments in ascending order; position[i] = where assignment i
  // sits in `sorted`.
  [[nodiscard]] virtual absl::Status MoeDispatch(int num_tokens, int top_k, int num_experts,
                                                 const std::int32_t* expert_ids, std::int32_t* counts,
                                                 std::int32_t* offsets, std::int32_t* sorted,
                                                 std::int32_t* position) = 0;
  // xs[r, :] = x[sorted[r] / top_k, :] for r < rows.
  [[nodiscard]] virtual absl::Status MoeGatherRows(int rows, int dim, const float* x, int ldx,
                                                   const std::int32_t* sorted, int top_k, float* xs, int ldxs) = 0;
  // Per expert g, over its rows r in [offsets[g], offsets[g + 1]):
  //   c[r, :n] = a[r, :k] · W_g^T,  W_g = w + g * w_stride, [n, k] with ld ldw.
  // offsets (device) as MoeDispatch writes them; rows = offsets[num_groups].
  // With FP8 weights W_g's block scales are w.scales + g * w.scale_stride.
  [[nodiscard]] virtual absl::Status GroupedGemmNt(int num_groups, int rows, int n, int k, const float* a, int lda,
                                                   const std::int32_t* offsets, WeightView w, int ldw,
                                                   std::int64_t w_stride, float* c, int ldc) = 0;
  // out[t, :] = (accumulate ? out[t, :] : 0) + sum over slots s, in slot
  // order, of weights[t, s] * ys[position[t * top_k + s], :].
  [[nodiscard]] virtual absl::Status MoeCombine(int num_tokens, int top_k, int dim, const float* ys, int ldys,
                                                const std::int32_t* position, const float* weights, bool accumulate,
                                                float* out, int ldo) = 0;
};

// The CPU device: host memory and the ops of one kernel backend.
std::unique_ptr<Device> MakeHostDevice(kernels::Backend backend);

}  // namespace sirocco::engine
