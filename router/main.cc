// sirocco-router: the public endpoint of a Sirocco cluster.
//
//   sirocco-router --tokenizer tekken.json [--port 50051] [--host 0.0.0.0]
//       [--colocated a:1,b:2] [--prefill a:1,..] [--decode c:3,..]   (lists: commas or repeated flags)
//       [--colocated-dns name:port] [--prefill-dns name:port] [--decode-dns name:port]
//       [--dns-interval-s 10] [--load-interval-ms 200] [--metrics-port -1]
//       [--worker-token TOKEN (or $SIROCCO_WORKER_TOKEN)] [--model-name NAME]
//       [--model-fingerprint FP (default: each decode worker's own)] [--context-length N] [--reasoning-effort
//       none|high]
//       [--max-in-flight N] [--listen HOST:PORT] [--port-file PATH] [--drain-grace-s 25]
//       [--prefix-routing on|off]   (prefill worker by queue + prefix-cache estimate; off: by queue alone)
//       [--local-prefill-max-tokens 256]   (a decode worker that likely holds all of a prompt but this
//                                           many tokens prefills it itself; 0: never)
//       [--images on|off]   (accept image parts when the tokenizer renders images; the workers' model
//                            needs a vision encoder)
// Prints "sirocco-router: serving on HOST:PORT" once it serves; SIGINT/SIGTERM
// drain and stop (a second signal exits at once). --context-length (default
// 32768) caps prompt + output; the workers' own models lower it (the smallest
// context a healthy worker reports), so a request without max_tokens is given
// what is left of the context its workers hold.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "router/router_service.h"
#include "services/metrics.h"
#include "services/server.h"
#include "services/signal_watcher.h"

namespace {

using sirocco::router::WorkerRole;
using sirocco::router::WorkerSource;

int Fail(const std::string& message) {
  std::fprintf(stderr, "sirocco-router: %s\n", message.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // Worker lists may be given in one comma-separated flag or repeated;
  // any other flag given twice is an error.
  const std::set<std::string> list_flags = {"colocated",     "workers",     "prefill",    "decode",
                                            "colocated-dns", "prefill-dns", "decode-dns"};
  std::map<std::string, std::string> flags;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) return Fail("unexpected argument '" + arg + "'");
    arg = arg.substr(2);
    std::string name, value;
    if (auto eq = arg.find('='); eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    } else if (i + 1 < argc) {
      name = arg;
      value = argv[++i];
    } else {
      return Fail("--" + arg + " needs a value");
    }
    auto [it, inserted] = flags.try_emplace(name, value);
    if (!inserted) {
      if (!list_flags.contains(name)) return Fail("--" + name + " given twice");
      it->second += "," + value;
    }
  }
  auto take = [&](const std::string& name, std::string fallback) {
    auto it = flags.find(name);
    if (it == flags.end()) return fallback;
    std::string v = it->second;
    flags.erase(it);
    return v;
  };
  auto take_int = [&](const std::string& name, long long fallback, long long* out) {
    std::string v = take(name, "");
    if (v.empty()) {
      *out = fallback;
      return true;
    }
    return absl::SimpleAtoi(v, out);
  };

  sirocco::router::DirectoryOptions dir_options;
  auto add_sources = [&](const std::string& flag, WorkerRole role, bool dns) {
    std::string list = take(flag, "");
    for (absl::string_view a : absl::StrSplit(list, ',', absl::SkipEmpty()))
      dir_options.sources.push_back(WorkerSource{std::string(a), role, dns});
  };
  add_sources("colocated", WorkerRole::kBoth, false);
  add_sources("workers", WorkerRole::kBoth, false);
  add_sources("prefill", WorkerRole::kPrefill, false);
  add_sources("decode", WorkerRole::kDecode, false);
  add_sources("colocated-dns", WorkerRole::kBoth, true);
  add_sources("prefill-dns", WorkerRole::kPrefill, true);
  add_sources("decode-dns", WorkerRole::kDecode, true);
  const char* env_token = std::getenv("SIROCCO_WORKER_TOKEN");
  dir_options.worker_token = take("worker-token", env_token != nullptr ? env_token : "");

