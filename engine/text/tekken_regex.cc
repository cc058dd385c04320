#include "engine/text/tekken_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/check.h"

namespace sirocco::text {
namespace {

struct DeltaRange {
  char32_t first;
  char32_t last;
  const char* category;  // two-letter general category
};

constexpr DeltaRange kUnicodeDelta[] = {
#include "engine/text/tekken_unicode_delta.inc"
};

// Unicode White_Space, as Rust's \s matches it.
constexpr std::string_view kWhiteSpaceItems =
    R"(\x{9}-\x{D}\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

bool IsSupportedProperty(std::string_view name) {
  static constexpr std::string_view kNames[] = {"L",  "Lu", "Ll", "Lt", "Lm", "Lo", "M",
                                                "Mn", "Mc", "Me", "N",  "Nd", "Nl", "No"};
  for (std::string_view n : kNames) {
    if (n == name) return true;
  }
  return false;
}

std::string PropertyItems(std::string_view name) { return absl::StrCat("\\p{", std::string(name), "}"); }

// Code points newer than PCRE2's Unicode tables and their stand-ins.
class NewCodePoints {
 public:
  NewCodePoints() {
    for (std::size_t i = 1; i < std::size(kUnicodeDelta); ++i) {
      SIROCCO_CHECK(kUnicodeDelta[i - 1].last < kUnicodeDelta[i].first, "tekken_unicode_delta.inc is not sorted");
    }
    for (const DeltaRange& r : kUnicodeDelta) {
      const std::string_view gc = r.category;
      for (char32_t cp = r.first; cp <= r.last; ++cp) {
        SIROCCO_CHECK(cp >= 0x800, "a new code point below U+0800 would change UTF-8 length classes");
        if (cp < 0x10000) bmp_[cp >> 6] |= std::uint64_t{1} << (cp & 63);
      }
      SIROCCO_CHECK(!StandIn(gc, r.first < 0x10000 ? 3 : 4).empty() && !StandIn(gc, r.last < 0x10000 ? 3 : 4).empty(),
                    "no stand-in for a new code point's category and length");
    }
  }

  // The stand-in's UTF-8 bytes if cp is new, else empty.
  std::string_view Replacement(char32_t cp) const {
    if (cp < 0x10000 && !(bmp_[cp >> 6] >> (cp & 63) & 1)) return {};
    // The table is sorted by code point (the generator writes it in order).
    const DeltaRange* end = std::end(kUnicodeDelta);
    const DeltaRange* it = std::upper_bound(std::begin(kUnicodeDelta), end, cp,
                                            [](char32_t c, const DeltaRange& r) { return c < r.first; });
    if (it == std::begin(kUnicodeDelta) || cp > (it - 1)->last) return {};
    return StandIn((it - 1)->category, cp < 0x10000 ? 3 : 4);
  }

 private:
  // A code point of general category `gc` whose UTF-8 form has `length`
  // bytes, assigned since long before Unicode 14.
  static std::string_view StandIn(std::string_view gc, int length) {
    struct Entry {
      const char* gc;
      const char* three;  // 3-byte UTF-8
      const char* four;   // 4-byte UTF-8
    };
    static constexpr Entry kStandIns[] = {
        {"Lu", "\xE1\xB8\x80", "\xF0\x90\x90\x80"},  // U+1E00, U+10400
        {"Ll", "\xE1\xB8\x81", "\xF0\x90\x90\xA8"},  // U+1E01, U+10428
        {"Lt", "\xE1\xBE\x88", ""},                    // U+1F88
        {"Lm", "\xE1\xB4\xAC", "\xF0\x96\xAD\x80"},  // U+1D2C, U+16B40
        {"Lo", "\xE4\xB8\x80", "\xF0\xA0\x80\x80"},  // U+4E00, U+20000
        {"Mn", "\xE2\x83\x90", "\xF0\x90\x87\xBD"},  // U+20D0, U+101FD
        {"Mc", "\xE0\xA4\x83", "\xF0\x91\x80\x80"},  // U+0903, U+11000
        {"Me", "\xE2\x83\x9D", ""},                    // U+20DD
        {"Nd", "\xE0\xA5\xA6", "\xF0\x90\x92\xA0"},  // U+0966, U+104A0
        {"Nl", "\xE2\x85\xA0", "\xF0\x90\x85\x80"},  // U+2160, U+10140
        {"No", "\xE2\x81\xB0", "\xF0\x90\x84\x87"},  // U+2070, U+10107
    };
    for (const Entry& e : kStandIns) {
      if (gc == e.gc) return length == 3 ? e.three : e.four;
    }
    return {};
  }

