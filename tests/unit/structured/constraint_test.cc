// TokenConstraint over a small hand-made vocabulary: the token language of
// constraint.h (think section, JSON, EOS), checked against expectations
// written out by hand, and FillAllowed against Allows for every token.
#include "engine/structured/constraint.h"

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "gtest/gtest.h"

namespace sirocco::engine::structured {
namespace {

constexpr std::int32_t kEos = 2;
constexpr std::int32_t kBeginThink = 3;
constexpr std::int32_t kEndThink = 4;
constexpr std::int32_t kToolCalls = 5;
constexpr std::int32_t kArgs = 6;
constexpr std::int32_t kNumSpecial = 7;

// Ordinary tokens after the specials, by their text.
const std::vector<std::string> kOrdinary = {"{", "}",  "\"", "a",   "\"a\"",    ":",           " ",      "{\"", "true",
                                            "x", "}}", "",   "get", "_weather", "get_weather", "lookup", "\"x", "city"};

std::int32_t Id(std::string_view text) {
  for (std::size_t i = 0; i < kOrdinary.size(); ++i) {
    if (kOrdinary[i] == text) return kNumSpecial + static_cast<std::int32_t>(i);
  }
  ADD_FAILURE() << "no token " << text;
  return -1;
}

std::shared_ptr<const ConstraintVocabulary> Vocabulary() {
  std::vector<std::string_view> bytes(kNumSpecial, std::string_view());
  for (const std::string& t : kOrdinary) bytes.push_back(t);
  std::unique_ptr<bool[]> special(new bool[bytes.size()]);
  for (std::size_t i = 0; i < bytes.size(); ++i) special[i] = i < kNumSpecial;
  return std::make_shared<const ConstraintVocabulary>(bytes, std::span<const bool>(special.get(), bytes.size()),
                                                      ControlTokens{kBeginThink, kEndThink, kToolCalls, kArgs, {kEos}});
}

ResponseConstraint Schema(bool allow_think) {
  auto grammar = JsonGrammar::Compile(
      R"({"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"],
          "additionalProperties": false})");
  EXPECT_TRUE(grammar.ok()) << grammar.status();
  return ResponseConstraint{grammar.ok() ? *grammar : nullptr, nullptr, allow_think};
}

// The allowed ids, from FillAllowed, after checking it agrees with Allows.
std::vector<std::int32_t> Allowed(const TokenConstraint& c, std::int32_t vocab) {
  std::vector<std::uint32_t> mask(MaskWords(vocab), 0xffffffffu);
  c.FillAllowed(mask);
  std::vector<std::int32_t> out;
  for (std::int32_t id = 0; id < vocab; ++id) {
    EXPECT_EQ(MaskBit(mask, id), c.Allows(id)) << "token " << id;
    if (MaskBit(mask, id)) out.push_back(id);
  }
  return out;
}

TEST(TokenConstraint, JsonThenOnlyEos) {
  auto vocab = Vocabulary();
  TokenConstraint c(vocab, Schema(/*allow_think=*/false));
  EXPECT_EQ(Allowed(c, vocab->vocab_size()), (std::vector<std::int32_t>{Id("{"), Id(" "), Id("{\"")}));
  EXPECT_FALSE(c.Accept(Id("}")));
  EXPECT_FALSE(c.Accept(kEos));
  EXPECT_FALSE(c.Accept(kBeginThink));
  for (const char* t : {"{\"", "a", "\"", ":", " ", "true"}) ASSERT_TRUE(c.Accept(Id(t))) << t;
  // `}` closes the document; `}}` would close one object too many.
  EXPECT_EQ(Allowed(c, vocab->vocab_size()), (std::vector<std::int32_t>{Id("}"), Id(" ")}));
  ASSERT_TRUE(c.Accept(Id("}")));
  EXPECT_EQ(Allowed(c, vocab->vocab_size()), (std::vector<std::int32_t>{kEos}));
  EXPECT_FALSE(c.done());
  ASSERT_TRUE(c.Accept(kEos));
  EXPECT_TRUE(c.done());
  EXPECT_EQ(Allowed(c, vocab->vocab_size()), (std::vector<std::int32_t>{kEos}));
}

TEST(TokenConstraint, ThinkSectionHoldsAtLeastOneOrdinaryToken) {
  auto vocab = Vocabulary();
  TokenConstraint c(vocab, Schema(/*allow_think=*/true));
  EXPECT_TRUE(c.Allows(kBeginThink));
  ASSERT_TRUE(c.Accept(kBeginThink));
  // Reasoning: any ordinary token with bytes; [/THINK] only after one.
  std::vector<std::int32_t> ordinary;
  for (std::int32_t id = kNumSpecial; id < vocab->vocab_size(); ++id) {
    if (!vocab->bytes(id).empty()) ordinary.push_back(id);
  }
  EXPECT_EQ(Allowed(c, vocab->vocab_size()), ordinary);
  ASSERT_TRUE(c.Accept(Id("x")));
  EXPECT_TRUE(c.Allows(kEndThink));
  EXPECT_FALSE(c.Allows(kEos));
  EXPECT_FALSE(c.Allows(kBeginThink));
  ASSERT_TRUE(c.Accept(Id("}")));  // free text inside the think section
  ASSERT_TRUE(c.Accept(kEndThink));
  // Then the JSON document, with no second think section.
  EXPECT_EQ(Allowed(c, vocab->vocab_size()), (std::vector<std::int32_t>{Id("{"), Id(" "), Id("{\"")}));
  for (const char* t : {"{", "\"a\"", ":", "true", "}"}) ASSERT_TRUE(c.Accept(Id(t))) << t;
  ASSERT_TRUE(c.Accept(kEos));
  EXPECT_TRUE(c.done());
}

TEST(TokenConstraint, NoThinkWithoutThinkTokens) {
  std::vector<std::string_view> bytes = {"", "", "", "{", "}"};
  const bool special[] = {true, true, true, false, false};
  auto vocab = std::make_shared<const ConstraintVocabulary>(bytes, special, ControlTokens{-1, -1, -1, -1, {2}});
  TokenConstraint c(vocab, ResponseConstraint{JsonGrammar::AnyObjectOrArray(), nullptr, true});
  EXPECT_EQ(Allowed(c, vocab->vocab_size()), (std::vector<std::int32_t>{3}));
  ASSERT_TRUE(c.Accept(3));
  ASSERT_TRUE(c.Accept(4));
  EXPECT_EQ(Allowed(c, vocab->vocab_size()), (std::vector<std::int32_t>{2}));
}

// Masks from a cache equal masks computed afresh, along a walk that revisits
// states (the same document twice) and across two constraints sharing it.
TEST(TokenConstraint, CachedMasksEqualFreshOnes) {
  auto vocab = Vocabulary();
  MaskCache cache(16);
  const ResponseConstraint schema = Schema(/*allow_think=*/false);  // one grammar: states compare equal
  for (int round = 0; round < 2; ++round) {
    TokenConstraint cached(vocab, schema);
    TokenConstraint fresh(vocab, schema);
    for (const char* t : {"{", " ", "\"a\"", ":", "true", "}"}) {
      std::vector<std::uint32_t> a(MaskWords(vocab->vocab_size())), b(a.size());
      cached.FillAllowed(a, &cache);
      fresh.FillAllowed(b);
      EXPECT_EQ(a, b) << "before " << t << " in round " << round;
      ASSERT_TRUE(cached.Accept(Id(t)));
      ASSERT_TRUE(fresh.Accept(Id(t)));
    }
  }
  EXPECT_GT(cache.hits(), 0);
  EXPECT_GT(cache.misses(), 0);
}

// Inside a string without maxLength the state stops changing once minLength
// is reached, so a long free string hits the mask cache at every step; with
// maxLength it must not (the count decides when the string may go on).
TEST(TokenConstraint, FreeStringStatesRepeatSoTheirMasksAreCached) {
  auto free = JsonGrammar::Compile(R"({"type": "string", "minLength": 2})");
  ASSERT_TRUE(free.ok()) << free.status();
  JsonMatcher a(*free), b(*free);
  ASSERT_TRUE(a.Consume("\"xy"));
  ASSERT_TRUE(b.Consume("\"xyzzy"));
  EXPECT_TRUE(a == b);
  EXPECT_EQ(a.Hash(), b.Hash());
  JsonMatcher short_one(*free);
  ASSERT_TRUE(short_one.Consume("\"x"));
  EXPECT_FALSE(short_one == a) << "below minLength the count still matters";
  auto bounded = JsonGrammar::Compile(R"({"type": "string", "maxLength": 8})");
  ASSERT_TRUE(bounded.ok()) << bounded.status();
  JsonMatcher c(*bounded), d(*bounded);
  ASSERT_TRUE(c.Consume("\"xy"));
  ASSERT_TRUE(d.Consume("\"xyzzy"));
  EXPECT_FALSE(c == d);
}

// MaskKey keeps masks: along random walks through schemas with string
// length bounds, the mask of the key state equals the mask of the state
// itself, on a vocabulary of short random tokens (quotes, escapes, a
// two-byte character, structure) whose longest token sets how far a bound
// can be seen.
TEST(TokenConstraint, MaskKeysHaveTheStatesMasks) {
  std::mt19937 rng(11);
  const std::vector<std::string> pieces = {"a", "b", "\xc3\xa9", "\"", "\\", "n", " ", "{", "}", ",", ":", "1", "s"};
  std::vector<std::string> tokens;
  std::uniform_int_distribution<int> len(1, 5), piece(0, static_cast<int>(pieces.size()) - 1);
  for (int i = 0; i < 400; ++i) {
    std::string t;
    for (int n = len(rng); n > 0; --n) t += pieces[static_cast<std::size_t>(piece(rng))];
    tokens.push_back(t);
  }
  std::vector<std::string_view> bytes(tokens.begin(), tokens.end());
  std::unique_ptr<bool[]> excluded(new bool[bytes.size()]());
  const TokenTrie trie(bytes, std::span<const bool>(excluded.get(), bytes.size()));
  const std::int32_t vocab = trie.vocab_size();
  for (const char* schema :
       {R"({"type": "string", "maxLength": 40})", R"({"type": "string", "minLength": 12, "maxLength": 30})",
        R"({"type": "string", "minLength": 25})",
        R"({"type": "object", "properties": {"s": {"type": "string", "minLength": 3, "maxLength": 50}},
            "required": ["s"], "additionalProperties": false})",
        R"({"anyOf": [{"type": "string", "maxLength": 20}, {"type": "string", "minLength": 9}]})"}) {
    auto grammar = JsonGrammar::Compile(schema);
    ASSERT_TRUE(grammar.ok()) << grammar.status();
    int keyed = 0;
    for (int walk = 0; walk < 20; ++walk) {
      JsonMatcher m(*grammar);
      for (int step = 0; step < 60 && !m.MustEnd(); ++step) {
        std::vector<std::uint32_t> real(MaskWords(vocab)), by_key(real.size());
        trie.FillAllowed(m, real);
        const JsonMatcher key = m.MaskKey(trie.max_token_bytes());
        keyed += key == m ? 0 : 1;
        trie.FillAllowed(key, by_key);
        ASSERT_EQ(real, by_key) << schema << " walk " << walk << " step " << step;
        std::vector<std::int32_t> allowed;
        for (std::int32_t id = 0; id < vocab; ++id) {
          if (MaskBit(real, id)) allowed.push_back(id);
        }
        if (allowed.empty()) break;
        const std::int32_t pick = allowed[std::uniform_int_distribution<std::size_t>(0, allowed.size() - 1)(rng)];
        ASSERT_TRUE(m.Consume(tokens[static_cast<std::size_t>(pick)]));
      }
    }
    EXPECT_GT(keyed, 0) << schema << ": no state was ever canonicalised";
  }
}

