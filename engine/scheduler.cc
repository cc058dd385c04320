#include "engine/scheduler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/check.h"
#include "engine/status_macros.h"

namespace sirocco::engine {
namespace {

// Queue order: higher priority first, then earlier arrival.
bool RunsBefore(const Scheduler::Sequence* a, const Scheduler::Sequence* b) {
  if (a->priority != b->priority) return a->priority > b->priority;
  return a->arrival < b->arrival;
}

}  // namespace

const char* ExitReasonName(ExitReason reason) {
  switch (reason) {
    case ExitReason::kStop: return "stop";
    case ExitReason::kLength: return "length";
    case ExitReason::kPrefillDone: return "prefill_done";
    case ExitReason::kCancelled: return "cancelled";
    case ExitReason::kDeadlineExceeded: return "deadline_exceeded";
    case ExitReason::kFailed: return "failed";
  }
  return "unknown";
}

std::int64_t StepPlan::num_tokens() const {
  std::int64_t n = static_cast<std::int64_t>(decode.size());
  for (const PrefillChunk& c : prefill) n += c.len;
  return n;
}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(const SchedulerOptions& o, KvPool* pool) {
  if (pool == nullptr) return absl::InvalidArgumentError("Scheduler: pool is null");
  if (o.max_tokens_per_step < 1) return absl::InvalidArgumentError("Scheduler: max_tokens_per_step must be >= 1");
  if (o.max_seqs_per_step < 1) return absl::InvalidArgumentError("Scheduler: max_seqs_per_step must be >= 1");
  if (o.max_model_len < 1) return absl::InvalidArgumentError("Scheduler: max_model_len must be >= 1");
  if (o.vocab_size < 1) return absl::InvalidArgumentError("Scheduler: vocab_size must be >= 1");
  if (o.max_waiting < 0) return absl::InvalidArgumentError("Scheduler: max_waiting must be >= 0");
  return std::unique_ptr<Scheduler>(new Scheduler(o, pool));
}

Scheduler::~Scheduler() {
  // Block tables release on destruction; nothing else holds blocks.
  waiting_.clear();
  running_.clear();
  seqs_.clear();
  reservations_.clear();
}

std::int64_t Scheduler::BlocksFor(std::int64_t tokens) const {
  const std::int64_t bs = pool_->block_size();
  return (tokens + bs - 1) / bs;
}

absl::Status Scheduler::ValidatePrompt(std::span<const std::int32_t> prompt) const {
  if (prompt.empty()) return absl::InvalidArgumentError("prompt: must hold at least one token");
  for (std::size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0 || prompt[i] >= options_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt[", i, "]: token id ", prompt[i],
                                                     " is outside the vocabulary [0, ", options_.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status Scheduler::ValidateParams(std::int64_t prompt_len, const SamplingParams& sampling,
                                       const StopParams& stop) const {
  SIROCCO_RETURN_IF_ERROR(ValidateStopParams(stop));
  SIROCCO_RETURN_IF_ERROR(ValidateSamplingParams(sampling, options_.vocab_size));
  const std::int64_t total = prompt_len + stop.max_tokens;
  if (total > options_.max_model_len) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens: prompt (", prompt_len, ") plus max_tokens (",
                                                   stop.max_tokens, ") exceeds the context length ",
                                                   options_.max_model_len));
  }
  // The last generated token is never fed back, so it needs no KV slot.
  const std::int64_t blocks = BlocksFor(total - 1);
  if (blocks > pool_->num_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat("request needs ", blocks, " KV blocks for ", total - 1,
                                                     " tokens; the pool holds ", pool_->num_blocks()));
  }
  return absl::OkStatus();
}

