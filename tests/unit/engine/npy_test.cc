#include "engine/npy.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace sirocco::engine {
namespace {

namespace fs = std::filesystem;

// Header bytes np.save wrote (numpy 2.4.6) for float32 zeros of a shape:
// the dict, then spaces up to the 64-byte boundary, then '\n'.
std::string NumpyHeader(const std::string& dict, std::size_t total) {
  std::string header = std::string("\x93NUMPY\x01\x00", 8);
  const std::size_t len = total - 10;
  header.push_back(static_cast<char>(len & 0xFF));
  header.push_back(static_cast<char>(len >> 8));
  header += dict;
  header.append(total - 1 - header.size(), ' ');
  return header + "\n";
}

// A .npy file assembled by hand, for the reader tests.
std::string NpyBytes(int major, const std::string& dict, const std::string& data) {
  std::string out = std::string("\x93NUMPY", 6);
  out.push_back(static_cast<char>(major));
  out.push_back('\0');
  const std::size_t len = dict.size() + 1;
  const int len_bytes = major == 1 ? 2 : 4;
  for (int i = 0; i < len_bytes; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xFF));
  return out + dict + "\n" + data;
}

std::string LittleEndian(const void* data, std::size_t size) {
  return std::string(static_cast<const char*>(data), size);
}

class NpyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "npy_test.XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::string Read(const std::string& path) const {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream contents;
    contents << in.rdbuf();
    return contents.str();
  }

  std::string Write(const std::string& name, const std::string& contents) const {
    const std::string path = Path(name);
    std::ofstream(path, std::ios::binary) << contents;
    return path;
  }

  // ReadNpy must fail with a message naming the file and containing `what`.
  void ExpectRejected(const std::string& contents, const std::string& what) {
    const std::string path = Write("bad.npy", contents);
    absl::StatusOr<NpyArray> array = ReadNpy(path);
    ASSERT_FALSE(array.ok()) << "accepted; expected an error about " << what;
    const std::string message(array.status().message());
    EXPECT_NE(message.find(path), std::string::npos) << message;
    EXPECT_NE(message.find(what), std::string::npos) << message;
  }

  std::string dir_;
};

TEST_F(NpyTest, HeaderMatchesNumpyByteForByte) {
  const float data[6] = {0.0f, 1.0f, -2.5f, 3.25f, 1e-3f, 65504.0f};
  const int64_t shape[] = {2, 3};
  const std::string path = Path("a.npy");
  ASSERT_TRUE(WriteNpy(path, shape, data).ok());
  const std::string file = Read(path);
  const std::string expected_header = std::string("\x93NUMPY\x01\x00v\x00", 10) +
                                      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" +
                                      std::string(58, ' ') + "\n";
  ASSERT_EQ(expected_header.size(), 128u);
  ASSERT_EQ(file.size(), 128u + sizeof(data));
  EXPECT_EQ(file.substr(0, 128), expected_header);
  EXPECT_EQ(file.substr(128), LittleEndian(data, sizeof(data)));
  EXPECT_EQ(fs::directory_iterator(dir_)->path().filename().string(), "a.npy");  // no temp left
}

TEST_F(NpyTest, HeadersMatchNumpyForOtherRanks) {
  struct Case {
    std::vector<int64_t> shape;
    std::string dict;
    std::size_t total;  // header bytes numpy wrote
  };
  const Case cases[] = {
      {{}, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", 128},
      {{5}, "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", 128},
      {{12345678901, 0}, "{'descr': '<f4', 'fortran_order': False, 'shape': (12345678901, 0), }", 128},
      // numpy reserves room for the first dimension to grow to 21 digits,
      // which pushes this 15-d header into a second 64-byte block.
      {std::vector<int64_t>(15, 1),
       "{'descr': '<f4', 'fortran_order': False, 'shape': "
       "(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1), }",
       192},
  };
  const std::vector<float> ones(5, 1.0f);  // enough for every shape above
  for (const Case& c : cases) {
    const std::string path = Path("r.npy");
    ASSERT_TRUE(WriteNpy(path, c.shape, ones.data()).ok());
    const std::string file = Read(path);
    EXPECT_EQ(file.substr(0, c.total), NumpyHeader(c.dict, c.total)) << c.dict;
  }
}

TEST_F(NpyTest, RoundTripsFloat32) {
  const std::vector<int64_t> shape = {3, 4, 5};
  std::vector<float> data(60);
  for (std::size_t i = 0; i < data.size(); ++i) {
    data[i] = std::ldexp(static_cast<float>(i) - 30.5f, static_cast<int>(i % 7) - 3);
  }
  data[7] = std::nanf("");
  data[8] = -INFINITY;
  const std::string path = Path("rt.npy");
  ASSERT_TRUE(WriteNpy(path, shape, data.data()).ok());
  absl::StatusOr<NpyArray> array = ReadNpy(path);
  ASSERT_TRUE(array.ok()) << array.status();
  EXPECT_EQ(array->dtype, DType::kF32);
  EXPECT_EQ(array->shape, shape);
  EXPECT_EQ(array->numel(), 60);
  ASSERT_EQ(array->data.size(), data.size() * sizeof(float));
  EXPECT_EQ(std::memcmp(array->data.data(), data.data(), array->data.size()), 0);
}

TEST_F(NpyTest, RoundTripsScalarAndEmpty) {
  const float pi = 3.14159f;
  ASSERT_TRUE(WriteNpy(Path("s.npy"), {}, &pi).ok());
  absl::StatusOr<NpyArray> scalar = ReadNpy(Path("s.npy"));
  ASSERT_TRUE(scalar.ok()) << scalar.status();
  EXPECT_TRUE(scalar->shape.empty());
  ASSERT_EQ(scalar->data.size(), 4u);
  float back = 0;
  std::memcpy(&back, scalar->data.data(), 4);
  EXPECT_EQ(back, pi);

  const int64_t empty_shape[] = {0, 3};
  ASSERT_TRUE(WriteNpy(Path("e.npy"), empty_shape, nullptr).ok());
  absl::StatusOr<NpyArray> empty = ReadNpy(Path("e.npy"));
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->shape, (std::vector<int64_t>{0, 3}));
  EXPECT_TRUE(empty->data.empty());
}

