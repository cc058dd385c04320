// TokenTrie::FillAllowed against its definition: a token is allowed iff a
// copy of the matcher Consumes all of its bytes. Checked over many states
// reached by seeded random walks, on a synthetic vocabulary of tricky tokens
// and on the real tekken vocabulary.
#include "engine/structured/token_trie.h"

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "engine/structured/json_grammar.h"
#include "tests/unit/structured/tekken_tokens.h"

namespace sirocco::engine::structured {
namespace {

struct Vocab {
  std::vector<std::string> bytes;
  std::vector<char> excluded;  // vector<bool> has no span
};

Vocab SyntheticVocab() {
  Vocab v;
  auto add = [&](std::string s, bool excluded = false) {
    v.bytes.push_back(std::move(s));
    v.excluded.push_back(excluded);
  };
  add("<s>", true);
  add("{", true);  // excluded even though the grammar would take it
  add("");
  for (int c = 0; c < 256; ++c) add(std::string(1, static_cast<char>(c)));
  for (const char* s : {"{\"",
                        "\":",
                        "\",",
                        "\"}",
                        "}}",
                        "]}",
                        "},{",
                        "[{",
                        "[[",
                        "]]",
                        "\\\"",
                        "\\\\",
                        "\\u",
                        "\\u00",
                        "\\u00e9",
                        "\\ud8",
                        "\\n",
                        "\\",
                        "\"\"",
                        "  ",
                        "    ",
                        "\n",
                        "\n  ",
                        " \"",
                        "\t\t",
                        "true",
                        "false",
                        "null",
                        "nul",
                        "tr",
                        "12",
                        "0.",
                        "-0",
                        "1e",
                        "e+",
                        ".5",
                        "123456789",
                        "\"name\"",
                        "\"name\":",
                        "\"age\":",
                        "\"a",
                        "name",
                        "ag",
                        "\"x\"",
                        "1,",
                        "],",
                        "\": \"",
                        "\xc3",
                        "\xa9",
                        "\xc3\xa9",
                        "\xe4\xb8",
                        "\xb8\xad",
                        "\xf0\x9f\x98",
                        "\x98\x80",
                        "\xed\xa0\x80",
                        "\xc0\xaf",
                        "\xf0\x9f\x98\x80\"",
                        "\xc3\xa9\"}",
                        "é",
                        "中文",
                        "abc",
                        " abc",
                        "a\"b"}) {
    add(s);
  }
  add(std::string("\x01", 1));
  add(std::string("\0", 1));
  return v;
}

// Bytes for a failure message: printable ASCII as is, the rest as \xNN.
std::string Printable(const std::string& s) {
  std::string out;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7F) {
      out += ch;
    } else {
      static const char kHex[] = "0123456789abcdef";
      out += {'\\', 'x', kHex[c >> 4], kHex[c & 15]};
    }
  }
  return out;
}

// The tekken vocabulary; null when the file is missing.
std::unique_ptr<Vocab> TekkenVocab() {
  std::optional<testing::TekkenTokens> tokens =
      testing::LoadTekkenTokens(std::string(SIROCCO_TEKKEN_DIR) + "/tekken_240911.json");
  if (!tokens.has_value()) return nullptr;
  auto v = std::make_unique<Vocab>();
  v->bytes = std::move(tokens->bytes);
  v->excluded = std::move(tokens->special);
  return v;
}

class Checker {
 public:
  explicit Checker(const Vocab& v) : vocab_(v) {
    for (const auto& b : v.bytes) views_.push_back(b);
    flags_ = std::make_unique<bool[]>(v.excluded.size());
    for (std::size_t i = 0; i < v.excluded.size(); ++i) flags_[i] = v.excluded[i] != 0;
    trie_ = std::make_unique<TokenTrie>(views_, std::span<const bool>(flags_.get(), v.excluded.size()));
  }

  // Compares FillAllowed with the brute-force definition; returns the number
  // of allowed tokens.
  int Compare(const JsonMatcher& m, const std::string& context) {
    std::vector<std::uint32_t> mask(MaskWords(trie_->vocab_size()), 0xFFFFFFFFu);
    trie_->FillAllowed(m, mask);
    int allowed = 0, mismatches = 0;
    for (std::int32_t id = 0; id < trie_->vocab_size(); ++id) {
      const auto& bytes = vocab_.bytes[static_cast<std::size_t>(id)];
      JsonMatcher copy = m;
      const bool want = !vocab_.excluded[static_cast<std::size_t>(id)] && !bytes.empty() && copy.Consume(bytes);
      const bool got = MaskBit(mask, id);
      allowed += want;
      if (want != got && ++mismatches <= 5) {
        ADD_FAILURE() << context << ": token " << id << " '" << Printable(bytes) << "' brute force " << want << " trie "
                      << got;
      }
    }
    for (std::size_t w = MaskWords(trie_->vocab_size()) * 32; w > static_cast<std::size_t>(trie_->vocab_size());) {
      --w;  // padding bits stay clear
      EXPECT_FALSE(MaskBit(mask, static_cast<std::int32_t>(w))) << context;
    }
    return allowed;
  }

