#include "tools/bench/report_text.h"

#include <cmath>
#include <cstdio>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace sirocco::bench {
namespace {

// A metric of the aggregates by path ("ttft_ms/p99", "server/queue_ms/mean").
std::optional<double> Get(const nlohmann::json& aggregates, const std::string& path) {
  const nlohmann::json* node = &aggregates;
  std::size_t start = 0;
  while (start <= path.size()) {
    const std::size_t slash = path.find('/', start);
    const std::string key = path.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (!node->is_object() || !node->contains(key)) return std::nullopt;
    node = &(*node)[key];
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  if (!node->is_number()) return std::nullopt;
  return node->get<double>();
}

std::string Fmt(std::optional<double> v) {
  if (!v) return "-";
  if (std::fabs(*v) >= 1000 || *v == std::floor(*v)) return absl::StrFormat("%.0f", *v);
  return absl::StrFormat("%.2f", *v);
}

const std::vector<std::pair<std::string, std::string>>& Headline() {
  static const auto* kRows = new std::vector<std::pair<std::string, std::string>>{
      {"Requests completed", "completed"},
      {"Requests failed", "failed"},
      {"Requests cancelled", "cancelled"},
      {"Duration (s)", "duration_s"},
      {"Input tokens", "input_tokens"},
      {"  from the prefix cache", "cached_tokens"},
      {"Output tokens", "output_tokens"},
      {"Request throughput (req/s)", "request_throughput"},
      {"Output token throughput (tok/s)", "output_throughput"},
      {"Total token throughput (tok/s)", "total_token_throughput"},
      {"Good requests (meet every SLO)", "good"},
      {"Goodput (req/s)", "goodput"},
  };
  return *kRows;
}

const std::vector<std::pair<std::string, std::string>>& Distributions() {
  static const auto* kRows = new std::vector<std::pair<std::string, std::string>>{
      {"TTFT (ms)", "ttft_ms"},
      {"TPOT (ms)", "tpot_ms"},
      {"ITL (ms)", "itl_ms"},
      {"E2E latency (ms)", "e2e_ms"},
      {"Server queue (ms)", "server/queue_ms"},
      {"Server prefill (ms)", "server/prefill_ms"},
      {"Server KV transfer (ms)", "server/kv_transfer_ms"},
      {"Server first decode step (ms)", "server/first_decode_step_ms"},
      {"Server TTFT (ms)", "server/ttft_ms"},
      {"Server E2E (ms)", "server/e2e_ms"},
      {"Send lag (ms)", "overhead/send_lag_ms"},
      {"Receive callback, per-request mean (us)", "overhead/callback_mean_us"},
  };
  return *kRows;
}

constexpr const char* kStatFields[] = {"mean", "median", "p90", "p95", "p99"};

// The distributions shown per class of request (RunReport::by_class).
const std::vector<std::pair<std::string, std::string>>& ClassDistributions() {
  static const auto* kRows = new std::vector<std::pair<std::string, std::string>>{
      {"TTFT (ms)", "ttft_ms"},
      {"TPOT (ms)", "tpot_ms"},
      {"ITL (ms)", "itl_ms"},
      {"E2E latency (ms)", "e2e_ms"},
  };
  return *kRows;
}

}  // namespace

std::string SummaryTable(const nlohmann::json& report) {
  std::string out;
  for (const auto& run : report["runs"]) {
    const nlohmann::json& a = run["aggregates"];
    absl::StrAppend(&out, "==================== ", run.value("label", "run"), " ====================\n");
    for (const auto& [name, key] : Headline())
      absl::StrAppend(&out, absl::StrFormat("%-40s %14s\n", name, Fmt(Get(a, key))));
    if (a.contains("errors") && !a["errors"].empty()) {
      for (const auto& [code, n] : a["errors"].items())
        absl::StrAppend(&out, absl::StrFormat("%-40s %14d\n", "  errors " + code, n.get<long long>()));
    }
    absl::StrAppend(&out, absl::StrFormat("%-40s %9s %9s %9s %9s %9s\n", "", "mean", "median", "p90", "p95", "p99"));
    for (const auto& [name, key] : Distributions()) {
      if (Get(a, key + "/count").value_or(0) == 0) continue;
      std::string line = absl::StrFormat("%-40s", name);
      for (const char* f : kStatFields) absl::StrAppend(&line, absl::StrFormat(" %9s", Fmt(Get(a, key + "/" + f))));
      absl::StrAppend(&out, line, "\n");
    }
    if (run.contains("by_class") && run["by_class"].is_object()) {
      for (const auto& [cls, ca] : run["by_class"].items()) {
        absl::StrAppend(&out, absl::StrFormat("%-40s %14s\n", cls + " requests completed", Fmt(Get(ca, "completed"))));
        for (const auto& [name, key] : ClassDistributions()) {
          if (Get(ca, key + "/count").value_or(0) == 0) continue;
          std::string line = absl::StrFormat("%-40s", "  " + cls + ": " + name);
          for (const char* f : kStatFields)
            absl::StrAppend(&line, absl::StrFormat(" %9s", Fmt(Get(ca, key + "/" + f))));
          absl::StrAppend(&out, line, "\n");
        }
      }
    }
    absl::StrAppend(
        &out, absl::StrFormat("%-40s %14s\n", "Worst receive callback (us)", Fmt(Get(a, "overhead/callback_max_us"))));
    absl::StrAppend(&out, absl::StrFormat("%-40s %14s\n", "Client CPU (share of one core)",
                                          Fmt(Get(a, "overhead/client_cpu_share"))));
  }
  if (report["runs"].size() > 1) {
    absl::StrAppend(&out, "==================== throughput-latency curve ====================\n");
    absl::StrAppend(&out, absl::StrFormat("%10s %10s %10s %10s %10s %10s %10s %10s\n", "offered", "req/s", "out tok/s",
                                          "goodput", "TTFT p50", "TTFT p99", "ITL p99", "E2E p50"));
    for (const auto& run : report["runs"]) {
      const nlohmann::json& a = run["aggregates"];
      std::optional<double> offered;
      if (run["offered_rate"].is_number()) offered = run["offered_rate"].get<double>();
      absl::StrAppend(
          &out,
          absl::StrFormat("%10s %10s %10s %10s %10s %10s %10s %10s\n", Fmt(offered), Fmt(Get(a, "request_throughput")),
                          Fmt(Get(a, "output_throughput")), Fmt(Get(a, "goodput")), Fmt(Get(a, "ttft_ms/median")),
                          Fmt(Get(a, "ttft_ms/p99")), Fmt(Get(a, "itl_ms/p99")), Fmt(Get(a, "e2e_ms/median"))));
    }
  }
  return out;
}

std::string CompareTable(const nlohmann::json& a, const nlohmann::json& b, const std::string& name_a,
                         const std::string& name_b) {
  std::string out;
  const std::size_t n = std::min(a["runs"].size(), b["runs"].size());
  // (name, path from the run): the aggregates, then each class's.
  std::vector<std::pair<std::string, std::string>> rows;
  for (const auto& [name, key] : Headline()) rows.emplace_back(name, "aggregates/" + key);
  for (const auto& [name, key] : Distributions()) {
    for (const char* f : kStatFields)
      rows.emplace_back(absl::StrCat(name, " ", f), absl::StrCat("aggregates/", key, "/", f));
  }
  for (const char* cls : {"text", "image"}) {
    for (const auto& [name, key] : ClassDistributions()) {
      for (const char* f : kStatFields) {
        rows.emplace_back(absl::StrCat(cls, ": ", name, " ", f), absl::StrCat("by_class/", cls, "/", key, "/", f));
      }
    }
  }
  for (std::size_t i = 0; i < n; ++i) {
    const nlohmann::json& ra = a["runs"][i];
    const nlohmann::json& rb = b["runs"][i];
    absl::StrAppend(&out, absl::StrFormat("run %d: A = %s [%s], B = %s [%s]\n", i, name_a, ra.value("label", ""),
                                          name_b, rb.value("label", "")));
    absl::StrAppend(&out, absl::StrFormat("%-48s %12s %12s %8s\n", "metric", "A", "B", "B/A"));
    for (const auto& [name, key] : rows) {
      const auto va = Get(ra, key);
      const auto vb = Get(rb, key);
      if (!va && !vb) continue;
      std::string ratio = "-";
      if (va && vb && *va != 0) ratio = absl::StrFormat("%.3f", *vb / *va);
      absl::StrAppend(&out, absl::StrFormat("%-48s %12s %12s %8s\n", name, Fmt(va), Fmt(vb), ratio));
    }
  }
  if (a["runs"].size() != b["runs"].size())
    absl::StrAppend(&out, absl::StrFormat("(A has %d runs, B has %d: compared the first %d)\n", a["runs"].size(),
                                          b["runs"].size(), n));
  return out;
}

}  // namespace sirocco::bench
