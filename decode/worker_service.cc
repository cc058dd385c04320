#include "decode/worker_service.h"

#include "decode/worker_images.h"

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "services/status_mapping.h"
#include "transfer/descriptor.h"

namespace sirocco::decode {

struct WorkerService::TransferJob {
  transfer::PeerHandle peer;
  // Writes must be complete by then: the target reservation's expiry less a
  // margin, or the transfer timeout, whichever is first.
  std::chrono::steady_clock::time_point deadline;
  std::vector<std::int32_t> remote_blocks;
  // Leading remote blocks the target holds already (KvTarget.cached_tokens):
  // shared there, never written.
  std::int64_t shared_blocks = 0;
  std::int64_t prompt_len = 0;
  std::mutex mu;
  std::vector<transfer::TransferId> posted;  // guarded by mu, as the rest
  absl::Status error;
  std::uint64_t bytes = 0;
  bool has_post = false;
  std::chrono::steady_clock::time_point first_post;
  std::int64_t transfer_us = 0;
};

namespace {

namespace wv1 = sirocco::worker::v1;
using engine::ExitReason;
using engine::StreamEvent;

constexpr std::size_t kMaxRequestIdBytes = 128;
// A transfer must end this long before its target reservation expires.
constexpr std::chrono::milliseconds kExpiryMargin{500};

wv1::WorkerRole ToProtoRole(WorkerRole role) {
  switch (role) {
    case WorkerRole::kPrefill:
      return wv1::WORKER_ROLE_PREFILL;
    case WorkerRole::kDecode:
      return wv1::WORKER_ROLE_DECODE;
    case WorkerRole::kBoth:
      return wv1::WORKER_ROLE_BOTH;
  }
  return wv1::WORKER_ROLE_UNSPECIFIED;
}

std::int64_t MicrosSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t).count();
}

absl::Status CheckRequestId(const std::string& id) {
  if (id.empty() || id.size() > kMaxRequestIdBytes) {
    return services::InvalidFieldError("request_id", "must be 1 to 128 bytes");
  }
  return absl::OkStatus();
}