  std::uint64_t bmp_[1024] = {};  // the new code points below U+10000
};

const NewCodePoints& NewOnes() {
  static const NewCodePoints* n = new NewCodePoints();
  return *n;
}

// Offset of the first code point PCRE2's tables do not know, or npos. Only
// 3- and 4-byte sequences can be one (all are above U+0800).
std::size_t FindNewCodePoint(std::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  const NewCodePoints& news = NewOnes();
  std::size_t i = 0;
  while (i < n) {
    if (i + 8 <= n) {
      std::uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (!(w & 0x8080808080808080ull)) {
        i += 8;
        continue;
      }
    }
    const unsigned char b = p[i];
    if (b < 0xE0) {
      ++i;
      continue;
    }
    char32_t cp;
    std::size_t len;
    if (b < 0xF0) {
      cp = (char32_t{b & 0x0Fu} << 12) | (char32_t{p[i + 1] & 0x3Fu} << 6) | (p[i + 2] & 0x3Fu);
      len = 3;
    } else {
      cp = (char32_t{b & 0x07u} << 18) | (char32_t{p[i + 1] & 0x3Fu} << 12) | (char32_t{p[i + 2] & 0x3Fu} << 6) |
           (p[i + 3] & 0x3Fu);
      len = 4;
    }
    if (!news.Replacement(cp).empty()) return i;
    i += len;
  }
  return std::string_view::npos;
}

// The text with every new code point replaced by its stand-in (same length).
std::string WithStandIns(std::string_view text, std::size_t first_new) {
  std::string out(text);
  const NewCodePoints& news = NewOnes();
  std::size_t i = first_new;
  while (i < out.size()) {
    const auto b = static_cast<unsigned char>(out[i]);
    if (b < 0xE0) {
      ++i;
      continue;
    }
    const std::size_t len = b < 0xF0 ? 3 : 4;
    const auto* p = reinterpret_cast<const unsigned char*>(out.data() + i);
    const char32_t cp = len == 3 ? (char32_t{p[0] & 0x0Fu} << 12) | (char32_t{p[1] & 0x3Fu} << 6) | (p[2] & 0x3Fu)
                                 : (char32_t{p[0] & 0x07u} << 18) | (char32_t{p[1] & 0x3Fu} << 12) |
                                       (char32_t{p[2] & 0x3Fu} << 6) | (p[3] & 0x3Fu);
    const std::string_view stand_in = news.Replacement(cp);
    if (!stand_in.empty()) out.replace(i, len, stand_in);
    i += len;
  }
  return out;
}

bool IsAsciiAlnum(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

class Translator {
 public:
  explicit Translator(std::string_view in) : in_(in) {}

  absl::StatusOr<std::string> Run() {
    while (i_ < in_.size()) {
      absl::Status s = in_class_ ? ClassItem() : OutsideItem();
      if (!s.ok()) return s;
    }
    if (in_class_) return Error("unterminated character class");
    return std::move(out_);
  }

 private:
  absl::Status Error(std::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("tekken pattern: ", std::string(what), " at offset ", i_, " of '", std::string(in_), "' (not translatable to PCRE2)"));
  }

  // Reads \p{Name} / \pN after the 'p' or 'P'; i_ is just past that letter.
  absl::StatusOr<std::string> PropertyName() {
    if (i_ >= in_.size()) return Error("dangling \\p");
    std::string name;
    if (in_[i_] == '{') {
      const std::size_t close = in_.find('}', i_);
      if (close == std::string_view::npos) return Error("unterminated \\p{");
      name = std::string(in_.substr(i_ + 1, close - i_ - 1));
      i_ = close + 1;
    } else {
      name = std::string(1, in_[i_++]);
    }
    if (!IsSupportedProperty(name)) return Error(absl::StrCat("unsupported property \\p{", name, "}"));
    return name;
  }

  // Escapes whose meaning is the same in both engines.
  static bool IsPlainEscape(char c) {
    return !IsAsciiAlnum(c) || c == 'r' || c == 'n' || c == 't' || c == 'f' || c == 'a' || c == 'v' || c == 'x';
  }

  absl::Status OutsideItem() {
    const char c = in_[i_];
    if (c == '\\') {
      if (i_ + 1 >= in_.size()) return Error("dangling backslash");
      const char e = in_[i_ + 1];
      i_ += 2;
      if (e == 'p' || e == 'P') {
        absl::StatusOr<std::string> name = PropertyName();
        if (!name.ok()) return name.status();
        absl::StrAppend(&out_, e == 'p' ? "[" : "[^", PropertyItems(*name), "]");
      } else if (e == 's' || e == 'S') {
        absl::StrAppend(&out_, e == 's' ? "[" : "[^", std::string(kWhiteSpaceItems), "]");
      } else if (e == 'd' || e == 'D') {
        absl::StrAppend(&out_, e == 'd' ? "[" : "[^", PropertyItems("Nd"), "]");
      } else if (e == 'A' || e == 'z') {
        absl::StrAppend(&out_, "\\", std::string(1, e));
      } else if (IsPlainEscape(e)) {
        absl::StrAppend(&out_, "\\", std::string(1, e));
      } else {
        --i_;
        return Error(absl::StrCat("unsupported escape \\", std::string(1, e)));
      }
      return absl::OkStatus();
    }
    if (c == '[') {
      in_class_ = true;
      out_ += '[';
      ++i_;
      if (i_ < in_.size() && in_[i_] == '^') {
        out_ += '^';
        ++i_;
      }
      // A ']' right after the opening is a literal in both engines.
      if (i_ < in_.size() && in_[i_] == ']') {
        out_ += "\\]";
        ++i_;
      }
      return absl::OkStatus();
    }
    if (c == '(' && i_ + 1 < in_.size() && in_[i_ + 1] == '?') {
      static constexpr std::string_view kGroups[] = {"(?:", "(?=", "(?!", "(?<=", "(?<!", "(?P<"};
      for (std::string_view g : kGroups) {
        if (in_.substr(i_, g.size()) == g) {
          out_ += g;
          i_ += g.size();
          return absl::OkStatus();
        }
      }
      return Error("unsupported group or inline flag");
    }
    if (c == '$') {
      out_ += "\\z";  // Rust's $ (no m flag) is the very end; PCRE2's also matches before a final \n
      ++i_;
      return absl::OkStatus();
    }
    out_ += c;
    ++i_;
    return absl::OkStatus();
  }

  absl::Status ClassItem() {
    const char c = in_[i_];
    if (c == ']') {
      in_class_ = false;
      out_ += ']';
      ++i_;
      return absl::OkStatus();
    }
    if (c == '[') return Error("nested class or POSIX class");
    if ((c == '&' || c == '-' || c == '~') && i_ + 1 < in_.size() && in_[i_ + 1] == c) {
      return Error("class set operation");
    }
    if (c == '\\') {
      if (i_ + 1 >= in_.size()) return Error("dangling backslash");
      const char e = in_[i_ + 1];
      i_ += 2;
      if (e == 'p') {
        absl::StatusOr<std::string> name = PropertyName();
        if (!name.ok()) return name.status();
        out_ += PropertyItems(*name);
      } else if (e == 's') {
        out_ += kWhiteSpaceItems;
      } else if (e == 'd') {
        out_ += PropertyItems("Nd");
      } else if (IsPlainEscape(e)) {
        absl::StrAppend(&out_, "\\", std::string(1, e));
      } else {
        --i_;
        return Error(absl::StrCat("unsupported escape \\", std::string(1, e), " in a class"));
      }
      return absl::OkStatus();
    }
    out_ += c;
    ++i_;
    return absl::OkStatus();
  }

  std::string_view in_;
  std::size_t i_ = 0;
  bool in_class_ = false;
  std::string out_;
};

// Per-thread match state: PCRE2 match data and a JIT stack large enough for
// long pieces (a 1 MB run of one script is a single piece).
struct MatchScratch {
  pcre2_match_data* data;
  pcre2_match_context* context;
  pcre2_jit_stack* stack;
  MatchScratch()
      : data(pcre2_match_data_create(16, nullptr)),
        context(pcre2_match_context_create(nullptr)),
        stack(pcre2_jit_stack_create(64 * 1024, 16 * 1024 * 1024, nullptr)) {
    SIROCCO_CHECK(data != nullptr && context != nullptr && stack != nullptr, "PCRE2 allocation failed");
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
  MatchScratch(const MatchScratch&) = delete;
  MatchScratch& operator=(const MatchScratch&) = delete;
};

MatchScratch& ThreadScratch() {
  thread_local MatchScratch scratch;
  return scratch;
}

std::size_t Utf8Length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  return 4;
}

}  // namespace

absl::StatusOr<std::string> TranslateTekkenPattern(std::string_view rust_pattern) {
  return Translator(rust_pattern).Run();
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::Create(std::string_view rust_pattern) {
  absl::StatusOr<std::string> translated = TranslateTekkenPattern(rust_pattern);
  if (!translated.ok()) return translated.status();
  std::unique_ptr<PreTokenizer> p(new PreTokenizer());
  p->pcre2_pattern_ = std::move(*translated);

  pcre2_compile_context* cc = pcre2_compile_context_create(nullptr);
  SIROCCO_CHECK(cc != nullptr, "PCRE2 allocation failed");
  pcre2_set_newline(cc, PCRE2_NEWLINE_LF);  // Rust's '.' excludes only \n
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p->pcre2_pattern_.data()), p->pcre2_pattern_.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &offset, cc);
  pcre2_compile_context_free(cc);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat("tekken pattern: PCRE2 cannot compile '", p->pcre2_pattern_,
                                                   "': ", reinterpret_cast<const char*>(message), " at offset ",
                                                   offset));
  }
  p->code_ = code;
  // Without JIT (an architecture PCRE2 cannot JIT for) the interpreter gives
  // the same matches, only slower.
  p->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return p;
}

