// The CUDA device: the engine's Device on one GPU (engine/device.h). Memory is
// cudaMalloc'd, weights are copied once at model load, and every op is
// enqueued on the device's own stream with no host synchronisation: a
// Forward step waits only at its end, when the logits come back.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "engine/device.h"

namespace sirocco::engine::cuda {

// Whether a CUDA device can be used here (a driver and at least one GPU).
bool Available();

// A device on the current GPU with its own stream and cuBLAS handle.
// FAILED_PRECONDITION without a usable GPU.
absl::StatusOr<std::unique_ptr<Device>> MakeCudaDevice();

}  // namespace sirocco::engine::cuda
