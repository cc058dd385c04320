// A scripted sirocco.v1.Sirocco server for the load generator's tests: a real
// in-process gRPC server on 127.0.0.1:0 whose Generate and Chat streams follow
// a known schedule, so the metrics the bench computes can be checked against
// hand-computed values.
//
// Schedule of every stream of max_tokens = n (from the stream's start, on the
// server's steady clock): delta k (k = 0..n-1, one token each) at
// first_chunk + k * interval, then a Final with usage (prompt = prompt ids or
// 0, completion = n), finish LENGTH and the fixed kTiming.
// Failures on purpose: the request whose request_id is "bench-I" with
// I % fail_every == fail_every - 1 fails with RESOURCE_EXHAUSTED before any
// delta (fail_every 0: never); a Chat request with an image part fails with
// INVALID_ARGUMENT.
//
// Thread-safety: the sync server runs each stream on its own thread; the
// counters are atomic.
#pragma once

#include <grpc/grpc.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "sirocco/v1/sirocco.grpc.pb.h"
#include "sirocco/worker/v1/worker.grpc.pb.h"

namespace sirocco::bench::testing {

struct Script {
  std::chrono::milliseconds first_chunk{50};
  std::chrono::milliseconds interval{20};
  int fail_every = 0;
};

inline sirocco::v1::Timing KnownTiming() {
  sirocco::v1::Timing t;
  t.set_queue_us(1100);
  t.set_prefill_us(2200);
  t.set_kv_transfer_us(330);
  t.set_first_decode_step_us(4400);
  t.set_ttft_us(50500);
  t.set_e2e_us(90900);
  return t;
}

class ScriptedService final : public sirocco::v1::Sirocco::Service {
 public:
  explicit ScriptedService(Script script) : script_(script) {}

  grpc::Status GetModelInfo(grpc::ServerContext*, const sirocco::v1::GetModelInfoRequest*,
                            sirocco::v1::ModelInfo* info) override {
    info->set_model_name("scripted");
    info->set_vocab_size(32000);
    info->set_context_length(4096);
    info->set_server_version("test");
    return grpc::Status::OK;
  }

  grpc::Status Generate(grpc::ServerContext* context, const sirocco::v1::GenerateRequest* request,
                        grpc::ServerWriter<sirocco::v1::GenerateResponse>* writer) override {
    ++generate_calls_;
    if (Fails(request->request_id())) return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "scripted overload");
    return Stream(context, request->token_ids().ids_size(), request->stop().max_tokens(), writer);
  }

  grpc::Status Chat(grpc::ServerContext* context, const sirocco::v1::ChatRequest* request,
                    grpc::ServerWriter<sirocco::v1::ChatResponse>* writer) override {
    ++chat_calls_;
    int images = 0;
    for (const auto& m : request->messages()) {
      for (const auto& part : m.content()) {
        if (!part.has_image()) continue;
        ++images;
        std::lock_guard<std::mutex> lock(mu_);
        image_kinds_.insert(part.image().mime_type() + ":" + std::to_string(part.image().data().size()));
      }
    }
    if (images > 0) {
      std::lock_guard<std::mutex> lock(mu_);
      images_per_request_.insert(images);
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "images not supported");
    }
    if (Fails(request->request_id())) return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "scripted overload");
    if (request->reasoning_effort() == sirocco::v1::REASONING_EFFORT_HIGH) ++high_effort_calls_;
    return Stream(context, 0, request->stop().max_tokens(), writer);
  }

  int generate_calls() const { return generate_calls_.load(); }
  int chat_calls() const { return chat_calls_.load(); }
  int high_effort_calls() const { return high_effort_calls_.load(); }
  // What the image requests carried: "mime:bytes" of each part seen, and
  // the numbers of image parts per request.
  std::set<std::string> image_kinds() const {
    std::lock_guard<std::mutex> lock(mu_);
    return image_kinds_;
  }
  std::set<int> images_per_request() const {
    std::lock_guard<std::mutex> lock(mu_);
    return images_per_request_;
  }

 private:
  bool Fails(const std::string& request_id) const {
    long long index = 0;
    if (script_.fail_every <= 0 || request_id.rfind("bench-", 0) != 0 ||
        !absl::SimpleAtoi(request_id.substr(6), &index) || index < 0)
      return false;
    return index % script_.fail_every == script_.fail_every - 1;
  }

  template <typename Response>
  grpc::Status Stream(grpc::ServerContext* context, int prompt_tokens, int n, grpc::ServerWriter<Response>* writer) {
    const auto start = std::chrono::steady_clock::now();
    for (int k = 0; k < n; ++k) {
      std::this_thread::sleep_until(start + script_.first_chunk + k * script_.interval);
      if (context->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
      Response r;
      r.mutable_delta()->add_token_ids(1000 + k);
      if (!writer->Write(r)) return grpc::Status(grpc::StatusCode::CANCELLED, "write failed");
    }
    Response r;
    auto* f = r.mutable_final();
    f->set_finish_reason(sirocco::v1::FINISH_REASON_LENGTH);
    f->mutable_usage()->set_prompt_tokens(prompt_tokens);
    f->mutable_usage()->set_completion_tokens(n);
    *f->mutable_timing() = KnownTiming();
    writer->Write(r);
    return grpc::Status::OK;
  }

  const Script script_;
  std::atomic<int> generate_calls_{0}, chat_calls_{0}, high_effort_calls_{0};
  mutable std::mutex mu_;
  std::set<std::string> image_kinds_;  // guarded by mu_
  std::set<int> images_per_request_;   // guarded by mu_
};