absl::Status Scheduler::ValidateRequest(const RequestSpec& spec) const {
  SIROCCO_RETURN_IF_ERROR(ValidatePrompt(spec.prompt));
  if (spec.replayed < 0 || static_cast<std::size_t>(spec.replayed) >= spec.prompt.size()) {
    return absl::InvalidArgumentError(absl::StrCat("replayed: ", spec.replayed, " must be in [0, ", spec.prompt.size(),
                                                   ") (the prompt's length)"));
  }
  return ValidateParams(static_cast<std::int64_t>(spec.prompt.size()), spec.sampling, spec.stop);
}

absl::Status Scheduler::AddRequest(RequestId id, RequestSpec spec, SchedTime now) {
  last_now_ = std::max(last_now_, now);
  SIROCCO_RETURN_IF_ERROR(ValidateRequest(spec));
  if (seqs_.contains(id)) return absl::AlreadyExistsError(absl::StrCat("request ", id.value, " already exists"));
  for (const auto& [rid, r] : reservations_) {
    if (r.info.request == id) {
      return absl::AlreadyExistsError(absl::StrCat("request ", id.value, " holds a reservation"));
    }
  }
  if (spec.deadline <= now) return absl::DeadlineExceededError("deadline passed before the request was queued");
  SIROCCO_RETURN_IF_ERROR(CheckQueueRoom());
  SIROCCO_RETURN_IF_ERROR(ValidateCacheKey(spec.prompt, spec.cache_key_prompt));
  auto s = std::make_unique<Sequence>(pool_);
  s->id = id;
  s->state = RequestState::kQueued;
  s->prompt_len = static_cast<std::int64_t>(spec.prompt.size());
  s->tokens = std::move(spec.prompt);
  s->cache_key_prompt = std::move(spec.cache_key_prompt);
  s->sampling = spec.sampling;
  s->stop = std::move(spec.stop);
  s->deadline = spec.deadline;
  s->priority = spec.priority;
  s->prefill_only = spec.prefill_only;
  s->replayed = spec.replayed;
  s->arrival = next_arrival_++;
  InsertOrdered(waiting_, s.get());
  seqs_.emplace(id, std::move(s));
  return absl::OkStatus();
}

absl::StatusOr<Reservation> Scheduler::Reserve(const ReserveSpec& spec, SchedTime now) {
  last_now_ = std::max(last_now_, now);
  SIROCCO_RETURN_IF_ERROR(ValidatePrompt(spec.prompt));
  if (spec.expected_output < 0) return absl::InvalidArgumentError("expected_output: must be >= 0");
  if (spec.ttl <= SchedClock::duration::zero()) return absl::InvalidArgumentError("ttl: must be positive");
  const std::int64_t prompt_len = static_cast<std::int64_t>(spec.prompt.size());
  if (prompt_len >= options_.max_model_len) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", prompt_len, " tokens leave no room in the context length ",
                                                   options_.max_model_len));
  }
  if (seqs_.contains(spec.request)) {
    return absl::AlreadyExistsError(absl::StrCat("request ", spec.request.value, " already exists"));
  }
  for (const auto& [rid, r] : reservations_) {
    if (r.info.request == spec.request) {
      return absl::AlreadyExistsError(absl::StrCat("request ", spec.request.value, " already holds a reservation"));
    }
  }
  const std::int64_t tokens = std::min(prompt_len + spec.expected_output, options_.max_model_len);
  const std::int64_t blocks = BlocksFor(tokens);
  if (blocks > pool_->num_blocks()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("reservation needs ", blocks, " KV blocks; the pool holds ", pool_->num_blocks()));
  }
  PendingReservation r{{}, spec.prompt, BlockTable(pool_), spec.prompt_known, PrefixKey::Root()};
  // Only known ids are matched; the writer then skips the shared blocks.
  SIROCCO_ASSIGN_OR_RETURN(PrefixMatch match, TakeBlocks(r.blocks, spec.prompt, tokens, spec.prompt_known));
  r.prefix = match.key;
  r.info.cached_tokens = static_cast<std::int64_t>(match.blocks.size()) * pool_->block_size();
  r.info.id = ReservationId{next_reservation_++};
  r.info.request = spec.request;
  r.info.expires = now + spec.ttl;
  for (std::int64_t i = 0; i < r.blocks.num_blocks(); ++i) r.info.blocks.push_back(r.blocks.block(i));
  Reservation out = r.info;
  reservations_.emplace(out.id, std::move(r));
  return out;
}

