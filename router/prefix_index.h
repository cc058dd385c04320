// The router's estimate of each worker's prefix cache: for every worker, the
// full prompt blocks it was last sent, identified by chained content hashes
// (block i's hash covers tokens 0 .. (i+1) * block_size - 1, so a hash names
// a whole prefix), at most as many as the worker's KV pool holds, the least
// recently sent dropped first. The workers evict on their own, so this is an
// estimate: a wrong guess costs compute on a worker, never a wrong token
// (the worker compares tokens exactly; engine/kv_cache.h).
//
// Thread-safety: not thread-safe; WorkerPool's owner guards it.
#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

namespace sirocco::router {

class PrefixIndex {
 public:
  // The chained hashes of the full blocks of `prompt` (a partial last block
  // has none).
  static std::vector<std::uint64_t> BlockHashes(std::span<const std::int32_t> prompt, std::int64_t block_size);

  // How many leading blocks of `hashes` `worker` was sent (and may still hold).
  std::int64_t Overlap(const std::string& worker, std::span<const std::uint64_t> hashes) const;
  // `worker` is computing these blocks; it keeps at most `capacity` blocks
  // (its pool size), the head of a prefix longest.
  void Record(const std::string& worker, std::span<const std::uint64_t> hashes, std::int64_t capacity);
  // Forgets everything about `worker` (lost, restarted or removed).
  void Forget(const std::string& worker);
  // Blocks remembered for `worker`.
  std::int64_t size(const std::string& worker) const;

 private:
  struct Blocks {
    std::list<std::uint64_t> lru;  // most recently sent first
    std::unordered_map<std::uint64_t, std::list<std::uint64_t>::iterator> where;
  };
  std::map<std::string, Blocks> workers_;
};

}  // namespace sirocco::router
