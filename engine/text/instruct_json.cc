#include "engine/text/instruct_json.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "engine/check.h"
#include "engine/text/instruct_strings.h"
#include "nlohmann/json.hpp"

namespace sirocco::text {
namespace {

// Builds a PyValue tree from nlohmann's SAX events. Numbers arrive with their
// source text, so integers too long for 64 bits keep every digit (Python ints
// are unbounded) instead of degrading to doubles.
class TreeBuilder final : public nlohmann::json_sax<nlohmann::json> {
 public:
  bool null() override { return Add(PyValue{}); }
  bool boolean(bool val) override {
    PyValue v;
    v.kind = PyValue::Kind::kBool;
    v.boolean = val;
    return Add(std::move(v));
  }
  bool number_integer(number_integer_t val) override { return AddInt(std::to_string(val)); }
  bool number_unsigned(number_unsigned_t val) override { return AddInt(std::to_string(val)); }
  bool number_float(number_float_t val, const string_t& raw) override {
    // nlohmann reports an integer literal beyond 64 bits as a float; Python
    // keeps it exact.
    if (raw.find_first_of(".eE") == std::string::npos) {
      std::string digits = raw;
      if (digits.size() > 1 && digits[0] == '-' && digits.find_first_not_of('0', 1) == std::string::npos) {
        digits = "0";  // Python: int("-0") == 0
      }
      return AddInt(std::move(digits));
    }
    PyValue v;
    v.kind = PyValue::Kind::kFloat;
    v.number = val;
    return Add(std::move(v));
  }
  bool string(string_t& val) override { return Add(PyValue::String(std::move(val))); }
  bool binary(binary_t& /*val*/) override { return false; }
  bool start_object(std::size_t /*elements*/) override {
    PyValue v;
    v.kind = PyValue::Kind::kObject;
    stack_.push_back(Frame{std::move(v), {}});
    return true;
  }
  bool key(string_t& val) override {
    stack_.back().pending_key = std::move(val);
    return true;
  }
  bool end_object() override { return Close(); }
  bool start_array(std::size_t /*elements*/) override {
    PyValue v;
    v.kind = PyValue::Kind::kArray;
    stack_.push_back(Frame{std::move(v), {}});
    return true;
  }
  bool end_array() override { return Close(); }
  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& ex) override {
    error_ = ex.what();
    return false;
  }

  const std::string& error() const { return error_; }
  PyValue Take() { return std::move(root_); }

 private:
  struct Frame {
    PyValue value;
    std::string pending_key;
  };

  bool AddInt(std::string digits) {
    PyValue v;
    v.kind = PyValue::Kind::kInt;
    v.int_digits = std::move(digits);
    return Add(std::move(v));
  }
  bool Add(PyValue v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return true;
    }
    Frame& top = stack_.back();
    if (top.value.kind == PyValue::Kind::kArray) {
      top.value.array.push_back(std::move(v));
    } else {
      top.value.Set(std::move(top.pending_key), std::move(v));
    }
    return true;
  }
  bool Close() {
    SIROCCO_CHECK(!stack_.empty(), "unbalanced JSON events");
    PyValue v = std::move(stack_.back().value);
    stack_.pop_back();
    return Add(std::move(v));
  }

  std::vector<Frame> stack_;
  PyValue root_;
  std::string error_;
};

void AppendHex(unsigned value, int digits, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (int shift = (digits - 1) * 4; shift >= 0; shift -= 4) out->push_back(kHex[(value >> shift) & 0xF]);
}

// Decodes one UTF-8 sequence at `s[*i]` (input is valid UTF-8: it came from
// the JSON parser) and advances `*i`.
std::uint32_t NextCodePoint(std::string_view s, std::size_t* i) {
  const auto b0 = static_cast<unsigned char>(s[*i]);
  int len = b0 < 0x80 ? 1 : b0 < 0xE0 ? 2 : b0 < 0xF0 ? 3 : 4;
  if (*i + len > s.size()) len = 1;
  std::uint32_t cp = len == 1 ? b0 : len == 2 ? (b0 & 0x1F) : len == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[*i + k]) & 0x3F);
  *i += len;
  return cp;
}

