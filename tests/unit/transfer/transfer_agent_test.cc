// The TransferAgent contract, run against every backend configuration:
// in-process, and UCX over shared memory and tcp in RMA and messages mode
// (two agents in one process on 127.0.0.1). Each test checks bytes in the
// target pool against the source pool, never against captured output.
#include <algorithm>
#include <numeric>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/unit/transfer/transfer_test_util.h"

namespace sirocco::transfer {
namespace {

using ::sirocco::transfer::testing::AgentFactory;
using ::sirocco::transfer::testing::AllBackends;
using ::sirocco::transfer::testing::BackendParam;
using ::sirocco::transfer::testing::Pool;
using ::sirocco::transfer::testing::SmallLayout;
using ::testing::HasSubstr;

constexpr std::uint32_t kSenderBlocks = 64;
constexpr std::uint32_t kReceiverBlocks = 96;  // pools of different sizes must still connect

// Polls until the transfer ends or `limit` passes (then returns the pending state).
TransferState WaitFor(TransferAgent& agent, TransferId id, absl::Duration limit = absl::Seconds(20)) {
  const absl::Time give_up = absl::Now() + limit;
  for (;;) {
    TransferState s = agent.Poll(id);
    if (!s.pending() || absl::Now() > give_up) return s;
    absl::SleepFor(absl::Microseconds(200));
  }
}

// Waits until `n` notices arrived at `agent` (or 20 s passed).
std::vector<WriteNotice> WaitNotices(TransferAgent& agent, std::size_t n) {
  std::vector<WriteNotice> all;
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (all.size() < n && absl::Now() < give_up) {
    for (const WriteNotice& w : agent.CompletedWrites()) all.push_back(w);
    if (all.size() < n) absl::SleepFor(absl::Microseconds(200));
  }
  return all;
}

struct Write {
  std::uint32_t layer;
  std::vector<std::int32_t> local_blocks;
  std::vector<std::int32_t> remote_blocks;
};

class TransferAgentTest : public ::testing::TestWithParam<BackendParam> {
 protected:
  void SetUp() override {
    factory_ = std::make_unique<AgentFactory>(GetParam());
    faults_ = std::make_shared<FaultInjector>();
    auto s = factory_->Make(faults_);
    ASSERT_TRUE(s.ok()) << s.status();
    sender_ = *std::move(s);
    auto r = factory_->Make();
    ASSERT_TRUE(r.ok()) << r.status();
    receiver_ = *std::move(r);
    src_ = std::make_unique<Pool>(SmallLayout(kSenderBlocks), 1);
    dst_ = std::make_unique<Pool>(SmallLayout(kReceiverBlocks), 2);
    expected_ = dst_->bytes;
    auto sp = sender_->RegisterPool(src_->bytes.data(), src_->bytes.size(), src_->layout);
    ASSERT_TRUE(sp.ok()) << sp.status();
    src_handle_ = *sp;
    auto rp = receiver_->RegisterPool(dst_->bytes.data(), dst_->bytes.size(), dst_->layout);
    ASSERT_TRUE(rp.ok()) << rp.status();
    dst_handle_ = *rp;
    auto d = receiver_->LocalDescriptor(dst_handle_);
    ASSERT_TRUE(d.ok()) << d.status();
    // Descriptors travel as bytes (over gRPC in the services).
    auto parsed = TargetDescriptor::Parse(d->Serialize());
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    target_ = *parsed;
    auto peer = sender_->Connect(src_handle_, target_);
    ASSERT_TRUE(peer.ok()) << peer.status();
    peer_ = *peer;
  }

