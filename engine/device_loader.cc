#include "engine/device_loader.h"

#include <dlfcn.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace sirocco::engine {
namespace {

#define SIROCCO_STRINGIFY_INNER(x) #x
#define SIROCCO_STRINGIFY(x) SIROCCO_STRINGIFY_INNER(x)

using Entry = Device* (*)(std::string* error);

}  // namespace

absl::StatusOr<std::unique_ptr<Device>> LoadCudaDevice() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("SIROCCO_CUDA_DEVICE_MODULE"); env != nullptr && *env != '\0') {
    candidates.emplace_back(env);
  }
#ifdef SIROCCO_CUDA_DEVICE_MODULE_PATH
  candidates.emplace_back(SIROCCO_CUDA_DEVICE_MODULE_PATH);
#endif
  candidates.emplace_back("libsirocco_cuda_device.so");
  std::string errors;
  for (const std::string& path : candidates) {
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* why = dlerror();
      absl::StrAppend(&errors, errors.empty() ? "" : "; ", why != nullptr ? why : path);
      continue;
    }
    auto entry = reinterpret_cast<Entry>(dlsym(handle, SIROCCO_STRINGIFY(SIROCCO_CUDA_DEVICE_ENTRY)));
    if (entry == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat(path, " is not a Sirocco CUDA device module"));
    }
    std::string error;
    Device* device = entry(&error);
    if (device == nullptr) return absl::FailedPreconditionError(absl::StrCat("CUDA device: ", error));
    return std::unique_ptr<Device>(device);
  }
  return absl::FailedPreconditionError(
      absl::StrCat("the CUDA device module is not available (this build has no CUDA backend, or set "
                   "SIROCCO_CUDA_DEVICE_MODULE): ",
                   errors));
}

}  // namespace sirocco::engine
