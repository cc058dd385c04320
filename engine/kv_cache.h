// The paged MLA cache: per layer and token it holds the normalised latent
// (kv_lora_rank values) followed by the rotated rope key (qk_rope_head_dim
// values). Memory is one allocation laid out [layer][block][slot][entry], so
// each (layer, block) is one contiguous region: that is the unit a KV
// transfer moves, and a remote writer computes addresses from the base alone.
//
// Prefix cache (KvPoolOptions::prefix_caching): a full block whose KV is
// computed can be published under its content: its tokens and the prefix
// before it. A later sequence whose leading tokens are the same shares the
// published blocks (reference-counted) instead of computing them again. A
// published block outlives its holders: once the last one frees it, it is
// evictable: counted as free, still found by MatchPrefix, and taken back by
// Allocate only when no unpublished free block is left, least recently freed
// first. Lookups compare tokens exactly and identify a prefix by the cache
// entry of its last block (never reused), so a match is never a hash
// collision and a stale entry is never found. The content is token ids
// alone: an input that changes KV beyond its ids (an image's embeddings at
// its placeholder tokens, once the engine takes images) must enter the key
// before such requests reach a caching pool.
//
// Thread-safety: none. A pool and its block tables belong to one engine
// thread (see docs/architecture.md, "Inside a worker").
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <span>
#include <unordered_map>
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
  bool prefix_caching = false;   // see the prefix cache above
};

// A published prefix: the cache entry of its last block. Root is the empty
// prefix; Broken ends a chain that could not be published (a hash clash), so
// nothing after it is published either.
struct PrefixKey {
  std::uint64_t value = 0;
  static constexpr PrefixKey Root() { return PrefixKey{0}; }
  static constexpr PrefixKey Broken() { return PrefixKey{~std::uint64_t{0}}; }
  friend bool operator==(PrefixKey, PrefixKey) = default;
};

// The published blocks that hold the leading full blocks of some tokens.
struct PrefixMatch {
  std::vector<BlockId> blocks;        // in token order
  PrefixKey key = PrefixKey::Root();  // the prefix they form
  std::int64_t evictable = 0;         // how many of them nobody holds (counted in num_free)
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
  // Drops one reference to each block (given in token order). A block
  // nobody holds any more goes back to the free list, or, when published,
  // becomes evictable (later blocks of `blocks` are evicted first). Freeing a
  // block nobody holds is a bug (CHECK).
  void Free(const std::vector<BlockId>& blocks);

  // Prefix cache; without prefix_caching, MatchPrefix finds nothing and
  // Publish publishes nothing (returns Broken).
  // The longest run of published blocks holding the first full blocks of
  // `tokens` (a partial last block is never matched).
  PrefixMatch MatchPrefix(std::span<const std::int32_t> tokens) const;
  // Takes a reference on each block: held ones, or evictable published ones
  // (from a MatchPrefix since the last Allocate).
  void Share(std::span<const BlockId> blocks);
  // Publishes held `block`, whose KV is computed for `tokens` (block_size of
  // them) following the prefix `parent`, and returns the key of the longer
  // prefix. When the same content is published already (another sequence
  // computed it too), `block` stays private and the existing key is
  // returned.
  PrefixKey Publish(PrefixKey parent, BlockId block, std::span<const std::int32_t> tokens);

  // Blocks Allocate can hand out: unpublished free ones plus evictable ones.
  std::int64_t num_free() const { return static_cast<std::int64_t>(free_.size() + lru_.size()); }
  // Published blocks, held or evictable.
  std::int64_t num_cached() const { return static_cast<std::int64_t>(index_.size()); }
  // Published blocks nobody holds.
  std::int64_t num_evictable() const { return static_cast<std::int64_t>(lru_.size()); }
  bool prefix_caching() const { return options_.prefix_caching; }
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
  // A published block's content.
  struct Entry {
    std::uint64_t key = 0;     // its PrefixKey value; 0: not published
    std::uint64_t parent = 0;  // PrefixKey value of the prefix before it
    std::uint64_t hash = 0;    // index_ slot
    std::vector<std::int32_t> tokens;
  };
  static std::uint64_t ContentHash(std::uint64_t parent, std::span<const std::int32_t> tokens);
  // The published block whose content is (parent, tokens), if any.
  const Entry* Find(std::uint64_t parent, std::span<const std::int32_t> tokens, BlockId* block) const;
  // Takes the least recently freed evictable block out of the cache.
  BlockId Evict();

  std::vector<BlockId> free_;                          // LIFO free list of never-published blocks
  std::vector<std::int32_t> refs_;                     // per block: holders
  std::vector<Entry> entries_;                         // per block
  std::unordered_map<std::uint64_t, BlockId> index_;   // content hash -> published block
  std::list<BlockId> lru_;                             // evictable blocks, least recently freed first
  std::vector<std::list<BlockId>::iterator> lru_pos_;  // per block, valid while evictable
  std::uint64_t next_key_ = 1;
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
  // Appends published blocks shared with other tables (KvPool::Share), in
  // token order: a matched prefix, before anything else is reserved.
  void Share(std::span<const BlockId> blocks);
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
