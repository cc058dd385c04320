// The worker's scheduler: which sequences run in the next forward step, and
// what happens to each request between arrival and exit. Pure logic over a
// KvPool's block accounting: no model, no threads, no clock of its own (every
// time-dependent call takes `now`, so tests drive time).
//
// A request moves through states in time order:
//
//   queued ──► prefilling ──► decoding ──► (exit: stop | length)
//      ▲            │   └──► transferring ──► (exit: prefill done)   [prefill role]
//      └─ preempted ┘
//   Reserve ──► (reservation) ──MarkKvArrived──► decoding            [decode role]
//
// and leaves through exactly one Exit (stop, length, prefill done, cancelled,
// deadline exceeded, failed), at which point its blocks are back in the pool.
// A reservation that never receives its KV leaves when its TTL passes.
//
// Policy of Schedule(), per step, under a token budget and a sequence limit:
//   1. Decode first (latency): every decoding request, in (priority desc,
//      arrival asc) order, gets one token. A sequence that needs a new block
//      when the pool is empty preempts the running request that comes last in
//      that order (lowest priority, newest; a prefilling or a decoding one,
//      possibly itself): its blocks are freed and it is requeued with its
//      tokens so far, to be recomputed by prefill when blocks allow.
//   2. Then prefill, with what budget is left: chunks of the requests
//      already prefilling, then new admissions from the queue in (priority
//      desc, arrival asc) order. Admission takes blocks for the whole
//      sequence to prefill at once, so a chunk never waits for blocks; the
//      queue head blocks the queue (no overtaking, so big requests do not
//      starve), and nothing is admitted in a step that preempted.
// A request must fit the pool alone (prompt + max_tokens - 1 cached tokens),
// else it is refused up front: once admitted, it always makes progress.
//
// Prefix cache (KvPoolOptions::prefix_caching): an admission first shares the
// longest run of published blocks that hold the sequence's leading tokens
// (never its last token, whose logits are needed) and prefills only the
// rest; every block a sequence fills (prompt or output, computed here or
// arrived from a prefill worker for ids DecodeSpec::prompt names) is
// published as soon as it is full.
//
// Thread-safety: none. The scheduler and its pool belong to one engine thread
// (docs/architecture.md, "Inside a worker"). The one exception is
// ValidateRequest, which reads only immutable options and may run anywhere.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/image_input.h"
#include "engine/kv_cache.h"
#include "engine/sampler.h"
#include "engine/structured/constraint.h"

