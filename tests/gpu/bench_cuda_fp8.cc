// FP8 products (kernels/cuda/blas_lt.h) against the bf16 cuBLAS product on
// the same shapes, and the activation quantiser that precedes them. Part of
// bench_cuda (see bench_cuda.cc for the timing conventions: CUDA events,
// kLaunchesPerIteration launches per timed iteration, counters as rates).
//   * FP8 per-tensor and block-scaled (1x128 activations, 128x128 weights)
//     products, bf16 output: TFLOP/s and the fraction of the H200's dense
//     FP8 peak; the bf16 GemmNtBf16 on the same shapes, against the bf16 peak.
//     TB/s counts operand and output bytes once, the decode-time bound.
//   * QuantizeFp8Groups128 on [m, 4096] float32 activations: TB/s.
// Shapes: m = 1, 64 and 4096 tokens against a 4096 x 4096 projection and a
// routed expert's 4096 -> 2048 (gate or up) and 2048 -> 4096 (down).
// Block scaling needs m % 4 == 0, so m = 1 runs padded to 4 rows, as the
// engine must run a decode step; the counters count the one useful row.
//
// Without a device every benchmark reports "no CUDA device"; below compute
// capability 9.0 the FP8 products report that instead.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/blas_lt.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_memory.h"
#include "tests/gpu/bench_cuda_util.h"

namespace sirocco::kernels::cuda {
namespace {

using namespace ::sirocco::kernels::cuda::bench_util;  // NOLINT: the shared timing helpers


// Useful work of an m x n x k product with `elem_bytes` operands and a bf16
// output.
void GemmCounters(benchmark::State& state, int m, int n, int k, std::size_t elem_bytes, double peak_flops) {
  const double flops = 2.0 * m * n * static_cast<double>(k);
  const double bytes = static_cast<double>(elem_bytes) * (static_cast<double>(m) * k + static_cast<double>(n) * k) +
                       sizeof(Bf16) * static_cast<double>(m) * n;
  SetRate(state, "TFLOP/s", flops * 1e-12);
  SetRate(state, "peak_frac", flops / peak_flops);
  SetRate(state, "TB/s", bytes * 1e-12);
}

void BM_GemmFp8(benchmark::State& state, Fp8Scaling scaling) {
  if (!NeedDevice(state)) return;
  const int m = static_cast<int>(state.range(0));
  const int n = static_cast<int>(state.range(1));
  const int k = static_cast<int>(state.range(2));
  const std::unique_ptr<BlasLt> blas = OrSkip(state, BlasLt::Create());
  if (blas == nullptr) return;
  if (scaling == Fp8Scaling::kBlock ? !blas->SupportsBlockScaling() : !blas->SupportsFp8()) {
    state.SkipWithError("this FP8 product needs compute capability 9.x");
    return;
  }
  const int m_run = scaling == Fp8Scaling::kBlock ? (m + 3) / 4 * 4 : m;
  const int groups = (k + kFp8BlockSize - 1) / kFp8BlockSize;
  const std::size_t a_scales = scaling == Fp8Scaling::kBlock ? static_cast<std::size_t>(groups) * m_run : 1;
  const std::size_t b_scales =
      scaling == Fp8Scaling::kBlock
          ? static_cast<std::size_t>((n + kFp8BlockSize - 1) / kFp8BlockSize) * Fp8BlockScaleLd(k)
          : 1;
  const DeviceBuffer a = Filled(state, static_cast<std::size_t>(m_run) * k);
  const DeviceBuffer b = Filled(state, static_cast<std::size_t>(n) * k);
  const DeviceBuffer a_scale = Filled(state, sizeof(float) * a_scales);
  const DeviceBuffer b_scale = Filled(state, sizeof(float) * b_scales);
  const DeviceBuffer c = Filled(state, sizeof(Bf16) * m_run * static_cast<std::size_t>(n));
  if (state.error_occurred()) return;
  Fp8GemmParams p;
  p.m = m_run;
  p.n = n;
  p.k = k;
  p.a = a.as<Fp8E4M3>();
  p.lda = k;
  p.b = b.as<Fp8E4M3>();
  p.ldb = k;
  p.scaling = scaling;
  p.a_scale = a_scale.as<float>();
  p.b_scale = b_scale.as<float>();
  TimeLaunches(state, [&] { return blas->GemmNtFp8(p, c.as<Bf16>(), n, nullptr); });
  GemmCounters(state, m, n, k, 1, kPeakFp8FlopsPerSecond);
}

void BM_GemmFp8PerTensor(benchmark::State& state) { BM_GemmFp8(state, Fp8Scaling::kPerTensor); }
void BM_GemmFp8Block(benchmark::State& state) { BM_GemmFp8(state, Fp8Scaling::kBlock); }

// The bf16 product of cuda_kernels.h on the FP8 shapes, for the comparison.
void BM_GemmBf16OnFp8Shapes(benchmark::State& state) {
  if (!NeedDevice(state)) return;
  const int m = static_cast<int>(state.range(0));
  const int n = static_cast<int>(state.range(1));
  const int k = static_cast<int>(state.range(2));
  const std::unique_ptr<Blas> blas = OrSkip(state, Blas::Create());
  if (blas == nullptr) return;
  const DeviceBuffer a = Filled(state, sizeof(Bf16) * m * static_cast<std::size_t>(k));
  const DeviceBuffer b = Filled(state, sizeof(Bf16) * n * static_cast<std::size_t>(k));
  const DeviceBuffer c = Filled(state, sizeof(Bf16) * m * static_cast<std::size_t>(n));
  if (state.error_occurred()) return;
  TimeLaunches(state, [&] {
    return blas->GemmNtBf16(m, n, k, a.as<Bf16>(), k, b.as<Bf16>(), k, 0.0f, c.as<Bf16>(), n, nullptr);
  });
  GemmCounters(state, m, n, k, sizeof(Bf16), kPeakBf16FlopsPerSecond);
}

void Fp8Shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "n", "k"});
  for (int m : {1, 64, 4096}) {
    b->Args({m, 4096, 4096});  // o_proj-like square projection
    b->Args({m, 2048, 4096});  // expert gate or up
    b->Args({m, 4096, 2048});  // expert down
  }
}
BENCHMARK(BM_GemmFp8PerTensor)->Apply(Fp8Shapes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GemmFp8Block)->Apply(Fp8Shapes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GemmBf16OnFp8Shapes)->Apply(Fp8Shapes)->UseManualTime()->Unit(benchmark::kMicrosecond);

