// The CPU device (engine/device.h): the ops only the engine's device path
// uses, against their definitions, and a model whose KV pool was allocated
// through the device computing what the plain host pool computes.
#include "engine/device.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "engine/dtype.h"
#include "engine/kv_cache.h"
#include "engine/mistral4.h"
#include "engine/model_maker.h"
#include "engine/safetensors.h"
#include "engine/sampler.h"
#include "engine/status_macros.h"
#include "tests/unit/engine/test_models.h"

namespace sirocco::engine {
namespace {

TEST(HostDeviceTest, MoeDispatchIsAStableSortByExpert) {
  auto dev = MakeHostDevice(kernels::Backend::kRef);
  std::mt19937 rng(3);
  for (int tokens : {1, 7, 100}) {
    const int top_k = 4, experts = 16, n = tokens * top_k;
    std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
    std::uniform_int_distribution<std::int32_t> e(0, experts - 1);
    for (auto& v : ids) v = e(rng);
    std::vector<std::int32_t> counts(experts, -1), offsets(experts + 1, -1), sorted(ids.size(), -1),
        position(ids.size(), -1);
    ASSERT_TRUE(dev->MoeDispatch(tokens, top_k, experts, ids.data(), counts.data(), offsets.data(), sorted.data(),
                                 position.data())
                    .ok());
    EXPECT_EQ(offsets.front(), 0);
    EXPECT_EQ(offsets.back(), n);
    for (int x = 0; x < experts; ++x) {
      EXPECT_EQ(offsets[static_cast<std::size_t>(x) + 1] - offsets[static_cast<std::size_t>(x)],
                counts[static_cast<std::size_t>(x)]);
      for (int r = offsets[static_cast<std::size_t>(x)]; r < offsets[static_cast<std::size_t>(x) + 1]; ++r) {
        EXPECT_EQ(ids[static_cast<std::size_t>(sorted[static_cast<std::size_t>(r)])], x);
        if (r > offsets[static_cast<std::size_t>(x)]) {
          EXPECT_LT(sorted[static_cast<std::size_t>(r) - 1], sorted[static_cast<std::size_t>(r)]) << "not stable";
        }
      }
    }
    for (int i = 0; i < n; ++i) EXPECT_EQ(sorted[static_cast<std::size_t>(position[static_cast<std::size_t>(i)])], i);
  }
}

TEST(HostDeviceTest, CombineSumsSlotsInOrderOntoTheRow) {
  auto dev = MakeHostDevice(kernels::Backend::kRef);
  // Two tokens, two slots, dim 2; ys rows in dispatch order.
  const std::vector<float> ys = {1, 2, 10, 20, 100, 200, 1000, 2000};
  const std::vector<std::int32_t> position = {2, 0, 3, 1};
  const std::vector<float> weights = {0.5f, 2.0f, 1.0f, -1.0f};
  std::vector<float> out = {1, 1, 5, 5};
  ASSERT_TRUE(dev->MoeCombine(2, 2, 2, ys.data(), 2, position.data(), weights.data(), true, out.data(), 2).ok());
  EXPECT_EQ(out, (std::vector<float>{1 + 50 + 2, 1 + 100 + 4, 5 + 1000 - 10, 5 + 2000 - 20}));
  ASSERT_TRUE(dev->MoeCombine(2, 2, 2, ys.data(), 2, position.data(), weights.data(), false, out.data(), 2).ok());
  EXPECT_EQ(out, (std::vector<float>{52, 104, 990, 1980}));
}

TEST(HostDeviceTest, PoolAllocatedThroughTheDeviceServesTheModel) {
  auto model = testing::MakeTestModel(testing::SmallVocabTiny(), "device_pool");
  ASSERT_NE(model, nullptr);
  auto host_pool = KvPool::Create(model->PoolOptions(8, 4));
  auto dev_pool = KvPool::Create(model->PoolOptions(8, 4), model->device());
  ASSERT_TRUE(host_pool.ok() && dev_pool.ok());
  EXPECT_TRUE((*dev_pool)->host_accessible());
  BlockTable a(host_pool->get()), b(dev_pool->get());
  ASSERT_TRUE(a.Reserve(12).ok());
  ASSERT_TRUE(b.Reserve(12).ok());
  const std::vector<std::int32_t> tokens = {3, 141, 59, 26, 5, 358, 97, 9, 32};
  std::vector<float> want, got;
  for (AttentionForm form : {AttentionForm::kExpanded, AttentionForm::kAbsorbed}) {
    ForwardItem ia{tokens, 0, &a, true}, ib{tokens, 0, &b, true};
    ASSERT_TRUE(model->Forward({&ia, 1}, **host_pool, form, &want).ok());
    ASSERT_TRUE(model->Forward({&ib, 1}, **dev_pool, form, &got).ok());
    EXPECT_EQ(got, want);  // the same ops on the same data: bit-identical
  }
}

float RoundBf16(float v) { return Bf16ToFloat(FloatToBf16(v)); }

TEST(HostDeviceTest, Bf16WeightProductsRoundTheActivations) {
  // The CPU device's bf16 numerics, by definition: weights rounded to bf16 at
  // upload, activations rounded to bf16 per product, float32 accumulation.
  auto dev = MakeHostDevice(kernels::Backend::kRef);
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int m = 3, n = 5, k = 7, lda = 9;
  std::vector<float> a(static_cast<std::size_t>(m * lda)), w(static_cast<std::size_t>(n * k));
  for (float& v : a) v = u(rng);
  for (float& v : w) v = u(rng);
  const std::vector<float> a_copy = a;
  auto stored = dev->UploadWeight(w, WeightType::kBF16);
  ASSERT_TRUE(stored.ok());
  ASSERT_EQ(dev->StoredType(WeightType::kBF16), WeightType::kBF16AsF32);
  std::vector<float> got(static_cast<std::size_t>(m * n), 0.0f);
  ASSERT_TRUE(
      dev->GemmNt(m, n, k, a.data(), lda, WeightView((*stored)->data(), WeightType::kBF16AsF32), k, 0.0f, got.data(), n)
          .ok());
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      float want = 0.0f;  // the scalar reference's order: ascending k
      for (int x = 0; x < k; ++x) {
        want += RoundBf16(a[static_cast<std::size_t>(i * lda + x)]) * RoundBf16(w[static_cast<std::size_t>(j * k + x)]);
      }
      EXPECT_FLOAT_EQ(got[static_cast<std::size_t>(i * n + j)], want) << i << "," << j;
    }
  }
  EXPECT_EQ(a, a_copy) << "the product rounded its input in place";
}

