#include "services/metrics.h"

#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

#include <civetweb.h>
#include <netdb.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "services/status_mapping.h"

namespace sirocco::services {
namespace {

prometheus::Labels ConstLabels(const MetricLabels& labels) {
  return {{"model_name", labels.model_name}, {"role", labels.role}};
}

prometheus::Gauge* AddGauge(prometheus::Registry& registry, const prometheus::Labels& labels, const char* name,
                            const char* help) {
  return &prometheus::BuildGauge().Name(name).Help(help).Labels(labels).Register(registry).Add({});
}

prometheus::Counter* AddCounter(prometheus::Registry& registry, const prometheus::Labels& labels, const char* name,
                                const char* help) {
  return &prometheus::BuildCounter().Name(name).Help(help).Labels(labels).Register(registry).Add({});
}

prometheus::Histogram* AddHistogram(prometheus::Registry& registry, const prometheus::Labels& labels, const char* name,
                                    const char* help, const std::vector<double>& buckets) {
  return &prometheus::BuildHistogram().Name(name).Help(help).Labels(labels).Register(registry).Add({}, buckets);
}

const char* ReasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    default:
      return "Unknown";
  }
}

// Writes one complete response; returns the status code, as civetweb wants
// from a handler that handled the request. The head is built here and sent
// with mg_write rather than civetweb's printf-based header functions: a
// civetweb thread's stack is 100 KB, of which a worker's static TLS
// (OpenBLAS's buffers) takes most, and glibc's printf machinery overflowed
// what was left.
int Respond(mg_connection* conn, int status, const char* content_type, std::string_view body,
            const char* allow = nullptr) {
  const mg_request_info* request = mg_get_request_info(conn);
  const bool head = request != nullptr && std::strcmp(request->request_method, "HEAD") == 0;
  std::string out = absl::StrCat("HTTP/1.1 ", status, " ", ReasonPhrase(status), "\r\nContent-Type: ", content_type,
                                 "\r\nContent-Length: ", body.size(), "\r\nCache-Control: no-store\r\n");
  if (allow != nullptr) absl::StrAppend(&out, "Allow: ", allow, "\r\n");
  absl::StrAppend(&out, "Connection: close\r\n\r\n");
  if (!head) out.append(body);
  mg_write(conn, out.data(), out.size());
  return status;
}

// Only GET and HEAD are served; anything else gets 405 (and true here).
bool RejectMethod(mg_connection* conn) {
  const mg_request_info* request = mg_get_request_info(conn);
  if (request != nullptr &&
      (std::strcmp(request->request_method, "GET") == 0 || std::strcmp(request->request_method, "HEAD") == 0)) {
    return false;
  }
  Respond(conn, 405, "text/plain; charset=utf-8", "method not allowed\n", "GET, HEAD");
  return true;
}

// The address to connect to for reaching a server listening on `listen`
// (host:port, IPv6 in brackets): the wildcard hosts become loopback.
std::string LocalHost(const std::string& listen) {
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty() || host == "0.0.0.0") return "127.0.0.1";
  if (host == "::") return "::1";
  return host;
}

// Opens and closes one TCP connection; failures are ignored (it only wakes
// a poll()).
void ConnectOnce(const std::string& host, int port) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) return;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const bool connected = connect(fd, a->ai_addr, a->ai_addrlen) == 0;
    close(fd);
    if (connected) break;
  }
  freeaddrinfo(found);
}

constexpr char kTextPlain[] = "text/plain; charset=utf-8";
constexpr char kExpositionContentType[] = "text/plain; version=0.0.4; charset=utf-8";

}  // namespace

std::vector<double> TimeToFirstTokenBuckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
          1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
}

std::vector<double> InterTokenLatencyBuckets() {
  return {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
}

std::vector<double> RequestLatencyBuckets() {
  return {0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,   15.0,  20.0,
          30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
}

std::vector<double> OneTwoFiveBuckets(std::int64_t max_value) {
  std::vector<double> buckets;
  for (std::int64_t base = 1; base <= max_value; base *= 10) {
    for (std::int64_t multiplier : {1, 2, 5}) {
      if (base * multiplier > max_value) return buckets;
      buckets.push_back(static_cast<double>(base * multiplier));
    }
  }
  return buckets;
}

std::vector<double> KvTransferBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1,    0.25,    0.5,    1.0,   2.5,    5.0,   10.0, 25.0,  60.0};
}

const char* RequestFinishLabel(RequestFinish finish) {
  switch (finish) {
    case RequestFinish::kStop:
      return "stop";
    case RequestFinish::kLength:
      return "length";
    case RequestFinish::kToolCalls:
      return "tool_calls";
    case RequestFinish::kCancelled:
      return "cancelled";
    case RequestFinish::kError:
      return "error";
  }
  return "error";
}

