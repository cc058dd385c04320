// The router's view of its workers and the policy that picks them. Pure logic:
// no gRPC, no threads of its own. The router's discovery and health loops feed
// it (Upsert, ReportLoad, MarkUnhealthy) and request handlers ask it for a
// decode and a prefill worker.
//
// Policy:
//   * decode: among healthy, non-draining decode-capable workers whose last
//     reported free blocks cover the request, the one with the most free
//     blocks after subtracting what the router has already sent it since the
//     last report, ties broken by fewer running+waiting, then by id;
//   * prefill: among healthy, non-draining prefill-capable workers not in the
//     caller's exclusion set (workers that already failed this request), the
//     one that would finish it first: least queued prefill tokens (reported
//     + sent since) plus the tokens of this prompt it would compute, which is
//     the prompt less the leading full blocks the router last sent it (they
//     are likely in its prefix cache; PrefixIndex). Ties by fewer
//     running+waiting, then by id. So a shared prefix draws its requests to
//     one worker until that worker's queue outweighs what the cache saves.
//   * a decode worker's cache: the router also remembers the tokens each
//     decode-capable worker computed or received for requests that finished
//     there (prompt and output: a conversation's earlier turns), so that it
//     can let that worker prefill a follow-up whose new part is short
//     (CachedOnDecode; RouterOptions::local_prefill_max_tokens).
//
// Thread-safety: not thread-safe; the router guards it with one mutex.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "router/prefix_index.h"

namespace sirocco::router {

struct WorkerId {
  std::string address;  // host:port, unique per worker
  friend auto operator<=>(const WorkerId&, const WorkerId&) = default;
};

enum class WorkerRole : std::uint8_t { kPrefill, kDecode, kBoth };

struct WorkerLoad {
  std::int64_t free_blocks = 0;
  std::int64_t total_blocks = 0;
  std::int64_t block_size = 16;
  std::int64_t running = 0;
  std::int64_t waiting = 0;
  std::int64_t prefill_tokens_queued = 0;
  bool draining = false;
  std::string model_fingerprint;  // as the worker reports it (empty: unknown)
  std::int64_t context_length = 0;  // the worker's largest prompt + output (0: unknown)
  bool prefix_caching = false;      // the worker keeps a prefix cache
  std::int64_t cached_blocks = 0;   // blocks it holds published: no more of a prompt can be cached there
  bool supports_images = false;     // its model has a vision encoder
};

struct WorkerState {
  WorkerId id;
  WorkerRole role = WorkerRole::kBoth;
  WorkerLoad load;
  bool healthy = false;        // true after the first successful load report
  absl::Time last_report = absl::InfinitePast();
  // Work sent since the last report, so bursts spread instead of piling onto
  // the worker that looked best a moment ago.
  std::int64_t blocks_in_flight = 0;
  std::int64_t prefill_tokens_in_flight = 0;
};

class WorkerPool {
 public:
  // Adds a worker (unhealthy until its first report) or updates its role.
  void Upsert(const WorkerId& id, WorkerRole role);
  // Removes workers not in `present` (a DNS re-resolution dropped them).
  void Retain(const std::set<WorkerId>& present);
  void ReportLoad(const WorkerId& id, const WorkerLoad& load, absl::Time now);
  void MarkUnhealthy(const WorkerId& id);
  // Workers whose last report is older than `max_age` count as unhealthy.
  void ExpireStale(absl::Time now, absl::Duration max_age);

  // UNAVAILABLE when no decode worker is healthy; RESOURCE_EXHAUSTED when
  // none has room for `blocks_needed`.
  absl::StatusOr<WorkerId> PickDecode(std::int64_t blocks_needed);
  // Records the prompt's full blocks as sent to the worker it picks.
  // `prompt` is what the estimates key it by (a prompt with images: its
  // placeholders replaced by ids of the images).
  absl::StatusOr<WorkerId> PickPrefill(std::span<const std::int32_t> prompt, const std::set<WorkerId>& exclude);
  // Tokens of `prompt`'s leading full blocks that decode worker `id` likely
  // holds (never the last token); 0 when prefix routing is off.
  std::int64_t CachedOnDecode(const WorkerId& id, std::span<const std::int32_t> prompt) const;
  // A request finished on decode worker `id`, whose KV pool then held
  // `tokens` (prompt + output but the last).
  void RecordDecoded(const WorkerId& id, std::span<const std::int32_t> tokens);
  // Off: PickPrefill counts no prefix as cached (queue alone) and
  // CachedOnDecode is 0. Default on.
  void set_prefix_routing(bool on) { prefix_routing_ = on; }
  // Forget what a finished dispatch added to the in-flight estimates.
  void DoneDecode(const WorkerId& id, std::int64_t blocks);
  void DonePrefill(const WorkerId& id, std::int64_t prompt_tokens);

  std::vector<WorkerState> Snapshot() const;
  // The smallest context length a healthy worker reports; 0 when none does.
  std::int64_t MinContextLength() const;
  // Some worker is healthy and every healthy one takes images.
  bool ImagesSupported() const;
  std::optional<WorkerState> Find(const WorkerId& id) const;

 private:
  std::map<WorkerId, WorkerState> workers_;
  PrefixIndex prefixes_;         // prefill-capable workers: prompts sent
  PrefixIndex decode_prefixes_;  // decode-capable workers: requests finished
  bool prefix_routing_ = true;
};

// Admission control: at most `max_in_flight` requests and `max_queued_tokens`
// prompt tokens in the system; beyond that RESOURCE_EXHAUSTED with a retry
// hint proportional to the overload.
struct AdmissionLimits {
  std::int64_t max_in_flight = 256;
  std::int64_t max_queued_tokens = 1 << 20;
  absl::Duration base_retry = absl::Milliseconds(100);
};

struct Admission {
  bool admitted = false;
  absl::Duration retry_after;  // when refused
};

class AdmissionController {
 public:
  explicit AdmissionController(AdmissionLimits limits) : limits_(limits) {}
  Admission TryAdmit(std::int64_t prompt_tokens);
  void Release(std::int64_t prompt_tokens);
  std::int64_t in_flight() const { return in_flight_; }
  std::int64_t queued_tokens() const { return queued_tokens_; }

 private:
  AdmissionLimits limits_;
  std::int64_t in_flight_ = 0;
  std::int64_t queued_tokens_ = 0;
};

}  // namespace sirocco::router
