// UTF-8 validation and lossy decoding with Python's errors="replace" rules:
// every maximal subpart of an ill-formed sequence (Unicode 3.9, "U+FFFD
// substitution of maximal subparts") becomes one U+FFFD. The tokenizer uses it
// to decode token bytes exactly as mistral-common does, and to sanitize input.
//
// Thread-safety: free functions are pure; a Utf8StreamDecoder belongs to one
// stream and one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sirocco::text {

inline constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";  // U+FFFD

// Length of the longest prefix of `bytes` that is well-formed UTF-8.
std::size_t ValidUtf8PrefixLength(std::string_view bytes);
inline bool IsValidUtf8(std::string_view bytes) { return ValidUtf8PrefixLength(bytes) == bytes.size(); }

// Appends `bytes` decoded as UTF-8 with each maximal invalid subpart replaced
// by U+FFFD; the result is always valid UTF-8.
void AppendUtf8Lossy(std::string_view bytes, std::string* out);
std::string Utf8Lossy(std::string_view bytes);

// Appends the UTF-8 encoding of a code point (<= 0x10FFFF, not a surrogate).
void AppendCodePoint(char32_t cp, std::string* out);

// Incremental form of AppendUtf8Lossy: Append() emits everything that is
// decided, holding back at most 3 bytes that may still start a valid
// character; Finish() renders those as one U+FFFD (as a truncated sequence at
// the end of the input is). Append(a) + Append(b) + Finish() produces the same
// text as AppendUtf8Lossy(a + b).
class Utf8StreamDecoder {
 public:
  void Append(std::string_view bytes, std::string* out);
  void Finish(std::string* out);
  std::size_t pending_bytes() const { return pending_size_; }

 private:
  char pending_[4] = {};
  std::size_t pending_size_ = 0;
};

}  // namespace sirocco::text
