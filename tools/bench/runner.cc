#include "tools/bench/runner.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <thread>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/client_callback.h>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "services/call_gate.h"
#include "sirocco/v1/sirocco.grpc.pb.h"
#include "sirocco/worker/v1/worker.grpc.pb.h"

namespace sirocco::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double ProcessCpuSeconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// Shared by the dispatch thread, the progress thread and every reactor of
// one phase.
struct PhaseState {
  explicit PhaseState(Clock::time_point start) : t0(start) {}
  const Clock::time_point t0;

  absl::Mutex mu;
  int in_flight ABSL_GUARDED_BY(mu) = 0;
  std::vector<RequestRecord> records ABSL_GUARDED_BY(mu);
  std::deque<double> freed_s ABSL_GUARDED_BY(mu);  // closed loop: when slots freed up

  // Progress counters (read without the lock).
  std::atomic<std::int64_t> sent{0}, done{0}, failed{0}, cancelled{0}, output_tokens{0};

  double Now() const { return Seconds(Clock::now() - t0); }

  void Finish(RequestRecord record) {
    if (record.cancelled) {
      ++cancelled;
    } else if (!record.Completed()) {
      ++failed;
    }
    ++done;
    absl::MutexLock lock(&mu);
    freed_s.push_back(record.end_s);
    records.push_back(std::move(record));
    --in_flight;
  }
};

// Accounts one receive callback that started at `start` (the generator's
// own cost, reported so a user can see it is not the bottleneck).
void CountCallback(RequestRecord& r, Clock::time_point start) {
  const double cost_us = std::chrono::duration<double, std::micro>(Clock::now() - start).count();
  ++r.callbacks;
  r.callback_total_us += cost_us;
  r.callback_max_us = std::max(r.callback_max_us, cost_us);
}

template <typename Response>
void CopyFinal(const Response& response, RequestRecord& r) {
  const sirocco::v1::Final& f = response.final();
  r.finish_reason = sirocco::v1::FinishReason_Name(f.finish_reason());
  r.prompt_tokens = f.usage().prompt_tokens();
  r.cached_tokens = f.usage().cached_tokens();
  r.output_tokens = f.usage().completion_tokens();
  if (f.has_timing()) {
    r.has_timing = true;
    r.timing.queue_us = f.timing().queue_us();
    r.timing.prefill_us = f.timing().prefill_us();
    r.timing.kv_transfer_us = f.timing().kv_transfer_us();
    r.timing.first_decode_step_us = f.timing().first_decode_step_us();
    r.timing.ttft_us = f.timing().ttft_us();
    r.timing.e2e_us = f.timing().e2e_us();
  }
}

// One stream. Owns itself: deleted in OnDone after handing its record over.
template <typename Response>
class StreamCall final : public grpc::ClientReadReactor<Response> {
 public:
  StreamCall(PhaseState* state, RequestRecord record, double timeout_s) : state_(state), record_(std::move(record)) {
    context_.set_deadline(std::chrono::system_clock::now() +
                          std::chrono::microseconds(static_cast<std::int64_t>(timeout_s * 1e6)));
    context_.AddMetadata("x-sirocco-bench", "1");
  }
  grpc::ClientContext* context() { return &context_; }

  // After the stub bound this reactor to the call.
  void Start() {
    this->StartRead(&response_);
    record_.send_s = state_->Now();
    ++state_->sent;
    this->StartCall();
  }

  void OnReadDone(bool ok) override {
    const Clock::time_point now = Clock::now();
    if (ok) {
      const double t = Seconds(now - state_->t0);
      bool more = true;
      if (response_.has_delta()) {
        const int tokens = response_.delta().token_ids_size();
        record_.chunk_s.push_back(t);
        record_.chunk_tokens.push_back(tokens);
        state_->output_tokens += tokens;
        if (record_.cancel_after_chunks > 0 &&
            static_cast<int>(record_.chunk_s.size()) >= record_.cancel_after_chunks) {
          record_.cancelled = true;
          context_.TryCancel();
          more = false;
        }
      } else if (response_.has_final()) {
        record_.end_s = t;
        got_final_ = true;
        CopyFinal(response_, record_);
      }
      if (more) this->StartRead(&response_);
    }
    CountCallback(record_, now);
  }