absl::Status CheckTokens(const google::protobuf::RepeatedField<std::int32_t>& ids, const std::string& field,
                         std::int64_t vocab, std::int64_t max_len, bool allow_empty) {
  if (!allow_empty && ids.empty()) return services::InvalidFieldError(field, "must not be empty");
  if (static_cast<std::int64_t>(ids.size()) >= max_len) {
    return services::InvalidFieldError(field, absl::StrCat("must hold fewer than ", max_len, " ids"));
  }
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return services::InvalidFieldError(absl::StrCat(field, "[", i, "]"), absl::StrCat("must be in [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

engine::SamplingParams ToEngine(const wv1::SamplingParams& p) {
  engine::SamplingParams s;
  s.temperature = p.temperature();
  s.top_p = p.top_p();
  s.top_k = p.top_k();
  s.min_p = p.min_p();
  s.presence_penalty = p.presence_penalty();
  s.frequency_penalty = p.frequency_penalty();
  s.repetition_penalty = p.repetition_penalty();
  s.seed = p.seed();
  s.logprobs = p.logprobs();
  return s;
}

void ToProto(const engine::SampleResult& r, wv1::TokenLogprob* out) {
  out->set_token_id(r.token);
  out->set_logprob(r.logprob);
  for (const engine::TokenLogprob& t : r.top) {
    wv1::TopLogprob* top = out->add_top();
    top->set_token_id(t.token);
    top->set_logprob(t.logprob);
  }
}

// The gRPC deadline of a call on the engine's (steady) clock.
engine::SchedTime EngineDeadline(const grpc::CallbackServerContext& context) {
  const auto deadline = context.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return engine::SchedTime::max();
  const auto left = deadline - std::chrono::system_clock::now();
  if (left > std::chrono::hours(24 * 365)) return engine::SchedTime::max();
  return engine::SchedClock::now() + std::chrono::duration_cast<engine::SchedClock::duration>(left);
}

absl::Status RoleError(WorkerRole role, const std::string& rpc) {
  return absl::FailedPreconditionError(absl::StrCat(rpc, " is not served by a worker of role ", WorkerRoleName(role)));
}

// The part of a call the engine thread reaches: on_ready holds it, so it may
// outlive the reactor; `target` is cleared (under `mu`) when the reactor ends.
class Pumpable {
 public:
  virtual ~Pumpable() = default;
  virtual void Pump() = 0;  // called with Link::mu held
};
struct Link {
  std::recursive_mutex mu;
  Pumpable* target = nullptr;
  std::shared_ptr<engine::RequestStream> stream;
};
std::function<void()> OnReady(const std::shared_ptr<Link>& link) {
  return [link] {
    std::lock_guard<std::recursive_mutex> lock(link->mu);
    if (link->target != nullptr) link->target->Pump();
  };
}

// ------------------------------------------------------------------ Prefill

class PrefillReactor final : public grpc::ServerUnaryReactor, public Pumpable {
 public:
  PrefillReactor(WorkerService* service, grpc::CallbackServerContext* context, const wv1::PrefillRequest* request,
                 wv1::PrefillResponse* response)
      : service_(service), request_(request), response_(response), link_(std::make_shared<Link>()) {
    service_->CallStarted();
    link_->target = this;
    const absl::Status st = Start(context);
    if (!st.ok()) {
      const std::shared_ptr<Link> link = link_;
      std::lock_guard<std::recursive_mutex> lock(link->mu);
      Finish(services::ToGrpcStatus(st, context));
    }
  }

  void OnCancel() override {
    if (id_.has_value()) service_->engine().Cancel(*id_);
  }
  void OnDone() override {
    {
      const std::shared_ptr<Link> link = link_;
      std::lock_guard<std::recursive_mutex> lock(link->mu);
      link->target = nullptr;
      link->stream.reset();  // breaks the link -> stream -> on_ready -> link cycle
    }
    if (id_.has_value() && !released_) service_->ReleaseId(request_->request_id());
    service_->CallEnded();
    delete this;
  }

  void Pump() override {
    if (link_->stream == nullptr || done_) return;
    for (StreamEvent& e : link_->stream->Drain()) {
      if (e.type == StreamEvent::Type::kToken) {
        first_ = std::move(e.sample);
        continue;
      }
      done_ = true;
      released_ = true;
      service_->ReleaseId(request_->request_id());
      const std::shared_ptr<WorkerService::TransferJob> job = service_->TakeJob(*id_);
      const bool ok = e.status.ok() && first_.has_value();
      if (job != nullptr) {
        if (!ok) service_->AbortTransfers(*job);
        std::lock_guard<std::mutex> lock(job->mu);
        response_->set_kv_transfer_us(job->transfer_us);
        response_->set_kv_transfer_bytes(job->bytes);
      }
      if (!ok) {
        Finish(services::ToGrpcStatus(e.status.ok() ? absl::InternalError("prefill ended without a token") : e.status));
        return;  // `this` may be gone
      }
      response_->set_first_token_id(request_->kv_only() ? -1 : first_->token);
      if (request_->sampling().logprobs() >= 0 && !request_->kv_only()) ToProto(*first_, response_->mutable_logprob());
      // Queue: received -> first chunk computing; prefill: from there on.
      const auto started = link_->stream->started().value_or(start_);
      response_->set_queue_us(std::chrono::duration_cast<std::chrono::microseconds>(started - start_).count());
      response_->set_cached_tokens(static_cast<std::uint32_t>(link_->stream->cached_tokens()));
      response_->set_prefill_us(MicrosSince(started));
      response_->set_prefill_worker_id(service_->options().worker_id);
      if (const services::ServingMetrics* m = service_->metrics()) {
        m->prompt_tokens->Increment(static_cast<double>(request_->token_ids_size()));
        m->time_to_first_token->Observe(static_cast<double>(MicrosSince(start_)) * 1e-6);
      }
      Finish(grpc::Status::OK);
      return;
    }
  }

 private:
  absl::Status Start(grpc::CallbackServerContext* context) {
    if (absl::Status s = service_->gate().AdmitWorker(*context); !s.ok()) return s;
    const WorkerRole role = service_->options().role;
    if (role == WorkerRole::kDecode) return RoleError(role, "Prefill");
    if (absl::Status s = CheckRequestId(request_->request_id()); !s.ok()) return s;
    const engine::ModelConfig& config = service_->model().config();
    if (absl::Status s =
            CheckTokens(request_->token_ids(), "token_ids", config.vocab_size, config.max_position_embeddings, false);
        !s.ok()) {
      return s;
    }
    absl::StatusOr<std::vector<engine::ImageInput>> images =
        ToEngineImages(request_->images(), request_->token_ids(), service_->model().vision(), "images");
    if (!images.ok()) return images.status();
    images_ = *std::move(images);
    if (!request_->has_target() && role != WorkerRole::kBoth) {
      return absl::FailedPreconditionError("target: required on a worker of role prefill");
    }
    const engine::SchedTime deadline = EngineDeadline(*context);
    if (request_->has_target()) {
      absl::StatusOr<transfer::TargetDescriptor> d = CheckTarget();
      if (!d.ok()) return d.status();
      if (service_->HasPeer(*d)) return ConnectAndContinue(*d, deadline);
      // Connecting may take up to the agent's connect timeout: not on a gRPC
      // callback thread. The call stays open until Continue ends it.
      std::thread([this, d = *std::move(d), deadline, link = link_] {
        std::lock_guard<std::recursive_mutex> lock(link->mu);
        if (absl::Status st = ConnectAndContinue(d, deadline); !st.ok()) Finish(services::ToGrpcStatus(st));
      }).detach();
      return absl::OkStatus();
    }
    return Continue(nullptr, deadline);
  }

  // Connects to the target (unless connected already), then Continue with
  // the transfer job.
  absl::Status ConnectAndContinue(const transfer::TargetDescriptor& target, engine::SchedTime deadline) {
    absl::StatusOr<transfer::PeerHandle> peer = service_->PeerFor(target);
    if (!peer.ok()) {
      return absl::AbortedError(absl::StrCat("KV transfer: cannot reach the target: ", peer.status().message()));
    }
    absl::StatusOr<std::shared_ptr<WorkerService::TransferJob>> job = MakeJob(*peer);
    if (!job.ok()) return job.status();
    return Continue(*std::move(job), deadline);
  }

  // Queues the prefill (with its transfer job, if any) in the engine.
  absl::Status Continue(std::shared_ptr<WorkerService::TransferJob> job, engine::SchedTime deadline) {
    engine::RequestSpec spec;
    spec.prompt.assign(request_->token_ids().begin(), request_->token_ids().end());
    spec.sampling = ToEngine(request_->sampling());
    if (request_->kv_only()) spec.sampling.logprobs = -1;
    absl::StatusOr<engine::structured::ResponseConstraint> response =
        service_->ResponseConstraint(request_->sampling());
    if (!response.ok()) return response.status();
    if (!request_->kv_only()) spec.response = *std::move(response);
    spec.stop.max_tokens = 1;
    spec.stop.ignore_eos = true;
    spec.deadline = deadline;
    spec.prefill_only = job != nullptr;
    spec.images = std::move(images_);
    absl::StatusOr<engine::RequestId> id = service_->AcquireId(request_->request_id());
    if (!id.ok()) return id.status();
    id_ = *id;
    if (job != nullptr) service_->AddJob(*id_, job);
    const std::shared_ptr<Link> link = link_;  // outlives `this` if Pump finishes the call
    std::lock_guard<std::recursive_mutex> lock(link->mu);
    absl::StatusOr<std::shared_ptr<engine::RequestStream>> stream =
        service_->engine().Submit(*id_, std::move(spec), OnReady(link_));
    if (!stream.ok()) {
      released_ = true;
      service_->ReleaseId(request_->request_id());
      service_->TakeJob(*id_);
      return stream.status();
    }
    link_->stream = *std::move(stream);
    Pump();  // may Finish; the constructor touches nothing afterwards
    return absl::OkStatus();
  }

  // Checks the target against this worker; its descriptor.
  absl::StatusOr<transfer::TargetDescriptor> CheckTarget() {
    const WorkerServiceOptions& o = service_->options();
    if (o.agent == nullptr) return absl::UnimplementedError("this worker has no KV transfer agent");
    const wv1::KvTarget& t = request_->target();
    if (t.model_fingerprint() != o.model_fingerprint) {
      return absl::FailedPreconditionError(absl::StrCat("target.model_fingerprint: ", t.model_fingerprint(),
                                                        " at the target, ", o.model_fingerprint, " here"));
    }
    absl::StatusOr<transfer::TargetDescriptor> d = transfer::TargetDescriptor::Parse(t.worker_address());
    if (!d.ok()) return services::InvalidFieldError("target.worker_address", std::string(d.status().message()));
    if (absl::Status s = transfer::CheckCompatible(o.layout, d->layout); !s.ok()) return s;
    const std::int64_t bs = o.layout.block_size;
    const std::int64_t n = request_->token_ids_size();
    if (t.block_ids_size() != (n + bs - 1) / bs) {
      return services::InvalidFieldError("target.block_ids",
                                         absl::StrCat("has ", t.block_ids_size(), " blocks for ", n, " tokens"));
    }
    for (int i = 0; i < t.block_ids_size(); ++i) {
      if (t.block_ids(i) >= d->layout.num_blocks) {
        return services::InvalidFieldError(absl::StrCat("target.block_ids[", i, "]"), "out of the target's pool");
      }
    }
    if (t.cached_tokens() % bs != 0 || t.cached_tokens() >= n) {
      return services::InvalidFieldError(
          "target.cached_tokens",
          absl::StrCat(t.cached_tokens(), " is not whole blocks of ", bs, " fewer than the ", n, " prompt tokens"));
    }
    return *std::move(d);
  }

  // The transfer job of this request to a connected target.
  absl::StatusOr<std::shared_ptr<WorkerService::TransferJob>> MakeJob(transfer::PeerHandle peer) {
    const WorkerServiceOptions& o = service_->options();
    const wv1::KvTarget& t = request_->target();
    auto job = std::make_shared<WorkerService::TransferJob>();
    job->peer = peer;
    const auto now = std::chrono::steady_clock::now();
    job->deadline = now + o.kv_transfer_timeout;
    if (t.expires_at_unix_micros() > 0) {
      // The target's clock is unix time; a transfer must end comfortably
      // before the reservation does.
      const std::int64_t left_us = t.expires_at_unix_micros() - absl::ToUnixMicros(absl::Now()) -
                                   std::chrono::duration_cast<std::chrono::microseconds>(kExpiryMargin).count();
      if (left_us <= 0) return absl::AbortedError("KV transfer: the target reservation expires before it could end");
      job->deadline = std::min(job->deadline, now + std::chrono::microseconds(left_us));
    }
    job->remote_blocks.assign(t.block_ids().begin(), t.block_ids().end());
    job->shared_blocks = static_cast<std::int64_t>(t.cached_tokens()) / o.layout.block_size;
    job->prompt_len = request_->token_ids_size();
    return job;
  }

  WorkerService* const service_;
  const wv1::PrefillRequest* const request_;
  wv1::PrefillResponse* const response_;
  const std::shared_ptr<Link> link_;
  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::optional<engine::RequestId> id_;
  std::optional<engine::SampleResult> first_;
  std::vector<engine::ImageInput> images_;  // from Start to Continue
  bool done_ = false;
  bool released_ = false;
};

// ------------------------------------------------------------------ Decode

class DecodeReactor final : public grpc::ServerWriteReactor<wv1::DecodeResponse>, public Pumpable {
 public:
  DecodeReactor(WorkerService* service, grpc::CallbackServerContext* context, const wv1::DecodeRequest* request)
      : service_(service), request_(request), link_(std::make_shared<Link>()) {
    service_->CallStarted();
    link_->target = this;
    const std::shared_ptr<Link> link = link_;  // outlives `this` if the call finishes here
    std::lock_guard<std::recursive_mutex> lock(link->mu);
    const absl::Status st = Start(context);
    if (!st.ok()) {
      finished_ = true;
      Finish(services::ToGrpcStatus(st, context));
    }
  }

  void OnCancel() override {
    if (id_.has_value()) service_->engine().Cancel(*id_);
  }
  void OnWriteDone(bool /*ok*/) override {
    std::lock_guard<std::recursive_mutex> lock(link_->mu);
    writing_ = false;
    Pump();
  }
  void OnDone() override {
    {
      const std::shared_ptr<Link> link = link_;
      std::lock_guard<std::recursive_mutex> lock(link->mu);
      link->target = nullptr;
      link->stream.reset();  // breaks the link -> stream -> on_ready -> link cycle
    }
    if (id_.has_value() && !released_) service_->ReleaseId(request_->request_id());
    service_->CallEnded();
    delete this;
  }

  void Pump() override {
    if (finished_ || link_->stream == nullptr) return;
    for (StreamEvent& e : link_->stream->Drain()) {
      if (e.type == StreamEvent::Type::kToken) {
        if (first_step_us_ < 0) first_step_us_ = MicrosSince(start_);
        last_token_ = e.sample.token;
        pending_.add_token_ids(e.sample.token);
        if (request_->sampling().logprobs() >= 0) ToProto(e.sample, pending_.add_logprobs());
        ++generated_;
      } else {
        end_ = std::move(e);
      }
    }
    if (writing_) return;
    if (end_.has_value()) {
      finished_ = true;
      released_ = true;
      service_->ReleaseId(request_->request_id());
      Account();
      if (end_->reason != ExitReason::kStop && end_->reason != ExitReason::kLength) {
        absl::Status st = end_->status.ok() ? absl::InternalError("decode ended abnormally") : end_->status;
        if (absl::IsNotFound(st) && !request_->reservation_id().empty()) {
          // The reservation expired between the claim and the engine's check.
          st = absl::FailedPreconditionError(absl::StrCat("reservation_id: ", st.message()));
        }
        if (pending_.token_ids_size() > 0) {
          // Tokens before the failure still reach the caller.
          out_ = std::move(pending_);
          StartWriteAndFinish(&out_, grpc::WriteOptions(), services::ToGrpcStatus(st));
        } else {
          Finish(services::ToGrpcStatus(st));
        }
        return;  // `this` may be gone
      }
      SetFinish(end_->reason == ExitReason::kStop ? wv1::DecodeFinish::REASON_STOP : wv1::DecodeFinish::REASON_LENGTH,
                last_token_);
      out_ = std::move(pending_);
      StartWriteAndFinish(&out_, grpc::WriteOptions(), grpc::Status::OK);
      return;
    }
    if (pending_.token_ids_size() > 0) {
      out_ = std::move(pending_);
      pending_.Clear();
      writing_ = true;
      StartWrite(&out_);
    }
  }

 private:
  absl::Status Start(grpc::CallbackServerContext* context) {
    if (absl::Status s = service_->gate().AdmitWorker(*context); !s.ok()) return s;
    const WorkerRole role = service_->options().role;
    if (role == WorkerRole::kPrefill) return RoleError(role, "Decode");
    if (absl::Status s = CheckRequestId(request_->request_id()); !s.ok()) return s;
    const engine::ModelConfig& config = service_->model().config();
    const std::int64_t max_len = config.max_position_embeddings;
    if (absl::Status s =
            CheckTokens(request_->prompt_token_ids(), "prompt_token_ids", config.vocab_size, max_len, false);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = CheckTokens(request_->output_token_ids(), "output_token_ids", config.vocab_size, max_len,
                                     /*allow_empty=*/request_->local_prefill());
        !s.ok()) {
      return s;
    }
    if (request_->stop().max_tokens() < 1) return services::InvalidFieldError("stop.max_tokens", "must be >= 1");
    for (int i = 0; i < request_->stop().stop_token_ids_size(); ++i) {
      const std::int32_t t = request_->stop().stop_token_ids(i);
      if (t < 0 || t >= config.vocab_size) {
        return services::InvalidFieldError(absl::StrCat("stop.stop_token_ids[", i, "]"),
                                           absl::StrCat("must be in [0, ", config.vocab_size, ")"));
      }
    }
    if (request_->prompt_token_ids_size() + request_->output_token_ids_size() >= max_len) {
      return services::InvalidFieldError("output_token_ids",
                                         absl::StrCat("prompt and output reach the context length ", max_len));
    }
    absl::StatusOr<std::vector<engine::ImageInput>> images =
        ToEngineImages(request_->images(), request_->prompt_token_ids(), service_->model().vision(), "images");
    if (!images.ok()) return images.status();
    images_ = *std::move(images);
    absl::StatusOr<engine::structured::ResponseConstraint> response =
        service_->ResponseConstraint(request_->sampling());
    if (!response.ok()) return response.status();
    response_ = *std::move(response);
    std::optional<engine::RequestId> reserved;  // the id Reserve acquired, if a reservation is dropped
    if (!request_->reservation_id().empty()) {
      if (!request_->local_prefill()) return StartFromReservation(context);
      // The KV never arrived: drop the reservation (its blocks go back to
      // the pool before the prompt is queued again: commands run in order)
      // and prefill here.
      absl::StatusOr<WorkerService::PendingReservation> r = ClaimOwnReservation();
      if (!r.ok()) return r.status();
      reserved = r->request;
      service_->engine().Cancel(r->request);
    } else if (role != WorkerRole::kBoth && !request_->local_prefill()) {
      return absl::NotFoundError(
          absl::StrCat("request ", request_->request_id(), ": no reservation and no local KV on this decode worker"));
    }
    // Compute the KV of the prompt and every token already generated here,
    // then sample the next token from the last position (colocated, a failed
    // transfer, or a request migrated from a lost decode worker).
    local_prefill_ = true;
    const std::int64_t already = request_->output_token_ids_size();
    const std::int64_t left = static_cast<std::int64_t>(request_->stop().max_tokens()) - already;
    if (left <= 0) {
      // Nothing more to generate: finish at once.
      SetFinish(wv1::DecodeFinish::REASON_LENGTH, 0);
      finished_ = true;
      StartWriteAndFinish(&pending_, grpc::WriteOptions(), grpc::Status::OK);
      return absl::OkStatus();
    }
    engine::RequestSpec spec;
    spec.prompt.assign(request_->prompt_token_ids().begin(), request_->prompt_token_ids().end());
    spec.prompt.insert(spec.prompt.end(), request_->output_token_ids().begin(), request_->output_token_ids().end());
    spec.sampling = ToEngine(request_->sampling());
    spec.stop.max_tokens = static_cast<std::int32_t>(left);
    spec.stop.stop_token_ids.assign(request_->stop().stop_token_ids().begin(), request_->stop().stop_token_ids().end());
    spec.stop.ignore_eos = request_->stop().ignore_eos();
    spec.deadline = EngineDeadline(*context);
    spec.replayed = request_->output_token_ids_size();
    spec.images = std::move(images_);
    spec.response = response_;
    if (reserved.has_value()) {
      id_ = *reserved;  // acquired by Reserve; released when this call ends
    } else {
      absl::StatusOr<engine::RequestId> id = service_->AcquireId(request_->request_id());
      if (!id.ok()) return id.status();
      id_ = *id;
    }
    absl::StatusOr<std::shared_ptr<engine::RequestStream>> stream =
        service_->engine().Submit(*id_, std::move(spec), OnReady(link_));
    if (!stream.ok()) {
      released_ = true;
      service_->ReleaseId(request_->request_id());
      return stream.status();
    }
    link_->stream = *std::move(stream);
    Pump();
    return absl::OkStatus();
  }

  // Disaggregated: the prompt's KV is in a reservation (Prefill returned).
  // Claims the named reservation if it belongs to this request.
  absl::StatusOr<WorkerService::PendingReservation> ClaimOwnReservation() {
    std::optional<WorkerService::PendingReservation> r = service_->ClaimReservation(request_->reservation_id());
    if (!r.has_value()) {
      return absl::FailedPreconditionError(
          absl::StrCat("reservation_id: unknown or expired reservation ", request_->reservation_id()));
    }
    if (r->request_id != request_->request_id()) {
      const std::string owner = r->request_id;
      service_->AddReservation(request_->reservation_id(), *std::move(r));
      return services::InvalidFieldError("reservation_id", absl::StrCat("belongs to request ", owner));
    }
    return *std::move(r);
  }

  absl::Status StartFromReservation(grpc::CallbackServerContext* context) {
    if (request_->output_token_ids_size() != 1) {
      return services::InvalidFieldError("output_token_ids",
                                         "must hold exactly the first token when decoding from a reservation "
                                         "(more: use local_prefill)");
    }
    absl::StatusOr<WorkerService::PendingReservation> r = ClaimOwnReservation();
    if (!r.ok()) return r.status();
    id_ = r->request;  // acquired by Reserve; released when this call ends
    engine::DecodeSpec spec;
    spec.prompt.assign(request_->prompt_token_ids().begin(), request_->prompt_token_ids().end());
    spec.sampling = ToEngine(request_->sampling());
    spec.stop.max_tokens = static_cast<std::int32_t>(request_->stop().max_tokens());
    spec.stop.stop_token_ids.assign(request_->stop().stop_token_ids().begin(), request_->stop().stop_token_ids().end());
    spec.stop.ignore_eos = request_->stop().ignore_eos();
    spec.deadline = EngineDeadline(*context);
    spec.images = std::move(images_);
    spec.response = response_;
    absl::StatusOr<std::shared_ptr<engine::RequestStream>> stream =
        service_->engine().Decode(r->id, *id_, request_->output_token_ids(0), std::move(spec), OnReady(link_));
    if (!stream.ok()) {
      released_ = true;
      service_->ReleaseId(request_->request_id());
      return stream.status();
    }
    link_->stream = *std::move(stream);
    Pump();
    return absl::OkStatus();
  }

  void SetFinish(wv1::DecodeFinish::Reason reason, std::int32_t stop_token) {
    wv1::DecodeFinish* f = pending_.mutable_finish();
    f->set_reason(reason);
    if (reason == wv1::DecodeFinish::REASON_STOP) f->set_stop_token_id(stop_token);
    f->set_first_step_us(first_step_us_ < 0 ? 0 : first_step_us_);
    f->set_decode_us(MicrosSince(start_));
    f->set_local_prefill(local_prefill_);
    if (local_prefill_) {
      // Received -> computing (queue), computing -> first token (prefill).
      const auto started = link_->stream != nullptr ? link_->stream->started().value_or(start_) : start_;
      const std::int64_t queue_us = std::chrono::duration_cast<std::chrono::microseconds>(started - start_).count();
      f->set_queue_us(queue_us);
      f->set_local_prefill_us(first_step_us_ < 0 ? 0 : std::max<std::int64_t>(0, first_step_us_ - queue_us));
      if (link_->stream != nullptr) f->set_cached_tokens(static_cast<std::uint32_t>(link_->stream->cached_tokens()));
    }
    f->set_decode_worker_id(service_->options().worker_id);
  }

  void Account() {
    const services::ServingMetrics* m = service_->metrics();
    if (m == nullptr) return;
    m->generation_tokens->Increment(static_cast<double>(generated_));
    services::RequestFinish finish = services::RequestFinish::kError;
    if (end_->reason == ExitReason::kStop) finish = services::RequestFinish::kStop;
    if (end_->reason == ExitReason::kLength) finish = services::RequestFinish::kLength;
    if (end_->reason == ExitReason::kCancelled || end_->reason == ExitReason::kDeadlineExceeded) {
      finish = services::RequestFinish::kCancelled;
    }
    m->request_success_for(finish).Increment();
    m->request_decode_time->Observe(static_cast<double>(MicrosSince(start_)) * 1e-6);
  }

  WorkerService* const service_;
  const wv1::DecodeRequest* const request_;
  const std::shared_ptr<Link> link_;
  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::vector<engine::ImageInput> images_;           // from Start to the engine
  engine::structured::ResponseConstraint response_;  // from Start to the engine
  std::optional<engine::RequestId> id_;
  std::optional<StreamEvent> end_;
  wv1::DecodeResponse pending_;  // tokens not yet written
  wv1::DecodeResponse out_;      // the message being written
  std::int32_t last_token_ = -1;
  std::int64_t generated_ = 0;
  std::int64_t first_step_us_ = -1;
  bool local_prefill_ = false;
  bool writing_ = false;
  bool finished_ = false;
  bool released_ = false;
};

// ------------------------------------------------------------------ WatchLoad

class WatchLoadReactor final : public grpc::ServerWriteReactor<wv1::Load> {
 public:
  WatchLoadReactor(WorkerService* service, grpc::CallbackServerContext* context, const wv1::WatchLoadRequest* request)
      : service_(service) {
    if (absl::Status s = service_->gate().AdmitWorker(*context); !s.ok()) {
      Finish(services::ToGrpcStatus(s, context));
      return;
    }
    std::uint32_t min_ms = request->min_interval_ms() == 0 ? 100 : request->min_interval_ms();
    std::uint32_t max_ms =
        request->max_interval_ms() == 0 ? std::max<std::uint32_t>(1000, min_ms) : request->max_interval_ms();
    if (min_ms < 10 || min_ms > 60000) {
      Finish(services::ToGrpcStatus(services::InvalidFieldError("min_interval_ms", "must be in [10, 60000]")));
      return;
    }
    if (max_ms < min_ms || max_ms > 600000) {
      Finish(services::ToGrpcStatus(
          services::InvalidFieldError("max_interval_ms", "must be in [min_interval_ms, 600000]")));
      return;
    }
    std::thread([this, min_ms, max_ms] { Run(min_ms, max_ms); }).detach();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) stopped_ = true;
    cv_.notify_all();
  }
  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    cv_.notify_all();
  }
  void OnDone() override { delete this; }

 private:
  static bool SameLoad(const wv1::Load& a, const wv1::Load& b) {
    wv1::Load x = a, y = b;
    x.clear_timestamp_unix_micros();
    y.clear_timestamp_unix_micros();
    return x.SerializeAsString() == y.SerializeAsString();
  }

  void Run(std::uint32_t min_ms, std::uint32_t max_ms) {
    std::unique_lock<std::mutex> lock(mu_);
    auto last_sent = std::chrono::steady_clock::time_point::min();
    bool first = true;
    for (;;) {
      if (stopped_) break;
      wv1::Load now = service_->CurrentLoad();
      const bool heartbeat = std::chrono::steady_clock::now() - last_sent >= std::chrono::milliseconds(max_ms);
      if (first || heartbeat || !SameLoad(now, last_)) {
        first = false;
        last_ = now;
        out_ = now;
        writing_ = true;
        StartWrite(&out_);
        cv_.wait(lock, [&] { return !writing_; });
        last_sent = std::chrono::steady_clock::now();
        if (now.draining()) break;  // the last report a draining worker sends
      }
      cv_.wait_for(lock, std::chrono::milliseconds(min_ms), [&] { return stopped_; });
    }
    lock.unlock();
    Finish(grpc::Status::OK);  // last touch of `this`
  }

  WorkerService* const service_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool writing_ = false;
  bool stopped_ = false;
  wv1::Load last_;
  wv1::Load out_;
};

}  // namespace

