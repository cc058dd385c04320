// CUDA kernel throughput on Mistral Small 4 shapes, timed with CUDA events
// (manual time: host launch overhead between iterations is not counted, but
// each iteration's launches are).
//   * MLA decode attention: bytes of latent cache read (plus queries and
//     outputs) per second, and the fraction of the H200's 4.8 TB/s;
//   * expanded prefill attention: causal TFLOP/s;
//   * dense products through cuBLAS, float32 and bf16 (float32 accumulation):
//     TFLOP/s and the fraction of the H200's dense peak;
//   * MoE expert products grouped on the device against one cuBLAS call per
//     expert;
//   * one decode step of one real-size layer on the GPU engine at batch 1 and
//     64, against the memory-bandwidth floor.
// Counters print as rates: "TB/s=2.1/s" reads 2.1 TB/s, "peak_frac=0.44/s"
// reads 44% of the peak.
//
// Without a device every benchmark reports the error "no CUDA device".
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/cuda/cuda_device.h"
#include "engine/kv_cache.h"
#include "engine/mistral4.h"
#include "engine/model_maker.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_memory.h"
#include "tests/gpu/bench_cuda_util.h"

// Status plumbing inside benchmark helpers (no gtest here).
#define SIROCCO_BENCH_RETURN_IF_ERROR(expr)                                               \
  do {                                                                                    \
    if (::absl::Status bench_status_ = (expr); !bench_status_.ok()) return bench_status_; \
  } while (false)
#define SIROCCO_BENCH_CONCAT_INNER(a, b) a##b
#define SIROCCO_BENCH_CONCAT(a, b) SIROCCO_BENCH_CONCAT_INNER(a, b)
#define SIROCCO_BENCH_ASSIGN_OR_RETURN(lhs, expr) \
  SIROCCO_BENCH_ASSIGN_OR_RETURN_IMPL(SIROCCO_BENCH_CONCAT(bench_or_, __LINE__), lhs, expr)
#define SIROCCO_BENCH_ASSIGN_OR_RETURN_IMPL(var, lhs, expr) \
  auto var = (expr);                                        \
  if (!var.ok()) return var.status();                       \
  lhs = std::move(*var)

