// KvLayout geometry and compatibility, and TargetDescriptor bytes.
#include "transfer/kv_layout.h"

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transfer/descriptor.h"

namespace sirocco::transfer {
namespace {

using ::testing::HasSubstr;

KvLayout RealModel(std::uint32_t num_blocks) {
  KvLayout l;
  l.model_fingerprint = 0x1234;
  l.dtype_bytes = 2;       // bf16
  l.num_layers = 36;
  l.num_blocks = num_blocks;
  l.block_size = 16;
  l.entry_bytes = 320 * 2;  // kv_lora_rank 256 + rope 64
  return l;
}

TEST(KvLayoutTest, RegionGeometryMatchesThePoolLayout) {
  const KvLayout l = RealModel(512);
  EXPECT_EQ(l.block_bytes(), 16u * 640u);
  // 8k tokens = 512 blocks of 16: 36 * 8192 * 640 B = 188,743,680 B.
  EXPECT_EQ(l.pool_bytes(), 188743680u);
  EXPECT_EQ(l.RegionOffset(0, 0), 0u);
  EXPECT_EQ(l.RegionOffset(0, 1), l.block_bytes());
  EXPECT_EQ(l.RegionOffset(1, 0), 512u * l.block_bytes());
  EXPECT_EQ(l.RegionOffset(35, 511) + l.block_bytes(), l.pool_bytes());
  EXPECT_TRUE(l.Validate().ok());
}

TEST(KvLayoutTest, ValidateNamesTheBadField) {
  KvLayout l = RealModel(4);
  l.block_size = 0;
  EXPECT_THAT(std::string(l.Validate().message()), HasSubstr("block_size"));
  l = RealModel(4);
  l.entry_bytes = 641;
  EXPECT_THAT(std::string(l.Validate().message()), HasSubstr("entry_bytes 641"));
  l = RealModel(4);
  l.version = kKvLayoutVersion + 1;
  EXPECT_THAT(std::string(l.Validate().message()), HasSubstr(absl::StrCat("version ", kKvLayoutVersion + 1)));
}

TEST(KvLayoutTest, CompatibilityIgnoresPoolSizeOnly) {
  EXPECT_TRUE(CheckCompatible(RealModel(100), RealModel(7)).ok());
  struct Case {
    void (*mutate)(KvLayout&);
    const char* message;
  };
  const Case cases[] = {
      {[](KvLayout& l) { l.block_size = 32; }, "KV layout mismatch: block_size 16 here, 32 at the peer"},
      {[](KvLayout& l) { l.num_layers = 35; }, "KV layout mismatch: num_layers 36 here, 35 at the peer"},
      {[](KvLayout& l) { l.dtype_bytes = 4; }, "KV layout mismatch: dtype_bytes 2 here, 4 at the peer"},
      {[](KvLayout& l) { l.entry_bytes = 1280; }, "KV layout mismatch: entry_bytes 640 here, 1280 at the peer"},
      {[](KvLayout& l) { l.version = 9; }, "KV layout mismatch: layout version 2 here, 9 at the peer"},
      {[](KvLayout& l) { l.model_fingerprint = 0x99; },
       "KV layout mismatch: model_fingerprint 0000000000001234 here, 0000000000000099 at the peer"},
  };
  for (const Case& c : cases) {
    KvLayout remote = RealModel(100);
    c.mutate(remote);
    absl::Status s = CheckCompatible(RealModel(100), remote);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(s.message(), c.message);
  }
}

TEST(KvLayoutTest, Fingerprint64IsFnv1a) {
  // Published FNV-1a 64 test vectors.
  EXPECT_EQ(Fingerprint64(""), 0xcbf29ce484222325ULL);
  EXPECT_EQ(Fingerprint64("a"), 0xaf63dc4c8601ec8cULL);
  EXPECT_EQ(Fingerprint64("foobar"), 0x85944171f73967e8ULL);
}

TargetDescriptor SampleDescriptor() {
  TargetDescriptor d;
  d.backend = BackendKind::kUcx;
  d.agent_id = 0xfeedfacecafebeefULL;
  d.pool_id = 3;
  d.address = "10.1.2.3:40000";
  d.rkey = std::string("\x00\x01rkey\xff", 7);
  d.base_address = 0x7f0000001000ULL;
  d.layout = RealModel(512);
  d.pool_bytes = d.layout.pool_bytes();
  return d;
}

TEST(TargetDescriptorTest, RoundTripsThroughBytes) {
  const TargetDescriptor d = SampleDescriptor();
  auto parsed = TargetDescriptor::Parse(d.Serialize());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, d);
}

TEST(TargetDescriptorTest, EveryTruncationIsRejected) {
  const std::string bytes = SampleDescriptor().Serialize();
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    auto parsed = TargetDescriptor::Parse(std::string_view(bytes).substr(0, n));
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << "length " << n;
  }
  EXPECT_THAT(std::string(TargetDescriptor::Parse(bytes + "x").status().message()),
              HasSubstr("trailing"));
}

TEST(TargetDescriptorTest, CorruptFieldsAreRejected) {
  std::string bytes = SampleDescriptor().Serialize();
  std::string bad_magic = bytes;
  bad_magic[0] = 'X';
  EXPECT_THAT(std::string(TargetDescriptor::Parse(bad_magic).status().message()),
              HasSubstr("magic"));
  std::string bad_format = bytes;
  bad_format[4] = 7;
  EXPECT_THAT(std::string(TargetDescriptor::Parse(bad_format).status().message()),
              HasSubstr("format 7"));
  std::string bad_backend = bytes;
  bad_backend[8] = 9;
  EXPECT_THAT(std::string(TargetDescriptor::Parse(bad_backend).status().message()),
              HasSubstr("unknown backend 9"));
  TargetDescriptor small = SampleDescriptor();
  small.pool_bytes -= 1;
  EXPECT_THAT(std::string(TargetDescriptor::Parse(small.Serialize()).status().message()),
              HasSubstr("pool_bytes"));
  TargetDescriptor zero = SampleDescriptor();
  zero.layout.num_layers = 0;
  EXPECT_THAT(std::string(TargetDescriptor::Parse(zero.Serialize()).status().message()),
              HasSubstr("num_layers"));
}

}  // namespace
}  // namespace sirocco::transfer