  void OnDone(const grpc::Status& status) override {
    const double t = state_->Now();
    if (!got_final_) {
      record_.end_s = t;
      int sum = 0;
      for (int n : record_.chunk_tokens) sum += n;
      record_.output_tokens = sum;
      record_.prompt_tokens = record_.input_len;
    }
    record_.status_code = static_cast<int>(status.error_code());
    record_.status_message = status.error_message();
    state_->Finish(std::move(record_));
    delete this;
  }

 private:
  PhaseState* const state_;
  RequestRecord record_;
  grpc::ClientContext context_;
  Response response_;
  bool got_final_ = false;
};

namespace wk = sirocco::worker::v1;

// One request straight to a colocated worker, as a router sends it: one
// Decode call with local_prefill (the worker computes the prompt, then
// streams every token, the first included). Owns itself: deleted in OnDone.
class WorkerCall final : public grpc::ClientReadReactor<wk::DecodeResponse> {
 public:
  WorkerCall(PhaseState* state, RequestRecord record, double timeout_s, const RequestSpec& spec,
             const std::string& token)
      : state_(state), record_(std::move(record)) {
    context_.set_deadline(std::chrono::system_clock::now() +
                          std::chrono::microseconds(static_cast<std::int64_t>(timeout_s * 1e6)));
    if (!token.empty()) context_.AddMetadata(services::kWorkerTokenMetadataKey, token);
    // The router's defaults for a request that sets no sampling fields.
    wk::SamplingParams* sampling = request_.mutable_sampling();
    sampling->set_temperature(1.0f);
    sampling->set_top_p(1.0f);
    sampling->set_repetition_penalty(1.0f);
    sampling->set_logprobs(-1);
    sampling->set_seed(static_cast<std::uint64_t>(spec.index) * 0x9E3779B97F4A7C15ull + 1);
    request_.set_request_id(absl::StrCat("bench-", spec.index));
    request_.mutable_prompt_token_ids()->Add(spec.prompt_ids.begin(), spec.prompt_ids.end());
    request_.set_local_prefill(true);
    request_.mutable_stop()->set_max_tokens(static_cast<std::uint32_t>(spec.max_tokens));
    request_.mutable_stop()->set_ignore_eos(spec.ignore_eos);
    record_.prompt_tokens = static_cast<int>(spec.prompt_ids.size());
  }
  grpc::ClientContext* context() { return &context_; }
  const wk::DecodeRequest* request() const { return &request_; }

  // After the stub bound this reactor to the call.
  void Start() {
    this->StartRead(&response_);
    record_.send_s = state_->Now();
    ++state_->sent;
    this->StartCall();
  }

  void OnReadDone(bool ok) override {
    const Clock::time_point now = Clock::now();
    if (ok) {
      const double t = Seconds(now - state_->t0);
      const int tokens = response_.token_ids_size();
      if (tokens > 0) {
        record_.chunk_s.push_back(t);
        record_.chunk_tokens.push_back(tokens);
        record_.output_tokens += tokens;
        state_->output_tokens += tokens;
      }
      if (response_.has_finish()) {
        record_.end_s = t;
        got_finish_ = true;
        record_.finish_reason = response_.finish().reason() == wk::DecodeFinish::REASON_STOP ? "FINISH_REASON_STOP"
                                                                                             : "FINISH_REASON_LENGTH";
      } else {
        this->StartRead(&response_);
      }
    }
    CountCallback(record_, now);
  }

  void OnDone(const grpc::Status& status) override {
    if (!got_finish_) record_.end_s = state_->Now();
    record_.status_code = static_cast<int>(status.error_code());
    record_.status_message = status.error_message();
    if (status.ok() && !got_finish_) {
      record_.status_code = static_cast<int>(grpc::StatusCode::INTERNAL);
      record_.status_message = "the decode stream ended without a finish";
    }
    state_->Finish(std::move(record_));
    delete this;
  }

 private:
  PhaseState* const state_;
  RequestRecord record_;
  grpc::ClientContext context_;
  wk::DecodeRequest request_;
  wk::DecodeResponse response_;
  bool got_finish_ = false;
};