namespace sirocco::kernels::cuda {
namespace {

using namespace ::sirocco::kernels::cuda::bench_util;  // NOLINT: the shared timing helpers

// ---------------------------------------------------------------------------
// MLA decode: `batch` sequences of `ctx` entries each, Mistral Small 4 heads
// and widths, 64-entry blocks dealt in shuffled order.

void BM_MlaDecode(benchmark::State& state) {
  if (!NeedDevice(state)) return;
  const int batch = static_cast<int>(state.range(0));
  const int ctx = static_cast<int>(state.range(1));
  constexpr int kHeads = 32;
  constexpr int kRank = 256;
  constexpr int kRope = 64;
  constexpr int kBlock = 64;
  constexpr int kWidth = kRank + kRope;
  const int blocks_per_seq = (ctx + kBlock - 1) / kBlock;
  const int num_blocks = batch * blocks_per_seq;

  std::vector<std::int32_t> block_ids(num_blocks);
  std::iota(block_ids.begin(), block_ids.end(), 0);
  std::shuffle(block_ids.begin(), block_ids.end(), std::mt19937(7));
  const DeviceBuffer cache = Filled(state, sizeof(float) * num_blocks * kBlock * kWidth);
  const DeviceBuffer q_lat = Filled(state, sizeof(float) * batch * kHeads * kRank);
  const DeviceBuffer q_rope = Filled(state, sizeof(float) * batch * kHeads * kRope);
  const DeviceBuffer tables_flat = Upload(state, block_ids);
  std::vector<const std::int32_t*> tables(batch);
  for (int i = 0; i < batch; ++i)
    tables[i] = tables_flat.as<std::int32_t>() + static_cast<std::ptrdiff_t>(i) * blocks_per_seq;
  const DeviceBuffer table_ptrs = Upload(state, tables);
  const DeviceBuffer ctx_lens = Upload(state, std::vector<std::int32_t>(batch, ctx));
  absl::StatusOr<DeviceBuffer> out = DeviceBuffer::Allocate(sizeof(float) * batch * kHeads * kRank);
  if (!out.ok()) {
    state.SkipWithError(out.status().ToString().c_str());
    return;
  }

  MlaAttentionParams p;
  p.num_queries = batch;
  p.num_heads = kHeads;
  p.kv_rank = kRank;
  p.rope_dim = kRope;
  p.block_size = kBlock;
  p.max_ctx_len = ctx;
  p.q_lat = q_lat.as<float>();
  p.q_rope = q_rope.as<float>();
  p.cache = cache.as<float>();
  p.block_tables = table_ptrs.as<const std::int32_t*>();
  p.ctx_lens = ctx_lens.as<std::int32_t>();
  p.scale = 0.0625f;
  p.out = out->as<float>();
  absl::StatusOr<DeviceBuffer> workspace = DeviceBuffer::Allocate(MlaAttentionWorkspaceBytes(p));
  if (!workspace.ok()) {
    state.SkipWithError(workspace.status().ToString().c_str());
    return;
  }
  p.workspace = workspace->data();
  p.workspace_bytes = workspace->size();

  TimeLaunches(state, [&] { return MlaAttention(p, nullptr); });
  const double bytes = sizeof(float) * (static_cast<double>(batch) * ctx * kWidth +               // cache, read once
                                        static_cast<double>(batch) * kHeads * (kWidth + kRank));  // q, out
  const double flops = 2.0 * batch * kHeads * static_cast<double>(ctx) * (kWidth + kRank);
  SetRate(state, "TB/s", bytes * 1e-12);
  SetRate(state, "peak_frac", bytes / kPeakBytesPerSecond);
  SetRate(state, "TFLOP/s", flops * 1e-12);
  state.SetLabel("heads=32 kv_rank=256 rope=64 block=64");
}
BENCHMARK(BM_MlaDecode)
    ->ArgNames({"batch", "ctx"})
    ->Args({1, 1024})
    ->Args({1, 4096})
    ->Args({1, 32768})
    ->Args({8, 4096})
    ->Args({32, 4096})
    ->Args({64, 1024})
    ->Args({64, 4096})
    ->Args({128, 4096})
    ->Args({64, 8192})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// ---------------------------------------------------------------------------
// Expanded causal prefill attention, Mistral Small 4 heads (qk 128, v 128).

void BM_AttentionPrefill(benchmark::State& state) {
  if (!NeedDevice(state)) return;
  const int tokens = static_cast<int>(state.range(0));
  constexpr int kHeads = 32;
  constexpr int kQk = 128;
  constexpr int kV = 128;
  const std::size_t rows = static_cast<std::size_t>(tokens) * kHeads;
  const DeviceBuffer q = Filled(state, sizeof(float) * rows * kQk);
  const DeviceBuffer k = Filled(state, sizeof(float) * rows * kQk);
  const DeviceBuffer v = Filled(state, sizeof(float) * rows * kV);
  absl::StatusOr<DeviceBuffer> out = DeviceBuffer::Allocate(sizeof(float) * rows * kV);
  if (!out.ok()) {
    state.SkipWithError(out.status().ToString().c_str());
    return;
  }
  AttentionParams p;
  p.num_queries = tokens;
  p.num_keys = tokens;
  p.q_offset = 0;
  p.num_heads = kHeads;
  p.qk_dim = kQk;
  p.v_dim = kV;
  p.q = q.as<float>();
  p.k = k.as<float>();
  p.v = v.as<float>();
  p.scale = 0.088f;
  p.out = out->as<float>();
  TimeLaunches(state, [&] { return Attention(p, nullptr); });
  // Causal: query i sees i + 1 keys; QK^T and PV are 2 (qk + v) flops per pair.
  const double pairs = 0.5 * static_cast<double>(tokens) * (tokens + 1);
  const double flops = 2.0 * kHeads * pairs * (kQk + kV);
  SetRate(state, "TFLOP/s", flops * 1e-12);
  SetRate(state, "peak_frac", flops / kPeakFp32FlopsPerSecond);
}
BENCHMARK(BM_AttentionPrefill)
    ->ArgName("tokens")
    ->Arg(512)
    ->Arg(2048)
    ->Arg(4096)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// ---------------------------------------------------------------------------
// Dense products y = x W^T on model shapes: decode (m = 1, bound by reading
// W), batched projections at hidden 4096, a routed expert's 4096 <-> 2048
// products and the 131072-row LM head.

void GemmCounters(benchmark::State& state, int m, int n, int k, std::size_t elem_bytes, double peak_flops) {
  const double flops = 2.0 * m * n * static_cast<double>(k);
  const double bytes = static_cast<double>(elem_bytes) * (static_cast<double>(m) * k + static_cast<double>(n) * k) +
                       sizeof(float) * static_cast<double>(m) * n;
  SetRate(state, "TFLOP/s", flops * 1e-12);
  SetRate(state, "peak_frac", flops / peak_flops);
  SetRate(state, "TB/s", bytes * 1e-12);
}

void BM_GemmF32(benchmark::State& state) {
  if (!NeedDevice(state)) return;
  const int m = static_cast<int>(state.range(0));
  const int n = static_cast<int>(state.range(1));
  const int k = static_cast<int>(state.range(2));
  const std::unique_ptr<Blas> blas = OrSkip(state, Blas::Create());
  if (blas == nullptr) return;
  const DeviceBuffer a = Filled(state, sizeof(float) * m * static_cast<std::size_t>(k));
  const DeviceBuffer b = Filled(state, sizeof(float) * n * static_cast<std::size_t>(k));
  const DeviceBuffer c = Filled(state, sizeof(float) * m * static_cast<std::size_t>(n));
  TimeLaunches(state, [&] {
    return blas->GemmNt(m, n, k, a.as<float>(), k, b.as<float>(), k, 0.0f, c.as<float>(), n, nullptr);
  });
  GemmCounters(state, m, n, k, sizeof(float), kPeakFp32FlopsPerSecond);
}

void BM_GemmBf16(benchmark::State& state) {
  if (!NeedDevice(state)) return;
  const int m = static_cast<int>(state.range(0));
  const int n = static_cast<int>(state.range(1));
  const int k = static_cast<int>(state.range(2));
  const std::unique_ptr<Blas> blas = OrSkip(state, Blas::Create());
  if (blas == nullptr) return;
  const DeviceBuffer a = Filled(state, sizeof(Bf16) * m * static_cast<std::size_t>(k));
  const DeviceBuffer b = Filled(state, sizeof(Bf16) * n * static_cast<std::size_t>(k));
  const DeviceBuffer c = Filled(state, sizeof(Bf16) * m * static_cast<std::size_t>(n));
  TimeLaunches(state, [&] {
    return blas->GemmNtBf16(m, n, k, a.as<Bf16>(), k, b.as<Bf16>(), k, 0.0f, c.as<Bf16>(), n, nullptr);
  });
  GemmCounters(state, m, n, k, sizeof(Bf16), kPeakBf16FlopsPerSecond);
}

void GemmShapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "n", "k"});
  for (int m : {1, 64, 512, 4096}) b->Args({m, 4096, 4096});  // o_proj-like square projection
  for (int m : {1, 64, 512}) {
    b->Args({m, 2048, 4096});  // expert gate/up (each)
    b->Args({m, 4096, 2048});  // expert down
  }
  b->Args({1, 131072, 4096});   // LM head, decode
  b->Args({64, 131072, 4096});  // LM head, batch 64
}
BENCHMARK(BM_GemmF32)->Apply(GemmShapes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GemmBf16)->Apply(GemmShapes)->UseManualTime()->Unit(benchmark::kMicrosecond);