const char* WorkerRoleName(WorkerRole role) {
  switch (role) {
    case WorkerRole::kPrefill:
      return "prefill";
    case WorkerRole::kDecode:
      return "decode";
    case WorkerRole::kBoth:
      return "both";
  }
  return "?";
}

absl::StatusOr<std::string> ModelFingerprint(const std::string& model_dir) {
  std::ifstream in(model_dir + "/config.json", std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(model_dir, "/config.json: cannot read"));
  std::stringstream text;
  text << in.rdbuf();
  return absl::StrCat(absl::Hex(transfer::Fingerprint64(text.str() + "|kv=f32"), absl::kZeroPad16));
}

void WorkerService::AddJob(engine::RequestId id, std::shared_ptr<TransferJob> job) {
  std::lock_guard<std::mutex> lock(jobs_mu_);
  jobs_[id] = std::move(job);
}

std::shared_ptr<WorkerService::TransferJob> WorkerService::TakeJob(engine::RequestId id) {
  std::lock_guard<std::mutex> lock(jobs_mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return nullptr;
  std::shared_ptr<TransferJob> job = std::move(it->second);
  jobs_.erase(it);
  return job;
}

namespace {
std::string PeerKey(const transfer::TargetDescriptor& target) {
  return absl::StrCat(target.agent_id, "/", target.pool_id, "/", target.address);
}
}  // namespace

bool WorkerService::HasPeer(const transfer::TargetDescriptor& target) {
  std::lock_guard<std::mutex> lock(peers_mu_);
  return peers_.contains(PeerKey(target));
}

absl::StatusOr<transfer::PeerHandle> WorkerService::PeerFor(const transfer::TargetDescriptor& target) {
  const std::string key = PeerKey(target);
  {
    std::lock_guard<std::mutex> lock(peers_mu_);
    if (auto it = peers_.find(key); it != peers_.end()) return it->second;
  }
  // Connect without the lock: other targets' transfers go on meanwhile.
  absl::StatusOr<transfer::PeerHandle> peer = options_.agent->Connect(options_.pool, target);
  if (!peer.ok()) return peer;
  std::lock_guard<std::mutex> lock(peers_mu_);
  auto [it, inserted] = peers_.try_emplace(key, *peer);
  if (!inserted) (void)options_.agent->Release(*peer);  // another call connected first
  return it->second;
}

void WorkerService::ForgetPeer(transfer::PeerHandle peer) {
  {
    std::lock_guard<std::mutex> lock(peers_mu_);
    const auto it = std::find_if(peers_.begin(), peers_.end(), [&](const auto& kv) { return kv.second == peer; });
    if (it == peers_.end()) return;  // forgotten already
    peers_.erase(it);
  }
  (void)options_.agent->Release(peer);
}

void WorkerService::OnLayerKvWritten(const engine::LayerKvWritten& w) {
  std::shared_ptr<TransferJob> job;
  {
    std::lock_guard<std::mutex> lock(jobs_mu_);
    auto it = jobs_.find(w.request);
    if (it == jobs_.end()) return;
    job = it->second;
  }
  const std::int64_t bs = options_.layout.block_size;
  std::vector<std::int32_t> local, remote;
  for (std::int64_t b = std::max(w.token_begin / bs, job->shared_blocks); b <= (w.token_end - 1) / bs; ++b) {
    local.push_back(w.blocks->block(b).value);
    remote.push_back(job->remote_blocks[static_cast<std::size_t>(b)]);
  }
  const auto layer = static_cast<std::uint32_t>(w.layer);
  transfer::WriteOptions wo;
  wo.tag = w.request.value;
  const auto left = job->deadline - std::chrono::steady_clock::now();
  // None when nothing is due (the target holds all of this range).
  std::optional<absl::StatusOr<transfer::TransferId>> id;
  if (!local.empty()) {
    id = absl::DeadlineExceededError("KV transfer deadline passed");
    if (left > std::chrono::steady_clock::duration::zero()) {
      wo.timeout = absl::FromChrono(left);
      id = options_.agent->PostWrite(job->peer, transfer::LayerRegions(layer, local),
                                     transfer::RemoteLayerRegions(layer, remote), wo);
    }
  }
  bool last = false;
  {
    std::lock_guard<std::mutex> lock(job->mu);
    if (!job->has_post) {
      job->has_post = true;
      job->first_post = std::chrono::steady_clock::now();
    }
    if (id.has_value() && id->ok()) {
      job->posted.push_back(**id);
      job->bytes += local.size() * options_.layout.block_bytes();
    } else if (id.has_value() && job->error.ok()) {
      job->error = id->status();
    }
    last = w.layer + 1 == static_cast<std::int64_t>(options_.layout.num_layers) && w.token_end == job->prompt_len;
  }
  if (!last) return;
  // The last layer of the last chunk is posted: wait for remote completion
  // off the engine thread, then let the engine release the first token.
  const engine::RequestId request = w.request;
  std::thread([this, job, request] {
    std::vector<transfer::TransferId> posted;
    absl::Status st;
    {
      std::lock_guard<std::mutex> lock(job->mu);
      posted = job->posted;
      st = job->error;
    }
    // The agent fails each transfer at its own timeout; this bound only
    // guards against a backend that never reports. Whatever is still pending
    // then is cancelled, so nothing is issued after the request moves on.
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::minutes(10);
    for (transfer::TransferId tid : posted) {
      for (;;) {
        transfer::TransferState state = options_.agent->Poll(tid);
        if (state.pending()) {
          if (std::chrono::steady_clock::now() > give_up) {
            if (st.ok()) st = absl::DeadlineExceededError("KV transfer timed out");
            (void)options_.agent->Cancel(tid);
            break;
          }
          std::this_thread::sleep_for(std::chrono::microseconds(50));
          continue;
        }
        if (state.failed() && st.ok()) st = state.status;
        break;
      }
    }
    double seconds = 0;
    std::uint64_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(job->mu);
      job->transfer_us = MicrosSince(job->first_post);
      seconds = static_cast<double>(job->transfer_us) * 1e-6;
      bytes = job->bytes;
    }
    CountSent(bytes, seconds, st.ok());
    if (absl::IsUnavailable(st)) ForgetPeer(job->peer);  // lost: reconnect next time
    (void)engine_->TransferDone(
        request, st.ok() ? absl::OkStatus() : absl::AbortedError(absl::StrCat("KV transfer failed: ", st.message())));
  }).detach();
}

