// The KV pool geometry both ends of a transfer must agree on, and the check
// that refuses a transfer between workers that disagree.
//
// A pool is one allocation laid out [layer][block][slot][entry], so each
// (layer, block) is one contiguous region of block_bytes() bytes at
//   ((layer * num_blocks) + block) * block_bytes().
// The transfer layer only sees bytes: the engine's float32 CPU pool and a
// later bf16 GPU pool differ only in dtype_bytes and entry_bytes.
//
// Thread-safety: plain values; safe to copy and read from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace sirocco::transfer {

// Bump when the meaning of any KvLayout field or of the pool layout changes.
// 2: KvTarget.cached_tokens (a sender must skip the target's shared blocks).
inline constexpr std::uint32_t kKvLayoutVersion = 2;

struct KvLayout {
  std::uint32_t version = kKvLayoutVersion;
  // Identifies the model and cache format (e.g. Fingerprint64 of the config
  // JSON plus the KV dtype): two pools of different models never mix.
  std::uint64_t model_fingerprint = 0;
  std::uint32_t dtype_bytes = 0;  // bytes per cached value (2 = bf16, 4 = f32)
  std::uint32_t num_layers = 0;
  std::uint32_t num_blocks = 0;   // may differ between the two ends
  std::uint32_t block_size = 0;   // tokens per block
  std::uint32_t entry_bytes = 0;  // bytes per (layer, token): values * dtype_bytes

  std::uint64_t block_bytes() const {
    return static_cast<std::uint64_t>(block_size) * entry_bytes;
  }
  std::uint64_t pool_bytes() const {
    return static_cast<std::uint64_t>(num_layers) * num_blocks * block_bytes();
  }
  // Byte offset of region (layer, block) from the pool base. No range check.
  std::uint64_t RegionOffset(std::uint32_t layer, std::uint32_t block) const {
    return (static_cast<std::uint64_t>(layer) * num_blocks + block) * block_bytes();
  }

  // INVALID_ARGUMENT naming the first bad field (zero sizes, entry_bytes not
  // a multiple of dtype_bytes, unknown version).
  absl::Status Validate() const;
  std::string DebugString() const;

  friend bool operator==(const KvLayout&, const KvLayout&) = default;
};

// OK when a sender with `local` may write into a pool with `remote`: every
// field except num_blocks must match. Otherwise FAILED_PRECONDITION naming
// the first mismatched field, e.g.
//   "KV layout mismatch: block_size 16 here, 32 at the peer".
absl::Status CheckCompatible(const KvLayout& local, const KvLayout& remote);

// FNV-1a 64-bit: a stable (process- and platform-independent) hash for
// model fingerprints. Not cryptographic.
std::uint64_t Fingerprint64(std::string_view bytes);

}  // namespace sirocco::transfer
