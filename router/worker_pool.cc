#include "router/worker_pool.h"

#include <algorithm>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sirocco::router {
namespace {

bool CanDecode(WorkerRole r) { return r == WorkerRole::kDecode || r == WorkerRole::kBoth; }
bool CanPrefill(WorkerRole r) { return r == WorkerRole::kPrefill || r == WorkerRole::kBoth; }
bool Usable(const WorkerState& w) { return w.healthy && !w.load.draining; }

}  // namespace

void WorkerPool::Upsert(const WorkerId& id, WorkerRole role) {
  auto [it, inserted] = workers_.try_emplace(id);
  if (inserted) it->second.id = id;
  it->second.role = role;
}

void WorkerPool::Retain(const std::set<WorkerId>& present) {
  std::erase_if(workers_, [&](const auto& kv) {
    if (present.contains(kv.first)) return false;
    prefixes_.Forget(kv.first.address);
    decode_prefixes_.Forget(kv.first.address);
    return true;
  });
}

void WorkerPool::ReportLoad(const WorkerId& id, const WorkerLoad& load, absl::Time now) {
  auto it = workers_.find(id);
  if (it == workers_.end()) return;
  it->second.load = load;
  it->second.healthy = true;
  it->second.last_report = now;
  // The report already counts what was dispatched before it.
  it->second.blocks_in_flight = 0;
  it->second.prefill_tokens_in_flight = 0;
}

void WorkerPool::MarkUnhealthy(const WorkerId& id) {
  if (auto it = workers_.find(id); it != workers_.end()) it->second.healthy = false;
  prefixes_.Forget(id.address);  // it may come back restarted, its cache empty
  decode_prefixes_.Forget(id.address);
}

void WorkerPool::ExpireStale(absl::Time now, absl::Duration max_age) {
  for (auto& [id, w] : workers_) {
    if (now - w.last_report > max_age) w.healthy = false;
  }
}

absl::StatusOr<WorkerId> WorkerPool::PickDecode(std::int64_t blocks_needed) {
  WorkerState* best = nullptr;
  bool any_usable = false;
  auto key = [](const WorkerState& w) {
    return std::make_tuple(-(w.load.free_blocks - w.blocks_in_flight), w.load.running + w.load.waiting, w.id);
  };
  for (auto& [id, w] : workers_) {
    if (!CanDecode(w.role) || !Usable(w)) continue;
    any_usable = true;
    if (w.load.free_blocks - w.blocks_in_flight < blocks_needed) continue;
    if (best == nullptr || key(w) < key(*best)) best = &w;
  }
  if (!any_usable) return absl::UnavailableError("no healthy decode worker");
  if (best == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("no decode worker has ", blocks_needed, " free KV blocks; retry later"));
  }
  best->blocks_in_flight += blocks_needed;
  return best->id;
}

absl::StatusOr<WorkerId> WorkerPool::PickPrefill(std::span<const std::int32_t> prompt,
                                                 const std::set<WorkerId>& exclude) {
  const auto prompt_tokens = static_cast<std::int64_t>(prompt.size());
  // Block hashes per block size (workers normally share one).
  std::map<std::int64_t, std::vector<std::uint64_t>> hashes;
  auto hashes_for = [&](std::int64_t block_size) -> const std::vector<std::uint64_t>& {
    auto it = hashes.find(block_size);
    if (it == hashes.end()) it = hashes.emplace(block_size, PrefixIndex::BlockHashes(prompt, block_size)).first;
    return it->second;
  };
  WorkerState* best = nullptr;
  std::tuple<std::int64_t, std::int64_t, WorkerId> best_key;
  for (auto& [id, w] : workers_) {
    if (!CanPrefill(w.role) || !Usable(w) || exclude.contains(id)) continue;
    // A worker computes at least the last token however much it holds.
    const std::int64_t bs = std::max<std::int64_t>(1, w.load.block_size);
    const std::int64_t cached =
        prefix_routing_ && w.load.prefix_caching
            ? std::min(prefixes_.Overlap(id.address, hashes_for(bs)) * bs, (prompt_tokens - 1) / bs * bs)
            : 0;
    auto key = std::make_tuple(
        w.load.prefill_tokens_queued + w.prefill_tokens_in_flight + prompt_tokens - std::max<std::int64_t>(0, cached),
        w.load.running + w.load.waiting, w.id);
    if (best == nullptr || key < best_key) {
      best = &w;
      best_key = std::move(key);
    }
  }
  if (best == nullptr) {
    return absl::UnavailableError(exclude.empty() ? "no healthy prefill worker"
                                                  : "no other healthy prefill worker to retry on");
  }
  best->prefill_tokens_in_flight += prompt_tokens;
  const std::int64_t bs = std::max<std::int64_t>(1, best->load.block_size);
  if (prefix_routing_ && best->load.prefix_caching)
    prefixes_.Record(best->id.address, hashes_for(bs), best->load.total_blocks > 0 ? best->load.total_blocks : 1024);
  return best->id;
}

