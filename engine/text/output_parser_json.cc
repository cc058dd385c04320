#include "engine/text/output_parser_json.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>
#include <system_error>
#include <unordered_map>
#include <utility>

namespace sirocco::text {
namespace {

constexpr int kMaxDepth = 512;

bool IsJsonSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Appends a code point (surrogates included, as Python strings allow them).
void AppendCodePoint(std::uint32_t cp, std::string* out) {
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

class Reader {
 public:
  explicit Reader(std::string_view text) : s_(text) {}

  absl::StatusOr<PyJsonValue> ParseDocument() {
    // Python refuses a str that starts with a byte order mark.
    if (s_.substr(0, 3) == "\xEF\xBB\xBF") return Error("Unexpected UTF-8 BOM");
    SkipSpace();
    PyJsonValue value;
    if (absl::Status st = ParseValue(0, &value); !st.ok()) return st;
    SkipSpace();
    if (pos_ != s_.size()) return Error("Extra data");
    return value;
  }

 private:
  absl::Status Error(std::string_view what) const {
    return absl::InvalidArgumentError(std::string(what) + " (char " + std::to_string(pos_) + ")");
  }
  void SkipSpace() {
    while (pos_ < s_.size() && IsJsonSpace(s_[pos_])) ++pos_;
  }
  bool Consume(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  absl::Status ParseValue(int depth, PyJsonValue* out) {
    if (pos_ >= s_.size()) return Error("Expecting value");
    const char c = s_[pos_];
    if (c == '"') {
      out->kind = PyJsonValue::Kind::kString;
      return ParseString(&out->text);
    }
    if (c == '{' || c == '[') {
      if (depth >= kMaxDepth) return Error("Nesting too deep");
      return c == '{' ? ParseObject(depth + 1, out) : ParseArray(depth + 1, out);
    }
    if (Consume("null")) {
      out->kind = PyJsonValue::Kind::kNull;
      return absl::OkStatus();
    }
    if (Consume("true") || Consume("false")) {
      out->kind = PyJsonValue::Kind::kBool;
      out->boolean = c == 't';
      return absl::OkStatus();
    }
    if (Consume("NaN")) return SetFloat(std::numeric_limits<double>::quiet_NaN(), out);
    if (Consume("Infinity")) return SetFloat(std::numeric_limits<double>::infinity(), out);
    if (Consume("-Infinity")) return SetFloat(-std::numeric_limits<double>::infinity(), out);
    return ParseNumber(out);
  }

  static absl::Status SetFloat(double v, PyJsonValue* out) {
    out->kind = PyJsonValue::Kind::kFloat;
    out->number = v;
    return absl::OkStatus();
  }

  absl::Status ParseNumber(PyJsonValue* out) {
    const size_t start = pos_;
    size_t i = pos_;
    if (i < s_.size() && s_[i] == '-') ++i;
    const size_t int_start = i;
    if (i < s_.size() && s_[i] == '0') {
      ++i;
    } else if (i < s_.size() && s_[i] >= '1' && s_[i] <= '9') {
      while (i < s_.size() && IsDigit(s_[i])) ++i;
    } else {
      return Error("Expecting value");
    }
    const size_t int_end = i;
    bool is_float = false;
    if (i + 1 < s_.size() && s_[i] == '.' && IsDigit(s_[i + 1])) {
      is_float = true;
      i += 2;
      while (i < s_.size() && IsDigit(s_[i])) ++i;
    }
    if (i < s_.size() && (s_[i] == 'e' || s_[i] == 'E')) {
      size_t j = i + 1;
      if (j < s_.size() && (s_[j] == '+' || s_[j] == '-')) ++j;
      if (j < s_.size() && IsDigit(s_[j])) {
        while (j < s_.size() && IsDigit(s_[j])) ++j;
        is_float = true;
        i = j;
      }
      // Otherwise Python stops before the 'e', which then fails as extra data.
    }
    pos_ = i;
    const std::string_view literal = s_.substr(start, i - start);
    if (!is_float) {
      out->kind = PyJsonValue::Kind::kInt;
      const std::string_view digits = s_.substr(int_start, int_end - int_start);
      // int("-0") is 0: the only literal whose canonical form differs.
      out->text = (digits == "0") ? "0" : std::string(literal);
      return absl::OkStatus();
    }
    return SetFloat(ParseFloatLiteral(literal), out);
  }

  // float(literal): correctly rounded; overflow gives inf and underflow 0.
  static double ParseFloatLiteral(std::string_view literal) {
    double v = 0.0;
    const bool negative = !literal.empty() && literal[0] == '-';
    const char* first = literal.data() + (negative ? 1 : 0);
    const char* last = literal.data() + literal.size();
    const std::from_chars_result r = std::from_chars(first, last, v);
    if (r.ec == std::errc::result_out_of_range) {
      // Decide the direction from the decimal magnitude: position of the
      // first significant digit relative to the point, plus the exponent.
      long long exponent = 0;
      const std::string_view body(first, static_cast<size_t>(last - first));
      const size_t e = body.find_first_of("eE");
      if (e != std::string_view::npos) {
        std::string_view exp_text = body.substr(e + 1);
        const bool exp_negative = !exp_text.empty() && exp_text[0] == '-';
        if (!exp_text.empty() && (exp_text[0] == '-' || exp_text[0] == '+')) exp_text.remove_prefix(1);
        for (char c : exp_text) exponent = std::min<long long>(exponent * 10 + (c - '0'), 1'000'000'000LL);
        if (exp_negative) exponent = -exponent;
      }
      const std::string_view mantissa = body.substr(0, e);
      const size_t point = mantissa.find('.');
      const size_t int_len = point == std::string_view::npos ? mantissa.size() : point;
      const size_t first_nonzero = mantissa.find_first_of("123456789");
      long long magnitude = exponent;
      if (first_nonzero != std::string_view::npos) {
        magnitude += first_nonzero < int_len ? static_cast<long long>(int_len - first_nonzero)
                                             : -static_cast<long long>(first_nonzero - int_len - 1);
      }
      v = magnitude > 0 ? std::numeric_limits<double>::infinity() : 0.0;
    }
    return negative ? -v : v;
  }

  absl::Status ParseString(std::string* out) {
    ++pos_;  // opening quote
    while (true) {
      if (pos_ >= s_.size()) return Error("Unterminated string");
      const char c = s_[pos_];
      if (c == '"') {
        ++pos_;
        return absl::OkStatus();
      }
      if (static_cast<unsigned char>(c) < 0x20) return Error("Invalid control character");
      if (c != '\\') {
        out->push_back(c);
        ++pos_;
        continue;
      }
      if (pos_ + 1 >= s_.size()) return Error("Unterminated string");
      const char esc = s_[pos_ + 1];
      pos_ += 2;
      switch (esc) {
        case '"':
          out->push_back('"');
          break;
        case '\\':
          out->push_back('\\');
          break;
        case '/':
          out->push_back('/');
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          std::uint32_t cp = 0;
          if (!ReadHex4(pos_, &cp)) return Error("Invalid \\uXXXX escape");
          pos_ += 4;
          // A high surrogate joins an escaped low surrogate right after it;
          // any other surrogate stays alone, as in Python.
          std::uint32_t low = 0;
          if (cp >= 0xD800 && cp <= 0xDBFF && pos_ + 6 <= s_.size() && s_[pos_] == '\\' && s_[pos_ + 1] == 'u') {
            if (!ReadHex4(pos_ + 2, &low)) return Error("Invalid \\uXXXX escape");
            if (low >= 0xDC00 && low <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
              pos_ += 6;
            }
          }
          AppendCodePoint(cp, out);
          break;
        }
        default:
          return Error("Invalid \\escape");
      }
    }
  }

  bool ReadHex4(size_t at, std::uint32_t* cp) const {
    if (at + 4 > s_.size()) return false;
    std::uint32_t v = 0;
    for (size_t k = 0; k < 4; ++k) {
      const int h = HexValue(s_[at + k]);
      if (h < 0) return false;
      v = (v << 4) | static_cast<std::uint32_t>(h);
    }
    *cp = v;
    return true;
  }

  absl::Status ParseArray(int depth, PyJsonValue* out) {
    out->kind = PyJsonValue::Kind::kArray;
    ++pos_;
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return absl::OkStatus();
    }
    while (true) {
      PyJsonValue item;
      if (absl::Status st = ParseValue(depth, &item); !st.ok()) return st;
      out->items.push_back(std::move(item));
      SkipSpace();
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return absl::OkStatus();
      }
      if (pos_ >= s_.size() || s_[pos_] != ',') return Error("Expecting ',' delimiter");
      ++pos_;
      SkipSpace();
    }
  }

  absl::Status ParseObject(int depth, PyJsonValue* out) {
    out->kind = PyJsonValue::Kind::kObject;
    ++pos_;
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return absl::OkStatus();
    }
    // Python's dict: a repeated key keeps its first position, takes the last value.
    std::unordered_map<std::string, size_t> index;
    while (true) {
      if (pos_ >= s_.size() || s_[pos_] != '"') return Error("Expecting property name enclosed in double quotes");
      std::string key;
      if (absl::Status st = ParseString(&key); !st.ok()) return st;
      SkipSpace();
      if (pos_ >= s_.size() || s_[pos_] != ':') return Error("Expecting ':' delimiter");
      ++pos_;
      SkipSpace();
      PyJsonValue value;
      if (absl::Status st = ParseValue(depth, &value); !st.ok()) return st;
      if (auto it = index.find(key); it != index.end()) {
        out->items[it->second] = std::move(value);
      } else {
        index.emplace(key, out->items.size());
        out->keys.push_back(std::move(key));
        out->items.push_back(std::move(value));
      }
      SkipSpace();
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return absl::OkStatus();
      }
      if (pos_ >= s_.size() || s_[pos_] != ',') return Error("Expecting ',' delimiter");
      ++pos_;
      SkipSpace();
    }
  }

