#include "engine/npy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/atomic_file.h"

namespace sirocco::engine {
namespace {

constexpr std::string_view kMagic = "\x93NUMPY";
// numpy aligns the data start to 64 bytes and, since 1.23, leaves room in the
// header for the growing axis to reach 21 digits (GROWTH_AXIS_MAX_DIGITS).
constexpr std::size_t kAlign = 64;
constexpr std::size_t kGrowthDigits = 21;

absl::Status NpyError(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

std::optional<uint64_t> Numel(std::span<const int64_t> shape) {
  uint64_t numel = 1;
  for (int64_t dim : shape) {
    if (dim < 0) return std::nullopt;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dim), &numel)) {
      return std::nullopt;
    }
  }
  if (numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return std::nullopt;
  }
  return numel;
}

// Python's repr of a shape tuple: "()", "(5,)", "(2, 3)".
std::string ShapeRepr(std::span<const int64_t> shape) {
  std::string out = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    absl::StrAppend(&out, shape[i]);
  }
  if (shape.size() == 1) out += ",";
  return out + ")";
}

// The subset of Python literal syntax np.save writes in a header:
// {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
class HeaderParser {
 public:
  explicit HeaderParser(std::string_view text) : text_(text) {}

  bool Consume(char c) {
    SkipSpace();
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  std::optional<std::string> String() {
    SkipSpace();
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) {
      return std::nullopt;
    }
    const char quote = text_[pos_++];
    const std::size_t end = text_.find(quote, pos_);
    if (end == std::string_view::npos) return std::nullopt;
    std::string value(text_.substr(pos_, end - pos_));
    // Escapes never occur in what numpy writes; refuse rather than misread.
    if (value.find('\\') != std::string::npos) return std::nullopt;
    pos_ = end + 1;
    return value;
  }

  std::optional<bool> Bool() {
    SkipSpace();
    for (const auto& [word, value] :
         {std::pair<std::string_view, bool>{"True", true}, std::pair<std::string_view, bool>{"False", false}}) {
      if (text_.substr(pos_, word.size()) == word) {
        pos_ += word.size();
        return value;
      }
    }
    return std::nullopt;
  }

  // "(d0, d1, ...)" with an optional trailing comma.
  std::optional<std::vector<int64_t>> Tuple() {
    if (!Consume('(')) return std::nullopt;
    std::vector<int64_t> dims;
    while (!Consume(')')) {
      SkipSpace();
      int64_t dim = 0;
      std::size_t digits = 0;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
        const int digit = text_[pos_++] - '0';
        if (dim > (std::numeric_limits<int64_t>::max() - digit) / 10) {
          return std::nullopt;
        }
        dim = dim * 10 + digit;
        ++digits;
      }
      if (digits == 0) return std::nullopt;
      dims.push_back(dim);
      if (!Consume(',')) {
        if (!Consume(')')) return std::nullopt;
        break;
      }
    }
    return dims;
  }

  bool AtEnd() {
    SkipSpace();
    return pos_ == text_.size();
  }

 private:
  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' || text_[pos_] == '\t')) {
      ++pos_;
    }
  }

  std::string_view text_;
  std::size_t pos_ = 0;
};

struct Header {
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
};

absl::StatusOr<Header> ParseHeader(const std::string& path, std::string_view text) {
  HeaderParser p(text);
  Header header;
  bool seen_descr = false, seen_order = false, seen_shape = false;
  if (!p.Consume('{')) return NpyError(path, "header is not a Python dict");
  while (!p.Consume('}')) {
    const std::optional<std::string> key = p.String();
    if (!key.has_value() || !p.Consume(':')) {
      return NpyError(path, "malformed header dict");
    }
    if (*key == "descr") {
      std::optional<std::string> descr = p.String();
      if (!descr.has_value()) return NpyError(path, "header field 'descr' is not a string");
      header.descr = *std::move(descr);
      seen_descr = true;
    } else if (*key == "fortran_order") {
      const std::optional<bool> order = p.Bool();
      if (!order.has_value()) {
        return NpyError(path, "header field 'fortran_order' is not True or False");
      }
      header.fortran_order = *order;
      seen_order = true;
    } else if (*key == "shape") {
      std::optional<std::vector<int64_t>> shape = p.Tuple();
      if (!shape.has_value()) {
        return NpyError(path, "header field 'shape' is not a tuple of integers");
      }
      header.shape = *std::move(shape);
      seen_shape = true;
    } else {
      return NpyError(path, absl::StrCat("unexpected header field '", *key, "'"));
    }
    if (!p.Consume(',')) {
      if (!p.Consume('}')) return NpyError(path, "malformed header dict");
      break;
    }
  }
  if (!p.AtEnd()) return NpyError(path, "trailing bytes after the header dict");
  if (!seen_descr) return NpyError(path, "header lacks field 'descr'");
  if (!seen_order) return NpyError(path, "header lacks field 'fortran_order'");
  if (!seen_shape) return NpyError(path, "header lacks field 'shape'");
  return header;
}