absl::StatusOr<ServingMetrics> RegisterServingMetrics(prometheus::Registry& registry, const MetricLabels& labels,
                                                      std::int64_t max_model_len) {
  if (max_model_len < 1) return InvalidFieldError("max_model_len", absl::StrCat("must be >= 1, got ", max_model_len));
  const prometheus::Labels l = ConstLabels(labels);
  ServingMetrics m;
  // prometheus-cpp reports bad names and clashing label sets by throwing;
  // nothing escapes this module.
  try {
    m.num_requests_running =
        AddGauge(registry, l, "sirocco:num_requests_running", "Number of requests in model execution batches.");
    m.num_requests_waiting =
        AddGauge(registry, l, "sirocco:num_requests_waiting", "Number of requests waiting to be processed.");
    m.kv_cache_usage_perc =
        AddGauge(registry, l, "sirocco:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.");
    m.prompt_tokens = AddCounter(registry, l, "sirocco:prompt_tokens_total", "Number of prefill tokens processed.");
    m.generation_tokens =
        AddCounter(registry, l, "sirocco:generation_tokens_total", "Number of generation tokens processed.");
    m.num_preemptions =
        AddCounter(registry, l, "sirocco:num_preemptions_total", "Cumulative number of preemption from the engine.");
    m.prefix_cache_queries = AddCounter(registry, l, "sirocco:prefix_cache_queries_total",
                                        "Prefix cache queries, in terms of number of queried tokens.");
    m.prefix_cache_hits = AddCounter(registry, l, "sirocco:prefix_cache_hits_total",
                                     "Prefix cache hits, in terms of number of cached tokens.");
    m.kv_transfer_bytes = AddCounter(registry, l, "sirocco:kv_transfer_bytes_total",
                                     "KV-cache bytes moved between workers (sent by prefill, received by decode).");
    m.kv_transfer_failures = AddCounter(registry, l, "sirocco:kv_transfer_failures_total",
                                        "KV-cache transfers that failed (peer gone, timeout, layout mismatch).");
    m.local_prefill_fallbacks = AddCounter(registry, l, "sirocco:local_prefill_fallbacks_total",
                                           "Requests whose decode worker computed the prompt itself because "
                                           "no prefill worker could deliver its KV cache.");
    m.request_migrations = AddCounter(registry, l, "sirocco:request_migrations_total",
                                      "Requests moved to another decode worker after theirs was lost mid-stream.");
    m.vision_encoder_layers = AddCounter(registry, l, "sirocco:vision_encoder_layers_total",
                                         "Vision encoder layers run (each image runs every layer once).");
    m.token_masks = AddCounter(registry, l, "sirocco:token_masks_total",
                               "Token masks computed for requests with a response format (one per sampled token).");
    m.token_mask_cache_hits = AddCounter(registry, l, "sirocco:token_mask_cache_hits_total",
                                         "Token masks whose JSON part came from the mask cache.");
    auto& success = prometheus::BuildCounter()
                        .Name("sirocco:request_success_total")
                        .Help("Count of successfully processed requests.")
                        .Labels(l)
                        .Register(registry);
    for (int i = 0; i < kNumRequestFinishes; ++i) {
      m.request_success[i] = &success.Add({{"finished_reason", RequestFinishLabel(static_cast<RequestFinish>(i))}});
    }
    m.time_to_first_token = AddHistogram(registry, l, "sirocco:time_to_first_token_seconds",
                                         "Histogram of time to first token in seconds.", TimeToFirstTokenBuckets());
    m.inter_token_latency = AddHistogram(registry, l, "sirocco:inter_token_latency_seconds",
                                         "Histogram of inter-token latency in seconds.", InterTokenLatencyBuckets());
    m.e2e_request_latency = AddHistogram(registry, l, "sirocco:e2e_request_latency_seconds",
                                         "Histogram of e2e request latency in seconds.", RequestLatencyBuckets());
    m.request_queue_time =
        AddHistogram(registry, l, "sirocco:request_queue_time_seconds",
                     "Histogram of time spent in WAITING phase for request.", RequestLatencyBuckets());
    m.request_prefill_time =
        AddHistogram(registry, l, "sirocco:request_prefill_time_seconds",
                     "Histogram of time spent in PREFILL phase for request.", RequestLatencyBuckets());
    m.request_decode_time =
        AddHistogram(registry, l, "sirocco:request_decode_time_seconds",
                     "Histogram of time spent in DECODE phase for request.", RequestLatencyBuckets());
    m.request_prompt_tokens = AddHistogram(registry, l, "sirocco:request_prompt_tokens",
                                           "Number of prefill tokens processed.", OneTwoFiveBuckets(max_model_len));
    m.request_generation_tokens =
        AddHistogram(registry, l, "sirocco:request_generation_tokens", "Number of generation tokens processed.",
                     OneTwoFiveBuckets(max_model_len));
    m.kv_transfer_seconds =
        AddHistogram(registry, l, "sirocco:kv_transfer_seconds",
                     "Histogram of one request's KV-cache transfer time in seconds.", KvTransferBuckets());
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot register the serving metrics: ", e.what()));
  }
  return m;
}

