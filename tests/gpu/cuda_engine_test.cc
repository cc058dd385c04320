// The engine on a GPU against the engine on the CPU.
//
// DeviceOps: the Device ops that only the engine uses (row gathers and
// scatters, per-row scaling, strided copies, batched per-head products, the
// grouped expert product) run on the CUDA device and on the CPU device over
// the CPU kernels (AVX2 + BLAS, or the scalar reference), on the same inputs; the results must agree to
// float32 rounding (exact for pure data movement).
//
// Model: whole-model logits of the `tiny`, `tiny-noqlora` and `small` presets
// computed on the GPU (weights, activations and KV pool in device memory)
// against the CPU engine (which tests/reference checks against transformers),
// for a batch mixing a long prompt, a short one and a chunk continuing a cached
// prefix, in both attention forms, and through decode steps; then greedy
// continuations of 24 tokens must be identical. With bf16 weights the GPU's
// logits must match the CPU engine's bf16 numerics.
//
// Vision: the `tiny` preset's Pixtral encoder on the GPU against the CPU's,
// and the logits of a prompt with two images.
//
// Without a CUDA device every test reports SKIPPED.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/cuda/cuda_device.h"
#include "engine/device.h"
#include "engine/generator.h"
#include "engine/kv_cache.h"
#include "engine/mistral4.h"
#include "engine/model_maker.h"
#include "engine/pixtral.h"
#include "engine/sampler.h"
#include "tests/unit/kernels/kernel_test_util.h"

namespace sirocco::engine {
namespace {

using kernels::test_util::GemmTolerance;
using kernels::test_util::NormalizedError;
using kernels::test_util::RandomVector;

#define SIROCCO_ASSERT_OK(expr)                         \
  do {                                                  \
    const ::absl::Status assert_status_ = (expr);       \
    ASSERT_TRUE(assert_status_.ok()) << assert_status_; \
  } while (false)

// SIROCCO_TEST_GPU_STAND_IN=1 runs these tests with the CPU device (scalar
// reference kernels) standing in for the GPU: a self-check of the tests'
// own logic on machines without a GPU. It says nothing about the CUDA code,
// and tests/gpu/run.sh never sets it.
bool StandIn() {
  const char* v = std::getenv("SIROCCO_TEST_GPU_STAND_IN");
  return v != nullptr && std::string(v) == "1";
}
bool GpuAvailable() { return StandIn() || cuda::Available(); }
absl::StatusOr<std::unique_ptr<Device>> MakeGpu() {
  if (StandIn()) return MakeHostDevice(kernels::Backend::kRef);
  return cuda::MakeCudaDevice();
}

template <typename T>
std::unique_ptr<DeviceMemory> Put(Device& d, const std::vector<T>& host) {
  auto memory = d.Allocate(host.size() * sizeof(T));
  if (!memory.ok()) {
    ADD_FAILURE() << memory.status();
    return nullptr;
  }
  const absl::Status st = d.CopyToDevice((*memory)->data(), host.data(), host.size() * sizeof(T));
  if (!st.ok()) ADD_FAILURE() << st;
  return *std::move(memory);
}

template <typename T>
std::vector<T> Fetch(Device& d, const DeviceMemory& memory, std::size_t n) {
  std::vector<T> host(n);
  const absl::Status st = d.CopyToHost(host.data(), memory.data(), n * sizeof(T));
  if (!st.ok()) ADD_FAILURE() << st;
  return host;
}

class DeviceOpsTest : public testing::Test {
 protected:
  void SetUp() override {
    if (!GpuAvailable()) GTEST_SKIP() << "no CUDA device";
    auto gpu = MakeGpu();
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = *std::move(gpu);
    // AVX2 + BLAS where the CPU has it (tests/unit/kernels checks it against
    // the scalar reference): the model-width products take seconds in scalar code.
    cpu_ =
        MakeHostDevice(kernels::Available(kernels::Backend::kAvx2) ? kernels::Backend::kAvx2 : kernels::Backend::kRef);
  }

  // Runs `op` on both devices over copies of `inputs` and an output buffer of
  // `out_size` floats initialised to `out_init`; returns {gpu, cpu} outputs.
  template <typename Op>
  std::pair<std::vector<float>, std::vector<float>> RunBoth(const std::vector<std::vector<float>>& inputs,
                                                            const std::vector<std::vector<std::int32_t>>& ints,
                                                            const std::vector<float>& out_init, Op op) {
    std::vector<float> results[2];
    Device* devices[2] = {gpu_.get(), cpu_.get()};
    for (int d = 0; d < 2; ++d) {
      std::vector<std::unique_ptr<DeviceMemory>> in, in_ints;
      std::vector<const float*> in_ptrs;
      std::vector<const std::int32_t*> int_ptrs;
      for (const auto& v : inputs) {
        in.push_back(Put(*devices[d], v));
        in_ptrs.push_back(in.back()->as<const float>());
      }
      for (const auto& v : ints) {
        in_ints.push_back(Put(*devices[d], v));
        int_ptrs.push_back(in_ints.back()->as<const std::int32_t>());
      }
      auto out = Put(*devices[d], out_init);
      const absl::Status st = op(*devices[d], in_ptrs, int_ptrs, out->as<float>());
      EXPECT_TRUE(st.ok()) << devices[d]->name() << ": " << st;
      results[d] = Fetch<float>(*devices[d], *out, out_init.size());
    }
    return {results[0], results[1]};
  }