absl::Status Scheduler::MarkKvArrived(ReservationId rid, std::int32_t first_token, const DecodeSpec& spec,
                                      SchedTime now) {
  last_now_ = std::max(last_now_, now);
  auto it = reservations_.find(rid);
  if (it == reservations_.end()) {
    return absl::NotFoundError(absl::StrCat("reservation ", rid.value, " is unknown or expired"));
  }
  PendingReservation& r = it->second;
  const std::int64_t prompt_len = static_cast<std::int64_t>(r.prompt.size());
  SIROCCO_RETURN_IF_ERROR(ValidateParams(prompt_len, spec.sampling, spec.stop));
  if (first_token < 0 || first_token >= options_.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("first_token: ", first_token, " is outside the vocabulary [0, ",
                                                   options_.vocab_size, ")"));
  }
  if (!spec.prompt.empty()) {
    if (static_cast<std::int64_t>(spec.prompt.size()) != prompt_len) {
      return absl::InvalidArgumentError(absl::StrCat("prompt: ", spec.prompt.size(), " ids for a reservation of ",
                                                     prompt_len, " tokens"));
    }
    if (r.prompt_known && spec.prompt != r.prompt) {
      return absl::InvalidArgumentError("prompt: not the ids the reservation was made for");
    }
    for (std::size_t i = 0; i < spec.prompt.size(); ++i) {
      if (spec.prompt[i] < 0 || spec.prompt[i] >= options_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("prompt[", i, "]: ", spec.prompt[i],
                                                       " is outside the vocabulary [0, ", options_.vocab_size, ")"));
      }
    }
  }
  if (spec.deadline <= now) return absl::DeadlineExceededError("deadline passed before decoding started");
  SIROCCO_RETURN_IF_ERROR(ValidateCacheKey(spec.prompt.empty() ? std::span<const std::int32_t>(r.prompt) : spec.prompt,
                                           spec.cache_key_prompt));

  auto s = std::make_unique<Sequence>(pool_);
  s->id = r.info.request;
  s->state = RequestState::kDecoding;
  s->prompt_len = prompt_len;
  s->tokens = spec.prompt.empty() ? std::move(r.prompt) : spec.prompt;
  s->cache_key_prompt = spec.cache_key_prompt;
  s->tokens.push_back(first_token);
  s->num_computed = prompt_len;
  s->blocks = std::move(r.blocks);
  // Shared leading blocks are published already.
  s->num_published = r.info.cached_tokens / pool_->block_size();
  s->prefix = r.prefix;
  // The arrived KV is for the prompt's ids only when they are known (a
  // reservation may be made for a prompt length alone).
  if (!spec.prompt.empty() || r.prompt_known) PublishComputed(s.get());
  s->sampling = spec.sampling;
  s->stop = spec.stop;
  s->deadline = spec.deadline;
  s->priority = spec.priority;
  s->arrival = next_arrival_++;
  reservations_.erase(it);
  Sequence* raw = s.get();
  seqs_.emplace(raw->id, std::move(s));
  InsertOrdered(running_, raw);
  const FinishReason f = CheckStop(raw->stop, options_.eos_token_ids, first_token, 1);
  if (f != FinishReason::kNone) {
    ExitRequest(raw, f == FinishReason::kStop ? ExitReason::kStop : ExitReason::kLength, absl::OkStatus());
  }
  return absl::OkStatus();
}

