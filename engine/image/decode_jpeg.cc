// JPEG through libjpeg(-turbo) with the library defaults Pillow keeps (ISLOW
// IDCT, fancy upsampling), the mode chosen from the component count as
// Pillow's JpegImagePlugin does:
//
//   1 component   -> "L"    (gray)
//   3 components  -> "RGB"  (libjpeg converts YCbCr, or passes RGB through)
//   4 components  -> "CMYK" read as Adobe-inverted ("CMYK;I", YCCK converted
//                    by libjpeg), then Pillow's CMYK -> RGB:
//                    v = (255 - k) - DIV255(c * (255 - k))
//
// Pillow reads through corrupt-data warnings but fails on a file that ends
// early; so does this (libjpeg's "premature end" warning becomes an error).
//
// libjpeg reports errors by longjmp. Only the small Run* functions below call
// setjmp, and nothing with a destructor lives in them; the decompressor and
// buffers are owned one frame up, which a longjmp never crosses.

#include <algorithm>
#include <csetjmp>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <vector>

// jpeglib.h needs size_t and FILE declared first.
#include <jerror.h>
#include <jpeglib.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/image/decoders.h"

namespace sirocco::image::internal {
namespace {

// libjpeg hands the callbacks &mgr, the first member. Trivially destructible.
struct JpegErrors {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  bool truncated;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void OnError(j_common_ptr cinfo) {
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, errors->message);
  std::longjmp(errors->jump, 1);
}

void OnMessage(j_common_ptr cinfo, int level) {
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
    errors->truncated = true;
    std::longjmp(errors->jump, 1);
  }
  // Other warnings (corrupt entropy data, extraneous bytes): read on, as Pillow does.
}

void Silent(j_common_ptr) {}

// setjmp frames: plain data only.
bool RunReadHeader(jpeg_decompress_struct* cinfo, JpegErrors* errors, std::string_view encoded) {
  if (setjmp(errors->jump)) return false;
  jpeg_create_decompress(cinfo);
  jpeg_mem_src(cinfo, reinterpret_cast<const unsigned char*>(encoded.data()),
               static_cast<unsigned long>(encoded.size()));
  jpeg_read_header(cinfo, TRUE);
  return true;
}

bool RunStart(jpeg_decompress_struct* cinfo, JpegErrors* errors) {
  if (setjmp(errors->jump)) return false;
  jpeg_start_decompress(cinfo);
  return true;
}

bool RunReadRows(jpeg_decompress_struct* cinfo, JpegErrors* errors, JSAMPARRAY rows) {
  if (setjmp(errors->jump)) return false;
  while (cinfo->output_scanline < cinfo->output_height) {
    const JDIMENSION at = cinfo->output_scanline;
    if (jpeg_read_scanlines(cinfo, rows + at, cinfo->output_height - at) == 0) {
      ERREXIT(cinfo, JERR_INPUT_EOF);  // a suspending source cannot happen with a memory source
    }
  }
  return true;
}

struct JpegOwner {
  jpeg_decompress_struct* cinfo;
  bool created;
  ~JpegOwner() {
    if (created) jpeg_destroy_decompress(cinfo);
  }
};

absl::Status JpegError(const JpegErrors& errors) {
  if (errors.truncated) return absl::InvalidArgumentError("JPEG data is truncated");
  return absl::InvalidArgumentError(absl::StrCat("JPEG data is corrupt or unsupported: ", errors.message));
}

std::uint8_t CmykToRgb(std::uint32_t c, std::uint32_t k) {
  const std::uint32_t nk = 255 - k;
  const std::uint32_t t = c * nk + 128;
  return static_cast<std::uint8_t>(nk - (((t >> 8) + t) >> 8));
}

}  // namespace

absl::StatusOr<RgbImage> DecodeJpeg(std::string_view encoded, const DecodeLimits& limits) {
  jpeg_decompress_struct cinfo{};
  JpegErrors errors{};
  cinfo.err = jpeg_std_error(&errors.mgr);
  errors.mgr.error_exit = OnError;
  errors.mgr.emit_message = OnMessage;
  errors.mgr.output_message = Silent;
  JpegOwner owner{.cinfo = &cinfo, .created = true};  // jpeg_destroy_* is safe on a half-created struct

  if (!RunReadHeader(&cinfo, &errors, encoded)) return JpegError(errors);
  if (absl::Status s = CheckSize("JPEG", cinfo.image_width, cinfo.image_height, limits); !s.ok()) return s;
  switch (cinfo.num_components) {
    case 1:
      cinfo.out_color_space = JCS_GRAYSCALE;
      break;
    case 3:
      cinfo.out_color_space = JCS_RGB;
      break;
    case 4:
      cinfo.out_color_space = JCS_CMYK;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("JPEG with ", cinfo.num_components, " colour components is not supported (1, 3 or 4)"));
  }
  if (!RunStart(&cinfo, &errors)) return JpegError(errors);

  const int channels = cinfo.output_components;
  const std::size_t width = cinfo.output_width;
  const std::size_t height = cinfo.output_height;
  std::vector<JSAMPLE> raw(width * height * channels);
  std::vector<JSAMPROW> rows(height);
  for (std::size_t y = 0; y < height; ++y) rows[y] = raw.data() + y * width * channels;
  if (!RunReadRows(&cinfo, &errors, rows.data())) return JpegError(errors);

  RgbImage out{.width = static_cast<int>(width),
               .height = static_cast<int>(height),
               .pixels = std::vector<std::uint8_t>(width * height * 3)};
  std::uint8_t* o = out.pixels.data();
  const std::size_t n = width * height;
  if (channels == 3) {
    std::copy(raw.begin(), raw.end(), o);
  } else if (channels == 1) {
    for (std::size_t i = 0; i < n; ++i) o[3 * i] = o[3 * i + 1] = o[3 * i + 2] = raw[i];
  } else {
    for (std::size_t i = 0; i < n; ++i) {
      const JSAMPLE* p = raw.data() + 4 * i;
      const std::uint32_t k = 255u - p[3];  // Adobe CMYK is stored inverted
      for (int c = 0; c < 3; ++c) o[3 * i + c] = CmykToRgb(255u - p[c], k);
    }
  }
  return out;
}

}  // namespace sirocco::image::internal
