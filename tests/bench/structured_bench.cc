// TokenTrie::FillAllowed on the real tekken vocabulary (131072 ids, 1000
// special) for typical matcher states, next to the brute-force baseline on
// the same states: a copy of the matcher Consumes each token's bytes.
// items/s are vocabulary tokens decided per second; the time per iteration
// is one whole-vocabulary mask.
//
// Flags (removed before benchmark::Initialize):
//   --tokenizer=FILE   a tekken.json (default: third_party/tekken/tekken_240911.json)
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/structured/json_grammar.h"
#include "engine/structured/token_trie.h"
#include "tests/unit/structured/tekken_tokens.h"

namespace sirocco::engine::structured {
namespace {

std::string g_tokenizer = std::string(SIROCCO_TEKKEN_DIR) + "/tekken_240911.json";  // --tokenizer

struct Vocab {
  std::vector<std::string> bytes;
  std::unique_ptr<bool[]> excluded;
  std::vector<std::string_view> views;
  std::unique_ptr<TokenTrie> trie;
};

// Loaded once; null when the file is missing.
const Vocab* GetVocab() {
  static const std::unique_ptr<Vocab> vocab = []() -> std::unique_ptr<Vocab> {
    std::optional<testing::TekkenTokens> tokens = testing::LoadTekkenTokens(g_tokenizer);
    if (!tokens.has_value()) return nullptr;
    auto v = std::make_unique<Vocab>();
    v->bytes = std::move(tokens->bytes);
    v->excluded = std::make_unique<bool[]>(v->bytes.size());
    for (std::size_t id = 0; id < v->bytes.size(); ++id) v->excluded[id] = tokens->special[id] != 0;
    for (const auto& b : v->bytes) v->views.push_back(b);
    v->trie = std::make_unique<TokenTrie>(v->views, std::span<const bool>(v->excluded.get(), v->bytes.size()));
    return v;
  }();
  return vocab.get();
}

constexpr std::string_view kSchema = R"({"type":"object","properties":{
    "name":{"type":"string"},"age":{"type":"integer","minimum":0,"maximum":150},
    "tags":{"type":"array","items":{"type":"string"}}},"required":["name","age"]})";

// The states: (name, text consumed so far).
struct StateCase {
  const char* name;
  const char* prefix;
};
constexpr StateCase kStates[] = {
    {"start", ""},
    {"in_string", "{\"name\": \"Jo"},
    {"after_key", "{\"name\""},
    {"in_number", "{\"name\": \"Jo\", \"age\": 4"},
    {"after_value", "{\"name\": \"Jo\", \"age\": 42"},
};

JsonMatcher StateFor(int index) {
  static const auto grammar = *JsonGrammar::Compile(kSchema);
  JsonMatcher m(grammar);
  m.Consume(kStates[index].prefix);
  return m;
}

void BM_FillAllowed(benchmark::State& state) {
  const Vocab* v = GetVocab();
  if (!v) return state.SkipWithError(("no tokenizer file " + g_tokenizer).c_str());
  const JsonMatcher m = StateFor(static_cast<int>(state.range(0)));
  std::vector<std::uint32_t> mask(MaskWords(v->trie->vocab_size()));
  for (auto _ : state) {
    v->trie->FillAllowed(m, mask);
    benchmark::DoNotOptimize(mask.data());
  }
  int allowed = 0;
  for (std::int32_t id = 0; id < v->trie->vocab_size(); ++id) allowed += MaskBit(mask, id);
  state.counters["allowed"] = allowed;
  state.SetLabel(kStates[state.range(0)].name);
  state.SetItemsProcessed(state.iterations() * v->trie->vocab_size());
}

void BM_BruteForce(benchmark::State& state) {
  const Vocab* v = GetVocab();
  if (!v) return state.SkipWithError(("no tokenizer file " + g_tokenizer).c_str());
  const JsonMatcher m = StateFor(static_cast<int>(state.range(0)));
  std::vector<std::uint32_t> mask(MaskWords(static_cast<std::int32_t>(v->bytes.size())));
  for (auto _ : state) {
    std::fill(mask.begin(), mask.end(), 0u);
    for (std::size_t id = 0; id < v->bytes.size(); ++id) {
      if (v->excluded[id] || v->bytes[id].empty()) continue;
      JsonMatcher copy = m;
      if (copy.Consume(v->bytes[id])) mask[id / 32] |= 1u << (id % 32);
    }
    benchmark::DoNotOptimize(mask.data());
  }
  state.SetLabel(kStates[state.range(0)].name);
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(v->bytes.size()));
}

BENCHMARK(BM_FillAllowed)->DenseRange(0, 4)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_BruteForce)->DenseRange(0, 4)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace sirocco::engine::structured

int main(int argc, char** argv) {
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.rfind("--tokenizer=", 0) == 0) {
      sirocco::engine::structured::g_tokenizer = std::string(arg.substr(12));
    } else {
      args.push_back(argv[i]);
    }
  }
  int n = static_cast<int>(args.size());
  benchmark::Initialize(&n, args.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