// ---------------------------------------------------------------------------
// MoE expert products: `tokens` tokens routed top-4 over 128 experts (each
// assignment to a uniformly drawn expert, fixed seed), Mistral Small 4's
// gate_up (4096 -> 2 x 2048) and down (2048 -> 4096) shapes. GroupedGemmNt
// reads the grouping on the device; the baseline issues one cuBLAS Sgemm per
// non-empty expert from host-known counts (what a host round trip per layer
// would allow), on the same data in the same run. TB/s counts the weights of
// the experts that have rows (each read at least once) plus activations.

struct ExpertCase {
  std::vector<std::int32_t> offsets;  // [129]
  int rows = 0;
  int used = 0;  // experts with at least one row
};

ExpertCase MakeExpertCase(int tokens) {
  constexpr int kExperts = 128;
  std::mt19937 rng(5u);
  std::uniform_int_distribution<int> pick(0, kExperts - 1);
  std::vector<std::int32_t> counts(kExperts, 0);
  for (int i = 0; i < tokens * 4; ++i) ++counts[static_cast<std::size_t>(pick(rng))];
  ExpertCase c;
  c.offsets.assign(kExperts + 1, 0);
  for (int e = 0; e < kExperts; ++e) {
    c.offsets[static_cast<std::size_t>(e) + 1] =
        c.offsets[static_cast<std::size_t>(e)] + counts[static_cast<std::size_t>(e)];
    c.used += counts[static_cast<std::size_t>(e)] > 0 ? 1 : 0;
  }
  c.rows = c.offsets.back();
  return c;
}