TEST_F(NpyTest, ReadsOtherDtypesAndVersion2) {
  const double f8[2] = {1.5, -0.25};
  const int32_t i4[3] = {1, -2, 2147483647};
  const int64_t i8[1] = {-9000000000};
  struct Case {
    int major;
    std::string dict;
    std::string data;
    DType dtype;
    std::vector<int64_t> shape;
  };
  const Case cases[] = {
      {1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", LittleEndian(f8, 16), DType::kF64, {2}},
      {1, "{'descr': '<i4', 'fortran_order': False, 'shape': (1, 3), }", LittleEndian(i4, 12), DType::kI32, {1, 3}},
      // Keys in another order, double quotes, no trailing comma: still a
      // Python dict literal.
      {2, "{\"shape\": (1,), \"fortran_order\": False, \"descr\": \"<i8\"}", LittleEndian(i8, 8), DType::kI64, {1}},
  };
  for (const Case& c : cases) {
    const std::string path = Write("in.npy", NpyBytes(c.major, c.dict, c.data));
    absl::StatusOr<NpyArray> array = ReadNpy(path);
    ASSERT_TRUE(array.ok()) << array.status();
    EXPECT_EQ(array->dtype, c.dtype) << c.dict;
    EXPECT_EQ(array->shape, c.shape) << c.dict;
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(array->data.data()), array->data.size()), c.data) << c.dict;
  }
}

TEST_F(NpyTest, RejectsWhatItDoesNotSupport) {
  const std::string four(4, '\0');
  const std::string eight(8, '\0');
  auto dict = [](const std::string& descr, const std::string& order, const std::string& shape) {
    return "{'descr': '" + descr + "', 'fortran_order': " + order + ", 'shape': " + shape + ", }";
  };
  ExpectRejected(NpyBytes(1, dict("<f4", "True", "(2,)"), eight), "'fortran_order' is True");
  ExpectRejected(NpyBytes(1, dict(">f4", "False", "(2,)"), eight), "big-endian");
  ExpectRejected(NpyBytes(1, dict("<f2", "False", "(2,)"), four), "'descr' is '<f2'");
  ExpectRejected(NpyBytes(1, dict("|u1", "False", "(4,)"), four), "'descr' is '|u1'");
  ExpectRejected(NpyBytes(3, dict("<f4", "False", "(1,)"), four), "version 3.0");
  ExpectRejected(std::string("\x93NUMPX\x01\x00\x04\x00{}  ", 14), "bad magic");
  ExpectRejected("\x93NU", "bad magic");
  ExpectRejected(NpyBytes(1, dict("<f4", "False", "(3,)"), eight), "disagrees with the 8 data");
  ExpectRejected(NpyBytes(1, dict("<f4", "False", "(1,)"), eight), "disagrees with the 8 data");
  ExpectRejected(NpyBytes(1, "{'descr': '<f4', 'fortran_order': False, }", four), "lacks field 'shape'");
  ExpectRejected(NpyBytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", four),
                 "unexpected header field 'x'");
  ExpectRejected(NpyBytes(1, dict("<f4", "False", "(1, -2)"), four), "'shape' is not a tuple");
  ExpectRejected(NpyBytes(1, dict("<f4", "Maybe", "(1,)"), four), "'fortran_order'");
  ExpectRejected(NpyBytes(1, "{'descr': '<f4'", ""), "malformed header");
  ExpectRejected(std::string("\x93NUMPY\x01\x00\xFF\x00{}", 12), "runs past the end");

  const std::string missing = Path("missing.npy");
  absl::StatusOr<NpyArray> array = ReadNpy(missing);
  ASSERT_FALSE(array.ok());
  EXPECT_EQ(array.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(NpyTest, WriteRejectsBadArguments) {
  const float x[2] = {0.0f, 1.0f};
  const int64_t negative[] = {2, -1};
  absl::Status status = WriteNpy(Path("n.npy"), negative, x);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(std::string(status.message()).find("(2, -1)"), std::string::npos) << status;
  const int64_t two[] = {2};
  status = WriteNpy(Path("n.npy"), two, nullptr);
  EXPECT_FALSE(status.ok());
  EXPECT_FALSE(fs::exists(Path("n.npy")));
  status = WriteNpy(Path("no/such/dir/x.npy"), two, x);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(std::string(status.message()).find("no/such/dir/x.npy"), std::string::npos) << status;
}

}  // namespace
}  // namespace sirocco::engine