  std::string_view s_;
  size_t pos_ = 0;
};

// Decodes one code point of generalised UTF-8 at `*i`; an invalid byte reads
// as U+FFFD (cannot come from a detokenizer, which already replaced them).
std::uint32_t NextCodePoint(std::string_view s, size_t* i) {
  const auto b0 = static_cast<unsigned char>(s[*i]);
  int len = 0;
  std::uint32_t cp = 0;
  if (b0 < 0x80) {
    ++*i;
    return b0;
  } else if ((b0 & 0xE0) == 0xC0) {
    len = 2;
    cp = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3;
    cp = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4;
    cp = b0 & 0x07;
  } else {
    ++*i;
    return 0xFFFD;
  }
  if (*i + static_cast<size_t>(len) > s.size()) {
    ++*i;
    return 0xFFFD;
  }
  for (int k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[*i + static_cast<size_t>(k)]);
    if ((b & 0xC0) != 0x80) {
      ++*i;
      return 0xFFFD;
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  *i += static_cast<size_t>(len);
  return cp;
}

void AppendEscapedUnit(std::uint32_t unit, std::string* out) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(unit));
  out->append(buf);
}

void DumpString(std::string_view s, std::string* out) {
  out->push_back('"');
  size_t i = 0;
  while (i < s.size()) {
    const std::uint32_t cp = NextCodePoint(s, &i);
    switch (cp) {
      case '"':
        out->append("\\\"");
        continue;
      case '\\':
        out->append("\\\\");
        continue;
      case '\n':
        out->append("\\n");
        continue;
      case '\r':
        out->append("\\r");
        continue;
      case '\t':
        out->append("\\t");
        continue;
      case '\b':
        out->append("\\b");
        continue;
      case '\f':
        out->append("\\f");
        continue;
      default:
        break;
    }
    if (cp >= 0x20 && cp <= 0x7E) {
      out->push_back(static_cast<char>(cp));
    } else if (cp >= 0x10000) {
      const std::uint32_t v = cp - 0x10000;
      AppendEscapedUnit(0xD800 | (v >> 10), out);
      AppendEscapedUnit(0xDC00 | (v & 0x3FF), out);
    } else {
      AppendEscapedUnit(cp, out);
    }
  }
  out->push_back('"');
}