  // Posts one write and records what the target pool must then hold.
  absl::StatusOr<TransferId> Post(const Write& w, WriteOptions options = {}) {
    const std::vector<Region> local = LayerRegions(w.layer, w.local_blocks);
    const std::vector<RemoteRegion> remote = RemoteLayerRegions(w.layer, w.remote_blocks);
    absl::StatusOr<TransferId> id = sender_->PostWrite(peer_, local, remote, options);
    if (id.ok()) Expect(w);
    return id;
  }
  void Expect(const Write& w) {
    const std::uint64_t bb = src_->layout.block_bytes();
    for (std::size_t i = 0; i < w.local_blocks.size(); ++i) {
      std::memcpy(expected_.data() + dst_->layout.RegionOffset(w.layer, w.remote_blocks[i]),
                  src_->region(w.layer, w.local_blocks[i]), bb);
    }
  }
  // The target pool equals the source regions written into the original pattern.
  void ExpectTargetMatches() {
    ASSERT_EQ(dst_->bytes.size(), expected_.size());
    const std::uint64_t bb = dst_->layout.block_bytes();
    for (std::uint32_t l = 0; l < dst_->layout.num_layers; ++l) {
      for (std::uint32_t b = 0; b < dst_->layout.num_blocks; ++b) {
        const std::uint64_t off = dst_->layout.RegionOffset(l, b);
        ASSERT_EQ(0, std::memcmp(dst_->bytes.data() + off, expected_.data() + off, bb))
            << "target region (layer " << l << ", block " << b << ") differs";
      }
    }
  }

