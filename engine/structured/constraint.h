// A request's response format, applied token by token: which tokens may come
// next, and the state after each sampled one.
//
// The token language is mistral-common's grammar for a JSON answer
// (`json_grammar` of its think template):
//
//   answer := ([THINK] ordinary-token+ [/THINK])?  json  EOS
//
// where the think section exists only when the format allows it (v15
// tokenizers with think tokens: ResponseConstraint::allow_think), the
// reasoning inside it is free (any ordinary, non-special token), and `json`
// is a JsonGrammar's language read from the tokens' bytes (JsonMatcher). EOS
// may be sampled exactly when the JSON document is complete, and is the only
// choice once nothing can extend it.
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

#include "engine/structured/json_grammar.h"
#include "engine/structured/token_trie.h"

namespace sirocco::engine::structured {

// What one request's answer must match. `grammar` null: anything (no
// constraint).
struct ResponseConstraint {
  std::shared_ptr<const JsonGrammar> grammar;
  bool allow_think = false;  // a [THINK] ... [/THINK] section may come first

  bool active() const { return grammar != nullptr; }
};

// The vocabulary facts a constraint needs, built once per model.
class ConstraintVocabulary {
 public:
  // token_bytes[id]: the token's raw bytes; special[id]: a control token
  // (never part of the text). begin_think/end_think: -1 when the vocabulary
  // has none. eos_ids: the tokens that end a turn.
  ConstraintVocabulary(std::span<const std::string_view> token_bytes, std::span<const bool> special,
                       std::int32_t begin_think, std::int32_t end_think, std::vector<std::int32_t> eos_ids);

  std::int32_t vocab_size() const { return trie_.vocab_size(); }
  bool has_think() const { return begin_think_ >= 0 && end_think_ >= 0; }
  std::int32_t begin_think() const { return begin_think_; }
  std::int32_t end_think() const { return end_think_; }
  std::span<const std::int32_t> eos_ids() const { return eos_ids_; }
  std::string_view bytes(std::int32_t id) const { return bytes_[static_cast<std::size_t>(id)]; }
  bool special(std::int32_t id) const { return special_[static_cast<std::size_t>(id)]; }
  const TokenTrie& trie() const { return trie_; }
  // Every ordinary token with at least one byte: what a think section may hold.
  std::span<const std::uint32_t> ordinary_mask() const { return ordinary_; }

 private:
  std::vector<std::string> bytes_;
  std::vector<bool> special_;
  std::int32_t begin_think_;
  std::int32_t end_think_;
  std::vector<std::int32_t> eos_ids_;
  TokenTrie trie_;
  std::vector<std::uint32_t> ordinary_;
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
  // The answer is complete: the JSON document ended and EOS came.
  bool done() const { return phase_ == Phase::kDone; }

 private:
  enum class Phase : std::uint8_t {
    kStart,       // before anything: [THINK] (when allowed) or the JSON
    kThinkFirst,  // after [THINK]: at least one ordinary token
    kThinking,    // ordinary tokens or [/THINK]
    kJson,        // inside the JSON document (or its leading whitespace)
    kDone,        // EOS came
  };
  bool IsEos(std::int32_t token) const;

  std::shared_ptr<const ConstraintVocabulary> vocab_;
  bool allow_think_;
  Phase phase_ = Phase::kStart;
  JsonMatcher matcher_;
};

}  // namespace sirocco::engine::structured
