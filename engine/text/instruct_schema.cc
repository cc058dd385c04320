#include "engine/text/instruct_schema.h"

#define PCRE2_CODE_UNIT_WIDTH 8

#include <pcre2.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "engine/text/instruct_strings.h"

namespace sirocco::text {
namespace {

// One meta-schema violation and how deep in the instance it sits: jsonschema's
// best_match prefers the shallowest error, then the first found.
struct SchemaIssue {
  int depth;
  std::string message;
};

class MetaSchemaChecker {
 public:
  std::optional<std::string> Best() const {
    const SchemaIssue* best = nullptr;
    for (const SchemaIssue& issue : issues_) {
      if (best == nullptr || issue.depth < best->depth) best = &issue;
    }
    if (best == nullptr) return std::nullopt;
    return best->message;
  }

  // The value must be a schema: an object or a boolean.
  void Schema(const PyValue& v, int depth) {
    if (v.kind == PyValue::Kind::kBool) return;
    if (!v.is_object()) {
      Add(depth, Cat(PyRepr(v), " is not of type 'object', 'boolean'"));
      return;
    }
    for (const auto& [key, value] : v.object) Keyword(key, value, depth + 1);
  }

 private:
  void Add(int depth, std::string message) { issues_.push_back({depth, std::move(message)}); }

  static bool IsNumber(const PyValue& v) { return v.is_number(); }
  static bool IsInteger(const PyValue& v) {
    return v.kind == PyValue::Kind::kInt ||
           (v.kind == PyValue::Kind::kFloat && std::isfinite(v.number) && std::floor(v.number) == v.number);
  }
  static bool IsNegative(const PyValue& v) {
    return v.kind == PyValue::Kind::kInt ? (!v.int_digits.empty() && v.int_digits[0] == '-') : v.number < 0;
  }
  static bool IsPositive(const PyValue& v) {
    return v.kind == PyValue::Kind::kInt ? (v.int_digits != "0" && v.int_digits[0] != '-') : v.number > 0;
  }
  static bool Equal(const PyValue& a, const PyValue& b) {
    if (a.kind != b.kind) return false;
    switch (a.kind) {
      case PyValue::Kind::kNull:
        return true;
      case PyValue::Kind::kBool:
        return a.boolean == b.boolean;
      case PyValue::Kind::kInt:
        return a.int_digits == b.int_digits;
      case PyValue::Kind::kFloat:
        return a.number == b.number;
      case PyValue::Kind::kString:
        return a.str == b.str;
      case PyValue::Kind::kArray:
        if (a.array.size() != b.array.size()) return false;
        for (std::size_t i = 0; i < a.array.size(); ++i) {
          if (!Equal(a.array[i], b.array[i])) return false;
        }
        return true;
      case PyValue::Kind::kObject:
        if (a.object.size() != b.object.size()) return false;
        for (const auto& [k, v] : a.object) {
          const PyValue* other = b.Find(k);
          if (other == nullptr || !Equal(v, *other)) return false;
        }
        return true;
    }
    return false;
  }
  static bool Unique(const PyValue& arr) {
    for (std::size_t i = 0; i < arr.array.size(); ++i) {
      for (std::size_t j = i + 1; j < arr.array.size(); ++j) {
        if (Equal(arr.array[i], arr.array[j])) return false;
      }
    }
    return true;
  }
  static bool IsRegex(const std::string& pattern) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF, &error,
                                     &offset, nullptr);
    if (code == nullptr) return false;
    pcre2_code_free(code);
    return true;
  }
  static bool IsSimpleType(const PyValue& v) {
    if (!v.is_string()) return false;
    for (const char* t : {"array", "boolean", "integer", "null", "number", "object", "string"}) {
      if (v.str == t) return true;
    }
    return false;
  }
  static bool IsStringArray(const PyValue& v) {
    if (!v.is_array()) return false;
    for (const PyValue& e : v.array) {
      if (!e.is_string()) return false;
    }
    return Unique(v);
  }
  // Inside an anyOf, a branch fails as a whole: only whether it holds matters.
  static bool IsValidSchema(const PyValue& v) {
    MetaSchemaChecker sub;
    sub.Schema(v, 0);
    return sub.issues_.empty();
  }

