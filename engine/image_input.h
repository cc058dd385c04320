// An image a request carries to the model: the pixels its vision encoder
// takes, produced on demand. The prompt holds one [IMG] token per row of the
// encoder's output (an image's grid, row by row, between its [IMG_BREAK]s);
// the encoder's rows replace those tokens' embeddings, image after image in
// prompt order.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"

namespace sirocco::engine {

struct ImageInput {
  // Pixels as the encoder takes them: multiples of its patch size times its
  // spatial merge size. The image's [IMG] tokens number
  // (height / (patch * merge)) * (width / (patch * merge)).
  int height = 0;
  int width = 0;
  // Returns CHW float32 pixels [3, height, width], normalised for the
  // encoder. Called at most once per request: on one of the engine loop's
  // image threads before a submitted request joins the queue, or on the
  // engine thread when a step first needs the image's features and they
  // were not prepared (no image threads; a decode worker recomputing a
  // preempted request; a prefix-cache match lost to eviction). So a caller
  // may defer decoding the file to it; it must be safe to call from any
  // thread.
  std::function<absl::StatusOr<std::vector<float>>()> pixels;
  // Identifies the image's content (a hash of its file): prompts with the
  // same image share its KV blocks through the prefix cache. 0: unknown,
  // nothing from the image on is cached.
  std::uint64_t content_hash = 0;
};

}  // namespace sirocco::engine