void WorkerService::AbortTransfers(TransferJob& job) {
  std::vector<transfer::TransferId> posted;
  {
    std::lock_guard<std::mutex> lock(job.mu);
    posted = job.posted;
  }
  // FAILED_PRECONDITION for those already terminal: nothing to stop.
  for (transfer::TransferId tid : posted) (void)options_.agent->Cancel(tid);
}

void WorkerService::CountSent(std::uint64_t bytes, double seconds, bool ok) {
  std::lock_guard<std::mutex> lock(counters_mu_);
  if (!ok) {
    counters_.set_failures(counters_.failures() + 1);
    if (metrics_ != nullptr) metrics_->kv_transfer_failures->Increment();
    return;
  }
  counters_.set_bytes_sent(counters_.bytes_sent() + bytes);
  counters_.set_transfers(counters_.transfers() + 1);
  counters_.set_seconds(counters_.seconds() + seconds);
  if (metrics_ != nullptr) {
    metrics_->kv_transfer_bytes->Increment(static_cast<double>(bytes));
    metrics_->kv_transfer_seconds->Observe(seconds);
  }
}

void WorkerService::AddReservation(const std::string& reservation_id, PendingReservation r) {
  std::lock_guard<std::mutex> lock(reservations_mu_);
  reservations_[reservation_id] = std::move(r);
}