std::shared_ptr<const ToolCallSpec> Tools(bool parallel) {
  auto city = JsonGrammar::Compile(R"({"type": "object", "properties": {"city": {"type": "string"}},
                                       "required": ["city"], "additionalProperties": false})");
  EXPECT_TRUE(city.ok()) << city.status();
  auto spec = MakeToolCallSpec({{"get_weather", *city}, {"lookup", JsonGrammar::AnyObjectOrArray()}}, parallel);
  EXPECT_TRUE(spec.ok()) << spec.status();
  return *spec;
}

std::vector<std::int32_t> Ids(std::initializer_list<const char*> texts) {
  std::vector<std::int32_t> out;
  for (const char* t : texts) out.push_back(Id(t));
  std::sort(out.begin(), out.end());
  return out;
}

TEST(TokenConstraint, ForcedToolCallsNeedACallBeforeEos) {
  auto vocab = Vocabulary();
  TokenConstraint c(vocab, ResponseConstraint{nullptr, Tools(/*parallel=*/true), /*allow_think=*/true});
  // A think section may come first, then the calls: no text, no EOS.
  EXPECT_EQ(Allowed(c, vocab->vocab_size()), (std::vector<std::int32_t>{kBeginThink, kToolCalls}));
  ASSERT_TRUE(c.Accept(kBeginThink));
  ASSERT_TRUE(c.Accept(Id("x")));
  ASSERT_TRUE(c.Accept(kEndThink));
  EXPECT_EQ(Allowed(c, vocab->vocab_size()), (std::vector<std::int32_t>{kToolCalls}));
  EXPECT_FALSE(c.Accept(Id("x")));
  ASSERT_TRUE(c.Accept(kToolCalls));
  // A name: pieces of the tools' names only, never a quote.
  EXPECT_EQ(Allowed(c, vocab->vocab_size()), Ids({"get", "get_weather", "lookup"}));
  ASSERT_TRUE(c.Accept(Id("get")));
  EXPECT_EQ(Allowed(c, vocab->vocab_size()), Ids({"_weather"}));
  ASSERT_TRUE(c.Accept(Id("_weather")));
  EXPECT_EQ(Allowed(c, vocab->vocab_size()), (std::vector<std::int32_t>{kArgs}));
  ASSERT_TRUE(c.Accept(kArgs));
  // The arguments follow get_weather's schema.
  EXPECT_FALSE(c.Allows(Id("}")));
  for (const char* t : {"{\"", "city", "\"", ":", "\"a\"", "}"}) ASSERT_TRUE(c.Accept(Id(t))) << t;
  EXPECT_EQ(Allowed(c, vocab->vocab_size()), (std::vector<std::int32_t>{kEos, kToolCalls}));
  // A second call, to the other tool, with any object.
  ASSERT_TRUE(c.Accept(kToolCalls));
  ASSERT_TRUE(c.Accept(Id("lookup")));
  ASSERT_TRUE(c.Accept(kArgs));
  ASSERT_TRUE(c.Accept(Id("{")));
  ASSERT_TRUE(c.Accept(Id("}")));
  ASSERT_TRUE(c.Accept(kEos));
  EXPECT_TRUE(c.done());
}

TEST(TokenConstraint, OneCallWhenParallelCallsAreOff) {
  auto vocab = Vocabulary();
  TokenConstraint c(vocab, ResponseConstraint{nullptr, Tools(/*parallel=*/false), false});
  EXPECT_FALSE(c.Allows(kBeginThink));
  for (std::int32_t t : {kToolCalls, Id("lookup"), kArgs, Id("{"), Id("}")}) ASSERT_TRUE(c.Accept(t)) << t;
  EXPECT_EQ(Allowed(c, vocab->vocab_size()), (std::vector<std::int32_t>{kEos}));
}

TEST(TokenConstraint, ToolCallSpecsRefuseBadNames) {
  auto any = JsonGrammar::AnyObjectOrArray();
  EXPECT_EQ(MakeToolCallSpec({}, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeToolCallSpec({{"a", any}, {"a", any}}, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeToolCallSpec({{"a\"b", any}}, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeToolCallSpec({{"", any}}, true).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(MakeToolCallSpec({{"a-b_c", any}}, true).ok());
}

}  // namespace
}  // namespace sirocco::engine::structured
