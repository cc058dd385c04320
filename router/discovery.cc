#include "router/discovery.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sirocco::router {

absl::StatusOr<Endpoint> ParseEndpoint(std::string_view text) {
  const std::string s(text);
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("worker address '", s, "': ", std::string(why)));
  };
  if (s.empty()) return bad("empty");
  Endpoint e;
  std::size_t colon;
  if (s.front() == '[') {
    const std::size_t close = s.find(']');
    if (close == std::string::npos || close + 1 >= s.size() || s[close + 1] != ':') return bad("expected [v6]:port");
    e.host = s.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = s.rfind(':');
    if (colon == std::string::npos) return bad("expected host:port");
    e.host = s.substr(0, colon);
    if (e.host.find(':') != std::string::npos) return bad("IPv6 addresses need brackets: [addr]:port");
  }
  e.port = s.substr(colon + 1);
  if (e.host.empty()) return bad("empty host");
  if (e.port.empty() || e.port.size() > 5 || e.port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(e.port) < 1 || std::stoi(e.port) > 65535) {
    return bad("port must be 1-65535");
  }
  return e;
}

absl::StatusOr<std::set<WorkerId>> Resolve(const Endpoint& endpoint) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* result = nullptr;
  const int rc = ::getaddrinfo(endpoint.host.c_str(), endpoint.port.c_str(), &hints, &result);
  if (rc != 0) {
    const std::string why = ::gai_strerror(rc);
    const std::string msg = absl::StrCat("resolving '", endpoint.host, "': ", why);
    return rc == EAI_NONAME ? absl::NotFoundError(msg) : absl::UnavailableError(msg);
  }
  std::set<WorkerId> out;
  for (addrinfo* ai = result; ai != nullptr; ai = ai->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {};
    if (ai->ai_family == AF_INET) {
      ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_addr, buf, sizeof(buf));
      out.insert(WorkerId{absl::StrCat(buf, ":", endpoint.port)});
    } else if (ai->ai_family == AF_INET6) {
      ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_addr, buf, sizeof(buf));
      out.insert(WorkerId{absl::StrCat("[", buf, "]:", endpoint.port)});
    }
  }
  ::freeaddrinfo(result);
  return out;
}

}  // namespace sirocco::router