  std::unique_ptr<Device> gpu_, cpu_;
  std::mt19937 rng_{7u};
  std::vector<float> gathered_;  // the GPU's gathered rows, for the CPU's to match
};

using Ptrs = std::vector<const float*>;
using IntPtrs = std::vector<const std::int32_t*>;

TEST_F(DeviceOpsTest, GatherScatterScaleAndCopyMoveRowsExactly) {
  for (int dim : {1, 33, 320, 4096}) {
    const int src_rows = 50, rows = 20, ld = dim + 3;
    const auto src = RandomVector(static_cast<std::size_t>(src_rows * ld), rng_);
    std::vector<std::int32_t> idx(src_rows);
    for (int i = 0; i < src_rows; ++i) idx[static_cast<std::size_t>(i)] = i;
    std::shuffle(idx.begin(), idx.end(), rng_);
    idx.resize(rows);  // distinct, so a scatter is well defined
    const auto init = RandomVector(static_cast<std::size_t>(src_rows * ld), rng_);

    auto [g1, c1] = RunBoth({src}, {idx}, init, [&](Device& d, const Ptrs& in, const IntPtrs& ii, float* out) {
      return d.GatherRows(rows, dim, in[0], ld, ii[0], out, ld);
    });
    EXPECT_EQ(g1, c1) << "GatherRows dim=" << dim;
    auto [g2, c2] = RunBoth({src}, {idx}, init, [&](Device& d, const Ptrs& in, const IntPtrs& ii, float* out) {
      return d.ScatterRows(rows, dim, in[0], ld, ii[0], out, ld);
    });
    EXPECT_EQ(g2, c2) << "ScatterRows dim=" << dim;
    const auto scales = RandomVector(static_cast<std::size_t>(src_rows), rng_, 0.5f, 2.0f);
    auto [g3, c3] = RunBoth({scales}, {}, init, [&](Device& d, const Ptrs& in, const IntPtrs&, float* out) {
      return d.ScaleRows(src_rows, dim, out, ld, in[0]);
    });
    EXPECT_EQ(g3, c3) << "ScaleRows dim=" << dim;  // one float32 product per element: exact
    auto [g4, c4] = RunBoth({src}, {}, init, [&](Device& d, const Ptrs& in, const IntPtrs&, float* out) {
      return d.Copy2D(rows, dim - dim / 3, in[0] + dim / 3, ld, out + 1, ld);
    });
    EXPECT_EQ(g4, c4) << "Copy2D dim=" << dim;
  }
}

TEST_F(DeviceOpsTest, BatchedPerHeadProductsMatchTheReference) {
  // The absorbed-attention shapes: 32 heads, nope 128 -> rank 256 and back to v 128.
  for (int T : {1, 5, 64}) {
    const int heads = 32, nope = 128, R = 256, vd = 128, qk = 192, kvw = nope + vd;
    const auto q = RandomVector(static_cast<std::size_t>(T * heads * qk), rng_);
    const auto kvb = RandomVector(static_cast<std::size_t>(heads * kvw * R), rng_);
    const std::vector<float> out_init(static_cast<std::size_t>(T * heads * R), 0.0f);
    auto [g1, c1] = RunBoth({q, kvb}, {}, out_init, [&](Device& d, const Ptrs& in, const IntPtrs&, float* out) {
      return d.GemmNnBatched(heads, T, R, nope, in[0], heads * qk, qk, in[1], R, std::int64_t{kvw} * R, 0.0f, out,
                             heads * R, R);
    });
    EXPECT_LE(NormalizedError(g1, c1), GemmTolerance(nope)) << "GemmNnBatched T=" << T;
    const auto lat = RandomVector(static_cast<std::size_t>(T * heads * R), rng_);
    const std::vector<float> attn_init(static_cast<std::size_t>(T * heads * vd), 0.0f);
    auto [g2, c2] = RunBoth({lat, kvb}, {}, attn_init, [&](Device& d, const Ptrs& in, const IntPtrs&, float* out) {
      return d.GemmNtBatched(heads, T, vd, R, in[0], heads * R, R, in[1] + nope * R, R, std::int64_t{kvw} * R, 0.0f,
                             out, heads * vd, vd);
    });
    EXPECT_LE(NormalizedError(g2, c2), GemmTolerance(R)) << "GemmNtBatched T=" << T;
  }
}

TEST_F(DeviceOpsTest, GroupedExpertProductsMatchTheReference) {
  struct Case {
    int groups, n, k;
    std::vector<std::int32_t> counts;
  };
  std::vector<Case> cases = {
      {4, 7, 5, {0, 3, 0, 1}},
      {3, 70, 33, {65, 0, 130}},  // tiles crossing group boundaries
      {8, 128, 64, {1, 1, 1, 1, 0, 0, 0, 0}},
  };
  // 128 experts (the real count) with skewed routing: a few hot experts, many
  // empty, top-4 of 16 tokens (decode) and of 300 (prefill), at small widths.
  for (int tokens : {16, 300}) {
    Case c{128, 96, 48, std::vector<std::int32_t>(128, 0)};
    std::discrete_distribution<int> skew({8, 4, 2, 1});
    for (int i = 0; i < tokens * 4; ++i) ++c.counts[static_cast<std::size_t>(skew(rng_) * 32 + i % 32)];
    cases.push_back(c);
  }
  // The real expert widths, gate_up [4096 -> 2 x 2048] and down [2048 ->
  // 4096], over 8 experts (each real expert matrix is 32-64 MB in float32;
  // 128 of them would only repeat the same tiles).
  for (int tokens : {16, 64}) {
    for (auto [n, k] : {std::pair{4096, 4096}, std::pair{4096, 2048}}) {
      Case c{8, n, k, std::vector<std::int32_t>(8, 0)};
      for (int i = 0; i < tokens * 4; ++i) ++c.counts[static_cast<std::size_t>((i * 5) % 7)];  // expert 7 stays empty
      cases.push_back(c);
    }
  }
  for (const Case& c : cases) {
    std::vector<std::int32_t> offsets(static_cast<std::size_t>(c.groups) + 1, 0);
    for (int g = 0; g < c.groups; ++g)
      offsets[static_cast<std::size_t>(g) + 1] =
          offsets[static_cast<std::size_t>(g)] + c.counts[static_cast<std::size_t>(g)];
    const int rows = offsets.back();
    const int lda = c.k + 1, ldc = c.n + 2;
    const auto a = RandomVector(static_cast<std::size_t>(std::max(rows, 1) * lda), rng_);
    const std::int64_t w_stride = std::int64_t{c.n} * c.k;
    const auto w = RandomVector(static_cast<std::size_t>(w_stride * c.groups), rng_, -0.1f, 0.1f);
    const std::vector<float> out_init(static_cast<std::size_t>(std::max(rows, 1) * ldc), 7.0f);
    auto [g, r] = RunBoth({a, w}, {offsets}, out_init, [&](Device& d, const Ptrs& in, const IntPtrs& ii, float* out) {
      return d.GroupedGemmNt(c.groups, rows, c.n, c.k, in[0], lda, ii[0], in[1], c.k, w_stride, out, ldc);
    });
    EXPECT_LE(NormalizedError(g, r), GemmTolerance(c.k)) << "groups=" << c.groups << " n=" << c.n << " k=" << c.k;
    // Padding columns keep their initial value on both devices.
    for (int row = 0; row < rows; ++row) {
      ASSERT_EQ(g[static_cast<std::size_t>(row * ldc + c.n)], 7.0f) << "padding written, row " << row;
    }
  }
}

TEST_F(DeviceOpsTest, Bf16WeightProductsMatchTheCpuDevicesBf16Numerics) {
  // Both devices round the weights and the activations to bf16 (the GPU
  // stores bf16, the CPU float32 values that are bf16 numbers) and sum exact
  // products in float32: only the summation order differs.
  struct Case {
    int m, n, k;
  };
  for (const Case& c : {Case{1, 4096, 4096}, Case{5, 320, 4096}, Case{64, 1024, 4096}, Case{3, 7, 5}}) {
    const int lda = c.k + 3;
    const auto a = RandomVector(static_cast<std::size_t>(c.m * lda), rng_);
    const auto w = RandomVector(static_cast<std::size_t>(c.n * c.k), rng_);
    std::vector<float> out[2];
    Device* devices[2] = {gpu_.get(), cpu_.get()};
    for (int d = 0; d < 2; ++d) {
      Device& dev = *devices[d];
      auto stored = dev.UploadWeight(w, WeightType::kBF16);
      ASSERT_TRUE(stored.ok()) << stored.status();
      const WeightView view((*stored)->data(), dev.StoredType(WeightType::kBF16));
      auto da = Put(dev, a);
      auto dc = Put(dev, std::vector<float>(static_cast<std::size_t>(c.m * c.n), 0.0f));
      SIROCCO_ASSERT_OK(dev.GemmNt(c.m, c.n, c.k, da->as<float>(), lda, view, c.k, 0.0f, dc->as<float>(), c.n));
      out[d] = Fetch<float>(dev, *dc, static_cast<std::size_t>(c.m * c.n));
      // Embedding rows from a bf16 table are the table's bf16 values, widened.
      std::vector<std::int32_t> idx = {2, 0, std::min(c.n - 1, 4)};
      auto di = Put(dev, idx);
      auto de = Put(dev, std::vector<float>(static_cast<std::size_t>(3 * c.k), 0.0f));
      SIROCCO_ASSERT_OK(dev.GatherRows(3, c.k, view, c.k, di->as<std::int32_t>(), de->as<float>(), c.k));
      const auto rows = Fetch<float>(dev, *de, static_cast<std::size_t>(3 * c.k));
      if (d == 1) {
        EXPECT_EQ(rows, gathered_) << "bf16 embedding rows differ, k=" << c.k;
      }
      gathered_ = rows;
    }
    EXPECT_LE(NormalizedError(out[0], out[1]), GemmTolerance(c.k)) << "m=" << c.m << " n=" << c.n << " k=" << c.k;
  }

  // The per-head products (absorbed attention's shapes at 4 heads) and the
  // grouped expert product, on bf16 weights.
  const int heads = 4, T = 6, nope = 128, R = 256, vd = 128, qk = 192, kvw = nope + vd;
  const auto q = RandomVector(static_cast<std::size_t>(T * heads * qk), rng_);
  const auto kvb = RandomVector(static_cast<std::size_t>(heads * kvw * R), rng_);
  const std::vector<std::int32_t> offsets = {0, 5, 5, 17};
  const auto xs = RandomVector(static_cast<std::size_t>(17 * 64), rng_);
  const auto experts = RandomVector(static_cast<std::size_t>(3 * 80 * 64), rng_);
  std::vector<float> lat[2], attn[2], grouped[2];
  Device* devices[2] = {gpu_.get(), cpu_.get()};
  for (int d = 0; d < 2; ++d) {
    Device& dev = *devices[d];
    auto wk = dev.UploadWeight(kvb, WeightType::kBF16);
    auto we = dev.UploadWeight(experts, WeightType::kBF16);
    ASSERT_TRUE(wk.ok() && we.ok());
    const WeightType t = dev.StoredType(WeightType::kBF16);
    const WeightView kv_b((*wk)->data(), t), ex((*we)->data(), t);
    auto dq = Put(dev, q);
    auto dlat = Put(dev, std::vector<float>(static_cast<std::size_t>(T * heads * R), 0.0f));
    auto dattn = Put(dev, std::vector<float>(static_cast<std::size_t>(T * heads * vd), 0.0f));
    SIROCCO_ASSERT_OK(dev.GemmNnBatched(heads, T, R, nope, dq->as<float>(), heads * qk, qk, kv_b, R,
                                        std::int64_t{kvw} * R, 0.0f, dlat->as<float>(), heads * R, R));
    SIROCCO_ASSERT_OK(dev.GemmNtBatched(heads, T, vd, R, dlat->as<float>(), heads * R, R, kv_b.Offset(nope * R), R,
                                        std::int64_t{kvw} * R, 0.0f, dattn->as<float>(), heads * vd, vd));
    lat[d] = Fetch<float>(dev, *dlat, static_cast<std::size_t>(T * heads * R));
    attn[d] = Fetch<float>(dev, *dattn, static_cast<std::size_t>(T * heads * vd));
    auto dx = Put(dev, xs);
    auto doff = Put(dev, offsets);
    auto dy = Put(dev, std::vector<float>(static_cast<std::size_t>(17 * 80), 0.0f));
    SIROCCO_ASSERT_OK(dev.GroupedGemmNt(3, 17, 80, 64, dx->as<float>(), 64, doff->as<std::int32_t>(), ex, 64, 80 * 64,
                                        dy->as<float>(), 80));
    grouped[d] = Fetch<float>(dev, *dy, static_cast<std::size_t>(17 * 80));
  }
  EXPECT_LE(NormalizedError(lat[0], lat[1]), GemmTolerance(nope)) << "bf16 GemmNnBatched";
  // The second product reads the first's output, rounded to bf16 on each
  // device from slightly different float32 sums: one bf16 ulp apart at worst.
  EXPECT_LE(NormalizedError(attn[0], attn[1]), 1e-2) << "bf16 GemmNtBatched";
  EXPECT_LE(NormalizedError(grouped[0], grouped[1]), GemmTolerance(64)) << "bf16 GroupedGemmNt";
}

TEST_F(DeviceOpsTest, Fp8WeightProductsMatchTheCpuDevicesFp8Numerics) {
  // Both devices multiply float32 activations by code * block scale and sum
  // in float32 (the GPU widens the codes as it loads them, the CPU holds the
  // widened values): only the summation order differs. Shapes with partial
  // 128-blocks, the real model's projections, and accumulation (beta 1).
  struct Case {
    int m, n, k;
    float beta;
  };
  for (const Case& c : {Case{1, 4096, 4096, 1.0f}, Case{7, 320, 4096, 0.0f}, Case{64, 2048, 4096, 0.0f},
                        Case{5, 200, 130, 1.0f}, Case{3, 7, 5, 0.0f}}) {
    const int lda = c.k + 3;
    const auto a = RandomVector(static_cast<std::size_t>(c.m * lda), rng_);
    const auto w = RandomVector(static_cast<std::size_t>(c.n * c.k), rng_);
    const auto c0 = RandomVector(static_cast<std::size_t>(c.m * c.n), rng_);
    const Fp8BlockWeights q = QuantizeFp8Blocks(1, c.n, c.k, w.data());
    std::vector<float> out[2];
    Device* devices[2] = {gpu_.get(), cpu_.get()};
    for (int d = 0; d < 2; ++d) {
      Device& dev = *devices[d];
      WeightView view;
      auto stored = dev.UploadFp8Weight(q, &view);
      ASSERT_TRUE(stored.ok()) << stored.status();
      auto da = Put(dev, a);
      auto dc = Put(dev, c0);
      SIROCCO_ASSERT_OK(dev.GemmNt(c.m, c.n, c.k, da->as<float>(), lda, view, c.k, c.beta, dc->as<float>(), c.n));
      out[d] = Fetch<float>(dev, *dc, static_cast<std::size_t>(c.m * c.n));
    }
    EXPECT_LE(NormalizedError(out[0], out[1]), GemmTolerance(c.k)) << "m=" << c.m << " n=" << c.n << " k=" << c.k;
  }
  // Grouped: three experts [80, 200] (partial blocks both ways), one empty.
  const std::vector<std::int32_t> offsets = {0, 5, 5, 17};
  const auto xs = RandomVector(static_cast<std::size_t>(17 * 200), rng_);
  const auto experts = RandomVector(static_cast<std::size_t>(3 * 80 * 200), rng_);
  const Fp8BlockWeights q = QuantizeFp8Blocks(3, 80, 200, experts.data());
  std::vector<float> grouped[2];
  Device* devices[2] = {gpu_.get(), cpu_.get()};
  for (int d = 0; d < 2; ++d) {
    Device& dev = *devices[d];
    WeightView view;
    auto stored = dev.UploadFp8Weight(q, &view);
    ASSERT_TRUE(stored.ok()) << stored.status();
    auto dx = Put(dev, xs);
    auto doff = Put(dev, offsets);
    auto dy = Put(dev, std::vector<float>(static_cast<std::size_t>(17 * 80), 0.0f));
    SIROCCO_ASSERT_OK(dev.GroupedGemmNt(3, 17, 80, 200, dx->as<float>(), 200, doff->as<std::int32_t>(), view, 200,
                                        80 * 200, dy->as<float>(), 80));
    grouped[d] = Fetch<float>(dev, *dy, static_cast<std::size_t>(17 * 80));
  }
  EXPECT_LE(NormalizedError(grouped[0], grouped[1]), GemmTolerance(200)) << "FP8 GroupedGemmNt";
}

TEST_F(DeviceOpsTest, SampleRowsMatchesTheCpuSampler) {
  // The device's sampling glue (parameters and penalty histories packed and
  // uploaded, rows gathered when they are not 0..n-1, results unpacked)
  // against the CPU device, which calls SamplerState directly. Greedy rows
  // must agree exactly; a sampled row may differ only where the draw falls
  // within rounding of a boundary (kernels/cuda/sampling.h), which the
  // tolerance of one differing row in this batch allows.
  const int vocab = 131072, rows = 12;
  std::vector<float> logits(static_cast<std::size_t>(rows + 3) * vocab);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (float& v : logits) v = normal(rng_);
  const std::vector<std::int32_t> prompt = {1, 5, 900, 131071};
  std::vector<std::vector<SampleResult>> results(2);
  Device* devices[2] = {gpu_.get(), cpu_.get()};
  for (int d = 0; d < 2; ++d) {
    std::vector<SamplerState> states;
    states.reserve(rows);
    for (int i = 0; i < rows; ++i) {
      SamplingParams p;
      p.temperature = i % 3 == 0 ? 0.0f : 0.7f;
      p.top_k = i % 4 == 1 ? 50 : 0;
      p.top_p = i % 4 == 2 ? 0.9f : 1.0f;
      p.repetition_penalty = i % 5 == 3 ? 1.2f : 1.0f;
      p.logprobs = i % 2 == 0 ? 5 : -1;
      p.seed = 100 + i;
      states.emplace_back(p, prompt);
      states.back().Observe(7);
    }
    std::vector<RowSample> batch;
    for (int i = 0; i < rows; ++i) {
      batch.push_back(RowSample{&states[static_cast<std::size_t>(i)],
                                states[static_cast<std::size_t>(i)].TakeDraw(),
                                static_cast<std::int64_t>(rows + 2 - i),
                                {}});  // reversed, skipping rows 0-2
    }
    auto dl = Put(*devices[d], logits);
    SIROCCO_ASSERT_OK(
        devices[d]->SampleRows(batch, dl->as<float>(), vocab, vocab, &results[static_cast<std::size_t>(d)]));
  }
  int differing = 0;
  for (int i = 0; i < rows; ++i) {
    const SampleResult& g = results[0][static_cast<std::size_t>(i)];
    const SampleResult& c = results[1][static_cast<std::size_t>(i)];
    if (i % 3 == 0) {
      EXPECT_EQ(g.token, c.token) << "greedy row " << i;
    } else {
      differing += g.token != c.token ? 1 : 0;
    }
    if (i % 2 == 0) {
      EXPECT_NEAR(g.logprob, c.logprob, 1e-4) << "row " << i;
      ASSERT_EQ(g.top.size(), c.top.size()) << "row " << i;
      for (std::size_t j = 0; j < c.top.size(); ++j) EXPECT_EQ(g.top[j].token, c.top[j].token) << "row " << i;
    } else {
      EXPECT_TRUE(g.top.empty()) << "row " << i;
    }
  }
  EXPECT_LE(differing, 1);
}

TEST_F(DeviceOpsTest, SampleRowsWithTokenMasksMatchTheCpuSampler) {
  // Rows with a response format's mask are sampled on the host from the
  // row's logits copied back; the other rows of the batch stay on the
  // device. Masked rows must equal the CPU device's exactly (the same host
  // code samples both) and only ever pick allowed tokens.
  const int vocab = 131072, rows = 6;
  std::vector<float> logits(static_cast<std::size_t>(rows) * vocab);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (float& v : logits) v = normal(rng_);
  std::vector<std::uint32_t> mask((vocab + 31) / 32, 0u);
  for (int id = 0; id < vocab; id += 7) mask[static_cast<std::size_t>(id) / 32] |= 1u << (id % 32);
  std::vector<std::vector<SampleResult>> results(2);
  Device* devices[2] = {gpu_.get(), cpu_.get()};
  for (int d = 0; d < 2; ++d) {
    std::vector<SamplerState> states;
    states.reserve(rows);
    for (int i = 0; i < rows; ++i) {
      SamplingParams p;
      p.temperature = i % 2 == 0 ? 0.0f : 0.8f;
      p.logprobs = 2;
      p.seed = 7 + i;
      states.emplace_back(p, std::vector<std::int32_t>{1});
    }
    std::vector<RowSample> batch;
    for (int i = 0; i < rows; ++i) {
      std::span<const std::uint32_t> allowed;
      if (i % 3 != 2) allowed = mask;  // rows 2 and 5 unmasked
      batch.push_back(RowSample{&states[static_cast<std::size_t>(i)], states[static_cast<std::size_t>(i)].TakeDraw(),
                                static_cast<std::int64_t>(rows - 1 - i), allowed});
    }
    auto dl = Put(*devices[d], logits);
    SIROCCO_ASSERT_OK(
        devices[d]->SampleRows(batch, dl->as<float>(), vocab, vocab, &results[static_cast<std::size_t>(d)]));
  }
  ASSERT_EQ(results[0].size(), static_cast<std::size_t>(rows));
  for (int i = 0; i < rows; ++i) {
    const SampleResult& g = results[0][static_cast<std::size_t>(i)];
    const SampleResult& c = results[1][static_cast<std::size_t>(i)];
    if (i % 3 != 2) {
      EXPECT_EQ(g.token, c.token) << "masked row " << i;
      EXPECT_EQ(g.token % 7, 0) << "masked row " << i;
      EXPECT_FLOAT_EQ(g.logprob, c.logprob) << "masked row " << i;
    } else if (i % 2 == 0) {
      EXPECT_EQ(g.token, c.token) << "greedy row " << i;
    }
  }
}

// ---------------------------------------------------------------------------
// Whole model.

class CudaModelTest : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!GpuAvailable()) GTEST_SKIP() << "no CUDA device";
    const std::string preset = GetParam();
    dir_ = (std::filesystem::temp_directory_path() / ("sirocco_cuda_engine_" + preset)).string();
    if (!std::filesystem::exists(dir_ + "/config.json")) {
      auto config = PresetConfig(preset);
      ASSERT_TRUE(config.ok()) << config.status();
      MakeModelOptions mo;
      mo.seed = 11;
      mo.dtype = DType::kBF16;
      SIROCCO_ASSERT_OK(MakeModel(*config, mo, dir_));
    }
    const kernels::Backend cpu_backend =
        kernels::Available(kernels::Backend::kAvx2) ? kernels::Backend::kAvx2 : kernels::Backend::kRef;
    auto cpu = Mistral4Model::Load(dir_, ModelOptions{.backend = cpu_backend, .device = nullptr});
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    cpu_ = *std::move(cpu);
    auto device = MakeGpu();
    ASSERT_TRUE(device.ok()) << device.status();
    auto gpu = Mistral4Model::Load(dir_, ModelOptions{.backend = cpu_backend, .device = *std::move(device)});
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = *std::move(gpu);
  }

  // Fresh pools, one per model, of the same shape.
  void MakePools(std::int64_t blocks, std::int64_t block_size) {
    auto cp = KvPool::Create(cpu_->PoolOptions(blocks, block_size));
    ASSERT_TRUE(cp.ok()) << cp.status();
    cpu_pool_ = *std::move(cp);
    auto gp = KvPool::Create(gpu_->PoolOptions(blocks, block_size), gpu_->device());
    ASSERT_TRUE(gp.ok()) << gp.status();
    gpu_pool_ = *std::move(gp);
  }

  std::vector<std::int32_t> Tokens(int n) {
    std::uniform_int_distribution<std::int32_t> tok(1000, static_cast<std::int32_t>(cpu_->config().vocab_size) - 1);
    std::vector<std::int32_t> t(static_cast<std::size_t>(n));
    for (auto& v : t) v = tok(rng_);
    return t;
  }

  // Logits of the same step on both models; the GPU's must be within
  // `tol` of the CPU's, relative to the largest |logit|.
  void ExpectSameStep(const std::vector<ForwardItem>& cpu_items, const std::vector<ForwardItem>& gpu_items,
                      AttentionForm form, const std::string& what) {
    std::vector<float> want, got;
    SIROCCO_ASSERT_OK(cpu_->Forward(cpu_items, *cpu_pool_, form, &want));
    SIROCCO_ASSERT_OK(gpu_->Forward(gpu_items, *gpu_pool_, form, &got));
    ASSERT_EQ(got.size(), want.size());
    EXPECT_LE(NormalizedError(got, want), 2e-4) << what;
  }

  void CompareWeightType(WeightType type);

  std::string dir_;
  std::unique_ptr<Mistral4Model> cpu_, gpu_;
  std::unique_ptr<KvPool> cpu_pool_, gpu_pool_;
  std::mt19937 rng_{99u};
};

