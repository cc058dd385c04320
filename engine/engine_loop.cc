#include "engine/engine_loop.h"

#include <algorithm>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/check.h"
#include "engine/mix64.h"
#include "engine/pixtral.h"
#include "engine/status_macros.h"

namespace sirocco::engine {
namespace {

StreamEvent TokenEvent(SampleResult sample) {
  StreamEvent e;
  e.type = StreamEvent::Type::kToken;
  e.sample = std::move(sample);
  return e;
}

// A failure of a request's image `i`, named as the request's field.
absl::Status ImageError(std::size_t i, const absl::Status& st) {
  return absl::Status(st.code(), absl::StrCat("images[", i, "]: ", st.message()));
}

StreamEvent EndEvent(ExitReason reason, absl::Status status) {
  StreamEvent e;
  e.type = StreamEvent::Type::kEnd;
  e.reason = reason;
  e.status = std::move(status);
  return e;
}

}  // namespace

// ---------------------------------------------------------------- RequestStream

std::vector<StreamEvent> RequestStream::Drain() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<StreamEvent> out(std::make_move_iterator(events_.begin()), std::make_move_iterator(events_.end()));
  events_.clear();
  return out;
}

bool RequestStream::Wait(std::chrono::steady_clock::duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return !events_.empty(); });
}

std::optional<std::chrono::steady_clock::time_point> RequestStream::started() const {
  std::lock_guard<std::mutex> lock(mu_);
  return started_;
}

std::int64_t RequestStream::cached_tokens() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cached_tokens_;
}

void RequestStream::MarkStarted(std::chrono::steady_clock::time_point when, std::int64_t cached_tokens) {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_.has_value()) return;
  started_ = when;
  cached_tokens_ = cached_tokens;
}

bool RequestStream::ended() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ended_;
}

void RequestStream::Push(StreamEvent event) {
  bool was_empty;
  {
    std::lock_guard<std::mutex> lock(mu_);
    SIROCCO_CHECK(!ended_, "event pushed after the end of a stream");
    ended_ = event.type == StreamEvent::Type::kEnd;
    was_empty = events_.empty();
    events_.push_back(std::move(event));
  }
  cv_.notify_all();
  if (was_empty && on_ready_) on_ready_();
}

// ---------------------------------------------------------------- EngineLoop: callers' side

absl::StatusOr<std::unique_ptr<EngineLoop>> EngineLoop::Create(const EngineOptions& options) {
  if (options.model == nullptr) return absl::InvalidArgumentError("EngineOptions.model is null");
  const ModelConfig& c = options.model->config();
  // The pool lives where the model runs (device memory on a GPU).
  KvPoolOptions pool_options = options.model->PoolOptions(options.num_blocks, options.block_size);
  pool_options.prefix_caching = options.prefix_caching;
  SIROCCO_ASSIGN_OR_RETURN(auto pool, KvPool::Create(pool_options, options.model->device()));
  SchedulerOptions so;
  so.max_tokens_per_step = options.max_tokens_per_step;
  so.max_seqs_per_step = options.max_seqs_per_step;
  so.max_waiting = options.max_waiting;
  so.reservation_quarantine = options.reservation_quarantine;
  so.max_model_len = options.max_model_len > 0 ? options.max_model_len : c.max_position_embeddings;
  if (so.max_model_len > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("EngineOptions.max_model_len (", so.max_model_len,
                                                   ") exceeds the model's context length ", c.max_position_embeddings));
  }
  so.vocab_size = c.vocab_size;
  if (const PixtralEncoder* vision = options.model->vision()) {
    so.image_token_id = static_cast<std::int32_t>(vision->config().image_token_index);
  }
  so.eos_token_ids = c.eos_token_ids;
  SIROCCO_ASSIGN_OR_RETURN(auto scheduler, Scheduler::Create(so, pool.get()));
  if (options.image_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("EngineOptions.image_threads must be >= 0, got ", options.image_threads));
  }
  std::unique_ptr<TaskPool> image_pool;
  if (options.image_threads > 0 && options.model->vision() != nullptr) {
    SIROCCO_ASSIGN_OR_RETURN(image_pool, TaskPool::Create(options.image_threads));
  }
  std::unique_ptr<EngineLoop> loop(new EngineLoop(options, std::move(pool), std::move(scheduler)));
  loop->image_pool_ = std::move(image_pool);
  loop->PublishStats();
  {
    std::lock_guard<std::mutex> lock(loop->stats_mu_);
    loop->stats_.running = true;
  }
  EngineLoop* raw = loop.get();
  std::lock_guard<std::mutex> lock(loop->join_mu_);
  loop->thread_ = std::thread([raw] { raw->Run(); });
  return loop;
}

