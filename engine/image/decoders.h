// The per-format decoders behind DecodeImage (engine/image/image.h) and the
// pixel rules they share. Internal to engine/image: callers use DecodeImage.
// Each decoder returns exactly what Pillow's Image.open + mistral-common's
// _convert_to_rgb give for its format, or InvalidArgument.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/image/image.h"

namespace sirocco::image::internal {

[[nodiscard]] absl::StatusOr<RgbImage> DecodePng(std::string_view encoded, const DecodeLimits& limits);
[[nodiscard]] absl::StatusOr<RgbImage> DecodeJpeg(std::string_view encoded, const DecodeLimits& limits);
[[nodiscard]] absl::StatusOr<RgbImage> DecodeWebp(std::string_view encoded, const DecodeLimits& limits);

// The header's size against the limits: zero or over `max_pixels` is an error.
[[nodiscard]] absl::Status CheckSize(const char* format, std::int64_t width, std::int64_t height,
                                     const DecodeLimits& limits);

// `white.paste(rgba, (0, 0), rgba)` for one channel: Pillow blends with the
// mask in integers, (v * a + 255 * (255 - a)) / 255 rounded by its DIV255
// (add 128, then (t + t / 256) / 256). a = 255 gives v, a = 0 gives 255.
inline std::uint8_t OverWhite(std::uint32_t v, std::uint32_t a) {
  const std::uint32_t t = v * a + 255 * (255 - a) + 128;
  return static_cast<std::uint8_t>(((t >> 8) + t) >> 8);
}

}  // namespace sirocco::image::internal