std::optional<WorkerService::PendingReservation> WorkerService::ClaimReservation(const std::string& reservation_id) {
  SweepReservations();
  std::lock_guard<std::mutex> lock(reservations_mu_);
  auto it = reservations_.find(reservation_id);
  if (it == reservations_.end()) return std::nullopt;
  PendingReservation r = std::move(it->second);
  reservations_.erase(it);
  return r;
}

void WorkerService::SweepReservations() {
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lock(reservations_mu_);
  for (auto it = reservations_.begin(); it != reservations_.end();) {
    if (it->second.expires < now) {
      std::lock_guard<std::mutex> ids_lock(ids_mu_);
      auto id = ids_.find(it->second.request_id);
      if (id != ids_.end() && id->second == it->second.request) ids_.erase(id);
      it = reservations_.erase(it);
    } else {
      ++it;
    }
  }
}

absl::StatusOr<WorkerRole> ParseWorkerRole(const std::string& name) {
  if (name == "prefill") return WorkerRole::kPrefill;
  if (name == "decode") return WorkerRole::kDecode;
  if (name == "both") return WorkerRole::kBoth;
  return absl::InvalidArgumentError(absl::StrCat("--role: must be prefill, decode or both, not '", name, "'"));
}

WorkerService::WorkerService(WorkerServiceOptions options, const engine::Mistral4Model* model,
                             engine::EngineLoop* engine, std::shared_ptr<services::CallGate> gate,
                             const services::ServingMetrics* metrics)
    : options_(std::move(options)), model_(model), engine_(engine), gate_(std::move(gate)), metrics_(metrics) {}

