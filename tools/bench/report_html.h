// A self-contained HTML report of a benchmark (no external JS, CSS or fonts):
// summary tables and inline SVG charts drawn here — latency CDFs of TTFT,
// TPOT, ITL and E2E, throughput and goodput against offered load for sweeps,
// and a timeline of requests in flight.
//
// Thread-safety: pure functions; safe from any thread.
#pragma once

#include <string>
#include <vector>

#include "tools/bench/report_json.h"

namespace sirocco::bench {

struct Point {
  double x = 0, y = 0;
};
struct Series {
  std::string name;
  std::vector<Point> points;
};

// One SVG line chart (width x height px). `step`: draw as a step function.
std::string SvgLineChart(const std::string& title, const std::string& x_label, const std::string& y_label,
                         const std::vector<Series>& series, bool step, int width = 560, int height = 320);

// The empirical CDF of `values` (sorted here), at most max_points points.
std::vector<Point> Cdf(std::vector<double> values, std::size_t max_points = 400);

// (time, requests in flight) at each send and end of `records`.
std::vector<Point> InFlightTimeline(const std::vector<RequestRecord>& records);

std::string RenderHtml(const BenchReport& report, const nlohmann::json& report_json);

}  // namespace sirocco::bench
