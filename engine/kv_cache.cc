#include "engine/kv_cache.h"

#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/check.h"

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
      allocated_(static_cast<std::size_t>(o.num_blocks), false) {
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
    b = free_.back();
    free_.pop_back();
    allocated_[static_cast<std::size_t>(b.value)] = true;
  }
  return out;
}

void KvPool::Free(const std::vector<BlockId>& blocks) {
  for (BlockId b : blocks) {
    SIROCCO_CHECK(b.value >= 0 && b.value < num_blocks(), "freeing a block outside the pool");
    SIROCCO_CHECK(allocated_[static_cast<std::size_t>(b.value)], "block freed twice");
    allocated_[static_cast<std::size_t>(b.value)] = false;
    free_.push_back(b);
  }
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

void BlockTable::Release() {
  if (pool_ == nullptr || ids_.empty()) return;
  std::vector<BlockId> blocks;
  blocks.reserve(ids_.size());
  for (std::int32_t id : ids_) blocks.push_back(BlockId{id});
  pool_->Free(blocks);
  ids_.clear();
}

}  // namespace sirocco::engine
