// The tekken pre-splitter: the file's regex, compiled with PCRE2 (JIT), finds
// the pieces that BPE then merges independently -- the find_iter loop of
// tiktoken, whose regex is Rust's fancy-regex.
//
// The pattern is written for Rust's regex syntax. TranslateTekkenPattern turns
// it into a PCRE2 pattern with the same meaning:
//   * \s, \S are Unicode White_Space (PCRE2's \s with UCP is a different set:
//     it lacks U+0085), spelled out as explicit classes;
//   * \d is \p{Nd}; $ is \z (Rust's meaning without the m flag);
//   * \p{..} is limited to letter, mark and number categories (see below);
//   * anything whose meaning differs and that tekken files do not use (\w, \b,
//     \P inside a class, inline flags, nested classes, ...) is rejected rather
//     than silently mistranslated.
// Unicode versions: tiktoken's tables are Unicode 16.0, PCRE2 10.42's are
// 14.0. The letters, marks and digits assigned in between
// (tekken_unicode_delta.inc) are unassigned for PCRE2, so Split matches a copy
// of the text in which each of them is replaced by a stand-in of the same
// general category and UTF-8 length that PCRE2 knows; piece boundaries are the
// same byte offsets, and pieces are cut from the original text. (Adding the
// ranges to the pattern's classes instead makes PCRE2's JIT three times
// slower.) On a newer PCRE2 the replacement is harmless.
// Equality with tiktoken is checked for every code point by the unit tests
// (tests/reference/text/strings_golden/unicode_classes.txt) and on real text
// by the string goldens.
//
// Thread-safety: a PreTokenizer is immutable; Split may run on many threads at
// once (each thread keeps its own PCRE2 match data and JIT stack).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"

namespace sirocco::text {

// Rust-regex pattern -> equivalent PCRE2 pattern (see above).
[[nodiscard]] absl::StatusOr<std::string> TranslateTekkenPattern(std::string_view rust_pattern);

class PreTokenizer {
 public:
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<PreTokenizer>> Create(std::string_view rust_pattern);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Calls on_piece for each non-empty match, left to right; text the pattern
  // does not match is skipped (as tiktoken skips it). `text` must be valid
  // UTF-8.
  void Split(std::string_view text, absl::FunctionRef<void(std::string_view)> on_piece) const;

  const std::string& pcre2_pattern() const { return pcre2_pattern_; }
  bool jit() const { return jit_; }

 private:
  PreTokenizer() = default;
  // Matches `subject` (the text, or its copy with stand-ins) and reports the
  // same byte ranges of `original`.
  void SplitKnown(std::string_view subject, std::string_view original,
                  absl::FunctionRef<void(std::string_view)> on_piece) const;
  std::string pcre2_pattern_;
  void* code_ = nullptr;  // pcre2_code_8*; kept opaque so pcre2.h stays out of headers
  bool jit_ = false;
};

}  // namespace sirocco::text
