// DecodeImage: recognise the format from the first bytes as Pillow's plugins
// do, then hand over to that format's decoder (engine/image/decode_*.cc).

#include "engine/image/image.h"

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/image/decoders.h"

namespace sirocco::image {
namespace internal {

absl::Status CheckSize(const char* format, std::int64_t width, std::int64_t height, const DecodeLimits& limits) {
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(format, " image has no pixels (", width, "x", height, ")"));
  }
  if (width > limits.max_pixels / height) {
    return absl::InvalidArgumentError(absl::StrCat(format, " image is ", width, "x", height, " pixels, more than the ",
                                                   limits.max_pixels, " this server accepts"));
  }
  return absl::OkStatus();
}

}  // namespace internal

absl::StatusOr<RgbImage> DecodeImage(std::string_view encoded, const DecodeLimits& limits) {
  if (encoded.starts_with("\x89PNG\r\n\x1a\n")) return internal::DecodePng(encoded, limits);
  if (encoded.starts_with("\xFF\xD8\xFF")) return internal::DecodeJpeg(encoded, limits);
  if (encoded.size() >= 16 && encoded.starts_with("RIFF") && encoded.substr(8, 4) == "WEBP") {
    const std::string_view chunk = encoded.substr(12, 4);
    if (chunk == "VP8 " || chunk == "VP8L" || chunk == "VP8X") return internal::DecodeWebp(encoded, limits);
  }
  if (encoded.empty()) return absl::InvalidArgumentError("image is empty (0 bytes)");
  return absl::InvalidArgumentError("image is not a PNG, JPEG or WebP file");
}

}  // namespace sirocco::image