PreTokenizer::~PreTokenizer() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void PreTokenizer::Split(std::string_view text, absl::FunctionRef<void(std::string_view)> on_piece) const {
  const std::size_t first_new = FindNewCodePoint(text);
  if (first_new == std::string_view::npos) {
    SplitKnown(text, text, on_piece);
  } else {
    const std::string mapped = WithStandIns(text, first_new);
    SplitKnown(mapped, text, on_piece);
  }
}

void PreTokenizer::SplitKnown(std::string_view subject_text, std::string_view original,
                              absl::FunctionRef<void(std::string_view)> on_piece) const {
  auto* code = static_cast<pcre2_code*>(code_);
  MatchScratch& scratch = ThreadScratch();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(subject_text.data());
  const std::size_t n = subject_text.size();
  const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(scratch.data);
  std::size_t pos = 0;
  while (pos < n) {
    int rc = jit_ ? pcre2_jit_match(code, subject, n, pos, 0, scratch.data, scratch.context)
                  : pcre2_match(code, subject, n, pos, PCRE2_NO_UTF_CHECK, scratch.data, scratch.context);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH && jit_) {
      // Out of JIT stack: the interpreter keeps its frames on the heap.
      rc = pcre2_match(code, subject, n, pos, PCRE2_NO_UTF_CHECK, scratch.data, scratch.context);
    }
    if (rc == PCRE2_ERROR_NOMATCH) return;
    SIROCCO_CHECK(rc >= 0, "PCRE2 match failed on valid UTF-8");
    const std::size_t start = ovector[0];
    const std::size_t end = ovector[1];
    if (end == start) {
      // An empty match yields no piece; step over one character, as Rust's
      // find_iter does, so the search always advances.
      pos = start + (start < n ? Utf8Length(static_cast<unsigned char>(subject_text[start])) : 1);
      continue;
    }
    on_piece(original.substr(start, end - start));
    pos = end;
  }
}

}  // namespace sirocco::text