// Logits of every position of `tokens`, prefilled in one step into a fresh
// pool on the model's device.
std::vector<float> AllLogits(const Mistral4Model& model, std::span<const std::int32_t> tokens, AttentionForm form) {
  std::vector<float> logits;
  auto pool = KvPool::Create(model.PoolOptions(8, 4), model.device());
  EXPECT_TRUE(pool.ok());
  if (!pool.ok()) return logits;
  BlockTable t(pool->get());
  EXPECT_TRUE(t.Reserve(static_cast<std::int64_t>(tokens.size())).ok());
  ForwardItem item{tokens, 0, &t, true};
  EXPECT_TRUE(model.Forward({&item, 1}, **pool, form, &logits).ok());
  return logits;
}

// max |got - want| / max(1, max |want|).
double MaxRelDiff(const std::vector<float>& got, const std::vector<float>& want) {
  EXPECT_EQ(got.size(), want.size());
  double max_diff = 0.0, max_abs = 1.0;
  for (std::size_t i = 0; i < got.size() && i < want.size(); ++i) {
    max_diff = std::max(max_diff, static_cast<double>(std::fabs(got[i] - want[i])));
    max_abs = std::max(max_abs, static_cast<double>(std::fabs(want[i])));
  }
  return max_diff / max_abs;
}

