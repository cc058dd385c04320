// services::Server and CallGate against real gRPC clients on loopback: health
// through drain, refusal of new calls while draining, in-flight streams that
// finish (or are cancelled) at shutdown, reflection, worker-token checks, the
// retry-pushback trailer on the wire, and a taken port.
#include "services/server.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/byte_buffer.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "services/status_mapping.h"
#include "sirocco/v1/sirocco.grpc.pb.h"
#include "sirocco/worker/v1/worker.grpc.pb.h"

namespace sirocco::services {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

constexpr char kHoldRequestId[] = "hold";  // Chat streams one delta, then waits for Release()
constexpr char kOverloadRequestId[] = "overload";

// A minimal sirocco.v1 service: GetModelInfo answers, Chat streams three
// deltas and a Final, and both ask the gate first as real services must.
class TestSiroccoService final : public sirocco::v1::Sirocco::CallbackService {
 public:
  explicit TestSiroccoService(std::shared_ptr<const CallGate> gate) : gate_(std::move(gate)) {}

  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const sirocco::v1::GetModelInfoRequest* /*request*/,
                                         sirocco::v1::ModelInfo* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    absl::Status status = gate_->AdmitPublic();
    if (status.ok() && overload_.load()) status = OverloadedError("all workers busy", absl::Milliseconds(250));
    if (status.ok()) response->set_model_name("test-model");
    reactor->Finish(ToGrpcStatus(status, context));
    return reactor;
  }

  grpc::ServerWriteReactor<sirocco::v1::ChatResponse>* Chat(grpc::CallbackServerContext* context,
                                                           const sirocco::v1::ChatRequest* request) override;

  // Lets every held Chat stream finish.
  void Release() {
    absl::MutexLock lock(&mu_);
    released_ = true;
    for (ChatReactor* reactor : held_) reactor->ContinueLocked();
    held_.clear();
  }
  void set_overload(bool on) { overload_ = on; }
  int streams_done() const { return streams_done_.load(); }

 private:
  class ChatReactor final : public grpc::ServerWriteReactor<sirocco::v1::ChatResponse> {
   public:
    ChatReactor(TestSiroccoService* service, bool hold) : service_(service), hold_(hold) {
      absl::MutexLock lock(&service_->mu_);
      WriteNextLocked();
    }
    void OnWriteDone(bool ok) override {
      absl::MutexLock lock(&service_->mu_);
      if (!ok || finished_) return;  // cancelled: OnCancel finishes
      if (hold_ && sent_ == 1 && !service_->released_) {
        service_->held_.insert(this);
        return;
      }
      WriteNextLocked();
    }
    void OnCancel() override {
      absl::MutexLock lock(&service_->mu_);
      service_->held_.erase(this);
      if (!finished_) {
        finished_ = true;
        Finish(grpc::Status::CANCELLED);
      }
    }
    void OnDone() override {
      {
        absl::MutexLock lock(&service_->mu_);
        service_->held_.erase(this);
      }
      ++service_->streams_done_;
      delete this;
    }
    void ContinueLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(service_->mu_) {
      if (!finished_) WriteNextLocked();
    }

   private:
    void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(service_->mu_) {
      if (sent_ < 3) {
        response_.Clear();
        response_.mutable_delta()->set_text(std::string(1, static_cast<char>('a' + sent_)));
      } else if (sent_ == 3) {
        response_.Clear();
        response_.mutable_final()->set_finish_reason(sirocco::v1::FINISH_REASON_STOP);
      } else {
        finished_ = true;
        Finish(grpc::Status::OK);
        return;
      }
      ++sent_;
      StartWrite(&response_);
    }

    TestSiroccoService* const service_;
    const bool hold_;
    int sent_ = 0;
    bool finished_ = false;
    sirocco::v1::ChatResponse response_;
  };

  const std::shared_ptr<const CallGate> gate_;
  std::atomic<bool> overload_{false};
  std::atomic<int> streams_done_{0};
  absl::Mutex mu_;
  bool released_ ABSL_GUARDED_BY(mu_) = false;
  std::set<ChatReactor*> held_ ABSL_GUARDED_BY(mu_);
};

