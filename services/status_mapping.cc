#include "services/status_mapping.h"

#include <charconv>
#include <cstdint>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace sirocco::services {
namespace {

// The absl::Status payload that carries a retry hint: decimal milliseconds.
constexpr char kRetryPushbackPayload[] = "type.sirocco/retry-pushback-ms";

absl::string_view AbslView(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Parses a non-negative decimal integer that fits int64; nullopt otherwise
// (gRFC A6: anything else means "do not retry", which is no hint for us).
std::optional<std::int64_t> ParseMillis(std::string_view text) {
  if (text.empty() || text.size() > 18) return std::nullopt;
  std::int64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < 0) return std::nullopt;
  return value;
}

std::int64_t CeilMillis(absl::Duration d) {
  if (d <= absl::ZeroDuration()) return 0;
  return absl::ToInt64Milliseconds(absl::Ceil(d, absl::Milliseconds(1)));
}

}  // namespace

absl::Status OverloadedError(std::string_view message, absl::Duration retry_after) {
  absl::Status status = absl::ResourceExhaustedError(AbslView(message));
  status.SetPayload(kRetryPushbackPayload, absl::Cord(absl::StrCat(CeilMillis(retry_after))));
  return status;
}

std::optional<absl::Duration> RetryPushback(const absl::Status& status) {
  absl::optional<absl::Cord> payload = status.GetPayload(kRetryPushbackPayload);
  if (!payload.has_value()) return std::nullopt;
  std::string text(*payload);
  std::optional<std::int64_t> ms = ParseMillis(text);
  if (!ms.has_value()) return std::nullopt;
  return absl::Milliseconds(*ms);
}

absl::Status InvalidFieldError(std::string_view field_path, std::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat(AbslView(field_path), ": ", AbslView(problem)));
}

absl::Status DrainingError() { return absl::UnavailableError("server is draining: retry on another replica"); }

grpc::StatusCode ToGrpcCode(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return grpc::StatusCode::OK;
    case absl::StatusCode::kCancelled: return grpc::StatusCode::CANCELLED;
    case absl::StatusCode::kUnknown: return grpc::StatusCode::UNKNOWN;
    case absl::StatusCode::kInvalidArgument: return grpc::StatusCode::INVALID_ARGUMENT;
    case absl::StatusCode::kDeadlineExceeded: return grpc::StatusCode::DEADLINE_EXCEEDED;
    case absl::StatusCode::kNotFound: return grpc::StatusCode::NOT_FOUND;
    case absl::StatusCode::kAlreadyExists: return grpc::StatusCode::ALREADY_EXISTS;
    case absl::StatusCode::kPermissionDenied: return grpc::StatusCode::PERMISSION_DENIED;
    case absl::StatusCode::kResourceExhausted: return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case absl::StatusCode::kFailedPrecondition: return grpc::StatusCode::FAILED_PRECONDITION;
    case absl::StatusCode::kAborted: return grpc::StatusCode::ABORTED;
    case absl::StatusCode::kOutOfRange: return grpc::StatusCode::OUT_OF_RANGE;
    case absl::StatusCode::kUnimplemented: return grpc::StatusCode::UNIMPLEMENTED;
    case absl::StatusCode::kInternal: return grpc::StatusCode::INTERNAL;
    case absl::StatusCode::kUnavailable: return grpc::StatusCode::UNAVAILABLE;
    case absl::StatusCode::kDataLoss: return grpc::StatusCode::DATA_LOSS;
    case absl::StatusCode::kUnauthenticated: return grpc::StatusCode::UNAUTHENTICATED;
    default: return grpc::StatusCode::UNKNOWN;
  }
}

absl::StatusCode FromGrpcCode(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return absl::StatusCode::kOk;
    case grpc::StatusCode::CANCELLED: return absl::StatusCode::kCancelled;
    case grpc::StatusCode::UNKNOWN: return absl::StatusCode::kUnknown;
    case grpc::StatusCode::INVALID_ARGUMENT: return absl::StatusCode::kInvalidArgument;
    case grpc::StatusCode::DEADLINE_EXCEEDED: return absl::StatusCode::kDeadlineExceeded;
    case grpc::StatusCode::NOT_FOUND: return absl::StatusCode::kNotFound;
    case grpc::StatusCode::ALREADY_EXISTS: return absl::StatusCode::kAlreadyExists;
    case grpc::StatusCode::PERMISSION_DENIED: return absl::StatusCode::kPermissionDenied;
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return absl::StatusCode::kResourceExhausted;
    case grpc::StatusCode::FAILED_PRECONDITION: return absl::StatusCode::kFailedPrecondition;
    case grpc::StatusCode::ABORTED: return absl::StatusCode::kAborted;
    case grpc::StatusCode::OUT_OF_RANGE: return absl::StatusCode::kOutOfRange;
    case grpc::StatusCode::UNIMPLEMENTED: return absl::StatusCode::kUnimplemented;
    case grpc::StatusCode::INTERNAL: return absl::StatusCode::kInternal;
    case grpc::StatusCode::UNAVAILABLE: return absl::StatusCode::kUnavailable;
    case grpc::StatusCode::DATA_LOSS: return absl::StatusCode::kDataLoss;
    case grpc::StatusCode::UNAUTHENTICATED: return absl::StatusCode::kUnauthenticated;
    default: return absl::StatusCode::kUnknown;
  }
}

grpc::Status ToGrpcStatus(const absl::Status& status, grpc::ServerContextBase* context) {
  if (status.ok()) return grpc::Status::OK;
  if (context != nullptr && status.code() == absl::StatusCode::kResourceExhausted) {
    if (std::optional<absl::Duration> pushback = RetryPushback(status); pushback.has_value()) {
      context->AddTrailingMetadata(kRetryPushbackTrailer, absl::StrCat(absl::ToInt64Milliseconds(*pushback)));
    }
  }
  return grpc::Status(ToGrpcCode(status.code()), std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status, const grpc::ClientContext* context) {
  if (status.ok()) return absl::OkStatus();
  const absl::StatusCode code = FromGrpcCode(status.error_code());
  if (context != nullptr && code == absl::StatusCode::kResourceExhausted) {
    const auto& trailers = context->GetServerTrailingMetadata();
    if (auto it = trailers.find(kRetryPushbackTrailer); it != trailers.end()) {
      if (std::optional<std::int64_t> ms = ParseMillis(std::string_view(it->second.data(), it->second.size()));
          ms.has_value()) {
        return OverloadedError(status.error_message(), absl::Milliseconds(*ms));
      }
    }
  }
  return absl::Status(code, status.error_message());
}

}  // namespace sirocco::services