void ExpertCounters(benchmark::State& state, const ExpertCase& c, int n, int k) {
  const double flops = 2.0 * c.rows * static_cast<double>(n) * k;
  const double bytes = sizeof(float) * (static_cast<double>(c.used) * n * k + static_cast<double>(c.rows) * (n + k));
  SetRate(state, "TFLOP/s", flops * 1e-12);
  SetRate(state, "peak_frac", flops / kPeakFp32FlopsPerSecond);
  SetRate(state, "TB/s", bytes * 1e-12);
}

void BM_ExpertsGrouped(benchmark::State& state) {
  if (!NeedDevice(state)) return;
  const int tokens = static_cast<int>(state.range(0));
  const int n = static_cast<int>(state.range(1));
  const int k = static_cast<int>(state.range(2));
  const ExpertCase c = MakeExpertCase(tokens);
  const DeviceBuffer a = Filled(state, sizeof(float) * c.rows * static_cast<std::size_t>(k));
  const DeviceBuffer w = Filled(state, sizeof(float) * 128 * static_cast<std::size_t>(n) * k);
  const DeviceBuffer out = Filled(state, sizeof(float) * c.rows * static_cast<std::size_t>(n));
  const DeviceBuffer offsets = Upload(state, c.offsets);
  GroupedGemmParams p;
  p.num_groups = 128;
  p.rows = c.rows;
  p.n = n;
  p.k = k;
  p.a = a.as<float>();
  p.lda = k;
  p.offsets = offsets.as<std::int32_t>();
  p.w = w.as<float>();
  p.ldw = k;
  p.w_stride = static_cast<std::int64_t>(n) * k;
  p.c = out.as<float>();
  p.ldc = n;
  TimeLaunches(state, [&] { return GroupedGemmNt(p, nullptr); });
  ExpertCounters(state, c, n, k);
}

void BM_ExpertsCublasPerExpert(benchmark::State& state) {
  if (!NeedDevice(state)) return;
  const int tokens = static_cast<int>(state.range(0));
  const int n = static_cast<int>(state.range(1));
  const int k = static_cast<int>(state.range(2));
  const ExpertCase c = MakeExpertCase(tokens);
  const std::unique_ptr<Blas> blas = OrSkip(state, Blas::Create());
  if (blas == nullptr) return;
  const DeviceBuffer a = Filled(state, sizeof(float) * c.rows * static_cast<std::size_t>(k));
  const DeviceBuffer w = Filled(state, sizeof(float) * 128 * static_cast<std::size_t>(n) * k);
  const DeviceBuffer out = Filled(state, sizeof(float) * c.rows * static_cast<std::size_t>(n));
  TimeLaunches(state, [&] {
    for (int e = 0; e < 128; ++e) {
      const int begin = c.offsets[static_cast<std::size_t>(e)];
      const int count = c.offsets[static_cast<std::size_t>(e) + 1] - begin;
      if (count == 0) continue;
      SIROCCO_BENCH_RETURN_IF_ERROR(blas->GemmNt(count, n, k, a.as<float>() + static_cast<std::size_t>(begin) * k, k,
                                                    w.as<float>() + static_cast<std::size_t>(e) * n * k, k, 0.0f,
                                                    out.as<float>() + static_cast<std::size_t>(begin) * n, n, nullptr));
    }
    return absl::OkStatus();
  });
  ExpertCounters(state, c, n, k);
}

