// sirocco::image against Pillow + mistral-common + OpenCV: every golden in
// tests/reference/golden_images (written by tests/reference/image_reference.py)
// decodes to exactly the RGB Pillow gave, preprocesses to mistral-common's
// transform_image output, and every broken input is InvalidArgument.
#include "engine/image/image.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/npy.h"
#include "engine/text/instruct_image.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sirocco::image {
namespace {

const std::string kDir = SIROCCO_IMAGE_GOLDEN_DIR;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) ADD_FAILURE() << "cannot read " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const nlohmann::json& Manifest() {
  static const nlohmann::json* manifest = new nlohmann::json(nlohmann::json::parse(ReadFile(kDir + "/manifest.json")));
  return *manifest;
}

std::vector<nlohmann::json> Cases(bool errors) {
  std::vector<nlohmann::json> out;
  for (const nlohmann::json& c : Manifest()["cases"]) {
    if (c.value("error", false) == errors) out.push_back(c);
  }
  return out;
}

// engine/npy reads float and int arrays only; the decoded goldens are
// '|u1' [H, W, 3], version 1.0, C order, which this reads.
struct U8Array {
  std::vector<std::int64_t> shape;
  std::string data;
};

U8Array ReadU8Npy(const std::string& path) {
  const std::string bytes = ReadFile(path);
  U8Array out;
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0 || bytes[6] != 1) {
    ADD_FAILURE() << path << ": not a version 1.0 .npy file";
    return out;
  }
  const std::size_t header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
  const std::string header = bytes.substr(10, header_len);
  if (header.find("'descr': '|u1'") == std::string::npos ||
      header.find("'fortran_order': False") == std::string::npos) {
    ADD_FAILURE() << path << ": expected a C-order uint8 array, header " << header;
    return out;
  }
  std::size_t at = header.find("'shape': (") + 10;
  while (header[at] != ')') {
    std::size_t end = 0;
    out.shape.push_back(std::stoll(header.substr(at), &end));
    at += end;
    while (header[at] == ',' || header[at] == ' ') ++at;
  }
  out.data = bytes.substr(10 + header_len);
  return out;
}

absl::StatusOr<RgbImage> DecodeFile(const std::string& file, const DecodeLimits& limits = {}) {
  return DecodeImage(ReadFile(kDir + "/" + file), limits);
}

std::vector<float> ReadF32(const std::string& file, int width, int height) {
  absl::StatusOr<engine::NpyArray> npy = engine::ReadNpy(kDir + "/" + file);
  EXPECT_TRUE(npy.ok()) << npy.status();
  if (!npy.ok()) return {};
  EXPECT_EQ(npy->dtype, engine::DType::kF32);
  EXPECT_EQ(npy->shape, (std::vector<std::int64_t>{3, height, width}));
  std::vector<float> out(npy->data.size() / sizeof(float));
  std::memcpy(out.data(), npy->data.data(), out.size() * sizeof(float));
  return out;
}

TEST(ImageGoldenTest, ManifestHasEveryKind) {
  EXPECT_GE(Cases(false).size(), 20u);
  EXPECT_GE(Cases(true).size(), 8u);
}

TEST(ImageGoldenTest, DecodesToPillowsPixelsExactly) {
  for (const nlohmann::json& c : Cases(false)) {
    SCOPED_TRACE(c["name"].get<std::string>());
    absl::StatusOr<RgbImage> img = DecodeFile(c["file"]);
    ASSERT_TRUE(img.ok()) << img.status();
    const U8Array want = ReadU8Npy(kDir + "/" + c["rgb"].get<std::string>());
    ASSERT_EQ(want.shape, (std::vector<std::int64_t>{img->height, img->width, 3}));
    EXPECT_EQ(img->width, c["width"].get<int>());
    EXPECT_EQ(img->height, c["height"].get<int>());
    ASSERT_EQ(img->pixels.size(), want.data.size());
    std::size_t mismatches = 0;
    for (std::size_t i = 0; i < want.data.size(); ++i) {
      mismatches += img->pixels[i] != static_cast<std::uint8_t>(want.data[i]);
    }
    EXPECT_EQ(mismatches, 0u) << "bytes differing from Pillow";
  }
}