// Python's repr(float): the shortest round-trip digits, positional when the
// decimal point falls within -4 < decpt <= 16, else d.ddde+XX.
void DumpFloat(double v, std::string* out) {
  if (std::isnan(v)) {
    out->append("NaN");
    return;
  }
  if (std::isinf(v)) {
    out->append(v > 0 ? "Infinity" : "-Infinity");
    return;
  }
  char buf[64];
  const std::to_chars_result r = std::to_chars(buf, buf + sizeof(buf), std::fabs(v), std::chars_format::scientific);
  const std::string_view sci(buf, static_cast<size_t>(r.ptr - buf));
  const size_t e = sci.find('e');
  std::string digits;
  for (char c : sci.substr(0, e)) {
    if (c != '.') digits.push_back(c);
  }
  int exponent = 0;
  std::from_chars(sci.data() + e + 1 + (sci[e + 1] == '+' ? 1 : 0), sci.data() + sci.size(), exponent);
  const int decpt = exponent + 1;
  if (std::signbit(v)) out->push_back('-');
  const int n = static_cast<int>(digits.size());
  if (decpt <= -4 || decpt > 16) {
    out->push_back(digits[0]);
    if (n > 1) {
      out->push_back('.');
      out->append(digits, 1, std::string::npos);
    }
    char exp_buf[16];
    std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out->append(exp_buf);
  } else if (decpt <= 0) {
    out->append("0.");
    out->append(static_cast<size_t>(-decpt), '0');
    out->append(digits);
  } else if (decpt >= n) {
    out->append(digits);
    out->append(static_cast<size_t>(decpt - n), '0');
    out->append(".0");
  } else {
    out->append(digits, 0, static_cast<size_t>(decpt));
    out->push_back('.');
    out->append(digits, static_cast<size_t>(decpt), std::string::npos);
  }
}