absl::Status MetricsServerOptions::Validate() const {
  if (listen_address.empty() || listen_address.find(':') == std::string::npos) {
    return InvalidFieldError("listen_address", absl::StrCat("must be host:port, got '", listen_address, "'"));
  }
  if (num_threads < 1) return InvalidFieldError("num_threads", absl::StrCat("must be >= 1, got ", num_threads));
  return absl::OkStatus();
}

MetricsServer::MetricsServer(std::shared_ptr<prometheus::Collectable> metrics, std::shared_ptr<const CallGate> gate)
    : metrics_(std::move(metrics)), gate_(std::move(gate)) {}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const MetricsServerOptions& options,
                                                                    std::shared_ptr<prometheus::Collectable> metrics,
                                                                    std::shared_ptr<const CallGate> gate) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  if (metrics == nullptr) return absl::InvalidArgumentError("MetricsServer::Start: metrics must not be null");
  static std::once_flag init_once;
  std::call_once(init_once, [] { mg_init_library(0); });

  std::unique_ptr<MetricsServer> server(new MetricsServer(std::move(metrics), std::move(gate)));
  const std::string threads = std::to_string(options.num_threads);
  // No document_root: civetweb serves no files, only the handlers below.
  const char* config[] = {"listening_ports",
                          options.listen_address.c_str(),
                          "num_threads",
                          threads.c_str(),
                          "request_timeout_ms",
                          "10000",
                          "enable_keep_alive",
                          "no",
                          nullptr};
  mg_callbacks callbacks{};
  mg_init_data init{};
  init.callbacks = &callbacks;
  init.user_data = server.get();
  init.configuration_options = config;
  char error_text[256] = {0};
  mg_error_data error{};
  error.text = error_text;
  error.text_buffer_size = sizeof(error_text);
  server->context_ = mg_start2(&init, &error);
  if (server->context_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", options.listen_address, ": ", error_text));
  }
  mg_server_port port{};
  if (mg_get_server_ports(server->context_, 1, &port) != 1 || port.port <= 0) {
    return absl::InternalError(absl::StrCat("metrics server on ", options.listen_address, " reports no port"));
  }
  server->port_ = port.port;
  server->wake_host_ = LocalHost(options.listen_address);
  // "$" anchors the match: /metricsx is a 404, not /metrics.
  mg_set_request_handler(server->context_, "/metrics$", &MetricsServer::HandleMetrics, server.get());
  mg_set_request_handler(server->context_, "/healthz$", &MetricsServer::HandleHealthz, server.get());
  mg_set_request_handler(server->context_, "/readyz$", &MetricsServer::HandleReadyz, server.get());
  // Every other path: a 404 written here (civetweb's own error pages are
  // printf-formatted; see Respond).
  mg_set_request_handler(server->context_, "**", &MetricsServer::HandleNotFound, server.get());
  return server;
}

MetricsServer::~MetricsServer() {
  if (context_ == nullptr) return;
  // civetweb's accept loop polls in 2 s quanta and sees mg_stop's flag only
  // when poll() returns; connecting wakes it, so stopping takes milliseconds
  // instead of up to 2 s.
  std::atomic<bool> stopped{false};
  std::thread waker([this, &stopped] {
    for (int i = 0; i < 200 && !stopped.load(); ++i) {
      ConnectOnce(wake_host_, port_);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  });
  mg_stop(context_);
  stopped = true;
  waker.join();
}

int MetricsServer::HandleMetrics(mg_connection* conn, void* self) {
  if (RejectMethod(conn)) return 405;
  auto* server = static_cast<MetricsServer*>(self);
  std::string body;
  try {
    body = prometheus::TextSerializer().Serialize(server->metrics_->Collect());
  } catch (const std::exception& e) {
    return Respond(conn, 500, kTextPlain, absl::StrCat("cannot collect metrics: ", e.what(), "\n"));
  }
  return Respond(conn, 200, kExpositionContentType, body);
}

int MetricsServer::HandleHealthz(mg_connection* conn, void* /*self*/) {
  if (RejectMethod(conn)) return 405;
  return Respond(conn, 200, kTextPlain, "ok\n");
}

int MetricsServer::HandleNotFound(mg_connection* conn, void* /*self*/) {
  return Respond(conn, 404, kTextPlain, "not found\n");
}

int MetricsServer::HandleReadyz(mg_connection* conn, void* self) {
  if (RejectMethod(conn)) return 405;
  auto* server = static_cast<MetricsServer*>(self);
  if (server->gate_ != nullptr && server->gate_->draining()) return Respond(conn, 503, kTextPlain, "draining\n");
  return Respond(conn, 200, kTextPlain, "serving\n");
}

}  // namespace sirocco::services
