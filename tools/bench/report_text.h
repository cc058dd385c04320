// Plain-text views of a result document (report_json.h): the summary table
// printed at the end of a run, and `sirocco bench compare`'s metric-by-metric
// ratios.
//
// Thread-safety: pure functions; safe from any thread.
#pragma once

#include <string>

#include "nlohmann/json.hpp"

namespace sirocco::bench {

// The summary of every run of a result document (ReportToJson's layout); a
// sweep also gets its throughput-latency curve.
std::string SummaryTable(const nlohmann::json& report);

// For each run index present in both: metric, A, B, B/A. Ratios of an
// absent or zero A print as "-".
std::string CompareTable(const nlohmann::json& a, const nlohmann::json& b, const std::string& name_a,
                         const std::string& name_b);

}  // namespace sirocco::bench