// The same on FP8 weights (e4m3 codes with 128 x 128 block scales, widened in
// the kernel): a quarter of the float32 weight bytes.
void BM_ExpertsGroupedFp8(benchmark::State& state) {
  if (!NeedDevice(state)) return;
  const int tokens = static_cast<int>(state.range(0));
  const int n = static_cast<int>(state.range(1));
  const int k = static_cast<int>(state.range(2));
  const ExpertCase c = MakeExpertCase(tokens);
  const std::int64_t scale_stride = static_cast<std::int64_t>((n + 127) / 128) * ((k + 127) / 128);
  const DeviceBuffer a = Filled(state, sizeof(float) * c.rows * static_cast<std::size_t>(k));
  const DeviceBuffer w = Filled(state, 128 * static_cast<std::size_t>(n) * k);
  const DeviceBuffer scales = Filled(state, sizeof(float) * 128 * static_cast<std::size_t>(scale_stride));
  const DeviceBuffer out = Filled(state, sizeof(float) * c.rows * static_cast<std::size_t>(n));
  const DeviceBuffer offsets = Upload(state, c.offsets);
  GroupedGemmParams p;
  p.num_groups = 128;
  p.rows = c.rows;
  p.n = n;
  p.k = k;
  p.a = a.as<float>();
  p.lda = k;
  p.offsets = offsets.as<std::int32_t>();
  p.w_fp8 = w.as<std::uint8_t>();
  p.w_scales = scales.as<float>();
  p.w_scale_stride = scale_stride;
  p.ldw = k;
  p.w_stride = static_cast<std::int64_t>(n) * k;
  p.c = out.as<float>();
  p.ldc = n;
  TimeLaunches(state, [&] { return GroupedGemmNt(p, nullptr); });
  const double flops = 2.0 * c.rows * static_cast<double>(n) * k;
  const double bytes = static_cast<double>(c.used) * n * k + sizeof(float) * static_cast<double>(c.rows) * (n + k);
  SetRate(state, "TFLOP/s", flops * 1e-12);
  SetRate(state, "peak_frac", flops / kPeakFp32FlopsPerSecond);
  SetRate(state, "TB/s", bytes * 1e-12);
}

void ExpertShapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"tokens", "n", "k"});
  for (int tokens : {1, 16, 64, 512}) {
    b->Args({tokens, 4096, 4096});  // gate_up, fused
    b->Args({tokens, 4096, 2048});  // down
  }
}
BENCHMARK(BM_ExpertsGrouped)->Apply(ExpertShapes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ExpertsCublasPerExpert)->Apply(ExpertShapes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ExpertsGroupedFp8)->Apply(ExpertShapes)->UseManualTime()->Unit(benchmark::kMicrosecond);

// ---------------------------------------------------------------------------
// One decode step of one real-size layer on the GPU engine: Mistral Small 4's
// dimensions with one MoE layer (first_k_dense_replace 0) and a 1024-token
// vocabulary (so the LM head does not dominate), float32 or bf16 weights, `batch`
// sequences each with 1024 cached tokens. Wall time of Mistral4Model::Forward,
// host work and the logits copy included: what a decode worker's step costs
// per layer. The floor is the bytes the step must read at 4.8 TB/s: every
// non-expert weight, the shared expert, the experts the batch routes to
// (4 at batch 1; the expected number of distinct experts for uniform routing,
// 128 (1 - (124/128)^batch), above) and the batch's KV cache.

struct DecodeLayerFixture {
  std::unique_ptr<engine::Mistral4Model> model;
  std::unique_ptr<engine::KvPool> pool;
  double fixed_bytes = 0;   // weights read whatever the routing
  double expert_bytes = 0;  // one routed expert
};

