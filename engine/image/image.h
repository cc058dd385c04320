// sirocco::image: from the bytes a client sends to the pixels the vision
// encoder reads -- the C++ twin of mistral-common 1.13's image path:
//
//   Image.open(BytesIO(data))            Pillow, first frame     DecodeImage
//   _convert_to_rgb(image)               over white, integer    (same call)
//   cv2.resize(..., INTER_CUBIC)         float32, OpenCV rules   PreprocessImage
//   /255, -DATASET_MEAN, /DATASET_STD    float32, CHW           (same call)
//
// DecodeImage matches Pillow byte for byte. PreprocessImage matches OpenCV's
// own resize bit for bit; the opencv-python wheels resize through Intel IPP
// by default, which rounds differently by a few float32 ulps (at most 6.2e-6
// seen after normalisation). tests/reference/image_reference.py writes the
// goldens; tests/unit/image checks them.
// Formats: PNG (every colour type and bit depth, interlaced, tRNS, read as
// Pillow reads it, including 16-bit), JPEG (gray, YCbCr/RGB, CMYK/YCCK), WebP
// (lossy, lossless, alpha, animated: first frame). Anything else, and any
// broken file, is InvalidArgument with a message for the user.
//
// Pure functions of their arguments, no shared state: callable from any
// thread, concurrently.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sirocco::image {

struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> pixels;  // [height, width, 3] RGB
};

struct DecodeLimits {
  // Checked against the size in the file's header before any pixel is
  // decoded (a few bytes can claim gigapixels). Pillow refuses above
  // 2 * 89,478,485 pixels; Sirocco is stricter by default.
  std::int64_t max_pixels = 64'000'000;
};

// Decodes a PNG, JPEG or WebP file into exactly
// `np.array(_convert_to_rgb(Image.open(BytesIO(encoded))))`: transparent
// pixels composited over white with Pillow's integer rounding. Errors
// (InvalidArgument): unknown format, truncated or corrupt data, zero size,
// more pixels than `limits.max_pixels`, or a mode Pillow would not open.
[[nodiscard]] absl::StatusOr<RgbImage> DecodeImage(std::string_view encoded, const DecodeLimits& limits);

// mistral-common's `transform_image(image, (new_width, new_height))` on a
// decoded image: OpenCV's bicubic resize (A = -0.75, half-pixel centres,
// replicated border, no antialiasing) in float32, then per channel
// (x / 255 - mean) / std. Returns [3, new_height, new_width] float32 (CHW).
// About 60 ms for 1540 x 1540 on one core.
// new_width and new_height must be positive (checked: a bug otherwise).
std::vector<float> PreprocessImage(const RgbImage& img, int new_width, int new_height);

}  // namespace sirocco::image
