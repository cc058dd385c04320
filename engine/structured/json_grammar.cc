// JsonGrammar::Compile: a JSON schema -> grammar nodes (json_grammar_impl.h).
//
// Each schema object becomes one node (or a union of one node per JSON type
// it allows); $ref targets are compiled once and referenced by node id, so
// recursive schemas become cyclic graphs. Finish() then drops alternatives
// that admit no finite document (so a matcher never walks into a dead end),
// flattens unions, and builds the key tries.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/structured/json_grammar.h"
#include "engine/structured/json_grammar_impl.h"
#include "nlohmann/json.hpp"

namespace sirocco::engine::structured {

void ByteTrie::Insert(std::string_view bytes, std::int32_t index) {
  std::uint32_t node = 0;
  for (const char ch : bytes) {
    const auto b = static_cast<std::uint8_t>(ch);
    const std::int32_t child = Child(node, b);
    if (child >= 0) {
      node = static_cast<std::uint32_t>(child);
      continue;
    }
    const auto fresh = static_cast<std::uint32_t>(nodes.size());
    nodes.emplace_back();
    auto& children = nodes[node].children;
    children.insert(std::lower_bound(children.begin(), children.end(), std::make_pair(b, std::uint32_t{0})),
                    std::make_pair(b, fresh));
    node = fresh;
  }
  nodes[node].terminal = index;
}

void ByteTrie::IndexSubtrees() {
  // Children always have larger ids than their parent: fill bottom-up.
  for (std::size_t i = nodes.size(); i-- > 0;) {
    Node& n = nodes[i];
    n.indices.clear();
    if (n.terminal >= 0) n.indices.push_back(static_cast<std::uint16_t>(n.terminal));
    for (const auto& [b, child] : n.children) {
      const auto& ci = nodes[child].indices;
      n.indices.insert(n.indices.end(), ci.begin(), ci.end());
    }
    std::sort(n.indices.begin(), n.indices.end());
  }
}

JsonGrammar::JsonGrammar(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
JsonGrammar::~JsonGrammar() = default;

namespace {

using Json = nlohmann::ordered_json;

constexpr std::size_t kMaxProperties = 4096;
constexpr int kNumberScaleDigits = 4;  // fraction digits of a bounded `number`

// Annotations (title, description, default, ...) and unknown keywords are
// ignored, as validators do.
const std::set<std::string, std::less<>>& Unsupported() {
  static const auto* s = new std::set<std::string, std::less<>>{"pattern",
                                                                "patternProperties",
                                                                "propertyNames",
                                                                "multipleOf",
                                                                "uniqueItems",
                                                                "contains",
                                                                "minContains",
                                                                "maxContains",
                                                                "minProperties",
                                                                "maxProperties",
                                                                "dependentRequired",
                                                                "dependentSchemas",
                                                                "dependencies",
                                                                "not",
                                                                "if",
                                                                "then",
                                                                "else",
                                                                "unevaluatedProperties",
                                                                "unevaluatedItems",
                                                                "additionalItems",
                                                                "$dynamicRef",
                                                                "$recursiveRef"};
  return *s;
}
const std::set<std::string, std::less<>>& Validation() {
  static const auto* s = new std::set<std::string, std::less<>>{"type",
                                                                "enum",
                                                                "const",
                                                                "properties",
                                                                "required",
                                                                "additionalProperties",
                                                                "items",
                                                                "prefixItems",
                                                                "minItems",
                                                                "maxItems",
                                                                "minLength",
                                                                "maxLength",
                                                                "minimum",
                                                                "maximum",
                                                                "exclusiveMinimum",
                                                                "exclusiveMaximum",
                                                                "anyOf",
                                                                "oneOf",
                                                                "allOf",
                                                                "$ref"};
  return *s;
}

std::string PointerToken(std::string_view key) {
  std::string out;
  for (const char ch : key) {
    if (ch == '~') {
      out += "~0";
    } else if (ch == '/') {
      out += "~1";
    } else {
      out += ch;
    }
  }
  return out;
}
std::string Child(const std::string& ptr, const std::string& key) { return absl::StrCat(ptr, "/", PointerToken(key)); }
std::string Child(const std::string& ptr, std::size_t index) { return absl::StrCat(ptr, "/", index); }

absl::Status Error(const std::string& ptr, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(ptr.empty() ? "(root)" : ptr, ": ", why));
}

std::string Compact(const Json& v) { return v.dump(-1, ' ', false, Json::error_handler_t::strict); }

enum TypeBit : unsigned {
  kTObject = 1,
  kTArray = 2,
  kTString = 4,
  kTInteger = 8,
  kTNumber = 16,
  kTBoolean = 32,
  kTNull = 64,
  kTAll = 127
};

bool ValueHasType(const Json& v, unsigned types) {
  if (v.is_object()) return types & kTObject;
  if (v.is_array()) return types & kTArray;
  if (v.is_string()) return types & kTString;
  if (v.is_boolean()) return types & kTBoolean;
  if (v.is_null()) return types & kTNull;
  if (types & kTNumber) return true;
  if (!(types & kTInteger)) return false;
  if (v.is_number_integer()) return true;
  const double d = v.get<double>();
  return std::isfinite(d) && std::floor(d) == d;
}

// floor(x * 10^digits) for a finite double, exactly.
Int128 ScaledFloor(double x, int digits) {
  int exp = 0;
  const double frac = std::frexp(x, &exp);
  Int128 m = static_cast<Int128>(static_cast<std::int64_t>(std::ldexp(frac, 53)));
  for (int i = 0; i < digits; ++i) m *= 10;
  const int shift = exp - 53;
  if (shift >= 0) return m << shift;
  if (-shift >= 120) return m < 0 ? -1 : 0;
  return m >> (-shift);  // arithmetic: rounds toward -infinity
}
Int128 ScaledCeil(double x, int digits) { return -ScaledFloor(-x, digits); }

class Compiler {
 public:
  Compiler(const Json& doc, JsonGrammar::Impl* g) : doc_(doc), g_(*g) {}

  absl::Status Run() {
    NewNode(NodeKind::kRoot);
    auto root = Ref("", "", 0);
    if (!root.ok()) return root.status();
    g_.value = *root;
    return Finish();
  }

  void RunAnyObjectOrArray() {
    NewNode(NodeKind::kRoot);
    const std::uint32_t any = Any();
    const std::uint32_t u = NewNode(NodeKind::kUnion);
    g_.nodes[u].members = {g_.nodes[any].members[0], g_.nodes[any].members[1]};
    g_.value = u;
    (void)Finish();
  }

 private:
  std::uint32_t NewNode(NodeKind kind) {
    g_.nodes.emplace_back();
    g_.nodes.back().kind = kind;
    return static_cast<std::uint32_t>(g_.nodes.size() - 1);
  }

  std::uint32_t Literal(std::vector<std::string> literals) {
    std::sort(literals.begin(), literals.end());
    literals.erase(std::unique(literals.begin(), literals.end()), literals.end());
    const std::uint32_t id = NewNode(NodeKind::kLiteral);
    ByteTrie trie;
    for (std::size_t i = 0; i < literals.size(); ++i) trie.Insert(literals[i], static_cast<std::int32_t>(i));
    g_.tries.push_back(std::move(trie));
    g_.nodes[id].literal_trie = static_cast<std::uint32_t>(g_.tries.size() - 1);
    g_.nodes[id].literals = std::move(literals);
    return id;
  }

  // The any-value grammar: objects, arrays, strings, numbers, true/false/null.
  std::uint32_t Any() {
    if (any_ >= 0) return static_cast<std::uint32_t>(any_);
    const std::uint32_t u = NewNode(NodeKind::kUnion);
    any_ = u;
    const std::uint32_t obj = NewNode(NodeKind::kObject);
    g_.nodes[obj].additional = static_cast<std::int32_t>(u);
    const std::uint32_t arr = NewNode(NodeKind::kArray);
    g_.nodes[arr].items = static_cast<std::int32_t>(u);
    const std::uint32_t str = NewNode(NodeKind::kString);
    const std::uint32_t num = NewNode(NodeKind::kNumber);
    const std::uint32_t lit = Literal({"true", "false", "null"});
    g_.nodes[u].members = {obj, arr, str, num, lit};
    return u;
  }

  // A $ref target (or the root, pointer ""), compiled once.
  absl::StatusOr<std::uint32_t> Ref(const std::string& pointer, const std::string& from, int depth) {
    if (const auto it = refs_.find(pointer); it != refs_.end()) return it->second;
    const Json* target = &doc_;
    std::size_t pos = 0;
    while (pos < pointer.size()) {
      const std::size_t next = std::min(pointer.find('/', pos + 1), pointer.size());
      std::string token;
      for (std::size_t i = pos + 1; i < next; ++i) {
        if (pointer[i] == '~' && i + 1 < next && (pointer[i + 1] == '0' || pointer[i + 1] == '1')) {
          token += pointer[i + 1] == '0' ? '~' : '/';
          ++i;
        } else {
          token += pointer[i];
        }
      }
      if (target->is_object() && target->contains(token)) {
        target = &(*target)[token];
      } else if (target->is_array() && !token.empty() && token.find_first_not_of("0123456789") == std::string::npos &&
                 std::stoul(token) < target->size()) {
        target = &(*target)[std::stoul(token)];
      } else {
        return Error(from, absl::StrCat("$ref target '#", pointer, "' does not exist"));
      }
      pos = next;
    }
    const std::uint32_t placeholder = NewNode(NodeKind::kUnion);
    refs_[pointer] = placeholder;
    auto body = Schema(*target, pointer, depth + 1);
    if (!body.ok()) return body.status();
    g_.nodes[placeholder].members = {*body};
    return placeholder;
  }

  absl::StatusOr<std::uint32_t> Schema(const Json& s, const std::string& ptr, int depth) {
    if (depth > kMaxSchemaDepth) return Error(ptr, absl::StrCat("schema nested deeper than ", kMaxSchemaDepth));
    if (s.is_boolean()) {
      if (s.get<bool>()) return Any();
      return NewNode(NodeKind::kUnion);  // `false`: no document (pruned by Finish)
    }
    if (!s.is_object()) return Error(ptr, "a schema must be an object or a boolean");
    std::vector<std::string> validation;
    for (const auto& [key, value] : s.items()) {
      if (Unsupported().count(key)) return Error(Child(ptr, key), absl::StrCat("unsupported keyword '", key, "'"));
      if (Validation().count(key)) validation.push_back(key);
    }
    auto only = [&](std::initializer_list<std::string_view> allowed, const std::string& with) -> absl::Status {
      for (const std::string& key : validation) {
        if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
          return Error(Child(ptr, key), absl::StrCat("keyword '", key, "' next to ", with, " is unsupported"));
        }
      }
      return absl::OkStatus();
    };
    if (validation.empty()) return Any();
    if (s.contains("$ref")) {
      if (auto st = only({"$ref"}, "$ref"); !st.ok()) return st;
      const Json& ref = s["$ref"];
      if (!ref.is_string()) return Error(Child(ptr, "$ref"), "must be a string");
      const std::string r = ref.get<std::string>();
      if (r != "#" && r.rfind("#/", 0) != 0) {
        return Error(Child(ptr, "$ref"), absl::StrCat("unsupported reference '", r, "' (only local JSON pointers)"));
      }
      return Ref(r.substr(1), Child(ptr, "$ref"), depth);
    }
    for (const char* comb : {"anyOf", "oneOf", "allOf"}) {
      if (!s.contains(comb)) continue;
      if (auto st = only({comb}, comb); !st.ok()) return st;
      const std::string cptr = Child(ptr, comb);
      const Json& list = s[comb];
      if (!list.is_array() || list.empty()) return Error(cptr, "must be a non-empty array");
      if (std::string_view(comb) == "allOf") {
        if (list.size() != 1) return Error(cptr, "unsupported keyword 'allOf' with more than one subschema");
        return Schema(list[0], Child(cptr, 0), depth + 1);
      }
      const std::uint32_t u = NewNode(NodeKind::kUnion);
      std::vector<std::uint32_t> members;
      for (std::size_t i = 0; i < list.size(); ++i) {
        auto m = Schema(list[i], Child(cptr, i), depth + 1);
        if (!m.ok()) return m.status();
        members.push_back(*m);
      }
      g_.nodes[u].members = members;
      if (std::string_view(comb) == "oneOf") one_ofs_.push_back({cptr, members});
      return u;
    }
    unsigned types = kTAll;
    if (s.contains("type")) {
      types = 0;
      const Json& t = s["type"];
      std::vector<Json> names = t.is_array() ? std::vector<Json>(t.begin(), t.end()) : std::vector<Json>{t};
      for (const Json& name : names) {
        static const std::map<std::string, unsigned, std::less<>> kTypes = {
            {"object", kTObject}, {"array", kTArray},     {"string", kTString}, {"integer", kTInteger},
            {"number", kTNumber}, {"boolean", kTBoolean}, {"null", kTNull}};
        const auto it = name.is_string() ? kTypes.find(name.get<std::string>()) : kTypes.end();
        if (it == kTypes.end()) return Error(Child(ptr, "type"), absl::StrCat("unknown type ", Compact(name)));
        types |= it->second;
      }
      if (types == 0) return Error(Child(ptr, "type"), "no type given");
    }
    if (s.contains("enum") || s.contains("const")) {
      if (auto st = only({"enum", "const", "type"}, "enum/const"); !st.ok()) return st;
      std::vector<Json> values;
      if (s.contains("enum")) {
        const Json& e = s["enum"];
        if (!e.is_array()) return Error(Child(ptr, "enum"), "must be an array");
        values.assign(e.begin(), e.end());
      }
      if (s.contains("const")) {
        const Json& c = s["const"];
        if (s.contains("enum")) {
          std::erase_if(values, [&](const Json& v) { return !(v == c); });
        } else {
          values = {c};
        }
      }
      std::vector<std::string> literals;
      for (const Json& v : values) {
        if (ValueHasType(v, types)) literals.push_back(Compact(v));
      }
      if (literals.empty()) {
        return Error(Child(ptr, s.contains("enum") ? "enum" : "const"), "no value satisfies the schema");
      }
      return Literal(std::move(literals));
    }
    std::vector<std::uint32_t> alternatives;
    if (types & kTObject) {
      auto n = ObjectNode(s, ptr, depth);
      if (!n.ok()) return n.status();
      alternatives.push_back(*n);
    }
    if (types & kTArray) {
      auto n = ArrayNode(s, ptr, depth);
      if (!n.ok()) return n.status();
      alternatives.push_back(*n);
    }
    if (types & kTString) {
      auto n = StringNode(s, ptr);
      if (!n.ok()) return n.status();
      alternatives.push_back(*n);
    }
    if (types & (kTNumber | kTInteger)) {
      auto n = NumberNode(s, ptr, (types & kTNumber) == 0);
      if (!n.ok()) return n.status();
      alternatives.push_back(*n);
    }
    std::vector<std::string> literals;
    if (types & kTBoolean) literals.insert(literals.end(), {"true", "false"});
    if (types & kTNull) literals.push_back("null");
    if (!literals.empty()) alternatives.push_back(Literal(std::move(literals)));
    if (alternatives.size() == 1) return alternatives[0];
    const std::uint32_t u = NewNode(NodeKind::kUnion);
    g_.nodes[u].members = std::move(alternatives);
    return u;
  }

  absl::StatusOr<std::uint32_t> Count(const Json& s, const char* key, const std::string& ptr, std::uint32_t dflt) {
    if (!s.contains(key)) return dflt;
    const Json& v = s[key];
    double d = -1;
    if (v.is_number()) d = v.get<double>();
    if (!(d >= 0) || std::floor(d) != d) return Error(Child(ptr, key), "must be a non-negative integer");
    return d >= 4294967295.0 ? UINT32_MAX : static_cast<std::uint32_t>(d);
  }

  absl::StatusOr<std::uint32_t> ObjectNode(const Json& s, const std::string& ptr, int depth) {
    std::vector<GrammarNode::Property> props;
    if (s.contains("properties")) {
      const Json& p = s["properties"];
      const std::string pptr = Child(ptr, "properties");
      if (!p.is_object()) return Error(pptr, "must be an object");
      if (p.size() > kMaxProperties) return Error(pptr, absl::StrCat("more than ", kMaxProperties, " properties"));
      for (const auto& [name, sub] : p.items()) {
        auto v = Schema(sub, Child(pptr, name), depth + 1);
        if (!v.ok()) return v.status();
        props.push_back({name, *v, false});
      }
    }
    if (s.contains("required")) {
      const Json& r = s["required"];
      const std::string rptr = Child(ptr, "required");
      if (!r.is_array()) return Error(rptr, "must be an array of strings");
      for (const Json& name : r) {
        if (!name.is_string()) return Error(rptr, "must be an array of strings");
        auto it = std::find_if(props.begin(), props.end(), [&](const auto& p) { return p.name == name; });
        if (it == props.end()) {
          return Error(rptr,
                       absl::StrCat("required property ", Compact(name), " is not in 'properties' (unsupported)"));
        }
        it->required = true;
      }
    }
    // Without `properties`, an object may have any keys (`{"type": "object"}`
    // is a free-form object); with them, extra keys need additionalProperties.
    std::int32_t additional = s.contains("properties") ? -1 : static_cast<std::int32_t>(Any());
    if (s.contains("additionalProperties")) {
      additional = -1;
      const Json& a = s["additionalProperties"];
      if (!(a.is_boolean() && !a.get<bool>())) {
        auto v = Schema(a, Child(ptr, "additionalProperties"), depth + 1);
        if (!v.ok()) return v.status();
        additional = static_cast<std::int32_t>(*v);
      }
    }
    const std::uint32_t id = NewNode(NodeKind::kObject);
    g_.nodes[id].properties = std::move(props);
    g_.nodes[id].additional = additional;
    return id;
  }

  absl::StatusOr<std::uint32_t> ArrayNode(const Json& s, const std::string& ptr, int depth) {
    std::vector<std::uint32_t> prefix;
    if (s.contains("prefixItems")) {
      const Json& p = s["prefixItems"];
      const std::string pptr = Child(ptr, "prefixItems");
      if (!p.is_array()) return Error(pptr, "must be an array");
      for (std::size_t i = 0; i < p.size(); ++i) {
        auto v = Schema(p[i], Child(pptr, i), depth + 1);
        if (!v.ok()) return v.status();
        prefix.push_back(*v);
      }
    }
    std::int32_t items = static_cast<std::int32_t>(Any());
    if (s.contains("items")) {
      const Json& it = s["items"];
      if (it.is_array()) return Error(Child(ptr, "items"), "unsupported keyword 'items' as an array (use prefixItems)");
      if (it.is_boolean() && !it.get<bool>()) {
        items = -1;
      } else {
        auto v = Schema(it, Child(ptr, "items"), depth + 1);
        if (!v.ok()) return v.status();
        items = static_cast<std::int32_t>(*v);
      }
    }
    auto min_items = Count(s, "minItems", ptr, 0);
    if (!min_items.ok()) return min_items.status();
    auto max_items = Count(s, "maxItems", ptr, UINT32_MAX);
    if (!max_items.ok()) return max_items.status();
    std::uint32_t max = *max_items;
    if (items < 0) max = std::min<std::uint32_t>(max, static_cast<std::uint32_t>(prefix.size()));
    if (*min_items > max) return Error(Child(ptr, "minItems"), "exceeds the number of items allowed");
    const std::uint32_t id = NewNode(NodeKind::kArray);
    GrammarNode& n = g_.nodes[id];
    n.prefix_items = std::move(prefix);
    n.items = items;
    n.min_items = *min_items;
    n.max_items = max;
    return id;
  }

  absl::StatusOr<std::uint32_t> StringNode(const Json& s, const std::string& ptr) {
    auto min_length = Count(s, "minLength", ptr, 0);
    if (!min_length.ok()) return min_length.status();
    auto max_length = Count(s, "maxLength", ptr, UINT32_MAX);
    if (!max_length.ok()) return max_length.status();
    if (*min_length > *max_length) return Error(Child(ptr, "minLength"), "exceeds maxLength");
    const std::uint32_t id = NewNode(NodeKind::kString);
    g_.nodes[id].min_length = *min_length;
    g_.nodes[id].max_length = *max_length;
    return id;
  }

  absl::StatusOr<std::uint32_t> NumberNode(const Json& s, const std::string& ptr, bool integer) {
    const int digits = integer ? 0 : kNumberScaleDigits;
    const Int128 scale = integer ? 1 : 10000;
    const Int128 limit = static_cast<Int128>(9999999999999999999ull) * scale + (scale - 1);  // 19 digits
    Int128 lo = -limit, hi = limit;
    bool bounded = false;
    for (const char* key : {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"}) {
      if (!s.contains(key)) continue;
      const Json& v = s[key];
      const std::string kptr = Child(ptr, key);
      if (!v.is_number()) return Error(kptr, "must be a number");
      const bool lower = std::string_view(key) == "minimum" || std::string_view(key) == "exclusiveMinimum";
      const bool exclusive = key[0] == 'e';
      Int128 bound;
      if (integer) {
        // Integer documents are compared exactly (as integers).
        if (v.is_number_integer() && !(v.is_number_unsigned() && v.get<std::uint64_t>() > INT64_MAX)) {
          bound = v.get<std::int64_t>();
          if (exclusive) bound += lower ? 1 : -1;
        } else {
          const double x = v.get<double>();
          if (!(std::fabs(x) < 9.2e18)) return Error(kptr, "bound not representable as a 64-bit integer");
          bound = lower ? (exclusive ? ScaledFloor(x, 0) + 1 : ScaledCeil(x, 0))
                        : (exclusive ? ScaledCeil(x, 0) - 1 : ScaledFloor(x, 0));
        }
      } else {
        // A fractional document is parsed to a double before the comparison:
        // bounds are exact doubles, and an exclusive bound becomes the
        // inclusive neighbouring double, so rounding can never cross it.
        double x = v.get<double>();
        if (!(std::fabs(x) <= 9007199254740992.0)) {
          return Error(kptr, "unsupported bound beyond +-2^53 on type 'number'");
        }
        if (exclusive) x = std::nextafter(x, lower ? INFINITY : -INFINITY);
        bound = lower ? ScaledCeil(x, digits) : ScaledFloor(x, digits);
      }
      if (lower) {
        lo = std::max(lo, bound);
      } else {
        hi = std::min(hi, bound);
      }
      bounded = true;
    }
    if (lo > hi) return Error(ptr, "no number satisfies the bounds");
    const std::uint32_t id = NewNode(NodeKind::kNumber);
    GrammarNode& n = g_.nodes[id];
    n.integer = integer;
    n.bounded = bounded;
    n.fraction_scale_digits = bounded ? digits : 0;
    n.lo = lo;
    n.hi = hi;
    return id;
  }

  // Drops what admits no finite document, flattens unions, builds key tries.
  absl::Status Finish() {
    const std::size_t count = g_.nodes.size();
    std::vector<char> productive(count, 0);
    auto item_ok = [&](const GrammarNode& n, std::uint32_t i) {
      if (i >= n.max_items) return false;
      if (i < n.prefix_items.size()) return productive[n.prefix_items[i]] != 0;
      return n.items >= 0 && productive[static_cast<std::size_t>(n.items)] != 0;
    };
    for (bool changed = true; changed;) {
      changed = false;
      for (std::size_t i = 1; i < count; ++i) {
        if (productive[i]) continue;
        const GrammarNode& n = g_.nodes[i];
        bool p = false;
        switch (n.kind) {
          case NodeKind::kUnion:
            p = std::any_of(n.members.begin(), n.members.end(), [&](std::uint32_t m) { return productive[m] != 0; });
            break;
          case NodeKind::kObject:
            p = std::all_of(n.properties.begin(), n.properties.end(),
                            [&](const auto& prop) { return !prop.required || productive[prop.value]; });
            break;
          case NodeKind::kArray: {
            p = true;
            const std::uint32_t need =
                std::min<std::uint32_t>(n.min_items, static_cast<std::uint32_t>(n.prefix_items.size()) + 1);
            for (std::uint32_t j = 0; j < need && p; ++j) p = item_ok(n, j);
            break;
          }
          default:
            p = true;
        }
        if (p) {
          productive[i] = 1;
          changed = true;
        }
      }
    }
    if (!productive[g_.value]) return Error("", "the schema admits no finite JSON document");
    // Prune.
    for (std::size_t i = 1; i < count; ++i) {
      GrammarNode& n = g_.nodes[i];
      if (n.kind == NodeKind::kUnion) {
        std::erase_if(n.members, [&](std::uint32_t m) { return !productive[m]; });
      } else if (n.kind == NodeKind::kObject) {
        std::erase_if(n.properties, [&](const auto& prop) { return !productive[prop.value]; });
        if (n.additional >= 0 && !productive[static_cast<std::size_t>(n.additional)]) n.additional = -1;
      } else if (n.kind == NodeKind::kArray) {
        if (n.items >= 0 && !productive[static_cast<std::size_t>(n.items)]) n.items = -1;
        std::uint32_t reach = 0;
        while (reach < n.prefix_items.size() && productive[n.prefix_items[reach]]) ++reach;
        if (reach < n.prefix_items.size() || n.items < 0) n.max_items = std::min(n.max_items, reach);
        n.prefix_items.resize(std::min<std::size_t>(n.prefix_items.size(), n.max_items));
      }
    }
    // Flatten unions: members become the non-union nodes they reach.
    for (std::size_t i = 1; i < count; ++i) {
      if (g_.nodes[i].kind != NodeKind::kUnion) continue;
      std::vector<std::uint32_t> flat;
      std::vector<char> seen(count, 0);
      std::vector<std::uint32_t> todo(g_.nodes[i].members.rbegin(), g_.nodes[i].members.rend());
      seen[i] = 1;
      while (!todo.empty()) {
        const std::uint32_t m = todo.back();
        todo.pop_back();
        if (seen[m]) continue;
        seen[m] = 1;
        if (g_.nodes[m].kind == NodeKind::kUnion) {
          todo.insert(todo.end(), g_.nodes[m].members.rbegin(), g_.nodes[m].members.rend());
        } else {
          flat.push_back(m);
        }
      }
      if (flat.size() > static_cast<std::size_t>(kMaxAlternatives)) {
        return Error("", absl::StrCat("a value has more than ", kMaxAlternatives, " alternatives"));
      }
      flattened_[i] = std::move(flat);
    }
    for (auto& [i, flat] : flattened_) g_.nodes[i].members = std::move(flat);
    // Object keys.
    for (std::size_t i = 1; i < count; ++i) {
      if (g_.nodes[i].kind != NodeKind::kObject) continue;
      ByteTrie keys, names;
      const auto& props = g_.nodes[i].properties;
      std::vector<std::uint16_t> next_required(props.size() + 1, static_cast<std::uint16_t>(props.size()));
      for (std::size_t j = props.size(); j-- > 0;) {
        next_required[j] = props[j].required ? static_cast<std::uint16_t>(j) : next_required[j + 1];
        keys.Insert(Compact(Json(props[j].name)), static_cast<std::int32_t>(j));
        names.Insert(props[j].name, static_cast<std::int32_t>(j));
      }
      keys.IndexSubtrees();
      g_.tries.push_back(std::move(keys));
      g_.nodes[i].key_trie = static_cast<std::uint32_t>(g_.tries.size() - 1);
      g_.tries.push_back(std::move(names));
      const std::uint32_t key_string = NewNode(NodeKind::kString);
      g_.nodes[key_string].excluded_trie = static_cast<std::int32_t>(g_.tries.size() - 1);
      g_.nodes[i].key_string = key_string;
      g_.nodes[i].next_required = std::move(next_required);
    }
    for (const auto& [ptr, branches] : one_ofs_) {
      for (std::size_t a = 0; a < branches.size(); ++a) {
        for (std::size_t b = a + 1; b < branches.size(); ++b) {
          if (!Disjoint(branches[a], branches[b], 0)) {
            return Error(ptr, absl::StrCat("unsupported 'oneOf': branches ", a, " and ", b,
                                           " are not provably disjoint (use anyOf)"));
          }
        }
      }
    }
    return absl::OkStatus();
  }

  std::vector<std::uint32_t> Leaves(std::uint32_t node) const {
    if (g_.nodes[node].kind == NodeKind::kUnion) return g_.nodes[node].members;
    return {node};
  }

  // The JSON types a leaf node produces, as TypeBits (integer folded into number).
  unsigned LeafTypes(const GrammarNode& n) const {
    switch (n.kind) {
      case NodeKind::kObject:
        return kTObject;
      case NodeKind::kArray:
        return kTArray;
      case NodeKind::kString:
        return kTString;
      case NodeKind::kNumber:
        return kTNumber;
      default:
        return 0;
    }
  }

  // No JSON value satisfies both schemas (judged on their full JSON schema
  // meaning, not just the subset the grammar produces).
  bool Disjoint(std::uint32_t x, std::uint32_t y, int depth) const {
    if (depth > 8) return false;
    for (const std::uint32_t a : Leaves(x)) {
      for (const std::uint32_t b : Leaves(y)) {
        if (!LeavesDisjoint(g_.nodes[a], g_.nodes[b], depth)) return false;
      }
    }
    return true;
  }
  bool LeavesDisjoint(const GrammarNode& a, const GrammarNode& b, int depth) const {
    const bool la = a.kind == NodeKind::kLiteral, lb = b.kind == NodeKind::kLiteral;
    if (la && lb) {
      for (const std::string& x : a.literals) {
        for (const std::string& y : b.literals) {
          if (nlohmann::json::parse(x) == nlohmann::json::parse(y)) return false;
        }
      }
      return true;
    }
    if (la || lb) {
      const GrammarNode& lit = la ? a : b;
      const unsigned other = LeafTypes(la ? b : a);
      return std::none_of(lit.literals.begin(), lit.literals.end(),
                          [&](const std::string& v) { return ValueHasType(Json::parse(v), other); });
    }
    if (LeafTypes(a) != LeafTypes(b)) return true;
    if (a.kind != NodeKind::kObject) return false;
    for (const auto& pa : a.properties) {
      if (!pa.required) continue;
      for (const auto& pb : b.properties) {
        if (pb.required && pb.name == pa.name && Disjoint(pa.value, pb.value, depth + 1)) return true;
      }
    }
    return false;
  }

  const Json& doc_;
  JsonGrammar::Impl& g_;
  std::int64_t any_ = -1;
  std::map<std::string, std::uint32_t> refs_;
  std::map<std::size_t, std::vector<std::uint32_t>> flattened_;
  std::vector<std::pair<std::string, std::vector<std::uint32_t>>> one_ofs_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<const JsonGrammar>> JsonGrammar::Compile(std::string_view schema_json) {
  Json doc = Json::parse(schema_json, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Error("", "the schema is not valid JSON");
  if (doc.is_boolean() && !doc.get<bool>()) return Error("", "schema `false` accepts no document");
  auto impl = std::make_unique<Impl>();
  Compiler compiler(doc, impl.get());
  if (absl::Status st = compiler.Run(); !st.ok()) return st;
  return std::shared_ptr<const JsonGrammar>(new JsonGrammar(std::move(impl)));
}

std::shared_ptr<const JsonGrammar> JsonGrammar::AnyObjectOrArray() {
  static const std::shared_ptr<const JsonGrammar> grammar = [] {
    auto impl = std::make_unique<Impl>();
    const Json none;
    Compiler compiler(none, impl.get());
    compiler.RunAnyObjectOrArray();
    return std::shared_ptr<const JsonGrammar>(new JsonGrammar(std::move(impl)));
  }();
  return grammar;
}

}  // namespace sirocco::engine::structured
