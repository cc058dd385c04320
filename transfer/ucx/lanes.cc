#include "transfer/ucx/lanes.h"

#include <map>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace sirocco::transfer::ucx {
namespace {

bool IsSharedMemory(const std::string& t) {
  return t == "sysv" || t == "posix" || t == "xpmem";
}
// Transports whose put cannot reach arbitrary remote memory natively.
bool IsHostCopyOrSocket(const std::string& t) {
  return t == "tcp" || t == "cma" || t == "self" || IsSharedMemory(t);
}

// "put[12]:" → 12, or -1.
int PutLaneIndex(absl::string_view token) {
  if (!absl::StartsWith(token, "put[")) return -1;
  const std::size_t close = token.find(']');
  int index = -1;
  if (close == absl::string_view::npos || !absl::SimpleAtoi(token.substr(4, close - 4), &index)) {
    return -1;
  }
  return index;
}

}  // namespace

EpLanes ParseEpInfo(std::string_view text_in) {
  EpLanes lanes;
  const absl::string_view text(text_in.data(), text_in.size());
  std::map<int, std::string> transport_of_lane;
  std::vector<int> put_lanes;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::vector<absl::string_view> tokens = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (!tokens.empty() && tokens[0] == "#") tokens.erase(tokens.begin());
    if (tokens.empty()) continue;
    if (const int put = PutLaneIndex(tokens[0]); put >= 0) {
      put_lanes.push_back(put);
      continue;
    }
    // "lane[3]:  5:cma/memory.0 md[4] -> md[4]/cma/sysdev[255] rma_bw#0"
    if (!absl::StartsWith(tokens[0], "lane[") || tokens.size() < 2) continue;
    int index = -1;
    const std::size_t close = tokens[0].find(']');
    if (close == absl::string_view::npos ||
        !absl::SimpleAtoi(tokens[0].substr(5, close - 5), &index)) {
      continue;
    }
    // The connection-manager lane ("cm rdmacm") has no "n:transport/device".
    const absl::string_view resource = tokens[1];
    const std::size_t c = resource.find(':');
    const std::size_t slash = resource.find('/');
    if (c == absl::string_view::npos || slash == absl::string_view::npos || slash < c) continue;
    const std::string transport(resource.substr(c + 1, slash - c - 1));
    transport_of_lane[index] = transport;
    for (absl::string_view t : tokens) {
      if (absl::StartsWith(t, "rma_bw")) lanes.rma_bw.push_back(transport);
      if (t == "am" && lanes.am.empty()) lanes.am = transport;
    }
  }
  for (int lane : put_lanes) {
    auto it = transport_of_lane.find(lane);
    if (it != transport_of_lane.end()) lanes.put.push_back(it->second);
  }
  return lanes;
}

TransportMode ResolveMode(TransportMode requested, const EpLanes& lanes, bool target_mappable) {
  if (requested != TransportMode::kAuto) return requested;
  for (const std::string& t : lanes.put) {
    if (IsSharedMemory(t) && target_mappable) return TransportMode::kRma;
    if (!IsHostCopyOrSocket(t)) return TransportMode::kRma;
  }
  return TransportMode::kMessages;
}

std::string DescribeTransport(TransportMode resolved, const EpLanes& lanes,
                              bool target_mappable) {
  if (resolved == TransportMode::kRma) {
    if (ResolveMode(TransportMode::kAuto, lanes, target_mappable) == TransportMode::kRma) {
      return "rma:" + absl::StrJoin(lanes.put, "+");
    }
    return "rma:am-emulated/" + (lanes.am.empty() ? std::string("?") : lanes.am);
  }
  std::string out = "am:" + (lanes.am.empty() ? std::string("?") : lanes.am);
  std::vector<std::string> zcopy;
  for (const std::string& t : lanes.rma_bw) {
    if (t != lanes.am && std::find(zcopy.begin(), zcopy.end(), t) == zcopy.end()) {
      zcopy.push_back(t);
    }
  }
  if (!zcopy.empty()) out += "+rndv:" + absl::StrJoin(zcopy, "+");
  return out;
}

}  // namespace sirocco::transfer::ucx