// An approximation of Python's str.isprintable for code points above ASCII:
// the controls, separators and format characters a message is likely to meet.
bool IsPrintable(std::uint32_t cp) {
  if (cp < 0x20 || cp == 0x7F) return false;
  if (cp >= 0x80 && cp <= 0xA0) return false;
  if (cp == 0xAD || cp == 0x1680 || cp == 0x180E || cp == 0x3000 || cp == 0xFEFF) return false;
  if ((cp >= 0x2000 && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202F) || (cp >= 0x205F && cp <= 0x206F)) return false;
  if ((cp >= 0xD800 && cp <= 0xF8FF) || (cp >= 0xFFF9 && cp <= 0xFFFB) || cp >= 0xF0000) return false;
  return true;
}

void ReprAppend(const PyValue& value, std::string* out) {
  switch (value.kind) {
    case PyValue::Kind::kNull:
      out->append("None");
      return;
    case PyValue::Kind::kBool:
      out->append(value.boolean ? "True" : "False");
      return;
    case PyValue::Kind::kInt:
      out->append(value.int_digits);
      return;
    case PyValue::Kind::kFloat:
      out->append(PyFloatRepr(value.number));
      return;
    case PyValue::Kind::kString:
      out->append(PyStrRepr(value.str));
      return;
    case PyValue::Kind::kArray:
      out->push_back('[');
      for (std::size_t i = 0; i < value.array.size(); ++i) {
        if (i > 0) out->append(", ");
        ReprAppend(value.array[i], out);
      }
      out->push_back(']');
      return;
    case PyValue::Kind::kObject:
      out->push_back('{');
      for (std::size_t i = 0; i < value.object.size(); ++i) {
        if (i > 0) out->append(", ");
        out->append(PyStrRepr(value.object[i].first));
        out->append(": ");
        ReprAppend(value.object[i].second, out);
      }
      out->push_back('}');
      return;
  }
}

}  // namespace

PyValue PyValue::String(std::string s) {
  PyValue v;
  v.kind = Kind::kString;
  v.str = std::move(s);
  return v;
}

const PyValue* PyValue::Find(std::string_view key) const {
  if (kind != Kind::kObject) return nullptr;
  for (const auto& [k, v] : object) {
    if (k == key) return &v;
  }
  return nullptr;
}

void PyValue::Set(std::string key, PyValue value) {
  for (auto& [k, v] : object) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  object.emplace_back(std::move(key), std::move(value));
}

absl::StatusOr<PyValue> ParsePyJson(std::string_view text) {
  TreeBuilder builder;
  const bool ok = nlohmann::json::sax_parse(text.begin(), text.end(), &builder);
  if (!ok) {
    return absl::InvalidArgumentError(builder.error().empty() ? std::string("invalid JSON") : builder.error());
  }
  return builder.Take();
}

