#include "tools/bench/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace sirocco::bench {
namespace {

const char* CodeName(int code) {
  static const char* const kNames[] = {
      "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
      "DATA_LOSS", "UNAUTHENTICATED"};
  if (code < 0 || code > 16) return "UNKNOWN_CODE";
  return kNames[code];
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

}  // namespace

bool RequestRecord::Completed() const {
  return status_code == 0 && !cancelled && finish_reason != "FINISH_REASON_ERROR";
}

std::string RequestRecord::ErrorKey() const {
  if (Completed() || cancelled) return "";
  if (status_code != 0) return CodeName(status_code);
  return "FINISH_REASON_ERROR";
}

double Percentile(const std::vector<double>& sorted, double p) {
  const double rank = p / 100.0 * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<std::size_t>(std::floor(rank));
  const std::size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - static_cast<double>(lo));
}

Stats ComputeStats(std::vector<double> values) {
  Stats s;
  s.count = static_cast<std::int64_t>(values.size());
  if (values.empty()) {
    s.mean = s.stddev = s.min = s.median = s.p90 = s.p95 = s.p99 = s.max = kNaN;
    return s;
  }
  std::sort(values.begin(), values.end());
  const double n = static_cast<double>(values.size());
  s.mean = std::accumulate(values.begin(), values.end(), 0.0) / n;
  double ss = 0;
  for (double v : values) ss += (v - s.mean) * (v - s.mean);
  s.stddev = std::sqrt(ss / n);  // population, as numpy.std
  s.min = values.front();
  s.max = values.back();
  s.median = Percentile(values, 50);
  s.p90 = Percentile(values, 90);
  s.p95 = Percentile(values, 95);
  s.p99 = Percentile(values, 99);
  return s;
}

absl::Status Slo::Add(const std::string& text) {
  for (const std::string& item : std::vector<std::string>(absl::StrSplit(text, ',', absl::SkipEmpty()))) {
    std::vector<std::string> kv = absl::StrSplit(item, '=');
    double v = 0;
    if (kv.size() != 2 || !absl::SimpleAtod(kv[1], &v) || !(v > 0) || !std::isfinite(v))
      return absl::InvalidArgumentError(
          absl::StrCat("--slo '", item, "': want ttft_ms=N, tpot_ms=N or e2e_ms=N, N > 0"));
    if (kv[0] == "ttft_ms") {
      ttft_ms = v;
    } else if (kv[0] == "tpot_ms") {
      tpot_ms = v;
    } else if (kv[0] == "e2e_ms") {
      e2e_ms = v;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--slo '", item, "': '", kv[0], "' is not ttft_ms, tpot_ms or e2e_ms"));
    }
  }
  return absl::OkStatus();
}

std::optional<double> TtftMs(const RequestRecord& r) {
  if (r.chunk_s.empty()) return std::nullopt;
  return (r.chunk_s.front() - r.send_s) * 1e3;
}

std::optional<double> TpotMs(const RequestRecord& r) {
  auto ttft = TtftMs(r);
  if (!ttft || r.output_tokens <= 1) return std::nullopt;
  return (E2eMs(r) - *ttft) / static_cast<double>(r.output_tokens - 1);
}

double E2eMs(const RequestRecord& r) { return (r.end_s - r.send_s) * 1e3; }

