// The engine thread of a worker: it owns the model's KV pool and the
// scheduler, and runs nano-vllm's step() forever: take commands → expire →
// schedule → one batched forward → sample → post events. The only locks that
// thread takes are brief and uncontended in practice: swapping the command
// queue once per iteration, appending to a request's output queue, and
// publishing a stats snapshot once per iteration.
//
// Other threads (gRPC reactors, the CLI, tests) talk to it only through this
// class: Submit / Decode / Reserve / Cancel / TransferDone / WriteKv enqueue a
// command and return at once; they never wait for a forward step. Each request
// streams its results into a RequestStream the caller drains without blocking;
// the stream's `on_ready` callback says when there is something to drain.
//
// Thread-safety: every public method of EngineLoop and RequestStream may be
// called from any thread except where noted. Callbacks (on_ready, Reserve's
// done, WriteKv's writer and done, on_layer_kv_written) run on the engine
// thread: they must be quick and must not call Stop() or the destructor.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/kv_cache.h"
#include "engine/mistral4.h"
#include "engine/pixtral.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"
#include "engine/structured/constraint.h"
#include "engine/task_pool.h"

namespace sirocco::engine {

// One item of a request's output: a token, or the end (always last, once).
struct StreamEvent {
  enum class Type : std::uint8_t { kToken, kEnd };
  Type type = Type::kToken;
  SampleResult sample;                    // kToken: token, and logprobs when asked
  ExitReason reason = ExitReason::kStop;  // kEnd
  absl::Status status;                    // kEnd: OK for stop, length, prefill done; else why
};

// A single-producer (the engine thread), single-consumer queue of one
// request's events.
class RequestStream {
 public:
  RequestStream(RequestId id, std::function<void()> on_ready) : id_(id), on_ready_(std::move(on_ready)) {}
  RequestStream(const RequestStream&) = delete;
  RequestStream& operator=(const RequestStream&) = delete;

  RequestId id() const { return id_; }
  // Takes every queued event; never waits (empty when none).
  std::vector<StreamEvent> Drain();
  // Waits up to `timeout` for an event to be queued; true if one is. For
  // tests and the CLI; a reactor uses on_ready and Drain instead.
  bool Wait(std::chrono::steady_clock::duration timeout);
  // The end event has been queued (it may not be drained yet).
  bool ended() const;
  // When the request's first forward step started (its prefill's first
  // chunk): the end of its time in the queue. Unset until then.
  std::optional<std::chrono::steady_clock::time_point> started() const;

  // Prompt tokens the request found in the prefix cache when it started
  // (0 before started()).
  std::int64_t cached_tokens() const;

  // Engine side. Calls on_ready (outside the lock) when the queue goes from
  // empty to non-empty, so a consumer that drains after every on_ready
  // misses nothing and is not woken per token while it lags.
  void Push(StreamEvent event);
  // Records started() and cached_tokens() the first time only.
  void MarkStarted(std::chrono::steady_clock::time_point when, std::int64_t cached_tokens = 0);