TEST_P(CudaModelTest, LogitsMatchTheCpuEngineInBothFormsAndThroughDecode) {
  for (AttentionForm form : {AttentionForm::kExpanded, AttentionForm::kAbsorbed}) {
    const std::string fname = form == AttentionForm::kExpanded ? "expanded" : "absorbed";
    MakePools(96, 16);
    // Three sequences: a 300-token prompt, a 1-token prompt, and a 40-token
    // prompt whose last 9 tokens arrive as a second chunk over the cache.
    const auto long_prompt = Tokens(300), short_prompt = Tokens(1), chunked = Tokens(40);
    BlockTable ct[3] = {BlockTable(cpu_pool_.get()), BlockTable(cpu_pool_.get()), BlockTable(cpu_pool_.get())};
    BlockTable gt[3] = {BlockTable(gpu_pool_.get()), BlockTable(gpu_pool_.get()), BlockTable(gpu_pool_.get())};
    for (int i = 0; i < 3; ++i) {
      SIROCCO_ASSERT_OK(ct[i].Reserve(400));
      SIROCCO_ASSERT_OK(gt[i].Reserve(400));
    }
    const std::span<const std::int32_t> head(chunked.data(), 31), tail(chunked.data() + 31, 9);
    {
      std::vector<ForwardItem> c = {
          {long_prompt, 0, &ct[0], true}, {short_prompt, 0, &ct[1], true}, {head, 0, &ct[2], true}};
      std::vector<ForwardItem> g = {
          {long_prompt, 0, &gt[0], true}, {short_prompt, 0, &gt[1], true}, {head, 0, &gt[2], true}};
      ExpectSameStep(c, g, form, GetParam() + " prefill " + fname);
    }
    {
      std::vector<ForwardItem> c = {{tail, 31, &ct[2], true}};
      std::vector<ForwardItem> g = {{tail, 31, &gt[2], true}};
      ExpectSameStep(c, g, form, GetParam() + " continued chunk " + fname);
    }
    // Decode steps for all three, absorbed as decode always is.
    std::int64_t len[3] = {300, 1, 40};
    for (int step = 0; step < 4; ++step) {
      const auto next = Tokens(3);
      std::vector<ForwardItem> c, g;
      for (int i = 0; i < 3; ++i) {
        const std::span<const std::int32_t> one(next.data() + i, 1);
        c.push_back({one, len[i], &ct[i], false});
        g.push_back({one, len[i], &gt[i], false});
        ++len[i];
      }
      ExpectSameStep(c, g, AttentionForm::kAbsorbed, GetParam() + " decode step " + std::to_string(step));
    }
  }
}