TEST(HostDeviceTest, Bf16WeightsStayCloseToFloat32) {
  // A checkpoint stored in bf16 holds exactly the weights a bf16 model uses,
  // so the two runs differ only by the activations' bf16 rounding.
  const std::string dir = testing::TempDir("bf16_weights");
  MakeModelOptions mo;
  mo.seed = 5;
  mo.dtype = DType::kBF16;
  ASSERT_TRUE(MakeModel(testing::SmallVocabTiny(), mo, dir).ok());
  auto f32 = Mistral4Model::Load(dir, ModelOptions{.backend = kernels::Backend::kRef, .device = nullptr});
  auto b16 = Mistral4Model::Load(
      dir, ModelOptions{.backend = kernels::Backend::kRef, .device = nullptr, .weight_type = WeightType::kBF16});
  ASSERT_TRUE(f32.ok() && b16.ok());
  const std::vector<std::int32_t> tokens = {3, 141, 59, 26, 5, 358, 97, 9, 32, 38, 46, 264};
  for (AttentionForm form : {AttentionForm::kExpanded, AttentionForm::kAbsorbed}) {
    const std::vector<float> want = AllLogits(**f32, tokens, form), got = AllLogits(**b16, tokens, form);
    const double rel = MaxRelDiff(got, want);
    // bf16 keeps 8 significant bits (relative rounding 2^-9) per activation.
    EXPECT_LT(rel, 3e-2) << "form " << static_cast<int>(form);
    EXPECT_GT(rel, 0.0) << "bf16 products were not rounded";
  }
  std::filesystem::remove_all(dir);
}

TEST(HostDeviceTest, Fp8WeightsAreCodeTimesBlockScale) {
  // The CPU device holds an FP8 weight as float32 code * scale: a product on
  // it is the float32 product on the dequantised matrix, bit for bit.
  auto dev = MakeHostDevice(kernels::Backend::kRef);
  std::mt19937 rng(13);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int m = 3, n = 150, k = 140, lda = 141;
  std::vector<float> a(static_cast<std::size_t>(m * lda)), w(static_cast<std::size_t>(n * k));
  for (float& v : a) v = u(rng);
  for (float& v : w) v = u(rng);
  const Fp8BlockWeights q = QuantizeFp8Blocks(1, n, k, w.data());
  WeightView view;
  auto stored = dev->UploadFp8Weight(q, &view);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(view.type, WeightType::kF32);
  std::vector<float> deq(w.size());
  DequantizeFp8Blocks(q, deq.data());
  std::vector<float> got(static_cast<std::size_t>(m * n), 0.5f), want = got;
  ASSERT_TRUE(dev->GemmNt(m, n, k, a.data(), lda, view, k, 1.0f, got.data(), n).ok());
  ASSERT_TRUE(dev->GemmNt(m, n, k, a.data(), lda, WeightView(deq.data()), k, 1.0f, want.data(), n).ok());
  EXPECT_EQ(got, want);

  Fp8BlockWeights bad = q;
  bad.scales.pop_back();
  EXPECT_EQ(dev->UploadFp8Weight(bad, &view).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      dev->GemmNt(m, n, k, a.data(), lda, WeightView(q.codes.data(), WeightType::kFP8), k, 0.0f, got.data(), n).code(),
      absl::StatusCode::kInvalidArgument)
      << "FP8 codes handed to the CPU device";
}

