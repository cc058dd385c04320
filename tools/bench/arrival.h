// Arrival processes of the open-loop load generator: the gaps between
// successive request send times.
//
//   constant  every gap is 1/rate (coefficient of variation 0)
//   poisson   exponential gaps with mean 1/rate (CV 1)
//   gamma     gamma gaps, shape = burstiness, scale = 1/(rate * burstiness)
//             (vLLM bench serve's definition): mean 1/rate, CV
//             1/sqrt(burstiness). Burstiness 1 is Poisson; below 1 burstier,
//             above 1 more regular.
// A rate of +infinity sends every request at once (every gap 0).
//
// Thread-safety: an ArrivalProcess is not thread-safe; the runner's dispatch
// thread owns it.
#pragma once

#include <cstdint>
#include <random>
#include <string>

#include "absl/status/statusor.h"

namespace sirocco::bench {

enum class ArrivalKind { kConstant, kPoisson, kGamma };

// "constant" | "poisson" | "gamma"; INVALID_ARGUMENT otherwise.
[[nodiscard]] absl::StatusOr<ArrivalKind> ParseArrivalKind(const std::string& name);
const char* ArrivalKindName(ArrivalKind kind);

struct ArrivalOptions {
  ArrivalKind kind = ArrivalKind::kPoisson;
  double rate = 1.0;        // requests per second, > 0 (inf: all at once)
  double burstiness = 1.0;  // gamma shape, > 0; kGamma only
  std::uint64_t seed = 0;

  [[nodiscard]] absl::Status Validate() const;
};

class ArrivalProcess {
 public:
  // INVALID_ARGUMENT for bad options.
  [[nodiscard]] static absl::StatusOr<ArrivalProcess> Create(const ArrivalOptions& options);

  // The gap before the next request, in seconds (>= 0).
  double NextGapSeconds();

 private:
  explicit ArrivalProcess(const ArrivalOptions& options);

  ArrivalOptions options_;
  std::mt19937_64 rng_;
  std::gamma_distribution<double> gamma_;
  std::exponential_distribution<double> exponential_;
};

}  // namespace sirocco::bench
