#include "engine/safetensors.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sirocco::engine {
namespace {

namespace fs = std::filesystem;

std::vector<std::byte> Bytes(std::initializer_list<uint8_t> values) {
  std::vector<std::byte> out;
  for (uint8_t v : values) out.push_back(static_cast<std::byte>(v));
  return out;
}

std::vector<std::byte> Iota(std::size_t n, uint8_t start) {
  std::vector<std::byte> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>(start + i);
  return out;
}

std::vector<std::byte> Contents(const TensorInfo& t) { return std::vector<std::byte>(t.data, t.data + t.nbytes); }

// A safetensors file spelled out by hand: 8-byte little-endian length,
// header text, data.
std::string SafetensorsBytes(const std::string& header, const std::string& data) {
  std::string out;
  const uint64_t len = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xFF));
  return out + header + data;
}

bool Contains(const absl::Status& status, const std::string& text) {
  return std::string(status.message()).find(text) != std::string::npos;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "safetensors_test.XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::string Write(const std::string& name, const std::string& contents) const {
    const std::string path = Path(name);
    std::ofstream out(path, std::ios::binary);
    out << contents;
    return path;
  }

  std::set<std::string> Listing(const std::string& dir) const {
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir)) {
      names.insert(entry.path().filename().string());
    }
    return names;
  }

  // Opening `contents` must fail with a message naming the file and `what`.
  void ExpectRejected(const std::string& contents, const std::string& what) {
    const std::string path = Write("bad.safetensors", contents);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << "accepted; expected an error about " << what;
    EXPECT_TRUE(Contains(file.status(), path)) << file.status();
    EXPECT_TRUE(Contains(file.status(), what)) << file.status();
  }

  std::string dir_;
};

TEST_F(SafetensorsTest, ParsesHandBuiltFile) {
  // "b" sorts after "a" but its data comes first, to check that tensors()
  // follows the data, not the key order.
  const std::string header = R"({"__metadata__":{"format":"pt","note":"hi"},)"
                             R"("a":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("c":{"dtype":"I64","shape":[],"data_offsets":[12,20]},)"
                             R"("empty":{"dtype":"F8_E4M3","shape":[3,0],"data_offsets":[20,20]}})";
  const std::string data = std::string("\x00\x00\x80\x3F\x00\x00\x00\x40", 8) +  // f32 1.0, 2.0
                           std::string("\x80\x3F\x00\xC0", 4) +                  // bf16 1.0, -2.0
                           std::string("\x2A\x00\x00\x00\x00\x00\x00\x00", 8);   // i64 42
  const std::string path = Write("hand.safetensors", SafetensorsBytes(header, data));

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const auto& tensors = (*file)->tensors();
  ASSERT_EQ(tensors.size(), 4u);
  EXPECT_EQ(tensors[0].name, "b");
  EXPECT_EQ(tensors[1].name, "a");
  EXPECT_EQ(tensors[2].name, "c");

  const TensorInfo* a = (*file)->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::kBF16);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(a->numel(), 2);
  EXPECT_EQ(a->nbytes, 4u);
  float values[2];
  ASSERT_TRUE(ConvertToFloat32(a->dtype, a->data, 2, values).ok());
  EXPECT_EQ(values[0], 1.0f);
  EXPECT_EQ(values[1], -2.0f);

  const TensorInfo* b = (*file)->Find("b");
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(ConvertToFloat32(b->dtype, b->data, 2, values).ok());
  EXPECT_EQ(values[0], 1.0f);
  EXPECT_EQ(values[1], 2.0f);

  const TensorInfo* c = (*file)->Find("c");
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(c->shape.empty());
  EXPECT_EQ(c->numel(), 1);  // a scalar
  int64_t scalar = 0;
  std::memcpy(&scalar, c->data, sizeof(scalar));
  EXPECT_EQ(scalar, 42);

  const TensorInfo* empty = (*file)->Find("empty");
  ASSERT_NE(empty, nullptr);
  EXPECT_EQ(empty->numel(), 0);
  EXPECT_EQ(empty->nbytes, 0u);

  EXPECT_EQ((*file)->Find("missing"), nullptr);
  EXPECT_EQ((*file)->metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "hi"}}));
  EXPECT_EQ((*file)->path(), path);
}

TEST_F(SafetensorsTest, AcceptsPaddedHeaderWithoutMetadata) {
  // Writers pad the header with spaces; an empty tensor set is legal.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(Write("empty.safetensors", SafetensorsBytes("{}      ", "")));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
  EXPECT_TRUE((*file)->metadata().empty());
}