TEST(HostDeviceTest, Fp8WeightsStayCloseToFloat32) {
  // Block-FP8 linear layers and experts, bf16 embedding and head:
  // logits within e4m3's rounding of the float32 model's, mostly the same
  // greedy token, and visibly not the float32 model itself.
  const std::string dir = testing::TempDir("fp8_weights");
  MakeModelOptions mo;
  mo.seed = 5;
  mo.dtype = DType::kF32;
  ASSERT_TRUE(MakeModel(testing::SmallVocabTiny(), mo, dir).ok());
  auto f32 = Mistral4Model::Load(dir, ModelOptions{.backend = kernels::Backend::kRef, .device = nullptr});
  auto fp8 = Mistral4Model::Load(
      dir, ModelOptions{.backend = kernels::Backend::kRef, .device = nullptr, .weight_type = WeightType::kFP8});
  ASSERT_TRUE(f32.ok() && fp8.ok()) << fp8.status();
  EXPECT_EQ((*fp8)->weight_type(), WeightType::kFP8);
  const std::vector<std::int32_t> tokens = {3, 141, 59, 26, 5, 358, 97, 9, 32, 38, 46, 264};
  const std::int64_t vocab = (*f32)->config().vocab_size;
  for (AttentionForm form : {AttentionForm::kExpanded, AttentionForm::kAbsorbed}) {
    const std::vector<float> want = AllLogits(**f32, tokens, form), got = AllLogits(**fp8, tokens, form);
    ASSERT_EQ(got.size(), want.size());
    const double rel = MaxRelDiff(got, want);
    int same = 0;
    const auto rows = static_cast<std::int64_t>(tokens.size());
    for (std::int64_t r = 0; r < rows; ++r) {
      const auto g = got.begin() + r * vocab, w = want.begin() + r * vocab;
      same += std::max_element(g, g + vocab) - g == std::max_element(w, w + vocab) - w;
    }
    // e4m3 keeps 4 significant bits to bf16's 8: about 16 times bf16's
    // deviation (about 1% on this model, through random weights).
    EXPECT_LT(rel, 0.3) << "form " << static_cast<int>(form);
    EXPECT_GT(rel, 1e-3) << "FP8 products were not quantised";
    EXPECT_GE(same, rows * 3 / 4) << "form " << static_cast<int>(form);
  }
  std::filesystem::remove_all(dir);
}

TEST(HostDeviceTest, SampleRowsIsTheSamplerSplitAtItsDraw) {
  // Two copies of each request's state: one samples with Sample, the other
  // through the device (TakeDraw, then SampleRows on a chosen row). Over many
  // steps, with penalties and logprobs, the tokens and logprobs agree exactly.
  auto dev = MakeHostDevice(kernels::Backend::kRef);
  std::mt19937 rng(17);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const int vocab = 300;
  std::vector<SamplingParams> params(3);
  params[0].temperature = 0.0f;  // greedy
  params[1].temperature = 0.8f;
  params[1].top_p = 0.9f;
  params[1].seed = 5;
  params[1].logprobs = 3;
  params[2].temperature = 1.2f;
  params[2].top_k = 20;
  params[2].repetition_penalty = 1.3f;
  params[2].frequency_penalty = 0.5f;
  params[2].seed = 9;
  const std::vector<std::int32_t> prompt = {4, 8, 15, 16, 23, 42};
  std::vector<SamplerState> direct, split;
  for (const SamplingParams& p : params) {
    direct.emplace_back(p, prompt);
    split.emplace_back(p, prompt);
  }
  std::vector<float> logits(static_cast<std::size_t>(5 * vocab));
  for (int step = 0; step < 40; ++step) {
    for (float& v : logits) v = normal(rng);
    std::vector<RowSample> rows;
    for (std::size_t i = 0; i < split.size(); ++i) {
      rows.push_back(RowSample{&split[i], split[i].TakeDraw(), static_cast<std::int64_t>(4 - i), {}});  // reversed rows
    }
    std::vector<SampleResult> got;
    ASSERT_TRUE(dev->SampleRows(rows, logits.data(), vocab, vocab, &got).ok());
    ASSERT_EQ(got.size(), split.size());
    for (std::size_t i = 0; i < split.size(); ++i) {
      const std::span<const float> row(logits.data() + (4 - i) * vocab, static_cast<std::size_t>(vocab));
      const SampleResult want = direct[i].Sample(row);
      EXPECT_EQ(got[i].token, want.token) << "request " << i << " step " << step;
      EXPECT_EQ(got[i].logprob, want.logprob);
      ASSERT_EQ(got[i].top.size(), want.top.size());
      for (std::size_t j = 0; j < want.top.size(); ++j) EXPECT_EQ(got[i].top[j].token, want.top[j].token);
      direct[i].Observe(want.token);
      split[i].Observe(got[i].token);
    }
  }
}

