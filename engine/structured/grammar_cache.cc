#include "engine/structured/grammar_cache.h"

#include <utility>

namespace sirocco::engine::structured {

absl::StatusOr<std::shared_ptr<const JsonGrammar>> GrammarCache::Get(std::string_view schema_json) {
  if (schema_json.empty()) return JsonGrammar::AnyObjectOrArray();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto it = index_.find(schema_json); it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return it->second->second;
    }
  }
  // Compiled outside the lock: a large schema must not stall other requests.
  absl::StatusOr<std::shared_ptr<const JsonGrammar>> grammar = JsonGrammar::Compile(schema_json);
  if (!grammar.ok()) return grammar.status();
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = index_.find(schema_json); it != index_.end()) return it->second->second;  // raced: keep the first
  lru_.emplace_front(std::string(schema_json), *grammar);
  index_.emplace(std::string_view(lru_.front().first), lru_.begin());
  while (lru_.size() > capacity_) {
    index_.erase(std::string_view(lru_.back().first));
    lru_.pop_back();
  }
  return *grammar;
}

}  // namespace sirocco::engine::structured
