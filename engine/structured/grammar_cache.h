// Compiled JSON-schema grammars by schema text, so that a schema many
// requests share is compiled once per process.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "absl/status/statusor.h"
#include "engine/structured/json_grammar.h"

namespace sirocco::engine::structured {

class GrammarCache {
 public:
  explicit GrammarCache(std::size_t capacity = 256) : capacity_(capacity == 0 ? 1 : capacity) {}

  // JsonGrammar::Compile(schema_json), or the grammar compiled earlier for
  // the same text (the least recently used one goes when the cache is
  // full). An empty text is AnyObjectOrArray(). Errors are not cached.
  [[nodiscard]] absl::StatusOr<std::shared_ptr<const JsonGrammar>> Get(std::string_view schema_json);

 private:
  using Entry = std::pair<std::string, std::shared_ptr<const JsonGrammar>>;
  const std::size_t capacity_;
  std::mutex mu_;
  std::list<Entry> lru_;                                                    // guarded by mu_; most recent first
  std::unordered_map<std::string_view, std::list<Entry>::iterator> index_;  // guarded by mu_; keys view lru_
};

}  // namespace sirocco::engine::structured