EngineLoop::EngineLoop(const EngineOptions& options, std::unique_ptr<KvPool> pool, std::unique_ptr<Scheduler> scheduler)
    : options_(options), model_(*options.model), pool_(std::move(pool)), scheduler_(std::move(scheduler)) {}

EngineLoop::~EngineLoop() { Stop(StopMode::kCancel); }

absl::Status EngineLoop::Enqueue(Command cmd, bool new_work) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return absl::UnavailableError("engine stopped");
    if (new_work && stop_.has_value()) return absl::UnavailableError("engine draining: not taking new requests");
    commands_.push_back(std::move(cmd));
  }
  cv_.notify_one();
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<RequestStream>> EngineLoop::Submit(RequestId id, RequestSpec spec,
                                                                  std::function<void()> on_ready) {
  SIROCCO_RETURN_IF_ERROR(scheduler_->ValidateRequest(spec));  // immutable state only
  SIROCCO_RETURN_IF_ERROR(CheckResponse(spec.response));
  auto stream = std::make_shared<RequestStream>(id, std::move(on_ready));
  SIROCCO_RETURN_IF_ERROR(Enqueue(AddCmd{id, std::move(spec), stream}, /*new_work=*/true));
  return stream;
}

void EngineLoop::Cancel(RequestId id) { (void)Enqueue(CancelCmd{id}, /*new_work=*/false); }

absl::Status EngineLoop::Reserve(ReserveSpec spec, ReserveDone done) {
  return Enqueue(ReserveCmd{std::move(spec), std::move(done)}, /*new_work=*/true);
}

absl::StatusOr<std::shared_ptr<RequestStream>> EngineLoop::Decode(ReservationId reservation, RequestId id,
                                                                  std::int32_t first_token, DecodeSpec spec,
                                                                  std::function<void()> on_ready) {
  auto stream = std::make_shared<RequestStream>(id, std::move(on_ready));
  SIROCCO_RETURN_IF_ERROR(Enqueue(DecodeCmd{reservation, id, first_token, std::move(spec), stream}, false));
  return stream;
}

absl::Status EngineLoop::WriteKv(ReservationId reservation, KvWriter write, std::function<void(absl::Status)> done) {
  return Enqueue(WriteKvCmd{reservation, std::move(write), std::move(done)}, /*new_work=*/false);
}

absl::Status EngineLoop::TransferDone(RequestId id, absl::Status result) {
  return Enqueue(TransferDoneCmd{id, std::move(result)}, /*new_work=*/false);
}

void EngineLoop::Stop(StopMode mode) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stop_.has_value() || mode == StopMode::kCancel) stop_ = mode;
  }
  cv_.notify_all();
  std::lock_guard<std::mutex> lock(join_mu_);
  if (thread_.joinable()) thread_.join();
  if (image_pool_ != nullptr) image_pool_->Shutdown();  // their results would find the loop closed
}

EngineStats EngineLoop::Stats() const {
  std::lock_guard<std::mutex> lock(stats_mu_);
  return stats_;
}

// ---------------------------------------------------------------- EngineLoop: the engine thread

void EngineLoop::Run() {
  std::optional<SchedTime> drain_deadline;
  for (;;) {
    std::vector<Command> commands;
    std::optional<StopMode> stop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      commands.swap(commands_);
      stop = stop_;
    }
    for (Command& cmd : commands) {
      Apply(cmd);
      EmitExits();  // before the next command may reuse an id that just exited
    }

    const SchedTime now = SchedClock::now();
    scheduler_->Expire(now);
    EmitExits();
    if (stop.has_value()) {
      if (!drain_deadline) drain_deadline = now + options_.drain_timeout;
      const bool idle = scheduler_->idle() && preparing_.empty();
      if (*stop == StopMode::kCancel || idle || now >= *drain_deadline) break;
    }

    // schedule → run → postprocess
    StepPlan plan = scheduler_->Schedule(now);
    const bool runnable = !plan.empty();  // RunStep may hold chunks back for the vision encoder
    if (runnable) RunStep(plan);
    EmitExits();
    PublishStats();

    if (!runnable) {  // nothing runnable: sleep until a command, a stop or a timer
      std::optional<SchedTime> wake = scheduler_->NextExpiry();
      if (drain_deadline && (!wake || *drain_deadline < *wake)) wake = drain_deadline;
      std::unique_lock<std::mutex> lock(mu_);
      auto woken = [&] { return !commands_.empty() || stop_ != stop; };
      if (wake) {
        cv_.wait_until(lock, *wake, woken);
      } else {
        cv_.wait(lock, woken);
      }
    }
  }

  // Refuse what is still queued, then end everything in flight.
  std::vector<Command> rest;
  {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    rest.swap(commands_);
  }
  const absl::Status stopped = absl::UnavailableError("engine stopped");
  for (Command& cmd : rest) Reject(cmd, stopped);
  scheduler_->CancelAll(stopped);
  for (auto& [id, p] : preparing_) p.stream->Push(EndEvent(ExitReason::kCancelled, stopped));
  preparing_.clear();
  EmitExits();
  SIROCCO_CHECK(live_.empty(), "a request outlived the engine");
  SIROCCO_CHECK(pool_->num_free() == pool_->num_blocks(), "KV blocks leaked");
  PublishStats();
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_.running = false;
}

