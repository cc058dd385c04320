// The byte strings of a vocabulary's ordinary tokens, in a trie, for turning a
// JsonMatcher's state into the set of tokens that may come next.
//
// Thread-safety: immutable after construction; FillAllowed may run on many
// threads at once.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/structured/json_grammar.h"

namespace sirocco::engine::structured {

// Bit `id` of a token mask: words[id / 32] >> (id % 32) & 1.
inline bool MaskBit(std::span<const std::uint32_t> words, std::int32_t id) {
  return ((words[static_cast<std::size_t>(id) / 32] >> (static_cast<unsigned>(id) % 32)) & 1u) != 0;
}
inline std::size_t MaskWords(std::int32_t vocab_size) { return (static_cast<std::size_t>(vocab_size) + 31) / 32; }

class TokenTrie {
 public:
  // token_bytes[id] is token id's raw bytes. Tokens with excluded[id] set
  // (special tokens) and tokens with no bytes (or more than 65535) are never
  // allowed by FillAllowed. Both spans have the vocabulary's size.
  TokenTrie(std::span<const std::string_view> token_bytes, std::span<const bool> excluded);
  ~TokenTrie();
  TokenTrie(const TokenTrie&) = delete;
  TokenTrie& operator=(const TokenTrie&) = delete;

  std::int32_t vocab_size() const { return vocab_size_; }
  // The longest token's byte count.
  int max_token_bytes() const { return max_depth_; }

  // Clears `allowed` (MaskWords(vocab_size()) words), then sets the bit of
  // every token whose whole byte string `matcher` would Consume from its
  // current state. The matcher is not changed.
  void FillAllowed(const JsonMatcher& matcher, std::span<std::uint32_t> allowed) const;

 private:
  // The trie in preorder: a node's subtree is nodes_[i, subtree_end).
  struct Node {
    std::uint32_t subtree_end = 0;
    std::uint32_t tokens_begin = 0;  // the tokens ending here: token_ids_[tokens_begin, tokens_end)
    std::uint32_t tokens_end = 0;
    std::uint16_t depth = 0;  // bytes from the root (the root is not stored)
    std::uint8_t byte = 0;
  };
  std::int32_t vocab_size_ = 0;
  std::vector<Node> nodes_;
  std::vector<std::int32_t> token_ids_;  // tokens ending at each node, grouped by node
  std::uint16_t max_depth_ = 0;
};

}  // namespace sirocco::engine::structured
