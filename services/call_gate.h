// Whether a new RPC may start: the process is not draining and, for the
// internal worker API, the call carries the shared worker token.
//
// gRPC 1.51 offers no server-side hook that rejects an insecure call by its
// metadata (AuthMetadataProcessor needs TLS credentials), so every handler
// asks the gate first and ends the call with the gate's status when it says
// no:
//
//   if (absl::Status s = gate_->AdmitWorker(*context); !s.ok()) {
//     reactor->Finish(ToGrpcStatus(s, context));
//     return reactor;
//   }
//
// Draining starts once (SIGTERM through Server::RequestShutdown, or a
// worker's Drain RPC) and never ends; listeners registered with OnDrain run
// then (the Server flips grpc.health.v1 to NOT_SERVING this way, a worker
// stops admitting and reports `draining` in its Load).
//
// Thread-safety: every method may be called from any thread, including gRPC
// reactor threads; none blocks beyond a short mutex.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace sirocco::services {

struct ServerOptions;

// The metadata key of the worker token (documented in worker.proto).
inline constexpr char kWorkerTokenMetadataKey[] = "x-sirocco-worker-token";

// Adds the worker token to an outgoing call (router -> worker). No-op for an
// empty token.
void AttachWorkerToken(grpc::ClientContext& context, std::string_view token);

class CallGate {
 public:
  // Takes the worker token from options.worker_auth_token; an empty token
  // disables the check (single-process tests only: workers started by
  // `sirocco up` or the Helm chart always get one).
  explicit CallGate(const ServerOptions& options);
  CallGate(const CallGate&) = delete;
  CallGate& operator=(const CallGate&) = delete;

  // Public API calls: OK, or UNAVAILABLE while draining.
  [[nodiscard]] absl::Status AdmitPublic() const;
  // Worker API calls: UNAUTHENTICATED unless `context` carries the token
  // (compared in constant time), else as AdmitPublic.
  [[nodiscard]] absl::Status AdmitWorker(const grpc::ServerContextBase& context) const;

  bool draining() const { return draining_.load(std::memory_order_acquire); }
  bool requires_worker_token() const { return !worker_token_.empty(); }

  // Starts draining; idempotent. The first call runs every listener on the
  // calling thread, in registration order.
  void StartDrain();
  // Runs `listener` when draining starts, or at once (on this thread) if it
  // already has. Listeners must not block and must not call OnDrain.
  void OnDrain(std::function<void()> listener);

 private:
  const std::string worker_token_;
  std::atomic<bool> draining_{false};
  absl::Mutex mu_;
  std::vector<std::function<void()>> listeners_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sirocco::services
