#include "decode/worker_main.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "engine/device_loader.h"
#include "engine/engine_loop.h"
#include "engine/mistral4.h"
#include "engine/structured/constraint.h"
#include "engine/text/tekken.h"
#include "services/metrics.h"
#include "services/server.h"
#include "services/signal_watcher.h"
#include "transfer/kv_layout.h"
#include "transfer/ucx_agent.h"

namespace sirocco::decode {
namespace {

struct Flags {
  std::map<std::string, std::string> values;

  std::string Get(const std::string& name, const std::string& fallback) const {
    auto it = values.find(name);
    return it == values.end() ? fallback : it->second;
  }
  absl::StatusOr<std::int64_t> GetInt(const std::string& name, std::int64_t fallback) const {
    auto it = values.find(name);
    if (it == values.end()) return fallback;
    std::int64_t v = 0;
    if (!absl::SimpleAtoi(it->second, &v)) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, ": not an integer: '", it->second, "'"));
    }
    return v;
  }
};

const char* const kKnownFlags[] = {"role",
                                   "model",
                                   "listen",
                                   "port-file",
                                   "metrics-port",
                                   "metrics-port-file",
                                   "worker-id",
                                   "auth-token",
                                   "num-blocks",
                                   "block-size",
                                   "max-tokens-per-step",
                                   "max-seqs-per-step",
                                   "max-waiting",
                                   "kernels",
                                   "drain-grace-s",
                                   "ucx-host",
                                   "ucx-transports",
                                   "reservation-ttl-ms",
                                   "kv-transfer-timeout-ms",
                                   "test-kv-fault",
                                   "kv-quarantine-ms",
                                   "weights",
                                   "prefix-caching",
                                   "image-threads",
                                   "vision-layers-per-step",
                                   "tokenizer"};

absl::StatusOr<Flags> ParseFlags(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    arg = arg.substr(2);
    std::string value;
    if (auto eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", arg, ": missing value"));
    }
    bool known = false;
    for (const char* k : kKnownFlags) known = known || arg == k;
    if (!known) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", arg));
    flags.values[arg] = value;
  }
  return flags;
}

bool WriteFile(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << text;
    if (!out) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

// The vocabulary a response format works with, from the model's tekken
// file: null (response formats refused) when the file is absent.
absl::StatusOr<std::shared_ptr<const engine::structured::ConstraintVocabulary>> LoadConstraintVocabulary(
    const std::string& path, const engine::ModelConfig& config) {
  if (!std::ifstream(path).good()) return nullptr;
  absl::StatusOr<std::unique_ptr<text::Tekkenizer>> tokenizer = text::Tekkenizer::Load(path);
  if (!tokenizer.ok()) return tokenizer.status();
  const text::Tekkenizer& t = **tokenizer;
  const auto vocab = static_cast<std::int32_t>(t.vocab_size());
  std::vector<std::string_view> bytes(static_cast<std::size_t>(vocab));
  std::unique_ptr<bool[]> special(new bool[static_cast<std::size_t>(vocab)]);
  for (std::int32_t id = 0; id < vocab; ++id) {
    special[static_cast<std::size_t>(id)] = t.IsSpecial(id);
    if (!t.IsSpecial(id)) bytes[static_cast<std::size_t>(id)] = t.TokenBytes(id);
  }
  engine::structured::ControlTokens control;
  auto id_of = [&](std::string_view name) {
    const absl::StatusOr<std::int32_t> id = t.SpecialTokenId(name);
    return id.ok() ? *id : -1;
  };
  control.begin_think = id_of("[THINK]");
  control.end_think = id_of("[/THINK]");
  control.tool_calls = id_of("[TOOL_CALLS]");
  control.args = id_of("[ARGS]");
  for (std::int64_t id : config.eos_token_ids) control.eos.push_back(static_cast<std::int32_t>(id));
  // The vocabulary is copied: the tokenizer goes when this returns.
  return std::make_shared<const engine::structured::ConstraintVocabulary>(
      bytes, std::span<const bool>(special.get(), static_cast<std::size_t>(vocab)), std::move(control));
}

int Fail(const absl::Status& status) {
  std::cerr << "sirocco-worker: " << status << "\n";
  return 2;
}

}  // namespace