void EngineLoop::Apply(Command& command) {
  const SchedTime now = SchedClock::now();
  std::visit(
      [&](auto& c) {
        using T = std::decay_t<decltype(c)>;
        if constexpr (std::is_same_v<T, AddCmd>) {
          if (live_.contains(c.id) || preparing_.contains(c.id)) {
            c.stream->Push(EndEvent(ExitReason::kFailed,
                                    absl::AlreadyExistsError(absl::StrCat("request ", c.id.value, " already exists"))));
            return;
          }
          Live staged;
          staged.images = std::move(c.spec.images);
          // Images that cannot fit the prompt fail it here.
          if (absl::Status st = PrepareImages(staged, c.spec.prompt); !st.ok()) {
            c.stream->Push(EndEvent(ExitReason::kFailed, std::move(st)));
            return;
          }
          if (c.spec.cache_key_prompt.empty()) c.spec.cache_key_prompt = CacheKeyPrompt(staged.images, c.spec.prompt);
          ApplyAdd(c, std::move(staged), now);
        } else if constexpr (std::is_same_v<T, CancelCmd>) {
          if (auto it = preparing_.find(c.id); it != preparing_.end()) {
            // Its image tasks run on; their result finds no request.
            it->second.stream->Push(EndEvent(ExitReason::kCancelled, absl::CancelledError("request cancelled")));
            preparing_.erase(it);
            return;
          }
          (void)scheduler_->Cancel(c.id);  // NOT_FOUND: already gone
        } else if constexpr (std::is_same_v<T, ReserveCmd>) {
          absl::StatusOr<Reservation> r = scheduler_->Reserve(c.spec, now);
          // Stats first: whoever learns of the reservation sees its blocks
          // counted in the next Load report.
          if (r.ok()) PublishStats();
          c.done(std::move(r));
        } else if constexpr (std::is_same_v<T, DecodeCmd>) {
          const Reservation* r = scheduler_->FindReservation(c.reservation);
          absl::Status st;
          if (r == nullptr) {
            st = absl::NotFoundError(absl::StrCat("reservation ", c.reservation.value, " is unknown or expired"));
          } else if (r->request != c.id) {
            st = absl::InvalidArgumentError(absl::StrCat("reservation ", c.reservation.value, " is for request ",
                                                         r->request.value, ", not ", c.id.value));
          } else if (live_.contains(c.id)) {
            st = absl::AlreadyExistsError(absl::StrCat("request ", c.id.value, " already exists"));
          }
          Live staged;
          staged.images = std::move(c.spec.images);
          if (st.ok() && !staged.images.empty() && c.spec.prompt.empty()) {
            st = absl::InvalidArgumentError("images: a decode with images needs the prompt's ids");
          }
          if (st.ok()) st = CheckResponse(c.spec.response);
          if (st.ok()) st = PrepareImages(staged, c.spec.prompt);
          const std::int32_t first[] = {c.first_token};
          if (st.ok()) st = StartConstraint(staged, c.spec.response, first, "first_token");
          if (st.ok() && c.spec.cache_key_prompt.empty()) {
            c.spec.cache_key_prompt = CacheKeyPrompt(staged.images, c.spec.prompt);
          }
          if (st.ok()) {
            live_[c.id].stream = c.stream;  // before MarkKvArrived: it may exit at once
            st = scheduler_->MarkKvArrived(c.reservation, c.first_token, c.spec, now);
            if (!st.ok()) live_.erase(c.id);
          }
          if (!st.ok()) {
            c.stream->Push(EndEvent(ExitReason::kFailed, std::move(st)));
            return;
          }
          if (const Scheduler::Sequence* s = scheduler_->Find(c.id)) {
            Live& live = live_[c.id];
            live.images = std::move(staged.images);  // encoded only if a recompute needs them
            live.image_at = std::move(staged.image_at);
            live.sampler.emplace(s->sampling, s->prompt());
            live.sampler->Replay(c.first_token);  // sampled by the prefill worker, same seed
            live.constraint = std::move(staged.constraint);
            live.allowed = std::move(staged.allowed);
          }
        } else if constexpr (std::is_same_v<T, TransferDoneCmd>) {
          (void)scheduler_->OnTransferDone(c.id, c.result);  // a cancelled request may be gone
        } else if constexpr (std::is_same_v<T, WriteKvCmd>) {
          const Reservation* r = scheduler_->FindReservation(c.reservation);
          absl::Status st =
              r == nullptr
                  ? absl::NotFoundError(absl::StrCat("reservation ", c.reservation.value, " is unknown or expired"))
                  : c.write(*pool_, r->blocks);
          if (c.done) c.done(std::move(st));
        } else if constexpr (std::is_same_v<T, ImagesReadyCmd>) {
          ApplyImagesReady(c, now);
        }
      },
      command);
}

