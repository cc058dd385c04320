// The compiled form of a JSON schema: a graph of grammar nodes that
// JsonMatcher's pushdown stacks walk (json_grammar.cc). Internal to
// sirocco_structured.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/structured/json_grammar.h"

namespace sirocco::engine::structured {

__extension__ typedef __int128 Int128;  // exact bound arithmetic on scaled decimals

// A set of byte strings as a trie. Node 0 is the root.
struct ByteTrie {
  struct Node {
    std::vector<std::pair<std::uint8_t, std::uint32_t>> children;  // sorted by byte
    std::int32_t terminal = -1;                                    // index of the string ending here, or -1
    std::vector<std::uint16_t> indices;                            // sorted terminals in this subtree (key tries only)
  };
  std::vector<Node> nodes{Node{}};

  std::int32_t Child(std::uint32_t node, std::uint8_t byte) const {
    for (const auto& [b, child] : nodes[node].children) {
      if (b == byte) return static_cast<std::int32_t>(child);
    }
    return -1;
  }
  void Insert(std::string_view bytes, std::int32_t index);
  // Fills `indices` of every node (after all inserts).
  void IndexSubtrees();
};

enum class NodeKind : std::uint8_t { kRoot, kUnion, kObject, kArray, kString, kNumber, kLiteral };

struct GrammarNode {
  NodeKind kind = NodeKind::kUnion;
  // kUnion: the alternatives (after Finish: no unions among them).
  std::vector<std::uint32_t> members;
  // kObject: declared properties in schema order.
  struct Property {
    std::string name;  // decoded
    std::uint32_t value = 0;
    bool required = false;
  };
  std::vector<Property> properties;
  std::int32_t additional = -1;              // value node of extra keys, -1: none allowed
  std::uint32_t key_trie = 0;                // canonical "name" of each property -> its index
  std::uint32_t key_string = 0;              // the string node an extra key is matched with
  std::vector<std::uint16_t> next_required;  // [i]: first required index >= i, or properties.size()
  // kArray
  std::vector<std::uint32_t> prefix_items;
  std::int32_t items = -1;  // node of items after the prefix, -1: none
  std::uint32_t min_items = 0;
  std::uint32_t max_items = UINT32_MAX;
  // kString
  std::uint32_t min_length = 0;
  std::uint32_t max_length = UINT32_MAX;
  std::int32_t excluded_trie = -1;  // decoded strings the value may not equal (extra keys)
  // kNumber
  bool integer = false;
  bool bounded = false;
  int fraction_scale_digits = 0;  // bounded: fixed-point digits after the point (0 for integers)
  Int128 lo = 0;                  // bounded: inclusive, scaled by 10^fraction_scale_digits
  Int128 hi = 0;
  // kLiteral: the compact serializations, matched in a trie.
  std::uint32_t literal_trie = 0;
  std::vector<std::string> literals;
};

struct JsonGrammar::Impl {
  std::vector<GrammarNode> nodes;  // node 0 is the root frame's node
  std::vector<ByteTrie> tries;
  std::uint32_t value = 0;  // the document's value node
};

// StepState for the one stack base[0..k) + top.
bool StepStack(const JsonGrammar::Impl& grammar, const internal::Frame* base, int k, const internal::Frame& top,
               std::uint8_t byte, internal::State* to);
// The string fast path: when `top` is inside a string and `byte` keeps it
// there, updates `top` and returns 1 (the frames below are unchanged); 0 when
// the byte is refused; -1 when the general step is needed (not a string, or
// the byte closes it).
int StepStringTop(const JsonGrammar::Impl& grammar, internal::Frame* top, std::uint8_t byte);
// A string frame's position while between characters (json_matcher.cc).
inline constexpr std::uint8_t kStringBodyPos = 1;
// StepStringTop with the common case inline: a plain ASCII character.
inline int StepStringTopInline(const JsonGrammar::Impl& grammar, const GrammarNode& string_node, internal::Frame* top,
                               std::uint8_t byte) {
  if (top->pos == kStringBodyPos && byte >= 0x20 && byte < 0x80 && byte != '"' && byte != '\\' &&
      string_node.excluded_trie < 0) {
    if (top->a >= string_node.max_length) return 0;
    if (string_node.max_length != UINT32_MAX || top->a < string_node.min_length) ++top->a;  // as StringByte
    return 1;
  }
  return StepStringTop(grammar, top, byte);
}

}  // namespace sirocco::engine::structured
