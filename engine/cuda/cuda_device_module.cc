// The entry point of the loadable CUDA device module (see CMakeLists.txt and
// engine/device_loader.h). Programs built with the same compiler and standard
// library load it, so C++ types cross the boundary as they are.
#include <memory>
#include <string>

#include "engine/cuda/cuda_device.h"
#include "engine/device_loader.h"

extern "C" __attribute__((visibility("default"))) sirocco::engine::Device* SIROCCO_CUDA_DEVICE_ENTRY(
    std::string* error) {
  absl::StatusOr<std::unique_ptr<sirocco::engine::Device>> device = sirocco::engine::cuda::MakeCudaDevice();
  if (!device.ok()) {
    *error = std::string(device.status().message());
    return nullptr;
  }
  return device->release();
}