 private:
  const RequestId id_;
  const std::function<void()> on_ready_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<StreamEvent> events_;                                // guarded by mu_
  bool ended_ = false;                                            // guarded by mu_
  std::optional<std::chrono::steady_clock::time_point> started_;  // guarded by mu_
  std::int64_t cached_tokens_ = 0;                                // guarded by mu_
};

// Prefill role: layer `layer`'s KV of tokens [token_begin, token_end) of a
// prefill_only request is in `blocks` (of `pool`); later layers still compute.
// A prefix found in the prefix cache is reported once per layer with the
// request's first computed chunk, as a range of its own.
struct LayerKvWritten {
  RequestId request;
  std::int64_t layer = 0;
  std::int64_t token_begin = 0;
  std::int64_t token_end = 0;
  const BlockTable* blocks = nullptr;
  const KvPool* pool = nullptr;
};
using LayerKvWrittenFn = std::function<void(const LayerKvWritten&)>;

enum class StopMode : std::uint8_t {
  kDrain,   // refuse new work, finish what is in flight (bounded by drain_timeout)
  kCancel,  // end everything now with UNAVAILABLE
};

struct EngineOptions {
  const Mistral4Model* model = nullptr;  // not owned; outlives the loop
  // The KV pool the loop creates for the model.
  std::int64_t num_blocks = 0;
  std::int64_t block_size = 16;
  // Scheduler limits.
  std::int64_t max_tokens_per_step = 512;  // token budget per step
  std::int64_t max_seqs_per_step = 64;
  std::int64_t max_waiting = 0;    // 0: no limit
  std::int64_t max_model_len = 0;  // 0: the model's max_position_embeddings
  // SchedulerOptions::reservation_quarantine (decode role).
  std::chrono::steady_clock::duration reservation_quarantine = std::chrono::steady_clock::duration::zero();
  // Form of steps that prefill. With kAbsorbed a step is one Forward call;
  // with kExpanded decode items run in a second, absorbed call (expanding the
  // whole cached prefix for one query token per step would cost more than it
  // saves).
  AttentionForm prefill_form = AttentionForm::kAbsorbed;
  // Reuse the KV of published full blocks across requests with the same
  // leading tokens (the prefix cache: kv_cache.h, scheduler.h).
  bool prefix_caching = false;
  // Stop(kDrain) cancels what is still in flight after this long.
  std::chrono::steady_clock::duration drain_timeout = std::chrono::seconds(60);
  LayerKvWrittenFn on_layer_kv_written;  // optional
  // Threads that decode and resize a submitted prompt's images (ImageInput::
  // pixels) before it joins the queue, so that the engine thread -- and every
  // request it is decoding -- never waits on an image file (about 0.1 s for a
  // 3-megapixel PNG). 0: the engine thread asks for the pixels when a step
  // first computes the image's tokens, stalling that step. Used only with a
  // vision encoder; a decode (Decode()) asks on the engine thread either way,
  // and only to recompute.
  int image_threads = 2;
  // Vision encoder layers run per step, across all requests (0: an image's
  // whole encoder in the step that first needs it). The encoder runs on the
  // engine thread between steps, so this bounds what it adds to a step for
  // the requests being decoded; a chunk whose images are not encoded yet
  // waits, and the other requests' items run. An image's patch embedding
  // and projector run with its first and last layer.
  int vision_layers_per_step = 4;
  // The model's vocabulary as a response format needs it (token bytes,
  // special and think tokens, EOS). Null: requests with a response format
  // fail with FAILED_PRECONDITION.
  std::shared_ptr<const structured::ConstraintVocabulary> constraint_vocabulary;
};

struct EngineStats {
  SchedulerStats scheduler;
  std::int64_t steps = 0;  // forward steps run
  std::int64_t tokens_sampled = 0;
  // Submitted requests whose images are being prepared (image_threads): not
  // in scheduler.waiting yet, and their prompt tokens.
  std::int64_t preparing = 0;
  std::int64_t preparing_tokens = 0;
  // Vision encoder layers run, and the steps that ran any (cumulative).
  std::int64_t vision_layers = 0;
  std::int64_t vision_steps = 0;
  // Token masks made for response formats, and those of them whose JSON part
  // came from the mask cache (cumulative).
  std::int64_t token_masks = 0;
  std::int64_t token_mask_cache_hits = 0;
  bool running = false;  // the engine thread is alive
};

class EngineLoop {
 public:
  using ReserveDone = std::function<void(absl::StatusOr<Reservation>)>;
  // Writes KV into a reservation's blocks, on the engine thread (the
  // in-process transfer backend's receiving side).
  using KvWriter = std::function<absl::Status(KvPool& pool, std::span<const BlockId> blocks)>;

  // Creates the pool and the scheduler and starts the engine thread.
  static absl::StatusOr<std::unique_ptr<EngineLoop>> Create(const EngineOptions& options);
  // Stop(kCancel) unless stopped already.
  ~EngineLoop();
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  // Queues a request. Bad params (INVALID_ARGUMENT) and a request that could
  // never fit the pool (RESOURCE_EXHAUSTED) fail here; UNAVAILABLE once
  // stopping. Refusals found on the engine thread (duplicate id, full queue)
  // arrive as the stream's end event.
  absl::StatusOr<std::shared_ptr<RequestStream>> Submit(RequestId id, RequestSpec spec,
                                                        std::function<void()> on_ready = nullptr);
  // Ends a request submitted earlier (end event kCancelled), or frees its
  // pending reservation. Unknown or finished ids are ignored.
  void Cancel(RequestId id);

