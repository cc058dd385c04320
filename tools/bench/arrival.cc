#include "tools/bench/arrival.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace sirocco::bench {

absl::StatusOr<ArrivalKind> ParseArrivalKind(const std::string& name) {
  if (name == "constant") return ArrivalKind::kConstant;
  if (name == "poisson") return ArrivalKind::kPoisson;
  if (name == "gamma") return ArrivalKind::kGamma;
  return absl::InvalidArgumentError(absl::StrCat("arrival '", name, "' is not one of constant, poisson, gamma"));
}

const char* ArrivalKindName(ArrivalKind kind) {
  switch (kind) {
    case ArrivalKind::kConstant:
      return "constant";
    case ArrivalKind::kPoisson:
      return "poisson";
    case ArrivalKind::kGamma:
      return "gamma";
  }
  return "?";
}

absl::Status ArrivalOptions::Validate() const {
  if (!(rate > 0)) return absl::InvalidArgumentError(absl::StrCat("rate: ", rate, " is not > 0"));
  if (!(burstiness > 0) || !std::isfinite(burstiness))
    return absl::InvalidArgumentError(absl::StrCat("burstiness: ", burstiness, " is not a finite number > 0"));
  return absl::OkStatus();
}

absl::StatusOr<ArrivalProcess> ArrivalProcess::Create(const ArrivalOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  return ArrivalProcess(options);
}

ArrivalProcess::ArrivalProcess(const ArrivalOptions& options)
    : options_(options),
      rng_(options.seed),
      // Unused unless rate is finite; guard the parameters so construction
      // never sees infinity.
      gamma_(options.burstiness, std::isfinite(options.rate) ? 1.0 / (options.rate * options.burstiness) : 1.0),
      exponential_(std::isfinite(options.rate) ? options.rate : 1.0) {}

double ArrivalProcess::NextGapSeconds() {
  if (std::isinf(options_.rate)) return 0.0;
  switch (options_.kind) {
    case ArrivalKind::kConstant:
      return 1.0 / options_.rate;
    case ArrivalKind::kPoisson:
      return exponential_(rng_);
    case ArrivalKind::kGamma:
      return gamma_(rng_);
  }
  return 0.0;
}

}  // namespace sirocco::bench