TEST(ImageGoldenTest, PreprocessMatchesTransformImage) {
  for (const nlohmann::json& c : Cases(false)) {
    absl::StatusOr<RgbImage> img = DecodeFile(c["file"]);
    ASSERT_TRUE(img.ok()) << c["name"] << ": " << img.status();
    for (const nlohmann::json& t : c["targets"]) {
      const std::string file = t["file"];
      SCOPED_TRACE(file);
      const int w = t["width"];
      const int h = t["height"];
      const std::vector<float> ref = ReadF32(file, w, h);
      const std::vector<float> got = PreprocessImage(*img, w, h);
      ASSERT_EQ(got.size(), ref.size());
      double max_diff = 0;
      for (std::size_t i = 0; i < got.size(); ++i) max_diff = std::max(max_diff, std::fabs(double{got[i]} - ref[i]));
      // IPP's resize (what mistral-common runs) rounds differently from
      // OpenCV's own, which Sirocco follows: a few ulps.
      EXPECT_LE(max_diff, 1e-5);
      RecordProperty("max_abs_diff." + file, absl::StrCat(max_diff));
    }
  }
}

TEST(ImageGoldenTest, PreprocessIsOpenCvsOwnResizeBitForBit) {
  int checked = 0;
  for (const nlohmann::json& c : Cases(false)) {
    for (const nlohmann::json& t : c["targets"]) {
      if (!t.contains("generic_file")) continue;
      const std::string file = t["generic_file"];
      SCOPED_TRACE(file);
      absl::StatusOr<RgbImage> img = DecodeFile(c["file"]);
      ASSERT_TRUE(img.ok()) << img.status();
      const std::vector<float> want = ReadF32(file, t["width"], t["height"]);
      const std::vector<float> got = PreprocessImage(*img, t["width"], t["height"]);
      ASSERT_EQ(got.size(), want.size());
      EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
      ++checked;
    }
  }
  EXPECT_GE(checked, 3);
}

TEST(ImageGoldenTest, SizeAgreesWithTheHeaderReader) {
  for (const nlohmann::json& c : Cases(false)) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const std::string bytes = ReadFile(kDir + "/" + c["file"].get<std::string>());
    absl::StatusOr<text::ImageSize> size = text::ReadImageSize(bytes);
    ASSERT_TRUE(size.ok()) << size.status();
    absl::StatusOr<RgbImage> img = DecodeImage(bytes, {});
    ASSERT_TRUE(img.ok()) << img.status();
    EXPECT_EQ(img->width, size->width);
    EXPECT_EQ(img->height, size->height);
  }
}

TEST(ImageGoldenTest, BrokenInputsAreInvalidArgument) {
  for (const nlohmann::json& c : Cases(true)) {
    SCOPED_TRACE(c["name"].get<std::string>() + ": " + c["why"].get<std::string>());
    absl::StatusOr<RgbImage> img = DecodeFile(c["file"]);
    ASSERT_FALSE(img.ok());
    EXPECT_EQ(img.status().code(), absl::StatusCode::kInvalidArgument) << img.status();
    EXPECT_FALSE(img.status().message().empty());
  }
}

