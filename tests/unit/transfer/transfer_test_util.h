// Helpers shared by the transfer tests: deterministic byte patterns, a small
// KV layout, pools, and agent factories for every backend configuration.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "transfer/fault_injector.h"
#include "transfer/in_process_agent.h"
#include "transfer/kv_layout.h"
#include "transfer/transfer_agent.h"
#include "transfer/ucx_agent.h"

namespace sirocco::transfer::testing {

// Fills `bytes` with a xorshift stream: different seeds never look alike, and
// every byte of a region depends on its position.
inline void FillPattern(std::vector<unsigned char>& bytes, std::uint64_t seed) {
  std::uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
  for (std::size_t i = 0; i < bytes.size(); i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(bytes.data() + i, &x, std::min<std::size_t>(8, bytes.size() - i));
  }
}

// The real model's entry (320 bf16 values = 640 B) with few layers and blocks.
inline KvLayout SmallLayout(std::uint32_t num_blocks, std::uint32_t block_size = 16) {
  KvLayout l;
  l.model_fingerprint = Fingerprint64("mistral-small-4-test");
  l.dtype_bytes = 2;
  l.num_layers = 4;
  l.num_blocks = num_blocks;
  l.block_size = block_size;
  l.entry_bytes = 640;
  return l;
}

struct Pool {
  KvLayout layout;
  std::vector<unsigned char> bytes;

  Pool(const KvLayout& l, std::uint64_t seed) : layout(l), bytes(l.pool_bytes()) {
    FillPattern(bytes, seed);
  }
  const unsigned char* region(std::uint32_t layer, std::uint32_t block) const {
    return bytes.data() + layout.RegionOffset(layer, block);
  }
};

// One backend configuration under test.
struct BackendParam {
  std::string name;
  BackendKind kind = BackendKind::kInProcess;
  UcxTransports transports = UcxTransports::kDefault;
  TransportMode mode = TransportMode::kAuto;
  TransportMode expected_mode = TransportMode::kRma;
};

// expected_mode is for caller-allocated pools (RegisterPool): UCX cannot put
// natively into those over shared memory, so kAuto picks messages there.
// Keeps ctest names short: gtest would otherwise dump the struct's bytes.
inline void PrintTo(const BackendParam& p, std::ostream* os) { *os << p.name; }

inline std::vector<BackendParam> AllBackends() {
  return {
      {"InProcess", BackendKind::kInProcess, UcxTransports::kDefault, TransportMode::kAuto,
       TransportMode::kRma},
      {"UcxShmAuto", BackendKind::kUcx, UcxTransports::kSharedMemory, TransportMode::kAuto,
       TransportMode::kMessages},
      {"UcxShmRma", BackendKind::kUcx, UcxTransports::kSharedMemory, TransportMode::kRma,
       TransportMode::kRma},
      {"UcxCmaTcpAuto", BackendKind::kUcx, UcxTransports::kCmaTcp, TransportMode::kAuto,
       TransportMode::kMessages},
      {"UcxTcpAuto", BackendKind::kUcx, UcxTransports::kTcp, TransportMode::kAuto,
       TransportMode::kMessages},
      {"UcxTcpRma", BackendKind::kUcx, UcxTransports::kTcp, TransportMode::kRma,
       TransportMode::kRma},
  };
}

// Creates agents of one configuration; in-process agents share one fabric.
class AgentFactory {
 public:
  explicit AgentFactory(const BackendParam& param)
      : param_(param), fabric_(std::make_shared<InProcessFabric>()) {}

  absl::StatusOr<std::unique_ptr<TransferAgent>> Make(
      std::shared_ptr<FaultInjector> faults = nullptr,
      absl::Duration transfer_timeout = absl::Seconds(5)) {
    if (param_.kind == BackendKind::kInProcess) {
      InProcessOptions o;
      o.fabric = fabric_;
      o.faults = std::move(faults);
      o.transfer_timeout = transfer_timeout;
      return CreateInProcessAgent(o);
    }
    UcxOptions o;
    o.transports = param_.transports;
    o.mode = param_.mode;
    o.faults = std::move(faults);
    o.transfer_timeout = transfer_timeout;
    o.connect_timeout = absl::Seconds(5);
    o.max_op_bytes = 64 << 10;  // small cap: several operations per transfer
    o.max_ops_in_flight = 4;
    return CreateUcxAgent(o);
  }

 private:
  BackendParam param_;
  std::shared_ptr<InProcessFabric> fabric_;
};

}  // namespace sirocco::transfer::testing