  void TypeIs(const PyValue& v, bool ok, std::string_view type, int depth) {
    if (!ok) Add(depth, Cat(PyRepr(v), " is not of type '", type, "'"));
  }
  void NonNegativeInteger(const PyValue& v, int depth) {
    if (!IsInteger(v)) {
      TypeIs(v, false, "integer", depth);
    } else if (IsNegative(v)) {
      Add(depth, Cat(PyRepr(v), " is less than the minimum of 0"));
    }
  }
  void StringArray(const PyValue& v, int depth) {
    if (!v.is_array()) {
      TypeIs(v, false, "array", depth);
      return;
    }
    for (const PyValue& e : v.array) TypeIs(e, e.is_string(), "string", depth + 1);
    if (!Unique(v)) Add(depth, Cat(PyRepr(v), " has non-unique elements"));
  }
  void SchemaArray(const PyValue& v, int depth) {
    if (!v.is_array()) {
      TypeIs(v, false, "array", depth);
      return;
    }
    if (v.array.empty()) Add(depth, Cat(PyRepr(v), " should be non-empty"));
    for (const PyValue& e : v.array) Schema(e, depth + 1);
  }
  void SchemaMap(const PyValue& v, int depth, bool regex_keys) {
    if (!v.is_object()) {
      TypeIs(v, false, "object", depth);
      return;
    }
    for (const auto& [key, sub] : v.object) {
      if (regex_keys && !IsRegex(key)) Add(depth, Cat(PyStrRepr(key), " is not a 'regex'"));
      Schema(sub, depth + 1);
    }
  }
  // anyOf branches fail as a whole, with the instance named once.
  void AnyOfFailed(const PyValue& v, int depth) {
    Add(depth, Cat(PyRepr(v), " is not valid under any of the given schemas"));
  }

  void Keyword(const std::string& key, const PyValue& v, int depth) {
    if (key == "$id" || key == "$schema" || key == "$ref" || key == "$comment" || key == "title" ||
        key == "description" || key == "format" || key == "contentMediaType" || key == "contentEncoding") {
      TypeIs(v, v.is_string(), "string", depth);
    } else if (key == "readOnly" || key == "uniqueItems") {
      TypeIs(v, v.kind == PyValue::Kind::kBool, "boolean", depth);
    } else if (key == "examples" || key == "enum") {
      TypeIs(v, v.is_array(), "array", depth);
    } else if (key == "multipleOf") {
      if (!IsNumber(v)) {
        TypeIs(v, false, "number", depth);
      } else if (!IsPositive(v)) {
        Add(depth, Cat(PyRepr(v), " is less than or equal to the minimum of 0"));
      }
    } else if (key == "maximum" || key == "exclusiveMaximum" || key == "minimum" || key == "exclusiveMinimum") {
      TypeIs(v, IsNumber(v), "number", depth);
    } else if (key == "maxLength" || key == "minLength" || key == "maxItems" || key == "minItems" ||
               key == "maxProperties" || key == "minProperties") {
      NonNegativeInteger(v, depth);
    } else if (key == "pattern") {
      if (!v.is_string()) {
        TypeIs(v, false, "string", depth);
      } else if (!IsRegex(v.str)) {
        Add(depth, Cat(PyRepr(v), " is not a 'regex'"));
      }
    } else if (key == "additionalItems" || key == "contains" || key == "additionalProperties" ||
               key == "propertyNames" || key == "if" || key == "then" || key == "else" || key == "not") {
      Schema(v, depth);
    } else if (key == "items") {
      bool ok = IsValidSchema(v);
      if (!ok && v.is_array() && !v.array.empty()) {
        ok = std::all_of(v.array.begin(), v.array.end(), IsValidSchema);
      }
      if (!ok) AnyOfFailed(v, depth);
    } else if (key == "required") {
      StringArray(v, depth);
    } else if (key == "definitions" || key == "properties") {
      SchemaMap(v, depth, /*regex_keys=*/false);
    } else if (key == "patternProperties") {
      SchemaMap(v, depth, /*regex_keys=*/true);
    } else if (key == "dependencies") {
      if (!v.is_object()) {
        TypeIs(v, false, "object", depth);
        return;
      }
      for (const auto& [name, dep] : v.object) {
        if (!IsValidSchema(dep) && !IsStringArray(dep)) AnyOfFailed(dep, depth + 1);
      }
    } else if (key == "type") {
      bool ok = IsSimpleType(v);
      if (!ok && v.is_array() && !v.array.empty() && Unique(v)) {
        ok = true;
        for (const PyValue& t : v.array) ok = ok && IsSimpleType(t);
      }
      if (!ok) AnyOfFailed(v, depth);
    } else if (key == "allOf" || key == "anyOf" || key == "oneOf") {
      SchemaArray(v, depth);
    }
    // Every other keyword ("default", "const", unknown ones) accepts anything.
  }

  std::vector<SchemaIssue> issues_;
};

}  // namespace

std::optional<std::string> Draft7SchemaError(const PyValue& schema) {
  MetaSchemaChecker checker;
  checker.Schema(schema, 0);
  return checker.Best();
}

}  // namespace sirocco::text