// A reactor that refuses: used when the gate says no before any write.
class RefusedChat final : public grpc::ServerWriteReactor<sirocco::v1::ChatResponse> {
 public:
  explicit RefusedChat(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

grpc::ServerWriteReactor<sirocco::v1::ChatResponse>* TestSiroccoService::Chat(
    grpc::CallbackServerContext* context, const sirocco::v1::ChatRequest* request) {
  if (absl::Status status = gate_->AdmitPublic(); !status.ok()) return new RefusedChat(ToGrpcStatus(status, context));
  return new ChatReactor(this, request->request_id() == kHoldRequestId);
}

// The worker API's GetLoad, behind the worker-token check.
class TestWorkerService final : public sirocco::worker::v1::Worker::CallbackService {
 public:
  explicit TestWorkerService(std::shared_ptr<const CallGate> gate) : gate_(std::move(gate)) {}
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* context,
                                    const sirocco::worker::v1::GetLoadRequest* /*request*/,
                                    sirocco::worker::v1::Load* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    absl::Status status = gate_->AdmitWorker(*context);
    if (status.ok()) response->set_worker_id("worker-0");
    reactor->Finish(ToGrpcStatus(status, context));
    return reactor;
  }

 private:
  const std::shared_ptr<const CallGate> gate_;
};

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_.listen_address = "127.0.0.1:0";
    options_.worker_auth_token = "s3cret";
    gate_ = std::make_shared<CallGate>(options_);
    sirocco_ = std::make_unique<TestSiroccoService>(gate_);
    worker_ = std::make_unique<TestWorkerService>(gate_);
    auto server = Server::Create(options_,
                                 {{sirocco_.get(), sirocco::v1::Sirocco::service_full_name()},
                                  {worker_.get(), sirocco::worker::v1::Worker::service_full_name()}},
                                 gate_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    ASSERT_GT(server_->port(), 0);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()), grpc::InsecureChannelCredentials());
  }
  void TearDown() override {
    if (sirocco_ != nullptr) sirocco_->Release();
    server_.reset();
  }

  static std::unique_ptr<grpc::ClientContext> Context(absl::Duration timeout = absl::Seconds(10)) {
    auto context = std::make_unique<grpc::ClientContext>();
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    return context;
  }

  HealthCheckResponse::ServingStatus Health(const std::string& service) {
    auto stub = grpc::health::v1::Health::NewStub(channel_);
    HealthCheckRequest request;
    request.set_service(service);
    HealthCheckResponse response;
    auto context = Context();
    grpc::Status status = stub->Check(context.get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
    return response.status();
  }

  grpc::Status GetModelInfo(sirocco::v1::ModelInfo* info, grpc::ClientContext* context = nullptr) {
    auto stub = sirocco::v1::Sirocco::NewStub(channel_);
    std::unique_ptr<grpc::ClientContext> own = Context();
    return stub->GetModelInfo(context != nullptr ? context : own.get(), {}, info);
  }

  ServerOptions options_;
  std::shared_ptr<CallGate> gate_;
  std::unique_ptr<TestSiroccoService> sirocco_;
  std::unique_ptr<TestWorkerService> worker_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(ServerTest, ServesAndReportsHealthForEveryService) {
  sirocco::v1::ModelInfo info;
  grpc::Status status = GetModelInfo(&info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(info.model_name(), "test-model");
  EXPECT_EQ(Health(""), HealthCheckResponse::SERVING);
  EXPECT_EQ(Health("sirocco.v1.Sirocco"), HealthCheckResponse::SERVING);
  EXPECT_EQ(Health("sirocco.worker.v1.Worker"), HealthCheckResponse::SERVING);
}

TEST_F(ServerTest, UnknownHealthServiceIsNotFound) {
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  HealthCheckRequest request;
  request.set_service("no.such.Service");
  HealthCheckResponse response;
  auto context = Context();
  EXPECT_EQ(stub->Check(context.get(), request, &response).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServerTest, DrainTurnsHealthNotServingAndRefusesNewCalls) {
  server_->Drain();
  EXPECT_TRUE(gate_->draining());
  EXPECT_EQ(Health(""), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Health("sirocco.v1.Sirocco"), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(Health("sirocco.worker.v1.Worker"), HealthCheckResponse::NOT_SERVING);

  sirocco::v1::ModelInfo info;
  grpc::Status status = GetModelInfo(&info);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_NE(status.error_message().find("draining"), std::string::npos) << status.error_message();

  auto stub = sirocco::v1::Sirocco::NewStub(channel_);
  auto context = Context();
  auto reader = stub->Chat(context.get(), sirocco::v1::ChatRequest());
  sirocco::v1::ChatResponse response;
  EXPECT_FALSE(reader->Read(&response));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(ServerTest, DrainThroughTheGateFlipsHealthToo) {
  gate_->StartDrain();  // what a worker's Drain RPC does
  EXPECT_EQ(Health(""), HealthCheckResponse::NOT_SERVING);
}

TEST_F(ServerTest, ShutdownLetsAnInFlightStreamFinish) {
  auto stub = sirocco::v1::Sirocco::NewStub(channel_);
  auto context = Context();
  sirocco::v1::ChatRequest request;
  request.set_request_id(kHoldRequestId);
  auto reader = stub->Chat(context.get(), request);
  sirocco::v1::ChatResponse response;
  ASSERT_TRUE(reader->Read(&response));
  EXPECT_EQ(response.delta().text(), "a");

  // The stream is held; shutdown with a generous grace must wait for it.
  absl::Notification stopped;
  std::thread shutdown([&] {
    server_->Shutdown(absl::Seconds(20));
    stopped.Notify();
  });
  EXPECT_FALSE(stopped.WaitForNotificationWithTimeout(absl::Milliseconds(300)));
  sirocco_->Release();

  std::string text = response.delta().text();
  bool got_final = false;
  while (reader->Read(&response)) {
    if (response.has_final()) {
      got_final = true;
      EXPECT_EQ(response.final().finish_reason(), sirocco::v1::FINISH_REASON_STOP);
    } else {
      text += response.delta().text();
    }
  }
  grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_EQ(text, "abc");
  EXPECT_TRUE(got_final);
  EXPECT_TRUE(stopped.WaitForNotificationWithTimeout(absl::Seconds(10)));
  shutdown.join();

  // Stopped: new connections are refused.
  sirocco::v1::ModelInfo info;
  auto short_context = Context(absl::Seconds(1));
  EXPECT_FALSE(GetModelInfo(&info, short_context.get()).ok());
}

TEST_F(ServerTest, ShutdownCancelsStreamsPastTheGrace) {
  auto stub = sirocco::v1::Sirocco::NewStub(channel_);
  auto context = Context();
  sirocco::v1::ChatRequest request;
  request.set_request_id(kHoldRequestId);
  auto reader = stub->Chat(context.get(), request);
  sirocco::v1::ChatResponse response;
  ASSERT_TRUE(reader->Read(&response));

  const absl::Time start = absl::Now();
  server_->Shutdown(absl::Milliseconds(200));
  const absl::Duration took = absl::Now() - start;
  EXPECT_GE(took, absl::Milliseconds(150));
  EXPECT_LT(took, absl::Seconds(5));
  while (reader->Read(&response)) {
  }
  EXPECT_FALSE(reader->Finish().ok());
  // The reactor saw the cancel and ended (OnDone may trail Shutdown a little).
  for (int i = 0; i < 500 && sirocco_->streams_done() == 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_EQ(sirocco_->streams_done(), 1);
}

TEST_F(ServerTest, WaitReturnsAfterRequestShutdown) {
  absl::Notification returned;
  std::thread waiter([&] {
    server_->Wait();
    returned.Notify();
  });
  EXPECT_FALSE(returned.WaitForNotificationWithTimeout(absl::Milliseconds(200)));
  server_->RequestShutdown();  // what the SIGTERM callback does
  EXPECT_TRUE(returned.WaitForNotificationWithTimeout(absl::Seconds(30)));
  waiter.join();
  EXPECT_TRUE(gate_->draining());
}

TEST_F(ServerTest, OverloadCarriesRetryPushbackOnTheWire) {
  sirocco_->set_overload(true);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  sirocco::v1::ModelInfo info;
  grpc::Status status = GetModelInfo(&info, &context);
  ASSERT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(status.error_message(), "all workers busy");
  const auto& trailers = context.GetServerTrailingMetadata();
  auto it = trailers.find(kRetryPushbackTrailer);
  ASSERT_NE(it, trailers.end());
  EXPECT_EQ(std::string(it->second.data(), it->second.size()), "250");

  // What a router does with a worker's answer: the hint survives.
  absl::Status back = FromGrpcStatus(status, &context);
  EXPECT_EQ(back.code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(RetryPushback(back).has_value());
  EXPECT_EQ(*RetryPushback(back), absl::Milliseconds(250));
}

TEST_F(ServerTest, WorkerCallsNeedTheToken) {
  auto stub = sirocco::worker::v1::Worker::NewStub(channel_);
  sirocco::worker::v1::Load load;

  auto none = Context();
  EXPECT_EQ(stub->GetLoad(none.get(), {}, &load).error_code(), grpc::StatusCode::UNAUTHENTICATED);

  auto wrong = Context();
  AttachWorkerToken(*wrong, "s3cre7");
  EXPECT_EQ(stub->GetLoad(wrong.get(), {}, &load).error_code(), grpc::StatusCode::UNAUTHENTICATED);

  auto prefix = Context();
  AttachWorkerToken(*prefix, "s3cret-and-more");
  EXPECT_EQ(stub->GetLoad(prefix.get(), {}, &load).error_code(), grpc::StatusCode::UNAUTHENTICATED);

  auto twice = Context();
  AttachWorkerToken(*twice, "s3cret");
  AttachWorkerToken(*twice, "s3cret");
  EXPECT_EQ(stub->GetLoad(twice.get(), {}, &load).error_code(), grpc::StatusCode::UNAUTHENTICATED);

  auto right = Context();
  AttachWorkerToken(*right, "s3cret");
  grpc::Status status = stub->GetLoad(right.get(), {}, &load);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(load.worker_id(), "worker-0");

  // Auth comes first: a draining worker still rejects a bad token as such.
  server_->Drain();
  auto wrong_draining = Context();
  EXPECT_EQ(stub->GetLoad(wrong_draining.get(), {}, &load).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  auto right_draining = Context();
  AttachWorkerToken(*right_draining, "s3cret");
  EXPECT_EQ(stub->GetLoad(right_draining.get(), {}, &load).error_code(), grpc::StatusCode::UNAVAILABLE);
}

// Reflection, read with a generic stub (no reflection.proto of our own, see
// protos/CMakeLists.txt): ServerReflectionRequest{list_services: "*"} is
// field 7, a string; the reply names the services.
TEST_F(ServerTest, ReflectionListsTheServices) {
  grpc::GenericStub stub(channel_);
  grpc::CompletionQueue cq;
  auto context = Context();
  auto call =
      stub.PrepareCall(context.get(), "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto await = [&cq](std::intptr_t expected) {
    void* tag = nullptr;
    bool ok = false;
    EXPECT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(reinterpret_cast<std::intptr_t>(tag), expected);
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(await(1));
  const std::string request_bytes("\x3a\x01*", 3);
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  call->Write(request, reinterpret_cast<void*>(2));
  ASSERT_TRUE(await(2));
  grpc::ByteBuffer reply;
  call->Read(&reply, reinterpret_cast<void*>(3));
  ASSERT_TRUE(await(3));
  call->WritesDone(reinterpret_cast<void*>(4));
  await(4);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  await(5);
  EXPECT_TRUE(status.ok()) << status.error_message();

  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(reply.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  for (const char* name : {"sirocco.v1.Sirocco", "sirocco.worker.v1.Worker", "grpc.health.v1.Health"}) {
    EXPECT_NE(bytes.find(name), std::string::npos) << name;
  }
}

TEST(ServerCreateTest, ATakenPortIsAnError) {
  ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  auto gate = std::make_shared<CallGate>(options);
  TestSiroccoService service(gate);
  auto first = Server::Create(options, {{&service, "sirocco.v1.Sirocco"}}, gate);
  ASSERT_TRUE(first.ok()) << first.status();

  options.listen_address = "127.0.0.1:" + std::to_string((*first)->port());
  TestSiroccoService other(gate);
  auto second = Server::Create(options, {{&other, "sirocco.v1.Sirocco"}}, gate);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
}

TEST(ServerCreateTest, BadOptionsNameTheField) {
  ServerOptions options;
  auto gate = std::make_shared<CallGate>(options);
  options.listen_address = "nowhere";
  auto server = Server::Create(options, {}, gate);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(server.status().message(), "listen_address:")) << server.status();

  options.listen_address = "127.0.0.1:0";
  options.drain_grace = absl::Seconds(-1);
  server = Server::Create(options, {}, gate);
  EXPECT_TRUE(absl::StartsWith(server.status().message(), "drain_grace:")) << server.status();

  options.drain_grace = absl::Seconds(1);
  server = Server::Create(options, {{nullptr, "x"}}, gate);
  EXPECT_TRUE(absl::StartsWith(server.status().message(), "services[0]:")) << server.status();

  server = Server::Create(options, {}, nullptr);
  EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ServerCreateTest, AGateAlreadyDrainingStartsNotServing) {
  ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  auto gate = std::make_shared<CallGate>(options);
  gate->StartDrain();
  TestSiroccoService service(gate);
  auto server = Server::Create(options, {{&service, "sirocco.v1.Sirocco"}}, gate);
  ASSERT_TRUE(server.ok()) << server.status();
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string((*server)->port()),
                                     grpc::InsecureChannelCredentials());
  auto stub = grpc::health::v1::Health::NewStub(channel);
  HealthCheckResponse response;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  ASSERT_TRUE(stub->Check(&context, {}, &response).ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
}

}  // namespace
}  // namespace sirocco::services
