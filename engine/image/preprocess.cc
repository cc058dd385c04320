// PreprocessImage: OpenCV's cv::resize(INTER_CUBIC) on a float32 image,
// reproduced operation for operation so the result is bit-identical, then
// mistral-common's normalisation.
//
// OpenCV's rules (imgproc resize, generic separable path):
//   scale = 1 / (dst / src)                       (double, in that order)
//   f = float((d + 0.5) * scale - 0.5), s = floor(f), f -= s
//   taps s-1 .. s+2, indices clamped to the image (replicated border), with
//   Keys' cubic weights for A = -0.75 evaluated in float as OpenCV writes
//   them, the last weight being 1 - w0 - w1 - w2;
//   each needed source row is resized horizontally first (w0*p0 + w1*p1 +
//   w2*p2 + w3*p3, left to right), then four such rows are combined
//   vertically (summation order below). No antialiasing when shrinking.
// That is OpenCV's own algorithm, which the wheels run when IPP is off. With
// IPP on (the opencv-python default, so what mistral-common gets) Intel's
// closed resize computes its weights and sums differently: the results then
// differ from these by a few float32 ulps (up to ~6e-6 after normalisation).
// This file is compiled with -ffp-contract=off: a fused multiply-add would
// round differently from OpenCV's separate multiply and add.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/check.h"
#include "engine/image/image.h"

namespace sirocco::image {
namespace {

// For each output coordinate: four clamped source indices and their weights.
struct CubicTaps {
  std::vector<int> index;     // [dst, 4]
  std::vector<float> weight;  // [dst, 4]
};

CubicTaps ComputeTaps(int src, int dst) {
  CubicTaps taps{.index = std::vector<int>(std::size_t{4} * dst), .weight = std::vector<float>(std::size_t{4} * dst)};
  const double inv_scale = static_cast<double>(dst) / src;
  const double scale = 1.0 / inv_scale;
  constexpr float A = -0.75f;
  for (int d = 0; d < dst; ++d) {
    float x = static_cast<float>((d + 0.5) * scale - 0.5);
    const int s = static_cast<int>(std::floor(x));
    x -= static_cast<float>(s);
    float* w = &taps.weight[std::size_t{4} * d];
    w[0] = ((A * (x + 1) - 5 * A) * (x + 1) + 8 * A) * (x + 1) - 4 * A;
    w[1] = ((A + 2) * x - (A + 3)) * x * x + 1;
    w[2] = ((A + 2) * (1 - x) - (A + 3)) * (1 - x) * (1 - x) + 1;
    w[3] = 1.f - w[0] - w[1] - w[2];
    for (int k = 0; k < 4; ++k) {
      const int i = s - 1 + k;
      taps.index[std::size_t{4} * d + k] = i < 0 ? 0 : i >= src ? src - 1 : i;
    }
  }
  return taps;
}

// One source row (HWC uint8) resized horizontally into `out` [dst_width, 3].
void ResizeRow(const std::uint8_t* row, const CubicTaps& xs, int dst_width, float* out) {
  for (int d = 0; d < dst_width; ++d) {
    const int* i = &xs.index[std::size_t{4} * d];
    const float* w = &xs.weight[std::size_t{4} * d];
    for (int c = 0; c < 3; ++c) {
      out[3 * d + c] = static_cast<float>(row[3 * i[0] + c]) * w[0] + static_cast<float>(row[3 * i[1] + c]) * w[1] +
                       static_cast<float>(row[3 * i[2] + c]) * w[2] + static_cast<float>(row[3 * i[3] + c]) * w[3];
    }
  }
}

}  // namespace

std::vector<float> PreprocessImage(const RgbImage& img, int new_width, int new_height) {
  SIROCCO_CHECK(new_width > 0 && new_height > 0, "target size must be positive");
  SIROCCO_CHECK(img.width > 0 && img.height > 0 &&
                    img.pixels.size() == std::size_t{3} * static_cast<std::size_t>(img.width) * img.height,
                "RgbImage pixels must hold height * width * 3 bytes");
  // DATASET_MEAN / DATASET_STD, converted from double as numpy does.
  const float mean[3] = {static_cast<float>(0.48145466), static_cast<float>(0.4578275), static_cast<float>(0.40821073)};
  const float stddev[3] = {static_cast<float>(0.26862954), static_cast<float>(0.26130258),
                           static_cast<float>(0.27577711)};

  const CubicTaps xs = ComputeTaps(img.width, new_width);
  const CubicTaps ys = ComputeTaps(img.height, new_height);
  const std::size_t row_floats = std::size_t{3} * new_width;
  const std::size_t vector_floats = row_floats / 4 * 4;
  // The four most recent horizontally resized source rows, slot = row % 4:
  // one output row reads at most four consecutive source rows.
  std::vector<float> ring(4 * row_floats);
  int ring_row[4] = {-1, -1, -1, -1};
  const std::size_t plane = static_cast<std::size_t>(new_width) * new_height;
  std::vector<float> out(3 * plane);  // [3, new_height, new_width]
  const float* rows[4];
  for (int dy = 0; dy < new_height; ++dy) {
    for (int k = 0; k < 4; ++k) {
      const int r = ys.index[std::size_t{4} * dy + k];
      float* slot = &ring[(r & 3) * row_floats];
      if (ring_row[r & 3] != r) {
        ResizeRow(&img.pixels[std::size_t{3} * img.width * r], xs, new_width, slot);
        ring_row[r & 3] = r;
      }
      rows[k] = slot;
    }
    const float* b = &ys.weight[std::size_t{4} * dy];
    float* dst[3] = {&out[static_cast<std::size_t>(dy) * new_width],
                     &out[plane + static_cast<std::size_t>(dy) * new_width],
                     &out[2 * plane + static_cast<std::size_t>(dy) * new_width]};
    for (std::size_t i = 0; i < row_floats; ++i) {
      // OpenCV's vertical pass runs 4-float SIMD (baseline SSE, no FMA) over
      // the interleaved row, summing from the last tap; the remainder is
      // scalar, summing from the first.
      const float p0 = rows[0][i] * b[0];
      const float p1 = rows[1][i] * b[1];
      const float p2 = rows[2][i] * b[2];
      const float p3 = rows[3][i] * b[3];
      const float v = i < vector_floats ? p0 + (p1 + (p2 + p3)) : ((p0 + p1) + p2) + p3;
      const std::size_t c = i % 3;
      dst[c][i / 3] = (v / 255.0f - mean[c]) / stddev[c];
    }
  }
  return out;
}

}  // namespace sirocco::image