void EngineLoop::ApplyAdd(AddCmd& c, Live staged, SchedTime now) {
  // The queue's limit counts requests being prepared: they are bound for it.
  if (absl::Status st = scheduler_->CheckQueueRoom(static_cast<std::int64_t>(preparing_.size())); !st.ok()) {
    c.stream->Push(EndEvent(ExitReason::kFailed, std::move(st)));
    return;
  }
  if (image_pool_ == nullptr || c.spec.deadline <= now || !NeedsPixels(staged, c.spec)) {
    AddToScheduler(c.id, std::move(c.spec), std::move(staged), std::move(c.stream), now);
    return;
  }
  // One task per image; the last to finish hands them all to the engine thread.
  struct Gather {
    std::mutex mu;
    std::vector<absl::StatusOr<std::vector<float>>> pixels;  // guarded by mu
    std::size_t left = 0;                                    // guarded by mu
  };
  auto gather = std::make_shared<Gather>();
  gather->pixels.resize(staged.images.size(), absl::UnknownError("not prepared"));
  gather->left = staged.images.size();
  const std::uint64_t ticket = next_ticket_++;
  for (std::size_t i = 0; i < staged.images.size(); ++i) {
    const bool posted = image_pool_->Post([this, gather, i, id = c.id, ticket, pixels = staged.images[i].pixels] {
      absl::StatusOr<std::vector<float>> p = pixels();
      ImagesReadyCmd ready{id, ticket, {}};
      {
        std::lock_guard<std::mutex> lock(gather->mu);
        gather->pixels[i] = std::move(p);
        if (--gather->left > 0) return;
        ready.pixels = std::move(gather->pixels);
      }
      // Refused only once the engine thread has ended, which ends the request.
      (void)Enqueue(std::move(ready), /*new_work=*/false);
    });
    SIROCCO_CHECK(posted, "image threads shut down while the engine thread runs");
  }
  preparing_.emplace(c.id, Preparing{std::move(c.spec), std::move(staged), std::move(c.stream), ticket});
}

void EngineLoop::ApplyImagesReady(ImagesReadyCmd& c, SchedTime now) {
  auto it = preparing_.find(c.id);
  if (it == preparing_.end() || it->second.ticket != c.ticket) return;  // cancelled meanwhile
  Preparing p = std::move(it->second);
  preparing_.erase(it);
  p.staged.pixels.reserve(c.pixels.size());
  for (std::size_t i = 0; i < c.pixels.size(); ++i) {
    if (!c.pixels[i].ok()) {
      p.stream->Push(EndEvent(ExitReason::kFailed, ImageError(i, c.pixels[i].status())));
      return;
    }
    p.staged.pixels.push_back(*std::move(c.pixels[i]));
  }
  AddToScheduler(c.id, std::move(p.spec), std::move(p.staged), std::move(p.stream), now);
}

