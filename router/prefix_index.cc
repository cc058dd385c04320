#include "router/prefix_index.h"

#include "engine/mix64.h"

namespace sirocco::router {

using engine::Mix64;

std::vector<std::uint64_t> PrefixIndex::BlockHashes(std::span<const std::int32_t> prompt, std::int64_t block_size) {
  std::vector<std::uint64_t> out;
  if (block_size < 1) return out;
  const auto bs = static_cast<std::size_t>(block_size);
  std::uint64_t h = Mix64(static_cast<std::uint64_t>(block_size));
  for (std::size_t begin = 0; begin + bs <= prompt.size(); begin += bs) {
    for (std::size_t i = begin; i < begin + bs; ++i) h = Mix64(h ^ static_cast<std::uint32_t>(prompt[i]));
    out.push_back(h);
  }
  return out;
}

std::int64_t PrefixIndex::Overlap(const std::string& worker, std::span<const std::uint64_t> hashes) const {
  const auto it = workers_.find(worker);
  if (it == workers_.end()) return 0;
  std::int64_t n = 0;
  for (std::uint64_t h : hashes) {
    if (!it->second.where.contains(h)) break;
    ++n;
  }
  return n;
}

void PrefixIndex::Record(const std::string& worker, std::span<const std::uint64_t> hashes, std::int64_t capacity) {
  if (hashes.empty() || capacity < 1) return;
  Blocks& w = workers_[worker];
  // Tail first, so the head of the prefix ends most recent: the worker, too,
  // evicts a prefix's tail before its head.
  for (auto it = hashes.rbegin(); it != hashes.rend(); ++it) {
    if (auto found = w.where.find(*it); found != w.where.end()) {
      w.lru.splice(w.lru.begin(), w.lru, found->second);
    } else {
      w.where.emplace(*it, w.lru.insert(w.lru.begin(), *it));
    }
  }
  while (static_cast<std::int64_t>(w.lru.size()) > capacity) {
    w.where.erase(w.lru.back());
    w.lru.pop_back();
  }
}

void PrefixIndex::Forget(const std::string& worker) { workers_.erase(worker); }

std::int64_t PrefixIndex::size(const std::string& worker) const {
  const auto it = workers_.find(worker);
  return it == workers_.end() ? 0 : static_cast<std::int64_t>(it->second.lru.size());
}

}  // namespace sirocco::router