  std::unique_ptr<AgentFactory> factory_;
  std::shared_ptr<FaultInjector> faults_;
  std::unique_ptr<TransferAgent> sender_;
  std::unique_ptr<TransferAgent> receiver_;
  std::unique_ptr<Pool> src_;
  std::unique_ptr<Pool> dst_;
  std::vector<unsigned char> expected_;
  PoolHandle src_handle_;
  PoolHandle dst_handle_;
  TargetDescriptor target_;
  PeerHandle peer_;
};

TEST_P(TransferAgentTest, ResolvesTheExpectedTransportMode) {
  auto info = sender_->GetPeerInfo(peer_);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->mode, GetParam().expected_mode) << "transport " << info->transport;
  EXPECT_EQ(info->remote_agent_id, receiver_->agent_id());
  EXPECT_EQ(sender_->backend(), GetParam().kind);
}

TEST_P(TransferAgentTest, RandomFragmentedBlocksArriveIntact) {
  std::mt19937 rng(7);
  std::vector<std::int32_t> local(kSenderBlocks), remote(kReceiverBlocks);
  std::iota(local.begin(), local.end(), 0);
  std::iota(remote.begin(), remote.end(), 0);
  std::shuffle(local.begin(), local.end(), rng);
  std::shuffle(remote.begin(), remote.end(), rng);
  // 40 blocks: a contiguous run on both sides (coalesced) + scattered blocks.
  std::vector<std::int32_t> lb = {10, 11, 12, 13, 14, 15};
  std::vector<std::int32_t> rb = {50, 51, 52, 53, 54, 55};
  for (int i = 0; lb.size() < 40; ++i) {
    if (local[i] >= 10 && local[i] <= 15) continue;
    if (remote[i] >= 50 && remote[i] <= 55) continue;
    lb.push_back(local[i]);
    rb.push_back(remote[i]);
  }
  std::vector<Region> l;
  std::vector<RemoteRegion> r;
  for (std::uint32_t layer = 0; layer < src_->layout.num_layers; ++layer) {
    for (std::size_t i = 0; i < lb.size(); ++i) {
      // Layers cross: layer L of the source goes to layer L of the target.
      l.push_back({layer, static_cast<std::uint32_t>(lb[i])});
      r.push_back({layer, static_cast<std::uint32_t>(rb[i])});
    }
    Expect({layer, lb, rb});
  }
  auto id = sender_->PostWrite(peer_, l, r, WriteOptions{.tag = 42});
  ASSERT_TRUE(id.ok()) << id.status();
  TransferState s = WaitFor(*sender_, *id);
  ASSERT_TRUE(s.done()) << s.status;
  ExpectTargetMatches();
  std::vector<WriteNotice> notices = WaitNotices(*receiver_, 1);
  ASSERT_EQ(notices.size(), 1u);
  EXPECT_EQ(notices[0].tag, 42u);
  EXPECT_EQ(notices[0].transfer, *id);
  EXPECT_EQ(notices[0].pool, dst_handle_);
  EXPECT_EQ(notices[0].sender_agent_id, sender_->agent_id());
  EXPECT_EQ(notices[0].regions, l.size());
  EXPECT_EQ(notices[0].bytes, l.size() * src_->layout.block_bytes());
  // A terminal state is reported once.
  EXPECT_EQ(sender_->Poll(*id).status.code(), absl::StatusCode::kNotFound);
}

TEST_P(TransferAgentTest, LayerByLayerPostsThenFlush) {
  const std::vector<std::int32_t> lb = {3, 4, 5, 9, 20, 21, 22, 23, 40};
  const std::vector<std::int32_t> rb = {90, 91, 92, 7, 0, 1, 2, 3, 60};
  std::vector<TransferId> ids;
  for (std::uint32_t layer = 0; layer < src_->layout.num_layers; ++layer) {
    auto id = Post({layer, lb, rb}, WriteOptions{.tag = 100 + layer});
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  ASSERT_TRUE(sender_->Flush(peer_, absl::Now() + absl::Seconds(20)).ok());
  ExpectTargetMatches();  // Flush OK ⇒ visible at the target
  for (TransferId id : ids) EXPECT_TRUE(sender_->Poll(id).done());
  std::vector<WriteNotice> notices = WaitNotices(*receiver_, ids.size());
  ASSERT_EQ(notices.size(), ids.size());
  std::vector<std::uint64_t> tags;
  for (const WriteNotice& n : notices) tags.push_back(n.tag);
  std::sort(tags.begin(), tags.end());
  EXPECT_EQ(tags, (std::vector<std::uint64_t>{100, 101, 102, 103}));
}

TEST_P(TransferAgentTest, LayoutMismatchIsRefusedWithTheFieldNamed) {
  auto other = factory_->Make();
  ASSERT_TRUE(other.ok()) << other.status();
  Pool wide(SmallLayout(kReceiverBlocks, /*block_size=*/32), 3);
  auto handle = (*other)->RegisterPool(wide.bytes.data(), wide.bytes.size(), wide.layout);
  ASSERT_TRUE(handle.ok()) << handle.status();
  auto desc = (*other)->LocalDescriptor(*handle);
  ASSERT_TRUE(desc.ok());
  auto peer = sender_->Connect(src_handle_, *desc);
  ASSERT_EQ(peer.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(peer.status().message()),
              HasSubstr("KV layout mismatch: block_size 16 here, 32 at the peer"));

  // A descriptor that lies about the layout is caught by the target itself.
  TargetDescriptor forged = *desc;
  forged.layout = src_->layout;
  forged.layout.num_blocks = kReceiverBlocks;
  peer = sender_->Connect(src_handle_, forged);
  ASSERT_EQ(peer.status().code(), absl::StatusCode::kFailedPrecondition) << peer.status();
  EXPECT_THAT(std::string(peer.status().message()),
              HasSubstr("KV layout mismatch: block_size 32 here, 16 at the peer"));

  // So is another model.
  KvLayout other_model = src_->layout;
  other_model.model_fingerprint ^= 1;
  TargetDescriptor wrong_model = target_;
  wrong_model.layout.model_fingerprint = other_model.model_fingerprint;
  peer = sender_->Connect(src_handle_, wrong_model);
  ASSERT_EQ(peer.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(peer.status().message()), HasSubstr("model_fingerprint"));
}

TEST_P(TransferAgentTest, BadRegionListsAreRejectedUpFront) {
  auto post = [&](std::vector<Region> l, std::vector<RemoteRegion> r) {
    return sender_->PostWrite(peer_, l, r).status();
  };
  absl::Status s = post({{0, 1}}, {{0, kReceiverBlocks}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("remote_regions[0].block 96"));
  s = post({{4, 1}}, {{0, 1}});
  EXPECT_THAT(std::string(s.message()), HasSubstr("local_regions[0].layer 4"));
  s = post({{0, 1}, {0, 2}}, {{0, 1}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = post({}, {});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = post({{0, 1}, {0, 2}}, {{1, 5}, {1, 5}});
  EXPECT_THAT(std::string(s.message()), HasSubstr("remote_regions[1] repeats remote_regions[0]"));
  EXPECT_EQ(sender_->PostWrite(PeerHandle{999}, std::vector<Region>{{0, 1}},
                               std::vector<RemoteRegion>{{0, 1}})
                .status()
                .code(),
            absl::StatusCode::kNotFound);
}

TEST_P(TransferAgentTest, CancelStopsAPendingWriteAndTheAgentStaysUsable) {
  faults_->DelayWrites(absl::Milliseconds(300));
  const std::vector<Region> l = LayerRegions(1, std::vector<std::int32_t>{1, 2, 3});
  const std::vector<RemoteRegion> r = RemoteLayerRegions(1, std::vector<std::int32_t>{4, 5, 6});
  auto id = sender_->PostWrite(peer_, l, r);
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(sender_->Cancel(*id).ok());
  EXPECT_EQ(sender_->Cancel(*id).code(), absl::StatusCode::kFailedPrecondition);
  TransferState s = sender_->Poll(*id);
  EXPECT_EQ(s.status.code(), absl::StatusCode::kCancelled);
  absl::SleepFor(absl::Milliseconds(500));  // past the delay: nothing may move
  EXPECT_TRUE(receiver_->CompletedWrites().empty());
  ExpectTargetMatches();
  // A cancelled transfer does not fail Flush.
  faults_->DelayWrites(absl::ZeroDuration());
  auto id2 = Post({1, {1, 2, 3}, {4, 5, 6}});
  ASSERT_TRUE(id2.ok());
  EXPECT_TRUE(sender_->Flush(peer_, absl::Now() + absl::Seconds(20)).ok());
  ExpectTargetMatches();
}

TEST_P(TransferAgentTest, InjectedFailureFailsOnlyThatWrite) {
  faults_->FailNthWrite(2);
  auto a = Post({0, {1}, {1}});
  auto b = sender_->PostWrite(peer_, LayerRegions(0, std::vector<std::int32_t>{2}),
                              RemoteLayerRegions(0, std::vector<std::int32_t>{2}));
  auto c = Post({0, {3}, {3}});
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_TRUE(WaitFor(*sender_, *a).done());
  TransferState sb = WaitFor(*sender_, *b);
  EXPECT_EQ(sb.status.code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(WaitFor(*sender_, *c).done());
  EXPECT_EQ(WaitNotices(*receiver_, 2).size(), 2u);
  ExpectTargetMatches();  // block 2 untouched
}

TEST_P(TransferAgentTest, TimeoutFailsTheTransferWithoutHanging) {
  faults_->DelayWrites(absl::Seconds(3));
  auto id = sender_->PostWrite(peer_, LayerRegions(0, std::vector<std::int32_t>{1}),
                               RemoteLayerRegions(0, std::vector<std::int32_t>{1}),
                               WriteOptions{.timeout = absl::Milliseconds(200)});
  ASSERT_TRUE(id.ok());
  const absl::Time start = absl::Now();
  EXPECT_EQ(sender_->Flush(peer_, absl::Now() + absl::Milliseconds(50)).code(),
            absl::StatusCode::kDeadlineExceeded);
  TransferState s = WaitFor(*sender_, *id, absl::Seconds(2));
  EXPECT_EQ(s.status.code(), absl::StatusCode::kDeadlineExceeded) << s.status;
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
}

TEST_P(TransferAgentTest, LostPeerFailsPendingWritesAndOthersStillWork) {
  faults_->DelayWrites(absl::Milliseconds(300));
  auto id = sender_->PostWrite(peer_, LayerRegions(2, std::vector<std::int32_t>{1, 2}),
                               RemoteLayerRegions(2, std::vector<std::int32_t>{1, 2}));
  ASSERT_TRUE(id.ok());
  receiver_.reset();  // the decode worker dies mid-transfer
  TransferState s = WaitFor(*sender_, *id, absl::Seconds(10));
  ASSERT_TRUE(s.failed());
  EXPECT_TRUE(s.status.code() == absl::StatusCode::kUnavailable ||
              s.status.code() == absl::StatusCode::kDeadlineExceeded)
      << s.status;
  faults_->DelayWrites(absl::ZeroDuration());

  // A new target on the same sender agent works.
  auto fresh = factory_->Make();
  ASSERT_TRUE(fresh.ok());
  Pool pool(SmallLayout(8), 9);
  auto h = (*fresh)->RegisterPool(pool.bytes.data(), pool.bytes.size(), pool.layout);
  ASSERT_TRUE(h.ok());
  auto peer = sender_->Connect(src_handle_, *(*fresh)->LocalDescriptor(*h));
  ASSERT_TRUE(peer.ok()) << peer.status();
  auto id2 = sender_->PostWrite(*peer, LayerRegions(3, std::vector<std::int32_t>{5}),
                                RemoteLayerRegions(3, std::vector<std::int32_t>{7}));
  ASSERT_TRUE(id2.ok());
  ASSERT_TRUE(WaitFor(*sender_, *id2).done());
  EXPECT_EQ(0, std::memcmp(pool.region(3, 7), src_->region(3, 5), pool.layout.block_bytes()));
}

TEST_P(TransferAgentTest, InjectedPeerDropFailsThePeer) {
  faults_->DelayWrites(absl::Milliseconds(200));
  auto id = sender_->PostWrite(peer_, LayerRegions(0, std::vector<std::int32_t>{1}),
                               RemoteLayerRegions(0, std::vector<std::int32_t>{1}));
  ASSERT_TRUE(id.ok());
  faults_->DropPeers();
  TransferState s = WaitFor(*sender_, *id, absl::Seconds(5));
  EXPECT_EQ(s.status.code(), absl::StatusCode::kUnavailable) << s.status;
  // Reconnecting gives a working peer.
  faults_->DelayWrites(absl::ZeroDuration());
  auto peer = sender_->Connect(src_handle_, target_);
  ASSERT_TRUE(peer.ok()) << peer.status();
  peer_ = *peer;
  auto id2 = Post({0, {1}, {1}});
  ASSERT_TRUE(id2.ok()) << id2.status();
  EXPECT_TRUE(WaitFor(*sender_, *id2).done());
  ExpectTargetMatches();
}

TEST_P(TransferAgentTest, ManyConcurrentTransfersFromTwoSenders) {
  // A second sender, on its own thread, writes other target blocks at the same time.
  auto second = factory_->Make();
  ASSERT_TRUE(second.ok());
  Pool src2(SmallLayout(kSenderBlocks), 11);
  auto h2 = (*second)->RegisterPool(src2.bytes.data(), src2.bytes.size(), src2.layout);
  ASSERT_TRUE(h2.ok());
  auto peer2 = (*second)->Connect(*h2, target_);
  ASSERT_TRUE(peer2.ok()) << peer2.status();

  constexpr int kPerSender = 48;  // blocks 0..47 from sender 1, 48..95 from sender 2
  std::thread other([&] {
    for (int i = 0; i < kPerSender; ++i) {
      std::vector<Region> l;
      std::vector<RemoteRegion> r;
      for (std::uint32_t layer = 0; layer < 4; ++layer) {
        l.push_back({layer, static_cast<std::uint32_t>(i)});
        r.push_back({layer, static_cast<std::uint32_t>(kPerSender + i)});
      }
      ASSERT_TRUE((*second)->PostWrite(*peer2, l, r).ok());
    }
    EXPECT_TRUE((*second)->Flush(*peer2, absl::Now() + absl::Seconds(30)).ok());
  });
  std::vector<TransferId> ids;
  for (int i = 0; i < kPerSender; ++i) {
    for (std::uint32_t layer = 0; layer < 4; ++layer) {
      auto id = Post({layer, {kPerSender - 1 - i}, {i}});
      ASSERT_TRUE(id.ok()) << id.status();
      ids.push_back(*id);
    }
  }
  for (TransferId id : ids) {
    TransferState s = WaitFor(*sender_, id);
    ASSERT_TRUE(s.done()) << s.status;
  }
  other.join();
  for (int i = 0; i < kPerSender; ++i) {
    for (std::uint32_t layer = 0; layer < 4; ++layer) {
      std::memcpy(expected_.data() + dst_->layout.RegionOffset(layer, kPerSender + i),
                  src2.region(layer, i), dst_->layout.block_bytes());
    }
  }
  ExpectTargetMatches();
  EXPECT_EQ(WaitNotices(*receiver_, ids.size() + kPerSender).size(), ids.size() + kPerSender);
}

TEST_P(TransferAgentTest, ReleaseDropsThePeer) {
  faults_->DelayWrites(absl::Milliseconds(200));
  auto id = sender_->PostWrite(peer_, LayerRegions(0, std::vector<std::int32_t>{1}),
                               RemoteLayerRegions(0, std::vector<std::int32_t>{1}));
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(sender_->Release(peer_).ok());
  EXPECT_EQ(sender_->Poll(*id).status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(sender_->Release(peer_).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(sender_->PostWrite(peer_, LayerRegions(0, std::vector<std::int32_t>{1}),
                               RemoteLayerRegions(0, std::vector<std::int32_t>{1}))
                .status()
                .code(),
            absl::StatusCode::kNotFound);
  absl::SleepFor(absl::Milliseconds(400));
  EXPECT_TRUE(receiver_->CompletedWrites().empty());
  ExpectTargetMatches();
  // The source pool is free to unregister once no peer uses it.
  EXPECT_TRUE(sender_->UnregisterPool(src_handle_).ok());
}

TEST_P(TransferAgentTest, DescriptorOfAnotherBackendIsRejected) {
  TargetDescriptor d = target_;
  d.backend = GetParam().kind == BackendKind::kUcx ? BackendKind::kInProcess : BackendKind::kUcx;
  EXPECT_EQ(sender_->Connect(src_handle_, d).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sender_->UnregisterPool(src_handle_).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_P(TransferAgentTest, AgentAllocatedPoolsCarryWrites) {
  auto src = sender_->AllocatePool(src_->layout);
  ASSERT_TRUE(src.ok()) << src.status();
  auto dst = receiver_->AllocatePool(dst_->layout);
  ASSERT_TRUE(dst.ok()) << dst.status();
  ASSERT_EQ(reinterpret_cast<std::uintptr_t>(src->base) % 64, 0u);
  ASSERT_GE(dst->bytes, dst_->layout.pool_bytes());
  std::memcpy(src->base, src_->bytes.data(), src_->bytes.size());
  std::memset(dst->base, 0, dst->bytes);
  auto peer = sender_->Connect(src->handle, *receiver_->LocalDescriptor(dst->handle));
  ASSERT_TRUE(peer.ok()) << peer.status();
  auto info = sender_->GetPeerInfo(*peer);
  ASSERT_TRUE(info.ok());
  if (GetParam().transports == UcxTransports::kSharedMemory &&
      GetParam().mode == TransportMode::kAuto) {
    // UCX allocated the target in shared memory: puts are native here.
    EXPECT_EQ(info->mode, TransportMode::kRma) << info->transport;
    EXPECT_FALSE(absl::StrContains(info->transport, "emulated")) << info->transport;
  }
  const std::vector<std::int32_t> lb = {0, 1, 2, 30, 31, 63};
  const std::vector<std::int32_t> rb = {90, 91, 92, 5, 6, 7};
  for (std::uint32_t layer = 0; layer < 4; ++layer) {
    ASSERT_TRUE(
        sender_->PostWrite(*peer, LayerRegions(layer, lb), RemoteLayerRegions(layer, rb)).ok());
  }
  ASSERT_TRUE(sender_->Flush(*peer, absl::Now() + absl::Seconds(20)).ok());
  const auto* dst_bytes = static_cast<const unsigned char*>(dst->base);
  const std::uint64_t bb = dst_->layout.block_bytes();
  for (std::uint32_t layer = 0; layer < 4; ++layer) {
    for (std::size_t i = 0; i < lb.size(); ++i) {
      EXPECT_EQ(0, std::memcmp(dst_bytes + dst_->layout.RegionOffset(layer, rb[i]),
                               src_->region(layer, lb[i]), bb))
          << "layer " << layer << " block " << rb[i];
    }
    // Untouched neighbours stay zero.
    EXPECT_EQ(dst_bytes[dst_->layout.RegionOffset(layer, 8)], 0);
  }
  ASSERT_TRUE(sender_->Release(*peer).ok());
  EXPECT_TRUE(receiver_->UnregisterPool(dst->handle).ok());
}

INSTANTIATE_TEST_SUITE_P(Backends, TransferAgentTest, ::testing::ValuesIn(AllBackends()),
                         [](const auto& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace sirocco::transfer