void EngineLoop::AddToScheduler(RequestId id, RequestSpec spec, Live staged, std::shared_ptr<RequestStream> stream,
                                SchedTime now) {
  const std::span<const std::int32_t> replayed =
      std::span<const std::int32_t>(spec.prompt).last(static_cast<std::size_t>(spec.replayed));
  if (absl::Status st = StartConstraint(staged, spec.response, replayed, "replayed"); !st.ok()) {
    stream->Push(EndEvent(ExitReason::kFailed, std::move(st)));
    return;
  }
  if (absl::Status st = scheduler_->AddRequest(id, std::move(spec), now); !st.ok()) {
    stream->Push(EndEvent(ExitReason::kFailed, std::move(st)));
    return;
  }
  const Scheduler::Sequence* s = scheduler_->Find(id);
  Live& live = live_[id];
  live = std::move(staged);
  live.stream = std::move(stream);
  const std::span<const std::int32_t> prompt = s->prompt();
  const std::size_t fresh = prompt.size() - static_cast<std::size_t>(s->replayed);
  live.sampler.emplace(s->sampling, prompt.first(fresh));
  for (std::int32_t t : prompt.subspan(fresh)) live.sampler->Replay(t);
}

absl::Status EngineLoop::CheckResponse(const structured::ResponseConstraint& response) const {
  if (!response.active()) return absl::OkStatus();
  if (options_.constraint_vocabulary == nullptr) {
    return absl::FailedPreconditionError("response_format: this worker has no tokenizer to constrain output with");
  }
  if (options_.constraint_vocabulary->vocab_size() != model_.config().vocab_size) {
    return absl::FailedPreconditionError("response_format: the tokenizer's vocabulary does not match the model's");
  }
  if (response.tool_calls != nullptr && !options_.constraint_vocabulary->has_tool_calls()) {
    return absl::FailedPreconditionError("response_format: the tokenizer has no [TOOL_CALLS] and [ARGS] tokens");
  }
  return absl::OkStatus();
}

absl::Status EngineLoop::StartConstraint(Live& live, const structured::ResponseConstraint& response,
                                         std::span<const std::int32_t> earlier, std::string_view field) const {
  if (!response.active()) return absl::OkStatus();
  live.constraint.emplace(options_.constraint_vocabulary, response);
  live.allowed.assign(structured::MaskWords(options_.constraint_vocabulary->vocab_size()), 0u);
  for (std::size_t i = 0; i < earlier.size(); ++i) {
    if (!live.constraint->Accept(earlier[i])) {
      return absl::InvalidArgumentError(absl::StrCat(std::string(field), ": token ", static_cast<int>(earlier[i]),
                                                     " (at ", static_cast<std::uint64_t>(i),
                                                     ") does not match the response format"));
    }
  }
  return absl::OkStatus();
}

bool EngineLoop::NeedsPixels(const Live& staged, const RequestSpec& spec) const {
  if (staged.image_at.empty()) return false;
  // Without a cache key nothing from the first image on is cached. The match
  // may shrink (eviction) before the request starts: the engine thread then
  // asks for the pixels itself.
  if (spec.cache_key_prompt.empty()) return true;
  const std::int64_t cached =
      static_cast<std::int64_t>(pool_->MatchPrefix(spec.cache_key_prompt).blocks.size()) * options_.block_size;
  return cached <= staged.image_at.back();
}

void EngineLoop::Reject(Command& command, const absl::Status& why) {
  std::visit(
      [&](auto& c) {
        using T = std::decay_t<decltype(c)>;
        if constexpr (std::is_same_v<T, AddCmd> || std::is_same_v<T, DecodeCmd>) {
          c.stream->Push(EndEvent(ExitReason::kFailed, why));
        } else if constexpr (std::is_same_v<T, ReserveCmd>) {
          c.done(why);
        } else if constexpr (std::is_same_v<T, WriteKvCmd>) {
          if (c.done) c.done(why);
        }
      },
      command);
}

absl::Status EngineLoop::CheckImages(std::span<const ImageInput> images, std::span<const std::int32_t> prompt) const {
  const PixtralEncoder* vision = model_.vision();
  if (vision == nullptr) {
    if (images.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError("images: this model has no vision encoder");
  }
  const auto img = static_cast<std::int32_t>(vision->config().image_token_index);
  const auto placeholders = std::count(prompt.begin(), prompt.end(), img);
  const std::int64_t cell = vision->config().token_pixels();
  std::int64_t rows = 0;
  for (std::size_t i = 0; i < images.size(); ++i) {
    const ImageInput& im = images[i];
    if (im.height <= 0 || im.width <= 0 || im.height % cell != 0 || im.width % cell != 0) {
      return absl::InvalidArgumentError(absl::StrCat("images[", i, "]: ", im.width, "x", im.height,
                                                     " pixels is not a whole number of ", cell, "-pixel cells"));
    }
    if (!im.pixels) return absl::InvalidArgumentError(absl::StrCat("images[", i, "]: no pixels"));
    rows += vision->tokens_for(im.height, im.width);
  }
  if (rows != placeholders) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt has ", placeholders, " image tokens (id ", img,
                                                   ") but its ", images.size(), " images give ", rows));
  }
  return absl::OkStatus();
}

