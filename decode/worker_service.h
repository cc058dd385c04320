// The sirocco.worker.v1.Worker service (protos/sirocco/worker/v1/worker.proto)
// of sirocco-prefill, sirocco-decode and a colocated worker (role both), over
// one engine::EngineLoop.
//
// Threading: gRPC callback reactors only enqueue engine commands and drain
// the requests' RequestStreams when their on_ready fires (on the engine
// thread); nothing here blocks a reactor. A WatchLoad call owns one small
// thread that paces its reports.
//
// What each role serves (others: FAILED_PRECONDITION naming the role):
//   prefill  Prefill (with a KvTarget), Cancel, GetLoad, WatchLoad, Drain
//   decode   Reserve, Decode, Cancel, GetLoad, WatchLoad, Drain
//   both     every RPC; Prefill without a target computes the first token
//            here, and Decode without a reservation computes the prompt's KV
//            here (prompt_token_ids + output_token_ids) before decoding.
// Decode with local_prefill (decode and both) drops the named reservation, if
// any, and computes prompt + output here: the fallback for a failed KV
// transfer and the landing of a request migrated from a lost decode worker.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "absl/status/statusor.h"
#include "engine/engine_loop.h"
#include "engine/mistral4.h"
#include "engine/structured/grammar_cache.h"
#include "services/call_gate.h"
#include "services/metrics.h"
#include "sirocco/worker/v1/worker.grpc.pb.h"
#include "transfer/transfer_agent.h"

namespace sirocco::decode {

enum class WorkerRole : std::uint8_t { kPrefill, kDecode, kBoth };
const char* WorkerRoleName(WorkerRole role);
absl::StatusOr<WorkerRole> ParseWorkerRole(const std::string& name);

// The model fingerprint workers compare (Reserve, KvTarget): hex FNV-1a of
// the checkpoint's config.json plus the KV dtype. NOT_FOUND without one.
absl::StatusOr<std::string> ModelFingerprint(const std::string& model_dir);

struct WorkerServiceOptions {
  WorkerRole role = WorkerRole::kBoth;
  std::string worker_id;          // as reported in Load and responses
  std::string model_fingerprint;  // compared with Reserve's and KvTarget's
  // KV transfer (disaggregated roles): the agent and the engine's pool,
  // registered with it as `pool` laid out as `layout`. Null agent: Reserve
  // and Prefill with a target fail with UNIMPLEMENTED.
  transfer::TransferAgent* agent = nullptr;
  transfer::PoolHandle pool;
  transfer::KvLayout layout;
  std::chrono::milliseconds default_reservation_ttl{30000};
  // Longest a KV transfer may take (also bounded by the target reservation's
  // expiry, less kExpiryMargin).
  std::chrono::milliseconds kv_transfer_timeout{60000};
};

class WorkerService final : public sirocco::worker::v1::Worker::CallbackService {
 public:
  // `model`, `engine` and `metrics` (may be null) must outlive the service.
  WorkerService(WorkerServiceOptions options, const engine::Mistral4Model* model, engine::EngineLoop* engine,
                std::shared_ptr<services::CallGate> gate, const services::ServingMetrics* metrics);
  ~WorkerService() override;

  // Prefill and Decode calls in progress (what a drain waits for).
  int in_flight() const { return in_flight_.load(std::memory_order_acquire); }

