// The gRPC server every Sirocco process runs (router, prefill, decode):
// callback-API services plus grpc.health.v1 and server reflection, bound to
// one address, with a drain-then-stop shutdown.
//
// Lifecycle:
//   serving   health SERVING for "" and every registered service.
//   draining  (Drain, RequestShutdown, SIGTERM via SignalWatcher, or a
//             worker's Drain RPC through the CallGate) health NOT_SERVING,
//             the gate refuses new calls with UNAVAILABLE, in-flight calls
//             continue.
//   stopped   (Shutdown / Wait) gRPC stops accepting calls, gives in-flight
//             ones `drain_grace` to finish, cancels the rest, returns.
//
// Typical main():
//   ServerOptions options = ...;                        // from flags
//   auto gate = std::make_shared<CallGate>(options);    // starts no thread
//   absl::Notification stop;
//   auto signals = SignalWatcher::Start([&](int, int count) {
//     if (count == 1) { gate->StartDrain(); stop.Notify(); }  // drain, then stop
//     else std::_Exit(1);                                    // a second signal: now
//   });                                                 // before any thread starts
//   MyService service(gate);                            // a CallbackService
//   auto server = Server::Create(options, {{&service, "sirocco.v1.Sirocco"}}, gate);
//   stop.WaitForNotification();
//   (*server)->Shutdown(options.drain_grace);
// (Or: call RequestShutdown from anywhere and Wait in main.)
//
// Thread-safety: every method may be called from any thread. Drain and
// RequestShutdown never block (safe from reactors and the signal watcher);
// Shutdown and Wait block and must not be called from an RPC handler.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/impl/service_type.h>
#include <grpcpp/server.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "services/call_gate.h"

namespace sirocco::services {

// Message size limits. A public request (Chat with its images inline) is
// at most kMaxPublicMessageBytes (ModelInfo.limits.max_request_bytes); the
// router's call to a worker carries those images and the prompt's token
// ids, so worker calls get room for both.
inline constexpr int kMaxPublicMessageBytes = 64 << 20;
inline constexpr int kMaxWorkerMessageBytes = 128 << 20;

struct ServerOptions {
  // host:port (IPv6 as [::]:port). Port 0 picks a free port; port() says
  // which.
  std::string listen_address = "0.0.0.0:50051";
  // Largest message received and sent, in bytes (> 0). Above gRPC's 4 MiB
  // default because Chat requests carry images inline.
  int max_receive_message_bytes = kMaxPublicMessageBytes;
  int max_send_message_bytes = kMaxPublicMessageBytes;
  // The shared secret of the worker API (x-sirocco-worker-token), read by
  // CallGate. Empty: no check (tests only).
  std::string worker_auth_token;
  // How long in-flight calls may run once shutdown starts, before gRPC
  // cancels them. Below Kubernetes' default termination grace (30 s), so the
  // process exits before it is killed.
  absl::Duration drain_grace = absl::Seconds(25);

  // INVALID_ARGUMENT naming the field.
  [[nodiscard]] absl::Status Validate() const;
};

struct ServiceRegistration {
  grpc::Service* service = nullptr;  // not owned; must outlive the Server
  // Its full name (e.g. sirocco::v1::Sirocco::service_full_name()), under
  // which grpc.health.v1 reports it.
  std::string name;
};

class Server {
 public:
  // Builds and starts the server. UNAVAILABLE when the address cannot be
  // bound (taken, bad host); INVALID_ARGUMENT for bad options or
  // registrations. `gate` is the one the services consult.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Server>> Create(const ServerOptions& options,
                                                                     std::vector<ServiceRegistration> services,
                                                                     std::shared_ptr<CallGate> gate);
  // Shuts down at once (no grace) unless Shutdown or Wait already did.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound port.
  int port() const { return port_; }
  CallGate& gate() const { return *gate_; }

  // Starts draining (see the lifecycle above). Idempotent, non-blocking.
  void Drain() { gate_->StartDrain(); }
  // Drains and wakes Wait(), which then shuts down. Idempotent,
  // non-blocking.
  void RequestShutdown();
  // Blocks until RequestShutdown, then Shutdown(options.drain_grace).
  void Wait();
  // Drains, stops accepting calls, waits up to `grace` for in-flight calls,
  // cancels the rest and returns once every call has ended. Idempotent;
  // a concurrent caller waits for the first to finish.
  void Shutdown(absl::Duration grace);

 private:
  struct Health;  // the health service, shared with the gate's drain listener

  Server(const ServerOptions& options, std::shared_ptr<CallGate> gate);

  const ServerOptions options_;
  const std::shared_ptr<CallGate> gate_;
  std::shared_ptr<Health> health_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;

  absl::Mutex mu_;
  bool shutdown_requested_ ABSL_GUARDED_BY(mu_) = false;
  absl::Mutex stop_mu_;  // serialises Shutdown
  bool stopped_ ABSL_GUARDED_BY(stop_mu_) = false;
};

}  // namespace sirocco::services
