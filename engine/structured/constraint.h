// A request's response format, applied token by token: which tokens may come
// next, and the state after each sampled one.
//
// The token languages are mistral-common's grammars (its think template):
//
//   JSON answer:   ([THINK] ordinary+ [/THINK])?  json  EOS
//   forced calls:  ([THINK] ordinary+ [/THINK])?  call+  EOS
//                  call := [TOOL_CALLS] name [ARGS] json(the tool's arguments)
//
// where the think section exists only when the format allows it
// (ResponseConstraint::allow_think), reasoning is free (any ordinary,
// non-special token), `json` is a JsonGrammar's
// language read from the tokens' bytes (JsonMatcher), `name` is one of the
// tools' names, and `call+` is a single call when parallel calls are off.
// (mistral-common's grammar also lets free text come before the calls; a
// forced call here is the answer itself, so it always comes.) EOS
// may be sampled exactly when the JSON document (the last call's arguments)
// is complete, and is the only choice once nothing can extend it.
//
// Thread-safety: ConstraintVocabulary is immutable and shared; a
// TokenConstraint belongs to the engine thread that owns its request.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/structured/json_grammar.h"
#include "engine/structured/token_trie.h"

namespace sirocco::engine::structured {

// Tool calls a request must make (tool_choice any/required, or named).
struct ToolCallSpec {
  struct Tool {
    std::string name;                         // non-empty; no '"', '\\' or control bytes
    std::shared_ptr<const JsonGrammar> args;  // what its arguments may be
  };
  std::vector<Tool> tools;  // at least one; names unique
  // The names as a JSON string's contents: {"enum": [names...]} (MakeToolCallSpec).
  std::shared_ptr<const JsonGrammar> names;
  bool parallel = true;  // several calls in one turn
};

// A ToolCallSpec for `tools`, with its names grammar; INVALID_ARGUMENT for an
// empty list, a duplicate name or a name with bytes a name cannot hold.
[[nodiscard]] absl::StatusOr<std::shared_ptr<const ToolCallSpec>> MakeToolCallSpec(
    std::vector<ToolCallSpec::Tool> tools, bool parallel);

// What one request's output must match: a JSON answer (`grammar`), forced
// tool calls (`tool_calls`), or anything when neither is set.
struct ResponseConstraint {
  std::shared_ptr<const JsonGrammar> grammar;
  std::shared_ptr<const ToolCallSpec> tool_calls;
  bool allow_think = false;  // a [THINK] ... [/THINK] section may come first

  bool active() const { return grammar != nullptr || tool_calls != nullptr; }
};

// The control tokens a constraint uses; -1 where the vocabulary has none.
struct ControlTokens {
  std::int32_t begin_think = -1;
  std::int32_t end_think = -1;
  std::int32_t tool_calls = -1;
  std::int32_t args = -1;
  std::vector<std::int32_t> eos;  // the tokens that end a turn
};

// The vocabulary facts a constraint needs, built once per model.
class ConstraintVocabulary {
 public:
  // token_bytes[id]: the token's raw bytes; special[id]: a control token
  // (never part of the text).
  ConstraintVocabulary(std::span<const std::string_view> token_bytes, std::span<const bool> special,
                       ControlTokens control);

  std::int32_t vocab_size() const { return trie_.vocab_size(); }
  bool has_think() const { return control_.begin_think >= 0 && control_.end_think >= 0; }
  bool has_tool_calls() const { return control_.tool_calls >= 0 && control_.args >= 0; }
  std::int32_t begin_think() const { return control_.begin_think; }
  std::int32_t end_think() const { return control_.end_think; }
  std::int32_t tool_calls() const { return control_.tool_calls; }
  std::int32_t args() const { return control_.args; }
  std::span<const std::int32_t> eos_ids() const { return control_.eos; }
  std::string_view bytes(std::int32_t id) const { return bytes_[static_cast<std::size_t>(id)]; }
  bool special(std::int32_t id) const { return special_[static_cast<std::size_t>(id)]; }
  const TokenTrie& trie() const { return trie_; }
  // Every ordinary token with at least one byte: what free text may hold.
  std::span<const std::uint32_t> ordinary_mask() const { return ordinary_; }
  // The ordinary tokens without a '"' byte (a tool name's pieces).
  std::span<const std::uint32_t> unquoted_mask() const { return unquoted_; }