  grpc::ServerUnaryReactor* Reserve(grpc::CallbackServerContext* context,
                                    const sirocco::worker::v1::ReserveRequest* request,
                                    sirocco::worker::v1::KvTarget* response) override;
  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext* context,
                                    const sirocco::worker::v1::PrefillRequest* request,
                                    sirocco::worker::v1::PrefillResponse* response) override;
  grpc::ServerWriteReactor<sirocco::worker::v1::DecodeResponse>* Decode(
      grpc::CallbackServerContext* context, const sirocco::worker::v1::DecodeRequest* request) override;
  grpc::ServerUnaryReactor* Cancel(grpc::CallbackServerContext* context,
                                   const sirocco::worker::v1::CancelRequest* request,
                                   sirocco::worker::v1::CancelResponse* response) override;
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* context,
                                    const sirocco::worker::v1::GetLoadRequest* request,
                                    sirocco::worker::v1::Load* response) override;
  grpc::ServerWriteReactor<sirocco::worker::v1::Load>* WatchLoad(
      grpc::CallbackServerContext* context, const sirocco::worker::v1::WatchLoadRequest* request) override;
  grpc::ServerUnaryReactor* Drain(grpc::CallbackServerContext* context,
                                  const sirocco::worker::v1::DrainRequest* request,
                                  sirocco::worker::v1::DrainResponse* response) override;

  // Internal (used by the reactors in worker_service.cc).
  sirocco::worker::v1::Load CurrentLoad();
  // Maps a router request id to a new engine id; ALREADY_EXISTS when in use.
  absl::StatusOr<engine::RequestId> AcquireId(const std::string& request_id);
  void ReleaseId(const std::string& request_id);
  engine::EngineLoop& engine() { return *engine_; }
  // The constraint of a request's SamplingParams.response_format (inactive
  // when unset); INVALID_ARGUMENT naming the field for a schema that does
  // not compile.
  absl::StatusOr<engine::structured::ResponseConstraint> ResponseConstraint(
      const sirocco::worker::v1::SamplingParams& sampling);
  const engine::Mistral4Model& model() const { return *model_; }
  const WorkerServiceOptions& options() const { return options_; }
  const services::ServingMetrics* metrics() const { return metrics_; }
  services::CallGate& gate() { return *gate_; }
  // Engine thread (EngineOptions::on_layer_kv_written): posts the layer's KV
  // of a Prefill with a target.
  void OnLayerKvWritten(const engine::LayerKvWritten& written);
  struct TransferJob;  // one Prefill's KV transfer (worker_service.cc)
  // A Prefill's transfer: registered before its Submit, dropped at its end.
  void AddJob(engine::RequestId id, std::shared_ptr<TransferJob> job);
  std::shared_ptr<TransferJob> TakeJob(engine::RequestId id);
  // The connected peer for a target; connects (blocking, up to the agent's
  // connect timeout) when there is none yet.
  absl::StatusOr<transfer::PeerHandle> PeerFor(const transfer::TargetDescriptor& target);
  bool HasPeer(const transfer::TargetDescriptor& target);
  // Drops a peer whose connection was lost (UNAVAILABLE): the next request
  // for that target connects afresh.
  void ForgetPeer(transfer::PeerHandle peer);
  struct PendingReservation {
    engine::ReservationId id;
    engine::RequestId request;
    std::string request_id;
    std::chrono::steady_clock::time_point expires;
  };
  void AddReservation(const std::string& reservation_id, PendingReservation r);
  // Claims (removes) a reservation; nullopt when unknown or swept.
  std::optional<PendingReservation> ClaimReservation(const std::string& reservation_id);
  // Drops reservations past their expiry (the engine freed their blocks).
  void SweepReservations();
  void CountSent(std::uint64_t bytes, double seconds, bool ok);
  // The request ended before its transfer did (cancel, error): stop every
  // write still pending, so nothing more leaves this worker for it.
  void AbortTransfers(TransferJob& job);
  void CallStarted() { in_flight_.fetch_add(1, std::memory_order_acq_rel); }
  void CallEnded() { in_flight_.fetch_sub(1, std::memory_order_acq_rel); }

 private:
  const WorkerServiceOptions options_;
  const engine::Mistral4Model* model_;
  engine::structured::GrammarCache grammars_;
  engine::EngineLoop* engine_;
  const std::shared_ptr<services::CallGate> gate_;
  const services::ServingMetrics* metrics_;
  std::atomic<int> in_flight_{0};

  std::mutex jobs_mu_;
  std::unordered_map<engine::RequestId, std::shared_ptr<TransferJob>, engine::RequestIdHash> jobs_;
  std::mutex peers_mu_;
  std::unordered_map<std::string, transfer::PeerHandle> peers_;  // by "agent_id/address"
  std::mutex reservations_mu_;
  std::unordered_map<std::string, PendingReservation> reservations_;
  std::mutex counters_mu_;
  sirocco::worker::v1::TransferCounters counters_;

  std::mutex ids_mu_;
  std::unordered_map<std::string, engine::RequestId> ids_;  // guarded by ids_mu_
  std::uint64_t next_id_ = 1;                               // guarded by ids_mu_
};

}  // namespace sirocco::decode
