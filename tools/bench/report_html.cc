#include "tools/bench/report_html.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/bench/report_text.h"

namespace sirocco::bench {
namespace {

constexpr const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// A "nice" tick step (1, 2 or 5 times a power of ten) for about n ticks.
double NiceStep(double span, int n) {
  if (!(span > 0)) return 1;
  const double raw = span / n;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

std::string Tick(double v) {
  if (std::fabs(v) >= 100 || v == std::floor(v)) return absl::StrFormat("%.0f", v);
  if (std::fabs(v) >= 1) return absl::StrFormat("%.1f", v);
  return absl::StrFormat("%.2g", v);
}

std::vector<double> Values(const std::vector<RequestRecord>& records, const std::string& metric) {
  std::vector<double> v;
  for (const RequestRecord& r : records) {
    if (!r.Completed()) continue;
    if (metric == "ttft") {
      if (auto t = TtftMs(r)) v.push_back(*t);
    } else if (metric == "tpot") {
      if (auto t = TpotMs(r)) v.push_back(*t);
    } else if (metric == "itl") {
      for (std::size_t i = 1; i < r.chunk_s.size(); ++i) v.push_back((r.chunk_s[i] - r.chunk_s[i - 1]) * 1e3);
    } else {
      v.push_back(E2eMs(r));
    }
  }
  return v;
}

std::string Cell(double v) {
  if (!std::isfinite(v)) return "-";
  return absl::StrFormat("%.2f", v);
}

std::string StatsRow(const std::string& name, const Stats& s) {
  return absl::StrCat("<tr><td>", Escape(name), "</td><td>", s.count, "</td><td>", Cell(s.mean), "</td><td>",
                      Cell(s.median), "</td><td>", Cell(s.p90), "</td><td>", Cell(s.p95), "</td><td>", Cell(s.p99),
                      "</td><td>", Cell(s.max), "</td></tr>\n");
}

}  // namespace

std::vector<Point> Cdf(std::vector<double> values, std::size_t max_points) {
  std::vector<Point> out;
  if (values.empty()) return out;
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  const std::size_t stride = std::max<std::size_t>(1, n / std::max<std::size_t>(1, max_points));
  out.push_back({values.front(), 0.0});
  for (std::size_t i = 0; i < n; i += stride) out.push_back({values[i], static_cast<double>(i + 1) / n});
  out.push_back({values.back(), 1.0});
  return out;
}

std::vector<Point> InFlightTimeline(const std::vector<RequestRecord>& records) {
  std::vector<std::pair<double, int>> events;
  for (const RequestRecord& r : records) {
    events.emplace_back(r.send_s, +1);
    events.emplace_back(r.end_s, -1);
  }
  // Ends before sends at the same instant.
  std::sort(events.begin(), events.end());
  std::vector<Point> out = {{0, 0}};
  int level = 0;
  for (const auto& [t, d] : events) {
    level += d;
    out.push_back({t, static_cast<double>(level)});
  }
  return out;
}

std::string SvgLineChart(const std::string& title, const std::string& x_label, const std::string& y_label,
                         const std::vector<Series>& series, bool step, int width, int height) {
  const double left = 64, right = 16, top = 28, bottom = 44;
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = 0, y1 = -x0;
  for (const Series& s : series) {
    for (const Point& p : s.points) {
      if (!std::isfinite(p.x) || !std::isfinite(p.y)) continue;
      x0 = std::min(x0, p.x);
      x1 = std::max(x1, p.x);
      y0 = std::min(y0, p.y);
      y1 = std::max(y1, p.y);
    }
  }
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
      "font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n"
      "<text x=\"%d\" y=\"16\" font-size=\"13\" font-weight=\"bold\">%s</text>\n",
      width, height, width, height, static_cast<int>(left), Escape(title));
  if (!std::isfinite(x0)) {
    absl::StrAppend(&svg, "<text x=\"", left, "\" y=\"", height / 2, "\">no data</text>\n</svg>\n");
    return svg;
  }
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  const double xs = NiceStep(x1 - x0, 6), ys = NiceStep(y1 - y0, 5);
  x0 = std::floor(x0 / xs) * xs;
  x1 = std::ceil(x1 / xs) * xs;
  y1 = std::ceil(y1 / ys) * ys;
  const double pw = width - left - right, ph = height - top - bottom;
  auto X = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
  auto Y = [&](double y) { return top + ph - (y - y0) / (y1 - y0) * ph; };
  for (double t = x0; t <= x1 + xs / 2; t += xs) {
    absl::StrAppend(&svg, absl::StrFormat("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>"
                                          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n",
                                          X(t), top, X(t), top + ph, X(t), top + ph + 14, Tick(t)));
  }
  for (double t = y0; t <= y1 + ys / 2; t += ys) {
    absl::StrAppend(&svg, absl::StrFormat("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>"
                                          "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
                                          left, Y(t), left + pw, Y(t), left - 4, Y(t) + 4, Tick(t)));
  }
  absl::StrAppend(&svg, absl::StrFormat("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
                                        "stroke=\"#888\"/>\n",
                                        left, top, pw, ph));
  absl::StrAppend(&svg, absl::StrFormat("<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", left + pw / 2,
                                        height - 8, Escape(x_label)));
  absl::StrAppend(&svg, absl::StrFormat("<text transform=\"translate(14,%.1f) rotate(-90)\" text-anchor=\"middle\">%s"
                                        "</text>\n",
                                        top + ph / 2, Escape(y_label)));
  for (std::size_t i = 0; i < series.size(); ++i) {
    const char* color = kColors[i % (sizeof(kColors) / sizeof(kColors[0]))];
    std::string pts;
    double prev_y = 0;
    bool first = true;
    for (const Point& p : series[i].points) {
      if (!std::isfinite(p.x) || !std::isfinite(p.y)) continue;
      if (step && !first) absl::StrAppend(&pts, absl::StrFormat("%.1f,%.1f ", X(p.x), Y(prev_y)));
      absl::StrAppend(&pts, absl::StrFormat("%.1f,%.1f ", X(p.x), Y(p.y)));
      prev_y = p.y;
      first = false;
    }
    absl::StrAppend(&svg, "<polyline fill=\"none\" stroke-width=\"1.8\" stroke=\"", color, "\" points=\"", pts,
                    "\"/>\n");
    if (series[i].points.size() == 1 || !step) {
      for (const Point& p : series[i].points) {
        if (series[i].points.size() > 40) break;
        absl::StrAppend(
            &svg, absl::StrFormat("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>", X(p.x), Y(p.y), color));
      }
    }
    absl::StrAppend(&svg, absl::StrFormat("<rect x=\"%.1f\" y=\"%.1f\" width=\"10\" height=\"10\" fill=\"%s\"/>"
                                          "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
                                          left + pw - 150, top + 6 + 14.0 * i, color, left + pw - 136,
                                          top + 15 + 14.0 * i, Escape(series[i].name)));
  }
  absl::StrAppend(&svg, "</svg>\n");
  return svg;
}

std::string RenderHtml(const BenchReport& report, const nlohmann::json& report_json) {
  std::string html = absl::StrCat(
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>sirocco bench: ", Escape(report.target),
      "</title>\n<style>body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:collapse;"
      "margin:8px 0 16px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,"
      "th:first-child{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:12px}pre{background:#f6f6f6;"
      "padding:8px}</style></head><body>\n<h1>sirocco bench</h1>\n<p>Target <b>",
      Escape(report.target), "</b>, model <b>", Escape(report.model.model_name), "</b> (server ",
      Escape(report.model.server_version), "), ", report.runs.size(), " run(s). Schema ", kSchema, ".</p>\n");
  absl::StrAppend(&html, "<h2>Summary</h2>\n<pre>", Escape(SummaryTable(report_json)), "</pre>\n");

  absl::StrAppend(&html, "<h2>Latency distributions</h2>\n<div class=\"charts\">\n");
  const std::pair<const char*, const char*> kMetrics[] = {
      {"ttft", "TTFT"}, {"tpot", "TPOT"}, {"itl", "ITL"}, {"e2e", "E2E latency"}};
  for (const auto& [metric, title] : kMetrics) {
    std::vector<Series> series;
    for (const RunReport& run : report.runs) series.push_back({run.label, Cdf(Values(run.result.records, metric))});
    absl::StrAppend(&html, SvgLineChart(absl::StrCat(title, " CDF"), absl::StrCat(title, " (ms)"),
                                        "fraction of samples", series, /*step=*/true));
  }
  absl::StrAppend(&html, "</div>\n");

  if (report.runs.size() > 1) {
    Series achieved{"request throughput", {}}, good{"goodput", {}};
    Series ttft50{"TTFT p50", {}}, ttft99{"TTFT p99", {}}, itl99{"ITL p99", {}};
    for (const RunReport& run : report.runs) {
      if (!run.offered_rate) continue;
      const double x = *run.offered_rate;
      achieved.points.push_back({x, run.aggregates.request_throughput});
      good.points.push_back({x, run.aggregates.goodput});
      ttft50.points.push_back({x, run.aggregates.ttft_ms.median});
      ttft99.points.push_back({x, run.aggregates.ttft_ms.p99});
      itl99.points.push_back({x, run.aggregates.itl_ms.p99});
    }
    absl::StrAppend(
        &html, "<h2>Throughput and latency against offered load</h2>\n<div class=\"charts\">\n",
        SvgLineChart("Throughput vs offered load", "offered load (req/s)", "req/s", {achieved, good}, false),
        SvgLineChart("Latency vs offered load", "offered load (req/s)", "ms", {ttft50, ttft99, itl99}, false),
        "</div>\n");
  }

  absl::StrAppend(&html, "<h2>Requests in flight</h2>\n<div class=\"charts\">\n");
  for (const RunReport& run : report.runs) {
    absl::StrAppend(&html, SvgLineChart(absl::StrCat("In flight: ", run.label), "time since run start (s)",
                                        "requests in flight", {{run.label, InFlightTimeline(run.result.records)}},
                                        /*step=*/true));
  }
  absl::StrAppend(&html, "</div>\n");

  for (const RunReport& run : report.runs) {
    const Aggregates& a = run.aggregates;
    absl::StrAppend(&html, "<h2>", Escape(run.label),
                    "</h2>\n<table><tr><th>metric</th><th>count</th><th>mean</th>"
                    "<th>median</th><th>p90</th><th>p95</th><th>p99</th><th>max</th></tr>\n",
                    StatsRow("TTFT (ms)", a.ttft_ms), StatsRow("TPOT (ms)", a.tpot_ms), StatsRow("ITL (ms)", a.itl_ms),
                    StatsRow("E2E (ms)", a.e2e_ms), StatsRow("server queue (ms)", a.server_queue_ms),
                    StatsRow("server prefill (ms)", a.server_prefill_ms),
                    StatsRow("server KV transfer (ms)", a.server_kv_transfer_ms),
                    StatsRow("server first decode step (ms)", a.server_first_decode_step_ms),
                    StatsRow("server TTFT (ms)", a.server_ttft_ms), StatsRow("server E2E (ms)", a.server_e2e_ms),
                    StatsRow("send lag (ms)", a.send_lag_ms),
                    StatsRow("receive callback mean (us)", a.callback_mean_us), "</table>\n");
  }
  absl::StrAppend(&html, "<h2>Configuration</h2>\n<pre>", Escape(report_json.value("config", nlohmann::json()).dump(1)),
                  "</pre>\n</body></html>\n");
  return html;
}

}  // namespace sirocco::bench
