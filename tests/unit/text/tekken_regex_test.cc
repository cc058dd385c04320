// The tekken pre-splitter: splits of hand-written strings worked out from the
// pattern's alternatives by hand, the translation's rejections, and every
// code point's class against tiktoken's (strings_golden/unicode_classes.txt,
// produced by probing tiktoken itself).
#include "engine/text/tekken_regex.h"

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "engine/text/utf8.h"
#include "gtest/gtest.h"

namespace sirocco::text {
namespace {

// The pattern of every tekken file mistral-common ships.
constexpr std::string_view kTekkenPattern =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

class TekkenSplit : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto p = PreTokenizer::Create(kTekkenPattern);
    ASSERT_TRUE(p.ok()) << p.status();
    pre_ = p->release();
  }
  static void TearDownTestSuite() { delete pre_; }
  static std::vector<std::string> Split(std::string_view text) {
    std::vector<std::string> pieces;
    pre_->Split(text, [&](std::string_view piece) { pieces.emplace_back(piece); });
    return pieces;
  }
  static PreTokenizer* pre_;
};
PreTokenizer* TekkenSplit::pre_ = nullptr;

using Pieces = std::vector<std::string>;

TEST_F(TekkenSplit, UsesJit) { EXPECT_TRUE(pre_->jit()); }

TEST_F(TekkenSplit, WordsTakeTheirLeadingSpace) {
  EXPECT_EQ(Split("Hello world"), (Pieces{"Hello", " world"}));
  // \s+(?!\S) gives back the last space, which then leads the word.
  EXPECT_EQ(Split("Hello  world"), (Pieces{"Hello", " ", " world"}));
  EXPECT_EQ(Split("hi  "), (Pieces{"hi", "  "}));  // at the end the lookahead holds
  EXPECT_EQ(Split(" \t\tfoo"), (Pieces{" \t", "\tfoo"}));
}

TEST_F(TekkenSplit, CaseRuns) {
  EXPECT_EQ(Split("HELLOworld"), (Pieces{"HELLOworld"}));  // upper run then lower run: one piece
  EXPECT_EQ(Split("helloWorld"), (Pieces{"hello", "World"}));
  EXPECT_EQ(Split("A1b2"), (Pieces{"A", "1", "b", "2"}));
  EXPECT_EQ(Split("\xC7\x84" "emal"), (Pieces{"\xC7\x84" "emal"}));  // U+01C4 (Lu) + lower
}

TEST_F(TekkenSplit, DigitsOneByOne) { EXPECT_EQ(Split("123456"), (Pieces{"1", "2", "3", "4", "5", "6"})); }

TEST_F(TekkenSplit, NewlinesAndPunctuation) {
  EXPECT_EQ(Split("a\r\nb"), (Pieces{"a", "\r\n", "b"}));
  EXPECT_EQ(Split("x   \n\n  y"), (Pieces{"x", "   \n\n", " ", " y"}));
  EXPECT_EQ(Split("don't"), (Pieces{"don", "'t"}));
  EXPECT_EQ(Split("!!!?"), (Pieces{"!!!?"}));
  EXPECT_EQ(Split("a...\n\nb"), (Pieces{"a", "...\n\n", "b"}));
  EXPECT_EQ(Split("path/to/file"), (Pieces{"path", "/to", "/file"}));
  EXPECT_EQ(Split("   "), (Pieces{"   "}));
}

TEST_F(TekkenSplit, UnicodeClasses) {
  EXPECT_EQ(Split(" \xE4\xB8\xAD\xE6\x96\x87\xE5\xAD\x97"), (Pieces{" \xE4\xB8\xAD\xE6\x96\x87\xE5\xAD\x97"}));
  EXPECT_EQ(Split("e\xCC\x81"), (Pieces{"e\xCC\x81"}));  // combining acute stays with its letter
  // U+0085 is White_Space for tiktoken (PCRE2's own \s lacks it): the run of
  // two gives its last one back to the letter.
  EXPECT_EQ(Split("x\xC2\x85\xC2\x85y"), (Pieces{"x", "\xC2\x85", "\xC2\x85y"}));
  // U+16D43, a Kirat Rai letter (Unicode 16.0, unknown to Unicode 14 tables).
  EXPECT_EQ(Split("a\xF0\x96\xB5\x83"), (Pieces{"a\xF0\x96\xB5\x83"}));
  // U+10940, a Sidetic letter (Unicode 17.0): unassigned for tiktoken too.
  EXPECT_EQ(Split("a\xF0\x90\xA5\x80"), (Pieces{"a", "\xF0\x90\xA5\x80"}));
}

