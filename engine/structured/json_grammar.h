// Structured output: what a JSON answer may look like, byte by byte.
//
// JsonGrammar is a JSON schema compiled once (immutable, shared between
// requests and threads). JsonMatcher walks one answer through it a byte at a
// time: Consume accepts bytes only while they are still a prefix of some JSON
// text the schema accepts, so a sampler that only ever picks tokens whose
// bytes Consume accepts produces, when CanEnd() holds, a document that
// parses as JSON and validates against the schema.
//
// The language a grammar accepts (docs/structured-output.md):
// * Up to kMaxLeadingWhitespace bytes of [ \t\n\r] before the value, then one
//   JSON value, then nothing.
// * Between structural tokens ({ } [ ] : , and values) runs of at most
//   kMaxWhitespaceRun bytes of [ \t\n\r]; so a model may pretty-print, but
//   cannot pad forever.
// * Strings: valid UTF-8 (checked across token boundaries), no raw control
//   characters, the JSON escapes (\" \\ \/ \b \f \n \r \t \uXXXX), except
//   \u escapes of UTF-16 surrogates (non-BMP characters are raw UTF-8).
//   minLength/maxLength count code points.
// * Numbers: the JSON number grammar with at most 19 integer, 20 fraction and
//   2 exponent digits; integers without fraction or exponent, never "-0".
//   Integer bounds are exact on every digit prefix; a bounded `number` has at
//   most 4 fraction digits and no exponent.
// * Objects: the schema's `properties` in schema order (each required one
//   present, each optional one present or skipped); keys beyond them only when
//   `additionalProperties` is `true` or a schema, or the schema has no
//   `properties` (then after the declared ones, never a declared name). This is
//   a subset of what the schema accepts, which is what constrained decoding
//   needs: every accepted document validates.
// * Nesting at most kMaxNestingDepth deep; at most kMaxAlternatives parses
//   followed at once. Beyond either a byte is refused.
//
// Supported keywords: type (one or a list), enum, const, properties, required,
// additionalProperties, items, prefixItems, minItems, maxItems, minLength,
// maxLength, minimum/maximum/exclusiveMinimum/exclusiveMaximum,
// anyOf, oneOf whose branches are provably disjoint, allOf with one
// subschema, $ref to "#", "#/$defs/..", "#/definitions/.." or any other local
// JSON pointer (recursion allowed), $defs/definitions. Annotations
// (title, description, default, examples, $schema, $id, $comment, format)
// are ignored, as JSON schema validators do by default. Any other validation
// keyword (pattern, multipleOf, uniqueItems, not, if/then/else, ...) is an
// INVALID_ARGUMENT naming it: the grammar never silently accepts less than
// the schema demands.
//
// Thread-safety: JsonGrammar is immutable; a JsonMatcher is a value owned by
// one thread (copies are independent).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace sirocco::engine::structured {

inline constexpr int kMaxLeadingWhitespace = 8;  // mistral-common's SAFE_WS before the value
inline constexpr int kMaxWhitespaceRun = 16;     // between structural tokens
// Nesting depth of objects and arrays a matcher follows; deeper is refused.
inline constexpr int kMaxNestingDepth = 128;
// Parses a matcher follows at once (anyOf branches, optional keys, ...);
// a byte that would need more is refused.
inline constexpr int kMaxAlternatives = 64;
// Nesting depth of subschemas Compile accepts.
inline constexpr int kMaxSchemaDepth = 64;

namespace internal {
// One frame of a matcher's pushdown stack: a grammar node and where in it the
// text is. The meaning of the small fields depends on the node's kind
// (json_grammar.cc).
struct Frame {
  std::uint32_t node = 0;
  std::uint8_t pos = 0;
  std::uint8_t ws = 0;
  std::uint16_t small = 0;
  std::uint32_t a = 0;
  std::uint32_t b = 0;
  bool operator==(const Frame&) const = default;
};
// A matcher's state: every parse still alive, each a stack of frames (bottom
// first), stored one after another. No two stacks are equal.
struct State {
  std::vector<Frame> frames;
  std::vector<std::uint32_t> ends;  // ends[i]: one past stack i's top frame
  void Clear() {
    frames.clear();
    ends.clear();
  }
};
}  // namespace internal

class JsonGrammar {
 public:
  // Compiles a JSON schema given as JSON text (an object, or `true`).
  // INVALID_ARGUMENT "<JSON pointer into the schema>: <why>" when the text is
  // not JSON, the schema is invalid, or it uses an unsupported keyword. The
  // whole document's pointer is written "(root)".
  [[nodiscard]] static absl::StatusOr<std::shared_ptr<const JsonGrammar>> Compile(std::string_view schema_json);
  // Any JSON object or array: mistral-common's grammar for `json_object` and
  // for a `json_schema` that is not strict.
  static std::shared_ptr<const JsonGrammar> AnyObjectOrArray();

  ~JsonGrammar();
  JsonGrammar(const JsonGrammar&) = delete;
  JsonGrammar& operator=(const JsonGrammar&) = delete;

  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  explicit JsonGrammar(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// One answer's progress through a grammar. Copyable; copies are independent.
class JsonMatcher {
 public:
  explicit JsonMatcher(std::shared_ptr<const JsonGrammar> grammar);

  // Consumes `bytes` if every one of them keeps the text a prefix of an
  // accepted document: true, and the state advances past all of them.
  // Otherwise false, and the state is as it was before the call.
  bool Consume(std::string_view bytes);
  // One byte; the same contract.
  bool ConsumeByte(std::uint8_t byte);
  // The text so far is a complete accepted document (generation may stop).
  bool CanEnd() const;
  // No byte at all can follow (generation must stop).
  bool MustEnd() const;

  // Equal states accept exactly the same continuations; the hash is
  // consistent with ==. Lets a caller cache per-state token masks.
  bool operator==(const JsonMatcher& other) const;
  std::size_t Hash() const;

  // A state with exactly this state's token masks, for a vocabulary whose
  // tokens are at most `max_token_bytes` long, that equal states share more
  // often: a string's character count is replaced by a canonical one
  // wherever no token could reach a length bound from it (a 200-character
  // maxLength string then has a handful of mask states instead of 200).
  // Not a state to continue from: use it as a mask-cache key.
  JsonMatcher MaskKey(int max_token_bytes) const;

  const JsonGrammar& grammar() const { return *grammar_; }
  const internal::State& state() const { return state_; }

 private:
  std::shared_ptr<const JsonGrammar> grammar_;
  internal::State state_;
};

// One step of every parse in `from` over `byte`, into `to` (cleared first;
// must not be `from`). False when no parse survives or the step would exceed
// kMaxAlternatives; `to` is then unspecified. Allocates nothing once `to` has
// grown to its working size (TokenTrie reuses one State per trie depth).
bool StepState(const JsonGrammar::Impl& grammar, const internal::State& from, std::uint8_t byte, internal::State* to);

}  // namespace sirocco::engine::structured