absl::Status Scheduler::OnTransferDone(RequestId id, const absl::Status& result) {
  Sequence* s = FindMutable(id);
  if (s == nullptr) return absl::NotFoundError(absl::StrCat("request ", id.value, " is unknown or gone"));
  if (s->state != RequestState::kTransferring) {
    return absl::FailedPreconditionError(absl::StrCat("request ", id.value, " is not transferring"));
  }
  if (result.ok()) {
    ExitRequest(s, ExitReason::kPrefillDone, absl::OkStatus());
  } else {
    ExitRequest(s, ExitReason::kFailed, result);
  }
  return absl::OkStatus();
}

absl::Status Scheduler::CheckQueueRoom(std::int64_t also_waiting) const {
  const std::int64_t waiting = static_cast<std::int64_t>(waiting_.size()) + also_waiting;
  if (options_.max_waiting > 0 && waiting >= options_.max_waiting) {
    return absl::ResourceExhaustedError(
        absl::StrCat("queue full: ", waiting, " requests waiting (max_waiting ", options_.max_waiting, ")"));
  }
  return absl::OkStatus();
}

absl::Status Scheduler::Cancel(RequestId id, absl::Status why) {
  if (Sequence* s = FindMutable(id)) {
    ExitRequest(s, ExitReason::kCancelled, std::move(why));
    return absl::OkStatus();
  }
  for (auto it = reservations_.begin(); it != reservations_.end(); ++it) {
    if (it->second.info.request == id) {
      Quarantine(std::move(it->second.blocks), last_now_);
      reservations_.erase(it);
      return absl::OkStatus();
    }
  }
  return absl::NotFoundError(absl::StrCat("request ", id.value, " is unknown or gone"));
}

absl::Status Scheduler::Fail(RequestId id, absl::Status why) {
  Sequence* s = FindMutable(id);
  if (s == nullptr) return absl::NotFoundError(absl::StrCat("request ", id.value, " is unknown or gone"));
  ExitRequest(s, ExitReason::kFailed, std::move(why));
  return absl::OkStatus();
}

void Scheduler::Quarantine(BlockTable blocks, SchedTime now) {
  if (options_.reservation_quarantine <= SchedClock::duration::zero()) return;  // `blocks` frees them
  quarantine_.push_back(Quarantined{now + options_.reservation_quarantine, std::move(blocks)});
}

void Scheduler::CancelAll(const absl::Status& why) {
  reservations_.clear();
  quarantine_.clear();
  std::vector<Sequence*> all;
  for (auto& [id, s] : seqs_) all.push_back(s.get());
  std::sort(all.begin(), all.end(), [](const Sequence* a, const Sequence* b) { return a->arrival < b->arrival; });
  for (Sequence* s : all) ExitRequest(s, ExitReason::kCancelled, why);
}

std::vector<ReservationId> Scheduler::Expire(SchedTime now) {
  last_now_ = std::max(last_now_, now);
  std::erase_if(quarantine_, [&](const Quarantined& q) { return q.release <= now; });
  std::vector<ReservationId> expired;
  for (auto it = reservations_.begin(); it != reservations_.end();) {
    if (it->second.info.expires <= now) {
      expired.push_back(it->first);
      Quarantine(std::move(it->second.blocks), now);
      it = reservations_.erase(it);
      ++reservations_expired_;
    } else {
      ++it;
    }
  }
  std::vector<Sequence*> late;
  for (auto& [id, s] : seqs_) {
    if (s->deadline <= now) late.push_back(s.get());
  }
  // Exit in arrival order so that exits are reproducible.
  std::sort(late.begin(), late.end(), [](const Sequence* a, const Sequence* b) { return a->arrival < b->arrival; });
  for (Sequence* s : late) ExitRequest(s, ExitReason::kDeadlineExceeded, absl::DeadlineExceededError("deadline exceeded"));
  return expired;
}

std::optional<SchedTime> Scheduler::NextExpiry() const {
  std::optional<SchedTime> next;
  auto consider = [&](SchedTime t) {
    if (t != SchedTime::max() && (!next || t < *next)) next = t;
  };
  for (const auto& [id, r] : reservations_) consider(r.info.expires);
  for (const auto& [id, s] : seqs_) consider(s->deadline);
  for (const Quarantined& q : quarantine_) consider(q.release);
  return next;
}