// A device with its own memory, on the host: every op runs on the CPU device,
// but uploads copy (as a GPU's do) and host_accessible() is false, so a model
// on it takes the paths a GPU model takes -- weights streamed to the device
// layer by layer at load, logits copied back -- on the same kernels, which
// makes its results comparable bit for bit with the CPU model's.
class SeparateMemoryDevice final : public Device {
 public:
  SeparateMemoryDevice() : d_(MakeHostDevice(kernels::Backend::kRef)) {}
  int uploads = 0;  // Upload / UploadWeight / UploadFp8Weight calls
  int syncs = 0;

  const char* name() const override { return "separate"; }
  bool host_accessible() const override { return false; }
  absl::StatusOr<std::unique_ptr<DeviceMemory>> Allocate(std::size_t bytes) override { return d_->Allocate(bytes); }
  absl::StatusOr<std::unique_ptr<DeviceMemory>> Upload(std::span<const float> host) override {
    ++uploads;
    SIROCCO_ASSIGN_OR_RETURN(auto m, d_->Allocate(host.size_bytes()));
    if (!host.empty()) std::memcpy(m->data(), host.data(), host.size_bytes());
    return m;
  }
  absl::StatusOr<std::unique_ptr<DeviceMemory>> UploadWeight(std::span<const float> host, WeightType type) override {
    if (type == WeightType::kF32) return Upload(host);
    ++uploads;
    return d_->UploadWeight(host, type);  // bf16 rounding writes a copy
  }
  WeightType StoredType(WeightType type) const override { return d_->StoredType(type); }
  absl::StatusOr<std::unique_ptr<DeviceMemory>> UploadFp8Weight(const Fp8BlockWeights& w, WeightView* view) override {
    ++uploads;
    return d_->UploadFp8Weight(w, view);  // widened into its own memory
  }
  absl::Status CopyToDevice(void* dst, const void* src, std::size_t bytes) override {
    return d_->CopyToDevice(dst, src, bytes);
  }
  absl::Status CopyToHost(void* dst, const void* src, std::size_t bytes) override {
    return d_->CopyToHost(dst, src, bytes);
  }
  absl::Status Synchronize() override {
    ++syncs;
    return d_->Synchronize();
  }
  absl::Status GemmNt(int m, int n, int k, const float* a, int lda, WeightView b, int ldb, float beta, float* c,
                      int ldc) override {
    return d_->GemmNt(m, n, k, a, lda, b, ldb, beta, c, ldc);
  }
  absl::Status GemmNnBatched(int batch, int m, int n, int k, const float* a, int lda, std::int64_t stride_a,
                             WeightView b, int ldb, std::int64_t stride_b, float beta, float* c, int ldc,
                             std::int64_t stride_c) override {
    return d_->GemmNnBatched(batch, m, n, k, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc, stride_c);
  }
  absl::Status GemmNtBatched(int batch, int m, int n, int k, const float* a, int lda, std::int64_t stride_a,
                             WeightView b, int ldb, std::int64_t stride_b, float beta, float* c, int ldc,
                             std::int64_t stride_c) override {
    return d_->GemmNtBatched(batch, m, n, k, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc, stride_c);
  }
  absl::Status RmsNorm(int rows, int dim, const float* x, int ldx, const float* w, float eps, float* y,
                       int ldy) override {
    return d_->RmsNorm(rows, dim, x, ldx, w, eps, y, ldy);
  }
  absl::Status RopeInterleaved(int rows, int rows_per_pos, int dim, float* x, int ldx, const std::int32_t* pos,
                               const float* inv_freq, float attn_factor) override {
    return d_->RopeInterleaved(rows, rows_per_pos, dim, x, ldx, pos, inv_freq, attn_factor);
  }
  absl::Status SiluMul(int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out,
                       int ldo) override {
    return d_->SiluMul(rows, n, gate, ldg, up, ldu, out, ldo);
  }
  absl::Status GeluMul(int rows, int n, const float* gate, int ldg, const float* up, int ldu, float* out,
                       int ldo) override {
    return d_->GeluMul(rows, n, gate, ldg, up, ldu, out, ldo);
  }
  absl::Status ScaleRows(int rows, int n, float* x, int ldx, const float* scales) override {
    return d_->ScaleRows(rows, n, x, ldx, scales);
  }
  absl::Status GatherRows(int rows, int dim, WeightView src, int lds, const std::int32_t* idx, float* dst,
                          int ldd) override {
    return d_->GatherRows(rows, dim, src, lds, idx, dst, ldd);
  }
  absl::Status ScatterRows(int rows, int dim, const float* src, int lds, const std::int32_t* idx, float* dst,
                           int ldd) override {
    return d_->ScatterRows(rows, dim, src, lds, idx, dst, ldd);
  }
  absl::Status Copy2D(int rows, int cols, const float* src, int lds, float* dst, int ldd) override {
    return d_->Copy2D(rows, cols, src, lds, dst, ldd);
  }
  absl::Status MlaAttention(const kernels::MlaAttentionParams& p, int max_ctx_len) override {
    return d_->MlaAttention(p, max_ctx_len);
  }
  absl::Status Attention(const kernels::AttentionParams& p) override { return d_->Attention(p); }
  absl::Status SampleRows(std::span<const RowSample> rows, const float* logits, int vocab, int ld,
                          std::vector<SampleResult>* out) override {
    return d_->SampleRows(rows, logits, vocab, ld, out);
  }
  absl::Status RouteTopk(const kernels::RouterParams& p) override { return d_->RouteTopk(p); }
  absl::Status MoeDispatch(int num_tokens, int top_k, int num_experts, const std::int32_t* expert_ids,
                           std::int32_t* counts, std::int32_t* offsets, std::int32_t* sorted,
                           std::int32_t* position) override {
    return d_->MoeDispatch(num_tokens, top_k, num_experts, expert_ids, counts, offsets, sorted, position);
  }
  absl::Status MoeGatherRows(int rows, int dim, const float* x, int ldx, const std::int32_t* sorted, int top_k,
                             float* xs, int ldxs) override {
    return d_->MoeGatherRows(rows, dim, x, ldx, sorted, top_k, xs, ldxs);
  }
  absl::Status GroupedGemmNt(int num_groups, int rows, int n, int k, const float* a, int lda,
                             const std::int32_t* offsets, WeightView w, int ldw, std::int64_t w_stride, float* c,
                             int ldc) override {
    return d_->GroupedGemmNt(num_groups, rows, n, k, a, lda, offsets, w, ldw, w_stride, c, ldc);
  }
  absl::Status MoeCombine(int num_tokens, int top_k, int dim, const float* ys, int ldys, const std::int32_t* position,
                          const float* weights, bool accumulate, float* out, int ldo) override {
    return d_->MoeCombine(num_tokens, top_k, dim, ys, ldys, position, weights, accumulate, out, ldo);
  }

