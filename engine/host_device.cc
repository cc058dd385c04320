// The CPU device: device memory is host memory, ops run synchronously on the
// calling thread through one kernel table. Upload is a view (weights are
// never copied), so the host-side model costs no extra memory.

#include <algorithm>
#include <cstring>
#include <new>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/device.h"
#include "engine/dtype.h"
#include "engine/status_macros.h"

namespace sirocco::engine {
namespace {

constexpr std::size_t kAlignment = 256;

class HostMemory final : public DeviceMemory {
 public:
  HostMemory(void* data, std::size_t bytes, bool owned) : DeviceMemory(data, bytes), owned_(owned) {}
  ~HostMemory() override {
    if (owned_) ::operator delete (data(), std::align_val_t{kAlignment});
  }

 private:
  bool owned_;
};

class HostDevice final : public Device {
 public:
  explicit HostDevice(kernels::Backend backend) : k_(kernels::Get(backend)) {}

  const char* name() const override { return k_.name; }
  bool host_accessible() const override { return true; }

  absl::StatusOr<std::unique_ptr<DeviceMemory>> Allocate(std::size_t bytes) override {
    void* p = bytes == 0 ? nullptr : ::operator new (bytes, std::align_val_t{kAlignment}, std::nothrow);
    if (bytes != 0 && p == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " bytes of host memory"));
    }
    return std::make_unique<HostMemory>(p, bytes, true);
  }
  absl::StatusOr<std::unique_ptr<DeviceMemory>> Upload(std::span<const float> host) override {
    return std::make_unique<HostMemory>(const_cast<float*>(host.data()), host.size_bytes(), false);
  }
  absl::StatusOr<std::unique_ptr<DeviceMemory>> UploadWeight(std::span<const float> host, WeightType type) override {
    if (type == WeightType::kF32) return Upload(host);
    // bf16 numerics on float32 kernels: the weights rounded once, here.
    auto memory = Allocate(host.size_bytes());
    if (!memory.ok()) return memory.status();
    float* out = (*memory)->as<float>();
    for (std::size_t i = 0; i < host.size(); ++i) out[i] = Bf16ToFloat(FloatToBf16(host[i]));
    return memory;
  }
  WeightType StoredType(WeightType type) const override {
    return type == WeightType::kF32 ? WeightType::kF32 : WeightType::kBF16AsF32;
  }
  absl::StatusOr<std::unique_ptr<DeviceMemory>> UploadFp8Weight(const Fp8BlockWeights& w, WeightView* view) override {
    const std::size_t count = w.codes.size();
    if (count != static_cast<std::size_t>(w.batch * w.rows * w.cols) ||
        w.scales.size() != static_cast<std::size_t>(w.batch * w.scale_stride())) {
      return absl::InvalidArgumentError("UploadFp8Weight: codes or scales do not match the shape");
    }
    // The values the FP8 products multiply by, computed once.
    SIROCCO_ASSIGN_OR_RETURN(auto memory, Allocate(count * sizeof(float)));
    DequantizeFp8Blocks(w, memory->as<float>());
    *view = WeightView(memory->as<const float>());
    return memory;
  }
  absl::Status CopyToDevice(void* dst, const void* src, std::size_t bytes) override {
    if (bytes != 0) std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }
  absl::Status CopyToHost(void* dst, const void* src, std::size_t bytes) override {
    if (bytes != 0) std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }
  absl::Status Synchronize() override { return absl::OkStatus(); }

