// WebP through libwebp's animation decoder, exactly as Pillow's
// WebPImagePlugin opens every WebP file (still or animated): default options
// (straight RGBA, no threads), the first frame composed on the canvas
// (transparent black outside it), mode "RGBA" when WebPGetFeatures reports
// alpha and "RGB" (alpha dropped) otherwise. RGBA is then composited over
// white (OverWhite), as _convert_to_rgb does.

#include <webp/decode.h>
#include <webp/demux.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "engine/image/decoders.h"

namespace sirocco::image::internal {
namespace {

struct AnimDecoderDeleter {
  void operator()(WebPAnimDecoder* dec) const { WebPAnimDecoderDelete(dec); }
};

absl::Status Corrupt() { return absl::InvalidArgumentError("WebP data is corrupt or truncated"); }

}  // namespace

absl::StatusOr<RgbImage> DecodeWebp(std::string_view encoded, const DecodeLimits& limits) {
  const auto* bytes = reinterpret_cast<const std::uint8_t*>(encoded.data());
  WebPBitstreamFeatures features{};
  if (WebPGetFeatures(bytes, encoded.size(), &features) != VP8_STATUS_OK) return Corrupt();
  // The animation decoder allocates the canvas when it is created: check first.
  if (absl::Status s = CheckSize("WebP", features.width, features.height, limits); !s.ok()) return s;

  const WebPData data{.bytes = bytes, .size = encoded.size()};
  const std::unique_ptr<WebPAnimDecoder, AnimDecoderDeleter> dec(WebPAnimDecoderNew(&data, nullptr));
  if (dec == nullptr) return Corrupt();
  WebPAnimInfo info{};
  if (!WebPAnimDecoderGetInfo(dec.get(), &info)) return Corrupt();
  if (absl::Status s = CheckSize("WebP", info.canvas_width, info.canvas_height, limits); !s.ok()) return s;
  std::uint8_t* canvas = nullptr;  // owned by the decoder
  int timestamp = 0;
  if (!WebPAnimDecoderGetNext(dec.get(), &canvas, &timestamp)) return Corrupt();

  const std::size_t n = std::size_t{info.canvas_width} * info.canvas_height;
  RgbImage out{.width = static_cast<int>(info.canvas_width),
               .height = static_cast<int>(info.canvas_height),
               .pixels = std::vector<std::uint8_t>(n * 3)};
  std::uint8_t* o = out.pixels.data();
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint8_t* p = canvas + 4 * i;
    const std::uint32_t a = features.has_alpha ? p[3] : 255;
    for (int c = 0; c < 3; ++c) o[3 * i + c] = OverWhite(p[c], a);
  }
  return out;
}

}  // namespace sirocco::image::internal
