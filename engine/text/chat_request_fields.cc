#include "engine/text/chat_request_fields.h"

#include <charconv>
#include <cmath>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "engine/status_macros.h"
#include "engine/text/instruct_strings.h"

namespace sirocco::text {
namespace fields {

absl::Status PydanticErrors(const std::vector<Issue>& issues) {
  std::string message = issues.size() == 1 ? "1 validation error for ChatCompletionRequest"
                                           : Cat(issues.size(), " validation errors for ChatCompletionRequest");
  for (const Issue& issue : issues) {
    // pydantic prints no location line for an error at the root.
    CatAppend(&message, issue.loc.empty() ? "" : "\n", issue.loc, "\n  ", issue.msg, " [type=", issue.type, "]");
  }
  return ChatError(ChatErrorKind::kValidationError, message);
}

std::string Join(std::string_view loc, std::string_view part) {
  return loc.empty() ? std::string(part) : Cat(loc, ".", part);
}
std::string Join(std::string_view loc, std::size_t index) { return Join(loc, std::to_string(index)); }

// The first error of a PydanticErrors status, parsed back.
Issue FirstIssue(const absl::Status& status) {
  const std::string_view m = ToStd(status.message());
  std::string_view rest = m.substr(m.find('\n') + 1);
  Issue issue;
  const std::size_t loc_end = rest.find("\n  ");
  issue.loc = std::string(rest.substr(0, loc_end));
  rest = rest.substr(loc_end + 3);
  rest = rest.substr(0, rest.find('\n'));
  const std::size_t type_at = rest.rfind(" [type=");
  issue.msg = std::string(rest.substr(0, type_at));
  issue.type = std::string(rest.substr(type_at + 7, rest.size() - type_at - 8));
  return issue;
}

absl::Status Missing(std::string_view loc) { return PydanticError(loc, "missing", "Field required"); }

absl::Status ExpectObject(const PyValue& v, std::string_view loc) {
  if (!v.is_object()) return PydanticError(loc, "model_type", "Input should be an object");
  return absl::OkStatus();
}

absl::Status ReadStr(const PyValue& v, std::string_view loc, std::string* out) {
  if (!v.is_string()) return PydanticError(loc, "string_type", "Input should be a valid string");
  *out = v.str;
  return absl::OkStatus();
}

absl::Status ReadOptStr(const PyValue* v, std::string_view loc, std::optional<std::string>* out) {
  if (v == nullptr || v->is_null()) return absl::OkStatus();
  std::string s;
  SIROCCO_RETURN_IF_ERROR(ReadStr(*v, loc, &s));
  *out = std::move(s);
  return absl::OkStatus();
}

// pydantic's lax boolean: true/false, 0/1 and the usual words.
absl::Status ReadBool(const PyValue& v, std::string_view loc, bool* out) {
  const absl::Status parse_error =
      PydanticError(loc, "bool_parsing", "Input should be a valid boolean, unable to interpret input");
  switch (v.kind) {
    case PyValue::Kind::kBool:
      *out = v.boolean;
      return absl::OkStatus();
    case PyValue::Kind::kInt:
      if (v.int_digits != "0" && v.int_digits != "1") return parse_error;
      *out = v.int_digits == "1";
      return absl::OkStatus();
    case PyValue::Kind::kFloat:
      if (v.number != 0.0 && v.number != 1.0) return parse_error;
      *out = v.number == 1.0;
      return absl::OkStatus();
    case PyValue::Kind::kString: {
      const std::string s = absl::AsciiStrToLower(v.str);
      for (const char* t : {"1", "on", "t", "true", "y", "yes"}) {
        if (s == t) return (*out = true, absl::OkStatus());
      }
      for (const char* f : {"0", "off", "f", "false", "n", "no"}) {
        if (s == f) return (*out = false, absl::OkStatus());
      }
      return parse_error;
    }
    default:
      return PydanticError(loc, "bool_type", "Input should be a valid boolean");
  }
}

// pydantic's lax float, with the request's `ge`/`le` bounds.
absl::Status ReadFloat(const PyValue& v, std::string_view loc, double lo, double hi, double* out) {
  double x = 0;
  switch (v.kind) {
    case PyValue::Kind::kBool:
      x = v.boolean ? 1.0 : 0.0;
      break;
    case PyValue::Kind::kInt:
    case PyValue::Kind::kFloat:
      x = v.kind == PyValue::Kind::kFloat ? v.number : std::strtod(v.int_digits.c_str(), nullptr);
      break;
    case PyValue::Kind::kString: {
      const std::string_view s = ToStd(absl::StripAsciiWhitespace(v.str));
      const auto res = std::from_chars(s.data(), s.data() + s.size(), x);
      if (s.empty() || res.ec != std::errc() || res.ptr != s.data() + s.size()) {
        return PydanticError(loc, "float_parsing",
                             "Input should be a valid number, unable to parse string as a number");
      }
      break;
    }
    default:
      return PydanticError(loc, "float_type", "Input should be a valid number");
  }
  if (!(x >= lo)) {
    return PydanticError(loc, "greater_than_equal", Cat("Input should be greater than or equal to ", lo));
  }
  if (!(x <= hi)) return PydanticError(loc, "less_than_equal", Cat("Input should be less than or equal to ", hi));
  *out = x;
  return absl::OkStatus();
}

// pydantic's lax `int | None` with `ge=0`.
absl::Status ReadOptNonNegativeInt(const PyValue* v, std::string_view loc, std::optional<std::int64_t>* out) {
  if (v == nullptr || v->is_null()) return absl::OkStatus();
  std::int64_t x = 0;
  const absl::Status type_error = PydanticError(loc, "int_type", "Input should be a valid integer");
  switch (v->kind) {
    case PyValue::Kind::kBool:
      x = v->boolean ? 1 : 0;
      break;
    case PyValue::Kind::kInt:
    case PyValue::Kind::kString: {
      const std::string_view s =
          v->kind == PyValue::Kind::kInt ? std::string_view(v->int_digits) : ToStd(absl::StripAsciiWhitespace(v->str));
      const auto res = std::from_chars(s.data(), s.data() + s.size(), x);
      if (s.empty() || res.ec != std::errc() || res.ptr != s.data() + s.size()) {
        return PydanticError(loc, "int_parsing",
                             "Input should be a valid integer, unable to parse string as an integer");
      }
      break;
    }
    case PyValue::Kind::kFloat:
      if (!std::isfinite(v->number) || std::floor(v->number) != v->number) {
        return PydanticError(loc, "int_from_float",
                             "Input should be a valid integer, got a number with a fractional part");
      }
      x = static_cast<std::int64_t>(v->number);
      break;
    default:
      return type_error;
  }
  if (x < 0) return PydanticError(loc, "greater_than_equal", "Input should be greater than or equal to 0");
  *out = x;
  return absl::OkStatus();
}

std::string TagText(const PyValue& v) {
  if (v.is_string()) return v.str;
  return PyRepr(v);
}

}  // namespace fields

std::string_view ChatErrorKindName(ChatErrorKind kind) {
  switch (kind) {
    case ChatErrorKind::kValidationError:
      return "ValidationError";
    case ChatErrorKind::kInvalidRequest:
      return "InvalidRequestException";
    case ChatErrorKind::kInvalidMessageStructure:
      return "InvalidMessageStructureException";
    case ChatErrorKind::kInvalidSystemPrompt:
      return "InvalidSystemPromptException";
    case ChatErrorKind::kInvalidUserMessage:
      return "InvalidUserMessageException";
    case ChatErrorKind::kInvalidAssistantMessage:
      return "InvalidAssistantMessageException";
    case ChatErrorKind::kInvalidToolMessage:
      return "InvalidToolMessageException";
    case ChatErrorKind::kInvalidFunctionCall:
      return "InvalidFunctionCallException";
    case ChatErrorKind::kInvalidTool:
      return "InvalidToolException";
    case ChatErrorKind::kInvalidToolSchema:
      return "InvalidToolSchemaException";
    case ChatErrorKind::kTokenizer:
      return "TokenizerException";
    case ChatErrorKind::kUnsupportedTokenizerFeature:
      return "UnsupportedTokenizerFeatureException";
    case ChatErrorKind::kValueError:
      return "ValueError";
    case ChatErrorKind::kAssertionError:
      return "AssertionError";
    case ChatErrorKind::kRuntimeError:
      return "RuntimeError";
  }
  return "Exception";
}

absl::Status ChatError(ChatErrorKind kind, std::string_view message) {
  return absl::InvalidArgumentError(Cat(ChatErrorKindName(kind), ": ", message));
}

absl::Status PydanticError(std::string_view loc, std::string_view type, std::string_view msg) {
  return fields::PydanticErrors({{std::string(loc), std::string(type), std::string(msg)}});
}

std::string ChatErrorClass(const absl::Status& status) {
  if (status.code() != absl::StatusCode::kInvalidArgument) return "";
  const std::string_view m = ToStd(status.message());
  const std::size_t colon = m.find(": ");
  if (colon == std::string_view::npos) return "";
  const std::string_view name = m.substr(0, colon);
  for (int k = 0; k <= static_cast<int>(ChatErrorKind::kRuntimeError); ++k) {
    if (ChatErrorKindName(static_cast<ChatErrorKind>(k)) == name) return std::string(name);
  }
  return "";
}

}  // namespace sirocco::text
