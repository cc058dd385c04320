#include "engine/structured/constraint.h"

#include <algorithm>
#include <utility>

namespace sirocco::engine::structured {
namespace {

void SetBit(std::span<std::uint32_t> mask, std::int32_t id) {
  mask[static_cast<std::size_t>(id) / 32] |= 1u << (static_cast<unsigned>(id) % 32);
}

std::vector<bool> ToVector(std::span<const bool> flags) { return std::vector<bool>(flags.begin(), flags.end()); }

}  // namespace

ConstraintVocabulary::ConstraintVocabulary(std::span<const std::string_view> token_bytes, std::span<const bool> special,
                                           std::int32_t begin_think, std::int32_t end_think,
                                           std::vector<std::int32_t> eos_ids)
    : bytes_(token_bytes.begin(), token_bytes.end()),
      special_(ToVector(special)),
      begin_think_(begin_think),
      end_think_(end_think),
      eos_ids_(std::move(eos_ids)),
      trie_(token_bytes, special),
      ordinary_(MaskWords(static_cast<std::int32_t>(token_bytes.size())), 0u) {
  for (std::size_t id = 0; id < token_bytes.size(); ++id) {
    if (!special[id] && !token_bytes[id].empty()) SetBit(ordinary_, static_cast<std::int32_t>(id));
  }
}

TokenConstraint::TokenConstraint(std::shared_ptr<const ConstraintVocabulary> vocab,
                                 const ResponseConstraint& constraint)
    : vocab_(std::move(vocab)),
      allow_think_(constraint.allow_think && vocab_->has_think()),
      matcher_(constraint.grammar) {}

bool TokenConstraint::IsEos(std::int32_t token) const {
  const std::span<const std::int32_t> eos = vocab_->eos_ids();
  return std::find(eos.begin(), eos.end(), token) != eos.end();
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

void TokenConstraint::FillAllowed(std::span<std::uint32_t> mask, MaskCache* cache) const {
  switch (phase_) {
    case Phase::kStart:
    case Phase::kJson:
      if (cache == nullptr) {
        vocab_->trie().FillAllowed(matcher_, mask);
      } else {
        const JsonMatcher key = matcher_.MaskKey(vocab_->trie().max_token_bytes());
        if (const std::vector<std::uint32_t>* hit = cache->Find(key)) {
          std::copy(hit->begin(), hit->end(), mask.begin());
        } else {
          vocab_->trie().FillAllowed(matcher_, mask);
          cache->Insert(key, mask);
        }
      }
      if (phase_ == Phase::kStart && allow_think_) SetBit(mask, vocab_->begin_think());
      if (matcher_.CanEnd()) {
        for (std::int32_t id : vocab_->eos_ids()) SetBit(mask, id);
      }
      return;
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
  switch (phase_) {
    case Phase::kStart:
    case Phase::kJson: {
      if (phase_ == Phase::kStart && allow_think_ && token == vocab_->begin_think()) return true;
      if (IsEos(token)) return matcher_.CanEnd();
      if (vocab_->special(token) || vocab_->bytes(token).empty()) return false;
      JsonMatcher probe = matcher_;
      return probe.Consume(vocab_->bytes(token));
    }
    case Phase::kThinkFirst:
    case Phase::kThinking:
      if (phase_ == Phase::kThinking && token == vocab_->end_think()) return true;
      return !vocab_->special(token) && !vocab_->bytes(token).empty();
    case Phase::kDone:
      return IsEos(token);
  }
  return false;
}

bool TokenConstraint::Accept(std::int32_t token) {
  if (!Allows(token)) return false;
  switch (phase_) {
    case Phase::kStart:
    case Phase::kJson:
      if (phase_ == Phase::kStart && allow_think_ && token == vocab_->begin_think()) {
        phase_ = Phase::kThinkFirst;
      } else if (IsEos(token)) {
        phase_ = Phase::kDone;
      } else {
        matcher_.Consume(vocab_->bytes(token));
        phase_ = Phase::kJson;
      }
      return true;
    case Phase::kThinkFirst:
      phase_ = Phase::kThinking;
      return true;
    case Phase::kThinking:
      if (token == vocab_->end_think()) phase_ = Phase::kJson;
      return true;
    case Phase::kDone:
      return true;
  }
  return false;
}

}  // namespace sirocco::engine::structured
