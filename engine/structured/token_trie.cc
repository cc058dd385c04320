// TokenTrie: every ordinary token's bytes in a preorder trie. FillAllowed
// walks it depth-first with one matcher state per depth, so a shared prefix is
// stepped once and a rejected byte skips its whole subtree.
#include "engine/structured/token_trie.h"

#include <algorithm>

#include "engine/structured/json_grammar_impl.h"

namespace sirocco::engine::structured {

TokenTrie::TokenTrie(std::span<const std::string_view> token_bytes, std::span<const bool> excluded)
    : vocab_size_(static_cast<std::int32_t>(token_bytes.size())) {
  std::vector<std::int32_t> order;
  for (std::size_t id = 0; id < token_bytes.size(); ++id) {
    if (!token_bytes[id].empty() && token_bytes[id].size() <= UINT16_MAX && !(id < excluded.size() && excluded[id]))
      order.push_back(static_cast<std::int32_t>(id));
  }
  std::sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
    return token_bytes[static_cast<std::size_t>(a)] < token_bytes[static_cast<std::size_t>(b)];
  });
  // Sorted order is preorder: each token extends the path the previous
  // one left, after popping back to their common prefix.
  std::vector<std::uint32_t> path;  // node index per depth - 1
  std::string_view prev;
  auto close = [&](std::size_t keep) {
    while (path.size() > keep) {
      nodes_[path.back()].subtree_end = static_cast<std::uint32_t>(nodes_.size());
      path.pop_back();
    }
  };
  for (const std::int32_t id : order) {
    const std::string_view bytes = token_bytes[static_cast<std::size_t>(id)];
    std::size_t common = 0;
    while (common < prev.size() && common < bytes.size() && prev[common] == bytes[common]) ++common;
    close(common);
    for (std::size_t i = common; i < bytes.size(); ++i) {
      Node node;
      node.depth = static_cast<std::uint16_t>(i + 1);
      node.byte = static_cast<std::uint8_t>(bytes[i]);
      path.push_back(static_cast<std::uint32_t>(nodes_.size()));
      nodes_.push_back(node);
    }
    Node& end = nodes_[path.back()];
    if (end.tokens_end == end.tokens_begin) end.tokens_begin = static_cast<std::uint32_t>(token_ids_.size());
    token_ids_.push_back(id);
    end.tokens_end = static_cast<std::uint32_t>(token_ids_.size());
    max_depth_ = std::max(max_depth_, static_cast<std::uint16_t>(bytes.size()));
    prev = bytes;
  }
  close(0);
}

TokenTrie::~TokenTrie() = default;

void TokenTrie::FillAllowed(const JsonMatcher& matcher, std::span<std::uint32_t> allowed) const {
  std::fill(allowed.begin(), allowed.end(), 0u);
  const JsonGrammar::Impl& grammar = matcher.grammar().impl();
  // levels[d]: the state after the current path's first d bytes. Inside a
  // string only the top frame changes, so while the matcher has one stack
  // whose top is a string, a level holds just that frame ("compact").
  struct Level {
    internal::State state;
    internal::Frame top;
    bool compact = false;
  };
  std::vector<Level> levels(static_cast<std::size_t>(max_depth_) + 1);
  for (auto& level : levels) {
    level.state.frames.reserve(64);
    level.state.ends.reserve(8);
  }
  const GrammarNode* string_node = nullptr;
  const internal::State& start = matcher.state();
  const internal::Frame* base = start.frames.data();
  int below = 0;  // frames under a compact level's top
  if (start.ends.size() == 1 && grammar.nodes[start.frames.back().node].kind == NodeKind::kString) {
    levels[0].compact = true;
    levels[0].top = start.frames.back();
    string_node = &grammar.nodes[start.frames.back().node];
    below = static_cast<int>(start.frames.size()) - 1;
  } else {
    levels[0].state = start;
  }
  std::size_t i = 0;
  while (i < nodes_.size()) {
    const Node& node = nodes_[i];
    const Level& parent = levels[node.depth - 1u];
    Level& level = levels[node.depth];
    bool ok;
    if (parent.compact) {
      internal::Frame top = parent.top;
      const int fast = StepStringTopInline(grammar, *string_node, &top, node.byte);
      if (fast >= 0) {
        ok = fast == 1;
        level.compact = true;
        level.top = top;
      } else {
        level.compact = false;
        ok = StepStack(grammar, base, below, parent.top, node.byte, &level.state);
      }
    } else {
      level.compact = false;
      ok = StepState(grammar, parent.state, node.byte, &level.state);
    }
    if (!ok) {
      i = node.subtree_end;
      continue;
    }
    for (std::uint32_t t = node.tokens_begin; t < node.tokens_end; ++t) {
      const auto id = static_cast<std::uint32_t>(token_ids_[t]);
      allowed[id / 32] |= 1u << (id % 32);
    }
    ++i;
  }
}

}  // namespace sirocco::engine::structured