std::int64_t WorkerPool::CachedOnDecode(const WorkerId& id, std::span<const std::int32_t> prompt) const {
  const auto it = workers_.find(id);
  if (!prefix_routing_ || it == workers_.end() || !it->second.load.prefix_caching || prompt.empty()) return 0;
  const std::int64_t bs = std::max<std::int64_t>(1, it->second.load.block_size);
  const auto n = static_cast<std::int64_t>(prompt.size());
  // The worker's own count bounds the estimate (it has evicted at least the
  // difference).
  const std::int64_t blocks =
      std::min(decode_prefixes_.Overlap(id.address, PrefixIndex::BlockHashes(prompt, bs)), it->second.load.cached_blocks);
  return std::min(blocks * bs, (n - 1) / bs * bs);
}

void WorkerPool::RecordDecoded(const WorkerId& id, std::span<const std::int32_t> tokens) {
  const auto it = workers_.find(id);
  if (!prefix_routing_ || it == workers_.end() || !it->second.load.prefix_caching) return;
  const std::int64_t bs = std::max<std::int64_t>(1, it->second.load.block_size);
  decode_prefixes_.Record(id.address, PrefixIndex::BlockHashes(tokens, bs),
                          it->second.load.total_blocks > 0 ? it->second.load.total_blocks : 1024);
}

void WorkerPool::DoneDecode(const WorkerId& id, std::int64_t blocks) {
  if (auto it = workers_.find(id); it != workers_.end()) {
    it->second.blocks_in_flight = std::max<std::int64_t>(0, it->second.blocks_in_flight - blocks);
  }
}

void WorkerPool::DonePrefill(const WorkerId& id, std::int64_t prompt_tokens) {
  if (auto it = workers_.find(id); it != workers_.end()) {
    it->second.prefill_tokens_in_flight = std::max<std::int64_t>(0, it->second.prefill_tokens_in_flight - prompt_tokens);
  }
}

std::vector<WorkerState> WorkerPool::Snapshot() const {
  std::vector<WorkerState> out;
  for (const auto& [id, w] : workers_) out.push_back(w);
  return out;
}

bool WorkerPool::ImagesSupported() const {
  bool any = false;
  for (const auto& [id, w] : workers_) {
    if (!w.healthy) continue;
    if (!w.load.supports_images) return false;
    any = true;
  }
  return any;
}

std::int64_t WorkerPool::MinContextLength() const {
  std::int64_t least = 0;
  for (const auto& [id, w] : workers_) {
    if (!w.healthy || w.load.context_length <= 0) continue;
    least = least == 0 ? w.load.context_length : std::min(least, w.load.context_length);
  }
  return least;
}

std::optional<WorkerState> WorkerPool::Find(const WorkerId& id) const {
  auto it = workers_.find(id);
  if (it == workers_.end()) return std::nullopt;
  return it->second;
}

Admission AdmissionController::TryAdmit(std::int64_t prompt_tokens) {
  const bool over_requests = in_flight_ + 1 > limits_.max_in_flight;
  const bool over_tokens = queued_tokens_ + prompt_tokens > limits_.max_queued_tokens && in_flight_ > 0;
  if (over_requests || over_tokens) {
    // Back off longer the further over the limit the system is.
    const double load = std::max(static_cast<double>(in_flight_ + 1) / static_cast<double>(limits_.max_in_flight),
                                 static_cast<double>(queued_tokens_ + prompt_tokens) /
                                     static_cast<double>(limits_.max_queued_tokens));
    return Admission{false, limits_.base_retry * std::max(1.0, load)};
  }
  ++in_flight_;
  queued_tokens_ += prompt_tokens;
  return Admission{true, absl::ZeroDuration()};
}

void AdmissionController::Release(std::int64_t prompt_tokens) {
  in_flight_ = std::max<std::int64_t>(0, in_flight_ - 1);
  queued_tokens_ = std::max<std::int64_t>(0, queued_tokens_ - prompt_tokens);
}

}  // namespace sirocco::router
