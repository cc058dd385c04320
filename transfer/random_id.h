// Random 64-bit identifiers for agents and fabrics (never 0). Internal.
#pragma once

#include <cstdint>
#include <random>

namespace sirocco::transfer {

inline std::uint64_t NewRandomId() {
  thread_local std::mt19937_64 gen{(static_cast<std::uint64_t>(std::random_device{}()) << 32) ^
                                   std::random_device{}()};
  std::uint64_t v = 0;
  while (v == 0) v = gen();
  return v;
}

}  // namespace sirocco::transfer
