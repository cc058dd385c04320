#include "engine/text/instruct_image.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "engine/text/instruct_strings.h"

namespace sirocco::text {
namespace {

int Base64Value(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

std::uint32_t Be16(std::string_view b, std::size_t at) {
  return (static_cast<std::uint32_t>(static_cast<unsigned char>(b[at])) << 8) | static_cast<unsigned char>(b[at + 1]);
}
std::uint32_t Be32(std::string_view b, std::size_t at) { return (Be16(b, at) << 16) | Be16(b, at + 2); }
std::uint32_t Le16(std::string_view b, std::size_t at) {
  return static_cast<unsigned char>(b[at]) | (static_cast<std::uint32_t>(static_cast<unsigned char>(b[at + 1])) << 8);
}
std::uint32_t Le24(std::string_view b, std::size_t at) {
  return Le16(b, at) | (static_cast<std::uint32_t>(static_cast<unsigned char>(b[at + 2])) << 16);
}
std::uint32_t Le32(std::string_view b, std::size_t at) { return Le16(b, at) | (Le16(b, at + 2) << 16); }

absl::Status Undecodable(std::string_view why) {
  return absl::InvalidArgumentError(Cat("cannot identify image file: ", why));
}

absl::StatusOr<ImageSize> ReadPng(std::string_view b) {
  // Signature, then the IHDR chunk: length, "IHDR", width, height (big-endian).
  if (b.size() < 24 || b.substr(12, 4) != "IHDR") return Undecodable("PNG without IHDR");
  return ImageSize{Be32(b, 16), Be32(b, 20)};
}

absl::StatusOr<ImageSize> ReadJpeg(std::string_view b) {
  std::size_t i = 2;  // after SOI
  while (i + 4 <= b.size()) {
    if (static_cast<unsigned char>(b[i]) != 0xFF) return Undecodable("JPEG marker expected");
    const auto marker = static_cast<unsigned char>(b[i + 1]);
    if (marker == 0xFF) {  // fill byte
      ++i;
      continue;
    }
    if (marker == 0xD8 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) {  // no length
      i += 2;
      continue;
    }
    const std::uint32_t length = Be16(b, i + 2);
    const bool is_sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
    if (is_sof) {
      if (i + 9 > b.size()) break;
      return ImageSize{Be16(b, i + 7), Be16(b, i + 5)};
    }
    if (marker == 0xDA || marker == 0xD9) break;  // scan data or end before any frame header
    i += 2 + length;
  }
  return Undecodable("JPEG without a frame header");
}

absl::StatusOr<ImageSize> ReadWebp(std::string_view b) {
  const std::string_view chunk = b.substr(12, 4);
  if (chunk == "VP8 " && b.size() >= 30) return ImageSize{Le16(b, 26) & 0x3FFF, Le16(b, 28) & 0x3FFF};
  if (chunk == "VP8L" && b.size() >= 25) {
    const std::uint32_t bits = Le32(b, 21);
    return ImageSize{(bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1};
  }
  if (chunk == "VP8X" && b.size() >= 30) return ImageSize{Le24(b, 24) + 1, Le24(b, 27) + 1};
  return Undecodable("WebP without a frame header");
}

absl::StatusOr<ImageSize> ReadBmp(std::string_view b) {
  if (b.size() < 26) return Undecodable("BMP too short");
  const std::uint32_t header = Le32(b, 14);
  if (header == 12) return ImageSize{Le16(b, 18), Le16(b, 20)};
  const auto height = static_cast<std::int32_t>(Le32(b, 22));
  return ImageSize{static_cast<std::int32_t>(Le32(b, 18)), height < 0 ? -static_cast<std::int64_t>(height) : height};
}

}  // namespace

absl::StatusOr<std::string> PyBase64Decode(std::string_view s) {
  std::string out;
  out.reserve(s.size() * 3 / 4);
  int quad_pos = 0;
  int pads = 0;
  std::uint32_t left = 0;
  std::int64_t data_chars = 0;
  for (const char ch : s) {
    if (ch == '=') {
      if (quad_pos >= 2 && quad_pos + ++pads >= 4) return out;  // a complete quad ends the data
      continue;
    }
    const int v = Base64Value(static_cast<unsigned char>(ch));
    if (v < 0) continue;
    ++data_chars;
    pads = 0;
    switch (quad_pos) {
      case 0:
        quad_pos = 1;
        left = static_cast<std::uint32_t>(v);
        break;
      case 1:
        quad_pos = 2;
        out.push_back(static_cast<char>((left << 2) | (static_cast<std::uint32_t>(v) >> 4)));
        left = static_cast<std::uint32_t>(v) & 0x0F;
        break;
      case 2:
        quad_pos = 3;
        out.push_back(static_cast<char>((left << 4) | (static_cast<std::uint32_t>(v) >> 2)));
        left = static_cast<std::uint32_t>(v) & 0x03;
        break;
      default:
        quad_pos = 0;
        out.push_back(static_cast<char>((left << 6) | static_cast<std::uint32_t>(v)));
        left = 0;
        break;
    }
  }
  if (quad_pos == 1) {
    return absl::InvalidArgumentError(Cat("Invalid base64-encoded string: number of data characters (", data_chars,
                                          ") cannot be 1 more than a multiple of 4"));
  }
  if (quad_pos != 0) return absl::InvalidArgumentError("Incorrect padding");
  return out;
}

absl::StatusOr<std::string_view> StripBase64DataUrl(std::string_view s) {
  if (s.substr(0, 5) != "data:") return s;
  const std::size_t comma = s.find(',');
  if (comma != std::string_view::npos) {
    const std::string_view header = s.substr(0, comma);
    const std::string_view payload = s.substr(comma + 1);
    if (header.size() >= 7 && header.substr(header.size() - 7) == ";base64" && !payload.empty()) return payload;
  }
  // The reference quotes the first 64 characters (code points).
  std::size_t head = 0;
  for (int n = 0; n < 64 && head < s.size(); ++n) {
    ++head;
    while (head < s.size() && (static_cast<unsigned char>(s[head]) & 0xC0) == 0x80) ++head;
  }
  return absl::InvalidArgumentError(
      Cat("Invalid base64 data URL ", s.substr(0, head), ": expected the form `data:<mime>;base64,<payload>`."));
}

absl::StatusOr<ImageSize> ReadImageSize(std::string_view b) {
  if (b.size() >= 8 && b.substr(0, 8) == std::string_view("\x89PNG\r\n\x1a\n", 8)) return ReadPng(b);
  if (b.size() >= 3 && b.substr(0, 3) == "\xFF\xD8\xFF") return ReadJpeg(b);
  if (b.size() >= 10 && (b.substr(0, 6) == "GIF87a" || b.substr(0, 6) == "GIF89a")) {
    return ImageSize{Le16(b, 6), Le16(b, 8)};
  }
  if (b.size() >= 16 && b.substr(0, 4) == "RIFF" && b.substr(8, 4) == "WEBP") return ReadWebp(b);
  if (b.size() >= 2 && b.substr(0, 2) == "BM") return ReadBmp(b);
  return Undecodable("unknown format");
}

ImageGrid ImageTokenGrid(ImageSize size, int patch_size, int max_image_size, int spatial_merge_size) {
  std::int64_t w = size.width;
  std::int64_t h = size.height;
  const double ratio = std::max(static_cast<double>(h) / max_image_size, static_cast<double>(w) / max_image_size);
  if (ratio > 1) {
    // std::nearbyint rounds half to even in the default rounding mode, as
    // Python's round() does.
    w = std::max<std::int64_t>(static_cast<std::int64_t>(std::nearbyint(static_cast<double>(w) / ratio)), 1);
    h = std::max<std::int64_t>(static_cast<std::int64_t>(std::nearbyint(static_cast<double>(h) / ratio)), 1);
  }
  const std::int64_t cell = static_cast<std::int64_t>(patch_size) * spatial_merge_size;
  // Python's floor division: (0 - 1) // cell == -1 for a zero-sized image.
  auto floor_div = [](std::int64_t a, std::int64_t d) { return a >= 0 ? a / d : -((-a + d - 1) / d); };
  return ImageGrid{floor_div(w - 1, cell) + 1, floor_div(h - 1, cell) + 1};
}

}  // namespace sirocco::text
