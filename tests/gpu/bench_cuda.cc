// CUDA kernel throughput on Mistral Small 4 shapes, timed with CUDA events
// (manual time: host launch overhead between iterations is not counted, but
// each iteration's launches are).
//   * MLA decode attention: bytes of latent cache read (plus queries and
//     outputs) per second, and the fraction of the H200's 4.8 TB/s;
//   * expanded prefill attention: causal TFLOP/s;
//   * dense products through cuBLAS, float32 and bf16 (float32 accumulation):
//     TFLOP/s and the fraction of the H200's dense peak.
// Counters print as rates: "TB/s=2.1/s" reads 2.1 TB/s, "peak_frac=0.44/s"
// reads 44% of the peak.
//
// Without a device every benchmark reports the error "no CUDA device".
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
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
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_memory.h"

namespace sirocco::kernels::cuda {
namespace {

// H200 SXM datasheet numbers (dense, no sparsity).
constexpr double kPeakBytesPerSecond = 4.8e12;
constexpr double kPeakFp32FlopsPerSecond = 67e12;   // CUDA cores
constexpr double kPeakBf16FlopsPerSecond = 989e12;  // tensor cores

// Launches per timed iteration, so that microsecond kernels are not measured
// at the resolution of one event pair.
constexpr int kLaunchesPerIteration = 10;

// Device buffers filled on the device with the byte 0x3c: every float is
// 0.0115 and every bf16 0.0115 too. Throughput does not depend on the values
// (no data-dependent branches), and Google Benchmark reruns a benchmark's
// setup while it sizes the iteration count, so gigabytes of host-side random
// data would dominate the run time.
DeviceBuffer Filled(benchmark::State& state, std::size_t bytes) {
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::Allocate(bytes);
  if (!buffer.ok()) {
    state.SkipWithError(buffer.status().ToString().c_str());
    return DeviceBuffer();
  }
  const absl::Status st = FillBytes(buffer->data(), 0x3c, bytes);
  if (!st.ok()) state.SkipWithError(st.ToString().c_str());
  return std::move(*buffer);
}

// Uploads `host`; on failure marks the benchmark and returns an empty buffer.
template <typename T>
DeviceBuffer Upload(benchmark::State& state, const std::vector<T>& host) {
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::Allocate(host.size() * sizeof(T));
  if (!buffer.ok()) {
    state.SkipWithError(buffer.status().ToString().c_str());
    return DeviceBuffer();
  }
  const absl::Status st = CopyToDevice(buffer->data(), host.data(), host.size() * sizeof(T));
  if (!st.ok()) state.SkipWithError(st.ToString().c_str());
  return std::move(*buffer);
}

bool NeedDevice(benchmark::State& state) {
  if (CudaDeviceAvailable()) return true;
  state.SkipWithError("no CUDA device");
  return false;
}

// Runs `launch` (returning absl::Status) kLaunchesPerIteration times per
// iteration on the default stream and reports event time per launch.
template <typename Launch>
void TimeLaunches(benchmark::State& state, Launch launch) {
  if (state.error_occurred()) return;
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  if (cudaEventCreate(&start) != cudaSuccess || cudaEventCreate(&stop) != cudaSuccess) {
    state.SkipWithError("cudaEventCreate failed");
    return;
  }
  // Warm-up: first-launch costs (module load, cuBLAS heuristics) stay out.
  absl::Status st = launch();
  if (st.ok()) st = Synchronize(nullptr);
  if (!st.ok()) state.SkipWithError(st.ToString().c_str());
  for (auto _ : state) {
    if (state.error_occurred()) break;
    cudaEventRecord(start, nullptr);
    for (int r = 0; r < kLaunchesPerIteration && st.ok(); ++r) st = launch();
    cudaEventRecord(stop, nullptr);
    if (st.ok()) st = Synchronize(nullptr);
    if (!st.ok()) {
      state.SkipWithError(st.ToString().c_str());
      break;
    }
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, start, stop);
    state.SetIterationTime(ms * 1e-3 / kLaunchesPerIteration);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
}

void SetRate(benchmark::State& state, const char* name, double per_launch) {
  state.counters[name] = benchmark::Counter(per_launch, benchmark::Counter::kIsIterationInvariantRate);
}

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
  absl::StatusOr<std::unique_ptr<Blas>> blas = Blas::Create();
  if (!blas.ok()) {
    state.SkipWithError(blas.status().ToString().c_str());
    return;
  }
  const DeviceBuffer a = Filled(state, sizeof(float) * m * static_cast<std::size_t>(k));
  const DeviceBuffer b = Filled(state, sizeof(float) * n * static_cast<std::size_t>(k));
  absl::StatusOr<DeviceBuffer> c = DeviceBuffer::Allocate(sizeof(float) * m * static_cast<std::size_t>(n));
  if (!c.ok()) {
    state.SkipWithError(c.status().ToString().c_str());
    return;
  }
  TimeLaunches(state, [&] {
    return (*blas)->GemmNt(m, n, k, a.as<float>(), k, b.as<float>(), k, 0.0f, c->as<float>(), n, nullptr);
  });
  GemmCounters(state, m, n, k, sizeof(float), kPeakFp32FlopsPerSecond);
}

void BM_GemmBf16(benchmark::State& state) {
  if (!NeedDevice(state)) return;
  const int m = static_cast<int>(state.range(0));
  const int n = static_cast<int>(state.range(1));
  const int k = static_cast<int>(state.range(2));
  absl::StatusOr<std::unique_ptr<Blas>> blas = Blas::Create();
  if (!blas.ok()) {
    state.SkipWithError(blas.status().ToString().c_str());
    return;
  }
  const DeviceBuffer a = Filled(state, sizeof(Bf16) * m * static_cast<std::size_t>(k));
  const DeviceBuffer b = Filled(state, sizeof(Bf16) * n * static_cast<std::size_t>(k));
  absl::StatusOr<DeviceBuffer> c = DeviceBuffer::Allocate(sizeof(Bf16) * m * static_cast<std::size_t>(n));
  if (!c.ok()) {
    state.SkipWithError(c.status().ToString().c_str());
    return;
  }
  TimeLaunches(state, [&] {
    return (*blas)->GemmNtBf16(m, n, k, a.as<Bf16>(), k, b.as<Bf16>(), k, 0.0f, c->as<Bf16>(), n, nullptr);
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

}  // namespace
}  // namespace sirocco::kernels::cuda
