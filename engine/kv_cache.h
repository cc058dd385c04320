// The paged MLA cache: per layer and token it holds the normalised latent
// (kv_lora_rank values) followed by the rotated rope key (qk_rope_head_dim
// values). Memory is one allocation laid out [layer][block][slot][entry], so
// each (layer, block) is one contiguous region: that is the unit a KV
// transfer moves, and a remote writer computes addresses from the base alone.
//
// Thread-safety: none. A pool and its block tables belong to one engine
// thread (see docs/architecture.md, "Inside a worker").
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/device.h"

namespace sirocco::engine {

// A block index inside one KvPool. Distinct from token counts and layer ids.
struct BlockId {
  std::int32_t value = -1;
  friend bool operator==(BlockId, BlockId) = default;
};

struct KvPoolOptions {
  std::int64_t num_layers = 0;
  std::int64_t num_blocks = 0;
  std::int64_t block_size = 16;  // tokens per block
  std::int64_t entry_dim = 0;    // kv_lora_rank + qk_rope_head_dim
};

class KvPool {
 public:
  // A pool in host memory, zero-filled.
  static absl::StatusOr<std::unique_ptr<KvPool>> Create(const KvPoolOptions& options);
  // A pool in `device`'s memory: zero-filled on a host-accessible device,
  // uninitialised on a GPU (every entry is written before it is read). On a device that is not host-accessible, layer() returns
  // device addresses and entry() must not be dereferenced on the host.
  static absl::StatusOr<std::unique_ptr<KvPool>> Create(const KvPoolOptions& options, Device& device);

  // Takes `n` free blocks, or fails with RESOURCE_EXHAUSTED taking none.
  absl::StatusOr<std::vector<BlockId>> Allocate(std::int64_t n);
  // Returns blocks to the free list. Freeing a block twice is a bug (CHECK).
  void Free(const std::vector<BlockId>& blocks);

  std::int64_t num_free() const { return static_cast<std::int64_t>(free_.size()); }
  std::int64_t num_blocks() const { return options_.num_blocks; }
  std::int64_t block_size() const { return options_.block_size; }
  std::int64_t entry_dim() const { return options_.entry_dim; }
  std::int64_t num_layers() const { return options_.num_layers; }
  // Whether the pool's memory can be read and written from the host.
  bool host_accessible() const { return host_accessible_; }

  // Base of a layer's cache: [num_blocks, block_size, entry_dim].
  float* layer(std::int64_t layer) { return data_ + layer * layer_stride(); }
  const float* layer(std::int64_t layer) const { return data_ + layer * layer_stride(); }
  // The entry of token slot `slot` in `block` of `layer`.
  float* entry(std::int64_t layer, BlockId block, std::int64_t slot) {
    return this->layer(layer) + (block.value * options_.block_size + slot) * options_.entry_dim;
  }
  std::size_t bytes() const {
    return static_cast<std::size_t>(options_.num_layers * layer_stride()) * sizeof(float);
  }

 private:
  KvPool(const KvPoolOptions& options, std::unique_ptr<float[]> host, std::unique_ptr<DeviceMemory> device,
         bool host_accessible);
  static absl::Status CheckOptions(const KvPoolOptions& options);
  std::int64_t layer_stride() const { return options_.num_blocks * options_.block_size * options_.entry_dim; }

  KvPoolOptions options_;
  std::unique_ptr<float[]> host_storage_;      // host pools
  std::unique_ptr<DeviceMemory> device_storage_;  // device pools
  float* data_;
  bool host_accessible_;
  std::vector<BlockId> free_;       // LIFO free list
  std::vector<bool> allocated_;     // per block, for double-free checks
};

// The blocks of one sequence, in token order, and how many tokens it holds.
// Owns its blocks: they go back to the pool when the table is released.
class BlockTable {
 public:
  explicit BlockTable(KvPool* pool) : pool_(pool) {}
  ~BlockTable() { Release(); }
  BlockTable(const BlockTable&) = delete;
  BlockTable& operator=(const BlockTable&) = delete;
  BlockTable(BlockTable&& other) noexcept;
  BlockTable& operator=(BlockTable&& other) noexcept;

  // Ensures capacity for `num_tokens` tokens (allocating whole blocks).
  absl::Status Reserve(std::int64_t num_tokens);
  // Adopts blocks allocated elsewhere (e.g. a reservation), in token order.
  void Adopt(std::vector<BlockId> blocks);
  void Release();

  std::int64_t capacity() const {
    return static_cast<std::int64_t>(ids_.size()) * (pool_ ? pool_->block_size() : 0);
  }
  // Raw block ids, the form kernels consume.
  const std::int32_t* data() const { return ids_.data(); }
  std::int64_t num_blocks() const { return static_cast<std::int64_t>(ids_.size()); }
  BlockId block(std::int64_t i) const { return BlockId{ids_[static_cast<std::size_t>(i)]}; }
  KvPool* pool() const { return pool_; }

 private:
  KvPool* pool_;
  std::vector<std::int32_t> ids_;
};

}  // namespace sirocco::engine