TEST_F(SafetensorsTest, RejectsCorruptFiles) {
  const std::string good_entry = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::string eight(8, '\0');
  ExpectRejected("", "shorter than the 8-byte header length");
  ExpectRejected("\x05\x00\x00", "shorter than the 8-byte header length");
  // Length field claims more header than the file holds.
  ExpectRejected(SafetensorsBytes("{" + good_entry + "}", eight).substr(0, 20), "runs past the end of the file");
  ExpectRejected(std::string("\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF{}", 10), "runs past the end of the file");
  // Data truncated: the offsets now point past the end.
  ExpectRejected(SafetensorsBytes("{" + good_entry + "}", eight.substr(0, 7)),
                 "tensor \"t\": data_offsets [0, 8] run past the data buffer (7 bytes)");
  ExpectRejected(SafetensorsBytes(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", eight),
                 "tensor \"t\": data_offsets [8, 0] has begin > end");
  ExpectRejected(SafetensorsBytes(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight),
                 "tensor \"t\": data_offsets span 8 bytes but shape and dtype F32 need 12");
  ExpectRejected(SafetensorsBytes(R"({"t":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})", eight),
                 "tensor \"t\": unknown dtype \"F17\"");
  ExpectRejected(SafetensorsBytes(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", eight),
                 "header is not a valid JSON object");
  ExpectRejected(SafetensorsBytes("[1, 2]", eight), "header is not a valid JSON object");
  ExpectRejected(SafetensorsBytes(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight),
                 "tensor \"t\": field \"shape\"");
  ExpectRejected(SafetensorsBytes(R"({"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", eight),
                 "tensor \"t\": field \"shape\"");
  ExpectRejected(SafetensorsBytes(R"({"t":{"dtype":"F32","shape":[2]}})", eight),
                 "tensor \"t\": field \"data_offsets\"");
  ExpectRejected(SafetensorsBytes(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", eight),
                 "tensor \"t\": missing string field \"dtype\"");
  ExpectRejected(SafetensorsBytes(R"({"t":[0,8]})", eight), "tensor \"t\": entry is not an object");
  ExpectRejected(
      SafetensorsBytes(R"({"t":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}})", eight),
      "tensor \"t\": shape overflows");
  ExpectRejected(SafetensorsBytes(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                  R"("u":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                  eight),
                 "tensor \"u\": data overlaps tensor \"t\"");
  // An empty tensor between two overlapping ones must not hide the overlap.
  ExpectRejected(SafetensorsBytes(R"({"t":{"dtype":"U8","shape":[6],"data_offsets":[0,6]},)"
                                  R"("e":{"dtype":"U8","shape":[0],"data_offsets":[2,2]},)"
                                  R"("u":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
                                  eight),
                 "tensor \"u\": data overlaps tensor \"t\"");
  ExpectRejected(SafetensorsBytes("{" + good_entry + "," + good_entry + "}", eight),
                 "tensor \"t\": appears twice in the header");
  ExpectRejected(SafetensorsBytes(R"({"__metadata__":{"format":1}})", ""),
                 "__metadata__ field \"format\" is not a string");
  ExpectRejected(SafetensorsBytes(R"({"__metadata__":"pt"})", ""), "tensor \"__metadata__\": must be an object");
}

TEST_F(SafetensorsTest, OpenReportsMissingFileAndDirectory) {
  const std::string missing = Path("nope.safetensors");
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(missing);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(file.status(), missing)) << file.status();
  file = SafetensorsFile::Open(dir_);
  ASSERT_FALSE(file.ok());
  EXPECT_TRUE(Contains(file.status(), "not a regular file")) << file.status();
}

TEST_F(SafetensorsTest, WriterOutputHasTheDocumentedLayout) {
  SafetensorsWriter writer;
  writer.Add("z.weight", DType::kBF16, {2, 3}, Iota(12, 1));
  writer.Add("a.bias", DType::kF32, {3}, Iota(12, 100));
  writer.Add("scale", DType::kF8E4M3, {}, Bytes({0x38}));
  const std::string path = Path("out.safetensors");
  ASSERT_TRUE(writer.WriteFile(path, {{"format", "pt"}}).ok());

  std::ifstream in(path, std::ios::binary);
  std::ostringstream contents;
  contents << in.rdbuf();
  const std::string file = contents.str();
  ASSERT_GE(file.size(), 8u);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(file[i]);
  EXPECT_EQ(header_len % 8, 0u);
  ASSERT_EQ(file.size(), 8 + header_len + 25);
  const std::string header = file.substr(8, header_len);
  const std::size_t json_end = header.find_last_not_of(' ') + 1;
  EXPECT_EQ(header[json_end - 1], '}');
  EXPECT_LT(header_len - json_end, 8u);  // only the alignment padding
  const nlohmann::json json = nlohmann::json::parse(header);
  EXPECT_EQ(json["__metadata__"].dump(), R"({"format":"pt"})");
  // Tensors are laid out in the order added, back to back.
  EXPECT_EQ(json["z.weight"].dump(), R"({"data_offsets":[0,12],"dtype":"BF16","shape":[2,3]})");
  EXPECT_EQ(json["a.bias"].dump(), R"({"data_offsets":[12,24],"dtype":"F32","shape":[3]})");
  EXPECT_EQ(json["scale"].dump(), R"({"data_offsets":[24,25],"dtype":"F8_E4M3","shape":[]})");
  EXPECT_EQ(json.size(), 4u);
  const std::vector<std::byte> expected_data = [] {
    std::vector<std::byte> d = Iota(12, 1);
    const std::vector<std::byte> bias = Iota(12, 100);
    d.insert(d.end(), bias.begin(), bias.end());
    d.push_back(std::byte{0x38});
    return d;
  }();
  const auto* data = reinterpret_cast<const std::byte*>(file.data() + 8 + header_len);
  EXPECT_EQ(std::vector<std::byte>(data, data + 25), expected_data);
  EXPECT_EQ(Listing(dir_), std::set<std::string>{"out.safetensors"});  // no temp files
}

TEST_F(SafetensorsTest, WriterRoundTripsThroughReader) {
  SafetensorsWriter writer;
  const std::vector<std::byte> w = Iota(2 * 4 * 2, 7);
  writer.Add("layers.0.w", DType::kF16, {2, 4}, std::span<const std::byte>(w));
  writer.Add("layers.0.idx", DType::kI32, {2}, Bytes({1, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF}));
  writer.Add("nothing", DType::kF32, {0, 5}, std::vector<std::byte>{});
  const std::string path = Path("rt.safetensors");
  ASSERT_TRUE(writer.WriteFile(path).ok());

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 3u);
  EXPECT_EQ((*file)->tensors()[0].name, "layers.0.w");
  EXPECT_EQ((*file)->tensors()[1].name, "layers.0.idx");
  EXPECT_TRUE((*file)->metadata().empty());
  const TensorInfo* t = (*file)->Find("layers.0.w");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::kF16);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 4}));
  EXPECT_EQ(Contents(*t), w);
  const TensorInfo* idx = (*file)->Find("layers.0.idx");
  ASSERT_NE(idx, nullptr);
  int32_t second = 0;
  std::memcpy(&second, idx->data + 4, 4);
  EXPECT_EQ(second, -1);
  const TensorInfo* nothing = (*file)->Find("nothing");
  ASSERT_NE(nothing, nullptr);
  EXPECT_EQ(nothing->shape, (std::vector<int64_t>{0, 5}));
}