int WorkerMain(int argc, char** argv, WorkerRole default_role) {
  // Libraries start threads before main (OpenBLAS's pool), and a thread that
  // leaves SIGTERM unblocked would take its default action (terminate). The
  // signal mask survives execve, so block the signals and re-exec once: then
  // every thread, those started at load included, inherits the blocked mask
  // and SignalWatcher's signalfd receives the signals.
  if (std::getenv("SIROCCO_WORKER_SIGNALS_BLOCKED") == nullptr) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    setenv("SIROCCO_WORKER_SIGNALS_BLOCKED", "1", 1);
    execv("/proc/self/exe", argv);
    std::cerr << "sirocco-worker: re-exec failed; SIGTERM will not drain\n";
  }
  absl::StatusOr<Flags> flags = ParseFlags(argc, argv);
  if (!flags.ok()) return Fail(flags.status());

  // Before any thread starts (gRPC, the engine): they inherit the mask.
  std::shared_ptr<services::CallGate> gate;
  absl::Notification stop;
  absl::StatusOr<std::unique_ptr<services::SignalWatcher>> signals =
      services::SignalWatcher::Start([&](int /*signal*/, int count) {
        if (count == 1) {
          if (!stop.HasBeenNotified()) stop.Notify();
        } else {
          std::_Exit(1);
        }
      });
  if (!signals.ok()) return Fail(signals.status());

  absl::StatusOr<WorkerRole> role = ParseWorkerRole(flags->Get("role", WorkerRoleName(default_role)));
  if (!role.ok()) return Fail(role.status());
  const std::string kernels_name = flags->Get("kernels", "avx2");
  engine::ModelOptions model_options;
  if (kernels_name == "ref") {
    model_options.backend = kernels::Backend::kRef;
  } else if (kernels_name == "avx2") {
    model_options.backend = kernels::Backend::kAvx2;
  } else if (kernels_name == "cuda") {
    // The model, its activations and the KV pool on the GPU.
    absl::StatusOr<std::unique_ptr<engine::Device>> device = engine::LoadCudaDevice();
    if (!device.ok()) return Fail(device.status());
    model_options.device = *std::move(device);
  } else {
    return Fail(absl::InvalidArgumentError("--kernels: must be ref, avx2 or cuda"));
  }
  // --weights bf16|fp8: weight matrices in bfloat16 (half the memory and
  // bandwidth; products on bf16 activations with float32 accumulation) or
  // block FP8 (a quarter; weight-only).
  absl::StatusOr<engine::WeightType> weight_type = engine::ParseWeightType(flags->Get("weights", "f32"));
  if (!weight_type.ok()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--weights: ", weight_type.status().message())));
  }
  model_options.weight_type = *weight_type;
  absl::StatusOr<std::int64_t> num_blocks = flags->GetInt("num-blocks", 1024);
  absl::StatusOr<std::int64_t> block_size = flags->GetInt("block-size", 16);
  absl::StatusOr<std::int64_t> max_tokens_per_step = flags->GetInt("max-tokens-per-step", 512);
  absl::StatusOr<std::int64_t> max_seqs_per_step = flags->GetInt("max-seqs-per-step", 64);
  absl::StatusOr<std::int64_t> max_waiting = flags->GetInt("max-waiting", 0);
  absl::StatusOr<std::int64_t> metrics_port = flags->GetInt("metrics-port", 9464);
  absl::StatusOr<std::int64_t> drain_grace_s = flags->GetInt("drain-grace-s", 25);
  absl::StatusOr<std::int64_t> image_threads = flags->GetInt("image-threads", 2);
  absl::StatusOr<std::int64_t> vision_layers = flags->GetInt("vision-layers-per-step", 4);
  for (const auto* v : {&num_blocks, &block_size, &max_tokens_per_step, &max_seqs_per_step, &max_waiting, &metrics_port,
                        &drain_grace_s, &image_threads, &vision_layers}) {
    if (!v->ok()) return Fail(v->status());
  }
  if (*image_threads < 0 || *image_threads > 64) {
    return Fail(absl::InvalidArgumentError("--image-threads: must be in [0, 64]"));
  }
  if (*vision_layers < 0 || *vision_layers > 1024) {
    return Fail(absl::InvalidArgumentError("--vision-layers-per-step: must be in [0, 1024]"));
  }

  const std::string model_dir = flags->Get("model", "models/tiny");
  absl::StatusOr<std::unique_ptr<engine::Mistral4Model>> model = engine::Mistral4Model::Load(model_dir, model_options);
  if (!model.ok()) return Fail(model.status());

  engine::EngineOptions engine_options;
  engine_options.model = model->get();
  engine_options.num_blocks = *num_blocks;
  engine_options.block_size = *block_size;
  engine_options.max_tokens_per_step = *max_tokens_per_step;
  engine_options.max_seqs_per_step = *max_seqs_per_step;
  engine_options.max_waiting = *max_waiting;
  engine_options.image_threads = static_cast<int>(*image_threads);
  engine_options.vision_layers_per_step = static_cast<int>(*vision_layers);
  // --tokenizer: the model's tekken file, for response formats (structured
  // output); default <model>/tekken.json.
  absl::StatusOr<std::shared_ptr<const engine::structured::ConstraintVocabulary>> vocabulary =
      LoadConstraintVocabulary(flags->Get("tokenizer", model_dir + "/tekken.json"), (*model)->config());
  if (!vocabulary.ok()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--tokenizer: ", vocabulary.status().message())));
  }
  engine_options.constraint_vocabulary = *std::move(vocabulary);
  // Only a decode worker receives remote writes into reservations.
  absl::StatusOr<std::int64_t> quarantine_ms =
      flags->GetInt("kv-quarantine-ms", *role == WorkerRole::kPrefill ? 0 : 1000);
  if (!quarantine_ms.ok()) return Fail(quarantine_ms.status());
  if (*quarantine_ms < 0) return Fail(absl::InvalidArgumentError("--kv-quarantine-ms: must be >= 0"));
  engine_options.reservation_quarantine = std::chrono::milliseconds(*quarantine_ms);
  engine_options.drain_timeout = std::chrono::seconds(*drain_grace_s);
  const std::string prefix_caching = flags->Get("prefix-caching", "on");
  if (prefix_caching != "on" && prefix_caching != "off") {
    return Fail(absl::InvalidArgumentError("--prefix-caching: must be on or off"));
  }
  engine_options.prefix_caching = prefix_caching == "on";
  // The prefill side posts each layer's KV from the engine thread; the hook
  // reaches the service once it exists.
  auto hook_target = std::make_shared<std::atomic<WorkerService*>>(nullptr);
  engine_options.on_layer_kv_written = [hook_target](const engine::LayerKvWritten& w) {
    if (WorkerService* s = hook_target->load(std::memory_order_acquire)) s->OnLayerKvWritten(w);
  };
  absl::StatusOr<std::unique_ptr<engine::EngineLoop>> engine = engine::EngineLoop::Create(engine_options);
  if (!engine.ok()) return Fail(engine.status());

  // KV transfer: a UCX agent with the engine's pool registered (the decode
  // side's target, the prefill side's source). Declared after the engine:
  // destroyed (unregistered) before the pool goes away.
  absl::StatusOr<std::string> fingerprint = ModelFingerprint(model_dir);
  if (!fingerprint.ok()) return Fail(fingerprint.status());
  const engine::KvPool& pool = (*engine)->pool();
  transfer::KvLayout layout;
  layout.model_fingerprint = transfer::Fingerprint64(*fingerprint);
  layout.dtype_bytes = sizeof(float);
  layout.num_layers = static_cast<std::uint32_t>(pool.num_layers());
  layout.num_blocks = static_cast<std::uint32_t>(pool.num_blocks());
  layout.block_size = static_cast<std::uint32_t>(pool.block_size());
  layout.entry_bytes = static_cast<std::uint32_t>(pool.entry_dim() * sizeof(float));
  transfer::UcxOptions ucx;
  ucx.listen_host = flags->Get("ucx-host", "127.0.0.1");
  const std::string tls = flags->Get("ucx-transports", "cma-tcp");
  if (tls == "cma-tcp") {
    ucx.transports = transfer::UcxTransports::kCmaTcp;
  } else if (tls == "tcp") {
    ucx.transports = transfer::UcxTransports::kTcp;
  } else if (tls == "shm") {
    ucx.transports = transfer::UcxTransports::kSharedMemory;
  } else if (tls == "default") {
    ucx.transports = transfer::UcxTransports::kDefault;
  } else {
    return Fail(absl::InvalidArgumentError("--ucx-transports: must be cma-tcp, tcp, shm or default"));
  }
  if (!pool.host_accessible()) {
    if (ucx.transports != transfer::UcxTransports::kDefault) {
      // A pool in GPU memory is written by UCX's CUDA-aware lanes (cuda_ipc,
      // GPUDirect RDMA), which only UCX's own transport choice includes.
      return Fail(
          absl::InvalidArgumentError("--kernels cuda needs --ucx-transports default (the KV pool is GPU memory)"));
    }
    ucx.pool_in_device_memory = true;
  }
  absl::StatusOr<std::int64_t> transfer_timeout_ms = flags->GetInt("kv-transfer-timeout-ms", 60000);
  if (!transfer_timeout_ms.ok()) return Fail(transfer_timeout_ms.status());
  if (*transfer_timeout_ms < 1) return Fail(absl::InvalidArgumentError("--kv-transfer-timeout-ms: must be >= 1"));
  ucx.transfer_timeout = absl::Milliseconds(*transfer_timeout_ms);
  // Tests only: break this worker's outgoing KV transfers on purpose, to
  // exercise the router's fallbacks with real processes.
  if (const std::string fault = flags->Get("test-kv-fault", "none"); fault != "none") {
    ucx.faults = std::make_shared<transfer::FaultInjector>();
    std::int64_t delay_ms = 0;
    if (fault == "fail-first") {
      ucx.faults->FailNthWrite(1);
    } else if (absl::StartsWith(fault, "delay-ms:") && absl::SimpleAtoi(fault.substr(9), &delay_ms) && delay_ms > 0) {
      ucx.faults->DelayWrites(absl::Milliseconds(delay_ms));
    } else {
      return Fail(absl::InvalidArgumentError("--test-kv-fault: none, fail-first or delay-ms:N"));
    }
  }
  absl::StatusOr<std::unique_ptr<transfer::TransferAgent>> agent = transfer::CreateUcxAgent(ucx);
  if (!agent.ok()) return Fail(agent.status());
  absl::StatusOr<transfer::PoolHandle> pool_handle =
      (*agent)->RegisterPool(const_cast<float*>(pool.layer(0)), pool.bytes(), layout);
  if (!pool_handle.ok()) return Fail(pool_handle.status());
  absl::StatusOr<std::int64_t> reservation_ttl_ms = flags->GetInt("reservation-ttl-ms", 30000);
  if (!reservation_ttl_ms.ok()) return Fail(reservation_ttl_ms.status());

  services::ServerOptions server_options;
  server_options.listen_address = flags->Get("listen", "0.0.0.0:50061");
  server_options.max_receive_message_bytes = services::kMaxWorkerMessageBytes;
  server_options.max_send_message_bytes = services::kMaxWorkerMessageBytes;
  const char* env_token = std::getenv("SIROCCO_WORKER_TOKEN");
  server_options.worker_auth_token = flags->Get("auth-token", env_token != nullptr ? env_token : "");
  server_options.drain_grace = absl::Seconds(*drain_grace_s);
  gate = std::make_shared<services::CallGate>(server_options);

  auto registry = std::make_shared<prometheus::Registry>();
  absl::StatusOr<services::ServingMetrics> metrics = services::RegisterServingMetrics(
      *registry, services::MetricLabels{model_dir, WorkerRoleName(*role)}, (*model)->config().max_position_embeddings);
  if (!metrics.ok()) return Fail(metrics.status());
  std::unique_ptr<services::MetricsServer> metrics_server;
  if (*metrics_port >= 0) {
    services::MetricsServerOptions mo;
    mo.listen_address = absl::StrCat("0.0.0.0:", *metrics_port);
    absl::StatusOr<std::unique_ptr<services::MetricsServer>> ms = services::MetricsServer::Start(mo, registry, gate);
    if (!ms.ok()) return Fail(ms.status());
    metrics_server = *std::move(ms);
    if (std::string path = flags->Get("metrics-port-file", ""); !path.empty()) {
      WriteFile(path, absl::StrCat(metrics_server->port(), "\n"));
    }
  }

  WorkerServiceOptions service_options;
  service_options.role = *role;
  service_options.model_fingerprint = *fingerprint;
  service_options.agent = agent->get();
  service_options.pool = *pool_handle;
  service_options.layout = layout;
  service_options.default_reservation_ttl = std::chrono::milliseconds(*reservation_ttl_ms);
  service_options.kv_transfer_timeout = std::chrono::milliseconds(*transfer_timeout_ms);
  WorkerService* service_ptr = nullptr;
  // The worker id needs the bound port: build the service after binding is
  // not possible (registration comes first), so derive it from the flag.
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  service_options.worker_id = flags->Get("worker-id", absl::StrCat(WorkerRoleName(*role), "@", host, "/", getpid()));
  WorkerService service(service_options, model->get(), engine->get(), gate, &*metrics);
  service_ptr = &service;
  hook_target->store(&service, std::memory_order_release);
  absl::StatusOr<std::unique_ptr<services::Server>> server =
      services::Server::Create(server_options, {{&service, sirocco::worker::v1::Worker::service_full_name()}}, gate);
  if (!server.ok()) return Fail(server.status());
  std::cerr << "sirocco-worker: role " << WorkerRoleName(*role) << " serving on port " << (*server)->port()
            << " (model " << model_dir << ", " << *num_blocks << " blocks of " << *block_size << ")\n";
  if (std::string path = flags->Get("port-file", ""); !path.empty()) {
    if (!WriteFile(path, absl::StrCat((*server)->port(), "\n"))) {
      return Fail(absl::InternalError(absl::StrCat("--port-file: cannot write ", path)));
    }
  }

  // Until a signal: refresh the gauges from the engine's stats.
  while (!stop.WaitForNotificationWithTimeout(absl::Milliseconds(500))) {
    const engine::EngineStats st = (*engine)->Stats();
    metrics->num_requests_running->Set(static_cast<double>(st.scheduler.running()));
    metrics->num_requests_waiting->Set(static_cast<double>(st.scheduler.waiting + st.preparing));
    if (st.scheduler.total_blocks > 0) {
      metrics->kv_cache_usage_perc->Set(1.0 - static_cast<double>(st.scheduler.free_blocks) /
                                                  static_cast<double>(st.scheduler.total_blocks));
    }
    // Counters follow the engine's cumulative totals.
    const auto advance = [](prometheus::Counter* c, std::int64_t total) {
      const double delta = static_cast<double>(total) - c->Value();
      if (delta > 0) c->Increment(delta);
    };
    advance(metrics->num_preemptions, st.scheduler.preemptions);
    advance(metrics->prefix_cache_queries, st.scheduler.prefix_cache_queries);
    advance(metrics->prefix_cache_hits, st.scheduler.prefix_cache_hits);
    advance(metrics->vision_encoder_layers, st.vision_layers);
    advance(metrics->token_masks, st.token_masks);
    advance(metrics->token_mask_cache_hits, st.token_mask_cache_hits);
  }
  // Drain: health NOT_SERVING, new calls UNAVAILABLE; in-flight calls finish.
  gate->StartDrain();
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(*drain_grace_s);
  while (service_ptr->in_flight() > 0 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  (*server)->Shutdown(absl::Seconds(1));
  (*engine)->Stop(engine::StopMode::kCancel);
  hook_target->store(nullptr, std::memory_order_release);
  std::cerr << "sirocco-worker: stopped\n";
  return 0;
}

}  // namespace sirocco::decode
