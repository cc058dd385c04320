// The router's service against fake workers: real gRPC servers in this
// process implementing sirocco.worker.v1 with scripted tokens. Covers the
// colocated path (Prefill then Decode on one worker of role BOTH), the
// disaggregated path (Reserve -> Prefill with the KvTarget -> Decode, with the
// ABORTED-transfer fallback to local_prefill and the UNAVAILABLE retry on
// another prefill worker), stop strings, validation, 16 concurrent streams
// and cancellation freeing every worker block.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>
#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "engine/text/tekken_file.h"
#include "router/router_service.h"
#include "services/server.h"
#include "services/status_mapping.h"

namespace sirocco::router {
namespace {

namespace v1 = ::sirocco::v1;
namespace wk = ::sirocco::worker::v1;

constexpr char kToken[] = "test-token";

// A scripted worker: Prefill samples script[0], Decode streams the rest.
class FakeWorker final : public wk::Worker::Service {
 public:
  FakeWorker(wk::WorkerRole role, std::vector<std::int32_t> script, std::string id)
      : role_(role), script_(std::move(script)), id_(std::move(id)) {}

  grpc::Status Reserve(grpc::ServerContext* context, const wk::ReserveRequest* request, wk::KvTarget* target) override {
    if (grpc::Status s = Auth(context); !s.ok()) return s;
    if (full) return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "no free KV blocks");
    absl::MutexLock lock(&mu_);
    ++reserves;
    held_[request->request_id()] = 1;
    target->set_reservation_id("res-" + request->request_id());
    target->set_decode_worker_id(id_);
    target->add_block_ids(1);
    return grpc::Status::OK;
  }

  grpc::Status Prefill(grpc::ServerContext* context, const wk::PrefillRequest* request,
                       wk::PrefillResponse* response) override {
    if (grpc::Status s = Auth(context); !s.ok()) return s;
    {
      absl::MutexLock lock(&mu_);
      ++prefills;
      if (request->has_target()) ++prefills_with_target;
      last_prompt_.assign(request->token_ids().begin(), request->token_ids().end());
      last_prefill_images_.assign(request->images().begin(), request->images().end());
      if (unavailable_prefill) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "draining");
      if (abort_transfer && request->has_target()) return grpc::Status(grpc::StatusCode::ABORTED, "transfer failed");
      if (!request->has_target()) held_[request->request_id()] = 1;
    }
    response->set_first_token_id(script_[0]);
    response->set_prefill_worker_id(id_);
    return grpc::Status::OK;
  }

  grpc::Status Decode(grpc::ServerContext* context, const wk::DecodeRequest* request,
                      grpc::ServerWriter<wk::DecodeResponse>* writer) override {
    if (grpc::Status s = Auth(context); !s.ok()) return s;
    {
      absl::MutexLock lock(&mu_);
      ++decodes;
      last_max_tokens = request->stop().max_tokens();
      if (request->local_prefill()) ++local_prefills;
      held_[request->request_id()] = 1;
      if (request->local_prefill()) last_prompt_.assign(request->prompt_token_ids().begin(), request->prompt_token_ids().end());
      last_decode_images_.assign(request->images().begin(), request->images().end());
    }
    auto release = [&] {
      absl::MutexLock lock(&mu_);
      held_.erase(request->request_id());
    };
    std::size_t pos = request->output_token_ids_size();
    std::size_t produced = pos;
    while (pos < script_.size()) {
      if (context->IsCancelled()) {
        release();
        return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
      }
      if (token_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(token_delay_ms.load()));
      wk::DecodeResponse r;
      const std::int32_t id = script_[pos++];
      r.add_token_ids(id);
      ++produced;
      const bool eos = id == eos_id && !request->stop().ignore_eos();
      const bool length = produced >= request->stop().max_tokens();
      if (eos || length || pos == script_.size()) {
        auto* f = r.mutable_finish();
        f->set_reason(eos ? wk::DecodeFinish::REASON_STOP : wk::DecodeFinish::REASON_LENGTH);
        if (eos) f->set_stop_token_id(id);
        f->set_decode_worker_id(id_);
        f->set_local_prefill(request->local_prefill());
        writer->Write(r);
        break;
      }
      if (!writer->Write(r)) break;
    }
    release();
    return grpc::Status::OK;
  }