engine::Matrix Constant(std::int64_t rows, std::int64_t cols, float v) {
  engine::Matrix m;
  m.rows = rows;
  m.cols = cols;
  m.data.assign(static_cast<std::size_t>(rows * cols), v);
  return m;
}

absl::StatusOr<DecodeLayerFixture*> BuildDecodeLayer(engine::WeightType weight_type) {
  SIROCCO_BENCH_ASSIGN_OR_RETURN(engine::ModelConfig c, engine::PresetConfig("mistral-small-4"));
  c.num_hidden_layers = 1;
  c.first_k_dense_replace = 0;
  c.vocab_size = 1024;
  const std::int64_t H = c.hidden_size, heads = c.num_attention_heads, qk = c.qk_head_dim();
  const std::int64_t R = c.kv_lora_rank, E = c.kv_entry_dim(), I2 = c.moe_intermediate_size;
  auto w = std::make_unique<engine::Mistral4Weights>();
  std::mt19937 rng(1u);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // Random embeddings and router, so that tokens differ and routing spreads;
  // every other weight is a small constant (timing does not depend on it).
  w->embed = Constant(c.vocab_size, H, 0.0f);
  for (float& v : w->embed.data) v = normal(rng);
  w->final_norm.assign(static_cast<std::size_t>(H), 1.0f);
  w->lm_head = Constant(c.vocab_size, H, 0.001f);
  engine::LayerWeights& l = w->layers.emplace_back();
  l.input_norm.assign(static_cast<std::size_t>(H), 1.0f);
  l.post_norm.assign(static_cast<std::size_t>(H), 1.0f);
  l.attn.q_a_proj = Constant(c.q_lora_rank, H, 0.001f);
  l.attn.q_a_norm.assign(static_cast<std::size_t>(c.q_lora_rank), 1.0f);
  l.attn.q_b_proj = Constant(heads * qk, c.q_lora_rank, 0.001f);
  l.attn.kv_a_proj = Constant(E, H, 0.001f);
  l.attn.kv_a_norm.assign(static_cast<std::size_t>(R), 1.0f);
  l.attn.kv_b_proj = Constant(heads * (c.qk_nope_head_dim + c.v_head_dim), R, 0.001f);
  l.attn.o_proj = Constant(H, heads * c.v_head_dim, 0.001f);
  l.is_moe = true;
  l.moe.router = Constant(c.n_routed_experts, H, 0.0f);
  for (float& v : l.moe.router.data) v = normal(rng);
  l.moe.gate_up.assign(static_cast<std::size_t>(c.n_routed_experts * 2 * I2 * H), 0.001f);
  l.moe.down.assign(static_cast<std::size_t>(c.n_routed_experts * H * I2), 0.001f);
  const std::int64_t shared_inter = I2 * c.n_shared_experts;
  l.moe.shared.gate = Constant(shared_inter, H, 0.001f);
  l.moe.shared.up = Constant(shared_inter, H, 0.001f);
  l.moe.shared.down = Constant(H, shared_inter, 0.001f);

  auto fixture = std::make_unique<DecodeLayerFixture>();
  // Bytes a step reads per parameter: linear layers and experts take the
  // weight type (FP8: a code plus a float32 scale per 128 x 128 block);
  // the LM head is bf16 and kv_b_proj float32 under FP8; the router stays float32.
  const bool fp8 = weight_type == engine::WeightType::kFP8;
  const double linear = fp8 ? 1.0 + 4.0 / (128.0 * 128.0) : weight_type == engine::WeightType::kBF16 ? 2.0 : 4.0;
  const double head = fp8 ? 2.0 : linear, kv_b = fp8 ? 4.0 : linear;
  fixture->fixed_bytes =
      linear * static_cast<double>(l.attn.q_a_proj.data.size() + l.attn.q_b_proj.data.size() +
                                   l.attn.kv_a_proj.data.size() + l.attn.o_proj.data.size() +
                                   3 * l.moe.shared.gate.data.size()) +
      head * static_cast<double>(w->lm_head.data.size()) + kv_b * static_cast<double>(l.attn.kv_b_proj.data.size()) +
      sizeof(float) * static_cast<double>(l.moe.router.data.size());
  fixture->expert_bytes = linear * 3.0 * static_cast<double>(I2 * H);
  SIROCCO_BENCH_ASSIGN_OR_RETURN(std::unique_ptr<engine::Device> device, engine::cuda::MakeCudaDevice());
  SIROCCO_BENCH_ASSIGN_OR_RETURN(
      fixture->model, engine::Mistral4Model::FromWeights(c, std::move(w),
                                                         engine::ModelOptions{.backend = kernels::Backend::kRef,
                                                                              .device = std::move(device),
                                                                              .weight_type = weight_type}));
  // 64 sequences x 1024 tokens in 64-entry blocks, plus room for the step.
  SIROCCO_BENCH_ASSIGN_OR_RETURN(
      fixture->pool, engine::KvPool::Create(fixture->model->PoolOptions(64 * 17, 64), fixture->model->device()));
  return fixture.release();
}