absl::StatusOr<DType> DescrToDType(const std::string& path, const std::string& descr) {
  if (!descr.empty() && descr[0] == '>') {
    return NpyError(path, absl::StrCat("header field 'descr' is '", descr, "': big-endian data is not supported"));
  }
  if (descr == "<f4") return DType::kF32;
  if (descr == "<f8") return DType::kF64;
  if (descr == "<i4") return DType::kI32;
  if (descr == "<i8") return DType::kI64;
  return NpyError(
      path, absl::StrCat("header field 'descr' is '", descr, "': only '<f4', '<f8', '<i4' and '<i8' are supported"));
}

absl::StatusOr<std::string> ReadAll(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat(path, ": cannot open"));
  std::string contents;
  char buffer[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int error = errno;
      ::close(fd);
      return absl::ErrnoToStatus(error, absl::StrCat(path, ": read failed"));
    }
    if (n == 0) break;
    contents.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return contents;
}

}  // namespace

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t dim : shape) n *= dim;
  return n;
}

absl::Status WriteNpy(const std::string& path, std::span<const int64_t> shape, const float* data) {
  const std::optional<uint64_t> numel = Numel(shape);
  if (!numel.has_value()) {
    return NpyError(path, absl::StrCat("shape ", ShapeRepr(shape), " has a negative or overflowing dimension"));
  }
  if (*numel > std::numeric_limits<std::size_t>::max() / sizeof(float)) {
    return NpyError(path, "shape is too large");
  }
  if (*numel > 0 && data == nullptr) return NpyError(path, "data is null");

  std::string dict = absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': ", ShapeRepr(shape), ", }");
  if (!shape.empty()) {
    const std::size_t digits = absl::StrCat(shape[0]).size();
    dict.append(kGrowthDigits - std::min(digits, kGrowthDigits), ' ');
  }
  // Version 1.0 stores the header length in 2 bytes, 2.0 in 4; numpy picks
  // 1.0 whenever the padded header fits.
  std::string preamble(kMagic);
  std::size_t header_len = 0;
  for (const std::size_t len_bytes : {std::size_t{2}, std::size_t{4}}) {
    const std::size_t unpadded = kMagic.size() + 2 + len_bytes + dict.size() + 1;
    // numpy pads by 1..64 bytes: a header already aligned still gets 64.
    const std::size_t pad = kAlign - unpadded % kAlign;
    header_len = dict.size() + pad + 1;
    if (len_bytes == 2 && header_len > 0xFFFF) continue;
    preamble.push_back(static_cast<char>(len_bytes == 2 ? 1 : 2));
    preamble.push_back('\0');
    for (std::size_t i = 0; i < len_bytes; ++i) {
      preamble.push_back(static_cast<char>((header_len >> (8 * i)) & 0xFF));
    }
    dict.append(pad, ' ');
    dict.push_back('\n');
    break;
  }
  const std::string_view body(reinterpret_cast<const char*>(data), static_cast<std::size_t>(*numel) * sizeof(float));
  return WriteFileAtomically(path, {preamble, dict, body});
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  absl::StatusOr<std::string> file = ReadAll(path);
  if (!file.ok()) return file.status();
  const std::string_view bytes = *file;
  if (bytes.size() < kMagic.size() + 4 || bytes.substr(0, kMagic.size()) != kMagic) {
    return NpyError(path, "not an .npy file (bad magic)");
  }
  const auto major = static_cast<unsigned char>(bytes[6]);
  const auto minor = static_cast<unsigned char>(bytes[7]);
  if ((major != 1 && major != 2) || minor != 0) {
    return NpyError(path, absl::StrCat("format version ", static_cast<int>(major), ".", static_cast<int>(minor),
                                       " is not supported (only 1.0 and 2.0)"));
  }
  const std::size_t len_bytes = major == 1 ? 2 : 4;
  if (bytes.size() < kMagic.size() + 2 + len_bytes) {
    return NpyError(path, "file ends inside the header length");
  }
  std::size_t header_len = 0;
  for (std::size_t i = 0; i < len_bytes; ++i) {
    header_len |= static_cast<std::size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
  }
  const std::size_t data_offset = 8 + len_bytes + header_len;
  if (data_offset > bytes.size()) {
    return NpyError(
        path, absl::StrCat("header length ", header_len, " runs past the end of the file (", bytes.size(), " bytes)"));
  }
  absl::StatusOr<Header> header = ParseHeader(path, bytes.substr(8 + len_bytes, header_len));
  if (!header.ok()) return header.status();
  absl::StatusOr<DType> dtype = DescrToDType(path, header->descr);
  if (!dtype.ok()) return dtype.status();
  if (header->fortran_order) {
    return NpyError(path, "header field 'fortran_order' is True: only C order is supported");
  }
  const std::optional<uint64_t> numel = Numel(header->shape);
  const std::size_t have = bytes.size() - data_offset;
  if (!numel.has_value() || *numel > have / DTypeSize(*dtype) || *numel * DTypeSize(*dtype) != have) {
    return NpyError(path, absl::StrCat("header field 'shape' ", ShapeRepr(header->shape), " of ", header->descr,
                                       " disagrees with the ", have, " data bytes"));
  }
  NpyArray array;
  array.dtype = *dtype;
  array.shape = std::move(header->shape);
  const auto* data = reinterpret_cast<const std::byte*>(bytes.data() + data_offset);
  array.data.assign(data, data + have);
  return array;
}

}  // namespace sirocco::engine