TEST_P(CudaModelTest, GreedyContinuationsAreIdentical) {
  MakePools(128, 16);
  std::vector<GenerateRequest> requests(4);
  const int lengths[4] = {1, 17, 120, 700};
  for (int i = 0; i < 4; ++i) {
    requests[static_cast<std::size_t>(i)].prompt = Tokens(lengths[i]);
    requests[static_cast<std::size_t>(i)].sampling.temperature = 0.0f;
    requests[static_cast<std::size_t>(i)].stop.max_tokens = 24;
    requests[static_cast<std::size_t>(i)].stop.ignore_eos = true;
  }
  auto want = Generate(*cpu_, *cpu_pool_, requests);
  ASSERT_TRUE(want.ok()) << want.status();
  auto got = Generate(*gpu_, *gpu_pool_, requests);
  ASSERT_TRUE(got.ok()) << got.status();
  for (std::size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ((*got)[i].tokens, (*want)[i].tokens) << GetParam() << " request " << i;
  }
  // Every block went back to each pool.
  EXPECT_EQ(gpu_pool_->num_free(), gpu_pool_->num_blocks());
}

// Rows of logits (one per token) compared one by one. With bf16 activations
// two engines that sum in different orders disagree by about one bf16 ulp on
// some activations, and where the router's top-k is a near tie such a nudge
// picks another expert for that token, which moves its logits (and, through
// its KV, a little of the later tokens'). So most rows must agree closely and
// the greedy choice of nearly every row must match; a few rows may not.
void ExpectMostRowsClose(const std::vector<float>& got, const std::vector<float>& want, std::int64_t vocab,
                         const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  const std::size_t rows = want.size() / static_cast<std::size_t>(vocab);
  std::size_t close = 0, same_argmax = 0;
  double worst = 0.0;
  for (std::size_t r = 0; r < rows; ++r) {
    const auto begin = static_cast<std::ptrdiff_t>(r * static_cast<std::size_t>(vocab));
    const std::vector<float> g(got.begin() + begin, got.begin() + begin + vocab);
    const std::vector<float> w(want.begin() + begin, want.begin() + begin + vocab);
    const double err = NormalizedError(g, w);
    worst = std::max(worst, err);
    close += err <= 1e-2 ? 1 : 0;
    same_argmax += std::max_element(g.begin(), g.end()) - g.begin() == std::max_element(w.begin(), w.end()) - w.begin();
  }
  EXPECT_GE(close, rows * 9 / 10) << what << ": rows within 1e-2: " << close << " of " << rows << ", worst " << worst;
  EXPECT_GE(same_argmax, rows * 19 / 20) << what << ": same greedy token on " << same_argmax << " of " << rows;
}