StepPlan Scheduler::Schedule(SchedTime now) {
  last_now_ = std::max(last_now_, now);
  StepPlan plan;
  std::int64_t budget = options_.max_tokens_per_step;
  std::int64_t seqs = options_.max_seqs_per_step;

  // 1. Decode, one token each, preempting from the back of running_ for room.
  for (std::size_t i = 0; i < running_.size() && budget > 0 && seqs > 0; ++i) {
    Sequence* s = running_[i];
    if (s->state != RequestState::kDecoding) continue;
    const std::int64_t need = s->num_computed + 1;
    bool self_preempted = false;
    while (s->blocks.capacity() < need) {
      if (pool_->num_free() > 0) {
        SIROCCO_CHECK(s->blocks.Reserve(need).ok(), "one free block must cover one more token");
        break;
      }
      // The victim comes at or after s in running_: every request before s
      // is already in the plan and keeps its blocks.
      Sequence* victim = running_.back();
      plan.preempted.push_back(victim->id);
      Preempt(victim);
      if (victim == s) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;  // s was last in running_
    plan.decode.push_back(DecodeItem{s->id, s->num_computed, -1});
    --budget;
    --seqs;
  }

  // 2a. Chunks of prompts already being prefilled.
  auto add_chunk = [&](Sequence* s) {
    const std::int64_t total = static_cast<std::int64_t>(s->tokens.size());
    const std::int64_t len = std::min(total - s->num_computed, budget);
    plan.prefill.push_back(PrefillChunk{s->id, s->num_computed, len, s->num_computed + len == total, -1});
    budget -= len;
    --seqs;
  };
  for (Sequence* s : running_) {
    if (budget <= 0 || seqs <= 0) break;
    if (s->state == RequestState::kPrefilling) add_chunk(s);
  }
  // 2b. Admissions, FCFS within priority; the head blocks the queue.
  if (plan.preempted.empty()) {
    while (!waiting_.empty() && budget > 0 && seqs > 0) {
      Sequence* s = waiting_.front();
      const std::int64_t total = static_cast<std::int64_t>(s->tokens.size());
      absl::StatusOr<PrefixMatch> match = TakeBlocks(s->blocks, CacheKeyTokens(*s, 0, total), total, /*match=*/true);
      if (!match.ok()) break;
      s->num_published = static_cast<std::int64_t>(match->blocks.size());
      s->num_computed = s->num_cached = s->num_published * pool_->block_size();
      s->prefix = match->key;
      waiting_.erase(waiting_.begin());
      s->state = RequestState::kPrefilling;
      InsertOrdered(running_, s);
      add_chunk(s);
    }
  }
  return plan;
}

void Scheduler::OnStepDone(const StepPlan& plan) {
  // Tokens sampled this step, in plan order: decode items, then final chunks.
  std::vector<std::pair<Sequence*, std::int32_t>> sampled;
  for (const DecodeItem& d : plan.decode) {
    Sequence* s = FindMutable(d.id);
    if (s == nullptr) continue;  // exited since Schedule (cannot happen on one thread, but harmless)
    SIROCCO_CHECK(s->state == RequestState::kDecoding && s->num_computed == d.pos, "decode item out of date");
    SIROCCO_CHECK(d.token >= 0 && d.token < options_.vocab_size, "decode item without a sampled token");
    s->num_computed += 1;
    PublishComputed(s);
    sampled.emplace_back(s, d.token);
  }
  for (const PrefillChunk& c : plan.prefill) {
    Sequence* s = FindMutable(c.id);
    if (s == nullptr) continue;
    SIROCCO_CHECK(s->state == RequestState::kPrefilling && s->num_computed == c.start, "prefill chunk out of date");
    s->num_computed += c.len;
    PublishComputed(s);
    if (c.samples) {
      SIROCCO_CHECK(c.token >= 0 && c.token < options_.vocab_size, "final chunk without a sampled token");
      sampled.emplace_back(s, c.token);
    }
  }
  for (auto [s, token] : sampled) {
    s->tokens.push_back(token);
    if (s->prefill_only) {
      // Its KV now belongs to the transfer; it stops running and holds blocks.
      Remove(running_, s);
      s->state = RequestState::kTransferring;
      continue;
    }
    s->state = RequestState::kDecoding;
    const std::int64_t out_len = static_cast<std::int64_t>(s->tokens.size()) - s->prompt_len;
    const FinishReason f = CheckStop(s->stop, options_.eos_token_ids, token, out_len);
    if (f != FinishReason::kNone) {
      ExitRequest(s, f == FinishReason::kStop ? ExitReason::kStop : ExitReason::kLength, absl::OkStatus());
    }
  }
}

void Scheduler::OnStepFailed(const StepPlan& plan, const absl::Status& error) {
  auto fail = [&](RequestId id) {
    if (Sequence* s = FindMutable(id)) ExitRequest(s, ExitReason::kFailed, error);
  };
  for (const DecodeItem& d : plan.decode) fail(d.id);
  for (const PrefillChunk& c : plan.prefill) fail(c.id);
}

std::vector<Exit> Scheduler::TakeExits() { return std::exchange(exits_, {}); }

const Scheduler::Sequence* Scheduler::Find(RequestId id) const {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : it->second.get();
}

const Reservation* Scheduler::FindReservation(ReservationId id) const {
  auto it = reservations_.find(id);
  return it == reservations_.end() ? nullptr : &it->second.info;
}

Scheduler::Sequence* Scheduler::FindMutable(RequestId id) {
  auto it = seqs_.find(id);
  return it == seqs_.end() ? nullptr : it->second.get();
}

SchedulerStats Scheduler::Stats() const {
  SchedulerStats st;
  st.total_blocks = pool_->num_blocks();
  st.free_blocks = pool_->num_free();
  st.waiting = static_cast<std::int64_t>(waiting_.size());
  for (const auto& [id, s] : seqs_) {
    if (s->state == RequestState::kPrefilling) ++st.prefilling;
    if (s->state == RequestState::kDecoding) ++st.decoding;
    if (s->state == RequestState::kTransferring) ++st.transferring;
    if (s->state == RequestState::kQueued || s->state == RequestState::kPrefilling) {
      st.prefill_tokens_pending += static_cast<std::int64_t>(s->tokens.size()) - s->num_computed;
    }
  }
  st.reservations = static_cast<std::int64_t>(reservations_.size());
  for (const auto& [id, r] : reservations_) st.reserved_blocks += r.blocks.num_blocks();
  for (const Quarantined& q : quarantine_) st.quarantined_blocks += q.blocks.num_blocks();
  st.preemptions = preemptions_;
  st.reservations_expired = reservations_expired_;
  st.cached_blocks = pool_->num_cached();
  st.prefix_cache_queries = prefix_cache_queries_;
  st.prefix_cache_hits = prefix_cache_hits_;
  return st;
}

void Scheduler::InsertOrdered(std::vector<Sequence*>& queue, Sequence* s) {
  queue.insert(std::upper_bound(queue.begin(), queue.end(), s, RunsBefore), s);
}

void Scheduler::Remove(std::vector<Sequence*>& queue, Sequence* s) {
  auto it = std::find(queue.begin(), queue.end(), s);
  if (it != queue.end()) queue.erase(it);
}

void Scheduler::Preempt(Sequence* s) {
  Remove(running_, s);
  s->blocks.Release();
  s->num_computed = s->num_cached = s->num_published = 0;
  s->prefix = PrefixKey::Root();
  s->state = RequestState::kQueued;
  ++s->num_preemptions;
  ++preemptions_;
  // Its arrival is older than most of the queue, so it is recomputed first.
  InsertOrdered(waiting_, s);
}

absl::StatusOr<PrefixMatch> Scheduler::TakeBlocks(BlockTable& table, std::span<const std::int32_t> prompt,
                                                  std::int64_t capacity_tokens, bool match_prefix) {
  PrefixMatch match;
  if (match_prefix) {
    // Never the last token: its logits give the next one (at admission),
    // and a writer always has a block of its own (in a reservation).
    match = pool_->MatchPrefix(prompt.first(std::min(prompt.size() - 1, CacheableLength(prompt))));
  }
  const auto matched = static_cast<std::int64_t>(match.blocks.size());
  // Sharing takes the matched evictable blocks out of the free count.
  const std::int64_t wanted = BlocksFor(capacity_tokens) - matched;
  const std::int64_t available = pool_->num_free() - match.evictable;
  if (wanted > available) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache full: ", wanted, " blocks wanted, ", available, " free of ", pool_->num_blocks()));
  }
  table.Share(match.blocks);
  SIROCCO_CHECK(table.Reserve(capacity_tokens).ok(), "free blocks miscounted");
  if (pool_->prefix_caching() && match_prefix) {
    prefix_cache_queries_ += static_cast<std::int64_t>(prompt.size());
    prefix_cache_hits_ += matched * pool_->block_size();
  }
  return match;
}

