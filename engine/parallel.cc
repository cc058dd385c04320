#include "engine/parallel.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

namespace sirocco::engine {

void ParallelFor(std::int64_t n, std::int64_t work, const std::function<void(std::int64_t)>& fn) {
  constexpr std::int64_t kMinParallelWork = std::int64_t{1} << 22;
  const std::int64_t cores = std::max<std::int64_t>(1, std::thread::hardware_concurrency());
  const std::int64_t threads = std::min(n, work < kMinParallelWork ? 1 : cores);
  if (threads <= 1) {
    for (std::int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<std::int64_t> next{0};
  auto run = [&] {
    for (std::int64_t i = next++; i < n; i = next++) fn(i);
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(threads - 1));
  for (std::int64_t t = 1; t < threads; ++t) pool.emplace_back(run);
  run();
  for (std::thread& th : pool) th.join();
}

}  // namespace sirocco::engine
