// PNG through libpng, read the way Pillow's PngImagePlugin reads it:
//
//   gray 1/2/4/8-bit  -> "1"/"L": low depths scaled to 0..255 (x255, x85, x17)
//   gray 16-bit       -> "I;16", whose conversion to RGB clips at 255
//   RGB / RGBA / LA 16-bit -> the high byte of each sample
//   palette           -> PLTE, entries past its end black; tRNS alphas
//   gray + tRNS       -> pixels whose 8-bit value equals the key's low byte
//                        (for 1-bit: 255 if the key is non-zero, else 0) turn
//                        transparent, i.e. white after _convert_to_rgb
//   RGB + tRNS        -> key ignored (mistral-common keeps RGB images as is)
//
// and every alpha composited over white (OverWhite). PLTE and tRNS are read
// from the chunk list directly because libpng drops a tRNS longer than the
// palette, which Pillow keeps.
//
// libpng reports errors by longjmp. Only the small Read* functions below call
// setjmp, and nothing with a destructor lives in them; buffers and the libpng
// structs are owned one frame up, which a longjmp never crosses.

#include <png.h>

#include <algorithm>
#include <array>
#include <csetjmp>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/image/decoders.h"

namespace sirocco::image::internal {
namespace {

// Shared with libpng's callbacks; trivially destructible.
struct PngSource {
  const unsigned char* data;
  std::size_t size;
  std::size_t pos;
  bool truncated;
  char message[256];
};

void ReadBytes(png_structp png, png_bytep out, std::size_t n) {
  auto* src = static_cast<PngSource*>(png_get_io_ptr(png));
  if (n > src->size - src->pos) {
    src->truncated = true;
    png_error(png, "unexpected end of data");
  }
  std::memcpy(out, src->data + src->pos, n);
  src->pos += n;
}

void OnError(png_structp png, png_const_charp message) {
  auto* src = static_cast<PngSource*>(png_get_error_ptr(png));
  std::snprintf(src->message, sizeof(src->message), "%s", message);
  png_longjmp(png, 1);
}

void OnWarning(png_structp, png_const_charp) {}  // Pillow reads on through what libpng warns about.

struct PngHeader {
  png_uint_32 width;
  png_uint_32 height;
  int bit_depth;
  int color_type;
};

// setjmp frames: plain data only.
bool ReadHeader(png_structp png, png_infop info, PngHeader* header) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_info(png, info);
  int interlace = 0;
  png_get_IHDR(png, info, &header->width, &header->height, &header->bit_depth, &header->color_type, &interlace, nullptr,
               nullptr);
  return true;
}

bool PrepareRows(png_structp png, png_infop info, const PngHeader& header, std::size_t* rowbytes) {
  if (setjmp(png_jmpbuf(png))) return false;
  if (header.bit_depth < 8) png_set_packing(png);  // one byte per sample, values unscaled
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  *rowbytes = png_get_rowbytes(png, info);
  return true;
}

bool ReadRows(png_structp png, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_image(png, rows);
  return true;
}

struct PngDeleter {
  png_structp png;
  png_infop info;
  ~PngDeleter() { png_destroy_read_struct(&png, info != nullptr ? &info : nullptr, nullptr); }
};

absl::Status PngError(const PngSource& src) {
  if (src.truncated) return absl::InvalidArgumentError("PNG data is truncated");
  return absl::InvalidArgumentError(absl::StrCat("PNG data is corrupt: ", src.message));
}

std::uint32_t Be32(const unsigned char* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

// PLTE and tRNS as they appear before the first IDAT (where Pillow reads them).
struct PaletteChunks {
  std::string_view plte;
  std::string_view trns;
  bool has_trns = false;
};

PaletteChunks FindPaletteChunks(std::string_view b) {
  PaletteChunks out;
  const auto* p = reinterpret_cast<const unsigned char*>(b.data());
  std::size_t pos = 8;
  while (pos + 8 <= b.size()) {
    const std::uint32_t length = Be32(p + pos);
    const std::string_view type = b.substr(pos + 4, 4);
    if (type == "IDAT" || length > b.size() - pos - 8) break;
    if (type == "PLTE") out.plte = b.substr(pos + 8, length);
    if (type == "tRNS") {
      out.trns = b.substr(pos + 8, length);
      out.has_trns = true;
    }
    pos += 12 + std::size_t{length};
  }
  return out;
}

// One sample as Pillow's 8-bit mode holds it.
std::uint32_t Sample(const unsigned char* row, std::size_t i, int bit_depth) {
  return bit_depth == 16 ? row[2 * i] : row[i];
}

absl::Status ConvertGray(const PngHeader& h, const PaletteChunks& chunks, const std::vector<unsigned char>& raw,
                         std::size_t rowbytes, RgbImage* out) {
  const int d = h.bit_depth;
  const std::uint32_t scale = d == 1 ? 255 : d == 2 ? 85 : d == 4 ? 17 : 1;
  int key = -1;  // the 8-bit value that turns white
  if (chunks.has_trns) {
    if (chunks.trns.size() < 2) return absl::InvalidArgumentError("PNG data is corrupt: tRNS chunk is too short");
    const std::uint32_t t =
        (std::uint32_t{static_cast<unsigned char>(chunks.trns[0])} << 8) | static_cast<unsigned char>(chunks.trns[1]);
    key = d == 1 ? (t != 0 ? 255 : 0) : static_cast<int>(t & 0xFF);
  }
  for (png_uint_32 y = 0; y < h.height; ++y) {
    const unsigned char* row = raw.data() + y * rowbytes;
    std::uint8_t* o = out->pixels.data() + std::size_t{y} * h.width * 3;
    for (png_uint_32 x = 0; x < h.width; ++x) {
      std::uint32_t g;
      if (d == 16) {
        g = std::min<std::uint32_t>((std::uint32_t{row[2 * x]} << 8) | row[2 * x + 1], 255);
      } else {
        g = row[x] * scale;
      }
      if (static_cast<int>(g) == key) g = 255;
      o[3 * x] = o[3 * x + 1] = o[3 * x + 2] = static_cast<std::uint8_t>(g);
    }
  }
  return absl::OkStatus();
}

void ConvertPalette(const PngHeader& h, const PaletteChunks& chunks, const std::vector<unsigned char>& raw,
                    std::size_t rowbytes, RgbImage* out) {
  std::array<std::array<std::uint8_t, 3>, 256> rgb{};  // past the PLTE: black
  std::array<std::uint8_t, 256> alpha;
  alpha.fill(255);
  for (std::size_t i = 0; i < 256 && 3 * i + 2 < chunks.plte.size(); ++i) {
    for (int c = 0; c < 3; ++c) rgb[i][c] = static_cast<std::uint8_t>(chunks.plte[3 * i + c]);
  }
  for (std::size_t i = 0; i < 256 && i < chunks.trns.size(); ++i) alpha[i] = static_cast<std::uint8_t>(chunks.trns[i]);
  std::array<std::array<std::uint8_t, 3>, 256> over{};
  for (int i = 0; i < 256; ++i) {
    for (int c = 0; c < 3; ++c) over[i][c] = OverWhite(rgb[i][c], alpha[i]);
  }
  for (png_uint_32 y = 0; y < h.height; ++y) {
    const unsigned char* row = raw.data() + y * rowbytes;
    std::uint8_t* o = out->pixels.data() + std::size_t{y} * h.width * 3;
    for (png_uint_32 x = 0; x < h.width; ++x) std::memcpy(o + 3 * x, over[row[x]].data(), 3);
  }
}

void ConvertColor(const PngHeader& h, const std::vector<unsigned char>& raw, std::size_t rowbytes, RgbImage* out) {
  const bool alpha = (h.color_type & PNG_COLOR_MASK_ALPHA) != 0;
  const bool gray = (h.color_type & PNG_COLOR_MASK_COLOR) == 0;
  const int channels = (gray ? 1 : 3) + (alpha ? 1 : 0);
  for (png_uint_32 y = 0; y < h.height; ++y) {
    const unsigned char* row = raw.data() + y * rowbytes;
    std::uint8_t* o = out->pixels.data() + std::size_t{y} * h.width * 3;
    for (png_uint_32 x = 0; x < h.width; ++x) {
      const std::size_t s = std::size_t{x} * channels;
      const std::uint32_t a = alpha ? Sample(row, s + channels - 1, h.bit_depth) : 255;
      for (int c = 0; c < 3; ++c) {
        o[3 * x + c] = OverWhite(Sample(row, s + (gray ? 0 : c), h.bit_depth), a);
      }
    }
  }
}

}  // namespace

absl::StatusOr<RgbImage> DecodePng(std::string_view encoded, const DecodeLimits& limits) {
  // IHDR comes first (libpng checks that below): its size decides before
  // libpng reads the chunks up to the image data.
  if (encoded.size() >= 24 && encoded.substr(12, 4) == "IHDR") {
    const auto* ihdr = reinterpret_cast<const unsigned char*>(encoded.data()) + 16;
    if (absl::Status s = CheckSize("PNG", Be32(ihdr), Be32(ihdr + 4), limits); !s.ok()) return s;
  }
  PngSource src{.data = reinterpret_cast<const unsigned char*>(encoded.data()),
                .size = encoded.size(),
                .pos = 0,
                .truncated = false,
                .message = {}};
  PngDeleter owner{.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, OnError, OnWarning), .info = nullptr};
  if (owner.png == nullptr) return absl::ResourceExhaustedError("cannot allocate a PNG decoder");
  owner.info = png_create_info_struct(owner.png);
  if (owner.info == nullptr) return absl::ResourceExhaustedError("cannot allocate a PNG decoder");
  png_set_read_fn(owner.png, &src, ReadBytes);