// Both engines with `type` weights: the GPU on its bf16 / FP8 products, the
// CPU with the same roundings on float32 kernels (see ExpectMostRowsClose).
// They run the preset's first layers only, its dense layers and one MoE
// layer: a one-ulp difference that tips a near-tie in the router sends that
// token to another expert, and over many layers such changes pile up and
// spread to later tokens through attention, which says nothing about the
// products; in one MoE layer they stay with the few tokens they happen to.
void CudaModelTest::CompareWeightType(WeightType type) {
  const std::string what = GetParam() + " " + WeightTypeName(type);
  const std::string dir = dir_ + "_first_layers";
  if (!std::filesystem::exists(dir + "/config.json")) {
    auto config = PresetConfig(GetParam());
    ASSERT_TRUE(config.ok()) << config.status();
    config->num_hidden_layers = std::min(config->num_hidden_layers, config->first_k_dense_replace + 1);
    MakeModelOptions mo;
    mo.seed = 11;
    mo.dtype = DType::kBF16;
    SIROCCO_ASSERT_OK(MakeModel(*config, mo, dir));
  }
  const kernels::Backend cpu_backend =
      kernels::Available(kernels::Backend::kAvx2) ? kernels::Backend::kAvx2 : kernels::Backend::kRef;
  auto cpu = Mistral4Model::Load(dir, ModelOptions{.backend = cpu_backend, .device = nullptr, .weight_type = type});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  cpu_ = *std::move(cpu);
  auto device = MakeGpu();
  ASSERT_TRUE(device.ok()) << device.status();
  auto gpu =
      Mistral4Model::Load(dir, ModelOptions{.backend = cpu_backend, .device = *std::move(device), .weight_type = type});
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  gpu_ = *std::move(gpu);
  for (AttentionForm form : {AttentionForm::kExpanded, AttentionForm::kAbsorbed}) {
    MakePools(32, 16);
    const auto prompt = Tokens(150), other = Tokens(7);
    BlockTable ct[2] = {BlockTable(cpu_pool_.get()), BlockTable(cpu_pool_.get())};
    BlockTable gt[2] = {BlockTable(gpu_pool_.get()), BlockTable(gpu_pool_.get())};
    for (int i = 0; i < 2; ++i) {
      SIROCCO_ASSERT_OK(ct[i].Reserve(200));
      SIROCCO_ASSERT_OK(gt[i].Reserve(200));
    }
    std::vector<float> want, got;
    std::vector<ForwardItem> c = {{prompt, 0, &ct[0], true}, {other, 0, &ct[1], true}};
    std::vector<ForwardItem> g = {{prompt, 0, &gt[0], true}, {other, 0, &gt[1], true}};
    SIROCCO_ASSERT_OK(cpu_->Forward(c, *cpu_pool_, form, &want));
    SIROCCO_ASSERT_OK(gpu_->Forward(g, *gpu_pool_, form, &got));
    ExpectMostRowsClose(got, want, cpu_->config().vocab_size, what + " prefill");
    const auto next = Tokens(2);
    c = {{std::span<const std::int32_t>(next.data(), 1), 150, &ct[0], false},
         {std::span<const std::int32_t>(next.data() + 1, 1), 7, &ct[1], false}};
    g = {{std::span<const std::int32_t>(next.data(), 1), 150, &gt[0], false},
         {std::span<const std::int32_t>(next.data() + 1, 1), 7, &gt[1], false}};
    SIROCCO_ASSERT_OK(cpu_->Forward(c, *cpu_pool_, AttentionForm::kAbsorbed, &want));
    SIROCCO_ASSERT_OK(gpu_->Forward(g, *gpu_pool_, AttentionForm::kAbsorbed, &got));
    ExpectMostRowsClose(got, want, cpu_->config().vocab_size, what + " decode");
  }
}

