// Prometheus metrics of a Sirocco process: the serving metrics every service
// shares (names, meanings and buckets aligned with vLLM's, under the
// `sirocco:` prefix; docs/metrics.md lists them) and the HTTP endpoint that
// serves them.
//
// The registry and the text exposition format are prometheus-cpp's (Debian's
// prometheus-cpp-dev); the HTTP server is civetweb (libcivetweb-dev, which
// prometheus-cpp's own exposer uses too), driven here directly so that the
// same port also answers health probes:
//   GET /metrics   text format 0.0.4
//   GET /healthz   200 "ok" while the process runs (liveness)
//   GET /readyz    200 "serving", or 503 "draining" once the CallGate drains
//                  (readiness; grpc.health.v1 says the same over gRPC)
//
// Thread-safety: prometheus-cpp metrics are thread-safe (atomics and short
// locks); observe them from any thread, reactors included. MetricsServer
// serves scrapes on civetweb's threads; Start and the destructor from one
// thread.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "services/call_gate.h"

struct mg_context;
struct mg_connection;

namespace sirocco::services {

// vLLM's bucket boundaries (vllm/v1/metrics/loggers.py), in seconds.
std::vector<double> TimeToFirstTokenBuckets();   // 0.001 .. 2560
std::vector<double> InterTokenLatencyBuckets();  // 0.01 .. 80
std::vector<double> RequestLatencyBuckets();     // 0.3 .. 7680: e2e, queue, prefill, decode
// vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50, ... up to `max_value`.
std::vector<double> OneTwoFiveBuckets(std::int64_t max_value);
// Sirocco's own, for one request's KV transfer: 100 us .. 60 s.
std::vector<double> KvTransferBuckets();

// Labels on every series: which model, which kind of process.
struct MetricLabels {
  std::string model_name;  // the served model's name
  std::string role;        // "router", "prefill", "decode" or "both"
};

// How a request ended, as the `finished_reason` label of
// sirocco:request_success_total (lower-case names of sirocco.v1.FinishReason).
enum class RequestFinish : std::uint8_t { kStop, kLength, kToolCalls, kCancelled, kError };
inline constexpr int kNumRequestFinishes = 5;
const char* RequestFinishLabel(RequestFinish finish);

// The serving metrics; pointers into the registry, which owns them and must
// outlive this struct. Each process updates those that apply to its role
// (docs/metrics.md) and leaves the others at zero.
struct ServingMetrics {
  // Gauges.
  prometheus::Gauge* num_requests_running = nullptr;
  prometheus::Gauge* num_requests_waiting = nullptr;
  prometheus::Gauge* kv_cache_usage_perc = nullptr;  // 0..1
  // Counters.
  prometheus::Counter* prompt_tokens = nullptr;
  prometheus::Counter* generation_tokens = nullptr;
  prometheus::Counter* num_preemptions = nullptr;
  prometheus::Counter* prefix_cache_queries = nullptr;  // tokens
  prometheus::Counter* prefix_cache_hits = nullptr;     // tokens
  prometheus::Counter* kv_transfer_bytes = nullptr;
  prometheus::Counter* kv_transfer_failures = nullptr;
  prometheus::Counter* local_prefill_fallbacks = nullptr;
  prometheus::Counter* request_migrations = nullptr;
  prometheus::Counter* vision_encoder_layers = nullptr;
  prometheus::Counter* token_masks = nullptr;
  prometheus::Counter* token_mask_cache_hits = nullptr;
  std::array<prometheus::Counter*, kNumRequestFinishes> request_success{};
  // Histograms, seconds unless named otherwise.
  prometheus::Histogram* time_to_first_token = nullptr;
  prometheus::Histogram* inter_token_latency = nullptr;
  prometheus::Histogram* e2e_request_latency = nullptr;
  prometheus::Histogram* request_queue_time = nullptr;
  prometheus::Histogram* request_prefill_time = nullptr;
  prometheus::Histogram* request_decode_time = nullptr;
  prometheus::Histogram* request_prompt_tokens = nullptr;      // tokens
  prometheus::Histogram* request_generation_tokens = nullptr;  // tokens
  prometheus::Histogram* kv_transfer_seconds = nullptr;

  prometheus::Counter& request_success_for(RequestFinish finish) const {
    return *request_success[static_cast<int>(finish)];
  }
};

// Registers every serving metric on `registry` with `labels`;
// `max_model_len` bounds the token-count buckets (as vLLM's). Calling it
// again with the same labels returns the same metrics; INVALID_ARGUMENT for
// labels that clash with an earlier call or max_model_len < 1.
[[nodiscard]] absl::StatusOr<ServingMetrics> RegisterServingMetrics(prometheus::Registry& registry,
                                                                    const MetricLabels& labels,
                                                                    std::int64_t max_model_len);

struct MetricsServerOptions {
  // host:port (IPv6 as [::]:port). Port 0 picks a free port.
  std::string listen_address = "0.0.0.0:9464";
  // civetweb worker threads: scrapes are rare and cheap.
  int num_threads = 2;

  [[nodiscard]] absl::Status Validate() const;
};

class MetricsServer {
 public:
  // Serves `metrics` (usually a prometheus::Registry) and the probes.
  // `gate` may be null: /readyz then always says serving. UNAVAILABLE when
  // the address cannot be bound.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(
      const MetricsServerOptions& options, std::shared_ptr<prometheus::Collectable> metrics,
      std::shared_ptr<const CallGate> gate);
  // Stops serving; waits for scrapes in progress.
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  int port() const { return port_; }

 private:
  MetricsServer(std::shared_ptr<prometheus::Collectable> metrics, std::shared_ptr<const CallGate> gate);
  static int HandleMetrics(mg_connection* conn, void* self);
  static int HandleHealthz(mg_connection* conn, void* self);
  static int HandleReadyz(mg_connection* conn, void* self);
  static int HandleNotFound(mg_connection* conn, void* self);

  const std::shared_ptr<prometheus::Collectable> metrics_;
  const std::shared_ptr<const CallGate> gate_;
  mg_context* context_ = nullptr;
  int port_ = 0;
  std::string wake_host_;  // where the destructor connects to hurry mg_stop
};

}  // namespace sirocco::services
