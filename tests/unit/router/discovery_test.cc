#include "router/discovery.h"

#include "gtest/gtest.h"

namespace sirocco::router {
namespace {

TEST(Discovery, ParsesEndpoints) {
  auto a = ParseEndpoint("decode.sirocco.svc.cluster.local:7001");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "decode.sirocco.svc.cluster.local");
  EXPECT_EQ(a->port, "7001");
  auto b = ParseEndpoint("[::1]:50051");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->host, "::1");
  for (const char* bad : {"", "nohost", ":80", "h:", "h:0", "h:70000", "h:8x", "::1:80", "[::1]80"}) {
    auto r = ParseEndpoint(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(Discovery, ResolvesNumericAndLocalNames) {
  auto v4 = Resolve({"127.0.0.1", "7001"});
  ASSERT_TRUE(v4.ok()) << v4.status().ToString();
  EXPECT_EQ(*v4, (std::set<WorkerId>{{"127.0.0.1:7001"}}));
  auto v6 = Resolve({"::1", "7001"});
  ASSERT_TRUE(v6.ok()) << v6.status().ToString();
  EXPECT_EQ(*v6, (std::set<WorkerId>{{"[::1]:7001"}}));
  auto local = Resolve({"localhost", "9"});
  ASSERT_TRUE(local.ok()) << local.status().ToString();
  EXPECT_FALSE(local->empty());
}

TEST(Discovery, UnknownNameIsAnError) {
  auto r = Resolve({"no-such-host.invalid", "7001"});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("no-such-host.invalid"), std::string::npos);
}

}  // namespace
}  // namespace sirocco::router