std::vector<std::int32_t> Scheduler::CacheKeyTokens(const Sequence& s, std::int64_t begin, std::int64_t end) const {
  std::vector<std::int32_t> out(s.tokens.begin() + begin, s.tokens.begin() + end);
  if (!s.cache_key_prompt.empty()) {
    for (std::int64_t i = begin; i < std::min(end, s.prompt_len); ++i) {
      out[static_cast<std::size_t>(i - begin)] = s.cache_key_prompt[static_cast<std::size_t>(i)];
    }
  }
  return out;
}

absl::Status Scheduler::ValidateCacheKey(std::span<const std::int32_t> prompt,
                                         std::span<const std::int32_t> key) const {
  if (key.empty()) return absl::OkStatus();
  if (key.size() != prompt.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cache_key_prompt: ", key.size(), " ids for a prompt of ", prompt.size()));
  }
  for (std::size_t i = 0; i < key.size(); ++i) {
    const bool image = options_.image_token_id >= 0 && prompt[i] == options_.image_token_id;
    if (image ? key[i] >= 0 : key[i] != prompt[i]) {
      return absl::InvalidArgumentError(absl::StrCat("cache_key_prompt[", i, "]: ", key[i], " for prompt id ",
                                                     prompt[i], " (only image tokens are replaced, by ids < 0)"));
    }
  }
  return absl::OkStatus();
}