  // Decode role. `done` runs on the engine thread once, unless this returns
  // an error (UNAVAILABLE once stopping).
  [[nodiscard]] absl::Status Reserve(ReserveSpec spec, ReserveDone done);
  // The reservation's prompt KV has arrived: decode from `first_token` on.
  // The stream carries the tokens after the first. Errors on the engine
  // thread (expired reservation: NOT_FOUND) arrive as the end event.
  absl::StatusOr<std::shared_ptr<RequestStream>> Decode(ReservationId reservation, RequestId id,
                                                        std::int32_t first_token, DecodeSpec spec,
                                                        std::function<void()> on_ready = nullptr);
  // Runs `write` on the engine thread against a live reservation's blocks,
  // then `done` with its result (NOT_FOUND if the reservation is gone).
  [[nodiscard]] absl::Status WriteKv(ReservationId reservation, KvWriter write, std::function<void(absl::Status)> done);

  // Prefill role: a prefill_only request's KV transfer finished. On success
  // its stream gets the first token and then kPrefillDone; else kFailed.
  [[nodiscard]] absl::Status TransferDone(RequestId id, absl::Status result);

  // Stops the engine thread and joins it; every request ends and every block
  // is back in the pool when it returns. Idempotent; not from a callback.
  void Stop(StopMode mode = StopMode::kDrain);

  EngineStats Stats() const;
  // The KV pool (for registration with a transfer agent; the engine thread owns its contents).
  const KvPool& pool() const { return *pool_; }

 private:
  struct AddCmd {
    RequestId id;
    RequestSpec spec;
    std::shared_ptr<RequestStream> stream;
  };
  struct CancelCmd {
    RequestId id;
  };
  struct ReserveCmd {
    ReserveSpec spec;
    ReserveDone done;
  };
  struct DecodeCmd {
    ReservationId reservation;
    RequestId id;
    std::int32_t first_token;
    DecodeSpec spec;
    std::shared_ptr<RequestStream> stream;
  };
  struct TransferDoneCmd {
    RequestId id;
    absl::Status result;
  };
  struct WriteKvCmd {
    ReservationId reservation;
    KvWriter write;
    std::function<void(absl::Status)> done;
  };
  // From an image thread: the pixels of request `id`'s images, in order.
  struct ImagesReadyCmd {
    RequestId id;
    std::uint64_t ticket = 0;  // Preparing::ticket: tells a reused id apart
    std::vector<absl::StatusOr<std::vector<float>>> pixels;
  };
  using Command = std::variant<AddCmd, CancelCmd, ReserveCmd, DecodeCmd, TransferDoneCmd, WriteKvCmd, ImagesReadyCmd>;

  // Engine-thread state of a live request, beside the scheduler's record.
  struct Live {
    std::shared_ptr<RequestStream> stream;
    std::optional<SamplerState> sampler;
    std::optional<SampleResult> held;  // prefill role: first token, sent after the transfer
    // The response format's state and this step's mask of allowed tokens.
    std::optional<structured::TokenConstraint> constraint;
    std::vector<std::uint32_t> allowed;
    // The prompt's images and, once encoded, their features: one row of
    // hidden_size floats per [IMG] token, whose prompt positions are image_at.
    std::vector<ImageInput> images;
    std::vector<std::int64_t> image_at;
    std::vector<float> image_rows;  // complete once encoded == images.size()
    // Encoding in progress: images[encoded] is in `job` (several steps).
    std::size_t encoded = 0;
    std::unique_ptr<PixtralEncoder::Job> job;
    // Each image's pixels when prepared ahead (image_threads); empty: asked
    // of images[i].pixels when encoding. Dropped once encoded.
    std::vector<std::vector<float>> pixels;
  };
  // A submitted request whose images an image thread is preparing.
  struct Preparing {
    RequestSpec spec;
    Live staged;
    std::shared_ptr<RequestStream> stream;
    std::uint64_t ticket = 0;
  };

  EngineLoop(const EngineOptions& options, std::unique_ptr<KvPool> pool, std::unique_ptr<Scheduler> scheduler);

