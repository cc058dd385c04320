// JSON values as Python's `json` module and pydantic see them, for the
// instruct format. mistral-common renders tool definitions, tool-call
// arguments, tool results and model settings with `json.dumps(...,
// ensure_ascii=False)` after a `json.loads`, so the token ids depend on
// Python's exact output: insertion-ordered objects (a repeated key keeps its
// first position and its last value), integers of any length, floats printed
// as `repr(float)`, ", " and ": " separators. PyValue keeps what that output
// needs and nothing else; PyJsonDumps and PyRepr print it the way Python does.
//
// Plain data and pure functions: safe to use from any thread.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace sirocco::text {

struct PyValue {
  enum class Kind : unsigned char { kNull, kBool, kInt, kFloat, kString, kArray, kObject };

  Kind kind = Kind::kNull;
  bool boolean = false;
  std::string int_digits;  // kInt: canonical decimal ("-12", "0"), any length
  double number = 0.0;     // kFloat
  std::string str;         // kString: UTF-8
  std::vector<PyValue> array;
  std::vector<std::pair<std::string, PyValue>> object;  // insertion order, keys unique

  static PyValue String(std::string s);

  bool is_null() const { return kind == Kind::kNull; }
  bool is_string() const { return kind == Kind::kString; }
  bool is_object() const { return kind == Kind::kObject; }
  bool is_array() const { return kind == Kind::kArray; }
  bool is_number() const { return kind == Kind::kInt || kind == Kind::kFloat; }

  // The member named `key` of an object, or nullptr.
  const PyValue* Find(std::string_view key) const;
  // Sets `key` as Python's dict assignment does: an existing key keeps its place.
  void Set(std::string key, PyValue value);
};

// Parses JSON into a PyValue, as `json.loads` (and pydantic's JSON input)
// would, with nlohmann's strict parser. Known gaps, all outside RFC 8259:
// Python also accepts NaN/Infinity literals, lone surrogate escapes and
// numbers that overflow to infinity; these are errors here. The error message
// is the parser's.
[[nodiscard]] absl::StatusOr<PyValue> ParsePyJson(std::string_view text);

// `json.dumps(value, ensure_ascii=False)`.
std::string PyJsonDumps(const PyValue& value);
void PyJsonDumpsAppend(const PyValue& value, std::string* out);
// `json.dumps(s, ensure_ascii=False)` of one string (with the quotes).
void PyJsonQuoteAppend(std::string_view s, std::string* out);

// `repr(value)` of the Python object json.loads would return (for error
// messages that quote the offending input, as mistral-common's do).
std::string PyRepr(const PyValue& value);
// `repr(s)` of a Python str.
std::string PyStrRepr(std::string_view s);
// `repr(x)` of a Python float ("1.0", "1e-05", "1e+16", "inf", "nan").
std::string PyFloatRepr(double x);

}  // namespace sirocco::text
