// UCX between two processes on 127.0.0.1, over shm and over tcp. The child
// is this binary re-executed (fork + exec: a fresh process, no UCX state
// inherited), talking to the parent through two pipes:
//   receiver child: publishes its descriptor, waits for N write notices,
//                   answers with a hash of its whole pool;
//   sender child:   connects to the parent's descriptor and writes forever.
// The parent kills children mid-transfer to check that failures surface as
// statuses within the timeouts and that the surviving agent keeps working.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/unit/transfer/transfer_test_util.h"

namespace sirocco::transfer {
namespace {

using testing::FillPattern;
using testing::Pool;
using testing::SmallLayout;

constexpr char kChildFlag[] = "--transfer_child";

// ------------------------------ pipes ------------------------------

bool WriteAll(int fd, const void* data, std::size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = write(fd, p, n);
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

// Reads exactly n bytes, waiting at most `timeout` in total.
bool ReadAll(int fd, void* data, std::size_t n, absl::Duration timeout) {
  char* p = static_cast<char*>(data);
  const absl::Time give_up = absl::Now() + timeout;
  while (n > 0) {
    pollfd pfd{fd, POLLIN, 0};
    const int ms = static_cast<int>(absl::ToInt64Milliseconds(give_up - absl::Now()));
    if (ms <= 0 || poll(&pfd, 1, ms) <= 0) return false;
    const ssize_t r = read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

bool WriteBlob(int fd, const std::string& s) {
  const std::uint32_t n = static_cast<std::uint32_t>(s.size());
  return WriteAll(fd, &n, sizeof(n)) && WriteAll(fd, s.data(), s.size());
}

bool ReadBlob(int fd, std::string* s, absl::Duration timeout) {
  std::uint32_t n = 0;
  if (!ReadAll(fd, &n, sizeof(n), timeout)) return false;
  s->resize(n);
  return ReadAll(fd, s->data(), n, timeout);
}

UcxOptions Options(UcxTransports transports, absl::Duration timeout = absl::Seconds(5)) {
  UcxOptions o;
  o.transports = transports;
  o.transfer_timeout = timeout;
  o.connect_timeout = absl::Seconds(5);
  return o;
}

// ------------------------------ child side ------------------------------

// argv: kChildFlag role transports seed num_blocks expected_notices in_fd out_fd
int RunChild(int argc, char** argv) {
  if (argc != 9) return 2;
  const std::string role = argv[2];
  int transports = 0, in_fd = -1, out_fd = -1;
  std::uint64_t seed = 0;
  std::uint32_t blocks = 0, expected = 0;
  if (!absl::SimpleAtoi(argv[3], &transports) || !absl::SimpleAtoi(argv[4], &seed) ||
      !absl::SimpleAtoi(argv[5], &blocks) || !absl::SimpleAtoi(argv[6], &expected) ||
      !absl::SimpleAtoi(argv[7], &in_fd) || !absl::SimpleAtoi(argv[8], &out_fd)) {
    return 3;
  }
  auto agent = CreateUcxAgent(Options(static_cast<UcxTransports>(transports)));
  if (!agent.ok()) return 4;
  Pool pool(SmallLayout(blocks), seed);
  auto handle = (*agent)->RegisterPool(pool.bytes.data(), pool.bytes.size(), pool.layout);
  if (!handle.ok()) return 5;

  if (role == "receiver" || role == "receiver-allocated") {
    // receiver-allocated: the pool comes from AllocatePool (UCX shared memory).
    unsigned char* bytes = pool.bytes.data();
    if (role == "receiver-allocated") {
      auto allocated = (*agent)->AllocatePool(pool.layout);
      if (!allocated.ok()) return 14;
      bytes = static_cast<unsigned char*>(allocated->base);
      std::memcpy(bytes, pool.bytes.data(), pool.bytes.size());
      handle = allocated->handle;
    }
    if (!WriteBlob(out_fd, (*agent)->LocalDescriptor(*handle)->Serialize())) return 6;
    std::uint32_t got = 0;
    while (expected > 0 && got < expected) {
      got += static_cast<std::uint32_t>((*agent)->CompletedWrites().size());
      absl::SleepFor(absl::Microseconds(200));
    }
    const std::uint64_t hash =
        Fingerprint64(std::string_view(reinterpret_cast<const char*>(bytes), pool.bytes.size()));
    if (expected > 0 && !WriteAll(out_fd, &hash, sizeof(hash))) return 7;
    char c;
    while (read(in_fd, &c, 1) > 0) {  // until the parent closes the pipe (or kills us)
    }
    return 0;
  }
  if (role == "sender") {
    std::string bytes;
    if (!ReadBlob(in_fd, &bytes, absl::Seconds(10))) return 8;
    auto target = TargetDescriptor::Parse(bytes);
    if (!target.ok()) return 9;
    auto peer = (*agent)->Connect(*handle, *target);
    if (!peer.ok()) return 10;
    std::vector<Region> local;
    std::vector<RemoteRegion> remote;
    for (std::uint32_t l = 0; l < pool.layout.num_layers; ++l) {
      for (std::uint32_t b = 0; b < blocks; ++b) {
        local.push_back({l, b});
        remote.push_back({l, b});
      }
    }
    for (;;) {  // until killed
      auto id = (*agent)->PostWrite(*peer, local, remote);
      if (!id.ok()) return 11;
      if (!(*agent)->Flush(*peer, absl::Now() + absl::Seconds(10)).ok()) return 12;
    }
  }
  return 13;
}

// ------------------------------ parent side ------------------------------

struct Child {
  pid_t pid = -1;
  int to_child = -1;    // parent writes
  int from_child = -1;  // parent reads

  ~Child() {
    if (to_child >= 0) close(to_child);
    if (from_child >= 0) close(from_child);
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  }
  // Closes the pipe the child waits on and returns its exit code.
  int Finish() {
    close(to_child);
    to_child = -1;
    int status = 0;
    waitpid(pid, &status, 0);
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  void Kill() {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    pid = -1;
  }
};

std::unique_ptr<Child> Spawn(const std::string& role, UcxTransports transports,
                             std::uint64_t seed, std::uint32_t blocks, std::uint32_t expected) {
  int down[2], up[2];
  if (pipe(down) != 0 || pipe(up) != 0) return nullptr;
  const pid_t pid = fork();
  if (pid == 0) {
    close(down[1]);
    close(up[0]);
    std::vector<std::string> args = {"/proc/self/exe",
                                     kChildFlag,
                                     role,
                                     absl::StrCat(static_cast<int>(transports)),
                                     absl::StrCat(seed),
                                     absl::StrCat(blocks),
                                     absl::StrCat(expected),
                                     absl::StrCat(down[0]),
                                     absl::StrCat(up[1])};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(down[0]);
  close(up[1]);
  auto child = std::make_unique<Child>();
  child->pid = pid;
  child->to_child = down[1];
  child->from_child = up[0];
  return child;
}

struct ForkParam {
  std::string name;
  UcxTransports transports;
};

void PrintTo(const ForkParam& p, std::ostream* os) { *os << p.name; }

class UcxForkTest : public ::testing::TestWithParam<ForkParam> {};

// Writes scattered blocks of 4 layers into a receiver child and compares the
// hash of its whole pool with one computed here. Returns the mode used.
void WriteIntoChild(const std::string& role, UcxTransports transports,
                    TransportMode* mode_used) {
  constexpr std::uint32_t kRemoteBlocks = 96;
  auto child = Spawn(role, transports, /*seed=*/2, kRemoteBlocks, /*expected=*/4);
  ASSERT_NE(child, nullptr);
  std::string bytes;
  ASSERT_TRUE(ReadBlob(child->from_child, &bytes, absl::Seconds(20)));
  auto target = TargetDescriptor::Parse(bytes);
  ASSERT_TRUE(target.ok()) << target.status();

  auto agent = CreateUcxAgent(Options(transports));
  ASSERT_TRUE(agent.ok()) << agent.status();
  Pool src(SmallLayout(64), 1);
  auto h = (*agent)->RegisterPool(src.bytes.data(), src.bytes.size(), src.layout);
  ASSERT_TRUE(h.ok());
  auto peer = (*agent)->Connect(*h, *target);
  ASSERT_TRUE(peer.ok()) << peer.status();
  *mode_used = (*agent)->GetPeerInfo(*peer)->mode;

  // What the child's pool must hold afterwards, computed here independently.
  Pool expected(SmallLayout(kRemoteBlocks), 2);
  const std::vector<std::int32_t> lb = {0, 1, 2, 3, 17, 40, 41, 63};
  const std::vector<std::int32_t> rb = {95, 10, 11, 12, 0, 50, 51, 1};
  for (std::uint32_t layer = 0; layer < 4; ++layer) {
    ASSERT_TRUE((*agent)
                    ->PostWrite(*peer, LayerRegions(layer, lb), RemoteLayerRegions(layer, rb))
                    .ok());
    for (std::size_t i = 0; i < lb.size(); ++i) {
      std::memcpy(expected.bytes.data() + expected.layout.RegionOffset(layer, rb[i]),
                  src.region(layer, lb[i]), src.layout.block_bytes());
    }
  }
  ASSERT_TRUE((*agent)->Flush(*peer, absl::Now() + absl::Seconds(20)).ok());
  std::uint64_t hash = 0;
  ASSERT_TRUE(ReadAll(child->from_child, &hash, sizeof(hash), absl::Seconds(20)));
  EXPECT_EQ(hash, Fingerprint64(std::string_view(
                      reinterpret_cast<const char*>(expected.bytes.data()), expected.bytes.size())));
  EXPECT_EQ(child->Finish(), 0);
}

TEST_P(UcxForkTest, WritesArriveIntactInAnotherProcess) {
  TransportMode mode = TransportMode::kAuto;
  WriteIntoChild("receiver", GetParam().transports, &mode);
  EXPECT_EQ(mode, TransportMode::kMessages);  // caller memory: no native put here
}

TEST_P(UcxForkTest, WritesArriveIntactInAnAgentAllocatedPool) {
  TransportMode mode = TransportMode::kAuto;
  WriteIntoChild("receiver-allocated", GetParam().transports, &mode);
  // Shared memory the sender maps: native puts across processes.
  EXPECT_EQ(mode, GetParam().transports == UcxTransports::kSharedMemory
                      ? TransportMode::kRma
                      : TransportMode::kMessages);
}

TEST_P(UcxForkTest, ReceiverKilledMidTransferFailsWithinTheTimeout) {
  constexpr std::uint32_t kBlocks = 1024;  // 4 layers x 1024 blocks x 10 KiB = 40 MiB per write
  auto child = Spawn("receiver", GetParam().transports, 2, kBlocks, /*expected=*/0);
  ASSERT_NE(child, nullptr);
  std::string bytes;
  ASSERT_TRUE(ReadBlob(child->from_child, &bytes, absl::Seconds(20)));
  auto target = TargetDescriptor::Parse(bytes);
  ASSERT_TRUE(target.ok());

  constexpr absl::Duration kTimeout = absl::Seconds(4);
  auto agent = CreateUcxAgent(Options(GetParam().transports, kTimeout));
  ASSERT_TRUE(agent.ok());
  Pool src(SmallLayout(kBlocks), 1);
  auto h = (*agent)->RegisterPool(src.bytes.data(), src.bytes.size(), src.layout);
  ASSERT_TRUE(h.ok());
  auto peer = (*agent)->Connect(*h, *target);
  ASSERT_TRUE(peer.ok()) << peer.status();
  std::vector<Region> local;
  std::vector<RemoteRegion> remote;
  for (std::uint32_t l = 0; l < 4; ++l) {
    for (std::uint32_t b = 0; b < kBlocks; ++b) {
      local.push_back({l, b});
      remote.push_back({l, b});
    }
  }
  std::vector<TransferId> ids;
  for (int i = 0; i < 100; ++i) {
    auto id = (*agent)->PostWrite(*peer, local, remote);
    ASSERT_TRUE(id.ok());
    ids.push_back(*id);
  }
  // Let the first write land, then kill the target mid-stream.
  TransferState first = TransferState::Pending();
  const absl::Time wait_until = absl::Now() + absl::Seconds(20);
  while (first.pending() && absl::Now() < wait_until) {
    first = (*agent)->Poll(ids[0]);
    absl::SleepFor(absl::Microseconds(100));
  }
  ASSERT_TRUE(first.done()) << first.status;
  child->Kill();
  const absl::Time killed = absl::Now();

  int failed = 0;
  for (std::size_t i = 1; i < ids.size(); ++i) {
    TransferState s = TransferState::Pending();
    while (s.pending() && absl::Now() - killed < kTimeout + absl::Seconds(5)) {
      s = (*agent)->Poll(ids[i]);
      if (s.pending()) absl::SleepFor(absl::Milliseconds(1));
    }
    ASSERT_FALSE(s.pending()) << "transfer " << i << " still pending after the timeout";
    if (s.failed()) {
      ++failed;
      EXPECT_TRUE(s.status.code() == absl::StatusCode::kUnavailable ||
                  s.status.code() == absl::StatusCode::kDeadlineExceeded)
          << s.status;
    }
  }
  EXPECT_GT(failed, 0);
  EXPECT_LT(absl::Now() - killed, kTimeout + absl::Seconds(2));
  EXPECT_FALSE((*agent)->PostWrite(*peer, local, remote).ok() &&
               (*agent)->Flush(*peer, absl::Now() + kTimeout + absl::Seconds(2)).ok());

  // The agent still serves another target.
  auto other = CreateUcxAgent(Options(GetParam().transports));
  ASSERT_TRUE(other.ok());
  Pool dst(SmallLayout(8), 5);
  auto dh = (*other)->RegisterPool(dst.bytes.data(), dst.bytes.size(), dst.layout);
  ASSERT_TRUE(dh.ok());
  auto peer2 = (*agent)->Connect(*h, *(*other)->LocalDescriptor(*dh));
  ASSERT_TRUE(peer2.ok()) << peer2.status();
  ASSERT_TRUE((*agent)
                  ->PostWrite(*peer2, LayerRegions(1, std::vector<std::int32_t>{1000}),
                              RemoteLayerRegions(1, std::vector<std::int32_t>{3}))
                  .ok());
  ASSERT_TRUE((*agent)->Flush(*peer2, absl::Now() + absl::Seconds(10)).ok());
  EXPECT_EQ(0, std::memcmp(dst.region(1, 3), src.region(1, 1000), src.layout.block_bytes()));
}

TEST_P(UcxForkTest, SenderKilledMidTransferLeavesTheReceiverUsable) {
  if (GetParam().transports == UcxTransports::kSharedMemory) {
    // About one run in six the child dies half-way through writing a slot of
    // the target's posix/sysv receive FIFO, which then stalls for good and
    // later same-host peers cannot connect (UCX 1.13 mm transport). See
    // UcxTransports in transfer/ucx_agent.h; kCmaTcp below is the remedy.
    GTEST_SKIP() << "UCX mm FIFO does not survive a writer killed mid-message";
  }
  constexpr std::uint32_t kBlocks = 1024;
  auto agent = CreateUcxAgent(Options(GetParam().transports));
  ASSERT_TRUE(agent.ok());
  Pool dst(SmallLayout(kBlocks), 3);
  auto h = (*agent)->RegisterPool(dst.bytes.data(), dst.bytes.size(), dst.layout);
  ASSERT_TRUE(h.ok());
  auto child = Spawn("sender", GetParam().transports, 4, kBlocks, 0);
  ASSERT_NE(child, nullptr);
  ASSERT_TRUE(WriteBlob(child->to_child, (*agent)->LocalDescriptor(*h)->Serialize()));

  std::size_t notices = 0;
  const absl::Time wait_until = absl::Now() + absl::Seconds(20);
  while (notices == 0 && absl::Now() < wait_until) {
    notices += (*agent)->CompletedWrites().size();
    absl::SleepFor(absl::Microseconds(200));
  }
  ASSERT_GT(notices, 0u) << "the sender child never completed a write";
  child->Kill();  // most likely mid-way through its next write
  absl::SleepFor(absl::Milliseconds(200));

  // A new sender in this process writes into the same pool.
  auto sender = CreateUcxAgent(Options(GetParam().transports));
  ASSERT_TRUE(sender.ok());
  Pool src(SmallLayout(16), 6);
  auto sh = (*sender)->RegisterPool(src.bytes.data(), src.bytes.size(), src.layout);
  ASSERT_TRUE(sh.ok());
  auto peer = (*sender)->Connect(*sh, *(*agent)->LocalDescriptor(*h));
  ASSERT_TRUE(peer.ok()) << peer.status();
  ASSERT_TRUE((*sender)
                  ->PostWrite(*peer, LayerRegions(2, std::vector<std::int32_t>{7}),
                              RemoteLayerRegions(2, std::vector<std::int32_t>{900}),
                              WriteOptions{.tag = 77})
                  .ok());
  ASSERT_TRUE((*sender)->Flush(*peer, absl::Now() + absl::Seconds(10)).ok());
  EXPECT_EQ(0, std::memcmp(dst.region(2, 900), src.region(2, 7), src.layout.block_bytes()));
  bool saw = false;
  const absl::Time notice_deadline = absl::Now() + absl::Seconds(5);
  while (!saw && absl::Now() < notice_deadline) {
    for (const WriteNotice& n : (*agent)->CompletedWrites()) saw |= n.tag == 77;
  }
  EXPECT_TRUE(saw);
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxForkTest,
                         ::testing::Values(ForkParam{"Shm", UcxTransports::kSharedMemory},
                                           ForkParam{"CmaTcp", UcxTransports::kCmaTcp},
                                           ForkParam{"Tcp", UcxTransports::kTcp}),
                         [](const auto& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace sirocco::transfer

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == sirocco::transfer::kChildFlag) {
    return sirocco::transfer::RunChild(argc, argv);
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
