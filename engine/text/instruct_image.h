// Images in a chat request, as far as the instruct format needs them: their
// pixel size, read from the file header, and the [IMG] grid mistral-common's
// ImageEncoder lays out for that size. Pixels are never decoded here; the
// vision encoder that will consume them decodes them itself.
//
// Formats read: PNG, JPEG, GIF, BMP and WebP (Pillow reads more; anything
// else is rejected as undecodable, the reference's error for data it cannot
// open).
//
// Pure functions: safe to use from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace sirocco::text {

// Python's `base64.b64decode(s)` (non-validating: characters outside the
// alphabet are skipped). The error message is binascii's.
[[nodiscard]] absl::StatusOr<std::string> PyBase64Decode(std::string_view s);

// mistral-common's `maybe_strip_base64_data_url_prefix`: the payload of a
// "data:<mime>;base64,<payload>" URL, or `s` itself when it does not start
// with "data:". The error message is the reference's.
[[nodiscard]] absl::StatusOr<std::string_view> StripBase64DataUrl(std::string_view s);

struct ImageSize {
  std::int64_t width = 0;
  std::int64_t height = 0;
};

// The pixel size stored in an encoded image's header.
[[nodiscard]] absl::StatusOr<ImageSize> ReadImageSize(std::string_view encoded);

struct ImageGrid {
  std::int64_t width_tokens = 0;   // [IMG] per row
  std::int64_t height_tokens = 0;  // rows, each closed by [IMG_BREAK] (the last by [IMG_END])
};

// The reference's `_image_to_num_tokens`: scale down (never up) to fit
// `max_image_size`, rounding half to even as Python's round() does, then one
// token per `patch_size * spatial_merge_size` pixels, rounded up.
ImageGrid ImageTokenGrid(ImageSize size, int patch_size, int max_image_size, int spatial_merge_size);

}  // namespace sirocco::text
