// Timing helpers shared by bench_cuda's translation units: CUDA-event timing
// of kLaunchesPerIteration launches per iteration (host launch overhead
// between iterations not counted), rates as Google Benchmark counters, and
// device buffers that mark the benchmark on failure.
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_memory.h"

namespace sirocco::kernels::cuda::bench_util {

// H200 SXM datasheet numbers (dense, no sparsity).
inline constexpr double kPeakBytesPerSecond = 4.8e12;
inline constexpr double kPeakFp32FlopsPerSecond = 67e12;   // CUDA cores
inline constexpr double kPeakBf16FlopsPerSecond = 989e12;  // tensor cores
inline constexpr double kPeakFp8FlopsPerSecond = 1979e12;  // tensor cores

// Launches per timed iteration, so that microsecond kernels are not measured
// at the resolution of one event pair.
inline constexpr int kLaunchesPerIteration = 10;

// Device buffers filled on the device with the byte `value` (0x3c: every
// float and bf16 is 0.0115, every e4m3 code 1.5). Throughput does not depend on the values
// (no data-dependent branches), and Google Benchmark reruns a benchmark's
// setup while it sizes the iteration count, so gigabytes of host-side random
// data would dominate the run time.
inline DeviceBuffer Filled(benchmark::State& state, std::size_t bytes, int value = 0x3c) {
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::Allocate(bytes);
  if (!buffer.ok()) {
    state.SkipWithError(buffer.status().ToString().c_str());
    return DeviceBuffer();
  }
  const absl::Status st = FillBytes(buffer->data(), value, bytes);
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

// The object a Create() made, or null with the benchmark marked as skipped.
template <typename T>
std::unique_ptr<T> OrSkip(benchmark::State& state, absl::StatusOr<std::unique_ptr<T>> created) {
  if (created.ok()) return *std::move(created);
  state.SkipWithError(created.status().ToString().c_str());
  return nullptr;
}

inline bool NeedDevice(benchmark::State& state) {
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

inline void SetRate(benchmark::State& state, const char* name, double per_launch) {
  state.counters[name] = benchmark::Counter(per_launch, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace sirocco::kernels::cuda::bench_util