WorkerService::~WorkerService() = default;

absl::StatusOr<engine::structured::ResponseConstraint> WorkerService::ResponseConstraint(
    const wv1::SamplingParams& sampling) {
  engine::structured::ResponseConstraint out;
  if (!sampling.has_response_format()) return out;
  const wv1::ResponseFormat& format = sampling.response_format();
  out.allow_think = format.allow_think();
  if (format.tools_size() > 0) {
    std::vector<engine::structured::ToolCallSpec::Tool> tools;
    for (int i = 0; i < format.tools_size(); ++i) {
      const std::string field = absl::StrCat("sampling.response_format.tools[", i, "]");
      if (format.tools(i).args_json_schema().empty()) {
        return services::InvalidFieldError(field + ".args_json_schema", "is required");
      }
      absl::StatusOr<std::shared_ptr<const engine::structured::JsonGrammar>> args =
          grammars_.Get(format.tools(i).args_json_schema());
      if (!args.ok())
        return services::InvalidFieldError(field + ".args_json_schema", std::string(args.status().message()));
      tools.push_back({format.tools(i).name(), *std::move(args)});
    }
    absl::StatusOr<std::shared_ptr<const engine::structured::ToolCallSpec>> spec =
        engine::structured::MakeToolCallSpec(std::move(tools), format.parallel_tool_calls());
    if (!spec.ok())
      return services::InvalidFieldError("sampling.response_format", std::string(spec.status().message()));
    out.tool_calls = *std::move(spec);
    return out;
  }
  absl::StatusOr<std::shared_ptr<const engine::structured::JsonGrammar>> grammar = grammars_.Get(format.json_schema());
  if (!grammar.ok()) {
    return services::InvalidFieldError("sampling.response_format.json_schema", std::string(grammar.status().message()));
  }
  out.grammar = *std::move(grammar);
  return out;
}

