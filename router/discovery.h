// Worker discovery: the router's worker list comes from flags (fixed
// host:port addresses) and from DNS names re-resolved periodically, e.g. a
// Kubernetes headless Service whose A records are the ready pods. A name
// "decode.sirocco.svc:7001" resolves to one worker per address.
//
// Thread-safety: Resolve is a plain function (getaddrinfo is thread-safe);
// the router's discovery thread calls it and feeds WorkerPool under its lock.
#pragma once

#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "router/worker_pool.h"

namespace sirocco::router {

struct Endpoint {
  std::string host;
  std::string port;
};

// Splits "host:port" or "[v6]:port"; INVALID_ARGUMENT naming the text.
absl::StatusOr<Endpoint> ParseEndpoint(std::string_view text);

// Resolves every address of `endpoint.host` (IPv4 and IPv6), returning one
// WorkerId "addr:port" (IPv6 as "[addr]:port") per distinct address, sorted.
// NOT_FOUND / UNAVAILABLE on resolution failure, with the resolver's message.
absl::StatusOr<std::set<WorkerId>> Resolve(const Endpoint& endpoint);

}  // namespace sirocco::router
