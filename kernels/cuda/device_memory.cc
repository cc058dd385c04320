#include "kernels/cuda/device_memory.h"

#include <cuda_runtime.h>

#include <utility>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"

namespace sirocco::kernels::cuda {

using internal::CudaStatus;

bool CudaDeviceAvailable() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  // Without a driver this is cudaErrorInsufficientDriver or
  // cudaErrorNoDevice; clear it so that it is not reported by a later,
  // unrelated cudaGetLastError.
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return count > 0;
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(std::size_t bytes) {
  if (bytes == 0) return DeviceBuffer();
  void* data = nullptr;
  const absl::Status st = CudaStatus(cudaMalloc(&data, bytes), "cudaMalloc");
  if (!st.ok()) return st;
  return DeviceBuffer(data, bytes);
}

DeviceBuffer::~DeviceBuffer() {
  // cudaFree synchronises the device; errors here (a dead context at exit)
  // have nobody to report to.
  if (data_ != nullptr) (void)cudaFree(data_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) (void)cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

absl::Status CopyToDevice(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy(host to device)");
}

absl::Status CopyToHost(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy(device to host)");
}

absl::Status FillBytes(void* dst, int value, std::size_t bytes) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemset(dst, value, bytes), "cudaMemset");
}

absl::Status CopyToDeviceAsync(void* dst, const void* src, std::size_t bytes, Stream stream) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream),
                    "cudaMemcpyAsync(host to device)");
}

absl::Status CopyToHostAsync(void* dst, const void* src, std::size_t bytes, Stream stream) {
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream),
                    "cudaMemcpyAsync(device to host)");
}

absl::StatusOr<StreamHandle> StreamHandle::Create() {
  cudaStream_t stream = nullptr;
  const absl::Status st = CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  if (!st.ok()) return st;
  return StreamHandle(stream);
}

StreamHandle::~StreamHandle() {
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
}

StreamHandle::StreamHandle(StreamHandle&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}

StreamHandle& StreamHandle::operator=(StreamHandle&& other) noexcept {
  if (this != &other) {
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

absl::Status Synchronize(Stream stream) { return CudaStatus(cudaStreamSynchronize(stream), "cudaStreamSynchronize"); }

}  // namespace sirocco::kernels::cuda
