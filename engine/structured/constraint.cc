#include "engine/structured/constraint.h"

#include <algorithm>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace sirocco::engine::structured {
namespace {

void SetBit(std::span<std::uint32_t> mask, std::int32_t id) {
  mask[static_cast<std::size_t>(id) / 32] |= 1u << (static_cast<unsigned>(id) % 32);
}

std::vector<bool> ToVector(std::span<const bool> flags) { return std::vector<bool>(flags.begin(), flags.end()); }

}  // namespace

absl::StatusOr<std::shared_ptr<const ToolCallSpec>> MakeToolCallSpec(std::vector<ToolCallSpec::Tool> tools,
                                                                     bool parallel) {
  if (tools.empty()) return absl::InvalidArgumentError("tools: at least one tool is needed");
  nlohmann::json names = nlohmann::json::array();
  for (std::size_t i = 0; i < tools.size(); ++i) {
    const std::string& name = tools[i].name;
    if (name.empty()) return absl::InvalidArgumentError(absl::StrCat("tools[", i, "].name: empty"));
    for (const char c : name) {
      if (c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20) {
        return absl::InvalidArgumentError(absl::StrCat("tools[", i, "].name: a quote, backslash or control byte"));
      }
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (tools[j].name == name) return absl::InvalidArgumentError(absl::StrCat("tools[", i, "].name: duplicate"));
    }
    if (tools[i].args == nullptr) return absl::InvalidArgumentError(absl::StrCat("tools[", i, "].args: missing"));
    names.push_back(name);
  }
  absl::StatusOr<std::shared_ptr<const JsonGrammar>> grammar =
      JsonGrammar::Compile(nlohmann::json{{"enum", names}}.dump());
  if (!grammar.ok()) return grammar.status();
  auto spec = std::make_shared<ToolCallSpec>();
  spec->tools = std::move(tools);
  spec->names = *std::move(grammar);
  spec->parallel = parallel;
  return spec;
}

ConstraintVocabulary::ConstraintVocabulary(std::span<const std::string_view> token_bytes, std::span<const bool> special,
                                           ControlTokens control)
    : bytes_(token_bytes.begin(), token_bytes.end()),
      special_(ToVector(special)),
      control_(std::move(control)),
      trie_(token_bytes, special),
      ordinary_(MaskWords(static_cast<std::int32_t>(token_bytes.size())), 0u),
      unquoted_(ordinary_.size(), 0u) {
  for (std::size_t id = 0; id < token_bytes.size(); ++id) {
    if (special[id] || token_bytes[id].empty()) continue;
    SetBit(ordinary_, static_cast<std::int32_t>(id));
    if (token_bytes[id].find('"') == std::string_view::npos) SetBit(unquoted_, static_cast<std::int32_t>(id));
  }
}

const std::vector<std::uint32_t>* MaskCache::Find(const JsonMatcher& matcher) {
  auto it = index_.find(matcher);
  if (it == index_.end()) {
    ++misses_;
    return nullptr;
  }
  ++hits_;
  lru_.splice(lru_.begin(), lru_, it->second);
  return &it->second->second;
}

void MaskCache::Insert(const JsonMatcher& matcher, std::span<const std::uint32_t> mask) {
  if (capacity_ == 0 || index_.contains(matcher)) return;
  lru_.emplace_front(matcher, std::vector<std::uint32_t>(mask.begin(), mask.end()));
  index_.emplace(matcher, lru_.begin());
  if (lru_.size() > capacity_) {
    index_.erase(lru_.back().first);
    lru_.pop_back();
  }
}

TokenConstraint::TokenConstraint(std::shared_ptr<const ConstraintVocabulary> vocab,
                                 const ResponseConstraint& constraint)
    : vocab_(std::move(vocab)),
      tools_(constraint.grammar == nullptr ? constraint.tool_calls : nullptr),
      allow_think_(constraint.allow_think && vocab_->has_think()),
      matcher_(constraint.grammar != nullptr ? constraint.grammar : constraint.tool_calls->names) {}

bool TokenConstraint::IsEos(std::int32_t token) const {
  const std::span<const std::int32_t> eos = vocab_->eos_ids();
  return std::find(eos.begin(), eos.end(), token) != eos.end();
}

void TokenConstraint::MatcherMask(const JsonMatcher& m, std::span<std::uint32_t> mask, MaskCache* cache) const {
  if (cache == nullptr) {
    vocab_->trie().FillAllowed(m, mask);
    return;
  }
  const JsonMatcher key = m.MaskKey(vocab_->trie().max_token_bytes());
  if (const std::vector<std::uint32_t>* hit = cache->Find(key)) {
    std::copy(hit->begin(), hit->end(), mask.begin());
  } else {
    vocab_->trie().FillAllowed(m, mask);
    cache->Insert(key, mask);
  }
}

bool TokenConstraint::NameComplete() const {
  JsonMatcher probe = matcher_;
  return !name_.empty() && probe.ConsumeByte('"');
}