absl::StatusOr<engine::RequestId> WorkerService::AcquireId(const std::string& request_id) {
  std::lock_guard<std::mutex> lock(ids_mu_);
  if (ids_.contains(request_id)) {
    return absl::AlreadyExistsError(absl::StrCat("request_id: ", request_id, " is already in progress here"));
  }
  const engine::RequestId id{next_id_++};
  ids_.emplace(request_id, id);
  return id;
}

void WorkerService::ReleaseId(const std::string& request_id) {
  std::lock_guard<std::mutex> lock(ids_mu_);
  ids_.erase(request_id);
}

wv1::Load WorkerService::CurrentLoad() {
  const engine::EngineStats stats = engine_->Stats();
  wv1::Load load;
  load.set_worker_id(options_.worker_id);
  load.set_role(ToProtoRole(options_.role));
  load.set_draining(gate_->draining());
  load.set_free_blocks(static_cast<std::uint64_t>(stats.scheduler.free_blocks));
  load.set_total_blocks(static_cast<std::uint64_t>(stats.scheduler.total_blocks));
  load.set_running(static_cast<std::uint32_t>(stats.scheduler.running()));
  // A request whose images are being decoded is queued as far as routing goes.
  load.set_waiting(static_cast<std::uint32_t>(stats.scheduler.waiting + stats.preparing));
  load.set_reservations(static_cast<std::uint32_t>(stats.scheduler.reservations));
  load.set_prefill_tokens_queued(
      static_cast<std::uint64_t>(stats.scheduler.prefill_tokens_pending + stats.preparing_tokens));
  load.set_quarantined_blocks(static_cast<std::uint64_t>(stats.scheduler.quarantined_blocks));
  load.set_prefix_caching(engine_->pool().prefix_caching());  // an immutable option of the pool
  load.set_cached_blocks(static_cast<std::uint64_t>(stats.scheduler.cached_blocks));
  load.set_supports_images(model().vision() != nullptr);
  load.set_model_fingerprint(options_.model_fingerprint);
  load.set_vocab_size(static_cast<std::int32_t>(model_->config().vocab_size));
  load.set_context_length(static_cast<std::int32_t>(model_->config().max_position_embeddings));
  load.set_block_size_tokens(static_cast<std::uint32_t>(options_.layout.block_size));
  std::uint64_t received = 0;
  if (options_.agent != nullptr) {
    for (const transfer::WriteNotice& n : options_.agent->CompletedWrites()) received += n.bytes;
  }
  {
    std::lock_guard<std::mutex> lock(counters_mu_);
    counters_.set_bytes_received(counters_.bytes_received() + received);
    *load.mutable_transfer() = counters_;
  }
  load.set_timestamp_unix_micros(absl::ToUnixMicros(absl::Now()));
  return load;
}

