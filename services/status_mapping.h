// absl::Status <-> grpc::Status: the one place where Sirocco's errors become
// gRPC status codes and back (docs/architecture.md, "Errors and bad input").
//
// Every fallible boundary below the services returns absl::Status. A service
// handler ends an RPC with `ToGrpcStatus(status, context)`; a client of a
// Sirocco service (the router calling a worker) turns what it got back into
// an absl::Status with `FromGrpcStatus(status, &client_context)`, so a worker's
// overload reaches the router's caller with its retry hint intact.
//
// The error policy, which the helpers below produce:
//   overload            RESOURCE_EXHAUSTED + `grpc-retry-pushback-ms` trailer
//   draining/not ready  UNAVAILABLE
//   bad request         INVALID_ARGUMENT, message "<field path>: <problem>"
//   deadline            DEADLINE_EXCEEDED
// absl and gRPC number their codes alike; the mapping is code for code and
// keeps the message.
//
// Thread-safety: pure functions; `context` is only touched by the calling
// thread, as gRPC requires of a handler.
#pragma once

#include <optional>
#include <string_view>

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace sirocco::services {

// The trailer gRPC clients read as a retry hint: a non-negative integer of
// milliseconds (gRFC A6). gRPC's retry machinery honours it when the client's
// service config has a retry policy; other clients may read it themselves.
inline constexpr char kRetryPushbackTrailer[] = "grpc-retry-pushback-ms";

// RESOURCE_EXHAUSTED carrying a retry hint (rounded up to whole milliseconds,
// clamped to >= 0) that ToGrpcStatus sends as the pushback trailer.
[[nodiscard]] absl::Status OverloadedError(std::string_view message, absl::Duration retry_after);

// The retry hint of a status built by OverloadedError (or by FromGrpcStatus
// from a pushback trailer); nullopt when it carries none.
std::optional<absl::Duration> RetryPushback(const absl::Status& status);

// INVALID_ARGUMENT whose message names the offending field first:
// InvalidFieldError("messages[2].role", "must be set") has the message
// "messages[2].role: must be set".
[[nodiscard]] absl::Status InvalidFieldError(std::string_view field_path, std::string_view problem);

// The status a draining server answers new calls with (UNAVAILABLE).
[[nodiscard]] absl::Status DrainingError();

// absl -> gRPC: same code, same message. When `status` carries a retry hint
// and is RESOURCE_EXHAUSTED, adds the pushback trailer to `context` (which
// may be null, e.g. when the status is logged rather than returned). An OK
// status maps to grpc::Status::OK.
grpc::Status ToGrpcStatus(const absl::Status& status, grpc::ServerContextBase* context = nullptr);

// gRPC -> absl: same code, same message. When `context` (the finished call's)
// holds a well-formed pushback trailer and the code is RESOURCE_EXHAUSTED, the
// result carries it as a retry hint.
absl::Status FromGrpcStatus(const grpc::Status& status, const grpc::ClientContext* context = nullptr);

// Code mappings alone. Values outside the known range map to UNKNOWN.
grpc::StatusCode ToGrpcCode(absl::StatusCode code);
absl::StatusCode FromGrpcCode(grpc::StatusCode code);

}  // namespace sirocco::services