  PngHeader header{};
  if (!ReadHeader(owner.png, owner.info, &header)) return PngError(src);
  if (absl::Status s = CheckSize("PNG", header.width, header.height, limits); !s.ok()) return s;
  std::size_t rowbytes = 0;
  if (!PrepareRows(owner.png, owner.info, header, &rowbytes)) return PngError(src);

  std::vector<unsigned char> raw(rowbytes * header.height);
  std::vector<png_bytep> rows(header.height);
  for (png_uint_32 y = 0; y < header.height; ++y) rows[y] = raw.data() + y * rowbytes;
  if (!ReadRows(owner.png, rows.data())) return PngError(src);

  RgbImage out{.width = static_cast<int>(header.width),
               .height = static_cast<int>(header.height),
               .pixels = std::vector<std::uint8_t>(std::size_t{header.width} * header.height * 3)};
  const PaletteChunks chunks = FindPaletteChunks(encoded);
  switch (header.color_type) {
    case PNG_COLOR_TYPE_GRAY:
      if (absl::Status s = ConvertGray(header, chunks, raw, rowbytes, &out); !s.ok()) return s;
      break;
    case PNG_COLOR_TYPE_PALETTE:
      ConvertPalette(header, chunks, raw, rowbytes, &out);
      break;
    default:  // RGB, RGBA, gray + alpha (tRNS plays no part)
      ConvertColor(header, raw, rowbytes, &out);
      break;
  }
  return out;
}

}  // namespace sirocco::image::internal