namespace sirocco::engine {

using SchedClock = std::chrono::steady_clock;
using SchedTime = SchedClock::time_point;

// A request, named by whoever submits it (the router's id on a worker).
struct RequestId {
  std::uint64_t value = 0;
  friend auto operator<=>(RequestId, RequestId) = default;
};
// A block reservation awaiting KV from a prefill worker; distinct from the
// request it is for.
struct ReservationId {
  std::uint64_t value = 0;
  friend auto operator<=>(ReservationId, ReservationId) = default;
};
struct RequestIdHash {
  std::size_t operator()(RequestId id) const { return std::hash<std::uint64_t>()(id.value); }
};
struct ReservationIdHash {
  std::size_t operator()(ReservationId id) const { return std::hash<std::uint64_t>()(id.value); }
};

enum class RequestState : std::uint8_t { kQueued, kPrefilling, kTransferring, kDecoding };

enum class ExitReason : std::uint8_t {
  kStop,         // a stop or EOS token was generated
  kLength,       // max_tokens reached
  kPrefillDone,  // prefill role: first token sampled and the KV transfer completed
  kCancelled,
  kDeadlineExceeded,
  kFailed,  // the step or the transfer failed; Exit::status says why
};
const char* ExitReasonName(ExitReason reason);

struct SchedulerOptions {
  std::int64_t max_tokens_per_step = 512;  // token budget of one forward step
  std::int64_t max_seqs_per_step = 64;     // items (sequences) in one step
  std::int64_t max_model_len = 0;          // context length: prompt + max_tokens <= this
  std::int64_t vocab_size = 0;
  std::vector<std::int64_t> eos_token_ids;
  std::int64_t max_waiting = 0;  // queued requests before AddRequest refuses; 0: no limit
  // A reservation dropped before a Decode claimed it (cancelled, expired)
  // keeps its blocks this long, neither free nor reserved: a prefill
  // worker's writes already issued into them may still land (RMA bypasses
  // this process), and must not land in another request's KV. 0: freed at
  // once.
  SchedClock::duration reservation_quarantine = SchedClock::duration::zero();
  // The image placeholder ([IMG]): its KV depends on the image, not the id,
  // so the prefix cache neither matches nor publishes a block at or after
  // a sequence's first one. -1: the model takes no images.
  std::int32_t image_token_id = -1;
};

struct RequestSpec {
  std::vector<std::int32_t> prompt;  // token ids, >= 1
  SamplingParams sampling;
  StopParams stop;
  SchedTime deadline = SchedTime::max();
  std::int32_t priority = 0;  // higher runs first and is preempted last
  // Prefill role: after the first token the request holds its blocks in
  // `transferring` until OnTransferDone; stop params are not applied.
  bool prefill_only = false;
  // The last `replayed` ids of `prompt` were sampled earlier by this same
  // request (elsewhere: a decode worker re-prefilling after a failed KV
  // transfer, a migrated request). The sampler counts them as output and
  // replays their RNG draws, so sampling continues as if uninterrupted.
  // Stop params count only what is generated from here. In [0, prompt).
  std::int32_t replayed = 0;
  // The prompt's images, one per run of [IMG] tokens, in prompt order
  // (SchedulerOptions::image_token_id). The engine loop keeps them; the
  // scheduler never reads them.
  std::vector<ImageInput> images;
  // The ids the prefix cache keys the prompt by: `prompt` with each image
  // placeholder replaced by a negative id derived from its image's content
  // and its place in the image (the engine loop's CacheKeyPrompt), so that
  // blocks with the same image are shared. Empty: `prompt`, and nothing from
  // the first image placeholder on is cached.
  std::vector<std::int32_t> cache_key_prompt;
  // What the output must match (a response format); the engine loop masks
  // each draw. The `replayed` tokens must match it too.
  structured::ResponseConstraint response;
};

// Blocks held for a request whose prompt KV a prefill worker will write.
struct ReserveSpec {
  RequestId request;
  std::vector<std::int32_t> prompt;  // token ids the KV is for
  std::int64_t expected_output = 0;  // extra tokens of capacity to hold now
  SchedClock::duration ttl = std::chrono::seconds(30);
  // `prompt` holds the real ids (not placeholders for a length): the leading
  // blocks found in the prefix cache are shared instead of reserved, and
  // the writer skips them (Reservation::cached_tokens).
  bool prompt_known = false;
};
struct Reservation {
  ReservationId id;
  RequestId request;
  // Token order. The first ceil(prompt / block_size) receive the prompt's
  // KV; the rest is headroom for expected_output.
  std::vector<BlockId> blocks;
  SchedTime expires;
  // Leading prompt tokens (whole blocks, never the last token) whose KV is
  // in the prefix cache: those blocks are shared with other requests and
  // must not be written; the writer fills blocks from
  // cached_tokens / block_size on.
  std::int64_t cached_tokens = 0;
};
// What MarkKvArrived needs beyond the reservation: how to continue.
struct DecodeSpec {
  // The prompt's ids, when the caller knows them (the router sends them with
  // Decode): they replace the reservation's, for the sampler's penalties and
  // for a recompute after preemption. Empty: the reservation's ids.
  std::vector<std::int32_t> prompt;
  SamplingParams sampling;
  StopParams stop;  // max_tokens counts the first token
  SchedTime deadline = SchedTime::max();
  std::int32_t priority = 0;
  // The prompt's images (RequestSpec::images), for a recompute after
  // preemption: their pixels are asked for only then.
  std::vector<ImageInput> images;
  // As RequestSpec::cache_key_prompt (with `prompt`, or the reservation's).
  std::vector<std::int32_t> cache_key_prompt;
  // As RequestSpec::response; the first token must match it.
  structured::ResponseConstraint response;
};

// One sequence's share of a step. The runner fills `token` with the token it
// sampled for every decode item and every chunk with `samples`, then calls
// OnStepDone.
struct DecodeItem {
  RequestId id;
  std::int64_t pos = 0;  // position of the one token fed (the last token)
  std::int32_t token = -1;
};
struct PrefillChunk {
  RequestId id;
  std::int64_t start = 0;  // tokens [start, start + len) of the sequence
  std::int64_t len = 0;
  bool samples = false;  // ends the sequence: its last logits give the next token
  std::int32_t token = -1;
};
struct StepPlan {
  std::vector<DecodeItem> decode;
  std::vector<PrefillChunk> prefill;
  std::vector<RequestId> preempted;  // requeued for recompute during this Schedule
  bool empty() const { return decode.empty() && prefill.empty(); }
  std::int64_t num_tokens() const;
};

struct Exit {
  RequestId id;
  ExitReason reason = ExitReason::kStop;
  absl::Status status;  // OK for kStop, kLength, kPrefillDone
  std::int64_t num_output_tokens = 0;
};

struct SchedulerStats {
  std::int64_t total_blocks = 0;
  std::int64_t free_blocks = 0;
  std::int64_t waiting = 0;  // queued (new or preempted)
  std::int64_t prefilling = 0;
  std::int64_t decoding = 0;
  std::int64_t transferring = 0;
  std::int64_t reservations = 0;  // awaiting KV
  std::int64_t reserved_blocks = 0;
  std::int64_t quarantined_blocks = 0;  // of dropped reservations (SchedulerOptions::reservation_quarantine)
  // Tokens queued or prefilling whose KV is not computed yet (what a prefill
  // worker still has to do).
  std::int64_t prefill_tokens_pending = 0;
  std::int64_t preemptions = 0;           // cumulative
  std::int64_t reservations_expired = 0;  // cumulative
  // Prefix cache: published blocks (held or evictable; evictable ones count
  // as free), and, cumulative over admissions, tokens looked up and tokens
  // found (vLLM's prefix_cache_queries and prefix_cache_hits).
  std::int64_t cached_blocks = 0;
  std::int64_t prefix_cache_queries = 0;
  std::int64_t prefix_cache_hits = 0;
  std::int64_t running() const { return prefilling + decoding; }
};

class Scheduler {
 public:
  // The scheduler's view of one request. Engine code reads it (tokens, block
  // table, params) to build the forward step; only the scheduler writes it.
  struct Sequence {
    RequestId id;
    RequestState state = RequestState::kQueued;
    std::vector<std::int32_t> tokens;  // prompt, then generated tokens
    std::int64_t prompt_len = 0;
    std::int64_t num_computed = 0;  // leading tokens whose KV is in `blocks`
    // Of those, how many the last admission found in the prefix cache; its
    // first prefill chunk starts there.
    std::int64_t num_cached = 0;
    BlockTable blocks;
    // Leading blocks published to the prefix cache (or found there), and
    // the prefix they form.
    std::int64_t num_published = 0;
    PrefixKey prefix = PrefixKey::Root();
    SamplingParams sampling;
    StopParams stop;
    SchedTime deadline;
    std::int32_t priority = 0;
    bool prefill_only = false;
    std::int32_t replayed = 0;  // RequestSpec::replayed
    std::uint64_t arrival = 0;  // order of arrival; ties of priority break on it
    std::int64_t num_preemptions = 0;

