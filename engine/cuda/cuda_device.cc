#include "engine/cuda/cuda_device.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "engine/status_macros.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_memory.h"
#include "kernels/cuda/sampling.h"

namespace sirocco::engine::cuda {
namespace {

namespace kc = ::sirocco::kernels::cuda;

// float -> bfloat16 bits, round to nearest even (NaN stays a quiet NaN). The
// module links no engine code, so it carries its own copy of this rule
// (engine/dtype.h's FloatToBf16).
std::uint16_t ToBf16Bits(float f) {
  std::uint32_t u = 0;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

class CudaMemory final : public DeviceMemory {
 public:
  CudaMemory(kc::DeviceBuffer buffer, std::shared_ptr<const kc::StreamHandle> stream)
      : DeviceMemory(buffer.data(), buffer.size()), buffer_(std::move(buffer)), stream_(std::move(stream)) {}
  // Work enqueued earlier may still read this memory: wait for it before the
  // buffer goes back to the allocator. The stream is shared, so memory may
  // outlive its device (a KV pool destroyed after the model).
  ~CudaMemory() override { (void)kc::Synchronize(stream_->get()); }

 private:
  kc::DeviceBuffer buffer_;
  std::shared_ptr<const kc::StreamHandle> stream_;
};

class CudaDevice final : public Device {
 public:
  CudaDevice(kc::StreamHandle stream, std::unique_ptr<kc::Blas> blas)
      : stream_(std::make_shared<const kc::StreamHandle>(std::move(stream))), blas_(std::move(blas)) {}
  ~CudaDevice() override { (void)kc::Synchronize(s()); }

  const char* name() const override { return "cuda"; }
  bool host_accessible() const override { return false; }

  absl::StatusOr<std::unique_ptr<DeviceMemory>> Allocate(std::size_t bytes) override {
    // Round up so that every buffer keeps 256-byte alignment for its views.
    SIROCCO_ASSIGN_OR_RETURN(kc::DeviceBuffer buffer, kc::DeviceBuffer::Allocate((bytes + 255) / 256 * 256));
    return std::make_unique<CudaMemory>(std::move(buffer), stream_);
  }
  absl::StatusOr<std::unique_ptr<DeviceMemory>> Upload(std::span<const float> host) override {
    SIROCCO_ASSIGN_OR_RETURN(auto memory, Allocate(host.size_bytes()));
    SIROCCO_RETURN_IF_ERROR(kc::CopyToDeviceAsync(memory->data(), host.data(), host.size_bytes(), s()));
    return memory;
  }
  absl::StatusOr<std::unique_ptr<DeviceMemory>> UploadWeight(std::span<const float> host, WeightType type) override {
    if (type == WeightType::kF32) return Upload(host);
    if (type != WeightType::kBF16) return absl::InvalidArgumentError("the CUDA device stores bf16 weights as bf16");
    std::vector<std::uint16_t> bits(host.size());
    for (std::size_t i = 0; i < host.size(); ++i) bits[i] = ToBf16Bits(host[i]);
    SIROCCO_ASSIGN_OR_RETURN(auto memory, Allocate(bits.size() * sizeof(std::uint16_t)));
    // A synchronous copy: `bits` goes away when this returns.
    SIROCCO_RETURN_IF_ERROR(
        kc::CopyToDeviceAsync(memory->data(), bits.data(), bits.size() * sizeof(std::uint16_t), s()));
    SIROCCO_RETURN_IF_ERROR(kc::Synchronize(s()));
    return memory;
  }
  WeightType StoredType(WeightType type) const override { return type; }
  absl::StatusOr<std::unique_ptr<DeviceMemory>> UploadFp8Weight(const Fp8BlockWeights& w, WeightView* view) override {
    const std::size_t count = w.codes.size();
    if (count != static_cast<std::size_t>(w.batch * w.rows * w.cols) ||
        w.scales.size() != static_cast<std::size_t>(w.batch * w.scale_stride())) {
      return absl::InvalidArgumentError("UploadFp8Weight: codes or scales do not match the shape");
    }
    // Codes, then the scales at the next 256-byte boundary, in one allocation.
    const std::size_t scales_at = (count + 255) / 256 * 256;
    const std::size_t scale_bytes = w.scales.size() * sizeof(float);
    SIROCCO_ASSIGN_OR_RETURN(auto memory, Allocate(scales_at + scale_bytes));
    auto* base = memory->as<char>();
    SIROCCO_RETURN_IF_ERROR(kc::CopyToDeviceAsync(base, w.codes.data(), count, s()));
    SIROCCO_RETURN_IF_ERROR(kc::CopyToDeviceAsync(base + scales_at, w.scales.data(), scale_bytes, s()));
    // The host arrays belong to the caller: the copies land before this returns.
    SIROCCO_RETURN_IF_ERROR(kc::Synchronize(s()));
    *view = WeightView(base, WeightType::kFP8);
    view->scales = reinterpret_cast<const float*>(base + scales_at);
    view->scale_stride = w.scale_stride();
    return memory;
  }
  absl::Status CopyToDevice(void* dst, const void* src, std::size_t bytes) override {
    return kc::CopyToDeviceAsync(dst, src, bytes, s());
  }
  absl::Status CopyToHost(void* dst, const void* src, std::size_t bytes) override {
    SIROCCO_RETURN_IF_ERROR(kc::CopyToHostAsync(dst, src, bytes, s()));
    return kc::Synchronize(s());
  }
  absl::Status Synchronize() override { return kc::Synchronize(s()); }

  absl::Status GemmNt(int m, int n, int k, const float* a, int lda, WeightView b, int ldb, float beta, float* c,
                      int ldc) override {
    if (b.type == WeightType::kF32) {
      return blas_->GemmNt(m, n, k, a, lda, static_cast<const float*>(b.data), ldb, beta, c, ldc, s());
    }
    if (b.type == WeightType::kFP8) {
      // Weight-only FP8: the grouped kernel with one group of m rows widens
      // each code times its block scale as it loads the tile.
      if (ldb != k) return absl::InvalidArgumentError("an FP8 weight is a whole matrix (ldb == k)");
      kc::GroupedGemmParams q;
      q.num_groups = 1;
      q.rows = m;
      q.n = n;
      q.k = k;
      q.a = a;
      q.lda = lda;
      q.w_fp8 = static_cast<const std::uint8_t*>(b.data);
      q.w_scales = b.scales;
      q.w_scale_stride = b.scale_stride;
      q.ldw = ldb;
      q.w_stride = static_cast<std::int64_t>(n) * k;
      q.beta = beta;
      q.c = c;
      q.ldc = ldc;
      return kc::GroupedGemmNt(q, s());
    }
    SIROCCO_RETURN_IF_ERROR(CheckBf16(b));
    SIROCCO_ASSIGN_OR_RETURN(kc::Bf16 * a16, ToBf16(m, k, a, lda, k));
    return blas_->GemmNtBf16(m, n, k, a16, k, static_cast<const kc::Bf16*>(b.data), ldb, beta, c, ldc, s());
  }
  absl::Status GemmNnBatched(int batch, int m, int n, int k, const float* a, int lda, std::int64_t stride_a,
                             WeightView b, int ldb, std::int64_t stride_b, float beta, float* c, int ldc,
                             std::int64_t stride_c) override {
    return Batched(false, batch, m, n, k, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc, stride_c);
  }
  absl::Status GemmNtBatched(int batch, int m, int n, int k, const float* a, int lda, std::int64_t stride_a,
                             WeightView b, int ldb, std::int64_t stride_b, float beta, float* c, int ldc,
                             std::int64_t stride_c) override {
    return Batched(true, batch, m, n, k, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc, stride_c);
  }
  absl::Status RmsNorm(int rows, int dim, const float* x, int ldx, const float* w, float eps, float* y,
                       int ldy) override {
    return kc::RmsNorm(rows, dim, x, ldx, w, eps, y, ldy, s());
  }
  absl::Status RopeInterleaved(int rows, int rows_per_pos, int dim, float* x, int ldx, const std::int32_t* pos,
                               const float* inv_freq, float attn_factor) override {
    return kc::RopeInterleaved(rows, rows_per_pos, dim, x, ldx, pos, inv_freq, attn_factor, s());
  }
  absl::Status SiluMul(int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out,
                       int ldo) override {
    return kc::SiluMul(rows, n, gate, ldg, up, ldu, out, ldo, s());
  }
  absl::Status GeluMul(int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out,
                       int ldo) override {
    return kc::GeluMul(rows, n, gate, ldg, up, ldu, out, ldo, s());
  }
  absl::Status ScaleRows(int rows, int n, float* x, int ldx, const float* scales) override {
    return kc::ScaleRows(rows, n, x, ldx, scales, s());
  }
  absl::Status GatherRows(int rows, int dim, WeightView src, int lds, const std::int32_t* idx, float* dst,
                          int ldd) override {
    if (src.type == WeightType::kF32) {
      return kc::GatherRows(rows, dim, static_cast<const float*>(src.data), lds, idx, dst, ldd, s());
    }
    SIROCCO_RETURN_IF_ERROR(CheckBf16(src));
    return kc::GatherRowsBf16(rows, dim, static_cast<const kc::Bf16*>(src.data), lds, idx, dst, ldd, s());
  }
  absl::Status ScatterRows(int rows, int dim, const float* src, int lds, const std::int32_t* idx, float* dst,
                           int ldd) override {
    return kc::ScatterRows(rows, dim, src, lds, idx, dst, ldd, s());
  }
  absl::Status Copy2D(int rows, int cols, const float* src, int lds, float* dst, int ldd) override {
    return kc::Copy2D(rows, cols, src, lds, dst, ldd, s());
  }

  absl::Status MlaAttention(const kernels::MlaAttentionParams& p, int max_ctx_len) override {
    kc::MlaAttentionParams q;
    q.num_queries = p.num_queries;
    q.num_heads = p.num_heads;
    q.kv_rank = p.kv_rank;
    q.rope_dim = p.rope_dim;
    q.block_size = p.block_size;
    q.max_ctx_len = max_ctx_len;
    q.q_lat = p.q_lat;
    q.q_rope = p.q_rope;
    q.cache = p.cache;
    q.block_tables = p.block_tables;
    q.ctx_lens = p.ctx_lens;
    q.scale = p.scale;
    q.out = p.out;
    const std::size_t bytes = kc::MlaAttentionWorkspaceBytes(q);
    if (bytes > 0) {
      if (mla_workspace_ == nullptr || mla_workspace_->size() < bytes) {
        mla_workspace_.reset();
        SIROCCO_ASSIGN_OR_RETURN(mla_workspace_, Allocate(bytes));
      }
      q.workspace = mla_workspace_->data();
      q.workspace_bytes = mla_workspace_->size();
    }
    return kc::MlaAttention(q, s());
  }
  absl::Status Attention(const kernels::AttentionParams& p) override {
    kc::AttentionParams q;
    q.num_queries = p.num_queries;
    q.num_keys = p.num_keys;
    q.q_offset = p.q_offset;
    q.num_heads = p.num_heads;
    q.qk_dim = p.qk_dim;
    q.v_dim = p.v_dim;
    q.q = p.q;
    q.k = p.k;
    q.v = p.v;
    q.scale = p.scale;
    q.out = p.out;
    q.causal = p.causal;
    return kc::Attention(q, s());
  }

  absl::Status SampleRows(std::span<const RowSample> rows, const float* logits, int vocab, int ld,
                          std::vector<SampleResult>* out) override {
    // Rows with a token mask (a response format) are sampled on the host:
    // one row of logits comes back, and the mask never goes to the device.
    if (std::all_of(rows.begin(), rows.end(), [](const RowSample& r) { return r.allowed.empty(); })) {
      return SampleRowsOnDevice(rows, logits, vocab, ld, out);
    }
    std::vector<RowSample> on_device;
    std::vector<std::size_t> device_at, host_at;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      if (rows[i].allowed.empty()) {
        on_device.push_back(rows[i]);
        device_at.push_back(i);
      } else {
        host_at.push_back(i);
      }
    }
    std::vector<SampleResult> device_out;
    SIROCCO_RETURN_IF_ERROR(SampleRowsOnDevice(on_device, logits, vocab, ld, &device_out));
    out->assign(rows.size(), SampleResult{});
    for (std::size_t j = 0; j < device_at.size(); ++j) (*out)[device_at[j]] = std::move(device_out[j]);
    host_row_.resize(static_cast<std::size_t>(vocab));
    for (std::size_t i : host_at) {
      const RowSample& r = rows[i];
      SIROCCO_RETURN_IF_ERROR(CopyToHost(host_row_.data(), logits + r.row * ld, host_row_.size() * sizeof(float)));
      (*out)[i] = r.state->SampleWithDraw(host_row_, r.u, host_scratch_, r.allowed);
    }
    return absl::OkStatus();
  }

  absl::Status SampleRowsOnDevice(std::span<const RowSample> rows, const float* logits, int vocab, int ld,
                                  std::vector<SampleResult>* out) {
    out->clear();
    const int n = static_cast<int>(rows.size());
    if (n == 0) return absl::OkStatus();
    // Inputs, packed into one upload: the rows' knobs, then the penalty
    // histories CSR style (offsets, tokens, output counts).
    std::vector<kc::SampleRowParams> params(rows.size());
    std::vector<std::int32_t> ints(rows.size() + 1, 0);
    std::vector<std::int32_t> tokens, counts;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const SamplingParams& sp = rows[i].state->params();
      kc::SampleRowParams& p = params[i];
      p.temperature = sp.temperature;
      p.top_p = sp.top_p;
      p.min_p = sp.min_p;
      p.repetition_penalty = sp.repetition_penalty;
      p.presence_penalty = sp.presence_penalty;
      p.frequency_penalty = sp.frequency_penalty;
      p.top_k = sp.top_k;
      p.logprobs = sp.logprobs;
      // A greedy request has no draw; the kernel then never reads u.
      p.u = rows[i].u.value_or(0.0);
      if (!rows[i].u.has_value()) p.temperature = 0.0f;
      for (const SeenToken& seen : rows[i].state->seen()) {
        tokens.push_back(seen.token);
        counts.push_back(seen.output_count);
      }
      ints[i + 1] = static_cast<std::int32_t>(tokens.size());
    }
    ints.insert(ints.end(), tokens.begin(), tokens.end());
    ints.insert(ints.end(), counts.begin(), counts.end());
    // The kernel samples consecutive rows: rows that are not 0..n-1 are
    // gathered into scratch first.
    bool identity = true;
    for (std::size_t i = 0; i < rows.size(); ++i) identity = identity && rows[i].row == static_cast<std::int64_t>(i);
    const std::size_t row_index_at = ints.size();
    if (!identity) {
      for (const RowSample& r : rows) ints.push_back(static_cast<std::int32_t>(r.row));
    }
    const std::size_t params_bytes = (params.size() * sizeof(kc::SampleRowParams) + 255) / 256 * 256;
    const std::size_t in_bytes = params_bytes + ints.size() * sizeof(std::int32_t);
    const std::size_t top = static_cast<std::size_t>(n) * kc::kSampleMaxLogprobs;
    const std::size_t out_bytes = (static_cast<std::size_t>(n) * 2 + top * 2) * 4;
    const std::size_t work_bytes = kc::SamplingWorkspaceBytes(n, vocab);
    SIROCCO_RETURN_IF_ERROR(Reserve(sample_in_, in_bytes));
    SIROCCO_RETURN_IF_ERROR(Reserve(sample_out_, out_bytes));
    SIROCCO_RETURN_IF_ERROR(Reserve(sample_work_, work_bytes));
    auto* in = sample_in_->as<char>();
    SIROCCO_RETURN_IF_ERROR(kc::CopyToDeviceAsync(in, params.data(), params.size() * sizeof(kc::SampleRowParams), s()));
    SIROCCO_RETURN_IF_ERROR(
        kc::CopyToDeviceAsync(in + params_bytes, ints.data(), ints.size() * sizeof(std::int32_t), s()));
    const auto* d_ints = reinterpret_cast<const std::int32_t*>(in + params_bytes);
    if (!identity) {
      SIROCCO_RETURN_IF_ERROR(Reserve(sample_rows_, static_cast<std::size_t>(n) * static_cast<std::size_t>(vocab) * 4));
      SIROCCO_RETURN_IF_ERROR(
          kc::GatherRows(n, vocab, logits, ld, d_ints + row_index_at, sample_rows_->as<float>(), vocab, s()));
      logits = sample_rows_->as<float>();
      ld = vocab;
    }
    auto* d_out = sample_out_->as<char>();
    kc::SampleBatchParams b;
    b.rows = n;
    b.vocab = vocab;
    b.logits = logits;
    b.ld = ld;
    b.params = reinterpret_cast<const kc::SampleRowParams*>(in);
    b.seen_offsets = d_ints;
    b.seen_tokens = d_ints + rows.size() + 1;
    b.seen_counts = d_ints + rows.size() + 1 + tokens.size();
    b.tokens = reinterpret_cast<std::int32_t*>(d_out);
    b.logprob = reinterpret_cast<float*>(d_out + 4 * n);
    b.top_ids = reinterpret_cast<std::int32_t*>(d_out + 8 * n);
    b.top_logprobs = reinterpret_cast<float*>(d_out + 8 * n + 4 * top);
    b.workspace = sample_work_->data();
    b.workspace_bytes = sample_work_->size();
    SIROCCO_RETURN_IF_ERROR(kc::Sample(b, s()));
    std::vector<char> host(out_bytes);
    SIROCCO_RETURN_IF_ERROR(kc::CopyToHostAsync(host.data(), d_out, out_bytes, s()));
    SIROCCO_RETURN_IF_ERROR(kc::Synchronize(s()));
    const auto* h_tokens = reinterpret_cast<const std::int32_t*>(host.data());
    const auto* h_logprob = reinterpret_cast<const float*>(host.data() + 4 * n);
    const auto* h_top_ids = reinterpret_cast<const std::int32_t*>(host.data() + 8 * n);
    const auto* h_top = reinterpret_cast<const float*>(host.data() + 8 * n + 4 * top);
    out->resize(rows.size());
    for (int i = 0; i < n; ++i) {
      SampleResult& r = (*out)[static_cast<std::size_t>(i)];
      r.token = h_tokens[i];
      const int want = rows[static_cast<std::size_t>(i)].state->params().logprobs;
      if (want < 0) continue;
      r.logprob = h_logprob[i];
      for (int j = 0; j < want && j < kc::kSampleMaxLogprobs; ++j) {
        const std::size_t at = static_cast<std::size_t>(i) * kc::kSampleMaxLogprobs + static_cast<std::size_t>(j);
        if (h_top_ids[at] < 0) break;
        r.top.push_back(TokenLogprob{h_top_ids[at], h_top[at]});
      }
    }
    return absl::OkStatus();
  }

