#include "engine/kv_cache.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/check.h"
#include "engine/mix64.h"

namespace sirocco::engine {

absl::Status KvPool::CheckOptions(const KvPoolOptions& o) {
  if (o.num_layers <= 0 || o.num_blocks <= 0 || o.block_size <= 0 || o.entry_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KvPool: num_layers (", o.num_layers, "), num_blocks (",
                                                   o.num_blocks, "), block_size (", o.block_size,
                                                   ") and entry_dim (", o.entry_dim, ") must be positive"));
  }
  if (o.num_blocks > (std::int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat("KvPool: num_blocks (", o.num_blocks, ") too large"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<KvPool>> KvPool::Create(const KvPoolOptions& o) {
  if (auto st = CheckOptions(o); !st.ok()) return st;
  std::unique_ptr<float[]> host(new float[static_cast<std::size_t>(o.num_layers * o.num_blocks * o.block_size *
                                                                   o.entry_dim)]());
  return std::unique_ptr<KvPool>(new KvPool(o, std::move(host), nullptr, true));
}

absl::StatusOr<std::unique_ptr<KvPool>> KvPool::Create(const KvPoolOptions& o, Device& device) {
  if (auto st = CheckOptions(o); !st.ok()) return st;
  const auto bytes = static_cast<std::size_t>(o.num_layers * o.num_blocks * o.block_size * o.entry_dim) *
                     sizeof(float);
  auto memory = device.Allocate(bytes);
  if (!memory.ok()) return memory.status();
  // Host memory is zero-filled as in the host-only pool, so a CPU worker's
  // pool starts in the same state whichever way it was made.
  if (device.host_accessible() && bytes != 0) std::memset((*memory)->data(), 0, bytes);
  return std::unique_ptr<KvPool>(new KvPool(o, nullptr, *std::move(memory), device.host_accessible()));
}

KvPool::KvPool(const KvPoolOptions& o, std::unique_ptr<float[]> host, std::unique_ptr<DeviceMemory> device,
               bool host_accessible)
    : options_(o),
      host_storage_(std::move(host)),
      device_storage_(std::move(device)),
      data_(host_storage_ ? host_storage_.get() : device_storage_->as<float>()),
      host_accessible_(host_accessible),
      refs_(static_cast<std::size_t>(o.num_blocks), 0),
      entries_(static_cast<std::size_t>(o.num_blocks)),
      lru_pos_(static_cast<std::size_t>(o.num_blocks)) {
  free_.reserve(static_cast<std::size_t>(o.num_blocks));
  // Highest id first so that allocation hands out 0, 1, 2, ... on a fresh pool.
  for (std::int64_t b = o.num_blocks - 1; b >= 0; --b) free_.push_back(BlockId{static_cast<std::int32_t>(b)});
}

absl::StatusOr<std::vector<BlockId>> KvPool::Allocate(std::int64_t n) {
  if (n < 0) return absl::InvalidArgumentError("KvPool::Allocate: negative block count");
  if (n > num_free()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache full: ", n, " blocks wanted, ", num_free(), " free of ", num_blocks()));
  }
  std::vector<BlockId> out(static_cast<std::size_t>(n));
  for (auto& b : out) {
    if (!free_.empty()) {
      b = free_.back();
      free_.pop_back();
    } else {
      b = Evict();
    }
    refs_[static_cast<std::size_t>(b.value)] = 1;
  }
  return out;
}

void KvPool::Free(const std::vector<BlockId>& blocks) {
  std::vector<BlockId> evictable;
  for (BlockId b : blocks) {
    SIROCCO_CHECK(b.value >= 0 && b.value < num_blocks(), "freeing a block outside the pool");
    std::int32_t& refs = refs_[static_cast<std::size_t>(b.value)];
    SIROCCO_CHECK(refs > 0, "block freed twice");
    if (--refs > 0) continue;
    if (entries_[static_cast<std::size_t>(b.value)].key != 0) {
      evictable.push_back(b);
    } else {
      free_.push_back(b);
    }
  }
  // Later blocks first: a prefix is useless without the blocks before it.
  for (auto it = evictable.rbegin(); it != evictable.rend(); ++it) {
    lru_pos_[static_cast<std::size_t>(it->value)] = lru_.insert(lru_.end(), *it);
  }
}

BlockId KvPool::Evict() {
  SIROCCO_CHECK(!lru_.empty(), "nothing to evict");
  const BlockId b = lru_.front();
  lru_.pop_front();
  Entry& e = entries_[static_cast<std::size_t>(b.value)];
  index_.erase(e.hash);
  e = Entry{};  // blocks published after it name a key that no longer exists: unreachable
  return b;
}

std::uint64_t KvPool::ContentHash(std::uint64_t parent, std::span<const std::int32_t> tokens) {
  // splitmix64 over the parent key and the tokens; a clash costs a missed
  // publish, never a wrong match (Find compares the content).
  std::uint64_t h = Mix64(parent);
  for (std::int32_t t : tokens) h = Mix64(h ^ static_cast<std::uint32_t>(t));
  return h;
}

const KvPool::Entry* KvPool::Find(std::uint64_t parent, std::span<const std::int32_t> tokens, BlockId* block) const {
  const auto it = index_.find(ContentHash(parent, tokens));
  if (it == index_.end()) return nullptr;
  const Entry& e = entries_[static_cast<std::size_t>(it->second.value)];
  if (e.parent != parent || !std::equal(tokens.begin(), tokens.end(), e.tokens.begin(), e.tokens.end())) {
    return nullptr;
  }
  *block = it->second;
  return &e;
}

PrefixMatch KvPool::MatchPrefix(std::span<const std::int32_t> tokens) const {
  PrefixMatch match;
  if (!options_.prefix_caching) return match;
  const auto bs = static_cast<std::size_t>(options_.block_size);
  for (std::size_t begin = 0; begin + bs <= tokens.size(); begin += bs) {
    BlockId b;
    const Entry* e = Find(match.key.value, tokens.subspan(begin, bs), &b);
    if (e == nullptr) break;
    match.blocks.push_back(b);
    match.key = PrefixKey{e->key};
    if (refs_[static_cast<std::size_t>(b.value)] == 0) ++match.evictable;
  }
  return match;
}

void KvPool::Share(std::span<const BlockId> blocks) {
  for (BlockId b : blocks) {
    SIROCCO_CHECK(b.value >= 0 && b.value < num_blocks(), "sharing a block outside the pool");
    const auto i = static_cast<std::size_t>(b.value);
    if (refs_[i] == 0) {
      SIROCCO_CHECK(entries_[i].key != 0, "sharing a free block that is not published");
      lru_.erase(lru_pos_[i]);
    }
    ++refs_[i];
  }
}

PrefixKey KvPool::Publish(PrefixKey parent, BlockId block, std::span<const std::int32_t> tokens) {
  if (!options_.prefix_caching || parent == PrefixKey::Broken()) return PrefixKey::Broken();
  SIROCCO_CHECK(block.value >= 0 && block.value < num_blocks(), "publishing a block outside the pool");
  SIROCCO_CHECK(static_cast<std::int64_t>(tokens.size()) == options_.block_size, "publishing a partial block");
  const auto i = static_cast<std::size_t>(block.value);
  SIROCCO_CHECK(refs_[i] > 0, "publishing a block nobody holds");
  if (entries_[i].key != 0) {
    // Shared from the cache already: the content is the one asked for.
    SIROCCO_CHECK(entries_[i].parent == parent.value, "republishing a block under another prefix");
    return PrefixKey{entries_[i].key};
  }
  BlockId existing;
  if (const Entry* e = Find(parent.value, tokens, &existing)) return PrefixKey{e->key};
  const std::uint64_t hash = ContentHash(parent.value, tokens);
  if (index_.contains(hash)) return PrefixKey::Broken();  // a clash: this chain stays private
  Entry& e = entries_[i];
  e.key = next_key_++;
  e.parent = parent.value;
  e.hash = hash;
  e.tokens.assign(tokens.begin(), tokens.end());
  index_.emplace(hash, block);
  return PrefixKey{e.key};
}

BlockTable::BlockTable(BlockTable&& other) noexcept : pool_(other.pool_), ids_(std::move(other.ids_)) {
  other.ids_.clear();
}

BlockTable& BlockTable::operator=(BlockTable&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = other.pool_;
    ids_ = std::move(other.ids_);
    other.ids_.clear();
  }
  return *this;
}

absl::Status BlockTable::Reserve(std::int64_t num_tokens) {
  SIROCCO_CHECK(pool_ != nullptr, "block table without a pool");
  const std::int64_t bs = pool_->block_size();
  const std::int64_t needed = (num_tokens + bs - 1) / bs - num_blocks();
  if (needed <= 0) return absl::OkStatus();
  auto blocks = pool_->Allocate(needed);
  if (!blocks.ok()) return blocks.status();
  for (BlockId b : *blocks) ids_.push_back(b.value);
  return absl::OkStatus();
}

void BlockTable::Adopt(std::vector<BlockId> blocks) {
  for (BlockId b : blocks) ids_.push_back(b.value);
}

void BlockTable::Share(std::span<const BlockId> blocks) {
  SIROCCO_CHECK(pool_ != nullptr, "block table without a pool");
  pool_->Share(blocks);
  for (BlockId b : blocks) ids_.push_back(b.value);
}

void BlockTable::Release() {
  if (pool_ == nullptr || ids_.empty()) return;
  std::vector<BlockId> blocks;
  blocks.reserve(ids_.size());
  for (std::int32_t id : ids_) blocks.push_back(BlockId{id});
  pool_->Free(blocks);
  ids_.clear();
}

}  // namespace sirocco::engine