TEST_F(SafetensorsTest, WriterReportsBadTensorsAndWritesNothing) {
  const struct {
    const char* name;
    std::vector<int64_t> shape;
    std::size_t bytes;
    const char* error;
  } cases[] = {
      {"short", {2, 2}, 15, "tensor \"short\": got 15 bytes but shape and dtype F32 need 16"},
      {"neg", {-1}, 0, "tensor \"neg\": negative"},
      {"", {1}, 4, "empty name"},
      {"__metadata__", {1}, 4, "reserved"},
      {"dup", {1}, 4, "tensor \"dup\": added twice"},
  };
  for (const auto& c : cases) {
    SafetensorsWriter writer;
    writer.Add("dup", DType::kF32, {1}, Iota(4, 0));
    writer.Add(c.name, DType::kF32, c.shape, Iota(c.bytes, 0));
    writer.Add("later", DType::kF32, {1}, Iota(4, 0));
    const std::string path = Path("bad.safetensors");
    const absl::Status status = writer.WriteFile(path);
    ASSERT_FALSE(status.ok()) << c.name;
    EXPECT_TRUE(Contains(status, c.error)) << status;
    EXPECT_TRUE(Contains(status, path)) << status;
    EXPECT_FALSE(fs::exists(path));
    const absl::Status sharded = writer.WriteSharded(Path("sharded"), 1 << 20);
    EXPECT_TRUE(Contains(sharded, c.error)) << sharded;
  }
}