  // Enqueues unless closed; `new_work` commands are also refused while draining.
  [[nodiscard]] absl::Status Enqueue(Command cmd, bool new_work);
  void Run();  // the engine thread
  void Apply(Command& cmd);
  void Reject(Command& cmd, const absl::Status& why);
  void RunStep(StepPlan& plan);
  // AddCmd, once the request's images are checked: to an image thread when
  // their pixels are needed and threads exist, else to the scheduler.
  void ApplyAdd(AddCmd& c, Live staged, SchedTime now);
  void ApplyImagesReady(ImagesReadyCmd& c, SchedTime now);
  // Queues a request whose images are checked (and maybe prepared).
  void AddToScheduler(RequestId id, RequestSpec spec, Live staged, std::shared_ptr<RequestStream> stream,
                      SchedTime now);
  // Whether a step would need any of the images' pixels: false when the
  // prefix cache now holds the KV of every image token.
  bool NeedsPixels(const Live& staged, const RequestSpec& spec) const;
  // INVALID_ARGUMENT unless `images` fit the model and the prompt's image
  // tokens, one per feature row.
  absl::Status CheckImages(std::span<const ImageInput> images, std::span<const std::int32_t> prompt) const;
  // RequestSpec::cache_key_prompt for `prompt` and its images, which passed
  // CheckImages; empty when an image has no content hash.
  std::vector<std::int32_t> CacheKeyPrompt(std::span<const ImageInput> images,
                                           std::span<const std::int32_t> prompt) const;
  // CheckImages, then records the prompt positions of the image tokens
  // (live.image_at).
  absl::Status PrepareImages(Live& live, std::span<const std::int32_t> prompt) const;
  // Runs the vision encoder on `live.images` (pixels asked for now unless
  // prepared), at most *layers_left layers when > 0 (decremented); true once
  // every image's rows are in live.image_rows.
  absl::StatusOr<bool> AdvanceEncoding(Live& live, int* layers_left);
  // FAILED_PRECONDITION when an active `response` has no (matching)
  // vocabulary to work with.
  absl::Status CheckResponse(const structured::ResponseConstraint& response) const;
  // Starts `live`'s response format (when active) and moves it past tokens
  // sampled earlier: INVALID_ARGUMENT naming `field` if one does not match.
  absl::Status StartConstraint(Live& live, const structured::ResponseConstraint& response,
                               std::span<const std::int32_t> earlier, std::string_view field) const;
  // The row to sample for request `id` (taking its RNG draw for this step).
  RowSample Draw(RequestId id, std::int64_t row);
  // Applies a sampled token: the request's history, the plan, its stream.
  void Deliver(RequestId id, SampleResult result, std::int32_t* token);
  void EmitExits();
  void PublishStats();

  const EngineOptions options_;
  const Mistral4Model& model_;
  // Engine-thread state. The pool outlives the scheduler that allocates from it.
  std::unique_ptr<KvPool> pool_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unordered_map<RequestId, Live, RequestIdHash> live_;
  std::unordered_map<RequestId, Preparing, RequestIdHash> preparing_;
  // Response formats' token masks by JSON state, shared by every request
  // (about 16 KB each for a 131k vocabulary).
  structured::MaskCache mask_cache_{256};
  std::uint64_t next_ticket_ = 1;
  std::int64_t steps_ = 0;
  std::int64_t tokens_sampled_ = 0;
  std::int64_t vision_layers_ = 0;
  std::int64_t vision_steps_ = 0;
  std::int64_t token_masks_ = 0;

  // Shared with callers.
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Command> commands_;  // guarded by mu_
  std::optional<StopMode> stop_;   // guarded by mu_; set once Stop is asked
  bool closed_ = false;            // guarded by mu_; the thread no longer takes commands
  mutable std::mutex stats_mu_;
  EngineStats stats_;  // guarded by stats_mu_
  std::mutex join_mu_;
  std::thread thread_;  // guarded by join_mu_ once started
  // Image threads; their tasks enqueue ImagesReadyCmd. Shut down (under
  // join_mu_) once the engine thread has ended, before `this` goes.
  std::unique_ptr<TaskPool> image_pool_;
};

}  // namespace sirocco::engine
