#include "decode/worker_images.h"

#include <memory>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "engine/image/image.h"
#include "services/status_mapping.h"

namespace sirocco::decode {

namespace wv1 = sirocco::worker::v1;

absl::StatusOr<std::vector<engine::ImageInput>> ToEngineImages(
    const google::protobuf::RepeatedPtrField<wv1::ImageInput>& images,
    const google::protobuf::RepeatedField<std::int32_t>& prompt, const engine::PixtralEncoder* vision,
    const std::string& field) {
  std::vector<engine::ImageInput> out;
  if (images.empty()) return out;
  if (vision == nullptr) return services::InvalidFieldError(field, "this model has no vision encoder");
  const engine::VisionConfig& vc = vision->config();
  const std::int64_t cell = vc.token_pixels();
  // mistral-common fits an image into image_size pixels a side.
  const std::int64_t max_cells = (vc.image_size + cell - 1) / cell;
  std::size_t next = 0;  // first prompt index the next image may start at
  for (int i = 0; i < images.size(); ++i) {
    const wv1::ImageInput& im = images.Get(i);
    const std::string path = absl::StrCat(field, "[", i, "]");
    if (im.data().empty()) return services::InvalidFieldError(path + ".data", "is empty");
    const std::int64_t gw = im.grid_width(), gh = im.grid_height();
    if (gw < 1 || gh < 1 || gw > max_cells || gh > max_cells) {
      return services::InvalidFieldError(
          path, absl::StrCat("grid ", gw, "x", gh, " is outside 1..", max_cells, " cells a side"));
    }
    const std::size_t offset = im.token_offset();
    const std::size_t span = static_cast<std::size_t>(gh * (gw + 1));
    if (offset < next || offset + span > static_cast<std::size_t>(prompt.size())) {
      return services::InvalidFieldError(
          path + ".token_offset",
          absl::StrCat(offset, ": the image's ", span, " placeholders overlap another image or the prompt's end"));
    }
    for (std::int64_t r = 0; r < gh; ++r) {
      const std::size_t row = offset + static_cast<std::size_t>(r * (gw + 1));
      for (std::int64_t c = 0; c <= gw; ++c) {
        const bool is_img = prompt[static_cast<int>(row + static_cast<std::size_t>(c))] == vc.image_token_index;
        if (is_img != (c < gw)) {
          return services::InvalidFieldError(
              path, absl::StrCat("prompt position ", row + static_cast<std::size_t>(c), " does not fit a grid of ", gw,
                                 "x", gh, " image tokens at ", offset));
        }
      }
    }
    next = offset + span;
    const int width = static_cast<int>(gw * cell), height = static_cast<int>(gh * cell);
    auto data = std::make_shared<const std::string>(im.data());
    out.push_back(engine::ImageInput{
        .height = height,
        .width = width,
        .pixels = [data, width, height]() -> absl::StatusOr<std::vector<float>> {
          absl::StatusOr<image::RgbImage> rgb = image::DecodeImage(*data, image::DecodeLimits{});
          if (!rgb.ok()) return rgb.status();
          return image::PreprocessImage(*rgb, width, height);
        },
        // The file's bytes identify the image (within this process: the key
        // never leaves it). Never 0, which means unknown.
        .content_hash = absl::HashOf(absl::string_view(*data)) | 1,
    });
  }
  return out;
}

}  // namespace sirocco::decode
