// JSON exactly as Python's `json` module reads and writes it, for the output
// parser: mistral-common turns a generated tool call's argument text into a
// value with `json.loads` and stores it back as `json.dumps(value)` (default
// settings), so the argument string a client receives is that normalisation,
// not the model's raw text. nlohmann::json cannot reproduce it (big integers,
// NaN/Infinity, lone surrogates, Python's float repr, duplicate keys keeping
// the first key's position with the last value), hence this small reader.
//
// Pure functions over values; safe to call from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sirocco::text {

// A value as `json.loads` builds it.
struct PyJsonValue {
  enum class Kind : std::uint8_t { kNull, kBool, kInt, kFloat, kString, kArray, kObject };

  Kind kind = Kind::kNull;
  bool boolean = false;  // kBool
  double number = 0.0;   // kFloat (may be NaN or +-inf: Python accepts them)
  // kInt: the canonical decimal digits of the (arbitrary precision) integer,
  // with a leading '-' when negative. kString: the string's code points in
  // UTF-8, where a lone surrogate from a `\uD800`-style escape is kept as its
  // 3-byte generalised UTF-8 form (Python strings may hold them).
  std::string text;
  std::vector<PyJsonValue> items;  // kArray elements, or kObject values
  std::vector<std::string> keys;   // kObject keys, parallel to `items`, in
                                   // first-insertion order
};

// The member `key` of a kObject value, or nullptr (also for other kinds).
const PyJsonValue* FindMember(const PyJsonValue& object, std::string_view key);

// `json.loads(text)`: strict JSON plus NaN, Infinity and -Infinity; raw
// control characters inside strings are rejected; a leading U+FEFF is an
// error; nesting deeper than 512 levels is rejected (Python would raise
// RecursionError somewhat deeper). InvalidArgument on any syntax error.
[[nodiscard]] absl::StatusOr<PyJsonValue> ParsePythonJson(std::string_view text);

// `json.dumps(value)`: ensure_ascii, ", " and ": " separators, Python's
// shortest float repr, NaN/Infinity spelled as Python does.
std::string DumpPythonJson(const PyJsonValue& value);

// A string value as valid UTF-8 for the wire: each lone surrogate (which
// UTF-8 cannot carry, and which Python cannot encode either) becomes U+FFFD.
std::string PyStringToUtf8(std::string_view text);

}  // namespace sirocco::text