  absl::Status RouteTopk(const kernels::RouterParams& p) override {
    kc::RouterParams q;
    q.num_tokens = p.num_tokens;
    q.num_experts = p.num_experts;
    q.num_groups = p.num_groups;
    q.topk_group = p.topk_group;
    q.top_k = p.top_k;
    q.normalize = p.normalize;
    q.scaling = p.scaling;
    q.logits = p.logits;
    q.expert_ids = p.expert_ids;
    q.expert_weights = p.expert_weights;
    return kc::RouteTopk(q, s());
  }
  absl::Status MoeDispatch(int num_tokens, int top_k, int num_experts, const std::int32_t* expert_ids,
                           std::int32_t* counts, std::int32_t* offsets, std::int32_t* sorted,
                           std::int32_t* position) override {
    kc::MoeDispatchParams q;
    q.num_tokens = num_tokens;
    q.top_k = top_k;
    q.num_experts = num_experts;
    q.expert_ids = expert_ids;
    q.counts = counts;
    q.offsets = offsets;
    q.sorted = sorted;
    q.position = position;
    return kc::MoeDispatch(q, s());
  }
  absl::Status MoeGatherRows(int rows, int dim, const float* x, int ldx, const std::int32_t* sorted, int top_k,
                             float* xs, int ldxs) override {
    return kc::MoeGatherRows(rows, dim, x, ldx, sorted, top_k, xs, ldxs, s());
  }
  absl::Status GroupedGemmNt(int num_groups, int rows, int n, int k, const float* a, int lda,
                             const std::int32_t* offsets, WeightView w, int ldw, std::int64_t w_stride, float* c,
                             int ldc) override {
    if (w.type != WeightType::kF32 && w.type != WeightType::kFP8) SIROCCO_RETURN_IF_ERROR(CheckBf16(w));
    kc::GroupedGemmParams q;
    q.num_groups = num_groups;
    q.rows = rows;
    q.n = n;
    q.k = k;
    q.a = a;
    q.lda = lda;
    q.offsets = offsets;
    if (w.type == WeightType::kF32) {
      q.w = static_cast<const float*>(w.data);
    } else if (w.type == WeightType::kFP8) {
      q.w_fp8 = static_cast<const std::uint8_t*>(w.data);
      q.w_scales = w.scales;
      q.w_scale_stride = w.scale_stride;
    } else {
      q.w_bf16 = static_cast<const kc::Bf16*>(w.data);
    }
    q.ldw = ldw;
    q.w_stride = w_stride;
    q.c = c;
    q.ldc = ldc;
    return kc::GroupedGemmNt(q, s());
  }
  absl::Status MoeCombine(int num_tokens, int top_k, int dim, const float* ys, int ldys, const std::int32_t* position,
                          const float* weights, bool accumulate, float* out, int ldo) override {
    return kc::MoeCombine(num_tokens, top_k, dim, ys, ldys, position, weights, accumulate, out, ldo, s());
  }

