// The absl <-> gRPC status mapping, code by code, and the error helpers the
// architecture's error policy relies on. (The pushback trailer on the wire is
// tested in server_test.cc, against a real server.)
#include "services/status_mapping.h"

#include <gtest/gtest.h>

#include <string>

namespace sirocco::services {
namespace {

struct CodePair {
  absl::StatusCode absl_code;
  grpc::StatusCode grpc_code;
};

// Written out by hand from the two enums' documentation, not from the code
// under test: every absl code and the gRPC code it must become.
constexpr CodePair kTable[] = {
    {absl::StatusCode::kCancelled, grpc::StatusCode::CANCELLED},
    {absl::StatusCode::kUnknown, grpc::StatusCode::UNKNOWN},
    {absl::StatusCode::kInvalidArgument, grpc::StatusCode::INVALID_ARGUMENT},
    {absl::StatusCode::kDeadlineExceeded, grpc::StatusCode::DEADLINE_EXCEEDED},
    {absl::StatusCode::kNotFound, grpc::StatusCode::NOT_FOUND},
    {absl::StatusCode::kAlreadyExists, grpc::StatusCode::ALREADY_EXISTS},
    {absl::StatusCode::kPermissionDenied, grpc::StatusCode::PERMISSION_DENIED},
    {absl::StatusCode::kResourceExhausted, grpc::StatusCode::RESOURCE_EXHAUSTED},
    {absl::StatusCode::kFailedPrecondition, grpc::StatusCode::FAILED_PRECONDITION},
    {absl::StatusCode::kAborted, grpc::StatusCode::ABORTED},
    {absl::StatusCode::kOutOfRange, grpc::StatusCode::OUT_OF_RANGE},
    {absl::StatusCode::kUnimplemented, grpc::StatusCode::UNIMPLEMENTED},
    {absl::StatusCode::kInternal, grpc::StatusCode::INTERNAL},
    {absl::StatusCode::kUnavailable, grpc::StatusCode::UNAVAILABLE},
    {absl::StatusCode::kDataLoss, grpc::StatusCode::DATA_LOSS},
    {absl::StatusCode::kUnauthenticated, grpc::StatusCode::UNAUTHENTICATED},
};

TEST(StatusMappingTest, EveryCodeMapsBothWaysWithItsMessage) {
  for (const CodePair& pair : kTable) {
    const std::string message = "message for code " + std::to_string(static_cast<int>(pair.absl_code));
    grpc::Status out = ToGrpcStatus(absl::Status(pair.absl_code, message));
    EXPECT_EQ(out.error_code(), pair.grpc_code) << message;
    EXPECT_EQ(out.error_message(), message);

    absl::Status back = FromGrpcStatus(grpc::Status(pair.grpc_code, message));
    EXPECT_EQ(back.code(), pair.absl_code) << message;
    EXPECT_EQ(back.message(), message);

    EXPECT_EQ(ToGrpcCode(pair.absl_code), pair.grpc_code);
    EXPECT_EQ(FromGrpcCode(pair.grpc_code), pair.absl_code);
  }
}

TEST(StatusMappingTest, OkIsOkBothWays) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(StatusMappingTest, UnknownCodesBecomeUnknown) {
  EXPECT_EQ(ToGrpcCode(static_cast<absl::StatusCode>(42)), grpc::StatusCode::UNKNOWN);
  EXPECT_EQ(FromGrpcCode(static_cast<grpc::StatusCode>(42)), absl::StatusCode::kUnknown);
}

TEST(StatusMappingTest, ErrorPolicyHelpers) {
  absl::Status invalid = InvalidFieldError("messages[2].content[0].image.mime_type", "'image/bmp' is not supported");
  EXPECT_EQ(ToGrpcStatus(invalid).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(invalid.message(), "messages[2].content[0].image.mime_type: 'image/bmp' is not supported");

  EXPECT_EQ(ToGrpcStatus(DrainingError()).error_code(), grpc::StatusCode::UNAVAILABLE);

  absl::Status overloaded = OverloadedError("queue full", absl::Milliseconds(1500));
  EXPECT_EQ(ToGrpcStatus(overloaded).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(overloaded.message(), "queue full");
}

TEST(StatusMappingTest, RetryPushbackRoundsUpToWholeMillisecondsAndClampsAtZero) {
  EXPECT_EQ(RetryPushback(OverloadedError("x", absl::Milliseconds(250))), absl::Milliseconds(250));
  EXPECT_EQ(RetryPushback(OverloadedError("x", absl::Microseconds(1200))), absl::Milliseconds(2));
  EXPECT_EQ(RetryPushback(OverloadedError("x", absl::Microseconds(1))), absl::Milliseconds(1));
  EXPECT_EQ(RetryPushback(OverloadedError("x", absl::ZeroDuration())), absl::ZeroDuration());
  EXPECT_EQ(RetryPushback(OverloadedError("x", absl::Seconds(-3))), absl::ZeroDuration());
}

TEST(StatusMappingTest, OnlyOverloadErrorsCarryAHint) {
  EXPECT_FALSE(RetryPushback(absl::ResourceExhaustedError("plain")).has_value());
  EXPECT_FALSE(RetryPushback(absl::OkStatus()).has_value());
  EXPECT_FALSE(RetryPushback(absl::UnavailableError("x")).has_value());
}

TEST(StatusMappingTest, WithoutAClientContextNoHintComesBack) {
  absl::Status back = FromGrpcStatus(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "busy"));
  EXPECT_EQ(back.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(RetryPushback(back).has_value());
}

}  // namespace
}  // namespace sirocco::services