void Dump(const PyJsonValue& v, std::string* out) {
  switch (v.kind) {
    case PyJsonValue::Kind::kNull:
      out->append("null");
      return;
    case PyJsonValue::Kind::kBool:
      out->append(v.boolean ? "true" : "false");
      return;
    case PyJsonValue::Kind::kInt:
      out->append(v.text);
      return;
    case PyJsonValue::Kind::kFloat:
      DumpFloat(v.number, out);
      return;
    case PyJsonValue::Kind::kString:
      DumpString(v.text, out);
      return;
    case PyJsonValue::Kind::kArray:
      out->push_back('[');
      for (size_t i = 0; i < v.items.size(); ++i) {
        if (i > 0) out->append(", ");
        Dump(v.items[i], out);
      }
      out->push_back(']');
      return;
    case PyJsonValue::Kind::kObject:
      out->push_back('{');
      for (size_t i = 0; i < v.items.size(); ++i) {
        if (i > 0) out->append(", ");
        DumpString(v.keys[i], out);
        out->append(": ");
        Dump(v.items[i], out);
      }
      out->push_back('}');
      return;
  }
}

}  // namespace

const PyJsonValue* FindMember(const PyJsonValue& object, std::string_view key) {
  for (size_t i = 0; i < object.keys.size(); ++i) {
    if (object.keys[i] == key) return &object.items[i];
  }
  return nullptr;
}

std::string PyStringToUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    // A surrogate's 3-byte form is ED A0..BF xx; nothing else starts that way.
    if (static_cast<unsigned char>(text[i]) == 0xED && i + 2 < text.size() &&
        (static_cast<unsigned char>(text[i + 1]) & 0xE0) == 0xA0) {
      out.append("\xEF\xBF\xBD");
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

absl::StatusOr<PyJsonValue> ParsePythonJson(std::string_view text) { return Reader(text).ParseDocument(); }

std::string DumpPythonJson(const PyJsonValue& value) {
  std::string out;
  Dump(value, &out);
  return out;
}

}  // namespace sirocco::text
