// What one benchmark request recorded, and the aggregate metrics computed from
// a run's records. Definitions (docs/bench.md; vLLM bench serve's):
//   TTFT  first streamed chunk received - request sent
//   TPOT  per request with more than one output token:
//         (E2E - TTFT) / (output tokens - 1)
//   ITL   every gap between two successive chunks of one request, pooled
//         over all requests
//   E2E   Final received (or the stream's end) - request sent
//   throughput  completed requests, output tokens, input + output tokens per
//         second of run duration
//   goodput     completed requests meeting every SLO, per second
// Only completed requests (status OK, no FINISH_REASON_ERROR, not cancelled
// by the generator) enter the latency and throughput figures; cancelled
// requests are counted apart from errors. Percentiles interpolate linearly
// between order statistics (numpy's default, "linear").
//
// Thread-safety: plain values and pure functions; safe from any thread.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace sirocco::bench {

// The router's own breakdown (Final.timing), microseconds.
struct ServerTiming {
  std::int64_t queue_us = 0;
  std::int64_t prefill_us = 0;
  std::int64_t kv_transfer_us = 0;
  std::int64_t first_decode_step_us = 0;
  std::int64_t ttft_us = 0;
  std::int64_t e2e_us = 0;
};

// Times are seconds on the client's monotonic clock, from the run's start.
struct RequestRecord {
  std::int64_t index = 0;
  std::string api;  // "generate" | "chat"
  int group = -1;
  std::string effort;  // "unspecified" | "none" | "high"
  bool image = false;
  int input_len = 0;  // the prompt length the workload asked for (0: unknown)
  int max_tokens = 0;
  double scheduled_s = 0;         // when the load wanted it sent
  double send_s = 0;              // when it was sent
  double end_s = 0;               // Final received, else the stream's end
  std::vector<double> chunk_s;    // each delta's arrival
  std::vector<int> chunk_tokens;  // tokens in each delta
  int prompt_tokens = 0;          // Final.usage, else input_len
  int cached_tokens = 0;          // Final.usage: prompt tokens the server's prefix cache held
  int output_tokens = 0;          // Final.usage, else the sum of chunk_tokens
  int status_code = 0;            // gRPC status code
  std::string status_message;
  std::string finish_reason;  // FinishReason name; empty without a Final
  bool cancelled = false;     // the generator cancelled it mid-stream
  int cancel_after_chunks = 0;
  bool has_timing = false;
  ServerTiming timing;
  // The generator's own cost: receive callbacks of this request.
  int callbacks = 0;
  double callback_total_us = 0;
  double callback_max_us = 0;

  bool Completed() const;
  // "" when completed or cancelled, else the gRPC code name or
  // "FINISH_REASON_ERROR".
  std::string ErrorKey() const;
};

struct Stats {
  std::int64_t count = 0;
  double mean = 0, stddev = 0, min = 0, median = 0, p90 = 0, p95 = 0, p99 = 0, max = 0;  // NaN when count == 0
};

// Linear interpolation between closest ranks: rank = p/100 * (n - 1) in the
// sorted values (numpy.percentile's default). `sorted` must be sorted and
// non-empty; p in [0, 100].
double Percentile(const std::vector<double>& sorted, double p);
Stats ComputeStats(std::vector<double> values);

// Service-level objectives; a request is good when it meets every one given.
struct Slo {
  std::optional<double> ttft_ms;
  std::optional<double> tpot_ms;
  std::optional<double> e2e_ms;
  bool any() const { return ttft_ms || tpot_ms || e2e_ms; }
  // "ttft_ms=500" (also tpot_ms, e2e_ms); several comma-separated.
  [[nodiscard]] absl::Status Add(const std::string& text);
};

struct Aggregates {
  double duration_s = 0;
  std::int64_t requests = 0, completed = 0, cancelled = 0, failed = 0;
  std::map<std::string, std::int64_t> errors;        // by ErrorKey
  std::int64_t input_tokens = 0, output_tokens = 0;  // completed requests
  std::int64_t cached_tokens = 0;                    // of input_tokens, from the server's prefix cache
  double request_throughput = 0;                     // completed / s
  double output_throughput = 0;                      // output tokens / s
  double total_token_throughput = 0;                 // (input + output) tokens / s
  std::int64_t good = 0;                             // completed and meeting every SLO (all completed when none given)
  double goodput = 0;                                // good / s
  Stats ttft_ms, tpot_ms, itl_ms, e2e_ms;
  // Final.timing of completed requests that had one, milliseconds.
  Stats server_queue_ms, server_prefill_ms, server_kv_transfer_ms, server_first_decode_step_ms, server_ttft_ms,
      server_e2e_ms;
  // The generator's overhead: actual - scheduled send time (ms), each
  // request's mean receive-callback cost (us), the worst callback (us), and
  // the process's CPU time over the run.
  Stats send_lag_ms, callback_mean_us;
  double callback_max_us = 0;
  double client_cpu_s = 0;
  double client_cpu_share = 0;  // client_cpu_s / duration_s (1.0 = one core busy)
};

// Per-request derived values; nullopt where undefined.
std::optional<double> TtftMs(const RequestRecord& r);
std::optional<double> TpotMs(const RequestRecord& r);  // needs output_tokens > 1
double E2eMs(const RequestRecord& r);

// `duration_s` > 0: the run's length (first send to last end).
Aggregates Aggregate(const std::vector<RequestRecord>& records, double duration_s, const Slo& slo,
                     double client_cpu_s = 0);

// When `records` mix requests with and without an image: the aggregates of
// each kind alone, ("text", ...) then ("image", ...), over the same
// duration (what images cost the requests beside them). Else empty.
std::vector<std::pair<std::string, Aggregates>> AggregateByClass(const std::vector<RequestRecord>& records,
                                                                 double duration_s, const Slo& slo);

}  // namespace sirocco::bench