// float32 [m, 4096] -> e4m3 codes plus [32, m] scales: one read of 4 bytes and
// one write of 1 byte per element (the scales are 1/128 of that).
void BM_QuantizeFp8Groups128(benchmark::State& state) {
  if (!NeedDevice(state)) return;
  const int m = static_cast<int>(state.range(0));
  constexpr int k = 4096;
  const DeviceBuffer x = Filled(state, sizeof(float) * m * static_cast<std::size_t>(k));
  const DeviceBuffer q = Filled(state, static_cast<std::size_t>(m) * k);
  const DeviceBuffer scales = Filled(state, sizeof(float) * m * static_cast<std::size_t>(k / kFp8BlockSize));
  if (state.error_occurred()) return;
  TimeLaunches(state, [&] {
    return QuantizeFp8Groups128(m, k, x.as<float>(), k, q.as<Fp8E4M3>(), k, scales.as<float>(), nullptr);
  });
  const double bytes = static_cast<double>(m) * k * (sizeof(float) + 1.0 + sizeof(float) / kFp8BlockSize);
  SetRate(state, "TB/s", bytes * 1e-12);
  SetRate(state, "peak_frac", bytes / kPeakBytesPerSecond);
}
BENCHMARK(BM_QuantizeFp8Groups128)
    ->ArgName("m")
    ->Arg(1)
    ->Arg(64)
    ->Arg(4096)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace sirocco::kernels::cuda
