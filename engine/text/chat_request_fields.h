// pydantic's reading of JSON fields, as ChatCompletionRequest's models use
// it (mistral-common's MistralBase: extra fields forbidden, "lax" scalar
// conversions), and its error report. Internal to chat_request.cc.
//
// Pure functions: safe to call from any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "engine/text/chat_request.h"
#include "engine/text/instruct_json.h"
#include "engine/text/instruct_strings.h"

namespace sirocco::text::fields {

// One pydantic error: where, its type ("missing", "string_type", ...) and message.
struct Issue {
  std::string loc;
  std::string type;
  std::string msg;
};

// A ValidationError listing `issues` in order, printed as pydantic prints them.
[[nodiscard]] absl::Status PydanticErrors(const std::vector<Issue>& issues);
// The first error of a PydanticErrors status, parsed back.
Issue FirstIssue(const absl::Status& status);

// pydantic's location strings: "messages.0.user.content".
std::string Join(std::string_view loc, std::string_view part);
std::string Join(std::string_view loc, std::size_t index);

[[nodiscard]] absl::Status Missing(std::string_view loc);
[[nodiscard]] absl::Status ExpectObject(const PyValue& v, std::string_view loc);
[[nodiscard]] absl::Status ReadStr(const PyValue& v, std::string_view loc, std::string* out);
[[nodiscard]] absl::Status ReadOptStr(const PyValue* v, std::string_view loc, std::optional<std::string>* out);
// pydantic's lax boolean: true/false, 0/1 and the usual words.
[[nodiscard]] absl::Status ReadBool(const PyValue& v, std::string_view loc, bool* out);
// pydantic's lax float, within [lo, hi] (the request's ge/le bounds).
[[nodiscard]] absl::Status ReadFloat(const PyValue& v, std::string_view loc, double lo, double hi, double* out);
// pydantic's lax `int | None` with `ge=0`.
[[nodiscard]] absl::Status ReadOptNonNegativeInt(const PyValue* v, std::string_view loc,
                                                 std::optional<std::int64_t>* out);
// The tag of a discriminated union as pydantic quotes it: str() of the value.
std::string TagText(const PyValue& v);

// One pydantic model being read: fields are taken in declaration order and
// any key left over is an "extra_forbidden" error (mistral-common's models
// forbid extra fields), reported after the fields' own errors as pydantic does.
class Fields {
 public:
  Fields(const PyValue& object, std::string loc) : object_(object), loc_(std::move(loc)) {}

  const PyValue* Take(std::string_view name) {
    taken_.emplace_back(name);
    return object_.Find(name);
  }
  std::string Loc(std::string_view name) const { return Join(loc_, name); }
  const std::string& loc() const { return loc_; }

  absl::Status CheckNoExtras() const {
    for (const auto& [key, value] : object_.object) {
      bool known = false;
      for (const std::string& t : taken_) known = known || t == key;
      if (!known) return PydanticError(Join(loc_, key), "extra_forbidden", "Extra inputs are not permitted");
    }
    return absl::OkStatus();
  }

 private:
  const PyValue& object_;
  std::string loc_;
  std::vector<std::string> taken_;
};

// A str-enum field: `names[i]` is the value of enumerator i.
template <typename E, std::size_t N>
absl::Status ReadEnum(const PyValue& v, std::string_view loc, const std::string_view (&names)[N], E* out) {
  if (v.is_string()) {
    for (std::size_t i = 0; i < N; ++i) {
      if (v.str == names[i]) return (*out = static_cast<E>(i), absl::OkStatus());
    }
  }
  std::string expected;
  for (std::size_t i = 0; i < N; ++i) {
    CatAppend(&expected, i == 0 ? "" : i + 1 == N ? " or " : ", ", "'", names[i], "'");
  }
  return PydanticError(loc, "enum", Cat("Input should be ", expected));
}

}  // namespace sirocco::text::fields