TEST(ImageDecodeTest, DamagedGoldensFailCleanly) {
  // Every golden cut short at many lengths and with bytes flipped: the
  // decoders either succeed or say InvalidArgument (run under ASan, this also
  // checks the longjmp error paths for leaks and stray accesses).
  for (const nlohmann::json& c : Cases(false)) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const std::string bytes = ReadFile(kDir + "/" + c["file"].get<std::string>());
    const std::size_t step = std::max<std::size_t>(1, bytes.size() / 40);
    for (std::size_t cut = 0; cut < bytes.size(); cut += step) {
      absl::StatusOr<RgbImage> img = DecodeImage(std::string_view(bytes).substr(0, cut), {});
      if (!img.ok()) {
        EXPECT_EQ(img.status().code(), absl::StatusCode::kInvalidArgument) << cut << img.status();
      }
    }
    for (std::size_t at = 0; at < bytes.size(); at += step) {
      std::string damaged = bytes;
      damaged[at] = static_cast<char>(damaged[at] ^ 0x5A);
      absl::StatusOr<RgbImage> img = DecodeImage(damaged, {});
      if (!img.ok()) {
        EXPECT_EQ(img.status().code(), absl::StatusCode::kInvalidArgument) << at << img.status();
      }
    }
  }
}

TEST(ImageDecodeTest, MessagesSayWhatIsWrong) {
  EXPECT_EQ(DecodeFile("err_unknown.bin").status().message(), "image is not a PNG, JPEG or WebP file");
  EXPECT_EQ(DecodeFile("err_png_truncated.png").status().message(), "PNG data is truncated");
  EXPECT_EQ(DecodeFile("err_jpeg_truncated.jpg").status().message(), "JPEG data is truncated");
  EXPECT_EQ(DecodeFile("err_png_zero_width.png").status().message().substr(0, 3), "PNG");
}

std::string Be32(std::uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

TEST(ImageDecodeTest, OverTheLimitIsRejectedFromTheHeader) {
  // A PNG that claims 100000 x 100000 pixels and holds nothing more: the size
  // alone must decide (decoding would report truncation instead).
  const std::string ihdr = "IHDR" + Be32(100000) + Be32(100000) + std::string("\x08\x02\x00\x00\x00", 5);
  std::string png = std::string("\x89PNG\r\n\x1a\n", 8) + Be32(13) + ihdr;
  // CRC-32 of type + data, bit by bit (libpng checks it before anything else).
  std::uint32_t crc = 0xFFFFFFFF;
  for (const char ch : ihdr) {
    crc ^= static_cast<unsigned char>(ch);
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320 & (0u - (crc & 1)));
  }
  png += Be32(~crc);
  absl::StatusOr<RgbImage> big = DecodeImage(png, {});
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(big.status().message().find("100000x100000 pixels, more than"), std::string::npos) << big.status();

  // Every format checks before decoding: a small limit rejects each golden kind.
  for (const char* file : {"png_rgb.png", "jpeg_baseline.jpg", "webp_lossy.webp", "webp_animated.webp"}) {
    SCOPED_TRACE(file);
    absl::StatusOr<RgbImage> img = DecodeFile(file, DecodeLimits{.max_pixels = 100});
    ASSERT_FALSE(img.ok());
    EXPECT_EQ(img.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(img.status().message().find("more than the 100"), std::string::npos) << img.status();
  }
}

TEST(ImagePreprocessTest, SameSizeIsNormalisationOnly) {
  // OpenCV copies when the size does not change; the cubic weights are then
  // exactly (0, 1, 0, 0), so only the normalisation remains.
  absl::StatusOr<RgbImage> img = DecodeFile("png_rgb.png");
  ASSERT_TRUE(img.ok()) << img.status();
  const std::vector<float> out = PreprocessImage(*img, img->width, img->height);
  const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
  const float stddev[3] = {0.26862954f, 0.26130258f, 0.27577711f};
  const std::size_t plane = static_cast<std::size_t>(img->width) * img->height;
  for (std::size_t i = 0; i < plane; ++i) {
    for (int c = 0; c < 3; ++c) {
      ASSERT_EQ(out[c * plane + i], (img->pixels[3 * i + c] / 255.0f - mean[c]) / stddev[c]) << i;
    }
  }
}

}  // namespace
}  // namespace sirocco::image