 private:
  std::unique_ptr<Device> d_;
};

TEST(SeparateMemoryDeviceTest, StreamedLoadComputesWhatTheHostModelComputes) {
  // Load() streams the weights of a device with its own memory layer by
  // layer; the model then computes bit for bit what the CPU model computes
  // from the fully loaded weights, for every weight type, in both prefill
  // forms and through decode.
  const std::string dir = testing::TempDir("streamed_load");
  MakeModelOptions mo;
  mo.seed = 21;
  mo.dtype = DType::kBF16;
  const ModelConfig config = testing::SmallVocabTiny();
  ASSERT_TRUE(MakeModel(config, mo, dir).ok());
  const std::vector<std::int32_t> prompt = {3, 141, 59, 26, 5, 358, 97, 9, 32, 38};
  const std::vector<std::int32_t> next = {46};
  for (WeightType type : {WeightType::kF32, WeightType::kBF16, WeightType::kFP8}) {
    auto host = Mistral4Model::Load(
        dir, ModelOptions{.backend = kernels::Backend::kRef, .device = nullptr, .weight_type = type});
    ASSERT_TRUE(host.ok()) << host.status();
    auto device = std::make_shared<SeparateMemoryDevice>();
    auto separate = Mistral4Model::Load(
        dir, ModelOptions{.backend = kernels::Backend::kRef, .device = device, .weight_type = type});
    ASSERT_TRUE(separate.ok()) << separate.status();
    // Each layer reached the device and was waited for before the next was
    // read (one Synchronize per layer, one after the embedding and head).
    EXPECT_EQ(device->syncs, config.num_hidden_layers + 1) << WeightTypeName(type);
    EXPECT_GT(device->uploads, 4 * config.num_hidden_layers);
    for (AttentionForm form : {AttentionForm::kExpanded, AttentionForm::kAbsorbed}) {
      std::vector<float> want, got;
      for (auto* model : {&*host, &*separate}) {
        auto pool = KvPool::Create((*model)->PoolOptions(8, 4), (*model)->device());
        ASSERT_TRUE(pool.ok());
        EXPECT_EQ((*pool)->host_accessible(), model == &*host);
        BlockTable t(pool->get());
        ASSERT_TRUE(t.Reserve(12).ok());
        ForwardItem item{prompt, 0, &t, true};
        std::vector<float>* out = model == &*host ? &want : &got;
        ASSERT_TRUE((*model)->Forward({&item, 1}, **pool, form, out).ok());
        ForwardItem step{next, static_cast<std::int64_t>(prompt.size()), &t, false};
        std::vector<float> decoded;
        ASSERT_TRUE((*model)->Forward({&step, 1}, **pool, AttentionForm::kAbsorbed, &decoded).ok());
        out->insert(out->end(), decoded.begin(), decoded.end());
      }
      EXPECT_EQ(got, want) << WeightTypeName(type) << " form " << static_cast<int>(form);
    }
  }
  std::filesystem::remove_all(dir);
}

