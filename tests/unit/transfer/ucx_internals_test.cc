// The UCX backend's pure parts: how kAuto reads endpoint lanes (on text
// captured from UCX 1.13 on this machine kind) and the message codecs.
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transfer/ucx/lanes.h"
#include "transfer/ucx/messages.h"

namespace sirocco::transfer::ucx {
namespace {

// ucp_ep_print_info() of a client-server endpoint, UCX_TLS=posix,sysv,cma,self,tcp.
constexpr char kShmEp[] = R"(#
# UCP endpoint
#
#               peer: <no debug data>
#                 lane[0]: cm rdmacm
#                 lane[1]:  3:sysv/memory.0 md[2]           -> md[2]/sysv/sysdev[255] am am_bw#0
#                 lane[2]:  4:posix/memory.0 md[3]          -> md[3]/posix/sysdev[255]
#                 lane[3]:  5:cma/memory.0 md[4]            -> md[4]/cma/sysdev[255] rma_bw#0
#
#                 am_send: 0..<egr/short>..93..<egr/bcopy>..8256..<rndv>..(inf)
#                  put[1]: 0..<short>..4294967296..<bcopy>..(inf)
#                  get[1]: 0..<bcopy>..(inf)
#                  put[2]: 0..<short>..4294967296..<bcopy>..(inf)
#                  get[2]: 0..<bcopy>..(inf)
#                  rma_bw: mds rndv_rkey_size 9
)";

// The same with UCX_TLS=tcp,self.
constexpr char kTcpEp[] = R"(#
#                 lane[0]: cm rdmacm
#                 lane[1]:  1:tcp/lo.0 md[1]                -> md[1]/tcp/sysdev[255] rma_bw#0 am am_bw#0 wireup
#                 lane[2]:  2:tcp/eth0.0 md[1]              -> md[1]/tcp/sysdev[255] rma_bw#1
#
#                 am_send: 0..<egr/short>..8185..<egr/zcopy>..8192..<rndv>..(inf)
)";

TEST(LanesTest, SharedMemoryPutsAreNativeOnlyIntoMappablePools) {
  const EpLanes lanes = ParseEpInfo(kShmEp);
  EXPECT_EQ(lanes.put, (std::vector<std::string>{"sysv", "posix"}));
  EXPECT_EQ(lanes.rma_bw, std::vector<std::string>{"cma"});
  EXPECT_EQ(lanes.am, "sysv");
  // A pool UCX allocated in shared memory: a put is a memcpy into the mapping.
  EXPECT_EQ(ResolveMode(TransportMode::kAuto, lanes, /*target_mappable=*/true),
            TransportMode::kRma);
  EXPECT_EQ(DescribeTransport(TransportMode::kRma, lanes, true), "rma:sysv+posix");
  // Caller memory: UCX would emulate the put; messages rendezvous over cma.
  EXPECT_EQ(ResolveMode(TransportMode::kAuto, lanes, false), TransportMode::kMessages);
  EXPECT_EQ(DescribeTransport(TransportMode::kMessages, lanes, false), "am:sysv+rndv:cma");
  EXPECT_EQ(DescribeTransport(TransportMode::kRma, lanes, false), "rma:am-emulated/sysv");
}

TEST(LanesTest, TcpOnlyGetsMessages) {
  const EpLanes lanes = ParseEpInfo(kTcpEp);
  EXPECT_TRUE(lanes.put.empty());
  EXPECT_EQ(lanes.rma_bw, (std::vector<std::string>{"tcp", "tcp"}));
  EXPECT_EQ(lanes.am, "tcp");
  EXPECT_EQ(ResolveMode(TransportMode::kAuto, lanes, false), TransportMode::kMessages);
  EXPECT_EQ(ResolveMode(TransportMode::kAuto, lanes, true), TransportMode::kMessages);
  EXPECT_EQ(DescribeTransport(TransportMode::kMessages, lanes, false), "am:tcp");
  // An explicit mode is obeyed.
  EXPECT_EQ(ResolveMode(TransportMode::kRma, lanes, false), TransportMode::kRma);
  EXPECT_EQ(DescribeTransport(TransportMode::kRma, lanes, false), "rma:am-emulated/tcp");
}

TEST(LanesTest, RdmaPutLaneGetsRmaForAnyMemory) {
  const EpLanes lanes = ParseEpInfo(
      "#  lane[1]:  7:rc_mlx5/mlx5_0:1.0 md[5] -> md[5]/ib/sysdev[0] rma_bw#0 am am_bw#0\n"
      "#  put[1]: 0..<short>..124..<bcopy>..8192..<zcopy>..(inf)\n");
  EXPECT_EQ(lanes.put, std::vector<std::string>{"rc_mlx5"});
  EXPECT_EQ(ResolveMode(TransportMode::kAuto, lanes, false), TransportMode::kRma);
  EXPECT_EQ(ResolveMode(TransportMode::kAuto, ParseEpInfo(""), false), TransportMode::kMessages);
}

TEST(MessagesTest, RoundTrip) {
  HelloMsg hello{1, 2, 3, {}};
  hello.layout.num_layers = 36;
  auto h = DecodeHello(Encode(hello));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->sender_agent, 1u);
  EXPECT_EQ(h->layout, hello.layout);
  DataMsg data{1, 2, 3, 5, 6, 7, 8, {{4096, 10240}, {0, 20480}}};
  const std::string encoded = Encode(data);
  EXPECT_EQ(encoded.size(), DataMsgBytes(2));
  auto d = DecodeData(encoded);
  ASSERT_TRUE(d.ok());
  ASSERT_EQ(d->segments.size(), 2u);
  EXPECT_EQ(d->segments[0].offset, 4096u);
  EXPECT_EQ(d->segments[1].length, 20480u);
  EXPECT_EQ(d->bytes, 8u);
  EXPECT_EQ(d->op_count, 5u);
  auto r = DecodeReply(Encode(ReplyMsg{1, 2, 9, "why"}));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->message, "why");
  EXPECT_EQ(r->code, 9);
  // A hello from another protocol version is refused by name.
  std::string other = Encode(hello);
  other[4] = 2;
  EXPECT_THAT(std::string(DecodeHello(other).status().message()),
              ::testing::HasSubstr("protocol version 2"));
  EXPECT_FALSE(DecodeData(encoded.substr(1)).ok());
  EXPECT_FALSE(DecodeData(encoded.substr(0, encoded.size() - 1)).ok());
}

}  // namespace
}  // namespace sirocco::transfer::ucx