  absl::Status GemmNt(int m, int n, int k, const float* a, int lda, WeightView b, int ldb, float beta, float* c,
                      int ldc) override {
    SIROCCO_ASSIGN_OR_RETURN(const float* w, Weights(b));
    a = Operand(b, m, k, a, lda);
    k_.gemm_nt(m, n, k, a, lda, w, ldb, beta, c, ldc);
    return absl::OkStatus();
  }
  absl::Status GemmNnBatched(int batch, int m, int n, int k, const float* a, int lda, std::int64_t stride_a,
                             WeightView b, int ldb, std::int64_t stride_b, float beta, float* c, int ldc,
                             std::int64_t stride_c) override {
    return Batched(k_.gemm_nn, batch, m, n, k, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc, stride_c);
  }
  absl::Status GemmNtBatched(int batch, int m, int n, int k, const float* a, int lda, std::int64_t stride_a,
                             WeightView b, int ldb, std::int64_t stride_b, float beta, float* c, int ldc,
                             std::int64_t stride_c) override {
    return Batched(k_.gemm_nt, batch, m, n, k, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc, stride_c);
  }
  absl::Status RmsNorm(int rows, int dim, const float* x, int ldx, const float* w, float eps, float* y,
                       int ldy) override {
    k_.rms_norm(rows, dim, x, ldx, w, eps, y, ldy);
    return absl::OkStatus();
  }
  absl::Status RopeInterleaved(int rows, int rows_per_pos, int dim, float* x, int ldx, const std::int32_t* pos,
                               const float* inv_freq, float attn_factor) override {
    k_.rope_interleaved(rows, rows_per_pos, dim, x, ldx, pos, inv_freq, attn_factor);
    return absl::OkStatus();
  }
  absl::Status SiluMul(int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out,
                       int ldo) override {
    k_.silu_mul(rows, n, gate, ldg, up, ldu, out, ldo);
    return absl::OkStatus();
  }
  absl::Status GeluMul(int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out,
                       int ldo) override {
    k_.gelu_mul(rows, n, gate, ldg, up, ldu, out, ldo);
    return absl::OkStatus();
  }
  absl::Status ScaleRows(int rows, int n, float* x, int ldx, const float* scales) override {
    for (int r = 0; r < rows; ++r) {
      float* row = x + static_cast<std::int64_t>(r) * ldx;
      for (int i = 0; i < n; ++i) row[i] *= scales[r];
    }
    return absl::OkStatus();
  }
  absl::Status GatherRows(int rows, int dim, WeightView table, int lds, const std::int32_t* idx, float* dst,
                          int ldd) override {
    SIROCCO_ASSIGN_OR_RETURN(const float* src, Weights(table));
    for (int r = 0; r < rows; ++r) {
      std::memcpy(dst + static_cast<std::int64_t>(r) * ldd, src + static_cast<std::int64_t>(idx[r]) * lds,
                  sizeof(float) * static_cast<std::size_t>(dim));
    }
    return absl::OkStatus();
  }
  absl::Status ScatterRows(int rows, int dim, const float* src, int lds, const std::int32_t* idx, float* dst,
                           int ldd) override {
    for (int r = 0; r < rows; ++r) {
      std::memcpy(dst + static_cast<std::int64_t>(idx[r]) * ldd, src + static_cast<std::int64_t>(r) * lds,
                  sizeof(float) * static_cast<std::size_t>(dim));
    }
    return absl::OkStatus();
  }
  absl::Status Copy2D(int rows, int cols, const float* src, int lds, float* dst, int ldd) override {
    for (int r = 0; r < rows; ++r) {
      std::memcpy(dst + static_cast<std::int64_t>(r) * ldd, src + static_cast<std::int64_t>(r) * lds,
                  sizeof(float) * static_cast<std::size_t>(cols));
    }
    return absl::OkStatus();
  }

  absl::Status MlaAttention(const kernels::MlaAttentionParams& p, int /*max_ctx_len*/) override {
    k_.mla_attention(p);
    return absl::OkStatus();
  }
  absl::Status Attention(const kernels::AttentionParams& p) override {
    k_.attention(p);
    return absl::OkStatus();
  }