 private:
  std::vector<std::string> bytes_;
  std::vector<bool> special_;
  ControlTokens control_;
  TokenTrie trie_;
  std::vector<std::uint32_t> ordinary_;
  std::vector<std::uint32_t> unquoted_;
};

// Token masks of JSON matcher states, least recently used out: requests
// with the same schema revisit the same states (the start, the inside of a
// free string, after a key), and a cached mask is a copy instead of a trie
// walk. Thread-safety: none; one per engine thread.
class MaskCache {
 public:
  explicit MaskCache(std::size_t capacity) : capacity_(capacity) {}
  // The mask cached for `matcher`'s state, or null. Valid until the next
  // Insert.
  const std::vector<std::uint32_t>* Find(const JsonMatcher& matcher);
  void Insert(const JsonMatcher& matcher, std::span<const std::uint32_t> mask);
  std::int64_t hits() const { return hits_; }
  std::int64_t misses() const { return misses_; }

 private:
  struct Hash {
    std::size_t operator()(const JsonMatcher& m) const { return m.Hash(); }
  };
  using Entry = std::pair<JsonMatcher, std::vector<std::uint32_t>>;
  const std::size_t capacity_;
  std::list<Entry> lru_;  // most recent first
  std::unordered_map<JsonMatcher, std::list<Entry>::iterator, Hash> index_;
  std::int64_t hits_ = 0;
  std::int64_t misses_ = 0;
};

class TokenConstraint {
 public:
  // `constraint` must be active; `vocab` outlives this object (shared).
  TokenConstraint(std::shared_ptr<const ConstraintVocabulary> vocab, const ResponseConstraint& constraint);

  // Writes the mask of tokens that may come next (MaskWords(vocab_size)
  // words; bit set = allowed). Never empty: some token is always allowed.
  // With a cache, the JSON part of the mask comes from it when it holds the
  // matcher's state, and goes into it when it does not.
  void FillAllowed(std::span<std::uint32_t> mask, MaskCache* cache = nullptr) const;
  // Whether `token` may come next.
  bool Allows(std::int32_t token) const;
  // Moves past `token`: false (and no change) when it is not allowed.
  bool Accept(std::int32_t token);
  // The answer is complete: the JSON document (or the last call) ended and
  // EOS came.
  bool done() const { return phase_ == Phase::kDone; }

 private:
  enum class Phase : std::uint8_t {
    kStart,       // before anything: [THINK] (when allowed), then the JSON or the text before calls
    kThinkFirst,  // after [THINK]: at least one ordinary token
    kThinking,    // ordinary tokens or [/THINK]
    kJson,        // inside the JSON document (or its leading whitespace)
    kText,        // forced calls, after the think section: [TOOL_CALLS]
    kName,        // after [TOOL_CALLS]: a tool's name, then [ARGS]
    kArgs,        // after [ARGS]: the tool's arguments; then EOS, or [TOOL_CALLS] when parallel
    kDone,        // EOS came
  };
  bool IsEos(std::int32_t token) const;
  // The trie's mask for `m` (from the cache when it has it).
  void MatcherMask(const JsonMatcher& m, std::span<std::uint32_t> mask, MaskCache* cache) const;
  // The name so far is a whole tool name.
  bool NameComplete() const;

  std::shared_ptr<const ConstraintVocabulary> vocab_;
  std::shared_ptr<const ToolCallSpec> tools_;
  bool allow_think_;
  Phase phase_ = Phase::kStart;
  // kJson: the answer; kName: the name (after a virtual opening quote);
  // kArgs: the arguments.
  JsonMatcher matcher_;
  std::string name_;  // kName: the name's bytes so far
};

}  // namespace sirocco::engine::structured