    // RequestSpec::cache_key_prompt (empty: the prompt itself).
    std::vector<std::int32_t> cache_key_prompt;

    std::span<const std::int32_t> prompt() const {
      return std::span<const std::int32_t>(tokens).first(static_cast<std::size_t>(prompt_len));
    }
    std::span<const std::int32_t> output() const {
      return std::span<const std::int32_t>(tokens).subspan(static_cast<std::size_t>(prompt_len));
    }
    explicit Sequence(KvPool* pool) : blocks(pool) {}
  };

  // `pool` must outlive the scheduler; the scheduler returns every block it
  // took before it is destroyed.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(const SchedulerOptions& options, KvPool* pool);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // INVALID_ARGUMENT naming the field, or RESOURCE_EXHAUSTED when the request
  // could never fit the pool. Reads only immutable state: any thread.
  [[nodiscard]] absl::Status ValidateRequest(const RequestSpec& spec) const;

  // Validates and queues. Also ALREADY_EXISTS for an id in use, DEADLINE_
  // EXCEEDED for a deadline already past, RESOURCE_EXHAUSTED when the queue is
  // full (max_waiting).
  [[nodiscard]] absl::Status AddRequest(RequestId id, RequestSpec spec, SchedTime now);

  // Decode role. Takes blocks for the prompt (+ expected_output) now, or
  // RESOURCE_EXHAUSTED taking none.
  [[nodiscard]] absl::StatusOr<Reservation> Reserve(const ReserveSpec& spec, SchedTime now);
  // The prompt's KV is in the reservation's blocks and `first_token` was
  // sampled by the prefill worker: the request starts decoding (or exits at
  // once if the first token already stops it). NOT_FOUND for an unknown or
  // expired reservation; INVALID_ARGUMENT leaves the reservation in place.
  [[nodiscard]] absl::Status MarkKvArrived(ReservationId id, std::int32_t first_token, const DecodeSpec& spec,
                                           SchedTime now);
  // Prefill role: the transfer of a `transferring` request's KV completed
  // (exit kPrefillDone) or failed (exit kFailed with `result`).
  [[nodiscard]] absl::Status OnTransferDone(RequestId id, const absl::Status& result);

  // Ends a request in any state (exit kCancelled with `why`), or frees a
  // pending reservation made for it. NOT_FOUND when there is neither.
  absl::Status Cancel(RequestId id, absl::Status why = absl::CancelledError("request cancelled"));
  // Ends a request in any state with exit kFailed and `why` (the runner
  // could not prepare its inputs). NOT_FOUND when unknown.
  absl::Status Fail(RequestId id, absl::Status why);
  // Cancels every request (exit kCancelled with `why`) and frees every
  // reservation: the pool is whole afterwards.
  void CancelAll(const absl::Status& why);
  // Frees reservations whose TTL passed (returned) and ends requests whose
  // deadline passed (exit kDeadlineExceeded).
  std::vector<ReservationId> Expire(SchedTime now);
  // The earliest time at which Expire would do something, if any.
  std::optional<SchedTime> NextExpiry() const;