grpc::ServerUnaryReactor* WorkerService::Reserve(grpc::CallbackServerContext* context,
                                                 const wv1::ReserveRequest* request, wv1::KvTarget* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto fail = [&](const absl::Status& st) {
    reactor->Finish(services::ToGrpcStatus(st, context));
    return reactor;
  };
  if (absl::Status s = gate_->AdmitWorker(*context); !s.ok()) return fail(s);
  if (options_.role == WorkerRole::kPrefill) return fail(RoleError(options_.role, "Reserve"));
  if (options_.agent == nullptr) return fail(absl::UnimplementedError("this worker has no KV transfer agent"));
  if (absl::Status s = CheckRequestId(request->request_id()); !s.ok()) return fail(s);
  const std::int64_t max_len = model_->config().max_position_embeddings;
  if (request->prompt_tokens() < 1 || request->prompt_tokens() >= max_len) {
    return fail(services::InvalidFieldError("prompt_tokens", absl::StrCat("must be in [1, ", max_len, ")")));
  }
  if (request->max_output_tokens() < 1 || request->max_output_tokens() > max_len - request->prompt_tokens()) {
    return fail(services::InvalidFieldError("max_output_tokens", "must be in [1, context length - prompt_tokens]"));
  }
  if (request->layout_version() != options_.layout.version) {
    return fail(absl::FailedPreconditionError(
        absl::StrCat("layout_version: ", request->layout_version(), " asked, ", options_.layout.version, " here")));
  }
  if (request->model_fingerprint() != options_.model_fingerprint) {
    return fail(absl::FailedPreconditionError(absl::StrCat("model_fingerprint: ", request->model_fingerprint(),
                                                           " asked, ", options_.model_fingerprint, " here")));
  }
  if (request->ttl_ms() > 600000) return fail(services::InvalidFieldError("ttl_ms", "must be in [0, 600000]"));
  if (!request->prompt_token_ids().empty()) {
    if (request->prompt_token_ids_size() != static_cast<int>(request->prompt_tokens())) {
      return fail(services::InvalidFieldError(
          "prompt_token_ids",
          absl::StrCat("has ", request->prompt_token_ids_size(), " ids for prompt_tokens ", request->prompt_tokens())));
    }
    const std::int64_t vocab = model_->config().vocab_size;
    for (int i = 0; i < request->prompt_token_ids_size(); ++i) {
      if (request->prompt_token_ids(i) < 0 || request->prompt_token_ids(i) >= vocab) {
        return fail(services::InvalidFieldError(absl::StrCat("prompt_token_ids[", i, "]"),
                                                absl::StrCat("must be in [0, ", vocab, ")")));
      }
    }
  }
  wv1::TransportKind transport = wv1::TRANSPORT_KIND_UNSPECIFIED;
  if (request->transports().empty()) transport = wv1::TRANSPORT_KIND_UCX_RMA;
  for (int t : request->transports()) {
    if (t == wv1::TRANSPORT_KIND_UCX_RMA || t == wv1::TRANSPORT_KIND_UCX_AM) {
      transport = static_cast<wv1::TransportKind>(t);
      break;
    }
  }
  if (transport == wv1::TRANSPORT_KIND_UNSPECIFIED) {
    return fail(absl::FailedPreconditionError("transports: none of them is served here (UCX only)"));
  }
  absl::StatusOr<transfer::TargetDescriptor> descriptor = options_.agent->LocalDescriptor(options_.pool);
  if (!descriptor.ok()) return fail(descriptor.status());
  SweepReservations();
  absl::StatusOr<engine::RequestId> id = AcquireId(request->request_id());
  if (!id.ok()) return fail(id.status());

  engine::ReserveSpec spec;
  spec.request = *id;
  if (request->prompt_token_ids().empty()) {
    // A length alone: placeholders, nothing shared; the Decode names the ids.
    spec.prompt.assign(request->prompt_tokens(), 0);
  } else {
    spec.prompt.assign(request->prompt_token_ids().begin(), request->prompt_token_ids().end());
    spec.prompt_known = true;
  }
  spec.expected_output = request->max_output_tokens();
  spec.ttl = request->ttl_ms() == 0
                 ? std::chrono::duration_cast<engine::SchedClock::duration>(options_.default_reservation_ttl)
                 : std::chrono::milliseconds(request->ttl_ms());
  const std::string request_id = request->request_id();
  const std::int64_t prompt_blocks =
      (static_cast<std::int64_t>(request->prompt_tokens()) + options_.layout.block_size - 1) /
      options_.layout.block_size;
  const engine::RequestId engine_id = *id;
  absl::Status st =
      engine_->Reserve(std::move(spec), [this, reactor, response, request_id, prompt_blocks, transport, engine_id,
                                         d = *std::move(descriptor)](absl::StatusOr<engine::Reservation> r) {
        if (!r.ok()) {
          ReleaseId(request_id);
          reactor->Finish(services::ToGrpcStatus(r.status()));
          return;
        }
        const transfer::KvLayout& l = options_.layout;
        wv1::KvLayout* layout = response->mutable_layout();
        layout->set_version(l.version);
        layout->set_num_layers(l.num_layers);
        layout->set_block_size_tokens(l.block_size);
        layout->set_bytes_per_token_per_layer(l.entry_bytes);
        layout->set_layer_stride_bytes(static_cast<std::uint64_t>(l.num_blocks) * l.block_bytes());
        layout->set_block_stride_bytes(l.block_bytes());
        layout->set_dtype(l.dtype_bytes == 4 ? "f32" : "bf16");
        response->set_model_fingerprint(options_.model_fingerprint);
        response->set_transport(transport);
        response->set_worker_address(d.Serialize());
        response->mutable_region()->set_base_address(d.base_address);
        response->mutable_region()->set_remote_key(d.rkey);
        response->mutable_region()->set_length_bytes(d.pool_bytes);
        for (std::int64_t i = 0; i < prompt_blocks; ++i) {
          response->add_block_ids(static_cast<std::uint32_t>(r->blocks[static_cast<std::size_t>(i)].value));
        }
        const std::string reservation_id = absl::StrCat(r->id.value);
        response->set_reservation_id(reservation_id);
        const auto left = r->expires - engine::SchedClock::now();
        response->set_expires_at_unix_micros(absl::ToUnixMicros(absl::Now()) +
                                             std::chrono::duration_cast<std::chrono::microseconds>(left).count());
        response->set_decode_worker_id(options_.worker_id);
        response->set_cached_tokens(static_cast<std::uint32_t>(r->cached_tokens));
        AddReservation(reservation_id,
                       PendingReservation{r->id, engine_id, request_id, std::chrono::steady_clock::now() + left});
        reactor->Finish(grpc::Status::OK);
      });
  if (!st.ok()) {
    ReleaseId(request_id);
    return fail(st);
  }
  return reactor;
}

grpc::ServerUnaryReactor* WorkerService::Prefill(grpc::CallbackServerContext* context,
                                                 const wv1::PrefillRequest* request, wv1::PrefillResponse* response) {
  return new PrefillReactor(this, context, request, response);
}

grpc::ServerWriteReactor<wv1::DecodeResponse>* WorkerService::Decode(grpc::CallbackServerContext* context,
                                                                     const wv1::DecodeRequest* request) {
  return new DecodeReactor(this, context, request);
}

grpc::ServerUnaryReactor* WorkerService::Cancel(grpc::CallbackServerContext* context, const wv1::CancelRequest* request,
                                                wv1::CancelResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  // Allowed while draining (UNAVAILABLE from the gate): it only frees work.
  if (absl::Status s = gate_->AdmitWorker(*context); !s.ok() && s.code() != absl::StatusCode::kUnavailable) {
    reactor->Finish(services::ToGrpcStatus(s, context));
    return reactor;
  }
  if (absl::Status s = CheckRequestId(request->request_id()); !s.ok()) {
    reactor->Finish(services::ToGrpcStatus(s, context));
    return reactor;
  }
  std::optional<engine::RequestId> id;
  {
    std::lock_guard<std::mutex> lock(ids_mu_);
    auto it = ids_.find(request->request_id());
    if (it != ids_.end()) id = it->second;
  }
  if (id.has_value()) engine_->Cancel(*id);
  bool reserved = false;
  {
    std::lock_guard<std::mutex> lock(reservations_mu_);
    for (auto it = reservations_.begin(); it != reservations_.end();) {
      if (it->second.request_id == request->request_id()) {
        reserved = true;
        it = reservations_.erase(it);
      } else {
        ++it;
      }
    }
  }
  if (reserved) ReleaseId(request->request_id());
  response->set_found(id.has_value());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* WorkerService::GetLoad(grpc::CallbackServerContext* context,
                                                 const wv1::GetLoadRequest* /*request*/, wv1::Load* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  // Load is readable while draining (it says so).
  if (absl::Status s = gate_->AdmitWorker(*context); !s.ok() && s.code() != absl::StatusCode::kUnavailable) {
    reactor->Finish(services::ToGrpcStatus(s, context));
    return reactor;
  }
  *response = CurrentLoad();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<wv1::Load>* WorkerService::WatchLoad(grpc::CallbackServerContext* context,
                                                              const wv1::WatchLoadRequest* request) {
  return new WatchLoadReactor(this, context, request);
}

grpc::ServerUnaryReactor* WorkerService::Drain(grpc::CallbackServerContext* context,
                                               const wv1::DrainRequest* /*request*/, wv1::DrainResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (absl::Status s = gate_->AdmitWorker(*context); !s.ok() && s.code() != absl::StatusCode::kUnavailable) {
    reactor->Finish(services::ToGrpcStatus(s, context));
    return reactor;
  }
  response->set_in_flight(static_cast<std::uint32_t>(in_flight()));
  gate_->StartDrain();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace sirocco::decode
