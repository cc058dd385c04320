// 64-bit mixing shared by the prefix cache (engine/kv_cache), its image keys
// (engine/engine_loop) and the router's estimates of it (router/prefix_index,
// router/router_service). Header-only: the router includes it without linking
// the engine.
#pragma once

#include <cstdint>

namespace sirocco::engine {

// splitmix64's finaliser.
inline std::uint64_t Mix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The id the prefix cache keys the `index`-th placeholder of an image by,
// given a hash of the image's content: negative, so never a token id.
inline std::int32_t ImagePlaceholderKey(std::uint64_t image_hash, std::uint64_t index) {
  return -1 - static_cast<std::int32_t>(Mix64(image_hash ^ Mix64(index)) & 0x7fffffff);
}

}  // namespace sirocco::engine