  // Plans the next step (policy above). May preempt. Empty when idle.
  StepPlan Schedule(SchedTime now);
  // Applies a step the runner completed with every sampled token filled in.
  void OnStepDone(const StepPlan& plan);
  // The step failed: every request in it exits kFailed with `error`.
  void OnStepFailed(const StepPlan& plan, const absl::Status& error);

  // Requests that exited since the last call, in exit order.
  std::vector<Exit> TakeExits();

  const Sequence* Find(RequestId id) const;
  const Reservation* FindReservation(ReservationId id) const;
  SchedulerStats Stats() const;
  bool idle() const { return seqs_.empty() && reservations_.empty(); }
  // RESOURCE_EXHAUSTED when the queue, with `also_waiting` requests bound
  // for it beside its own, is full (max_waiting); AddRequest checks with 0.
  absl::Status CheckQueueRoom(std::int64_t also_waiting = 0) const;
  const SchedulerOptions& options() const { return options_; }

 private:
  struct PendingReservation {
    Reservation info;
    std::vector<std::int32_t> prompt;
    BlockTable blocks;
    bool prompt_known = false;
    PrefixKey prefix = PrefixKey::Root();  // of the shared leading blocks
  };

  Scheduler(const SchedulerOptions& options, KvPool* pool) : options_(options), pool_(pool) {}

  std::int64_t BlocksFor(std::int64_t tokens) const;
  [[nodiscard]] absl::Status ValidatePrompt(std::span<const std::int32_t> prompt) const;
  [[nodiscard]] absl::Status ValidateParams(std::int64_t prompt_len, const SamplingParams& sampling,
                                            const StopParams& stop) const;
  Sequence* FindMutable(RequestId id);
  // Inserts into a queue kept in (priority desc, arrival asc) order.
  static void InsertOrdered(std::vector<Sequence*>& queue, Sequence* s);
  static void Remove(std::vector<Sequence*>& queue, Sequence* s);
  void Preempt(Sequence* s);
  // Gives empty `table` blocks for `capacity_tokens`, first sharing the
  // published blocks that hold `prompt`'s leading full blocks (never its
  // last token) when `match_prefix`, and counts the lookup. The match, or
  // RESOURCE_EXHAUSTED taking nothing.
  absl::StatusOr<PrefixMatch> TakeBlocks(BlockTable& table, std::span<const std::int32_t> prompt,
                                         std::int64_t capacity_tokens, bool match_prefix);
  // The leading tokens the prefix cache may hold: those before the first
  // image token (a cache key prompt has none).
  std::size_t CacheableLength(std::span<const std::int32_t> tokens) const;
  // The ids the prefix cache keys tokens [begin, end) of `s` by: its
  // tokens, the prompt's from its cache key prompt when it has one.
  std::vector<std::int32_t> CacheKeyTokens(const Sequence& s, std::int64_t begin, std::int64_t end) const;
  // INVALID_ARGUMENT unless `key` is empty or `prompt` with only image
  // placeholders replaced, by negative ids.
  absl::Status ValidateCacheKey(std::span<const std::int32_t> prompt, std::span<const std::int32_t> key) const;
  // Publishes every block of `s` that is full and computed (up to its first
  // image token).
  void PublishComputed(Sequence* s);
  void ExitRequest(Sequence* s, ExitReason reason, absl::Status status);

  SchedulerOptions options_;
  KvPool* pool_;
  std::unordered_map<RequestId, std::unique_ptr<Sequence>, RequestIdHash> seqs_;
  std::vector<Sequence*> waiting_;  // queued
  std::vector<Sequence*> running_;  // prefilling or decoding
  std::unordered_map<ReservationId, PendingReservation, ReservationIdHash> reservations_;
  struct Quarantined {
    SchedTime release;
    BlockTable blocks;
  };
  std::vector<Quarantined> quarantine_;  // dropped reservations' blocks, until `release`
  SchedTime last_now_{};                 // the latest time any call was given
  // Holds a dropped reservation's blocks for the quarantine (or frees them).
  void Quarantine(BlockTable blocks, SchedTime now);
  std::vector<Exit> exits_;
  std::uint64_t next_arrival_ = 0;
  std::uint64_t next_reservation_ = 1;
  std::int64_t preemptions_ = 0;
  std::int64_t reservations_expired_ = 0;
  std::int64_t prefix_cache_queries_ = 0;
  std::int64_t prefix_cache_hits_ = 0;
};

}  // namespace sirocco::engine