  long long port = 0, metrics_port = 0, dns_s = 0, load_ms = 0, context_length = 0, max_in_flight = 0;
  if (!take_int("port", 50051, &port)) return Fail("--port: not an integer");
  if (!take_int("metrics-port", -1, &metrics_port)) return Fail("--metrics-port: not an integer");
  if (!take_int("dns-interval-s", 10, &dns_s) || dns_s < 1) return Fail("--dns-interval-s: an integer >= 1");
  if (!take_int("load-interval-ms", 200, &load_ms) || load_ms < 10) return Fail("--load-interval-ms: an integer >= 10");
  if (!take_int("context-length", 32768, &context_length) || context_length < 2)
    return Fail("--context-length: an integer >= 2");
  if (!take_int("max-in-flight", 256, &max_in_flight) || max_in_flight < 1)
    return Fail("--max-in-flight: an integer >= 1");
  long long drain_grace_s = 0;
  if (!take_int("drain-grace-s", 25, &drain_grace_s) || drain_grace_s < 0)
    return Fail("--drain-grace-s: an integer >= 0");
  const std::string prefix_routing = take("prefix-routing", "on");
  if (prefix_routing != "on" && prefix_routing != "off") return Fail("--prefix-routing: on or off");
  dir_options.prefix_routing = prefix_routing == "on";
  long long local_prefill_max = 0;
  if (!take_int("local-prefill-max-tokens", 256, &local_prefill_max) || local_prefill_max < 0)
    return Fail("--local-prefill-max-tokens: an integer >= 0");
  dir_options.dns_interval = absl::Seconds(dns_s);
  dir_options.load_interval = absl::Milliseconds(load_ms);
  dir_options.admission.max_in_flight = max_in_flight;
  std::string host = take("host", "0.0.0.0");
  const std::string listen = take("listen", "");
  if (!listen.empty()) {
    auto colon = listen.rfind(':');
    if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port))
      return Fail("--listen: HOST:PORT");
    host = listen.substr(0, colon);
  }
  const std::string port_file = take("port-file", "");
  const std::string tokenizer_path = take("tokenizer", "");
  sirocco::router::RouterOptions router_options;
  router_options.model_name = take("model-name", router_options.model_name);
  router_options.model_fingerprint = take("model-fingerprint", "");
  router_options.context_length = static_cast<std::int32_t>(context_length);
  router_options.local_prefill_max_tokens = local_prefill_max;
  const std::string images = take("images", "on");
  if (images != "on" && images != "off") return Fail("--images: on or off");
  router_options.images = images == "on";
  const std::string effort = take("reasoning-effort", "none");
  if (effort == "none") {
    router_options.default_reasoning_effort = sirocco::v1::REASONING_EFFORT_NONE;
  } else if (effort == "high") {
    router_options.default_reasoning_effort = sirocco::v1::REASONING_EFFORT_HIGH;
  } else {
    return Fail("--reasoning-effort: none or high");
  }
  if (!flags.empty()) return Fail("unknown flag --" + flags.begin()->first);
  if (tokenizer_path.empty()) return Fail("--tokenizer FILE is required");
  if (dir_options.sources.empty()) return Fail("no workers: give --colocated, --prefill/--decode or a --*-dns name");

  auto tokenizer = sirocco::text::Tekkenizer::Load(tokenizer_path);
  if (!tokenizer.ok()) return Fail(std::string(tokenizer.status().message()));

  sirocco::services::ServerOptions server_options;
  server_options.listen_address = host + ":" + std::to_string(port);
  server_options.drain_grace = absl::Seconds(drain_grace_s);
  auto gate = std::make_shared<sirocco::services::CallGate>(server_options);
  absl::Notification stop;
  auto signals = sirocco::services::SignalWatcher::Start([&](int, int count) {
    if (count == 1) {
      gate->StartDrain();
      if (!stop.HasBeenNotified()) stop.Notify();
    } else {
      std::_Exit(1);
    }
  });
  if (!signals.ok()) return Fail(std::string(signals.status().message()));

  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<sirocco::services::MetricsServer> metrics_server;
  std::optional<sirocco::services::ServingMetrics> serving_metrics;
  if (metrics_port >= 0) {
    auto metrics = sirocco::services::RegisterServingMetrics(*registry, {router_options.model_name, "router"},
                                                             router_options.context_length);
    if (!metrics.ok()) return Fail(std::string(metrics.status().message()));
    serving_metrics = *metrics;
    router_options.metrics = &*serving_metrics;
    sirocco::services::MetricsServerOptions mo;
    mo.listen_address = host + ":" + std::to_string(metrics_port);
    auto ms = sirocco::services::MetricsServer::Start(mo, registry, gate);
    if (!ms.ok()) return Fail(std::string(ms.status().message()));
    metrics_server = *std::move(ms);
  }

  sirocco::router::WorkerDirectory directory(dir_options);
  directory.Start();
  auto service = sirocco::router::RouterService::Create(router_options, tokenizer->get(), &directory, gate);
  if (!service.ok()) return Fail(std::string(service.status().message()));

  auto server = sirocco::services::Server::Create(server_options,
                                                  {{service->get(), sirocco::v1::Sirocco::service_full_name()}}, gate);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  std::printf("sirocco-router: serving on %s:%d\n", host.c_str(), (*server)->port());
  if (metrics_server) std::printf("sirocco-router: metrics on %s:%d\n", host.c_str(), metrics_server->port());
  std::fflush(stdout);
  if (!port_file.empty()) {
    const std::string tmp = port_file + ".tmp";
    std::FILE* f = std::fopen(tmp.c_str(), "w");
    if (f == nullptr) return Fail("--port-file: cannot write " + port_file);
    std::fprintf(f, "%d\n", (*server)->port());
    std::fclose(f);
    std::rename(tmp.c_str(), port_file.c_str());
  }
  stop.WaitForNotification();
  // Draining (health NOT_SERVING, new calls UNAVAILABLE through the gate):
  // let the streams in flight finish before the server stops, within the
  // grace period; whatever is left then is cancelled by the shutdown.
  const absl::Time give_up = absl::Now() + server_options.drain_grace;
  while ((*service)->live_streams() > 0 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(20));
  (*server)->Shutdown(std::max(give_up - absl::Now(), absl::Seconds(1)));
  return 0;
}