  // Random walks: from each state, check, then consume a random allowed token.
  void Walks(const std::shared_ptr<const JsonGrammar>& g, int walks, int steps, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    for (int w = 0; w < walks; ++w) {
      JsonMatcher m(g);
      std::string text;
      for (int s = 0; s < steps; ++s) {
        std::vector<std::uint32_t> mask(MaskWords(trie_->vocab_size()));
        trie_->FillAllowed(m, mask);
        const int allowed = Compare(m, "after '" + Printable(text) + "'");
        if (allowed == 0 || ::testing::Test::HasFailure()) break;
        std::vector<std::int32_t> ids;
        for (std::int32_t id = 0; id < trie_->vocab_size(); ++id) {
          if (MaskBit(mask, id)) ids.push_back(id);
        }
        const std::int32_t id = ids[std::uniform_int_distribution<std::size_t>(0, ids.size() - 1)(rng)];
        ASSERT_TRUE(m.Consume(vocab_.bytes[static_cast<std::size_t>(id)]));
        text += vocab_.bytes[static_cast<std::size_t>(id)];
      }
    }
  }

  const TokenTrie& trie() const { return *trie_; }

 private:
  const Vocab& vocab_;
  std::vector<std::string_view> views_;
  std::unique_ptr<bool[]> flags_;
  std::unique_ptr<TokenTrie> trie_;
};

const char* kSchemas[] = {
    "{}",
    R"({"type":"object","properties":{"name":{"type":"string","maxLength":8},"age":{"type":"integer","minimum":10,
        "maximum":250},"tags":{"type":"array","items":{"enum":["a","é",1,null]}}},"required":["name"],
        "additionalProperties":{"type":"number"}})",
    R"({"$defs":{"n":{"type":"object","properties":{"v":{"type":"number","minimum":-1,"maximum":1},
        "k":{"type":"array","items":{"$ref":"#/$defs/n"},"maxItems":2}},"required":["v"]}},"$ref":"#/$defs/n"})",
    R"({"anyOf":[{"type":"string","minLength":2},{"type":"array","prefixItems":[{"type":"boolean"}],"items":false},
        {"const":{"k":"\"q\\"}}]})",
};

TEST(TokenTrieTest, SyntheticVocabMatchesBruteForce) {
  const Vocab v = SyntheticVocab();
  Checker checker(v);
  EXPECT_EQ(checker.trie().vocab_size(), static_cast<std::int32_t>(v.bytes.size()));
  std::uint64_t seed = 1;
  for (const char* schema : kSchemas) {
    auto g = JsonGrammar::Compile(schema);
    ASSERT_TRUE(g.ok()) << g.status();
    checker.Walks(*g, 20, 40, seed++);
  }
  checker.Walks(JsonGrammar::AnyObjectOrArray(), 20, 40, seed++);
}

TEST(TokenTrieTest, ExcludedAndEmptyTokensNeverAllowed) {
  const Vocab v = SyntheticVocab();
  Checker checker(v);
  JsonMatcher m(JsonGrammar::AnyObjectOrArray());
  std::vector<std::uint32_t> mask(MaskWords(checker.trie().vocab_size()));
  checker.trie().FillAllowed(m, mask);
  EXPECT_FALSE(MaskBit(mask, 0));
  EXPECT_FALSE(MaskBit(mask, 1));  // "{" excluded
  EXPECT_FALSE(MaskBit(mask, 2));  // empty
  EXPECT_TRUE(MaskBit(mask, 3 + '{'));
  EXPECT_TRUE(MaskBit(mask, 3 + ' '));
  EXPECT_FALSE(MaskBit(mask, 3 + '"'));
}

TEST(TokenTrieTest, TekkenVocabMatchesBruteForce) {
  const auto v = TekkenVocab();
  if (!v) GTEST_SKIP() << "no " << SIROCCO_TEKKEN_DIR << "/tekken_240911.json";
  Checker checker(*v);
  std::uint64_t seed = 100;
  for (const char* schema : kSchemas) {
    auto g = JsonGrammar::Compile(schema);
    ASSERT_TRUE(g.ok()) << g.status();
    checker.Walks(*g, 3, 12, seed++);
  }
}

}  // namespace
}  // namespace sirocco::engine::structured