 private:
  kc::Stream s() const { return stream_->get(); }

  // Grows `m` to at least `bytes` (and never below 256).
  absl::Status Reserve(std::unique_ptr<DeviceMemory>& m, std::size_t bytes) {
    if (m != nullptr && m->size() >= bytes) return absl::OkStatus();
    m.reset();
    SIROCCO_ASSIGN_OR_RETURN(m, Allocate(std::max<std::size_t>(256, bytes + bytes / 2)));
    return absl::OkStatus();
  }

  static absl::Status CheckBf16(WeightView w) {
    if (w.type != WeightType::kBF16) return absl::InvalidArgumentError("unsupported weight type on the CUDA device");
    return absl::OkStatus();
  }
  // a's rows x cols view rounded to bf16 into scratch with leading dimension ld.
  absl::StatusOr<kc::Bf16*> ToBf16(int rows, int cols, const float* a, int lda, int ld) {
    const std::size_t bytes =
        rows <= 0
            ? 0
            : (static_cast<std::size_t>(rows - 1) * static_cast<std::size_t>(ld) + static_cast<std::size_t>(cols)) * 2;
    if (bf16_scratch_ == nullptr || bf16_scratch_->size() < bytes) {
      bf16_scratch_.reset();
      SIROCCO_ASSIGN_OR_RETURN(bf16_scratch_, Allocate(bytes + bytes / 2 + 256));
    }
    auto* out = bf16_scratch_->as<kc::Bf16>();
    SIROCCO_RETURN_IF_ERROR(kc::ConvertToBf16(rows, cols, a, lda, out, ld, s()));
    return out;
  }
  absl::Status Batched(bool transpose_b, int batch, int m, int n, int k, const float* a, int lda, std::int64_t stride_a,
                       WeightView b, int ldb, std::int64_t stride_b, float beta, float* c, int ldc,
                       std::int64_t stride_c) {
    if (b.type == WeightType::kF32) {
      const auto* w = static_cast<const float*>(b.data);
      return transpose_b
                 ? blas_->GemmNtBatched(batch, m, n, k, a, lda, stride_a, w, ldb, stride_b, beta, c, ldc, stride_c, s())
                 : blas_->GemmNnBatched(batch, m, n, k, a, lda, stride_a, w, ldb, stride_b, beta, c, ldc, stride_c,
                                        s());
    }
    SIROCCO_RETURN_IF_ERROR(CheckBf16(b));
    if (batch <= 0 || m <= 0) return absl::OkStatus();
    const std::int64_t width = (batch - 1) * stride_a + k;
    if (width > lda) {
      return absl::UnimplementedError("bf16 batched products need the batches side by side within a's rows");
    }
    SIROCCO_ASSIGN_OR_RETURN(kc::Bf16 * a16, ToBf16(m, static_cast<int>(width), a, lda, lda));
    return blas_->GemmBf16Batched(transpose_b, batch, m, n, k, a16, lda, stride_a, static_cast<const kc::Bf16*>(b.data),
                                  ldb, stride_b, beta, c, ldc, stride_c, s());
  }

  std::shared_ptr<const kc::StreamHandle> stream_;
  std::unique_ptr<kc::Blas> blas_;
  std::unique_ptr<DeviceMemory> mla_workspace_;
  std::unique_ptr<DeviceMemory> bf16_scratch_;  // activations rounded for products on bf16 weights
  std::unique_ptr<DeviceMemory> sample_in_, sample_out_, sample_work_, sample_rows_;
  // Host sampling of masked rows (SampleRows).
  std::vector<float> host_row_;
  SamplerScratch host_scratch_;
};

}  // namespace

bool Available() { return kc::CudaDeviceAvailable(); }

absl::StatusOr<std::unique_ptr<Device>> MakeCudaDevice() {
  if (!kc::CudaDeviceAvailable()) return absl::FailedPreconditionError("no usable CUDA device (driver or GPU missing)");
  SIROCCO_ASSIGN_OR_RETURN(kc::StreamHandle stream, kc::StreamHandle::Create());
  SIROCCO_ASSIGN_OR_RETURN(std::unique_ptr<kc::Blas> blas, kc::Blas::Create());
  return std::make_unique<CudaDevice>(std::move(stream), std::move(blas));
}

}  // namespace sirocco::engine::cuda
