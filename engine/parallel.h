// ParallelFor: run fn(i) for i in [0, n) on the machine's cores, for the
// one-off bulk work of loading a model (widening and quantising billions of
// weights). Not for the serving path: it starts threads per call.
#pragma once

#include <cstdint>
#include <functional>

namespace sirocco::engine {

// Calls fn(i) once for every i in [0, n), on up to hardware_concurrency()
// threads (the caller's among them), and returns when all calls have. Runs
// on the calling thread alone when `work` (a caller's estimate of the total
// element count) is below about four million, where threads do not pay.
// fn must be safe to call concurrently for different i.
void ParallelFor(std::int64_t n, std::int64_t work, const std::function<void(std::int64_t)>& fn);

}  // namespace sirocco::engine
