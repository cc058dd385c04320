// Plain device allocations and copies for callers that include no CUDA
// headers (tests, benchmarks, later the engine's weight and KV pool setup).
// Every function is thread-safe; a DeviceBuffer is owned by one thread at a time.
#pragma once

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_kernels.h"

namespace sirocco::kernels::cuda {

// Owns one cudaMalloc allocation; move-only, freed on destruction.
class DeviceBuffer {
 public:
  // A zero-byte buffer holds no allocation and data() is null.
  [[nodiscard]] static absl::StatusOr<DeviceBuffer> Allocate(std::size_t bytes);

  DeviceBuffer() = default;
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  std::size_t size() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  DeviceBuffer(void* data, std::size_t bytes) : data_(data), bytes_(bytes) {}

  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

// Synchronous copies (they wait for prior work on the default stream).
[[nodiscard]] absl::Status CopyToDevice(void* dst, const void* src, std::size_t bytes);
[[nodiscard]] absl::Status CopyToHost(void* dst, const void* src, std::size_t bytes);
// Sets `bytes` bytes of device memory to `value`, synchronously.
[[nodiscard]] absl::Status FillBytes(void* dst, int value, std::size_t bytes);
// Asynchronous copies on `stream`. For CopyToDeviceAsync from pageable host
// memory the source may be reused once the call returns (CUDA stages it); for
// CopyToHostAsync the destination is valid after Synchronize(stream).
[[nodiscard]] absl::Status CopyToDeviceAsync(void* dst, const void* src, std::size_t bytes, Stream stream);
[[nodiscard]] absl::Status CopyToHostAsync(void* dst, const void* src, std::size_t bytes, Stream stream);

// Owns one non-blocking CUDA stream; move-only.
class StreamHandle {
 public:
  [[nodiscard]] static absl::StatusOr<StreamHandle> Create();
  StreamHandle() = default;
  ~StreamHandle();
  StreamHandle(StreamHandle&& other) noexcept;
  StreamHandle& operator=(StreamHandle&& other) noexcept;
  StreamHandle(const StreamHandle&) = delete;
  StreamHandle& operator=(const StreamHandle&) = delete;

  Stream get() const { return stream_; }

 private:
  explicit StreamHandle(Stream stream) : stream_(stream) {}
  Stream stream_ = nullptr;
};

// Waits for `stream`; returns the first error a kernel on it raised.
[[nodiscard]] absl::Status Synchronize(Stream stream);

}  // namespace sirocco::kernels::cuda