  grpc::Status Cancel(grpc::ServerContext* context, const wk::CancelRequest* request,
                      wk::CancelResponse* response) override {
    if (grpc::Status s = Auth(context); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    ++cancels;
    response->set_found(held_.erase(request->request_id()) > 0);
    return grpc::Status::OK;
  }

  grpc::Status GetLoad(grpc::ServerContext* context, const wk::GetLoadRequest*, wk::Load* load) override {
    if (grpc::Status s = Auth(context); !s.ok()) return s;
    absl::MutexLock lock(&mu_);
    load->set_worker_id(id_);
    load->set_role(role_);
    load->set_total_blocks(1000);
    load->set_free_blocks(1000 - held_.size());
    load->set_block_size_tokens(16);
    load->set_context_length(context_length);
    load->set_supports_images(supports_images);
    return grpc::Status::OK;
  }

  std::size_t held() {
    absl::MutexLock lock(&mu_);
    return held_.size();
  }
  std::vector<std::int32_t> last_prompt() {
    absl::MutexLock lock(&mu_);
    return last_prompt_;
  }
  std::vector<wk::ImageInput> last_prefill_images() {
    absl::MutexLock lock(&mu_);
    return last_prefill_images_;
  }
  std::vector<wk::ImageInput> last_decode_images() {
    absl::MutexLock lock(&mu_);
    return last_decode_images_;
  }

  std::atomic<int> reserves{0}, prefills{0}, prefills_with_target{0}, decodes{0}, local_prefills{0}, cancels{0};
  std::atomic<bool> abort_transfer{false}, unavailable_prefill{false}, full{false};
  std::atomic<bool> supports_images{true};  // reported in Load
  std::atomic<int> token_delay_ms{0};
  std::atomic<std::int32_t> context_length{0};   // reported in Load (0: not reported)
  std::atomic<std::int64_t> last_max_tokens{0};  // of the last Decode
  std::int32_t eos_id = 2;

 private:
  static grpc::Status Auth(grpc::ServerContext* context) {
    auto it = context->client_metadata().find("x-sirocco-worker-token");
    if (it == context->client_metadata().end() || it->second != kToken)
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "bad token");
    return grpc::Status::OK;
  }

  const wk::WorkerRole role_;
  const std::vector<std::int32_t> script_;
  const std::string id_;
  absl::Mutex mu_;
  std::map<std::string, int> held_;
  std::vector<std::int32_t> last_prompt_;
  std::vector<wk::ImageInput> last_prefill_images_, last_decode_images_;
};

struct RunningWorker {
  std::unique_ptr<FakeWorker> service;
  std::unique_ptr<grpc::Server> server;
  std::string address;
};

RunningWorker StartWorker(wk::WorkerRole role, std::vector<std::int32_t> script, const std::string& id) {
  RunningWorker w;
  w.service = std::make_unique<FakeWorker>(role, std::move(script), id);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(w.service.get());
  w.server = builder.BuildAndStart();
  w.address = "127.0.0.1:" + std::to_string(port);
  return w;
}

class RouterServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tok =
        text::LoadDerivedTekken(std::string(SIROCCO_TEKKEN_DIR) + "/tekken_240911.json", text::TokenizerVersion::kV15);
    ASSERT_TRUE(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
  }

  std::vector<std::int32_t> Script(const std::string& text) {
    std::vector<std::int32_t> ids = tokenizer_->Encode(text);
    ids.push_back(tokenizer_->eos_id());
    return ids;
  }

  void StartRouter(std::vector<WorkerSource> sources) {
    DirectoryOptions options;
    options.sources = std::move(sources);
    options.worker_token = kToken;
    options.load_interval = absl::Milliseconds(50);
    directory_ = std::make_unique<WorkerDirectory>(options);
    directory_->Start();
    ASSERT_TRUE(directory_->WaitForHealthy(absl::Seconds(5)));
    services::ServerOptions server_options;
    server_options.listen_address = "127.0.0.1:0";
    gate_ = std::make_shared<services::CallGate>(server_options);
    RouterOptions router_options;
    router_options.context_length = 4096;
    auto metrics = services::RegisterServingMetrics(registry_, {"test-model", "router"}, 4096);
    ASSERT_TRUE(metrics.ok()) << metrics.status();
    metrics_ = *metrics;
    router_options.metrics = &metrics_;
    auto service = RouterService::Create(router_options, tokenizer_, directory_.get(), gate_);
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = *std::move(service);
    auto server = services::Server::Create(server_options, {{service_.get(), v1::Sirocco::service_full_name()}}, gate_);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
    stub_ = v1::Sirocco::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()), grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    if (server_) server_->Shutdown(absl::Seconds(1));
    server_.reset();
    service_.reset();
    directory_.reset();
    for (auto& w : workers_) w.server->Shutdown();
  }

  static v1::ChatRequest UserChat(const std::string& text) {
    v1::ChatRequest r;
    auto* m = r.add_messages();
    m->set_role(v1::ROLE_USER);
    m->add_content()->set_text(text);
    r.mutable_sampling()->set_temperature(0);
    return r;
  }

  struct ChatResult {
    grpc::Status status;
    std::string text, reasoning;
    int deltas = 0;
    bool has_final = false;
    v1::Final final;
    std::string pushback_ms;  // the grpc-retry-pushback-ms trailer, if any
  };

  ChatResult RunChat(const v1::ChatRequest& request) {
    ChatResult result;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    auto reader = stub_->Chat(&context, request);
    v1::ChatResponse response;
    while (reader->Read(&response)) {
      if (response.has_delta()) {
        ++result.deltas;
        result.text += response.delta().text();
        result.reasoning += response.delta().reasoning();
      } else if (response.has_final()) {
        result.has_final = true;
        result.final = response.final();
      }
    }
    result.status = reader->Finish();
    const auto& trailers = context.GetServerTrailingMetadata();
    if (auto it = trailers.find(services::kRetryPushbackTrailer); it != trailers.end()) {
      result.pushback_ms.assign(it->second.data(), it->second.size());
    }
    return result;
  }

  static inline text::Tekkenizer* tokenizer_ = nullptr;
  prometheus::Registry registry_;
  services::ServingMetrics metrics_;
  std::vector<RunningWorker> workers_;
  std::unique_ptr<WorkerDirectory> directory_;
  std::shared_ptr<services::CallGate> gate_;
  std::unique_ptr<RouterService> service_;
  std::unique_ptr<services::Server> server_;
  std::unique_ptr<v1::Sirocco::Stub> stub_;
};

