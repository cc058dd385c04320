// The benchmark's result file: a versioned JSON document ("schema":
// "sirocco.bench/1") holding the configuration, every raw per-request record
// and the aggregates of each run (one run, or one per sweep step). Layout in
// docs/bench.md.
//
// Thread-safety: pure functions over values; safe from any thread.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "tools/bench/metrics.h"
#include "tools/bench/runner.h"

namespace sirocco::bench {

inline constexpr char kSchema[] = "sirocco.bench/1";

// One measured run: a single benchmark, or one step of a sweep.
struct RunReport {
  std::string label;
  std::optional<double> offered_rate;  // requests/s of an open loop; nullopt for a closed loop
  nlohmann::json load;                 // the load options, for the record
  RunResult result;
  Aggregates aggregates;
  // A run that mixes requests with and without images: the aggregates of
  // each kind alone ("text", "image"), over the run's duration.
  std::vector<std::pair<std::string, Aggregates>> by_class;
};

struct BenchReport {
  std::string target;
  ModelSummary model;
  nlohmann::json config;  // every option as given or defaulted
  Slo slo;
  std::vector<RunReport> runs;
};

nlohmann::json StatsToJson(const Stats& s);
nlohmann::json AggregatesToJson(const Aggregates& a);
nlohmann::json RecordToJson(const RequestRecord& r);
nlohmann::json ReportToJson(const BenchReport& report);

// Writes `j` (pretty-printed) to `path`, atomically (temporary + rename).
[[nodiscard]] absl::Status WriteJsonFile(const std::string& path, const nlohmann::json& j);
// Reads a result file; INVALID_ARGUMENT when it is not JSON or its schema is
// not kSchema.
[[nodiscard]] absl::StatusOr<nlohmann::json> ReadResultFile(const std::string& path);

}  // namespace sirocco::bench