std::size_t Scheduler::CacheableLength(std::span<const std::int32_t> tokens) const {
  if (options_.image_token_id < 0) return tokens.size();
  return static_cast<std::size_t>(std::find(tokens.begin(), tokens.end(), options_.image_token_id) - tokens.begin());
}

void Scheduler::PublishComputed(Sequence* s) {
  if (!pool_->prefix_caching()) return;
  const std::int64_t bs = pool_->block_size();
  while ((s->num_published + 1) * bs <= s->num_computed) {
    const std::vector<std::int32_t> tokens = CacheKeyTokens(*s, s->num_published * bs, (s->num_published + 1) * bs);
    // A block holding an image token ends the sequence's cacheable prefix.
    if (CacheableLength(tokens) < tokens.size()) return;
    s->prefix = pool_->Publish(s->prefix, s->blocks.block(s->num_published), tokens);
    ++s->num_published;
  }
}

void Scheduler::ExitRequest(Sequence* s, ExitReason reason, absl::Status status) {
  Remove(waiting_, s);
  Remove(running_, s);
  s->blocks.Release();
  const RequestId id = s->id;
  exits_.push_back(Exit{id, reason, std::move(status), static_cast<std::int64_t>(s->tokens.size()) - s->prompt_len});
  seqs_.erase(id);  // destroys s
}

}  // namespace sirocco::engine