std::string PyFloatRepr(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  // The shortest digits that round-trip, as Python's repr picks them; only the
  // layout below is Python's own.
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), x, std::chars_format::scientific);
  SIROCCO_CHECK(res.ec == std::errc(), "to_chars failed");
  const std::string_view sci(buf, static_cast<std::size_t>(res.ptr - buf));
  std::string out;
  std::size_t pos = 0;
  if (sci[0] == '-') {
    out.push_back('-');
    pos = 1;
  }
  const std::size_t e_pos = sci.find('e');
  std::string digits;
  for (std::size_t i = pos; i < e_pos; ++i) {
    if (sci[i] != '.') digits.push_back(sci[i]);
  }
  int exponent = 0;
  std::from_chars(sci.data() + e_pos + (sci[e_pos + 1] == '+' ? 2 : 1), sci.data() + sci.size(), exponent);
  const int decpt = exponent + 1;  // value = 0.DIGITS * 10^decpt
  const int n = static_cast<int>(digits.size());
  if (decpt <= -4 || decpt > 16) {
    out.push_back(digits[0]);
    if (n > 1) {
      out.push_back('.');
      out.append(digits, 1);
    }
    out.push_back('e');
    out.push_back(exponent < 0 ? '-' : '+');
    const int mag = exponent < 0 ? -exponent : exponent;
    if (mag < 10) out.push_back('0');
    out.append(std::to_string(mag));
  } else if (decpt <= 0) {
    out.append("0.");
    out.append(static_cast<std::size_t>(-decpt), '0');
    out.append(digits);
  } else if (decpt >= n) {
    out.append(digits);
    out.append(static_cast<std::size_t>(decpt - n), '0');
    out.append(".0");
  } else {
    out.append(digits, 0, static_cast<std::size_t>(decpt));
    out.push_back('.');
    out.append(digits, static_cast<std::size_t>(decpt));
  }
  return out;
}

void PyJsonQuoteAppend(std::string_view s, std::string* out) {
  out->push_back('"');
  for (const char c : s) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out->append("\\u");
          AppendHex(static_cast<unsigned char>(c), 4, out);
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

void PyJsonDumpsAppend(const PyValue& value, std::string* out) {
  switch (value.kind) {
    case PyValue::Kind::kNull:
      out->append("null");
      return;
    case PyValue::Kind::kBool:
      out->append(value.boolean ? "true" : "false");
      return;
    case PyValue::Kind::kInt:
      out->append(value.int_digits);
      return;
    case PyValue::Kind::kFloat:
      if (std::isnan(value.number)) {
        out->append("NaN");
      } else if (std::isinf(value.number)) {
        out->append(value.number > 0 ? "Infinity" : "-Infinity");
      } else {
        out->append(PyFloatRepr(value.number));
      }
      return;
    case PyValue::Kind::kString:
      PyJsonQuoteAppend(value.str, out);
      return;
    case PyValue::Kind::kArray:
      out->push_back('[');
      for (std::size_t i = 0; i < value.array.size(); ++i) {
        if (i > 0) out->append(", ");
        PyJsonDumpsAppend(value.array[i], out);
      }
      out->push_back(']');
      return;
    case PyValue::Kind::kObject:
      out->push_back('{');
      for (std::size_t i = 0; i < value.object.size(); ++i) {
        if (i > 0) out->append(", ");
        PyJsonQuoteAppend(value.object[i].first, out);
        out->append(": ");
        PyJsonDumpsAppend(value.object[i].second, out);
      }
      out->push_back('}');
      return;
  }
}

std::string PyJsonDumps(const PyValue& value) {
  std::string out;
  PyJsonDumpsAppend(value, &out);
  return out;
}

std::string PyStrRepr(std::string_view s) {
  const bool has_single = s.find('\'') != std::string_view::npos;
  const bool has_double = s.find('"') != std::string_view::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  std::size_t i = 0;
  while (i < s.size()) {
    const std::size_t start = i;
    const std::uint32_t cp = NextCodePoint(s, &i);
    if (cp == static_cast<std::uint32_t>(quote) || cp == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(cp));
    } else if (cp == '\t') {
      out.append("\\t");
    } else if (cp == '\n') {
      out.append("\\n");
    } else if (cp == '\r') {
      out.append("\\r");
    } else if (IsPrintable(cp)) {
      out.append(s.substr(start, i - start));
    } else if (cp <= 0xFF) {
      out.append("\\x");
      AppendHex(cp, 2, &out);
    } else if (cp <= 0xFFFF) {
      out.append("\\u");
      AppendHex(cp, 4, &out);
    } else {
      out.append("\\U");
      AppendHex(cp, 8, &out);
    }
  }
  out.push_back(quote);
  return out;
}

std::string PyRepr(const PyValue& value) {
  std::string out;
  ReprAppend(value, &out);
  return out;
}

}  // namespace sirocco::text
