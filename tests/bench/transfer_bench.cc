// KV transfer bandwidth for the real model's cache: 36 layers x 320 values x
// 2 bytes (bf16) = 23,040 B per token, in blocks of 16 tokens. A prompt of
// 8k tokens moves 189 MB, one of 64k tokens 1.51 GB, posted the way prefill
// posts it: one write per layer (all of the prompt's blocks of that layer),
// then Flush. Same-run baseline: memcpy of the same bytes, layer by layer.
//
//   build/tests/bench/transfer_bench                      # everything (~1 min, 3.3 GB RAM)
//   build/tests/bench/transfer_bench --benchmark_filter=8k   # skips the 1.5 GB runs
//
// Names: KvTransfer/<backend>/<tokens>[/scattered|/allocated]. "scattered"
// sends to a random permutation of the target's blocks (a decode pool's free
// list), so no two regions coalesce; "allocated" uses pools from
// AllocatePool. The label is the transport kAuto chose (PeerInfo).
// Counters: GB/s (10^9 bytes per second), bytes per iteration.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "transfer/in_process_agent.h"
#include "transfer/transfer_agent.h"
#include "transfer/ucx_agent.h"

namespace sirocco::transfer {
namespace {

constexpr std::uint32_t kLayers = 36;
constexpr std::uint32_t kEntryBytes = 320 * 2;
constexpr std::uint32_t kBlockSize = 16;

KvLayout RealLayout(std::uint32_t tokens) {
  KvLayout l;
  l.model_fingerprint = Fingerprint64("mistral-small-4 kv bf16");
  l.dtype_bytes = 2;
  l.num_layers = kLayers;
  l.num_blocks = tokens / kBlockSize;
  l.block_size = kBlockSize;
  l.entry_bytes = kEntryBytes;
  return l;
}

// Source and target pools per prompt size, allocated and touched once.
struct Pools {
  KvLayout layout;
  std::vector<unsigned char> src, dst;
};
// PoolsFor(0) frees them.
Pools& PoolsFor(std::uint32_t tokens) {
  static std::unique_ptr<Pools> slot;
  if (tokens == 0) {
    slot.reset();
    static Pools none;
    return none;
  }
  if (!slot || slot->layout.num_blocks != tokens / kBlockSize) {
    slot.reset();  // one size at a time: the 64k pair alone is 3 GB
    slot = std::make_unique<Pools>();
    slot->layout = RealLayout(tokens);
    slot->src.assign(slot->layout.pool_bytes(), 0x5a);
    slot->dst.assign(slot->layout.pool_bytes(), 0);
  }
  return *slot;
}

void SetRate(benchmark::State& state, std::uint64_t bytes) {
  state.counters["GB/s"] = benchmark::Counter(
      static_cast<double>(bytes) * static_cast<double>(state.iterations()) / 1e9,
      benchmark::Counter::kIsRate);
  state.counters["bytes"] = static_cast<double>(bytes);
}

void BM_Memcpy(benchmark::State& state, std::uint32_t tokens) {
  Pools& p = PoolsFor(tokens);
  const std::uint64_t layer_bytes = std::uint64_t{p.layout.num_blocks} * p.layout.block_bytes();
  for (auto _ : state) {
    for (std::uint32_t l = 0; l < kLayers; ++l) {
      std::memcpy(p.dst.data() + p.layout.RegionOffset(l, 0),
                  p.src.data() + p.layout.RegionOffset(l, 0), layer_bytes);
    }
    benchmark::ClobberMemory();
  }
  SetRate(state, layer_bytes * kLayers);
}

struct Backend {
  const char* name;
  BackendKind kind;
  UcxTransports transports;
  TransportMode mode;
};

absl::StatusOr<std::unique_ptr<TransferAgent>> MakeAgent(
    const Backend& b, const std::shared_ptr<InProcessFabric>& fabric) {
  if (b.kind == BackendKind::kInProcess) {
    InProcessOptions o;
    o.fabric = fabric;
    return CreateInProcessAgent(o);
  }
  UcxOptions o;
  o.transports = b.transports;
  o.mode = b.mode;
  return CreateUcxAgent(o);
}

// allocated: both pools come from TransferAgent::AllocatePool (UCX: shared
// memory a same-host sender maps) instead of the caller's vectors.
void BM_Transfer(benchmark::State& state, Backend backend, std::uint32_t tokens,
                 bool scattered, bool allocated) {
  auto fabric = std::make_shared<InProcessFabric>();
  auto sender = MakeAgent(backend, fabric);
  auto receiver = MakeAgent(backend, fabric);
  if (!sender.ok() || !receiver.ok()) {
    state.SkipWithError("agent creation failed");
    return;
  }
  absl::StatusOr<PoolHandle> sp, rp;
  KvLayout layout;
  if (allocated) {
    PoolsFor(0);  // release the shared vectors first
    layout = RealLayout(tokens);
    auto sa = (*sender)->AllocatePool(layout);
    auto ra = (*receiver)->AllocatePool(layout);
    if (!sa.ok() || !ra.ok()) {
      state.SkipWithError("AllocatePool failed");
      return;
    }
    std::memset(sa->base, 0x5a, sa->bytes);  // fault the pages in before timing
    std::memset(ra->base, 0, ra->bytes);
    sp = sa->handle;
    rp = ra->handle;
  } else {
    Pools& p = PoolsFor(tokens);
    layout = p.layout;
    sp = (*sender)->RegisterPool(p.src.data(), p.src.size(), p.layout);
    rp = (*receiver)->RegisterPool(p.dst.data(), p.dst.size(), p.layout);
  }
  if (!sp.ok() || !rp.ok()) {
    state.SkipWithError("RegisterPool failed");
    return;
  }
  auto peer = (*sender)->Connect(*sp, *(*receiver)->LocalDescriptor(*rp));
  if (!peer.ok()) {
    state.SkipWithError(std::string(peer.status().message()).c_str());
    return;
  }
  std::vector<std::int32_t> local(layout.num_blocks), remote(layout.num_blocks);
  std::iota(local.begin(), local.end(), 0);
  std::iota(remote.begin(), remote.end(), 0);
  if (scattered) std::shuffle(remote.begin(), remote.end(), std::mt19937(1));
  std::vector<std::vector<Region>> l(kLayers);
  std::vector<std::vector<RemoteRegion>> r(kLayers);
  for (std::uint32_t layer = 0; layer < kLayers; ++layer) {
    l[layer] = LayerRegions(layer, local);
    r[layer] = RemoteLayerRegions(layer, remote);
  }
  for (auto _ : state) {
    for (std::uint32_t layer = 0; layer < kLayers; ++layer) {
      if (!(*sender)->PostWrite(*peer, l[layer], r[layer]).ok()) {
        state.SkipWithError("PostWrite failed");
        return;
      }
    }
    if (absl::Status s = (*sender)->Flush(*peer, absl::Now() + absl::Seconds(120)); !s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      return;
    }
  }
  (*receiver)->CompletedWrites();
  SetRate(state, std::uint64_t{tokens} * kLayers * kEntryBytes);
  state.SetLabel((*sender)->GetPeerInfo(*peer)->transport);
}

void Register(const std::string& name, Backend b, std::uint32_t tokens, bool scattered,
              bool allocated, int iterations) {
  benchmark::RegisterBenchmark(name.c_str(), BM_Transfer, b, tokens, scattered, allocated)
      ->Iterations(iterations)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

void RegisterAll() {
  const Backend inproc{"inproc", BackendKind::kInProcess, UcxTransports::kDefault,
                       TransportMode::kAuto};
  const Backend shm{"shm", BackendKind::kUcx, UcxTransports::kSharedMemory, TransportMode::kAuto};
  const Backend cma_tcp{"cma+tcp", BackendKind::kUcx, UcxTransports::kCmaTcp,
                        TransportMode::kAuto};
  const Backend tcp{"tcp", BackendKind::kUcx, UcxTransports::kTcp, TransportMode::kAuto};
  const Backend shm_rma{"shm-rma", BackendKind::kUcx, UcxTransports::kSharedMemory,
                        TransportMode::kRma};
  const Backend tcp_rma{"tcp-rma", BackendKind::kUcx, UcxTransports::kTcp, TransportMode::kRma};
  for (std::uint32_t tokens : {8192u, 65536u}) {
    const std::string size = tokens == 8192 ? "8k" : "64k";
    const int iterations = tokens == 8192 ? 5 : 2;
    benchmark::RegisterBenchmark(("KvTransfer/memcpy/" + size).c_str(), BM_Memcpy, tokens)
        ->Iterations(iterations)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    // Caller-allocated pools (RegisterPool), kAuto: what the engine gets today.
    for (const Backend& b : {inproc, shm, cma_tcp, tcp}) {
      Register("KvTransfer/" + std::string(b.name) + "/" + size, b, tokens, false, false,
               iterations);
    }
    // Agent-allocated pools (AllocatePool): native shm puts.
    Register("KvTransfer/shm/" + size + "/allocated", shm, tokens, false, true, iterations);
    if (tokens == 8192) {
      for (const Backend& b : {shm, tcp}) {
        Register("KvTransfer/" + std::string(b.name) + "/" + size + "/scattered", b, tokens,
                 true, false, iterations);
      }
      // What kAuto avoids: UCX 1.13 emulating put with active messages.
      Register("KvTransfer/shm-rma/8k", shm_rma, tokens, false, false, iterations);
      Register("KvTransfer/tcp-rma/8k", tcp_rma, tokens, false, false, 1);
    }
  }
}

}  // namespace
}  // namespace sirocco::transfer

int main(int argc, char** argv) {
  sirocco::transfer::RegisterAll();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