TEST_P(CudaModelTest, Bf16WeightsMatchTheCpuEnginesBf16Numerics) { CompareWeightType(WeightType::kBF16); }

// FP8 linear layers and experts (weight-only, float32 activations) with the
// embedding and LM head in bf16, kv_b_proj in float32.
TEST_P(CudaModelTest, Fp8WeightsMatchTheCpuEnginesFp8Numerics) { CompareWeightType(WeightType::kFP8); }

INSTANTIATE_TEST_SUITE_P(Presets, CudaModelTest, testing::Values("tiny", "tiny-noqlora", "small"),
                         [](const testing::TestParamInfo<std::string>& param) {
                           std::string name = param.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// ---------------------------------------------------------------------------
// Images: the `tiny` preset's vision encoder on the GPU against the CPU's, and
// whole-model logits of a prompt whose [IMG] tokens take its rows.

TEST(CudaVisionTest, EncoderAndImageLogitsMatchTheCpuEngine) {
  if (!GpuAvailable()) GTEST_SKIP() << "no CUDA device";
  const std::string dir = (std::filesystem::temp_directory_path() / "sirocco_cuda_engine_tiny_vision").string();
  if (!std::filesystem::exists(dir + "/config.json")) {
    auto config = PresetConfig("tiny");
    ASSERT_TRUE(config.ok()) << config.status();
    MakeModelOptions mo;
    mo.seed = 11;
    mo.dtype = DType::kBF16;
    mo.vision = PresetVisionConfig("tiny");
    SIROCCO_ASSERT_OK(MakeModel(*config, mo, dir));
  }
  const kernels::Backend cpu_backend =
      kernels::Available(kernels::Backend::kAvx2) ? kernels::Backend::kAvx2 : kernels::Backend::kRef;
  auto cpu = Mistral4Model::Load(dir, ModelOptions{.backend = cpu_backend, .device = nullptr});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  auto device = MakeGpu();
  ASSERT_TRUE(device.ok()) << device.status();
  auto gpu = Mistral4Model::Load(dir, ModelOptions{.backend = cpu_backend, .device = *std::move(device)});
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  ASSERT_NE((*cpu)->vision(), nullptr);
  ASSERT_NE((*gpu)->vision(), nullptr);

  // Two images (84x56 and 308x140 pixels: 3x2 and 11x5 cells of 28), their
  // placeholder grids between text tokens.
  std::mt19937 rng(5u);
  const std::int32_t img = static_cast<std::int32_t>((*cpu)->vision()->config().image_token_index);
  std::vector<std::int32_t> prompt = {1, 1200, 1300};
  std::vector<float> cpu_rows, gpu_rows;
  for (auto [height, width] : {std::pair<int, int>{56, 84}, {140, 308}}) {
    const std::vector<float> pixels = RandomVector(static_cast<std::size_t>(3 * height * width), rng, -2.0f, 2.0f);
    auto want = (*cpu)->vision()->Encode(pixels, height, width);
    auto got = (*gpu)->vision()->Encode(pixels, height, width);
    ASSERT_TRUE(want.ok()) << want.status();
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_LE(NormalizedError(*got, *want), 2e-5) << height << "x" << width << " features";
    cpu_rows.insert(cpu_rows.end(), want->begin(), want->end());
    gpu_rows.insert(gpu_rows.end(), got->begin(), got->end());
    for (int r = 0; r < height / 28; ++r) {
      prompt.insert(prompt.end(), static_cast<std::size_t>(width / 28), img);
      prompt.push_back(r + 1 == height / 28 ? 13 : 12);
    }
    prompt.insert(prompt.end(), {1400, 1500});
  }
  std::vector<std::int32_t> at;
  for (std::size_t p = 0; p < prompt.size(); ++p) {
    if (prompt[p] == img) at.push_back(static_cast<std::int32_t>(p));
  }
  for (AttentionForm form : {AttentionForm::kExpanded, AttentionForm::kAbsorbed}) {
    auto cp = KvPool::Create((*cpu)->PoolOptions(16, 16));
    auto gp = KvPool::Create((*gpu)->PoolOptions(16, 16), (*gpu)->device());
    ASSERT_TRUE(cp.ok() && gp.ok());
    BlockTable ct(cp->get()), gt(gp->get());
    SIROCCO_ASSERT_OK(ct.Reserve(static_cast<std::int64_t>(prompt.size())));
    SIROCCO_ASSERT_OK(gt.Reserve(static_cast<std::int64_t>(prompt.size())));
    ForwardItem ci{prompt, 0, &ct, true}, gi{prompt, 0, &gt, true};
    ci.embed_at = gi.embed_at = at;
    ci.embed_rows = cpu_rows;
    gi.embed_rows = gpu_rows;
    std::vector<float> want, got;
    SIROCCO_ASSERT_OK((*cpu)->Forward({&ci, 1}, **cp, form, &want));
    SIROCCO_ASSERT_OK((*gpu)->Forward({&gi, 1}, **gp, form, &got));
    EXPECT_LE(NormalizedError(got, want), 2e-4) << (form == AttentionForm::kExpanded ? "expanded" : "absorbed");
  }
}

}  // namespace
}  // namespace sirocco::engine
