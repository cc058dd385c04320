// Opening the CUDA device at run time. The device lives in a loadable module
// (engine/cuda/CMakeLists.txt explains why), found, in this order, at
//   * $SIROCCO_CUDA_DEVICE_MODULE, when set;
//   * the path the build wrote it to, in builds with the CUDA backend;
//   * libsirocco_cuda_device.so on the dynamic loader's search path.
// The module stays loaded for the life of the process.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/device.h"

// The module's factory: returns a new device, or null with *error set.
#define SIROCCO_CUDA_DEVICE_ENTRY SiroccoMakeCudaDevice

namespace sirocco::engine {

// The current GPU as a Device. FAILED_PRECONDITION when the module cannot be
// found or opened, or when it finds no usable GPU.
absl::StatusOr<std::unique_ptr<Device>> LoadCudaDevice();

}  // namespace sirocco::engine