// The same schedule as a colocated worker's internal API (the bench's
// --direct-worker): Decode with local_prefill streams tokens 1..n one by
// one, the first after first_chunk and then every `interval`, the finish
// with the last. Every call needs the worker token kWorkerToken.
inline constexpr char kWorkerToken[] = "scripted-token";

class ScriptedWorker final : public sirocco::worker::v1::Worker::Service {
 public:
  explicit ScriptedWorker(Script script) : script_(script) {}

  grpc::Status GetLoad(grpc::ServerContext* context, const sirocco::worker::v1::GetLoadRequest*,
                       sirocco::worker::v1::Load* load) override {
    if (!Authorized(*context)) return Unauthenticated();
    load->set_worker_id("scripted-worker");
    load->set_role(sirocco::worker::v1::WORKER_ROLE_BOTH);
    load->set_vocab_size(32000);
    load->set_context_length(4096);
    return grpc::Status::OK;
  }

  grpc::Status Decode(grpc::ServerContext* context, const sirocco::worker::v1::DecodeRequest* request,
                      grpc::ServerWriter<sirocco::worker::v1::DecodeResponse>* writer) override {
    if (!Authorized(*context)) return Unauthenticated();
    ++decodes_;
    if (!request->local_prefill() || request->output_token_ids_size() != 0 || !request->reservation_id().empty())
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "want local_prefill, no tokens, no reservation");
    const auto start = std::chrono::steady_clock::now();
    const int n = static_cast<int>(request->stop().max_tokens());
    for (int k = 0; k < n; ++k) {
      std::this_thread::sleep_until(start + script_.first_chunk + k * script_.interval);
      sirocco::worker::v1::DecodeResponse r;
      r.add_token_ids(1000 + k);
      if (k + 1 == n) r.mutable_finish()->set_reason(sirocco::worker::v1::DecodeFinish::REASON_LENGTH);
      if (!writer->Write(r)) return grpc::Status(grpc::StatusCode::CANCELLED, "write failed");
    }
    return grpc::Status::OK;
  }

  int decodes() const { return decodes_.load(); }

 private:
  static bool Authorized(const grpc::ServerContext& context) {
    auto it = context.client_metadata().find("x-sirocco-worker-token");
    return it != context.client_metadata().end() && it->second == kWorkerToken;
  }
  static grpc::Status Unauthenticated() { return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "bad token"); }

  const Script script_;
  std::atomic<int> decodes_{0};
};

class ScriptedServer {
 public:
  explicit ScriptedServer(Script script = {}) : service_(script), worker_(script) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&service_);
    builder.RegisterService(&worker_);
    server_ = builder.BuildAndStart();
    PinCallbackQueue(target());
  }
  ~ScriptedServer() { server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5)); }

  std::string target() const { return absl::StrCat("127.0.0.1:", port_); }
  ScriptedService& service() { return service_; }
  ScriptedWorker& worker() { return worker_; }

 private:
  // gRPC 1.51 (Debian 12) may abort ("prior > 0" in its callback completion
  // queue's thread) when the last channel that made callback calls goes away
  // and a new one starts one, as happens between tests. One channel that made
  // a callback call, kept for the whole test binary, holds that queue.
  static void PinCallbackQueue(const std::string& target) {
    static const bool kPinned = [&] {
      grpc_init();
      auto* channel =
          new std::shared_ptr<grpc::Channel>(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
      auto stub = sirocco::v1::Sirocco::NewStub(*channel);
      grpc::ClientContext context;
      sirocco::v1::GetModelInfoRequest request;
      sirocco::v1::ModelInfo info;
      std::promise<void> done;
      stub->async()->GetModelInfo(&context, &request, &info, [&](grpc::Status) { done.set_value(); });
      done.get_future().wait();
      return true;
    }();
    (void)kPinned;
  }

  ScriptedService service_;
  ScriptedWorker worker_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
};

}  // namespace sirocco::bench::testing
