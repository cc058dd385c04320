#include "engine/text/utf8.h"

#include <cstring>

namespace sirocco::text {
namespace {

enum class Step : std::uint8_t {
  kValid,       // a whole well-formed character of `length` bytes
  kInvalid,     // a maximal ill-formed subpart of `length` bytes: one U+FFFD
  kIncomplete,  // all `length` available bytes start a character that needs more
};

struct Scan {
  Step step;
  std::size_t length;
};

// Classifies the sequence at p[0..n), n >= 1, by the well-formed byte table of
// Unicode (Table 3-7): the lead byte fixes the length and the range of the
// second byte; later bytes are 80..BF. The first byte that does not fit ends
// the maximal subpart before it.
Scan ScanOne(const unsigned char* p, std::size_t n) {
  const unsigned char b = p[0];
  if (b < 0x80) return {Step::kValid, 1};
  std::size_t length;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) {
    length = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    length = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    length = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    return {Step::kInvalid, 1};  // 80..C1, F5..FF never start a character
  }
  const std::size_t available = n < length ? n : length;
  for (std::size_t k = 1; k < available; ++k) {
    const unsigned char c = p[k];
    const bool fits = k == 1 ? (c >= lo && c <= hi) : (c >= 0x80 && c <= 0xBF);
    if (!fits) return {Step::kInvalid, k};
  }
  if (available < length) return {Step::kIncomplete, available};
  return {Step::kValid, length};
}

// Length of the leading run of ASCII bytes, 8 at a time.
std::size_t AsciiPrefix(const unsigned char* p, std::size_t n) {
  std::size_t i = 0;
  while (i + 8 <= n) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    if (w & 0x8080808080808080ull) break;
    i += 8;
  }
  while (i < n && p[i] < 0x80) ++i;
  return i;
}

}  // namespace

std::size_t ValidUtf8PrefixLength(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const std::size_t n = bytes.size();
  std::size_t i = 0;
  while (i < n) {
    i += AsciiPrefix(p + i, n - i);
    if (i == n) break;
    const Scan s = ScanOne(p + i, n - i);
    if (s.step != Step::kValid) break;
    i += s.length;
  }
  return i;
}

void AppendUtf8Lossy(std::string_view bytes, std::string* out) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const std::size_t n = bytes.size();
  std::size_t i = 0;
  while (i < n) {
    // Copy the longest well-formed stretch in one go.
    std::size_t j = i;
    Scan s{Step::kValid, 0};
    while (j < n) {
      j += AsciiPrefix(p + j, n - j);
      if (j == n) break;
      s = ScanOne(p + j, n - j);
      if (s.step != Step::kValid) break;
      j += s.length;
    }
    out->append(bytes.data() + i, j - i);
    if (j == n) break;
    // An ill-formed subpart, or a truncated character at the very end: both
    // are one maximal subpart.
    out->append(kReplacementCharacter);
    i = j + s.length;
  }
}

std::string Utf8Lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  AppendUtf8Lossy(bytes, &out);
  return out;
}

void AppendCodePoint(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

void Utf8StreamDecoder::Append(std::string_view bytes, std::string* out) {
  std::size_t consumed = 0;
  // First complete (or reject) the character held back from earlier calls,
  // feeding it one byte at a time: it never needs more than 3 more bytes.
  while (pending_size_ > 0 && consumed < bytes.size()) {
    pending_[pending_size_++] = bytes[consumed++];
    const Scan s = ScanOne(reinterpret_cast<const unsigned char*>(pending_), pending_size_);
    if (s.step == Step::kIncomplete) continue;
    if (s.step == Step::kValid) {
      out->append(pending_, pending_size_);
      pending_size_ = 0;
    } else {
      // The subpart ends before the byte that did not fit; that byte (and
      // anything after it in pending_) is scanned again as fresh input.
      out->append(kReplacementCharacter);
      const std::size_t rest = pending_size_ - s.length;
      pending_size_ = 0;
      consumed -= rest;
    }
  }
  if (consumed == bytes.size()) return;
  // The rest: everything but a trailing incomplete character is decided.
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data()) + consumed;
  const std::size_t n = bytes.size() - consumed;
  std::size_t tail = n;  // start of a trailing incomplete character, if any
  for (std::size_t back = 1; back <= 3 && back <= n; ++back) {
    const unsigned char c = p[n - back];
    if (c < 0x80) break;
    if (c >= 0xC0) {  // a lead byte: is it still waiting for more?
      if (ScanOne(p + n - back, back).step == Step::kIncomplete) tail = n - back;
      break;
    }
  }
  AppendUtf8Lossy(std::string_view(reinterpret_cast<const char*>(p), tail), out);
  pending_size_ = n - tail;
  std::memcpy(pending_, p + tail, pending_size_);
}

void Utf8StreamDecoder::Finish(std::string* out) {
  if (pending_size_ > 0) out->append(kReplacementCharacter);
  pending_size_ = 0;
}

}  // namespace sirocco::text