std::vector<std::int32_t> EngineLoop::CacheKeyPrompt(std::span<const ImageInput> images,
                                                     std::span<const std::int32_t> prompt) const {
  const PixtralEncoder* vision = model_.vision();
  if (images.empty() || vision == nullptr) return {};
  for (const ImageInput& im : images) {
    if (im.content_hash == 0) return {};
  }
  const auto img = static_cast<std::int32_t>(vision->config().image_token_index);
  std::vector<std::int32_t> key(prompt.begin(), prompt.end());
  std::size_t image = 0;
  std::int64_t index = 0;  // of the token within its image
  for (std::int32_t& t : key) {
    if (t != img) continue;
    const ImageInput& im = images[image];
    t = ImagePlaceholderKey(im.content_hash, static_cast<std::uint64_t>(index));
    if (++index == vision->tokens_for(im.height, im.width)) {
      ++image;
      index = 0;
    }
  }
  return key;
}

absl::Status EngineLoop::PrepareImages(Live& live, std::span<const std::int32_t> prompt) const {
  SIROCCO_RETURN_IF_ERROR(CheckImages(live.images, prompt));
  live.image_at.clear();
  if (live.images.empty()) return absl::OkStatus();
  const auto img = static_cast<std::int32_t>(model_.vision()->config().image_token_index);
  for (std::size_t p = 0; p < prompt.size(); ++p) {
    if (prompt[p] == img) live.image_at.push_back(static_cast<std::int64_t>(p));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> EngineLoop::AdvanceEncoding(Live& live, int* layers_left) {
  PixtralEncoder* vision = model_.vision();
  while (live.encoded < live.images.size()) {
    if (*layers_left == 0) return false;  // this step's budget is spent
    const std::size_t i = live.encoded;
    if (live.job == nullptr) {
      absl::StatusOr<std::vector<float>> pixels =
          live.pixels.empty() ? live.images[i].pixels() : std::move(live.pixels[i]);
      if (!pixels.ok()) return ImageError(i, pixels.status());
      absl::StatusOr<std::unique_ptr<PixtralEncoder::Job>> job =
          vision->Start(*pixels, live.images[i].height, live.images[i].width);
      if (!job.ok()) return ImageError(i, job.status());
      live.job = *std::move(job);
    }
    const std::int64_t before = live.job->layers_done();
    absl::StatusOr<bool> done = vision->Step(*live.job, *layers_left < 0 ? 0 : *layers_left);
    if (!done.ok()) return ImageError(i, done.status());
    const std::int64_t ran = live.job->layers_done() - before;
    vision_layers_ += ran;
    if (*layers_left > 0) *layers_left -= static_cast<int>(ran);
    if (!*done) return false;
    absl::StatusOr<std::vector<float>> rows = vision->Finish(*live.job);
    if (!rows.ok()) return ImageError(i, rows.status());
    live.image_rows.insert(live.image_rows.end(), rows->begin(), rows->end());
    live.job.reset();
    ++live.encoded;
  }
  live.pixels = {};
  return true;
}

void EngineLoop::RunStep(StepPlan& plan) {
  const std::size_t vocab = static_cast<std::size_t>(model_.config().vocab_size);
  const auto step_start = std::chrono::steady_clock::now();
  for (const PrefillChunk& c : plan.prefill) {
    // Only a request's first chunk (it starts after the cached prefix) ends its wait.
    const Scheduler::Sequence* s = scheduler_->Find(c.id);
    if (c.start != s->num_cached) continue;
    if (auto it = live_.find(c.id); it != live_.end() && it->second.stream) {
      it->second.stream->MarkStarted(step_start, s->num_cached);
    }
  }
  // A chunk that computes image tokens needs its request's image features:
  // encoded the first time (for a decode worker, only to recompute a
  // preempted request), vision_layers_per_step layers a step; the chunk
  // waits for the step where they are complete while the other items run.
  // A request whose images cannot be had fails alone.
  int layers_left = options_.vision_layers_per_step > 0 ? options_.vision_layers_per_step : -1;
  const std::int64_t vision_layers_before = vision_layers_;
  std::erase_if(plan.prefill, [&](const PrefillChunk& c) {
    auto it = live_.find(c.id);
    if (it == live_.end() || it->second.encoded == it->second.images.size()) return false;
    const std::vector<std::int64_t>& at = it->second.image_at;
    if (std::lower_bound(at.begin(), at.end(), c.start) == std::lower_bound(at.begin(), at.end(), c.start + c.len)) {
      return false;  // no image token in this chunk
    }
    absl::StatusOr<bool> ready = AdvanceEncoding(it->second, &layers_left);
    if (!ready.ok()) {
      (void)scheduler_->Fail(c.id, ready.status());
      return true;
    }
    return !*ready;  // not encoded yet: the chunk runs in a later step
  });
  if (vision_layers_ > vision_layers_before) ++vision_steps_;
  if (plan.decode.empty() && plan.prefill.empty()) return;  // only encoder work this step
  std::vector<ForwardItem> items;
  items.reserve(plan.decode.size() + plan.prefill.size());
  std::vector<std::vector<std::int32_t>> embed_at(plan.prefill.size());  // ForwardItem::embed_at of each chunk
  for (const DecodeItem& d : plan.decode) {
    const Scheduler::Sequence* s = scheduler_->Find(d.id);
    items.push_back(ForwardItem{std::span<const std::int32_t>(s->tokens).subspan(static_cast<std::size_t>(d.pos), 1),
                                d.pos, &s->blocks, false});
  }
  std::vector<LayerKvWritten> kv_written;  // prefill role: what each layer's hook reports
  for (std::size_t ci = 0; ci < plan.prefill.size(); ++ci) {
    const PrefillChunk& c = plan.prefill[ci];
    const Scheduler::Sequence* s = scheduler_->Find(c.id);
    items.push_back(ForwardItem{std::span<const std::int32_t>(s->tokens).subspan(static_cast<std::size_t>(c.start),
                                                                                 static_cast<std::size_t>(c.len)),
                                c.start, &s->blocks, false});
    if (auto it = live_.find(c.id); it != live_.end() && !it->second.image_at.empty()) {
      // The chunk's image tokens take their rows of the image features.
      const Live& live = it->second;
      const auto first = std::lower_bound(live.image_at.begin(), live.image_at.end(), c.start);
      const auto last = std::lower_bound(first, live.image_at.end(), c.start + c.len);
      if (first != last) {
        for (auto p = first; p != last; ++p) embed_at[ci].push_back(static_cast<std::int32_t>(*p - c.start));
        const std::size_t hidden = static_cast<std::size_t>(model_.config().hidden_size);
        items.back().embed_at = embed_at[ci];
        items.back().embed_rows = std::span<const float>(live.image_rows)
                                      .subspan(static_cast<std::size_t>(first - live.image_at.begin()) * hidden,
                                               embed_at[ci].size() * hidden);
      }
    }
    if (s->prefill_only && options_.on_layer_kv_written) {
      // A prefix found in the cache goes out with the first computed chunk.
      if (c.start == s->num_cached && c.start > 0) {
        kv_written.push_back(LayerKvWritten{c.id, 0, 0, c.start, &s->blocks, pool_.get()});
      }
      kv_written.push_back(LayerKvWritten{c.id, 0, c.start, c.start + c.len, &s->blocks, pool_.get()});
    }
  }
  Mistral4Model::LayerDoneFn on_layer_done;
  if (!kv_written.empty()) {
    on_layer_done = [&](std::int64_t layer) {
      for (LayerKvWritten& w : kv_written) {
        w.layer = layer;
        options_.on_layer_kv_written(w);
      }
    };
  }

  // One call when every item can run in one form; else decode absorbed apart.
  // Logits stay on the model's device and are sampled there; only the sampled
  // tokens (and logprobs) come back. Results are applied once every call of
  // the step has succeeded.
  const std::size_t num_decode = plan.decode.size();
  const bool split = !plan.decode.empty() && !plan.prefill.empty() && options_.prefill_form != AttentionForm::kAbsorbed;
  const std::span<const ForwardItem> all(items);
  std::vector<std::int32_t*> outputs;  // where each sampled token goes, in sampling order
  std::vector<RequestId> sampled_ids;
  std::vector<SampleResult> results;
  // Samples the rows of `logits` that want a token: decode item i at row
  // decode_row0 + i, prefill chunk i at prefill_row0 + i.
  auto sample = [&](const float* logits, bool decode_part, bool prefill_part, std::int64_t decode_row0,
                    std::int64_t prefill_row0) -> absl::Status {
    std::vector<RowSample> rows;
    if (decode_part) {
      for (std::size_t i = 0; i < plan.decode.size(); ++i) {
        rows.push_back(Draw(plan.decode[i].id, decode_row0 + static_cast<std::int64_t>(i)));
        outputs.push_back(&plan.decode[i].token);
        sampled_ids.push_back(plan.decode[i].id);
      }
    }
    if (prefill_part) {
      for (std::size_t i = 0; i < plan.prefill.size(); ++i) {
        if (!plan.prefill[i].samples) continue;
        rows.push_back(Draw(plan.prefill[i].id, prefill_row0 + static_cast<std::int64_t>(i)));
        outputs.push_back(&plan.prefill[i].token);
        sampled_ids.push_back(plan.prefill[i].id);
      }
    }
    std::vector<SampleResult> part;
    if (!rows.empty()) {
      SIROCCO_RETURN_IF_ERROR(
          model_.device().SampleRows(rows, logits, static_cast<int>(vocab), static_cast<int>(vocab), &part));
    }
    for (SampleResult& r : part) results.push_back(std::move(r));
    return absl::OkStatus();
  };
  absl::Status st;
  if (split) {
    absl::StatusOr<const float*> logits =
        model_.ForwardOnDevice(all.first(num_decode), *pool_, AttentionForm::kAbsorbed);
    st = logits.status();
    if (st.ok()) st = sample(*logits, true, false, 0, 0);
    if (st.ok()) {
      logits = model_.ForwardOnDevice(all.subspan(num_decode), *pool_, options_.prefill_form, on_layer_done);
      st = logits.status();
      if (st.ok()) st = sample(*logits, false, true, 0, 0);
    }
  } else {
    const AttentionForm form = plan.prefill.empty() ? AttentionForm::kAbsorbed : options_.prefill_form;
    absl::StatusOr<const float*> logits = model_.ForwardOnDevice(all, *pool_, form, on_layer_done);
    st = logits.status();
    if (st.ok()) st = sample(*logits, true, true, 0, static_cast<std::int64_t>(num_decode));
  }
  if (!st.ok()) {
    scheduler_->OnStepFailed(plan, st);
    return;
  }
  ++steps_;
  for (std::size_t i = 0; i < results.size(); ++i) Deliver(sampled_ids[i], std::move(results[i]), outputs[i]);
  scheduler_->OnStepDone(plan);
}

RowSample EngineLoop::Draw(RequestId id, std::int64_t row) {
  auto it = live_.find(id);
  SIROCCO_CHECK(it != live_.end() && it->second.sampler.has_value(), "scheduled request without engine state");
  Live& live = it->second;
  SamplerState& sampler = *live.sampler;
  RowSample sample{&sampler, sampler.TakeDraw(), row, {}};
  if (live.constraint.has_value()) {
    live.constraint->FillAllowed(live.allowed, &mask_cache_);
    ++token_masks_;
    sample.allowed = live.allowed;
  }
  return sample;
}

void EngineLoop::Deliver(RequestId id, SampleResult r, std::int32_t* token) {
  Live& live = live_.find(id)->second;
  live.sampler->Observe(r.token);
  if (live.constraint.has_value()) {
    SIROCCO_CHECK(live.constraint->Accept(r.token), "sampled a token the response format's mask excludes");
  }
  *token = r.token;
  ++tokens_sampled_;
  if (scheduler_->Find(id)->prefill_only) {
    live.held = std::move(r);  // reported once the transfer is complete
  } else {
    live.stream->Push(TokenEvent(std::move(r)));
  }
}

void EngineLoop::EmitExits() {
  for (Exit& e : scheduler_->TakeExits()) {
    auto it = live_.find(e.id);
    SIROCCO_CHECK(it != live_.end(), "exit of a request the engine does not know");
    Live& live = it->second;
    if (e.reason == ExitReason::kPrefillDone && live.held.has_value()) {
      live.stream->Push(TokenEvent(std::move(*live.held)));
    }
    live.stream->Push(EndEvent(e.reason, std::move(e.status)));
    live_.erase(it);
  }
}

void EngineLoop::PublishStats() {
  SchedulerStats s = scheduler_->Stats();
  std::int64_t preparing_tokens = 0;
  for (const auto& [id, p] : preparing_) preparing_tokens += static_cast<std::int64_t>(p.spec.prompt.size());
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_.scheduler = s;
  stats_.steps = steps_;
  stats_.tokens_sampled = tokens_sampled_;
  stats_.vision_layers = vision_layers_;
  stats_.vision_steps = vision_steps_;
  stats_.token_masks = token_masks_;
  stats_.token_mask_cache_hits = mask_cache_.hits();
  stats_.preparing = static_cast<std::int64_t>(preparing_.size());
  stats_.preparing_tokens = preparing_tokens;
}

}  // namespace sirocco::engine
