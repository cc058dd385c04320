// A worker request's images (sirocco.worker.v1.ImageInput) as the engine
// takes them: placeholders checked against the prompt, pixels decoded and
// resized only when the engine asks for them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/image_input.h"
#include "engine/pixtral.h"
#include "google/protobuf/repeated_field.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "sirocco/worker/v1/worker.pb.h"

namespace sirocco::decode {

// INVALID_ARGUMENT naming `field` when the model has no vision encoder, an
// image is empty, its grid is out of range, or its placeholders are not
// where token_offset and the grid say (rows of grid_width `[IMG]` tokens,
// each followed by one other token; images in order, not overlapping).
// The pixels function decodes the file (sirocco::image) and resizes it to
// the grid.
absl::StatusOr<std::vector<engine::ImageInput>> ToEngineImages(
    const google::protobuf::RepeatedPtrField<sirocco::worker::v1::ImageInput>& images,
    const google::protobuf::RepeatedField<std::int32_t>& prompt, const engine::PixtralEncoder* vision,
    const std::string& field);

}  // namespace sirocco::decode