TEST(SeparateMemoryDeviceTest, LayerByLayerLoadStopsAtTheFirstError) {
  const std::string dir = testing::TempDir("by_layer");
  MakeModelOptions mo;
  mo.seed = 3;
  const ModelConfig config = testing::SmallVocabTiny();
  ASSERT_TRUE(MakeModel(config, mo, dir).ok());
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok());
  auto all = LoadMistral4Weights(**checkpoint, config);
  ASSERT_TRUE(all.ok());
  std::vector<std::int64_t> seen;
  auto globals = LoadMistral4WeightsByLayer(**checkpoint, config, [&](std::int64_t l, LayerWeights& lw) {
    seen.push_back(l);
    const LayerWeights& want = (*all)->layers[static_cast<std::size_t>(l)];
    EXPECT_EQ(lw.is_moe, want.is_moe);
    EXPECT_EQ(lw.attn.kv_a_proj.data, want.attn.kv_a_proj.data) << l;
    EXPECT_EQ(lw.moe.gate_up, want.moe.gate_up) << l;
    return absl::OkStatus();
  });
  ASSERT_TRUE(globals.ok());
  EXPECT_EQ(seen.size(), static_cast<std::size_t>(config.num_hidden_layers));
  for (std::size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], static_cast<std::int64_t>(i));
  EXPECT_EQ((*globals)->embed.data, (*all)->embed.data);
  for (std::size_t l = 0; l < seen.size(); ++l) {
    EXPECT_EQ((*globals)->layers[l].is_moe, (*all)->layers[l].is_moe);
    EXPECT_TRUE((*globals)->layers[l].attn.kv_a_proj.empty()) << "the layer stayed on the host";
  }
  int calls = 0;
  auto failed = LoadMistral4WeightsByLayer(**checkpoint, config, [&](std::int64_t, LayerWeights&) {
    ++calls;
    return absl::ResourceExhaustedError("device full");
  });
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(calls, 1);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sirocco::engine