Aggregates Aggregate(const std::vector<RequestRecord>& records, double duration_s, const Slo& slo,
                     double client_cpu_s) {
  Aggregates a;
  a.duration_s = duration_s;
  a.requests = static_cast<std::int64_t>(records.size());
  std::vector<double> ttft, tpot, itl, e2e, queue, prefill, kv, first_decode, server_ttft, server_e2e, lag, cb_mean;
  for (const RequestRecord& r : records) {
    lag.push_back((r.send_s - r.scheduled_s) * 1e3);
    if (r.callbacks > 0) cb_mean.push_back(r.callback_total_us / r.callbacks);
    a.callback_max_us = std::max(a.callback_max_us, r.callback_max_us);
    if (r.cancelled) {
      ++a.cancelled;
      continue;
    }
    if (!r.Completed()) {
      ++a.failed;
      ++a.errors[r.ErrorKey()];
      continue;
    }
    ++a.completed;
    a.input_tokens += r.prompt_tokens;
    a.cached_tokens += r.cached_tokens;
    a.output_tokens += r.output_tokens;
    const auto t = TtftMs(r);
    const auto p = TpotMs(r);
    const double e = E2eMs(r);
    if (t) ttft.push_back(*t);
    if (p) tpot.push_back(*p);
    e2e.push_back(e);
    for (std::size_t i = 1; i < r.chunk_s.size(); ++i) itl.push_back((r.chunk_s[i] - r.chunk_s[i - 1]) * 1e3);
    if (r.has_timing) {
      queue.push_back(static_cast<double>(r.timing.queue_us) / 1e3);
      prefill.push_back(static_cast<double>(r.timing.prefill_us) / 1e3);
      kv.push_back(static_cast<double>(r.timing.kv_transfer_us) / 1e3);
      first_decode.push_back(static_cast<double>(r.timing.first_decode_step_us) / 1e3);
      server_ttft.push_back(static_cast<double>(r.timing.ttft_us) / 1e3);
      server_e2e.push_back(static_cast<double>(r.timing.e2e_us) / 1e3);
    }
    // As vLLM: a request without a TTFT cannot meet a TTFT SLO; one with a
    // single output token has TPOT 0.
    bool good = true;
    if (slo.ttft_ms && (!t || *t > *slo.ttft_ms)) good = false;
    if (slo.tpot_ms && p.value_or(0.0) > *slo.tpot_ms) good = false;
    if (slo.e2e_ms && e > *slo.e2e_ms) good = false;
    if (good) ++a.good;
  }
  if (duration_s > 0) {
    a.request_throughput = static_cast<double>(a.completed) / duration_s;
    a.output_throughput = static_cast<double>(a.output_tokens) / duration_s;
    a.total_token_throughput = static_cast<double>(a.input_tokens + a.output_tokens) / duration_s;
    a.goodput = static_cast<double>(a.good) / duration_s;
    a.client_cpu_share = client_cpu_s / duration_s;
  }
  a.client_cpu_s = client_cpu_s;
  a.ttft_ms = ComputeStats(std::move(ttft));
  a.tpot_ms = ComputeStats(std::move(tpot));
  a.itl_ms = ComputeStats(std::move(itl));
  a.e2e_ms = ComputeStats(std::move(e2e));
  a.server_queue_ms = ComputeStats(std::move(queue));
  a.server_prefill_ms = ComputeStats(std::move(prefill));
  a.server_kv_transfer_ms = ComputeStats(std::move(kv));
  a.server_first_decode_step_ms = ComputeStats(std::move(first_decode));
  a.server_ttft_ms = ComputeStats(std::move(server_ttft));
  a.server_e2e_ms = ComputeStats(std::move(server_e2e));
  a.send_lag_ms = ComputeStats(std::move(lag));
  a.callback_mean_us = ComputeStats(std::move(cb_mean));
  return a;
}

std::vector<std::pair<std::string, Aggregates>> AggregateByClass(const std::vector<RequestRecord>& records,
                                                                 double duration_s, const Slo& slo) {
  std::vector<RequestRecord> text, image;
  for (const RequestRecord& r : records) (r.image ? image : text).push_back(r);
  std::vector<std::pair<std::string, Aggregates>> out;
  if (text.empty() || image.empty()) return out;
  out.emplace_back("text", Aggregate(text, duration_s, slo));
  out.emplace_back("image", Aggregate(image, duration_s, slo));
  return out;
}

}  // namespace sirocco::bench
