// The result file (schema, raw records, aggregates), `compare`'s ratios, the
// summary table, and the HTML report: self-contained, with its SVG charts,
// and rendered by headless Chromium into a non-trivial screenshot (skipped,
// never passed, when Chromium is not installed).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tools/bench/report_html.h"
#include "tools/bench/report_json.h"
#include "tools/bench/report_text.h"

namespace sirocco::bench {
namespace {

namespace fs = std::filesystem;

RequestRecord Rec(std::int64_t index, double send, double ttft_s, int n, double gap_s) {
  RequestRecord r;
  r.index = index;
  r.api = "generate";
  r.effort = "unspecified";
  r.scheduled_s = send;
  r.send_s = send;
  for (int k = 0; k < n; ++k) {
    r.chunk_s.push_back(send + ttft_s + k * gap_s);
    r.chunk_tokens.push_back(1);
  }
  r.end_s = r.chunk_s.back();
  r.output_tokens = n;
  r.prompt_tokens = 10;
  r.input_len = 10;
  r.max_tokens = n;
  r.finish_reason = "FINISH_REASON_LENGTH";
  r.has_timing = true;
  r.timing.queue_us = 100;
  return r;
}

// Two runs at offered loads 1 and 2 req/s; the second twice as slow.
BenchReport MakeReport(double slowdown) {
  BenchReport report;
  report.target = "127.0.0.1:1";
  report.model.model_name = "synthetic";
  report.config = {{"api", "generate"}};
  for (int run = 0; run < 2; ++run) {
    RunReport rr;
    rr.label = absl::StrCat("rate ", run + 1);
    rr.offered_rate = run + 1;
    for (int i = 0; i < 40; ++i)
      rr.result.records.push_back(Rec(i, 0.1 * i, slowdown * (0.05 + 0.001 * i), 8, slowdown * 0.02 * (run + 1)));
    for (int i = 0; i < 40; i += 4) rr.result.records[static_cast<std::size_t>(i)].image = true;
    rr.result.duration_s = rr.result.records.back().end_s;
    rr.aggregates = Aggregate(rr.result.records, rr.result.duration_s, Slo{});
    rr.by_class = AggregateByClass(rr.result.records, rr.result.duration_s, Slo{});
    report.runs.push_back(std::move(rr));
  }
  return report;
}

TEST(ReportJsonTest, HoldsSchemaRecordsAndAggregates) {
  const BenchReport report = MakeReport(1);
  const nlohmann::json j = ReportToJson(report);
  EXPECT_EQ(j["schema"], "sirocco.bench/1");
  ASSERT_EQ(j["runs"].size(), 2u);
  const auto& run = j["runs"][0];
  ASSERT_EQ(run["records"].size(), 40u);
  const auto& rec = run["records"][3];
  EXPECT_EQ(rec["index"], 3);
  EXPECT_DOUBLE_EQ(rec["send_s"].get<double>(), 0.1 * 3);
  EXPECT_DOUBLE_EQ(rec["first_token_s"].get<double>(), report.runs[0].result.records[3].chunk_s[0]);
  EXPECT_EQ(rec["chunk_s"].size(), 8u);
  EXPECT_EQ(rec["server_timing"]["queue_us"], 100);
  EXPECT_FALSE(rec["cancelled"].get<bool>());
  EXPECT_EQ(run["aggregates"]["completed"], 40);
  EXPECT_DOUBLE_EQ(run["aggregates"]["ttft_ms"]["p99"].get<double>(), report.runs[0].aggregates.ttft_ms.p99);
  EXPECT_TRUE(run["aggregates"]["server"]["kv_transfer_ms"].contains("median"));
  EXPECT_EQ(j["runs"][1]["offered_rate"], 2.0);

  // Through a file and back.
  const std::string path = ::testing::TempDir() + "/bench_result.json";
  ASSERT_TRUE(WriteJsonFile(path, j).ok());
  auto back = ReadResultFile(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, j);
  std::ofstream(path) << R"({"schema": "other/1", "runs": [{}]})";
  EXPECT_EQ(ReadResultFile(path).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ReportJsonTest, EmptySamplesAreNull) {
  BenchReport report;
  RunReport rr;
  rr.label = "empty";
  rr.aggregates = Aggregate({}, 1.0, Slo{});
  report.runs.push_back(rr);
  const nlohmann::json j = ReportToJson(report);
  EXPECT_TRUE(j["runs"][0]["aggregates"]["ttft_ms"]["mean"].is_null());
  EXPECT_EQ(j["runs"][0]["aggregates"]["ttft_ms"]["count"], 0);
}

TEST(ReportTextTest, CompareShowsRatiosBOverA) {
  const nlohmann::json a = ReportToJson(MakeReport(1));
  const nlohmann::json b = ReportToJson(MakeReport(2));
  const std::string table = CompareTable(a, b, "a.json", "b.json");
  // Every latency of B is twice A's: TTFT mean ratio 2.000.
  std::istringstream lines(table);
  std::string line;
  bool found = false, found_class = false;
  while (std::getline(lines, line)) {
    if (absl::StartsWith(line, "TTFT (ms) mean")) {
      EXPECT_TRUE(absl::EndsWith(line, "2.000")) << line;
      found = true;
    }
    if (absl::StartsWith(line, "Requests completed")) {
      EXPECT_TRUE(absl::EndsWith(line, "1.000")) << line;
    }
    if (absl::StartsWith(line, "image: ITL (ms) p99") || absl::StartsWith(line, "text: TTFT (ms) mean")) {
      EXPECT_TRUE(absl::EndsWith(line, "2.000")) << line;
      found_class = true;
    }
  }
  EXPECT_TRUE(found) << table;
  EXPECT_TRUE(found_class) << table;
  EXPECT_TRUE(absl::StrContains(table, "run 1:"));

  const std::string summary = SummaryTable(a);
  EXPECT_TRUE(absl::StrContains(summary, "TTFT (ms)"));
  EXPECT_TRUE(absl::StrContains(summary, "throughput-latency curve"));
  EXPECT_TRUE(absl::StrContains(summary, "Goodput (req/s)"));
  EXPECT_TRUE(absl::StrContains(summary, "image requests completed"));
  EXPECT_TRUE(absl::StrContains(summary, "  text: ITL (ms)"));
  EXPECT_EQ(a["runs"][0]["by_class"]["image"]["completed"], 10);
  EXPECT_EQ(a["runs"][0]["by_class"]["text"]["completed"], 30);
}

TEST(ReportHtmlTest, CdfAndTimeline) {
  const auto cdf = Cdf({3, 1, 2, 4});
  ASSERT_FALSE(cdf.empty());
  EXPECT_EQ(cdf.front().x, 1);
  EXPECT_EQ(cdf.front().y, 0);
  EXPECT_EQ(cdf.back().x, 4);
  EXPECT_EQ(cdf.back().y, 1);
  for (std::size_t i = 1; i < cdf.size(); ++i) {
    EXPECT_GE(cdf[i].x, cdf[i - 1].x);
    EXPECT_GE(cdf[i].y, cdf[i - 1].y);
  }
  RequestRecord a, b;
  a.send_s = 0;
  a.end_s = 2;
  b.send_s = 1;
  b.end_s = 3;
  const auto t = InFlightTimeline({a, b});
  ASSERT_EQ(t.size(), 5u);
  EXPECT_EQ(t[1].y, 1);
  EXPECT_EQ(t[2].y, 2);
  EXPECT_EQ(t[3].y, 1);
  EXPECT_EQ(t[4].y, 0);
}

TEST(ReportHtmlTest, SelfContainedWithCharts) {
  const BenchReport report = MakeReport(1);
  const std::string html = RenderHtml(report, ReportToJson(report));
  EXPECT_TRUE(absl::StartsWith(html, "<!DOCTYPE html>"));
  EXPECT_FALSE(absl::StrContains(html, "<script"));
  EXPECT_FALSE(absl::StrContains(html, "src="));
  EXPECT_FALSE(absl::StrContains(html, "href="));
  EXPECT_FALSE(absl::StrContains(html, "@import"));
  int svgs = 0;
  for (std::size_t pos = html.find("<svg"); pos != std::string::npos; pos = html.find("<svg", pos + 1)) ++svgs;
  EXPECT_EQ(svgs, 4 + 2 + 2);  // 4 CDFs, 2 sweep charts, 2 timelines
  for (const char* title :
       {"TTFT CDF", "TPOT CDF", "ITL CDF", "E2E latency CDF", "Throughput vs offered load", "In flight: rate 1"})
    EXPECT_TRUE(absl::StrContains(html, title)) << title;
}

std::string FindChromium() {
  for (const char* name : {"chromium", "chromium-browser", "google-chrome"}) {
    const std::string cmd = absl::StrCat("command -v ", name, " >/dev/null 2>&1");
    if (std::system(cmd.c_str()) == 0) return name;
  }
  return "";
}

TEST(ReportHtmlTest, RendersInHeadlessChromium) {
  const std::string chromium = FindChromium();
  if (chromium.empty()) GTEST_SKIP() << "chromium is not installed (tools/setup.sh installs it)";
  const fs::path dir = fs::path(::testing::TempDir()) / "bench_html";
  fs::create_directories(dir);
  const fs::path html = dir / "report.html";
  const fs::path png = dir / "report.png";
  fs::remove(png);
  const BenchReport report = MakeReport(1);
  std::ofstream(html) << RenderHtml(report, ReportToJson(report));
  const std::string cmd = absl::StrCat(
      "timeout 120 ", chromium, " --headless --no-sandbox --disable-gpu --screenshot=", png.string(),
      " --window-size=1200,2000 file://", fs::absolute(html).string(), " >", (dir / "chromium.log").string(), " 2>&1");
  const int rc = std::system(cmd.c_str());
  ASSERT_TRUE(fs::exists(png)) << "chromium exited with " << rc << "; see " << (dir / "chromium.log");
  // A 1200x2000 screenshot of charts compresses to tens of KB; a blank page
  // to a few.
  EXPECT_GT(fs::file_size(png), 30 * 1024u);
  // Not a single colour: decode the PNG (python3's zlib) and count distinct
  // pixels.
  if (std::system("command -v python3 >/dev/null 2>&1") == 0) {
    const fs::path script = dir / "colours.py";
    std::ofstream(script) << R"(import struct, sys, zlib
data = open(sys.argv[1], 'rb').read()
assert data[:8] == b'\x89PNG\r\n\x1a\n'
pos, idat, w, h = 8, b'', 0, 0
while pos < len(data):
    n, = struct.unpack('>I', data[pos:pos + 4]); kind = data[pos + 4:pos + 8]; body = data[pos + 8:pos + 8 + n]
    if kind == b'IHDR': w, h = struct.unpack('>II', body[:8])
    if kind == b'IDAT': idat += body
    pos += 12 + n
raw = zlib.decompress(idat)
# Filtered scanlines: distinct byte values are a lower bound on variety.
print(w, h, len(set(raw)))
)";
    const fs::path out = dir / "colours.txt";
    ASSERT_EQ(std::system(absl::StrCat("python3 ", script.string(), " ", png.string(), " > ", out.string()).c_str()),
              0);
    int w = 0, h = 0, distinct = 0;
    std::ifstream(out) >> w >> h >> distinct;
    EXPECT_EQ(w, 1200);
    EXPECT_EQ(h, 2000);
    EXPECT_GT(distinct, 16) << "the screenshot looks blank";
  }
}

}  // namespace
}  // namespace sirocco::bench