// One model per weight type, built on first use and kept for the process.
absl::StatusOr<DecodeLayerFixture*> DecodeLayer(engine::WeightType weight_type) {
  static absl::StatusOr<DecodeLayerFixture*> slots[3] = {
      absl::UnavailableError("not built"), absl::UnavailableError("not built"), absl::UnavailableError("not built")};
  static bool built[3] = {false, false, false};
  const int i = weight_type == engine::WeightType::kFP8 ? 2 : weight_type == engine::WeightType::kBF16 ? 1 : 0;
  if (!built[i]) {
    built[i] = true;
    slots[i] = BuildDecodeLayer(weight_type);
  }
  return slots[i];
}

void BM_DecodeLayer(benchmark::State& state) {
  if (!NeedDevice(state)) return;
  const int batch = static_cast<int>(state.range(0));
  const engine::WeightType weight_type = state.range(1) == 8    ? engine::WeightType::kFP8
                                         : state.range(1) == 16 ? engine::WeightType::kBF16
                                                                : engine::WeightType::kF32;
  constexpr std::int64_t kContext = 1024;
  absl::StatusOr<DecodeLayerFixture*> f = DecodeLayer(weight_type);
  if (!f.ok()) {
    state.SkipWithError(f.status().ToString().c_str());
    return;
  }
  engine::Mistral4Model& model = *(*f)->model;
  std::vector<engine::BlockTable> tables;
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(batch));
  std::vector<engine::ForwardItem> items;
  tables.reserve(static_cast<std::size_t>(batch));
  for (int i = 0; i < batch; ++i) {
    tables.emplace_back((*f)->pool.get());
    if (absl::Status st = tables.back().Reserve(kContext + 1); !st.ok()) {
      state.SkipWithError(st.ToString().c_str());
      return;
    }
    tokens[static_cast<std::size_t>(i)] = (i * 37) % 1024;
  }
  for (int i = 0; i < batch; ++i) {
    items.push_back({std::span<const std::int32_t>(tokens).subspan(static_cast<std::size_t>(i), 1), kContext,
                     &tables[static_cast<std::size_t>(i)], false});
  }
  std::vector<float> logits;
  for (auto _ : state) {
    const absl::Status st = model.Forward(items, *(*f)->pool, engine::AttentionForm::kAbsorbed, &logits);
    if (!st.ok()) {
      state.SkipWithError(st.ToString().c_str());
      break;
    }
  }
  const double experts = batch == 1 ? 4.0 : 128.0 * (1.0 - std::pow(124.0 / 128.0, batch));
  const double kv_bytes =
      sizeof(float) * static_cast<double>(batch) * (kContext + 1) * static_cast<double>(model.config().kv_entry_dim());
  const double bytes = (*f)->fixed_bytes + experts * (*f)->expert_bytes + kv_bytes;
  SetRate(state, "TB/s", bytes * 1e-12);
  SetRate(state, "peak_frac", bytes / kPeakBytesPerSecond);
}
BENCHMARK(BM_DecodeLayer)
    ->ArgNames({"batch", "weight_bits"})
    ->Args({1, 16})
    ->Args({64, 16})
    ->Args({1, 8})
    ->Args({64, 8})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace
}  // namespace sirocco::kernels::cuda
