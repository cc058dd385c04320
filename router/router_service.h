// sirocco-router's gRPC services: the public sirocco.v1.Sirocco API (Chat,
// Generate, Tokenize, GetModelInfo) on top of the worker API.
//
// WorkerDirectory owns the router's view of its workers: the policy library's
// WorkerPool (under one mutex), a channel + stub per worker, a load loop that
// polls GetLoad on every worker and a discovery loop that re-resolves DNS
// names. RouterService drives each request with callback reactors only (no
// handler blocks): async unary calls for Reserve / Prefill / Cancel and a
// ClientReadReactor for the Decode stream.
//
// Request path (architecture.md, "One request, step by step"):
//   validate -> render (text::InstructFormat) -> admission -> pick workers ->
//   colocated worker (role BOTH): one Decode with local_prefill (every token)
//   disaggregated: Reserve on D -> Prefill on P with the KvTarget (UNAVAILABLE:
//   another P) -> Decode on D. The KV transfer failed (ABORTED) or no prefill
//   worker is left: Decode on D with local_prefill (D prefills itself).
//   A decode worker lost mid-stream (UNAVAILABLE): Decode with local_prefill
//   and the tokens so far on another decode worker (at most twice).
// The client's deadline and cancellation reach every worker call
// (ClientContext::FromCallbackServerContext plus TryCancel on OnCancel).
//
// Thread-safety: RouterService and WorkerDirectory are safe to use from any
// thread; each request's reactor serialises its own state with a mutex.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/channel.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "engine/text/instruct.h"
#include "engine/text/output_parser.h"
#include "engine/text/tekken.h"
#include "router/discovery.h"
#include "router/worker_pool.h"
#include "services/call_gate.h"
#include "services/metrics.h"
#include "sirocco/v1/sirocco.grpc.pb.h"
#include "sirocco/worker/v1/worker.grpc.pb.h"

namespace sirocco::router {

// A fixed worker address or a DNS name, with the role its workers have.
struct WorkerSource {
  std::string address;  // host:port
  WorkerRole role = WorkerRole::kBoth;
  bool dns = false;  // re-resolve periodically (else used as given)
};

struct DirectoryOptions {
  std::vector<WorkerSource> sources;
  std::string worker_token;
  absl::Duration load_interval = absl::Milliseconds(200);
  absl::Duration dns_interval = absl::Seconds(10);
  // A worker whose last report is older than this is unhealthy.
  absl::Duration max_report_age = absl::Seconds(3);
  AdmissionLimits admission;
  // WorkerPool::set_prefix_routing.
  bool prefix_routing = true;
};

class WorkerDirectory {
 public:
  explicit WorkerDirectory(DirectoryOptions options);
  ~WorkerDirectory();  // stops the loops
  WorkerDirectory(const WorkerDirectory&) = delete;
  WorkerDirectory& operator=(const WorkerDirectory&) = delete;

  // Resolves every source once, polls every worker once, then starts the
  // loops.
  void Start();
  // Blocks until at least one worker is healthy or `timeout` passes.
  bool WaitForHealthy(absl::Duration timeout);

  // Picks the decode worker (possibly role BOTH) for `blocks` KV blocks.
  absl::StatusOr<WorkerState> PickDecode(std::int64_t blocks);
  // Prefix-aware: see WorkerPool's policy.
  absl::StatusOr<WorkerId> PickPrefill(std::span<const std::int32_t> prompt, const std::set<WorkerId>& exclude);
  void DoneDecode(const WorkerId& id, std::int64_t blocks);
  std::int64_t CachedOnDecode(const WorkerId& id, std::span<const std::int32_t> prompt);
  void RecordDecoded(const WorkerId& id, std::span<const std::int32_t> tokens);
  void DonePrefill(const WorkerId& id, std::int64_t prompt_tokens);
  void MarkUnhealthy(const WorkerId& id);
  Admission TryAdmit(std::int64_t prompt_tokens);
  void Release(std::int64_t prompt_tokens);