TEST_F(RouterServiceTest, ColocatedChatStreamsTheScriptedAnswer) {
  workers_.push_back(StartWorker(wk::WORKER_ROLE_BOTH, Script("Hello there, how are you?"), "w0"));
  workers_[0].service->eos_id = tokenizer_->eos_id();
  StartRouter({{workers_[0].address, WorkerRole::kBoth, false}});
  ChatResult r = RunChat(UserChat("Hi"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_TRUE(r.has_final);
  EXPECT_EQ(r.text, "Hello there, how are you?");
  EXPECT_EQ(r.final.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(r.final.usage().completion_tokens(), static_cast<int>(Script("Hello there, how are you?").size()));
  EXPECT_GT(r.final.usage().prompt_tokens(), 0);
  EXPECT_EQ(r.final.prefill_worker(), "w0");
  EXPECT_EQ(r.final.decode_worker(), "w0");
  // Colocated: one Decode computes the prompt and streams every token.
  EXPECT_EQ(workers_[0].service->prefills, 0);
  EXPECT_EQ(workers_[0].service->decodes, 1);
  EXPECT_EQ(workers_[0].service->local_prefills, 1);
  EXPECT_EQ(metrics_.request_success_for(services::RequestFinish::kStop).Value(), 1);
  EXPECT_EQ(metrics_.generation_tokens->Value(), r.final.usage().completion_tokens());
  EXPECT_EQ(workers_[0].service->reserves, 0);
  // The prompt the worker saw is what Tokenize says Chat renders.
  v1::TokenizeRequest treq;
  *treq.mutable_chat() = UserChat("Hi");
  v1::TokenizeResponse tresp;
  grpc::ClientContext tctx;
  ASSERT_TRUE(stub_->Tokenize(&tctx, treq, &tresp).ok());
  EXPECT_EQ(std::vector<std::int32_t>(tresp.token_ids().begin(), tresp.token_ids().end()),
            workers_[0].service->last_prompt());
  for (int i = 0; i < 50 && workers_[0].service->held() != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(workers_[0].service->held(), 0u);
}

TEST_F(RouterServiceTest, StopStringEndsTheTextBeforeTheMatch) {
  workers_.push_back(StartWorker(wk::WORKER_ROLE_BOTH, Script("Hello there, how are you?"), "w0"));
  workers_[0].service->eos_id = tokenizer_->eos_id();
  StartRouter({{workers_[0].address, WorkerRole::kBoth, false}});
  v1::ChatRequest req = UserChat("Hi");
  req.mutable_stop()->add_stop(", how");
  ChatResult r = RunChat(req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, "Hello there");
  EXPECT_EQ(r.final.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(r.final.stop_string(), ", how");
}

TEST_F(RouterServiceTest, MaxTokensEndsWithLength) {
  workers_.push_back(StartWorker(wk::WORKER_ROLE_BOTH, Script("one two three four five six"), "w0"));
  workers_[0].service->eos_id = tokenizer_->eos_id();
  StartRouter({{workers_[0].address, WorkerRole::kBoth, false}});
  v1::ChatRequest req = UserChat("Hi");
  req.mutable_stop()->set_max_tokens(3);
  ChatResult r = RunChat(req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.final.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(r.final.usage().completion_tokens(), 3);
}

TEST_F(RouterServiceTest, BadRequestIsInvalidArgumentNamingTheField) {
  workers_.push_back(StartWorker(wk::WORKER_ROLE_BOTH, Script("x"), "w0"));
  StartRouter({{workers_[0].address, WorkerRole::kBoth, false}});
  v1::ChatRequest req = UserChat("Hi");
  req.mutable_sampling()->set_temperature(5);
  ChatResult r = RunChat(req);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(r.status.error_message().rfind("sampling.temperature", 0), 0u) << r.status.error_message();
  v1::ChatRequest bad_role = UserChat("Hi");
  bad_role.add_messages();  // role unset
  r = RunChat(bad_role);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(r.status.error_message().rfind("messages[1].role", 0), 0u) << r.status.error_message();
  r = RunChat(v1::ChatRequest());
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(r.status.error_message().rfind("messages", 0), 0u) << r.status.error_message();
  EXPECT_EQ(workers_[0].service->prefills, 0);
}

TEST_F(RouterServiceTest, SixteenConcurrentChats) {
  workers_.push_back(StartWorker(wk::WORKER_ROLE_BOTH, Script("The quick brown fox jumps."), "w0"));
  workers_[0].service->eos_id = tokenizer_->eos_id();
  StartRouter({{workers_[0].address, WorkerRole::kBoth, false}});
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&] {
      ChatResult r = RunChat(UserChat("Hi"));
      if (r.status.ok() && r.text == "The quick brown fox jumps." && r.has_final) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok, 16);
  for (int i = 0; i < 50 && workers_[0].service->held() != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(workers_[0].service->held(), 0u);
}

TEST_F(RouterServiceTest, CancelMidStreamFreesTheWorker) {
  std::string long_text;
  for (int i = 0; i < 200; ++i) long_text += " word";
  workers_.push_back(StartWorker(wk::WORKER_ROLE_BOTH, Script(long_text), "w0"));
  workers_[0].service->eos_id = tokenizer_->eos_id();
  workers_[0].service->token_delay_ms = 10;
  StartRouter({{workers_[0].address, WorkerRole::kBoth, false}});
  grpc::ClientContext context;
  auto reader = stub_->Chat(&context, UserChat("Hi"));
  v1::ChatResponse response;
  int deltas = 0;
  while (deltas < 3 && reader->Read(&response)) ++deltas;
  EXPECT_EQ(deltas, 3);
  context.TryCancel();
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  for (int i = 0; i < 100 && workers_[0].service->held() != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(workers_[0].service->held(), 0u);
}

TEST_F(RouterServiceTest, ClientDeadlineReachesTheWorker) {
  std::string long_text;
  for (int i = 0; i < 200; ++i) long_text += " word";
  workers_.push_back(StartWorker(wk::WORKER_ROLE_BOTH, Script(long_text), "w0"));
  workers_[0].service->eos_id = tokenizer_->eos_id();
  workers_[0].service->token_delay_ms = 10;
  StartRouter({{workers_[0].address, WorkerRole::kBoth, false}});
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  auto reader = stub_->Chat(&context, UserChat("Hi"));
  v1::ChatResponse response;
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  for (int i = 0; i < 100 && workers_[0].service->held() != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(workers_[0].service->held(), 0u);
}

TEST_F(RouterServiceTest, WorkersLowerTheContextLength) {
  // The router admits 4096 tokens; the worker's model holds 40. A request
  // without max_tokens gets what is left of the worker's 40, one asking for
  // more than that is refused naming the field, and GetModelInfo says 40.
  std::string long_text;
  for (int i = 0; i < 60; ++i) long_text += " word";
  workers_.push_back(StartWorker(wk::WORKER_ROLE_BOTH, Script(long_text), "w0"));
  workers_[0].service->eos_id = tokenizer_->eos_id();
  workers_[0].service->context_length = 40;
  StartRouter({{workers_[0].address, WorkerRole::kBoth, false}});
  ChatResult r = RunChat(UserChat("Hi"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  const std::int64_t n = static_cast<std::int64_t>(workers_[0].service->last_prompt().size());
  ASSERT_GT(n, 0);
  EXPECT_EQ(workers_[0].service->last_max_tokens, 40 - n);
  EXPECT_EQ(r.final.usage().completion_tokens(), 40 - n);

  v1::ChatRequest too_long = UserChat("Hi");
  too_long.mutable_stop()->set_max_tokens(41 - static_cast<std::int32_t>(n));
  ChatResult refused = RunChat(too_long);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(refused.status.error_message().find("stop.max_tokens"), std::string::npos)
      << refused.status.error_message();

  grpc::ClientContext ictx;
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&ictx, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.context_length(), 40);
  EXPECT_EQ(info.limits().max_output_tokens(), 39);
}

TEST_F(RouterServiceTest, DisaggregatedReservePrefillDecode) {
  const std::string answer = "Disaggregated answer.";
  workers_.push_back(StartWorker(wk::WORKER_ROLE_PREFILL, Script(answer), "p0"));
  workers_.push_back(StartWorker(wk::WORKER_ROLE_DECODE, Script(answer), "d0"));
  for (auto& w : workers_) w.service->eos_id = tokenizer_->eos_id();
  StartRouter({{workers_[0].address, WorkerRole::kPrefill, false}, {workers_[1].address, WorkerRole::kDecode, false}});
  ChatResult r = RunChat(UserChat("Hi"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, answer);
  EXPECT_EQ(r.final.prefill_worker(), "p0");
  EXPECT_EQ(r.final.decode_worker(), "d0");
  EXPECT_EQ(workers_[1].service->reserves, 1);
  EXPECT_EQ(workers_[0].service->prefills_with_target, 1);
  EXPECT_EQ(workers_[1].service->decodes, 1);
  EXPECT_EQ(workers_[1].service->local_prefills, 0);
  for (int i = 0; i < 50 && workers_[1].service->held() != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(workers_[1].service->held(), 0u);
}

TEST_F(RouterServiceTest, TransferFailureFallsBackToLocalPrefill) {
  const std::string answer = "Fallback answer.";
  workers_.push_back(StartWorker(wk::WORKER_ROLE_PREFILL, Script(answer), "p0"));
  workers_.push_back(StartWorker(wk::WORKER_ROLE_DECODE, Script(answer), "d0"));
  for (auto& w : workers_) w.service->eos_id = tokenizer_->eos_id();
  workers_[0].service->abort_transfer = true;
  StartRouter({{workers_[0].address, WorkerRole::kPrefill, false}, {workers_[1].address, WorkerRole::kDecode, false}});
  ChatResult r = RunChat(UserChat("Hi"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, answer);
  EXPECT_EQ(workers_[1].service->local_prefills, 1);
  for (int i = 0; i < 50 && workers_[0].service->held() != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(workers_[0].service->held(), 0u);  // the prefill worker's local KV was cancelled
}

// A decode worker out of KV blocks: the client gets RESOURCE_EXHAUSTED with a
// retry pushback, and nothing is left held anywhere.
TEST_F(RouterServiceTest, FullDecodeWorkerIsResourceExhaustedWithPushback) {
  const std::string answer = "Later.";
  workers_.push_back(StartWorker(wk::WORKER_ROLE_PREFILL, Script(answer), "p0"));
  workers_.push_back(StartWorker(wk::WORKER_ROLE_DECODE, Script(answer), "d0"));
  workers_[1].service->full = true;
  StartRouter({{workers_[0].address, WorkerRole::kPrefill, false}, {workers_[1].address, WorkerRole::kDecode, false}});
  ChatResult r = RunChat(UserChat("Hi"));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << r.status.error_message();
  EXPECT_EQ(r.pushback_ms, "1000");
  EXPECT_EQ(workers_[0].service->prefills, 0);
  EXPECT_EQ(workers_[1].service->held(), 0u);
}

TEST_F(RouterServiceTest, UnavailablePrefillRetriesAnotherWorker) {
  const std::string answer = "Retried answer.";
  workers_.push_back(StartWorker(wk::WORKER_ROLE_PREFILL, Script(answer), "p0"));
  workers_.push_back(StartWorker(wk::WORKER_ROLE_PREFILL, Script(answer), "p1"));
  workers_.push_back(StartWorker(wk::WORKER_ROLE_DECODE, Script(answer), "d0"));
  for (auto& w : workers_) w.service->eos_id = tokenizer_->eos_id();
  workers_[0].service->unavailable_prefill = true;
  workers_[1].service->unavailable_prefill = true;
  StartRouter({{workers_[0].address, WorkerRole::kPrefill, false},
               {workers_[1].address, WorkerRole::kPrefill, false},
               {workers_[2].address, WorkerRole::kDecode, false}});
  // Both fail: the decode worker prefills the prompt itself.
  ChatResult r = RunChat(UserChat("Hi"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, answer);
  EXPECT_EQ(workers_[0].service->prefills + workers_[1].service->prefills, 2);
  EXPECT_EQ(r.final.prefill_worker(), "d0");
  // One recovers: the retry reaches it.
  workers_[1].service->unavailable_prefill = false;
  directory_->PollOnce();
  r = RunChat(UserChat("Hi"));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, answer);
  EXPECT_EQ(r.final.prefill_worker(), "p1");
}

TEST_F(RouterServiceTest, GenerateAndModelInfo) {
  workers_.push_back(StartWorker(wk::WORKER_ROLE_BOTH, Script("raw completion"), "w0"));
  workers_[0].service->eos_id = tokenizer_->eos_id();
  StartRouter({{workers_[0].address, WorkerRole::kBoth, false}});
  v1::GenerateRequest req;
  req.set_text("Once upon");
  grpc::ClientContext context;
  auto reader = stub_->Generate(&context, req);
  v1::GenerateResponse response;
  std::string text;
  bool final = false;
  while (reader->Read(&response)) {
    if (response.has_delta()) text += response.delta().text();
    if (response.has_final()) final = true;
  }
  ASSERT_TRUE(reader->Finish().ok());
  EXPECT_TRUE(final);
  EXPECT_EQ(text, "raw completion");
  grpc::ClientContext ictx;
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&ictx, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.vocab_size(), tokenizer_->vocab_size());
  EXPECT_EQ(info.context_length(), 4096);
  EXPECT_GT(info.limits().max_prompt_tokens(), 0);
}

// The header of a PNG file of the given size (all the router reads of it).
std::string PngHeader(std::uint32_t width, std::uint32_t height) {
  std::string png = "\x89PNG\r\n\x1a\n";
  auto be32 = [&](std::uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8) png += static_cast<char>((v >> shift) & 0xff);
  };
  be32(13);
  png += "IHDR";
  be32(width);
  be32(height);
  png += std::string("\x08\x02\x00\x00\x00", 5);
  be32(0);  // CRC (not checked by the router)
  return png;
}

TEST_F(RouterServiceTest, ImagesReachTheWorkersWithTheirPlaceholders) {
  const std::string answer = "A picture.";
  workers_.push_back(StartWorker(wk::WORKER_ROLE_PREFILL, Script(answer), "p0"));
  workers_.push_back(StartWorker(wk::WORKER_ROLE_DECODE, Script(answer), "d0"));
  for (auto& w : workers_) w.service->eos_id = tokenizer_->eos_id();
  StartRouter({{workers_[0].address, WorkerRole::kPrefill, false}, {workers_[1].address, WorkerRole::kDecode, false}});
  grpc::ClientContext ictx;
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&ictx, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_TRUE(info.supports_images());
  EXPECT_GT(info.limits().max_images(), 0);
  EXPECT_GT(info.limits().max_image_bytes(), 0);
  EXPECT_EQ(std::vector<std::string>(info.image_mime_types().begin(), info.image_mime_types().end()),
            (std::vector<std::string>{"image/png", "image/jpeg", "image/webp"}));

  // Two images: 60x30 pixels is a 3x2 grid of 28-pixel cells (patch 14,
  // merge 2), 20x90 a 1x4 grid.
  v1::ChatRequest req = UserChat("Compare these.");
  auto* content = req.mutable_messages(0)->mutable_content();
  for (auto [w, h] : {std::pair<std::uint32_t, std::uint32_t>{60, 30}, {20, 90}}) {
    auto* image = content->Add()->mutable_image();
    image->set_data(PngHeader(w, h));
    image->set_mime_type("image/png");
  }
  ChatResult r = RunChat(req);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.text, answer);
  const std::vector<std::int32_t> prompt = workers_[0].service->last_prompt();
  const std::vector<wk::ImageInput> sent = workers_[0].service->last_prefill_images();
  ASSERT_EQ(sent.size(), 2u);
  const std::int32_t img = *tokenizer_->SpecialTokenId("[IMG]");
  const std::int32_t brk = *tokenizer_->SpecialTokenId("[IMG_BREAK]");
  const std::int32_t end = *tokenizer_->SpecialTokenId("[IMG_END]");
  const std::pair<std::uint32_t, std::uint32_t> grids[] = {{3, 2}, {1, 4}};
  std::size_t placeholders = 0;
  for (std::size_t i = 0; i < sent.size(); ++i) {
    EXPECT_EQ(sent[i].mime_type(), "image/png");
    EXPECT_EQ(sent[i].data(), PngHeader(i == 0 ? 60 : 20, i == 0 ? 30 : 90));
    EXPECT_EQ(sent[i].grid_width(), grids[i].first);
    EXPECT_EQ(sent[i].grid_height(), grids[i].second);
    // The grid's rows of [IMG], each closed by [IMG_BREAK], the last by [IMG_END].
    std::size_t at = sent[i].token_offset();
    for (std::uint32_t row = 0; row < sent[i].grid_height(); ++row) {
      for (std::uint32_t col = 0; col < sent[i].grid_width(); ++col) {
        ASSERT_LT(at, prompt.size());
        EXPECT_EQ(prompt[at++], img);
      }
      ASSERT_LT(at, prompt.size());
      EXPECT_EQ(prompt[at++], row + 1 == sent[i].grid_height() ? end : brk);
    }
    placeholders += sent[i].grid_width() * sent[i].grid_height();
  }
  EXPECT_EQ(static_cast<std::size_t>(std::count(prompt.begin(), prompt.end(), img)), placeholders);
  // The decode worker gets them too, for a recompute after preemption.
  EXPECT_EQ(workers_[1].service->last_decode_images().size(), 2u);
}

TEST_F(RouterServiceTest, BadImagesAreInvalidArgumentNamingTheField) {
  workers_.push_back(StartWorker(wk::WORKER_ROLE_BOTH, Script("x"), "w0"));
  StartRouter({{workers_[0].address, WorkerRole::kBoth, false}});
  auto with_image = [](const std::string& data, const std::string& mime, v1::Role role = v1::ROLE_USER) {
    v1::ChatRequest req = UserChat("Look.");
    req.mutable_messages(0)->set_role(role);
    auto* image = req.mutable_messages(0)->add_content()->mutable_image();
    image->set_data(data);
    image->set_mime_type(mime);
    return req;
  };
  const struct {
    v1::ChatRequest req;
    std::string field;
  } cases[] = {
      {with_image("", "image/png"), "messages[0].content[1].image.data"},
      {with_image(PngHeader(8, 8), "image/gif"), "messages[0].content[1].image.mime_type"},
      {with_image(std::string(11 << 20, 'x'), "image/png"), "messages[0].content[1].image.data"},
      {with_image(PngHeader(8, 8), "image/png", v1::ROLE_SYSTEM), "messages[0].content[1].image"},
      {with_image("not an image at all", "image/png"), "messages[0].content[1].image.data"},
      {with_image(PngHeader(8, 8), "image/jpeg"), "messages[0].content[1].image.data"},
      // A PNG signature with a broken header: the renderer cannot size it.
      {with_image(PngHeader(8, 8).substr(0, 12), "image/png"), "messages"},
  };
  for (const auto& c : cases) {
    ChatResult r = RunChat(c.req);
    EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.field;
    EXPECT_EQ(r.status.error_message().rfind(c.field, 0), 0u) << r.status.error_message();
  }
  v1::ChatRequest many = UserChat("Many.");
  for (int i = 0; i < 9; ++i) {
    auto* image = many.mutable_messages(0)->add_content()->mutable_image();
    image->set_data(PngHeader(8, 8));
    image->set_mime_type("image/png");
  }
  ChatResult r = RunChat(many);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("limits.max_images"), std::string::npos) << r.status.error_message();
  EXPECT_EQ(workers_[0].service->prefills, 0);
}

TEST_F(RouterServiceTest, ImagesNeedEveryWorkerToTakeThem) {
  workers_.push_back(StartWorker(wk::WORKER_ROLE_PREFILL, Script("x"), "p0"));
  workers_.push_back(StartWorker(wk::WORKER_ROLE_DECODE, Script("x"), "d0"));
  workers_[1].service->supports_images = false;  // a text-only model
  StartRouter({{workers_[0].address, WorkerRole::kPrefill, false}, {workers_[1].address, WorkerRole::kDecode, false}});
  for (int i = 0; i < 250; ++i) {
    const auto snapshot = directory_->Snapshot();
    if (std::count_if(snapshot.begin(), snapshot.end(), [](const auto& w) { return w.healthy; }) == 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  grpc::ClientContext ictx;
  v1::ModelInfo info;
  ASSERT_TRUE(stub_->GetModelInfo(&ictx, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_FALSE(info.supports_images());
  EXPECT_EQ(info.limits().max_images(), 0);
  EXPECT_EQ(info.image_mime_types_size(), 0);
  v1::ChatRequest req = UserChat("Look.");
  auto* image = req.mutable_messages(0)->add_content()->mutable_image();
  image->set_data(PngHeader(8, 8));
  image->set_mime_type("image/png");
  ChatResult r = RunChat(req);
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(r.status.error_message().find("no vision encoder"), std::string::npos) << r.status.error_message();
  EXPECT_EQ(workers_[0].service->prefills, 0);
}

}  // namespace
}  // namespace sirocco::router
