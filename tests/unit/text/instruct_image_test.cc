// Image sizes and [IMG] grids against independent facts: file headers built
// by hand from the format specifications, Python's base64 and round()
// semantics, and grid sizes worked out from mistral-common's formula.
#include "engine/text/instruct_image.h"

#include <string>

#include "gtest/gtest.h"

namespace sirocco::text {
namespace {

std::string Be32(std::uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

TEST(ReadImageSizeTest, Png) {
  const std::string png = std::string("\x89PNG\r\n\x1a\n", 8) + Be32(13) + "IHDR" + Be32(640) + Be32(480) + "....";
  absl::StatusOr<ImageSize> size = ReadImageSize(png);
  ASSERT_TRUE(size.ok()) << size.status();
  EXPECT_EQ(size->width, 640);
  EXPECT_EQ(size->height, 480);
}

TEST(ReadImageSizeTest, JpegSkipsSegmentsBeforeTheFrameHeader) {
  // SOI, APP0 (length 16), SOF0: length 17, precision 8, height 0x01F4, width 0x0320.
  std::string jpeg = "\xFF\xD8";
  jpeg += std::string("\xFF\xE0\x00\x10", 4) + std::string(14, 'J');
  jpeg += std::string("\xFF\xC0\x00\x11\x08\x01\xF4\x03\x20", 9) + std::string(10, '\0');
  absl::StatusOr<ImageSize> size = ReadImageSize(jpeg);
  ASSERT_TRUE(size.ok()) << size.status();
  EXPECT_EQ(size->width, 800);
  EXPECT_EQ(size->height, 500);
}

TEST(ReadImageSizeTest, GifAndUnknown) {
  absl::StatusOr<ImageSize> gif = ReadImageSize(std::string("GIF89a\x03\x00\x05\x00", 10));
  ASSERT_TRUE(gif.ok());
  EXPECT_EQ(gif->width, 3);
  EXPECT_EQ(gif->height, 5);
  EXPECT_FALSE(ReadImageSize("not an image").ok());
  EXPECT_FALSE(ReadImageSize("").ok());
}

TEST(PyBase64DecodeTest, FollowsBinascii) {
  EXPECT_EQ(PyBase64Decode("YQ==").value(), "a");
  EXPECT_EQ(PyBase64Decode("Y Q\n==").value(), "a");       // non-alphabet characters are skipped
  EXPECT_EQ(PyBase64Decode("YQ==trailing").value(), "a");  // a complete quad ends the data
  EXPECT_EQ(PyBase64Decode("YWJj").value(), "abc");
  EXPECT_EQ(PyBase64Decode("YQ").status().message(), "Incorrect padding");
  EXPECT_EQ(PyBase64Decode("YWJjZ").status().message(),
            "Invalid base64-encoded string: number of data characters (5) cannot be 1 more than a multiple of 4");
}

TEST(StripBase64DataUrlTest, FollowsTheReference) {
  EXPECT_EQ(StripBase64DataUrl("data:image/png;base64,aGVsbG8=").value(), "aGVsbG8=");
  EXPECT_EQ(StripBase64DataUrl("data:image/png;charset=utf-8;base64,aGVsbG8=").value(), "aGVsbG8=");
  EXPECT_EQ(StripBase64DataUrl("aGVsbG8=").value(), "aGVsbG8=");
  EXPECT_EQ(StripBase64DataUrl("data:text/plain,hello").status().message(),
            "Invalid base64 data URL data:text/plain,hello: expected the form `data:<mime>;base64,<payload>`.");
  EXPECT_FALSE(StripBase64DataUrl("data:image/png;base64,").ok());
}

TEST(ImageTokenGridTest, SmallImagesAreNotScaledUp) {
  // ceil(40 / 16) = 3, ceil(30 / 16) = 2.
  const ImageGrid g = ImageTokenGrid({40, 30}, 16, 1024, 1);
  EXPECT_EQ(g.width_tokens, 3);
  EXPECT_EQ(g.height_tokens, 2);
  // With 14-pixel patches merged 2x2, a cell is 28 pixels: ceil(40/28) = 2, ceil(30/28) = 2.
  const ImageGrid merged = ImageTokenGrid({40, 30}, 14, 1540, 2);
  EXPECT_EQ(merged.width_tokens, 2);
  EXPECT_EQ(merged.height_tokens, 2);
}

TEST(ImageTokenGridTest, LargeImagesScaleDownRoundingHalfToEven) {
  // 2000x300 -> ratio 2000/1024 = 1.953125: 1024 x round(153.6) = 154 -> 64 x 10.
  const ImageGrid wide = ImageTokenGrid({2000, 300}, 16, 1024, 1);
  EXPECT_EQ(wide.width_tokens, 64);
  EXPECT_EQ(wide.height_tokens, 10);
  // 2048x1025 -> ratio 2: height 512.5 rounds to 512 (even), not 513 -> 32 rows, not 33.
  const ImageGrid half = ImageTokenGrid({2048, 1025}, 16, 1024, 1);
  EXPECT_EQ(half.width_tokens, 64);
  EXPECT_EQ(half.height_tokens, 32);
  // An extreme aspect ratio keeps at least one pixel: 100000x1 -> 1024 x max(round(0.01024), 1).
  const ImageGrid strip = ImageTokenGrid({100000, 1}, 16, 1024, 1);
  EXPECT_EQ(strip.width_tokens, 64);
  EXPECT_EQ(strip.height_tokens, 1);
}

}  // namespace
}  // namespace sirocco::text
