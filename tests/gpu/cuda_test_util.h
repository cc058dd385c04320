// Device buffers for the CUDA op tests (cuda_ops_test, cuda_sampling_test,
// cuda_fp8_test: one executable). A failed allocation or copy is recorded as
// a test failure and an empty buffer returned; the launcher then rejects the
// null pointer and the test fails there too.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/device_memory.h"

namespace sirocco::kernels::cuda::test_util {

template <typename T>
DeviceBuffer ToDevice(const std::vector<T>& host) {
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::Allocate(host.size() * sizeof(T));
  if (!buffer.ok()) {
    ADD_FAILURE() << buffer.status();
    return DeviceBuffer();
  }
  const absl::Status st = CopyToDevice(buffer->data(), host.data(), host.size() * sizeof(T));
  if (!st.ok()) ADD_FAILURE() << st;
  return std::move(*buffer);
}

// `bytes` bytes, each `value`.
inline DeviceBuffer FilledDevice(std::size_t bytes, int value) {
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::Allocate(bytes);
  if (!buffer.ok()) {
    ADD_FAILURE() << buffer.status();
    return DeviceBuffer();
  }
  const absl::Status st = FillBytes(buffer->data(), value, bytes);
  if (!st.ok()) ADD_FAILURE() << st;
  return std::move(*buffer);
}

// n elements of T, every byte 0xff (NaN as a float or bf16, -1 as an int), so
// an output element an op forgets to write shows.
template <typename T>
DeviceBuffer PoisonedDevice(std::size_t n) {
  return FilledDevice(n * sizeof(T), 0xff);
}

// Waits for the kernels just run (surfacing their errors), then copies back.
template <typename T>
std::vector<T> ToHost(const DeviceBuffer& buffer, std::size_t n) {
  std::vector<T> host(n);
  const absl::Status sync = Synchronize(nullptr);
  if (!sync.ok()) ADD_FAILURE() << sync;
  const absl::Status st = CopyToHost(host.data(), buffer.data(), n * sizeof(T));
  if (!st.ok()) ADD_FAILURE() << st;
  return host;
}

}  // namespace sirocco::kernels::cuda::test_util