void TokenConstraint::FillAllowed(std::span<std::uint32_t> mask, MaskCache* cache) const {
  const bool think_here = phase_ == Phase::kStart && allow_think_;
  switch (phase_) {
    case Phase::kStart:
    case Phase::kText:
      if (tools_ != nullptr) {
        std::fill(mask.begin(), mask.end(), 0u);
        SetBit(mask, vocab_->tool_calls());
        if (think_here) SetBit(mask, vocab_->begin_think());
        return;
      }
      [[fallthrough]];
    case Phase::kJson:
    case Phase::kArgs:
      MatcherMask(matcher_, mask, cache);
      if (think_here) SetBit(mask, vocab_->begin_think());
      if (matcher_.CanEnd()) {
        for (std::int32_t id : vocab_->eos_ids()) SetBit(mask, id);
        if (phase_ == Phase::kArgs && tools_->parallel) SetBit(mask, vocab_->tool_calls());
      }
      return;
    case Phase::kName: {
      MatcherMask(matcher_, mask, cache);
      const std::span<const std::uint32_t> unquoted = vocab_->unquoted_mask();
      for (std::size_t w = 0; w < mask.size(); ++w) mask[w] &= unquoted[w];
      if (NameComplete()) SetBit(mask, vocab_->args());
      return;
    }
    case Phase::kThinkFirst:
    case Phase::kThinking: {
      const std::span<const std::uint32_t> ordinary = vocab_->ordinary_mask();
      std::copy(ordinary.begin(), ordinary.end(), mask.begin());
      if (phase_ == Phase::kThinking) SetBit(mask, vocab_->end_think());
      return;
    }
    case Phase::kDone:
      std::fill(mask.begin(), mask.end(), 0u);
      for (std::int32_t id : vocab_->eos_ids()) SetBit(mask, id);
      return;
  }
}

bool TokenConstraint::Allows(std::int32_t token) const {
  if (token < 0 || token >= vocab_->vocab_size()) return false;
  const bool ordinary = !vocab_->special(token) && !vocab_->bytes(token).empty();
  if (phase_ == Phase::kStart && allow_think_ && token == vocab_->begin_think()) return true;
  switch (phase_) {
    case Phase::kStart:
    case Phase::kText:
      if (tools_ != nullptr) return token == vocab_->tool_calls();
      [[fallthrough]];
    case Phase::kJson:
    case Phase::kArgs: {
      if (IsEos(token)) return matcher_.CanEnd();
      if (phase_ == Phase::kArgs && token == vocab_->tool_calls()) return tools_->parallel && matcher_.CanEnd();
      if (!ordinary) return false;
      JsonMatcher probe = matcher_;
      return probe.Consume(vocab_->bytes(token));
    }
    case Phase::kName: {
      if (token == vocab_->args()) return NameComplete();
      if (!ordinary || vocab_->bytes(token).find('"') != std::string_view::npos) return false;
      JsonMatcher probe = matcher_;
      return probe.Consume(vocab_->bytes(token));
    }
    case Phase::kThinkFirst:
    case Phase::kThinking:
      if (phase_ == Phase::kThinking && token == vocab_->end_think()) return true;
      return ordinary;
    case Phase::kDone:
      return IsEos(token);
  }
  return false;
}

bool TokenConstraint::Accept(std::int32_t token) {
  if (token < 0 || token >= vocab_->vocab_size()) return false;
  // An ordinary token where the matcher reads text: Consume is the check
  // (all or nothing), so the token's bytes are stepped once.
  const bool reading = phase_ == Phase::kJson || phase_ == Phase::kArgs || phase_ == Phase::kName ||
                       (phase_ == Phase::kStart && tools_ == nullptr);
  const std::string_view bytes = vocab_->bytes(token);
  if (reading && !vocab_->special(token) && !bytes.empty()) {
    if (phase_ == Phase::kName && bytes.find('"') != std::string_view::npos) return false;
    if (!matcher_.Consume(bytes)) return false;
    if (phase_ == Phase::kName) name_ += bytes;
    if (phase_ == Phase::kStart) phase_ = Phase::kJson;
    return true;
  }
  // A control token (or an ordinary one where any is allowed).
  if (!Allows(token)) return false;
  if (phase_ == Phase::kStart && allow_think_ && token == vocab_->begin_think()) {
    phase_ = Phase::kThinkFirst;
    return true;
  }
  auto start_name = [&] {
    matcher_ = JsonMatcher(tools_->names);
    matcher_.ConsumeByte('"');  // the name is a JSON string's contents
    name_.clear();
    phase_ = Phase::kName;
  };
  switch (phase_) {
    case Phase::kStart:
    case Phase::kText:
    case Phase::kJson:
    case Phase::kArgs:
      if (IsEos(token)) {
        phase_ = Phase::kDone;
      } else {
        start_name();  // [TOOL_CALLS]: the only other control token Allows lets through here
      }
      return true;
    case Phase::kName:  // [ARGS]
      for (const ToolCallSpec::Tool& tool : tools_->tools) {
        if (tool.name == name_) matcher_ = JsonMatcher(tool.args);
      }
      phase_ = Phase::kArgs;
      return true;
    case Phase::kThinkFirst:
      phase_ = Phase::kThinking;
      return true;
    case Phase::kThinking:
      if (token == vocab_->end_think()) phase_ = tools_ != nullptr ? Phase::kText : Phase::kJson;
      return true;
    case Phase::kDone:
      return true;
  }
  return false;
}

}  // namespace sirocco::engine::structured
