#include "services/server.h"

#include <utility>

#include <grpc/grpc.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "services/status_mapping.h"

namespace sirocco::services {

// The drain listener outlives nothing it touches: it reaches the health
// service through this, and ~Server clears the pointer (under the mutex)
// before the grpc::Server that owns the service goes away.
struct Server::Health {
  absl::Mutex mu;
  grpc::HealthCheckServiceInterface* service ABSL_GUARDED_BY(mu) = nullptr;

  void SetNotServing() {
    absl::MutexLock lock(&mu);
    // Flips "" and every service name set before.
    if (service != nullptr) service->SetServingStatus(false);
  }
};

absl::Status ServerOptions::Validate() const {
  if (listen_address.empty() || listen_address.find(':') == std::string::npos) {
    return InvalidFieldError("listen_address", absl::StrCat("must be host:port, got '", listen_address, "'"));
  }
  if (max_receive_message_bytes <= 0) {
    return InvalidFieldError("max_receive_message_bytes", absl::StrCat("must be > 0, got ", max_receive_message_bytes));
  }
  if (max_send_message_bytes <= 0) {
    return InvalidFieldError("max_send_message_bytes", absl::StrCat("must be > 0, got ", max_send_message_bytes));
  }
  if (drain_grace < absl::ZeroDuration()) {
    return InvalidFieldError("drain_grace", absl::StrCat("must be >= 0, got ", absl::FormatDuration(drain_grace)));
  }
  return absl::OkStatus();
}

Server::Server(const ServerOptions& options, std::shared_ptr<CallGate> gate)
    : options_(options), gate_(std::move(gate)), health_(std::make_shared<Health>()) {}

absl::StatusOr<std::unique_ptr<Server>> Server::Create(const ServerOptions& options,
                                                       std::vector<ServiceRegistration> services,
                                                       std::shared_ptr<CallGate> gate) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  if (gate == nullptr) return absl::InvalidArgumentError("Server::Create: gate must not be null");
  for (std::size_t i = 0; i < services.size(); ++i) {
    if (services[i].service == nullptr || services[i].name.empty()) {
      return InvalidFieldError(absl::StrCat("services[", i, "]"), "needs a service and its full name");
    }
  }

  // Both are process-wide switches read when a builder is made; setting them
  // again is harmless.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  std::unique_ptr<Server> server(new Server(options, std::move(gate)));
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, grpc::InsecureServerCredentials(), &server->port_);
  // gRPC sets SO_REUSEPORT by default, so a second process on a taken port
  // would share it silently; we want the bind to fail instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(options.max_receive_message_bytes);
  builder.SetMaxSendMessageSize(options.max_send_message_bytes);
  for (const ServiceRegistration& registration : services) builder.RegisterService(registration.service);

  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve gRPC on ", options.listen_address,
                                               " (address in use or not local?)"));
  }

  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  if (health == nullptr) return absl::InternalError("the default health service is not enabled");
  health->SetServingStatus("", true);
  for (const ServiceRegistration& registration : services) health->SetServingStatus(registration.name, true);
  {
    absl::MutexLock lock(&server->health_->mu);
    server->health_->service = health;
  }
  // Runs at once when the gate is already draining.
  server->gate_->OnDrain([health_state = server->health_] { health_state->SetNotServing(); });
  return server;
}

Server::~Server() {
  Shutdown(absl::ZeroDuration());
  absl::MutexLock lock(&health_->mu);
  health_->service = nullptr;
}

void Server::RequestShutdown() {
  Drain();
  absl::MutexLock lock(&mu_);
  shutdown_requested_ = true;
}

void Server::Wait() {
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&shutdown_requested_));
  }
  Shutdown(options_.drain_grace);
}

void Server::Shutdown(absl::Duration grace) {
  if (server_ == nullptr) return;  // Create failed: nothing started, leave the gate alone
  Drain();
  absl::MutexLock lock(&stop_mu_);
  if (stopped_) return;
  // Blocks until every in-flight call has ended: by itself before the
  // deadline, or cancelled at it.
  server_->Shutdown(absl::ToChronoTime(absl::Now() + std::max(grace, absl::ZeroDuration())));
  server_->Wait();
  stopped_ = true;
  // Wake a Wait() that is still waiting for a request.
  absl::MutexLock request_lock(&mu_);
  shutdown_requested_ = true;
}

}  // namespace sirocco::services