sirocco::v1::ReasoningEffort ToProto(Effort e) {
  switch (e) {
    case Effort::kNone:
      return sirocco::v1::REASONING_EFFORT_NONE;
    case Effort::kHigh:
      return sirocco::v1::REASONING_EFFORT_HIGH;
    case Effort::kUnspecified:
      break;
  }
  return sirocco::v1::REASONING_EFFORT_UNSPECIFIED;
}

template <typename Request>
void SetCommon(const RequestSpec& spec, const std::string& response_schema, Request& request) {
  request.mutable_stop()->set_max_tokens(spec.max_tokens);
  request.mutable_stop()->set_ignore_eos(spec.ignore_eos);
  request.mutable_output()->set_return_token_ids(true);
  request.set_request_id(absl::StrCat("bench-", spec.index));
  if (!response_schema.empty()) {
    auto* format = request.mutable_response_format();
    format->set_type(sirocco::v1::ResponseFormat::TYPE_JSON_SCHEMA);
    format->mutable_json_schema()->set_name("bench");
    format->mutable_json_schema()->set_schema(response_schema);
    format->mutable_json_schema()->set_strict(true);
  }
}

}  // namespace

absl::Status LoadOptions::Validate() const {
  if (mode == Mode::kClosed && concurrency < 1) return absl::InvalidArgumentError("concurrency: must be >= 1");
  if (mode == Mode::kOpen && concurrency < 0) return absl::InvalidArgumentError("max concurrency: negative");
  if (mode == Mode::kOpen) {
    if (absl::Status s = arrival.Validate(); !s.ok()) return s;
  }
  if (num_requests < 0 || duration_s < 0 || warmup_requests < 0)
    return absl::InvalidArgumentError("request count, duration and warm-up: not negative");
  if (num_requests == 0 && duration_s == 0)
    return absl::InvalidArgumentError("give a request count or a duration (or both)");
  return absl::OkStatus();
}

struct Runner::Impl {
  RunnerOptions options;
  std::vector<std::unique_ptr<sirocco::v1::Sirocco::Stub>> stubs;
  std::vector<std::unique_ptr<wk::Worker::Stub>> worker_stubs;  // direct_worker
  std::size_t next_stub = 0;

  // Starts one request (never blocks on the network).
  void StartRequest(PhaseState& state, const RequestSpec& spec, double scheduled_s) {
    RequestRecord record;
    record.index = spec.index;
    record.api = ApiName(spec.api);
    record.group = spec.group;
    record.effort = EffortName(spec.effort);
    record.image = spec.image;
    record.input_len = spec.input_len;
    record.max_tokens = spec.max_tokens;
    record.scheduled_s = scheduled_s;
    record.cancel_after_chunks = spec.cancel_after_chunks;
    {
      absl::MutexLock lock(&state.mu);
      ++state.in_flight;
    }
    const std::size_t stub_index = next_stub++;
    if (options.direct_worker) {
      auto* call = new WorkerCall(&state, std::move(record), options.timeout_s, spec, options.worker_token);
      worker_stubs[stub_index % worker_stubs.size()]->async()->Decode(call->context(), call->request(), call);
      call->Start();
      return;
    }
    auto* stub = stubs[stub_index % stubs.size()].get();
    if (spec.api == Api::kGenerate) {
      sirocco::v1::GenerateRequest request;
      request.mutable_token_ids()->mutable_ids()->Add(spec.prompt_ids.begin(), spec.prompt_ids.end());
      SetCommon(spec, options.response_schema, request);
      auto* call = new StreamCall<sirocco::v1::GenerateResponse>(&state, std::move(record), options.timeout_s);
      stub->async()->Generate(call->context(), &request, call);  // serializes the request before returning
      call->Start();
    } else {
      sirocco::v1::ChatRequest request;
      auto* m = request.add_messages();
      m->set_role(sirocco::v1::ROLE_USER);
      m->add_content()->set_text(spec.prompt_text);
      for (int k = 0; spec.image && k < options.images_per_request; ++k) {
        auto* image = m->add_content()->mutable_image();
        if (options.image_data.empty()) {
          image->set_data(TestPng(32, 32));
          image->set_mime_type("image/png");
        } else {
          image->set_data(options.image_data);
          image->set_mime_type(options.image_mime_type);
        }
      }
      request.set_reasoning_effort(ToProto(spec.effort));
      SetCommon(spec, options.response_schema, request);
      auto* call = new StreamCall<sirocco::v1::ChatResponse>(&state, std::move(record), options.timeout_s);
      stub->async()->Chat(call->context(), &request, call);
      call->Start();
    }
  }