TEST_F(TekkenSplit, LongPiecesNeedNoRecursion) {
  const std::string spaces(1 << 20, ' ');
  EXPECT_EQ(Split(spaces + "x"), (Pieces{spaces.substr(1), " x"}));
  std::string cjk;
  for (int i = 0; i < 300000; ++i) cjk += "\xE4\xB8\xAD";
  EXPECT_EQ(Split(cjk), (Pieces{cjk}));
}

TEST(TranslateTekkenPattern, SpellsOutWhiteSpaceAndPatchesProperties) {
  auto t = TranslateTekkenPattern(R"(\s+(?!\S)|[^\s\p{L}]|$)");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_NE(t->find(R"(\x{85})"), std::string::npos);
  EXPECT_NE(t->find(R"(\p{L})"), std::string::npos);
  EXPECT_EQ(t->find("\\s"), std::string::npos);
  EXPECT_NE(t->find("\\z"), std::string::npos);
}

TEST(TranslateTekkenPattern, RejectsWhatWouldMeanSomethingElse) {
  for (const char* p : {R"(\w+)", R"(\bx)", R"((?i)abc)", R"([[:alpha:]])", R"([a&&b])", R"([\P{L}])",
                        R"(\p{Greek})", R"([\S])", R"(\u{41})", R"([abc)"}) {
    EXPECT_FALSE(TranslateTekkenPattern(p).ok()) << p;
  }
  for (const char* p : {R"(\pL\pN)", R"((?:ab)+|(?=c)|(?<!d)e)", R"([\r\n/\-\]])", R"(\x{41}\.)", R"(\d+)"}) {
    EXPECT_TRUE(TranslateTekkenPattern(p).ok()) << p;
  }
}

// The probes of strings_unicode.py: which of them stay one piece tells the
// class of the code point.
std::string ClassOf(const PreTokenizer& pre, const std::string& c) {
  const std::string probes[] = {"a" + c, "A" + c, c + "Ab", "!!" + c, " " + c};
  int outcome = 0;
  for (const std::string& p : probes) {
    int pieces = 0;
    pre.Split(p, [&](std::string_view) { ++pieces; });
    outcome = outcome * 2 + (pieces == 1 ? 1 : 0);
  }
  static const std::map<int, std::string> kClasses = {
      {0b01101, "LU"}, {0b11001, "LL"}, {0b11101, "LO"}, {0b11111, "M"},
      {0b00000, "N"},  {0b00101, "S"},  {0b00111, "O"},
  };
  auto it = kClasses.find(outcome);
  return it == kClasses.end() ? "?" + std::to_string(outcome) : it->second;
}

TEST_F(TekkenSplit, EveryCodePointInTheClassTiktokenGivesIt) {
  std::ifstream in(std::string(SIROCCO_STRINGS_GOLDEN_DIR) + "/unicode_classes.txt");
  ASSERT_TRUE(in) << "missing strings_golden/unicode_classes.txt";
  std::map<char32_t, std::string> runs;  // first code point of a run -> class
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string hex, cls;
    fields >> hex >> cls;
    runs[static_cast<char32_t>(std::stoul(hex, nullptr, 16))] = cls;
  }
  ASSERT_GT(runs.size(), 1000u);
  int checked = 0, wrong = 0;
  for (char32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    if (cp == '\r' || cp == '\n' || (cp >= 0xD800 && cp <= 0xDFFF)) continue;
    const std::string& expected = std::prev(runs.upper_bound(cp))->second;
    std::string c;
    AppendCodePoint(cp, &c);
    const std::string got = ClassOf(*pre_, c);
    ++checked;
    if (got != expected && ++wrong <= 20) {
      ADD_FAILURE() << "U+" << std::hex << static_cast<unsigned>(cp) << ": tiktoken " << expected << ", Sirocco "
                    << got;
    }
  }
  EXPECT_EQ(wrong, 0) << "of " << checked << " code points";
  EXPECT_EQ(checked, 0x110000 - 0x800 - 2);
}

}  // namespace
}  // namespace sirocco::text