  absl::Status SampleRows(std::span<const RowSample> rows, const float* logits, int vocab, int ld,
                          std::vector<SampleResult>* out) override {
    out->clear();
    out->reserve(rows.size());
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const std::span<const float> row(logits + rows[i].row * ld, static_cast<std::size_t>(vocab));
      out->push_back(rows[i].state->SampleWithDraw(row, rows[i].u, sampler_scratch_, rows[i].allowed));
    }
    return absl::OkStatus();
  }

  absl::Status RouteTopk(const kernels::RouterParams& p) override {
    k_.route_topk(p);
    return absl::OkStatus();
  }
  absl::Status MoeDispatch(int num_tokens, int top_k, int num_experts, const std::int32_t* expert_ids,
                           std::int32_t* counts, std::int32_t* offsets, std::int32_t* sorted,
                           std::int32_t* position) override {
    const int n = num_tokens * top_k;
    std::fill_n(counts, num_experts, 0);
    for (int i = 0; i < n; ++i) ++counts[expert_ids[i]];
    offsets[0] = 0;
    for (int e = 0; e < num_experts; ++e) offsets[e + 1] = offsets[e] + counts[e];
    // A stable counting sort: each expert's assignments keep ascending order.
    std::vector<std::int32_t> next(offsets, offsets + num_experts);
    for (int i = 0; i < n; ++i) {
      const std::int32_t slot = next[static_cast<std::size_t>(expert_ids[i])]++;
      sorted[slot] = i;
      position[i] = slot;
    }
    return absl::OkStatus();
  }
  absl::Status MoeGatherRows(int rows, int dim, const float* x, int ldx, const std::int32_t* sorted, int top_k,
                             float* xs, int ldxs) override {
    for (int r = 0; r < rows; ++r) {
      std::memcpy(xs + static_cast<std::int64_t>(r) * ldxs, x + static_cast<std::int64_t>(sorted[r] / top_k) * ldx,
                  sizeof(float) * static_cast<std::size_t>(dim));
    }
    return absl::OkStatus();
  }
  absl::Status GroupedGemmNt(int num_groups, int rows, int n, int k, const float* a, int lda,
                             const std::int32_t* offsets, WeightView wv, int ldw, std::int64_t w_stride, float* c,
                             int ldc) override {
    SIROCCO_ASSIGN_OR_RETURN(const float* w, Weights(wv));
    a = Operand(wv, rows, k, a, lda);
    for (int g = 0; g < num_groups; ++g) {
      const std::int32_t begin = offsets[g], count = offsets[g + 1] - begin;
      if (count == 0) continue;
      k_.gemm_nt(count, n, k, a + static_cast<std::int64_t>(begin) * lda, lda, w + g * w_stride, ldw, 0.0f,
                 c + static_cast<std::int64_t>(begin) * ldc, ldc);
    }
    return absl::OkStatus();
  }
  absl::Status MoeCombine(int num_tokens, int top_k, int dim, const float* ys, int ldys, const std::int32_t* position,
                          const float* weights, bool accumulate, float* out, int ldo) override {
    // Slot by slot into the row, the order the CUDA device sums in.
    for (int t = 0; t < num_tokens; ++t) {
      float* row = out + static_cast<std::int64_t>(t) * ldo;
      if (!accumulate) std::fill_n(row, dim, 0.0f);
      for (int s = 0; s < top_k; ++s) {
        const int i = t * top_k + s;
        k_.axpy(dim, weights[i], ys + static_cast<std::int64_t>(position[i]) * ldys, row);
      }
    }
    return absl::OkStatus();
  }

 private:
  // `batch` products of one kernel-table gemm (gemm_nn or gemm_nt).
  template <typename Gemm>
  absl::Status Batched(Gemm gemm, int batch, int m, int n, int k, const float* a, int lda, std::int64_t stride_a,
                       WeightView b, int ldb, std::int64_t stride_b, float beta, float* c, int ldc,
                       std::int64_t stride_c) {
    SIROCCO_ASSIGN_OR_RETURN(const float* w, Weights(b));
    if (batch > 0) a = Operand(b, m, static_cast<int>((batch - 1) * stride_a + k), a, lda);
    for (int i = 0; i < batch; ++i) {
      gemm(m, n, k, a + i * stride_a, lda, w + i * stride_b, ldb, beta, c + i * stride_c, ldc);
    }
    return absl::OkStatus();
  }
  static absl::StatusOr<const float*> Weights(WeightView w) {
    if (w.type == WeightType::kBF16) {
      return absl::InvalidArgumentError("the CPU device holds bf16 weights as float32 (kBF16AsF32)");
    }
    if (w.type == WeightType::kFP8) {
      return absl::InvalidArgumentError("the CPU device holds FP8 weights as float32 (UploadFp8Weight)");
    }
    return static_cast<const float*>(w.data);
  }
  // The activations a product with `w` reads: `a` itself, or for bf16 weights
  // a copy of its rows x cols view rounded to bf16 (same leading dimension).
  const float* Operand(WeightView w, int rows, int cols, const float* a, int lda) {
    if (w.type != WeightType::kBF16AsF32 || rows <= 0 || cols <= 0) return a;
    rounded_.resize(static_cast<std::size_t>(rows - 1) * static_cast<std::size_t>(lda) +
                    static_cast<std::size_t>(cols));
    for (int r = 0; r < rows; ++r) {
      const float* src = a + static_cast<std::int64_t>(r) * lda;
      float* dst = rounded_.data() + static_cast<std::int64_t>(r) * lda;
      for (int i = 0; i < cols; ++i) dst[i] = Bf16ToFloat(FloatToBf16(src[i]));
    }
    return rounded_.data();
  }

  const kernels::KernelTable& k_;
  std::vector<float> rounded_;  // bf16-rounded activations of the current product
  SamplerScratch sampler_scratch_;
};

}  // namespace

std::unique_ptr<Device> MakeHostDevice(kernels::Backend backend) { return std::make_unique<HostDevice>(backend); }

}  // namespace sirocco::engine