  void PrintProgress(const PhaseState& state, const std::string& what, std::int64_t total, bool last) {
    const double t = state.Now();
    const std::int64_t done = state.done.load();
    std::fprintf(
        stderr,
        "\r%s%s: sent %lld%s, done %lld, in flight %lld, errors %lld, cancelled %lld, %.1f s, %.0f out tok/s   %s",
        options.label.empty() ? "" : (options.label + " ").c_str(), what.c_str(),
        static_cast<long long>(state.sent.load()), total > 0 ? absl::StrCat("/", total).c_str() : "",
        static_cast<long long>(done), static_cast<long long>(state.sent.load() - done),
        static_cast<long long>(state.failed.load()), static_cast<long long>(state.cancelled.load()), t,
        t > 0 ? static_cast<double>(state.output_tokens.load()) / t : 0.0, last ? "\n" : "");
    std::fflush(stderr);
  }

  // One phase: dispatch until a bound is reached, then wait for every
  // request to end.
  RunResult Phase(const LoadOptions& load, const Workload& workload, bool warmup) {
    PhaseState state(Clock::now());
    const double cpu0 = ProcessCpuSeconds();
    const std::int64_t total = warmup ? load.warmup_requests : load.num_requests;
    std::atomic<bool> stop_progress{false};
    std::thread progress;
    if (options.progress) {
      progress = std::thread([&] {
        while (!stop_progress.load()) {
          PrintProgress(state, warmup ? "warm-up" : "bench", total, false);
          std::this_thread::sleep_for(std::chrono::milliseconds(250));
        }
      });
    }

    const bool open = !warmup && load.mode == LoadOptions::Mode::kOpen;
    const int cap = warmup ? std::max(1, std::min(load.warmup_requests, load.concurrency > 0 ? load.concurrency : 1))
                           : load.concurrency;
    auto arrivals = ArrivalProcess::Create(load.arrival);  // validated with the load
    double next_s = 0;
    for (std::int64_t i = 0; total == 0 || i < total; ++i) {
      const std::int64_t index = warmup ? -(i + 1) : load.first_index + i;
      const RequestSpec spec = workload.Make(index);
      double scheduled_s = 0;
      if (open) {
        if (!warmup && load.duration_s > 0 && next_s >= load.duration_s) break;
        std::this_thread::sleep_until(
            state.t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(next_s)));
        scheduled_s = next_s;
        next_s += arrivals->NextGapSeconds();
        if (cap > 0) {
          absl::MutexLock lock(&state.mu);
          struct Ctx {
            PhaseState* s;
            int cap;
          } ctx{&state, cap};
          state.mu.Await(absl::Condition(
              +[](Ctx* c) ABSL_NO_THREAD_SAFETY_ANALYSIS { return c->s->in_flight < c->cap; }, &ctx));
        }
      } else {
        // Closed loop: wait for a free slot; the slot's scheduled time is
        // when it freed up (the initial slots at 0).
        absl::MutexLock lock(&state.mu);
        struct Ctx {
          PhaseState* s;
          int cap;
        } ctx{&state, cap};
        if (!warmup && load.duration_s > 0) {
          const double left = load.duration_s - state.Now();
          if (left <= 0 ||
              !state.mu.AwaitWithTimeout(
                  absl::Condition(
                      +[](Ctx* c) ABSL_NO_THREAD_SAFETY_ANALYSIS { return c->s->in_flight < c->cap; }, &ctx),
                  absl::Seconds(left)))
            break;
        } else {
          state.mu.Await(absl::Condition(
              +[](Ctx* c) ABSL_NO_THREAD_SAFETY_ANALYSIS { return c->s->in_flight < c->cap; }, &ctx));
        }
        if (i >= cap && !state.freed_s.empty()) {
          scheduled_s = state.freed_s.front();
          state.freed_s.pop_front();
        }
      }
      StartRequest(state, spec, scheduled_s);
    }
    {
      absl::MutexLock lock(&state.mu);
      state.mu.Await(absl::Condition(
          +[](PhaseState* s) ABSL_NO_THREAD_SAFETY_ANALYSIS { return s->in_flight == 0; }, &state));
    }
    stop_progress = true;
    if (progress.joinable()) {
      progress.join();
      PrintProgress(state, warmup ? "warm-up" : "bench", total, true);
    }
    RunResult result;
    result.client_cpu_s = ProcessCpuSeconds() - cpu0;
    absl::MutexLock lock(&state.mu);
    result.records = std::move(state.records);
    std::sort(result.records.begin(), result.records.end(),
              [](const RequestRecord& a, const RequestRecord& b) { return a.index < b.index; });
    for (const RequestRecord& r : result.records) result.duration_s = std::max(result.duration_s, r.end_s);
    return result;
  }
};