  // The stub for a worker address (created on first use).
  std::shared_ptr<sirocco::worker::v1::Worker::Stub> Stub(const WorkerId& id);
  const std::string& worker_token() const { return options_.worker_token; }
  std::vector<WorkerState> Snapshot();
  // The smallest context length a healthy worker reports (0 when none does):
  // a request the router admits must fit every worker it may go to.
  std::int64_t WorkerContextLength();
  // WorkerPool::ImagesSupported.
  bool ImagesSupported();

  // Polls GetLoad on every worker now (the loop's body).
  void PollOnce();
  void ResolveOnce();

 private:
  void LoadLoop();
  void DnsLoop();

  const DirectoryOptions options_;
  absl::Mutex mu_;
  WorkerPool pool_ ABSL_GUARDED_BY(mu_);
  AdmissionController admission_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<sirocco::worker::v1::Worker::Stub>> stubs_ ABSL_GUARDED_BY(mu_);
  absl::Notification stop_;
  std::thread load_thread_;
  std::thread dns_thread_;
};

struct RouterOptions {
  std::string model_name = "mistral-small-4";
  std::string model_fingerprint;
  // The longest prompt + output the router admits; workers that report a
  // smaller one (their model's) lower it (WorkerDirectory::WorkerContextLength).
  std::int32_t context_length = 32768;
  std::uint32_t layout_version = 2;  // transfer::kKvLayoutVersion
  sirocco::v1::ReasoningEffort default_reasoning_effort = sirocco::v1::REASONING_EFFORT_NONE;
  sirocco::v1::Limits limits;  // zero fields take the defaults of DefaultLimits()
  // The router's serving metrics (requests, TTFT, e2e, tokens); null: none.
  // Must outlive the service.
  const services::ServingMetrics* metrics = nullptr;
  // Conditional disaggregation: when the picked decode worker likely holds
  // all of a prompt but at most this many tokens in its prefix cache (a
  // follow-up turn of a conversation it served), it prefills the rest itself
  // and no prefill worker or KV transfer is involved. 0: always disaggregate.
  std::int64_t local_prefill_max_tokens = 256;
  // Accept image parts when the tokenizer renders images (its file has an
  // image section); the workers' model must have a vision encoder. Limits
  // then default to 8 images of up to 10 MiB each.
  bool images = true;
};

sirocco::v1::Limits DefaultLimits(std::int32_t context_length);

class RouterService final : public sirocco::v1::Sirocco::CallbackService {
 public:
  // The tokenizer and the directory must outlive the service.
  static absl::StatusOr<std::unique_ptr<RouterService>> Create(RouterOptions options, const text::Tekkenizer* tokenizer,
                                                               WorkerDirectory* directory,
                                                               std::shared_ptr<services::CallGate> gate);
  // Waits (up to 30 s) for requests still winding down their worker calls.
  // Destroy the service after the Server has shut down.
  ~RouterService() override;

  // Chat and Generate streams not yet ended (what a drain waits for).
  int live_streams() const;

  grpc::ServerWriteReactor<sirocco::v1::ChatResponse>* Chat(grpc::CallbackServerContext* context,
                                                            const sirocco::v1::ChatRequest* request) override;
  grpc::ServerWriteReactor<sirocco::v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const sirocco::v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context, const sirocco::v1::TokenizeRequest* request,
                                     sirocco::v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const sirocco::v1::GetModelInfoRequest* request,
                                         sirocco::v1::ModelInfo* response) override;

  // Validates and renders a chat request into prompt ids (INVALID_ARGUMENT
  // naming the field). Public for tests and Tokenize.
  absl::StatusOr<std::vector<std::int32_t>> RenderChat(const sirocco::v1::ChatRequest& request) const;
  // As RenderChat, with the images the workers take (placeholder offsets and
  // grids filled in).
  struct RenderedPrompt {
    std::vector<std::int32_t> ids;
    std::vector<sirocco::worker::v1::ImageInput> images;
    std::vector<std::string> image_fields;  // each image's field in the request
  };
  absl::StatusOr<RenderedPrompt> RenderChatWithImages(const sirocco::v1::ChatRequest& request) const;

  struct Shared;  // what every request reads: options, tokenizer, directory

 private:
  explicit RouterService(std::shared_ptr<Shared> shared) : shared_(std::move(shared)) {}
  std::shared_ptr<Shared> shared_;
};

}  // namespace sirocco::router
