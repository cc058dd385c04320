#include "engine/device.h"

#include "absl/strings/str_cat.h"

namespace sirocco::engine {

const char* WeightTypeName(WeightType type) {
  switch (type) {
    case WeightType::kF32:
      return "f32";
    case WeightType::kBF16:
    case WeightType::kBF16AsF32:
      return "bf16";
    case WeightType::kFP8:
      return "fp8";
  }
  return "unknown";
}

absl::StatusOr<WeightType> ParseWeightType(std::string_view name) {
  if (name == "f32") return WeightType::kF32;
  if (name == "bf16") return WeightType::kBF16;
  if (name == "fp8") return WeightType::kFP8;
  return absl::InvalidArgumentError(
      absl::StrCat("'", absl::string_view(name.data(), name.size()), "' is not one of f32, bf16, fp8"));
}

}  // namespace sirocco::engine