TEST_F(SafetensorsTest, ShardedWriteOpensAsCheckpoint) {
  SafetensorsWriter writer;
  // 100 + 100 | 100 + 100 | 300 (over the limit alone) | 50
  writer.Add("model.layers.0.a", DType::kU8, {100}, Iota(100, 0));
  writer.Add("model.layers.0.b", DType::kU8, {10, 10}, Iota(100, 1));
  writer.Add("model.layers.1.a", DType::kU8, {100}, Iota(100, 2));
  writer.Add("lm_head.weight", DType::kBF16, {50}, Iota(100, 3));
  writer.Add("model.embed", DType::kU8, {300}, Iota(300, 4));
  writer.Add("model.norm", DType::kF16, {25}, Iota(50, 5));
  EXPECT_EQ(writer.total_bytes(), 750u);
  const std::string dir = Path("ckpt");
  ASSERT_TRUE(writer.WriteSharded(dir, 250, {{"format", "pt"}}).ok());

  EXPECT_EQ(Listing(dir), (std::set<std::string>{
                              "model-00001-of-00004.safetensors",
                              "model-00002-of-00004.safetensors",
                              "model-00003-of-00004.safetensors",
                              "model-00004-of-00004.safetensors",
                              "model.safetensors.index.json",
                          }));
  std::ifstream index_in(fs::path(dir) / "model.safetensors.index.json");
  const nlohmann::json index = nlohmann::json::parse(index_in);
  EXPECT_EQ(index["metadata"].dump(), R"({"total_size":750})");
  EXPECT_EQ(index["weight_map"].dump(), nlohmann::json({
                                                           {"model.layers.0.a", "model-00001-of-00004.safetensors"},
                                                           {"model.layers.0.b", "model-00001-of-00004.safetensors"},
                                                           {"model.layers.1.a", "model-00002-of-00004.safetensors"},
                                                           {"lm_head.weight", "model-00002-of-00004.safetensors"},
                                                           {"model.embed", "model-00003-of-00004.safetensors"},
                                                           {"model.norm", "model-00004-of-00004.safetensors"},
                                                       })
                                            .dump());

  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->files().size(), 4u);
  EXPECT_EQ((*ckpt)->Names(), (std::vector<std::string>{"lm_head.weight", "model.embed", "model.layers.0.a",
                                                        "model.layers.0.b", "model.layers.1.a", "model.norm"}));
  const TensorInfo* embed = (*ckpt)->Find("model.embed");
  ASSERT_NE(embed, nullptr);
  EXPECT_EQ(Contents(*embed), Iota(300, 4));
  const TensorInfo* head = (*ckpt)->Find("lm_head.weight");
  ASSERT_NE(head, nullptr);
  EXPECT_EQ(head->dtype, DType::kBF16);
  EXPECT_EQ(Contents(*head), Iota(100, 3));
  EXPECT_TRUE((*ckpt)->Has("model.norm"));
  EXPECT_FALSE((*ckpt)->Has("model.nope"));
  ASSERT_NE((*ckpt)->FileOf("model.layers.1.a"), nullptr);
  EXPECT_EQ(fs::path((*ckpt)->FileOf("model.layers.1.a")->path()).filename().string(),
            "model-00002-of-00004.safetensors");
  EXPECT_EQ((*ckpt)->FileOf("model.layers.1.a")->metadata().at("format"), "pt");
}

TEST_F(SafetensorsTest, SingleShardWriteReplacesStaleIndex) {
  const std::string dir = Path("ckpt");
  SafetensorsWriter big;
  big.Add("old.a", DType::kU8, {8}, Iota(8, 0));
  big.Add("old.b", DType::kU8, {8}, Iota(8, 0));
  ASSERT_TRUE(big.WriteSharded(dir, 8).ok());
  ASSERT_TRUE(fs::exists(fs::path(dir) / "model.safetensors.index.json"));

  SafetensorsWriter small;
  small.Add("new", DType::kU8, {4}, Iota(4, 9));
  ASSERT_TRUE(small.WriteSharded(dir, 8).ok());
  EXPECT_FALSE(fs::exists(fs::path(dir) / "model.safetensors.index.json"));
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->Names(), std::vector<std::string>{"new"});
  EXPECT_EQ(Contents(*(*ckpt)->Find("new")), Iota(4, 9));
}

class CheckpointTest : public SafetensorsTest {
 protected:
  // Writes one file holding `names` (one byte each) into dir_/`file`.
  void WriteTensors(const std::string& file, const std::vector<std::string>& names) {
    SafetensorsWriter writer;
    for (const std::string& name : names) writer.Add(name, DType::kU8, {1}, Iota(1, 0));
    ASSERT_TRUE(writer.WriteFile(Path(file)).ok());
  }