Runner::Runner(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Runner::~Runner() = default;

absl::StatusOr<std::unique_ptr<Runner>> Runner::Create(const RunnerOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("target: required (HOST:PORT)");
  if (options.connections < 1) return absl::InvalidArgumentError("connections: must be >= 1");
  if (!(options.timeout_s > 0)) return absl::InvalidArgumentError("timeout: must be > 0");
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  for (int i = 0; i < options.connections; ++i) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    args.SetMaxSendMessageSize(64 << 20);
    // Distinct arguments and a local subchannel pool: one TCP connection per
    // channel, not one shared by all.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt("sirocco.bench.connection", i);
    auto channel = grpc::CreateCustomChannel(options.target, grpc::InsecureChannelCredentials(), args);
    impl->stubs.push_back(sirocco::v1::Sirocco::NewStub(channel));
    impl->worker_stubs.push_back(wk::Worker::NewStub(channel));
  }
  return std::unique_ptr<Runner>(new Runner(std::move(impl)));
}

absl::StatusOr<ModelSummary> Runner::GetModelInfo(double timeout_s) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::microseconds(static_cast<std::int64_t>(timeout_s * 1e6)));
  context.set_wait_for_ready(true);
  if (impl_->options.direct_worker) {
    if (!impl_->options.worker_token.empty()) {
      context.AddMetadata(services::kWorkerTokenMetadataKey, impl_->options.worker_token);
    }
    wk::Load load;
    grpc::Status status = impl_->worker_stubs.front()->GetLoad(&context, wk::GetLoadRequest(), &load);
    if (!status.ok())
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          absl::StrCat("GetLoad on worker ", impl_->options.target, ": ", status.error_message()));
    if (load.role() != wk::WORKER_ROLE_BOTH)
      return absl::FailedPreconditionError(
          absl::StrCat("--direct-worker: ", impl_->options.target, " is not a colocated worker (role both)"));
    ModelSummary m;
    m.model_name = absl::StrCat("worker ", load.worker_id());
    m.vocab_size = load.vocab_size();
    m.context_length = load.context_length();
    return m;
  }
  sirocco::v1::ModelInfo info;
  grpc::Status status = impl_->stubs.front()->GetModelInfo(&context, sirocco::v1::GetModelInfoRequest(), &info);
  if (!status.ok())
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        absl::StrCat("GetModelInfo on ", impl_->options.target, ": ", status.error_message()));
  ModelSummary m;
  m.model_name = info.model_name();
  m.vocab_size = info.vocab_size();
  m.context_length = info.context_length();
  m.supports_images = info.supports_images();
  m.server_version = info.server_version();
  return m;
}

absl::StatusOr<RunResult> Runner::Run(const LoadOptions& load, const Workload& workload) {
  if (absl::Status s = load.Validate(); !s.ok()) return s;
  int warmed = 0;
  if (load.warmup_requests > 0) {
    RunResult warm = impl_->Phase(load, workload, /*warmup=*/true);
    warmed = static_cast<int>(warm.records.size());
  }
  RunResult result = impl_->Phase(load, workload, /*warmup=*/false);
  result.warmup_requests = warmed;
  return result;
}

}  // namespace sirocco::bench