  void WriteIndex(const nlohmann::json& weight_map) {
    Write("model.safetensors.index.json",
          nlohmann::json({{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}).dump());
  }

  // Checkpoint::Open(dir_) must fail mentioning every string in `parts`.
  void ExpectOpenFails(const std::vector<std::string>& parts) {
    absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir_);
    ASSERT_FALSE(ckpt.ok());
    for (const std::string& part : parts) {
      EXPECT_TRUE(Contains(ckpt.status(), part)) << part << " not in " << ckpt.status();
    }
  }
};

TEST_F(CheckpointTest, IndexIsAuthoritative) {
  WriteTensors("s1.safetensors", {"a", "b", "unlisted"});
  WriteTensors("s2.safetensors", {"c"});
  WriteTensors("stray.safetensors", {"stray"});
  WriteIndex({{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}});
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir_);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->Names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ((*ckpt)->files().size(), 2u);  // each shard opened once
}

TEST_F(CheckpointTest, IndexNamingMissingShardFails) {
  WriteTensors("s1.safetensors", {"a"});
  WriteIndex({{"a", "s1.safetensors"}, {"b", "gone.safetensors"}});
  ExpectOpenFails({"model.safetensors.index.json", "gone.safetensors", "\"b\""});
}

TEST_F(CheckpointTest, IndexNamingTensorAbsentFromShardFails) {
  WriteTensors("s1.safetensors", {"a"});
  WriteIndex({{"a", "s1.safetensors"}, {"ghost", "s1.safetensors"}});
  ExpectOpenFails({"model.safetensors.index.json", "tensor \"ghost\"", "s1.safetensors"});
}

TEST_F(CheckpointTest, MalformedIndexFails) {
  Write("model.safetensors.index.json", "{\"weight_map\": ");
  ExpectOpenFails({"model.safetensors.index.json", "not a valid JSON object"});
  Write("model.safetensors.index.json", R"({"metadata": {}})");
  ExpectOpenFails({"model.safetensors.index.json", "weight_map"});
  WriteIndex({{"a", 3}});
  ExpectOpenFails({"tensor \"a\"", "not a string"});
  WriteIndex({{"a", "../elsewhere.safetensors"}});
  ExpectOpenFails({"tensor \"a\"", "../elsewhere.safetensors"});
}

TEST_F(CheckpointTest, CorruptShardNamesIndexShardAndCause) {
  WriteTensors("s1.safetensors", {"a"});
  Write("s2.safetensors", "\x01\x02");
  WriteIndex({{"a", "s1.safetensors"}, {"b", "s2.safetensors"}});
  ExpectOpenFails({"model.safetensors.index.json", "s2.safetensors", "\"b\"", "shorter"});
}

TEST_F(CheckpointTest, PrefersModelThenConsolidatedFile) {
  WriteTensors("consolidated.safetensors", {"layers.0.attention.wq.weight"});
  WriteTensors("extra.safetensors", {"extra"});
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir_);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->Names(), std::vector<std::string>{"layers.0.attention.wq.weight"});

  WriteTensors("model.safetensors", {"model.layers.0.self_attn.q_proj.weight"});
  ckpt = Checkpoint::Open(dir_);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->Names(), std::vector<std::string>{"model.layers.0.self_attn.q_proj.weight"});
}

TEST_F(CheckpointTest, MergesAllFilesWithoutIndex) {
  WriteTensors("b.safetensors", {"y", "x"});
  WriteTensors("a.safetensors", {"z"});
  Write("notes.txt", "not a checkpoint");
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir_);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->Names(), (std::vector<std::string>{"x", "y", "z"}));
  ASSERT_EQ((*ckpt)->files().size(), 2u);
  EXPECT_EQ(fs::path((*ckpt)->files()[0]->path()).filename().string(), "a.safetensors");
  EXPECT_EQ(fs::path((*ckpt)->FileOf("x")->path()).filename().string(), "b.safetensors");
}

TEST_F(CheckpointTest, DuplicateTensorAcrossFilesFails) {
  WriteTensors("a.safetensors", {"w", "dup"});
  WriteTensors("b.safetensors", {"dup"});
  ExpectOpenFails({"tensor \"dup\"", "a.safetensors", "b.safetensors"});
}

TEST_F(CheckpointTest, EmptyOrMissingDirectoryFails) {
  ExpectOpenFails({dir_, "no *.safetensors files"});
  absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(Path("absent"));
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(ckpt.status(), Path("absent"))) << ckpt.status();
}

}  // namespace
}  // namespace sirocco::engine
